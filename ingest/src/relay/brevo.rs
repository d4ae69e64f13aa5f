//! Brevo's (formerly Sendinblue) transactional webhooks: one event per request, or an array
//! when batching is on. Brevo signs nothing; the receiver checks Basic credentials or a
//! bearer token.

use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, EventResult, event, number, set_reply, set_sender, set_tags, text};

pub(super) fn normalise(ctx: &Context<'_>, item: &Value) -> EventResult {
    let name = text(item, "event").ok_or("no `event`")?;
    let kind = match name {
        "request" | "sent" => EventKind::Reception,
        "delivered" => EventKind::Delivered,
        "deferred" => EventKind::Deferred,
        "hard_bounce" | "soft_bounce" => EventKind::Bounced,
        // Brevo did not try: the address is blocked or invalid in the account.
        "blocked" | "invalid_email" => EventKind::Dropped,
        "error" => EventKind::Rejected,
        "spam" | "complaint" => EventKind::Complaint,
        "unsubscribed" | "unsubscribe" => EventKind::Unsubscribe,
        "opened" | "unique_opened" | "proxy_open" | "unique_proxy_open" => EventKind::Open,
        "click" => EventKind::Click,
        other => return Err(format!("unknown Brevo event `{other}`")),
    };
    // `ts_epoch` is milliseconds (some senders' samples have seconds), `ts_event` and `ts`
    // seconds.
    let at = number(item, "ts_epoch")
        .map(|t| if t > 1e11 { t / 1000.0 } else { t })
        .or_else(|| number(item, "ts_event"))
        .or_else(|| number(item, "ts"))
        .and_then(super::from_epoch)
        .or_else(|| super::time_of(item, &["date"]))
        // `date` is in the account's time zone, which the event does not say.
        .unwrap_or(ctx.ingested_at);
    // Brevo has no event id: the message, the event and its time identify it.
    let key = format!(
        "{}/{name}/{}",
        text(item, "message-id").unwrap_or(""),
        number(item, "ts_epoch").or_else(|| number(item, "ts_event")).unwrap_or(0.0)
    );
    let mut e = event(ctx, &key, kind, at, text(item, "email"), item);
    e.source_type = Some(name.to_owned());
    e.message_id = text(item, "message-id").map(|m| m.trim_matches(['<', '>']).to_owned());
    set_sender(&mut e, text(item, "sender_email").or_else(|| text(item, "from")));
    if matches!(kind, EventKind::Bounced | EventKind::Dropped | EventKind::Deferred | EventKind::Rejected) {
        e.provider_class = Some(name.to_owned());
    }
    if let Some(reason) = text(item, "reason") {
        set_reply(&mut e, reason);
    }
    if !matches!(kind, EventKind::Open | EventKind::Click) {
        e.sending_ip = super::ip(item, "sending_ip");
        e.egress_source.clone_from(&e.sending_ip);
    }
    // `X-Mailin-custom` is the sender's own header, often JSON with the sender's keys.
    let custom = text(item, "X-Mailin-custom").and_then(|c| serde_json::from_str::<Value>(c).ok());
    set_tags(&mut e, ctx.tags, custom.as_ref().and_then(Value::as_object));
    if e.campaign.is_none() {
        e.campaign = item.get("tags").and_then(super::scalar).or_else(|| text(item, "tag").map(str::to_owned));
    }
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
    }
    Ok(Some(vec![e]))
}
