//! Mailjet's event API: one event per request, or an array when events are grouped. Mailjet
//! signs nothing; the receiver checks the Basic credentials embedded in the URL.

use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, EventResult, event, id, number, set_reply, set_tags, text};

pub(super) fn normalise(ctx: &Context<'_>, item: &Value) -> EventResult {
    let name = text(item, "event").ok_or("no `event`")?;
    let hard = item.get("hard_bounce").and_then(Value::as_bool).unwrap_or(false);
    let kind = match name {
        "sent" => EventKind::Delivered,
        "bounce" => EventKind::Bounced,
        // Mailjet did not try (preblocked, an earlier spam report or hard bounce).
        "blocked" => EventKind::Dropped,
        "spam" => EventKind::Complaint,
        "unsub" => EventKind::Unsubscribe,
        "open" => EventKind::Open,
        "click" => EventKind::Click,
        other => return Err(format!("unknown Mailjet event `{other}`")),
    };
    let at = number(item, "time").and_then(super::from_epoch).ok_or("no `time`")?;
    let key = format!("{}/{name}/{}", id(item, "MessageID").unwrap_or_default(), number(item, "time").unwrap_or(0.0));
    let mut e = event(ctx, &key, kind, at, text(item, "email"), item);
    e.source_type = Some(name.to_owned());
    e.message_id = id(item, "Message_GUID").or_else(|| id(item, "MessageID"));
    if matches!(kind, EventKind::Bounced | EventKind::Dropped) {
        // Mailjet's `error` (`user unknown`, `greylisted`, ...); `hard_bounce` says whether
        // Mailjet gave up on the address, which its error already implies.
        e.provider_class = text(item, "error").map(str::to_owned);
        if e.provider_class.is_none() {
            e.provider_class = Some(if hard { "hard" } else { "soft" }.to_owned());
        }
    }
    if let Some(reply) = text(item, "smtp_reply").or_else(|| text(item, "comment")) {
        set_reply(&mut e, reply);
    }
    // `Payload` is the sender's own event payload (often JSON); `CustomID` its own id.
    let payload = text(item, "Payload").and_then(|p| serde_json::from_str::<Value>(p).ok());
    set_tags(&mut e, ctx.tags, payload.as_ref().and_then(Value::as_object));
    if e.campaign.is_none() {
        e.campaign =
            text(item, "customcampaign").map(str::to_owned).or_else(|| id(item, "mj_campaign_id").filter(|c| c != "0"));
    }
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
        e.provider_class = text(item, "source").map(str::to_owned);
    }
    Ok(Some(vec![e]))
}
