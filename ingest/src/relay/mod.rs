//! Relay webhooks: what Amazon SES (through SNS), SendGrid, Mailgun, Postmark, SparkPost, Brevo,
//! Mailjet, Postal and Elastic Email tell a sender about its mail, as canonical events.
//!
//! # Contract
//! - [`normalise`] is pure: one request body (for Elastic Email, the query string) in, events out.
//!   One request can carry many events (SendGrid, SparkPost, Brevo and Mailjet batch; an SES
//!   bounce names several recipients) and each becomes one event per recipient. SES bounces and
//!   complaints name their recipients; `mail.destination` lists every recipient of the message
//!   and is never fanned out over for them.
//! - An event the model has no place for (an SES topic validation message, a SparkPost ping, a
//!   Mailgun `stored`, a Postmark auto-responder) is counted as ignored, not an error. One bad
//!   event in a batch is rejected with its reason and its own raw text; the others stand.
//! - Every event keeps the relay's record verbatim in `raw`, the relay's own verdict in
//!   `provider_class` (mapped to a class by the processor, `processor/rules/relays.toml`), and
//!   an `event_id` hashed from the relay's own event id, so a delivery the relay repeats is
//!   stored once.
//! - Tenant and campaign come from the relay's tags or metadata under the configured keys
//!   ([`Tags`]), else from the relay's own campaign field (SparkPost `campaign_id`, a Postmark
//!   `Tag`, a SendGrid category, ...).
//! - Nothing here trusts the request: [`verify`] checks each relay's signature or credential
//!   before [`http`] hands a body to [`normalise`].

pub mod brevo;
pub mod elasticemail;
pub mod http;
pub mod mailgun;
pub mod mailjet;
pub mod postal;
pub mod postmark;
pub mod sendgrid;
pub mod ses;
pub mod sparkpost;
pub mod verify;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

/// The relays Vigil takes webhooks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Ses,
    Sendgrid,
    Mailgun,
    Postmark,
    Sparkpost,
    Brevo,
    Mailjet,
    Postal,
    Elasticemail,
}

impl Provider {
    pub const ALL: [Self; 9] = [
        Self::Ses,
        Self::Sendgrid,
        Self::Mailgun,
        Self::Postmark,
        Self::Sparkpost,
        Self::Brevo,
        Self::Mailjet,
        Self::Postal,
        Self::Elasticemail,
    ];

    /// The name in configuration, URLs (`/ingest/<name>`) and the event's `source`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.source_kind().as_str()
    }

    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(name))
    }

    #[must_use]
    pub fn source_kind(self) -> SourceKind {
        match self {
            Self::Ses => SourceKind::Ses,
            Self::Sendgrid => SourceKind::Sendgrid,
            Self::Mailgun => SourceKind::Mailgun,
            Self::Postmark => SourceKind::Postmark,
            Self::Sparkpost => SourceKind::Sparkpost,
            Self::Brevo => SourceKind::Brevo,
            Self::Mailjet => SourceKind::Mailjet,
            Self::Postal => SourceKind::Postal,
            Self::Elasticemail => SourceKind::Elasticemail,
        }
    }

    /// Where the relay posts: `/ingest/<name>`.
    #[must_use]
    pub fn path(self) -> String {
        format!("/ingest/{}", self.as_str())
    }
}

/// The metadata keys that carry tenant and campaign in a relay's tags (SES message tags,
/// SendGrid custom args, Mailgun user-variables, Postmark metadata, SparkPost recipient
/// metadata, Mailjet's event payload).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    #[serde(default = "default_tenant_key")]
    pub tenant_key: String,
    #[serde(default = "default_campaign_key")]
    pub campaign_key: String,
}

fn default_tenant_key() -> String {
    "tenant".into()
}

fn default_campaign_key() -> String {
    "campaign".into()
}

impl Default for Tags {
    fn default() -> Self {
        Self { tenant_key: default_tenant_key(), campaign_key: default_campaign_key() }
    }
}

/// What one request became.
#[derive(Debug, Default)]
pub struct Normalised {
    pub events: Vec<DeliveryEvent>,
    pub rejected: Vec<Rejected>,
    /// Events the model has no place for (validation messages, pings, inbound mail).
    pub ignored: usize,
}

/// One event of a request that could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where in the request (`index 3`, `body`).
    pub location: String,
    pub reason: String,
    pub raw: String,
}

/// Why a request body is unusable as a whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not the {provider} webhook format: {reason}")]
    Shape { provider: &'static str, reason: String },
}

