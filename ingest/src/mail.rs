//! Bounce and complaint mail as events: what [`crate::dsn`] decodes, one event per reported
//! recipient, tied back to the message that was sent.
//!
//! # Contract
//! - A DSN gives a `bounced` event per failed recipient and a `deferred` one per delayed
//!   recipient (`Action:`; without one, the status class decides); recipients reported
//!   delivered, relayed or expanded give nothing. An ARF report gives one `complaint` per
//!   complainer, the feedback type in `provider_class`, the feedback mailbox in
//!   `report_recipient` (never the recipient), the feedback loop recognised. An auto-reply gives
//!   one `auto_reply`: counted, never a bounce.
//! - Joined to the original send: the original's `Message-ID` (from the returned message or
//!   its headers) becomes `message_id`, the key the MTA's own events carry; a VERP return path
//!   (`bounces+alice=example.com@sender.example`, or a configured pattern) names the recipient
//!   when the mail itself does not.
//! - `event_id` is hashed from the mail's bytes, the recipient and the kind: the same mail read
//!   twice (a mailbox re-read, an upload repeated) is stored once.

use chrono::{DateTime, TimeZone, Utc};
use mail_parser::{MessageParser, MimeHeaders};
use regex::Regex;
use serde::Deserialize;
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

use crate::dsn::{self, DsnError, MailKind};

/// How VERP return paths name the recipient, as regular expressions with named groups:
/// `recipient` (the address), or `local` and `domain`.
#[derive(Debug, Clone)]
pub struct Verp {
    patterns: Vec<Regex>,
}

/// `bounces+alice=example.com@sender.example`: the Postfix and qmail convention that Mautic's
/// and many senders' VERP set-ups follow.
pub const DEFAULT_VERP: &str = r"^[^+@]+\+(?P<local>[^=@]+)=(?P<domain>[^=@]+)@";

/// `[[sources.mailbox]] verp = [...]` and the upload endpoint's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    /// VERP patterns tried in order before the default one.
    #[serde(default)]
    pub verp: Vec<String>,
}

impl Verp {
    /// The configured patterns, then [`DEFAULT_VERP`].
    ///
    /// # Errors
    /// A pattern that is not a regular expression, or has neither a `recipient` group nor both
    /// `local` and `domain`.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for pattern in patterns.iter().map(String::as_str).chain([DEFAULT_VERP]) {
            let regex = Regex::new(pattern).map_err(|e| format!("VERP pattern {pattern:?}: {e}"))?;
            let names: Vec<&str> = regex.capture_names().flatten().collect();
            let named = names.contains(&"recipient") || (names.contains(&"local") && names.contains(&"domain"));
            if !named {
                return Err(format!("VERP pattern {pattern:?} needs a `recipient` group, or `local` and `domain`"));
            }
            compiled.push(regex);
        }
        Ok(Self { patterns: compiled })
    }

    /// The recipient a return path encodes, if any pattern matches.
    #[must_use]
    pub fn decode(&self, return_path: &str) -> Option<String> {
        let address = return_path.trim().trim_matches(['<', '>']);
        self.patterns.iter().find_map(|pattern| {
            let captures = pattern.captures(address)?;
            let recipient = match captures.name("recipient") {
                Some(r) => r.as_str().to_owned(),
                None => format!("{}@{}", captures.name("local")?.as_str(), captures.name("domain")?.as_str()),
            };
            recipient.contains('@').then_some(recipient)
        })
    }
}

impl Default for Verp {
    fn default() -> Self {
        Self::new(&[]).expect("the default pattern is valid")
    }
}

