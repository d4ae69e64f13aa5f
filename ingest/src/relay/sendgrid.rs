//! SendGrid's Event Webhook: a JSON array of events, custom arguments flattened into each.

use serde_json::Value;
use vigil_schemas::{Attribution, EventKind};

use super::{Context, EventResult, event, id, number, set_reply, set_tags, text};

pub(super) fn normalise(ctx: &Context<'_>, item: &Value) -> EventResult {
    let name = text(item, "event").ok_or("no `event`")?;
    let (kind, label) = match name {
        "processed" => (EventKind::Reception, None),
        "delivered" => (EventKind::Delivered, None),
        "deferred" => (EventKind::Deferred, Some("deferred".to_owned())),
        "bounce" => {
            // `bounce_classification` is the newer, finer verdict; `type` (bounce or blocked)
            // the older one.
            let verdict = text(item, "bounce_classification").or_else(|| text(item, "type")).unwrap_or("bounce");
            (EventKind::Bounced, Some(format!("bounce/{verdict}")))
        }
        "dropped" => (EventKind::Dropped, Some(format!("dropped/{}", text(item, "reason").unwrap_or("")))),
        "spamreport" => (EventKind::Complaint, None),
        "unsubscribe" | "group_unsubscribe" => (EventKind::Unsubscribe, None),
        "open" => (EventKind::Open, None),
        "click" => (EventKind::Click, None),
        "group_resubscribe" => return Ok(None),
        other => return Err(format!("unknown SendGrid event `{other}`")),
    };
    let at = number(item, "timestamp").and_then(super::from_epoch).ok_or("no `timestamp`")?;
    let key = id(item, "sg_event_id").unwrap_or_else(|| {
        format!("{}/{name}/{}", text(item, "sg_message_id").unwrap_or(""), number(item, "timestamp").unwrap_or(0.0))
    });
    let mut e = event(ctx, &key, kind, at, text(item, "email"), item);
    e.source_type = Some(name.to_owned());
    e.provider_class = label;
    // `sg_message_id` is `<X-Message-Id>.<filter host ...>`; the part before the dot is what
    // the send API returned.
    e.message_id = text(item, "sg_message_id")
        .map(|m| m.split('.').next().unwrap_or(m).to_owned())
        .or_else(|| text(item, "smtp-id").map(|m| m.trim_matches(['<', '>']).to_owned()));
    if let Some(reply) = text(item, "response").or_else(|| text(item, "reason")) {
        set_reply(&mut e, reply);
    }
    if let Some(status) = text(item, "status").filter(|s| super::is_enhanced(s)) {
        e.enhanced_status = Some(status.to_owned());
    }
    e.attempt = number(item, "attempt").map(|n| n as u32);
    // `ip` is the sending IP on delivery-side events, the reader's on opens and clicks.
    if !matches!(kind, EventKind::Open | EventKind::Click | EventKind::Unsubscribe | EventKind::Complaint) {
        e.sending_ip = super::ip(item, "ip");
        e.egress_source.clone_from(&e.sending_ip);
    }
    e.egress_pool = item.get("pool").and_then(|p| text(p, "name")).map(str::to_owned);
    set_tags(&mut e, ctx.tags, item.as_object());
    if e.campaign.is_none() {
        e.campaign = item.get("category").and_then(super::scalar);
    }
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
    }
    Ok(Some(vec![e]))
}