/// Normalises one request of `provider`.
///
/// # Errors
/// When the body as a whole is not the relay's format; events within it that are not are in
/// [`Normalised::rejected`].
pub fn normalise(
    provider: Provider,
    body: &[u8],
    tags: &Tags,
    ingested_at: DateTime<Utc>,
) -> Result<Normalised, RelayError> {
    let ctx = Context { provider, tags, ingested_at };
    if provider == Provider::Elasticemail {
        return Ok(elasticemail::normalise(&ctx, body));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| RelayError::NotJson(e.to_string()))?;
    let mut out = Normalised::default();
    match provider {
        Provider::Ses => ses::normalise(&ctx, &value, &mut out)?,
        Provider::Sendgrid => for_each(&ctx, &value, &mut out, sendgrid::normalise),
        Provider::Mailgun => mailgun::normalise(&ctx, &value, &mut out)?,
        Provider::Postmark => postmark::normalise(&ctx, &value, &mut out)?,
        Provider::Sparkpost => for_each(&ctx, &value, &mut out, sparkpost::normalise),
        Provider::Brevo => for_each(&ctx, &value, &mut out, brevo::normalise),
        Provider::Mailjet => for_each(&ctx, &value, &mut out, mailjet::normalise),
        Provider::Postal => postal::normalise(&ctx, &value, &mut out)?,
        Provider::Elasticemail => unreachable!("handled above"),
    }
    Ok(out)
}

/// What every provider's normaliser reads besides the body.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub provider: Provider,
    pub tags: &'a Tags,
    pub ingested_at: DateTime<Utc>,
}

/// One event of a batch: `Ok(None)` when the model has no place for it.
type EventResult = Result<Option<Vec<DeliveryEvent>>, String>;

/// Runs `each` over the events of a batch (a JSON array, or one object), collecting results
/// and rejections per index.
fn for_each(ctx: &Context<'_>, value: &Value, out: &mut Normalised, each: fn(&Context<'_>, &Value) -> EventResult) {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for (index, item) in items.into_iter().enumerate() {
        collect(out, format!("index {index}"), item, each(ctx, item));
    }
}

fn collect(out: &mut Normalised, location: String, item: &Value, result: EventResult) {
    match result {
        Ok(Some(events)) => out.events.extend(events),
        Ok(None) => out.ignored += 1,
        Err(reason) => out.rejected.push(Rejected { location, reason, raw: item.to_string() }),
    }
}

/// A new event of `ctx.provider` for `recipient`, its id hashed from the relay's own identity
/// of the event (`key`), the recipient and the kind, so one relay event naming several
/// recipients gives one id each and a repeated delivery gives the same ids.
fn event(
    ctx: &Context<'_>,
    key: &str,
    kind: EventKind,
    occurred_at: DateTime<Utc>,
    recipient: Option<&str>,
    raw: &Value,
) -> DeliveryEvent {
    let mut hasher = blake3::Hasher::new();
    for part in [ctx.provider.as_str(), key, recipient.unwrap_or(""), kind.as_str()] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let id = hasher.finalize().to_hex()[..32].to_owned();
    let mut event = DeliveryEvent::new(id, ctx.provider.source_kind(), kind, occurred_at, ctx.ingested_at);
    if let Some(recipient) = recipient.map(clean_address).filter(|r| !r.is_empty()) {
        event.recipient_domain = crate::kumomta::domain_of(&recipient);
        event.recipient = Some(recipient);
    }
    event.raw = Some(raw.to_string());
    event
}

/// `Name <a@b>` or `<a@b>` -> `a@b`.
fn clean_address(address: &str) -> String {
    let address = address.trim();
    let inner = match (address.rfind('<'), address.rfind('>')) {
        (Some(open), Some(close)) if open < close => &address[open + 1..close],
        _ => address,
    };
    inner.trim().to_owned()
}

/// Sets the sender and its domain from an address, if any.
fn set_sender(event: &mut DeliveryEvent, sender: Option<&str>) {
    if let Some(sender) = sender.map(clean_address).filter(|s| !s.is_empty()) {
        event.sender_domain = crate::kumomta::domain_of(&sender);
        event.sender = Some(sender);
    }
}

/// Reads an SMTP reply out of a relay's diagnostic text (`smtp; 550 5.1.1 user unknown`,
/// `550 5.1.1 ...`, `5.1.1 The email account ...`): the code, the enhanced code and the text
/// after them, on one line. Text without a code is kept as it is.
pub(crate) fn set_reply(event: &mut DeliveryEvent, text: &str) {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut rest = line.as_str();
    if let Some((kind, after)) = rest.split_once(';')
        && kind.len() < 16
        && !kind.contains(' ')
    {
        rest = after.trim_start();
    }
    let mut code = None;
    if rest.len() >= 3
        && let Ok(value) = rest[..3].parse::<u16>()
        && (200..600).contains(&value)
        && rest.as_bytes().get(3).is_none_or(|b| matches!(b, b' ' | b'-'))
    {
        code = Some(value);
        rest = rest[3..].trim_start_matches(['-', ' ']);
    }
    let mut enhanced = None;
    if let Some(word) = rest.split_whitespace().next()
        && is_enhanced(word)
    {
        enhanced = Some(word.to_owned());
        rest = rest[word.len()..].trim_start();
    }
    // A repeated enhanced code at a continuation (`5.1.1 ... try 5.1.1 double-checking`) is
    // part of the text; only the leading one is structure.
    event.smtp_code = event.smtp_code.or(code);
    event.enhanced_status = event.enhanced_status.take().or(enhanced);
    if !rest.is_empty() {
        event.response_text = Some(rest.to_owned());
    }
}