/// Events of one bounce, complaint or auto-reply mail.
///
/// # Errors
/// When the mail is not one Vigil can read ([`DsnError`]); the caller dead-letters it.
pub fn events(raw: &[u8], verp: &Verp, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, DsnError> {
    let raw = dsn::from_first_header(raw);
    let decoded = dsn::decode(raw)?;
    let message = MessageParser::default().parse(raw).ok_or(DsnError::NotAnEmail)?;
    let digest = blake3::hash(raw).to_hex();
    let occurred_at =
        message.date().and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single()).unwrap_or(ingested_at);
    let addressed_to: Vec<String> =
        message.to().map(|a| a.iter().filter_map(|a| a.address()).map(str::to_owned).collect()).unwrap_or_default();
    let return_paths: Vec<String> = ["Delivered-To", "X-Original-To", "Return-Path", "Envelope-To"]
        .iter()
        .filter_map(|h| message.header_raw(*h).map(str::to_owned))
        .chain(addressed_to.iter().cloned())
        .collect();
    let verp_recipient = return_paths.iter().find_map(|p| verp.decode(p));
    let original = original_parts(&message);
    let source = match decoded.kind {
        MailKind::Complaint => SourceKind::Arf,
        MailKind::Bounce | MailKind::AutoReply => SourceKind::Dsn,
    };
    let mut out = Vec::new();
    let mut recipients = decoded.recipients;
    // A bounce that names nobody readable, but whose return path does.
    if recipients.is_empty()
        && let Some(recipient) = &verp_recipient
    {
        recipients.push(dsn::ReportedRecipient { recipient: recipient.clone(), ..Default::default() });
    }
    // One event per complainer or failed recipient, even when the mail names them twice.
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert((r.recipient.to_ascii_lowercase(), r.action.clone())));
    for reported in recipients {
        let kind = match decoded.kind {
            MailKind::Complaint => EventKind::Complaint,
            MailKind::AutoReply => EventKind::AutoReply,
            MailKind::Bounce => match reported.action.as_deref() {
                Some("failed") => EventKind::Bounced,
                Some("delayed") => EventKind::Deferred,
                Some("delivered" | "relayed" | "expanded") => continue,
                _ if reported.status.as_deref().is_some_and(|s| s.starts_with('4')) => EventKind::Deferred,
                _ => EventKind::Bounced,
            },
        };
        // A recipient the mail spells only as a local part (or not at all) is the VERP one.
        // (`Undisclosed Recipients` is nobody.)
        let recipient = if reported.recipient.contains('@') {
            reported.recipient.clone()
        } else {
            verp_recipient.clone().unwrap_or_default()
        };
        let mut hasher = blake3::Hasher::new();
        for part in [source.as_str(), digest.as_str(), recipient.as_str(), kind.as_str()] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        let event_id = hasher.finalize().to_hex()[..32].to_owned();
        let mut event = DeliveryEvent::new(event_id, source, kind, occurred_at, ingested_at);
        event.source_type = Some(
            match decoded.kind {
                MailKind::Bounce => "dsn",
                MailKind::Complaint => "arf",
                MailKind::AutoReply => "auto_reply",
            }
            .to_owned(),
        );
        event.recipient_domain = crate::kumomta::domain_of(&recipient);
        event.recipient = Some(recipient).filter(|r| !r.is_empty());
        event.message_id.clone_from(&original.message_id);
        if let Some(sender) = &original.from {
            event.sender_domain = crate::kumomta::domain_of(sender);
            event.sender = Some(sender.clone());
        }
        if let Some(diagnostic) = &reported.diagnostic {
            crate::relay::set_reply(&mut event, diagnostic);
        }
        if let Some(status) = reported.status.as_deref().filter(|s| crate::relay::is_enhanced(s)) {
            event.enhanced_status = Some(status.to_owned());
        }
        event.mx_host =
            reported.remote_mta.as_deref().map(|h| h.trim_end_matches('.').to_owned()).filter(|h| !h.is_empty());
        if let Some(feedback) = &decoded.feedback {
            event.provider_class = Some(feedback.feedback_type.clone()).filter(|t| !t.is_empty());
            event.report_recipient = addressed_to.first().cloned();
            let from = message.from().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or("");
            event.feedback_loop =
                crate::feedback_loop::recognise(feedback.user_agent.as_deref(), [from]).map(str::to_owned);
            event.original_sent_at = original.arrival_date;
            if event.sender.is_none()
                && let Some(sender) = &feedback.original_mail_from
            {
                event.sender_domain = crate::kumomta::domain_of(sender);
                event.sender = Some(sender.clone());
            }
        }
        event.raw = Some(String::from_utf8_lossy(&raw[..raw.len().min(RAW_KEPT_BYTES)]).into_owned());
        out.push(event);
    }
    Ok(out)
}

