//! Exim main log: `=>` and `->` (delivered), `**` (bounced), `==` (deferred), with the sender,
//! size and Message-ID of the message's `<=` line correlated in by Exim message id.
//!
//! Line shape: `2002-10-31 08:57:53 [+0100] 16ZCW1-0005MB-00 <flag> <recipient> [<original>]
//! R=router T=transport H=host [ip]:port I=[local ip]:port C="250 OK" ...[: error text]`.
//! Times without an offset (`log_timezone` unset) are in the source's `time_zone` (UTC without
//! one).
//!
//! Over syslog (`log_file_path = syslog`, or a file a syslog daemon wrote) the same line comes
//! after a syslog header, read by [`crate::syslog::header`]; with `syslog_timestamp = false`
//! Exim leaves its own time out and the header's time is the line's. Plain main-log lines, with
//! no header, are read as they are.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

use crate::kumomta::domain_of;
use crate::lines::{BoundedMap, LineError, LineNormaliser, line_event_id, split_reply};

/// Message ids remembered at once.
const MAX_MESSAGES: usize = 100_000;

#[derive(Debug, Default)]
struct MessageInfo {
    sender: Option<String>,
    size: Option<u64>,
    message_id: Option<String>,
}

/// Correlating Exim normaliser.
#[derive(Debug)]
pub struct EximNormaliser {
    messages: BoundedMap<MessageInfo>,
    /// The zone of lines without an offset (Exim without `log_timezone`); UTC without one.
    zone: Option<crate::lines::Zone>,
}

impl Default for EximNormaliser {
    fn default() -> Self {
        Self::new(None)
    }
}

impl EximNormaliser {
    #[must_use]
    pub fn new(zone: Option<crate::lines::Zone>) -> Self {
        Self { messages: BoundedMap::new(MAX_MESSAGES), zone }
    }
}

fn is_message_id(token: &str) -> bool {
    let parts: Vec<&str> = token.split('-').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The value of `key=` among the line's fields (quoted values kept whole, without quotes).
fn field<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!(" {key}=");
    let at = rest.find(&needle)? + needle.len();
    let value = &rest[at..];
    if let Some(quoted) = value.strip_prefix('"') {
        return quoted.split('"').next();
    }
    value.split(' ').next()
}

/// `H=host [ip]:port` -> (host, ip).
fn host_field(rest: &str) -> (Option<String>, Option<String>) {
    let Some(at) = rest.find(" H=") else { return (None, None) };
    let value = &rest[at + 3..];
    let (host, after) = value.split_once(' ').unwrap_or((value, ""));
    let ip = after.strip_prefix('[').and_then(|a| a.split(']').next()).map(str::to_owned);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host =
        (!host.is_empty() && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')).then(|| host.to_ascii_lowercase());
    (host, ip.or_else(|| value.starts_with('[').then(|| value[1..].split(']').next().unwrap_or("").to_owned())))
}

/// The SMTP command an Exim error names: `after RCPT TO:<...>`, `after end of data`, ...
fn command_of(text: &str) -> Option<String> {
    let after = text.split_once(" after ")?.1;
    let command =
        ["pipelined RCPT TO", "RCPT TO", "MAIL FROM", "end of data", "DATA", "initial connection", "EHLO", "HELO"]
            .iter()
            .find(|c| after.starts_with(*c))?;
    Some(command.trim_start_matches("pipelined ").to_owned())
}

/// The remote reply inside an Exim error: from the first `: NNN` on.
fn reply_of(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(5)).find_map(|i| {
        let is_reply = bytes[i] == b':'
            && bytes[i + 1] == b' '
            && matches!(bytes[i + 2], b'2' | b'4' | b'5')
            && bytes[i + 3].is_ascii_digit()
            && bytes[i + 4].is_ascii_digit()
            && bytes.get(i + 5).is_none_or(|b| matches!(b, b' ' | b'-'));
        is_reply.then(|| &text[i + 2..])
    })
}

/// Whether `text` starts with Exim's `YYYY-MM-DD` date.
fn starts_with_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 10 && bytes[4] == b'-' && bytes[7] == b'-' && bytes[..4].iter().all(u8::is_ascii_digit)
}

