//! Postmark's webhooks: one record per request, told apart by `RecordType`. Postmark signs
//! nothing; the receiver checks the Basic credentials embedded in the webhook URL.

use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, Normalised, RelayError, event, id, set_reply, set_sender, set_tags, text, time_of};

pub(super) fn normalise(ctx: &Context<'_>, value: &Value, out: &mut Normalised) -> Result<(), RelayError> {
    if !value.is_object() {
        return Err(RelayError::Shape { provider: "postmark", reason: "not a JSON object".into() });
    }
    let result = one(ctx, value);
    super::collect(out, "body".into(), value, result);
    Ok(())
}

/// What a bounce record's `Type` means (Postmark's `BounceTypeCode` names; trust the name, not
/// the code: samples pair `SpamComplaint` with 512).
fn bounce_kind(kind: &str) -> Option<EventKind> {
    Some(match kind {
        "HardBounce" | "BadEmailAddress" | "SoftBounce" | "Transient" | "DnsError" | "SpamNotification" | "Unknown"
        | "VirusNotification" | "Blocked" | "DMARCPolicy" => EventKind::Bounced,
        "SpamComplaint" => EventKind::Complaint,
        "Unsubscribe" => EventKind::Unsubscribe,
        "ManuallyDeactivated" => EventKind::Dropped,
        "Unconfirmed" | "SMTPApiError" | "TemplateRenderingFailed" => EventKind::Rejected,
        "AutoResponder" | "AddressChange" | "ChallengeVerification" => EventKind::AutoReply,
        // Subscribe, OpenRelayTest, InboundError: not about our mail's delivery.
        _ => return None,
    })
}

fn one(ctx: &Context<'_>, record: &Value) -> super::EventResult {
    let record_type = text(record, "RecordType").ok_or("no `RecordType`")?;
    let (kind, recipient, at_keys): (EventKind, Option<&str>, &[&str]) = match record_type {
        "Bounce" | "SpamComplaint" => {
            let bounce_type = text(record, "Type").unwrap_or(record_type);
            let Some(kind) = bounce_kind(bounce_type) else { return Ok(None) };
            (kind, text(record, "Email"), &["BouncedAt"])
        }
        "Delivery" => (EventKind::Delivered, text(record, "Recipient"), &["DeliveredAt"]),
        "Open" => (EventKind::Open, text(record, "Recipient"), &["ReceivedAt"]),
        "Click" => (EventKind::Click, text(record, "Recipient"), &["ReceivedAt"]),
        "SubscriptionChange" => {
            if record.get("SuppressSending").and_then(Value::as_bool) != Some(true) {
                // A resubscribe.
                return Ok(None);
            }
            let kind = match text(record, "SuppressionReason") {
                Some("HardBounce") => EventKind::Bounced,
                Some("SpamComplaint") => EventKind::Complaint,
                _ => EventKind::Unsubscribe,
            };
            (kind, text(record, "Recipient"), &["ChangedAt"])
        }
        other => return Err(format!("unknown Postmark RecordType `{other}`")),
    };
    // Postmark's test records leave the time out: when it arrived is the best there is.
    let at = time_of(record, at_keys).unwrap_or(ctx.ingested_at);
    // Bounces have an id of their own; other records are one per (type, message, recipient,
    // time).
    let key = match id(record, "ID") {
        Some(bounce) => format!("{record_type}/{bounce}"),
        None => format!(
            "{record_type}/{}/{}",
            text(record, "MessageID").unwrap_or(""),
            at_keys.iter().find_map(|k| text(record, k)).unwrap_or("")
        ),
    };
    let mut e = event(ctx, &key, kind, at, recipient, record);
    e.source_type = Some(record_type.to_owned());
    e.message_id = text(record, "MessageID").map(str::to_owned);
    set_sender(&mut e, text(record, "From"));
    match record_type {
        "Bounce" | "SpamComplaint" => e.provider_class = text(record, "Type").map(str::to_owned),
        "SubscriptionChange" => e.provider_class = text(record, "SuppressionReason").map(str::to_owned),
        _ => {}
    }
    if let Some(details) = text(record, "Details") {
        set_reply(&mut e, details);
    }
    set_tags(&mut e, ctx.tags, record.get("Metadata").and_then(Value::as_object));
    if e.campaign.is_none() {
        e.campaign = text(record, "Tag").map(str::to_owned);
    }
    e.egress_pool = text(record, "MessageStream").map(str::to_owned);
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
    }
    Ok(Some(vec![e]))
}