/// The first bytes of the mail kept in each event's `raw`: the report parts are near the top,
/// and a returned message can be megabytes.
pub const RAW_KEPT_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Original {
    message_id: Option<String>,
    from: Option<String>,
    arrival_date: Option<DateTime<Utc>>,
}

/// What the mail says about the message it reports on: its Message-ID and sender (from the
/// returned message or its headers), and for a feedback report its `Arrival-Date`.
fn original_parts(message: &mail_parser::Message<'_>) -> Original {
    let mut original = Original::default();
    for part in &message.parts {
        let Some(content_type) = part.content_type() else { continue };
        let subtype = content_type.subtype().unwrap_or("").to_ascii_lowercase();
        match (content_type.ctype().to_ascii_lowercase().as_str(), subtype.as_str()) {
            ("message", "rfc822" | "global") => {
                if let Some(inner) = part.message() {
                    original.message_id = original.message_id.or_else(|| inner.message_id().map(str::to_owned));
                    original.from = original
                        .from
                        .or_else(|| inner.from().and_then(|a| a.first()).and_then(|a| a.address()).map(str::to_owned));
                }
            }
            ("text", "rfc822-headers") => {
                let headers = String::from_utf8_lossy(part.contents());
                if let Some(parsed) = MessageParser::default().parse(headers.as_bytes()) {
                    original.message_id = original.message_id.or_else(|| parsed.message_id().map(str::to_owned));
                    original.from = original
                        .from
                        .or_else(|| parsed.from().and_then(|a| a.first()).and_then(|a| a.address()).map(str::to_owned));
                }
            }
            ("message", "feedback-report") => {
                let report = String::from_utf8_lossy(part.contents());
                original.arrival_date = report
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("arrival-date")))
                    .and_then(|(_, v)| mail_parser::DateTime::parse_rfc822(v.trim()))
                    .and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single());
            }
            _ => {}
        }
    }
    original
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verp_return_paths_name_the_recipient() {
        let verp = Verp::default();
        assert_eq!(verp.decode("<bounces+alice=example.com@sender.example>").as_deref(), Some("alice@example.com"));
        assert_eq!(verp.decode("bounces@sender.example"), None);
        let custom = Verp::new(&[r"^b-(?P<recipient>[^/]+@[^/]+)/\d+@".into()]).unwrap();
        assert_eq!(custom.decode("b-bob@example.org/42@bounce.example").as_deref(), Some("bob@example.org"));
        assert!(Verp::new(&["(?P<who>.+)".into()]).unwrap_err().contains("needs a `recipient` group"));
    }

    /// A mail saved with blank lines before its headers keeps its date and VERP return path.
    #[test]
    fn blank_lines_before_the_headers_lose_nothing() {
        let mail = "\r\n  \r\nReturn-Path: <bounces+alice=example.com@sender.example>\r\n\
                    From: MAILER-DAEMON@mx.example.com\r\nTo: bounces+alice=example.com@sender.example\r\n\
                    Date: Tue, 1 Aug 2006 13:58:02 +0000\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n\
                    <alice@example.com>: host mx.example.com said: 550 5.1.1 User unknown\r\n";
        let ingested = Utc::now();
        let events = events(mail.as_bytes(), &Verp::default(), ingested).unwrap();
        assert_eq!(events[0].recipient.as_deref(), Some("alice@example.com"));
        assert_eq!(events[0].occurred_at.timestamp(), 1_154_440_682, "the mail's Date, not the time it was read");
    }
}