/// The main log's `YYYY-MM-DD HH:MM:SS [+zone]` and what follows it. Without an offset
/// (`log_timezone` unset) the time is in `zone`.
fn leading_time(line: &str, zone: Option<crate::lines::Zone>) -> Result<(DateTime<Utc>, &str), LineError> {
    let mut tokens = line.splitn(3, ' ');
    let (Some(date), Some(time), Some(rest)) = (tokens.next(), tokens.next(), tokens.next()) else {
        return Err(LineError("not an Exim log line: too short".into()));
    };
    let naive = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S")
        .map_err(|e| LineError(format!("not an Exim log line: bad time `{date} {time}`: {e}")))?;
    // An optional zone offset (log_timezone = true), then the message id.
    let (offset, rest) = match rest.split_once(' ') {
        Some((zone, after)) if zone.len() == 5 && (zone.starts_with('+') || zone.starts_with('-')) => {
            let hours: i32 = zone[1..3].parse().unwrap_or(0);
            let minutes: i32 = zone[3..5].parse().unwrap_or(0);
            let seconds = (hours * 3600 + minutes * 60) * if zone.starts_with('-') { -1 } else { 1 };
            (FixedOffset::east_opt(seconds), after)
        }
        _ => (None, rest),
    };
    let at = match offset {
        Some(offset) => offset
            .from_local_datetime(&naive)
            .single()
            .map_or_else(|| Utc.from_utc_datetime(&naive), |t| t.with_timezone(&Utc)),
        None => crate::lines::local_time(&naive, zone),
    };
    Ok((at, rest))
}

