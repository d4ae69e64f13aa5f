//! Elastic Email's "HTTP Web Notification": a GET with the event in query parameters, no
//! signature (the receiver checks a shared secret in the URL).

use chrono::{NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use vigil_schemas::{Attribution, EventKind};

use super::{Context, Normalised, event, set_sender, text};

/// Parameters Elastic Email sends; the shared secret and anything else are left out of `raw`.
const PARAMETERS: [&str; 13] = [
    "from",
    "to",
    "date",
    "subject",
    "status",
    "channel",
    "account",
    "category",
    "messageid",
    "transaction",
    "target",
    "postback",
    "pool",
];

pub(super) fn normalise(ctx: &Context<'_>, query: &[u8]) -> Normalised {
    let mut out = Normalised::default();
    let mut fields = Map::new();
    for (name, value) in form_urlencoded::parse(query) {
        if PARAMETERS.contains(&name.as_ref()) {
            fields.insert(name.into_owned(), Value::String(value.into_owned()));
        }
    }
    let record = Value::Object(fields);
    let result = one(ctx, &record);
    super::collect(&mut out, "query".into(), &record, result);
    out
}

fn one(ctx: &Context<'_>, record: &Value) -> super::EventResult {
    let status = text(record, "status").ok_or("no `status` parameter")?;
    let category = text(record, "category");
    let kind = match status {
        "Sent" => EventKind::Delivered,
        "Opened" => EventKind::Open,
        "Clicked" => EventKind::Click,
        "Unsubscribed" => EventKind::Unsubscribe,
        "AbuseReport" => EventKind::Complaint,
        "Error" | "Bounce" => EventKind::Bounced,
        "Submitted" | "Ready" | "InProgress" => EventKind::Reception,
        other => return Err(format!("unknown Elastic Email status `{other}`")),
    };
    // `12/22/2017 9:03:39 PM`, UTC.
    let at = text(record, "date")
        .and_then(|d| NaiveDateTime::parse_from_str(d, "%m/%d/%Y %I:%M:%S %p").ok())
        .map(|t| Utc.from_utc_datetime(&t))
        .or_else(|| text(record, "date").and_then(super::from_rfc3339))
        .unwrap_or(ctx.ingested_at);
    let key = format!(
        "{}/{}/{status}/{}",
        text(record, "transaction").unwrap_or(""),
        text(record, "messageid").unwrap_or(""),
        text(record, "date").unwrap_or("")
    );
    let mut e = event(ctx, &key, kind, at, text(record, "to"), record);
    e.source_type = Some(status.to_owned());
    e.message_id = text(record, "messageid").map(str::to_owned);
    set_sender(&mut e, text(record, "from"));
    if kind == EventKind::Bounced {
        e.provider_class = category.map(str::to_owned);
    }
    e.campaign = text(record, "channel").map(str::to_owned);
    e.tenant = text(record, "postback").map(str::to_owned);
    e.egress_pool = text(record, "pool").map(str::to_owned);
    if kind == EventKind::Complaint {
        e.attribution = Some(Attribution::Trace);
    }
    Ok(Some(vec![e]))
}
