//! SparkPost's webhooks: batches of `{"msys": {"<event class>": {...}}}`; a webhook test sends
//! `[{"msys": {}}]`.

use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, EventResult, event, id, number, set_reply, set_sender, set_tags, text};

const CLASSES: [&str; 5] = ["message_event", "track_event", "gen_event", "unsubscribe_event", "relay_event"];

pub(super) fn normalise(ctx: &Context<'_>, item: &Value) -> EventResult {
    let msys = item.get("msys").ok_or("no `msys`")?;
    let Some((class, data)) = CLASSES.iter().find_map(|c| msys.get(*c).map(|d| (*c, d))) else {
        // The ping, or a class SparkPost added.
        return Ok(None);
    };
    let name = text(data, "type").ok_or("no `type`")?;
    let bounce_class = number(data, "bounce_class").map(|c| c as u32);
    let kind = match (class, name) {
        (_, "injection") => EventKind::Reception,
        (_, "delivery") => EventKind::Delivered,
        (_, "delay") => EventKind::Deferred,
        (_, "bounce" | "out_of_band") => match bounce_class {
            Some(25) => EventKind::Dropped,
            Some(60 | 100) => EventKind::AutoReply,
            Some(90) => EventKind::Unsubscribe,
            // A subscribe request, not a failure.
            Some(80) => return Ok(None),
            _ => EventKind::Bounced,
        },
        (_, "policy_rejection") => EventKind::Dropped,
        (_, "generation_failure" | "generation_rejection") => EventKind::Rejected,
        (_, "spam_complaint") => EventKind::Complaint,
        (_, "open" | "initial_open" | "amp_open" | "amp_initial_open") => EventKind::Open,
        (_, "click" | "amp_click") => EventKind::Click,
        (_, "list_unsubscribe" | "link_unsubscribe") => EventKind::Unsubscribe,
        ("relay_event", _) => return Ok(None),
        (_, other) => return Err(format!("unknown SparkPost event type `{other}`")),
    };
    // SparkPost sends the epoch as a string (some event types an RFC 3339 time).
    let at = super::time_of(data, &["timestamp"]).unwrap_or(ctx.ingested_at);
    let key = id(data, "event_id").unwrap_or_else(|| {
        let part = |k: &str| text(data, k).unwrap_or("");
        format!("{name}/{}/{}/{}", part("message_id"), part("raw_rcpt_to"), part("timestamp"))
    });
    let recipient = text(data, "rcpt_to").or_else(|| text(data, "raw_rcpt_to"));
    let mut e = event(ctx, &key, kind, at, recipient, item);
    e.source_type = Some(name.to_owned());
    e.provider_class = bounce_class.map(|c| c.to_string()).or_else(|| text(data, "fbtype").map(str::to_owned));
    e.message_id = text(data, "message_id").map(str::to_owned);
    set_sender(&mut e, text(data, "msg_from"));
    if let Some(reason) = text(data, "raw_reason").or_else(|| text(data, "reason")) {
        set_reply(&mut e, reason);
    }
    e.smtp_code = number(data, "error_code").map(|c| c as u16).filter(|c| (200..600).contains(c)).or(e.smtp_code);
    e.sending_ip = super::ip(data, "sending_ip");
    e.egress_source.clone_from(&e.sending_ip);
    e.egress_pool = text(data, "ip_pool").map(str::to_owned);
    e.attempt = number(data, "num_retries").map(|n| n as u32 + 1);
    set_tags(&mut e, ctx.tags, data.get("rcpt_meta").and_then(Value::as_object));
    if e.campaign.is_none() {
        e.campaign = text(data, "campaign_id").map(str::to_owned);
    }
    if e.tenant.is_none() {
        e.tenant = id(data, "subaccount_id").filter(|s| s != "0");
    }
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
        e.report_recipient = text(data, "report_to").map(str::to_owned);
    }
    Ok(Some(vec![e]))
}