impl LineNormaliser for EximNormaliser {
    fn push_line(&mut self, line: &str, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, LineError> {
        let line = line.trim_end();
        // Over syslog, or in a file a syslog daemon wrote, the main-log line is the message
        // after a syslog header; with `syslog_timestamp = false` it has no time of its own and
        // the header's stands for it.
        let header = crate::syslog::header::parse(line, ingested_at, self.zone);
        let (at, rest) = match header {
            Some(header) if !starts_with_date(header.message) => (header.at.unwrap_or(ingested_at), header.message),
            Some(header) => leading_time(header.message, self.zone)?,
            None => leading_time(line, self.zone)?,
        };
        let Some((message, rest)) = rest.split_once(' ').filter(|(id, _)| is_message_id(id)) else {
            return Ok(Vec::new()); // queue runs, daemon notices
        };
        let (flag, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        // `field` looks for ` key=`; a leading space lets it find the first field too.
        let fields_part = format!(" {rest}");
        let kind = match flag {
            "<=" => {
                let info = self.messages.entry(message);
                let sender = rest.split(' ').next().unwrap_or("");
                info.sender = Some(sender.to_owned()).filter(|s| s != "<>" && !s.is_empty());
                info.size = field(&fields_part, "S").and_then(|s| s.parse().ok());
                info.message_id =
                    field(&fields_part, "id").map(|id| id.trim_start_matches('<').trim_end_matches('>').to_owned());
                return Ok(Vec::new());
            }
            "Completed" => {
                self.messages.remove(message);
                return Ok(Vec::new());
            }
            "=>" | "->" | ">>" => EventKind::Delivered,
            "**" => EventKind::Bounced,
            "==" => EventKind::Deferred,
            _ => return Ok(Vec::new()), // "*>" (suppressed), notices
        };
        // `=> user <user@host> R=...` for local deliveries: the address is the bracketed one.
        let first = rest.split([' ', ':']).next().unwrap_or("").trim_start_matches('<').trim_end_matches('>');
        let bracketed = rest
            .split(' ')
            .nth(1)
            .filter(|t| t.starts_with('<'))
            .map(|t| t.trim_start_matches('<').trim_end_matches(['>', ':']));
        let recipient = match bracketed {
            Some(address) if !first.contains('@') => address,
            _ => first,
        };
        if recipient.is_empty() {
            return Err(LineError(format!("Exim `{flag}` line without a recipient")));
        }
        let recipient = recipient.to_owned();
        let mut event =
            DeliveryEvent::new(line_event_id("exim", line, &recipient), SourceKind::Exim, kind, at, ingested_at);
        let info = self.messages.get(message);
        event.source_type = Some(flag.to_owned());
        event.queue_id = Some(message.to_owned());
        event.message_id = info.and_then(|i| i.message_id.clone());
        event.sender = info.and_then(|i| i.sender.clone());
        event.sender_domain = event.sender.as_deref().and_then(domain_of);
        event.size_bytes = info.and_then(|i| i.size);
        event.recipient_domain = domain_of(&recipient);
        event.recipient = Some(recipient);
        let (mx_host, mx_ip) = host_field(&fields_part);
        event.mx_host = mx_host;
        event.mx_ip = mx_ip;
        if let Some(interface) = field(&fields_part, "I") {
            let ip = interface.trim_start_matches('[').split(']').next().unwrap_or("").to_owned();
            event.egress_source = Some(ip.clone()).filter(|i| !i.is_empty());
            event.sending_ip = event.egress_source.clone();
        }
        let error = match kind {
            EventKind::Delivered => field(&fields_part, "C").map(str::to_owned),
            _ => rest.split_once(": ").map(|(_, text)| text.trim().to_owned()),
        };
        if let Some(text) = error {
            let reply = reply_of(&format!(": {text}")).map(str::to_owned);
            let (code, enhanced, reply) = match reply {
                Some(reply) => split_reply(&reply),
                None => split_reply(&text),
            };
            event.smtp_code = code;
            event.enhanced_status = enhanced;
            event.smtp_command = command_of(&text);
            event.response_text = Some(if code.is_some() { reply } else { text });
        }
        event.raw = Some(line.to_owned());
        Ok(vec![event])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn deliveries_bounces_and_deferrals_with_correlated_sender() {
        let mut n = EximNormaliser::default();
        let lines = [
            "2002-10-31 08:57:53 16ZCW1-0005MB-00 <= kryten@dwarf.fict.example H=mailer.fict.example [192.168.123.123] U=exim P=smtp S=5678 id=<abc@fict.example>",
            "2002-10-31 09:00:10 16ZCW1-0005MB-00 => monk@holistic.fict.example R=dnslookup T=remote_smtp H=holistic.fict.example [192.168.234.234] I=[10.0.0.5]:25 C=\"250 2.0.0 OK\"",
            "2002-07-11 07:14:17 17SXDU-000189-00 ** ace400@pb.example R=dnslookup T=remote_smtp: SMTP error from remote mailer after pipelined RCPT TO:<ace400@pb.example>: host pbmail3.py.example [192.168.63.111]: 553 5.3.0 <ace400@pb.example>...Addressee unknown",
            "2002-12-19 16:20:23 16aiQz-0002Q5-00 == marvin@endrest.example R=dnslookup T=smtp defer (146): Connection refused",
            "2002-10-31 09:00:11 16ZCW1-0005MB-00 Completed",
        ];
        let events: Vec<DeliveryEvent> = lines.iter().flat_map(|l| n.push_line(l, now()).unwrap()).collect();
        assert_eq!(events.len(), 3);
        let delivered = &events[0];
        assert_eq!(delivered.kind, EventKind::Delivered);
        assert_eq!(
            (delivered.sender.as_deref(), delivered.size_bytes),
            (Some("kryten@dwarf.fict.example"), Some(5678))
        );
        assert_eq!(delivered.message_id.as_deref(), Some("abc@fict.example"));
        assert_eq!(
            (delivered.mx_host.as_deref(), delivered.mx_ip.as_deref()),
            (Some("holistic.fict.example"), Some("192.168.234.234"))
        );
        assert_eq!(delivered.egress_source.as_deref(), Some("10.0.0.5"));
        assert_eq!(delivered.smtp_code, Some(250));
        let bounced = &events[1];
        assert_eq!(
            (bounced.kind, bounced.smtp_code, bounced.enhanced_status.as_deref()),
            (EventKind::Bounced, Some(553), Some("5.3.0"))
        );
        assert_eq!(bounced.smtp_command.as_deref(), Some("RCPT TO"));
        assert_eq!(events[2].response_text.as_deref(), Some("Connection refused"));
        assert_eq!(n.messages.len(), 0, "Completed forgets the message");
    }

    /// Issue 31: Exim lines over syslog kept their header and were rejected as "bad time".
    #[test]
    fn syslog_headers_are_stripped_and_plain_lines_still_read() {
        let ingested = DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z").unwrap().with_timezone(&Utc);
        let plain = "2026-01-09 10:00:00 1abcde-000000-AB == a@b.example R=r T=t defer (-44): 451 later";
        let lines = [
            plain.to_owned(),
            format!("<22>Jan  9 10:00:00 mx1 exim[1234]: {plain}"),
            format!("Jan  9 10:00:00 mx1 exim[1234]: {plain}"),
            format!("<22>1 2026-01-09T10:00:00Z mx1 exim 1234 - - {plain}"),
            // `syslog_timestamp = false`: the header's time is the line's.
            "<22>Jan  9 10:00:00 mx1 exim[1234]: 1abcde-000000-AB == a@b.example R=r T=t defer (-44): 451 later"
                .to_owned(),
        ];
        for line in &lines {
            let mut n = EximNormaliser::default();
            let events = n.push_line(line, ingested).unwrap();
            assert_eq!(events.len(), 1, "{line}");
            assert_eq!(
                (events[0].kind, events[0].recipient.as_deref(), events[0].occurred_at.to_rfc3339()),
                (EventKind::Deferred, Some("a@b.example"), "2026-01-09T10:00:00+00:00".to_owned()),
                "{line}"
            );
            assert_eq!(events[0].smtp_code, Some(451), "{line}");
        }
        let mut n = EximNormaliser::default();
        assert!(n.push_line("<22>Jan  9 10:00:00 mx1 sshd[1]: Accepted key", ingested).unwrap().is_empty());
    }

    #[test]
    fn zone_offsets_and_bad_lines() {
        let mut n = EximNormaliser::default();
        let line = "2026-01-09 10:00:00 +0100 1abcde-000000-AB == a@b.example R=r T=t defer (-44): 451 later";
        let events = n.push_line(line, now()).unwrap();
        assert_eq!(events[0].occurred_at.to_rfc3339(), "2026-01-09T09:00:00+00:00");
        assert!(n.push_line("garbage", now()).is_err());
        assert!(n.push_line("2026-01-09 10:00:00 Start queue run: pid=1", now()).unwrap().is_empty());
    }
}
