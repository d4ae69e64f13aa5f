//! Postal's webhooks: one event per request, `{"event", "timestamp", "uuid", "payload"}`,
//! signed with the server's RSA key ([`super::verify`]).

use serde_json::Value;
use vigil_schemas::EventKind;

use super::{Context, Normalised, RelayError, event, number, set_reply, set_sender, text};

pub(super) fn normalise(ctx: &Context<'_>, value: &Value, out: &mut Normalised) -> Result<(), RelayError> {
    let (Some(name), Some(payload)) = (text(value, "event"), value.get("payload")) else {
        return Err(RelayError::Shape { provider: "postal", reason: "no `event` and `payload`".into() });
    };
    let result = one(ctx, name, payload, value);
    super::collect(out, "payload".into(), value, result);
    Ok(())
}

fn one(ctx: &Context<'_>, name: &str, payload: &Value, raw: &Value) -> super::EventResult {
    let kind = match name {
        "MessageSent" => EventKind::Delivered,
        "MessageDelayed" => EventKind::Deferred,
        "MessageDeliveryFailed" | "MessageBounced" => EventKind::Bounced,
        // Held by the server's own policy or limits: never attempted.
        "MessageHeld" => EventKind::Dropped,
        "MessageLinkClicked" => EventKind::Click,
        "MessageLoaded" => EventKind::Open,
        // Server and domain notices: operations, not deliveries.
        "DomainDNSError" | "SendLimitApproaching" | "SendLimitExceeded" | "MessageDNSError" => return Ok(None),
        other => return Err(format!("unknown Postal event `{other}`")),
    };
    let message = payload.get("message").or_else(|| payload.get("original_message")).ok_or("no `message`")?;
    if text(message, "direction") == Some("incoming") {
        return Ok(None);
    }
    let at = number(payload, "timestamp")
        .or_else(|| number(raw, "timestamp"))
        .and_then(super::from_epoch)
        .ok_or("no `timestamp`")?;
    // The envelope's uuid is stable across Postal's retries.
    let key = text(raw, "uuid").map_or_else(
        || {
            format!(
                "{name}/{}/{}",
                super::id(message, "id").unwrap_or_default(),
                number(raw, "timestamp").unwrap_or(0.0)
            )
        },
        str::to_owned,
    );
    let mut e = event(ctx, &key, kind, at, text(message, "to"), raw);
    e.source_type = Some(name.to_owned());
    e.message_id = text(message, "message_id").map(str::to_owned);
    set_sender(&mut e, text(message, "from"));
    e.campaign = text(message, "tag").map(str::to_owned);
    // Postal does not classify: the status is all it says.
    e.provider_class =
        text(payload, "status").map(str::to_owned).or_else(|| (name == "MessageBounced").then(|| name.to_owned()));
    if let Some(output) = text(payload, "output") {
        set_reply(&mut e, output);
    }
    if let Some(details) = text(payload, "details") {
        route_from_details(&mut e, details);
        if e.response_text.is_none() {
            e.response_text = Some(details.to_owned());
        }
    }
    Ok(Some(vec![e]))
}

/// `Message sent by SMTP to aspmx.l.google.com (2a00:1450::1b) (from 2a00:67a0:a:15::2)`: the
/// MX, its address and the sending address, which Postal gives nowhere else.
fn route_from_details(e: &mut vigil_schemas::DeliveryEvent, details: &str) {
    if let Some((_, after)) = details.split_once(" to ") {
        let mut words = after.split_whitespace();
        if let Some(host) = words.next().filter(|h| h.contains('.')) {
            e.mx_host = Some(host.trim_end_matches('.').to_owned());
        }
        if let Some(ip) = words.next().and_then(|w| w.strip_prefix('(')).and_then(|w| w.strip_suffix(')'))
            && ip.parse::<std::net::IpAddr>().is_ok()
        {
            e.mx_ip = Some(ip.to_owned());
        }
    }
    if let Some((_, after)) = details.split_once("(from ")
        && let Some(ip) = after.split(')').next()
        && ip.parse::<std::net::IpAddr>().is_ok()
    {
        e.sending_ip = Some(ip.to_owned());
        e.egress_source = Some(ip.to_owned());
    }
}
