//! Mailgun's webhooks (the JSON format since 2018): one event per request, `event-data` next to
//! the `signature` block that [`super::verify`] checks.

use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, Normalised, RelayError, event, id, number, set_reply, set_sender, set_tags, text};

pub(super) fn normalise(ctx: &Context<'_>, value: &Value, out: &mut Normalised) -> Result<(), RelayError> {
    // A webhook body wraps the event in `event-data`; the Events API (and a saved event)
    // gives it bare.
    let bare = value.get("event").is_some().then_some(value);
    let data = value.get("event-data").or(bare).ok_or_else(|| RelayError::Shape {
        provider: "mailgun",
        reason: "no `event-data` (the form-encoded webhooks of before 2018 are not read; switch the webhook to JSON)"
            .into(),
    })?;
    let result = one(ctx, data, value);
    super::collect(out, "event-data".into(), value, result);
    Ok(())
}

fn one(ctx: &Context<'_>, data: &Value, raw: &Value) -> super::EventResult {
    let name = text(data, "event").ok_or("no `event`")?;
    let severity = text(data, "severity");
    let reason = text(data, "reason");
    let kind = match name {
        "accepted" => EventKind::Reception,
        "rejected" => EventKind::Rejected,
        "delivered" => EventKind::Delivered,
        // Mailgun did not try: the address is on one of its suppression lists.
        "failed" if reason.is_some_and(|r| r.starts_with("suppress-")) => EventKind::Dropped,
        "failed" if severity == Some("temporary") => EventKind::Deferred,
        "failed" => EventKind::Bounced,
        "complained" => EventKind::Complaint,
        "unsubscribed" => EventKind::Unsubscribe,
        "opened" => EventKind::Open,
        "clicked" => EventKind::Click,
        // Inbound mail and list management: nothing about delivery.
        "stored" | "list_member_uploaded" | "list_member_upload_error" | "list_uploaded" => return Ok(None),
        other => return Err(format!("unknown Mailgun event `{other}`")),
    };
    let at = number(data, "timestamp").and_then(super::from_epoch).ok_or("no `timestamp`")?;
    // `id` is unique within a day only; with the timestamp it is unique.
    let key = format!("{}/{}", id(data, "id").unwrap_or_default(), number(data, "timestamp").unwrap_or(0.0));
    let mut e = event(ctx, &key, kind, at, text(data, "recipient"), raw);
    e.source_type = Some(name.to_owned());
    if name == "failed" {
        e.provider_class = Some(format!("{}/{}", severity.unwrap_or("permanent"), reason.unwrap_or("generic")));
    }
    e.message_id =
        data.get("message").and_then(|m| m.get("headers")).and_then(|h| text(h, "message-id")).map(str::to_owned);
    if let Some(envelope) = data.get("envelope") {
        e.sending_ip = super::ip(envelope, "sending-ip");
        e.egress_source.clone_from(&e.sending_ip);
        set_sender(&mut e, text(envelope, "sender"));
    }
    if let Some(status) = data.get("delivery-status") {
        if let Some(message) = text(status, "message").or_else(|| text(status, "description")) {
            set_reply(&mut e, message);
        }
        // The structured code wins over what the text seemed to say; Mailgun's own
        // pseudo-codes (605: not delivering to a previously bounced address) are not SMTP.
        e.smtp_code = number(status, "code").map(|c| c as u16).filter(|c| (200..600).contains(c)).or(e.smtp_code);
        if let Some(enhanced) = text(status, "enhanced-code").filter(|c| super::is_enhanced(c)) {
            e.enhanced_status = Some(enhanced.to_owned());
        }
        e.mx_host = text(status, "mx-host").map(|h| h.trim_end_matches('.').to_owned());
        e.attempt = number(status, "attempt-no").map(|n| n as u32);
    }
    set_tags(&mut e, ctx.tags, data.get("user-variables").and_then(Value::as_object));
    if e.campaign.is_none() {
        e.campaign = data.get("campaigns").and_then(|c| c.get(0)).and_then(|c| text(c, "name")).map(str::to_owned);
    }
    if e.campaign.is_none() {
        e.campaign = data.get("tags").and_then(super::scalar);
    }
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
    }
    if kind == EventKind::Rejected {
        e.response_text = data.get("reject").and_then(|r| text(r, "reason")).map(str::to_owned).or(e.response_text);
    }
    Ok(Some(vec![e]))
}