/// `class.subject.detail` with class 2, 4 or 5 (RFC 3463).
pub(crate) fn is_enhanced(word: &str) -> bool {
    let mut parts = word.split('.');
    let (Some(class), Some(subject), Some(detail), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    matches!(class, "2" | "4" | "5")
        && (1..=3).contains(&subject.len())
        && (1..=3).contains(&detail.len())
        && subject.bytes().chain(detail.bytes()).all(|b| b.is_ascii_digit())
}

/// Tenant and campaign from a metadata map under the configured keys.
fn set_tags(event: &mut DeliveryEvent, tags: &Tags, metadata: Option<&Map<String, Value>>) {
    let Some(metadata) = metadata else { return };
    if event.tenant.is_none() {
        event.tenant = metadata.get(&tags.tenant_key).and_then(scalar);
    }
    if event.campaign.is_none() {
        event.campaign = metadata.get(&tags.campaign_key).and_then(scalar);
    }
}

/// A tag value as text: a string, a number, or the first of an array (SES message tags are
/// arrays).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items.first().and_then(scalar),
        _ => None,
    }
}

/// An IP address field, only when it is one (samples carry `333.123.123.200`).
fn ip(value: &Value, key: &str) -> Option<String> {
    text(value, key).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()).map(str::to_owned)
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A field that relays send as a number or as a string of digits.
fn number(value: &Value, key: &str) -> Option<f64> {
    match value.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An identifier relays send as a string or a number.
fn id(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Seconds since the epoch (with a fraction) as a time.
fn from_epoch(seconds: f64) -> Option<DateTime<Utc>> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let millis = (seconds * 1000.0).round() as i64;
    Utc.timestamp_millis_opt(millis).single()
}

/// An RFC 3339 time (with any offset and fraction).
fn from_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.with_timezone(&Utc))
}

/// The first present time among `keys`, as RFC 3339 text or epoch seconds.
fn time_of(value: &Value, keys: &[&str]) -> Option<DateTime<Utc>> {
    keys.iter().find_map(|key| match value.get(*key)? {
        Value::String(s) => from_rfc3339(s).or_else(|| s.trim().parse::<f64>().ok().and_then(from_epoch)),
        Value::Number(n) => n.as_f64().and_then(from_epoch),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> (Option<u16>, Option<String>, Option<String>) {
        let mut event = DeliveryEvent::new("x".into(), SourceKind::Ses, EventKind::Bounced, Utc::now(), Utc::now());
        set_reply(&mut event, text);
        (event.smtp_code, event.enhanced_status, event.response_text)
    }

    #[test]
    fn replies_are_read_out_of_relay_diagnostics() {
        assert_eq!(
            reply("smtp; 550 5.1.1 user unknown"),
            (Some(550), Some("5.1.1".into()), Some("user unknown".into()))
        );
        assert_eq!(reply("smtp;550 5.1.1 The email"), (Some(550), Some("5.1.1".into()), Some("The email".into())));
        assert_eq!(reply("421-4.7.0 try\n later"), (Some(421), Some("4.7.0".into()), Some("try later".into())));
        assert_eq!(reply("5.1.1 no such user"), (None, Some("5.1.1".into()), Some("no such user".into())));
        assert_eq!(reply("Email was deferred"), (None, None, Some("Email was deferred".into())));
        assert_eq!(reply("250 OK"), (Some(250), None, Some("OK".into())));
        assert_eq!(reply("2500 items"), (None, None, Some("2500 items".into())));
    }

    #[test]
    fn addresses_lose_display_names_and_brackets() {
        assert_eq!(clean_address("Sender Name <sender@example.com>"), "sender@example.com");
        assert_eq!(clean_address(" <a@b.c> "), "a@b.c");
        assert_eq!(clean_address("a@b.c"), "a@b.c");
    }

    #[test]
    fn every_provider_has_a_path_and_parses_back() {
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Some(provider));
            assert!(provider.path().starts_with("/ingest/"));
        }
    }
}
