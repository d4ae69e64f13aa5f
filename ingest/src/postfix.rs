//! Postfix maillog: one event per delivery attempt (`to=<...>, ..., status=sent|deferred|
//! bounced|expired`), with the sender, size and Message-ID that other daemons logged for the
//! same queue id (`qmgr`'s `from=`, `cleanup`'s `message-id=`) correlated in.
//!
//! Accepted line shapes: every syslog header [`crate::syslog::header`] reads (RFC 3164 with
//! or without its priority, `<22>Dec  4 10:33:25 host postfix/smtp[123]: ...`; rsyslog's
//! high-precision ISO timestamps; RFC 5424,
//! `<22>1 2026-03-11T10:00:00Z host postfix/smtp 123 - - ...`), and the bare message part
//! (`3D770111AF50: to=<...>, ...`) when a shipper has already stripped the header.
//!
//! RFC 3164 has neither year nor zone: the year is the one that puts the line closest before
//! the ingest time, and the zone is the source's `time_zone` ([`LineSettings`], UTC by
//! default).
//!
//! Postfix logs no sending address. The source's `postfix_egress` map says which egress source
//! and IP a transport (`postfix/smtp-ip1/smtp`, bound with `smtp_bind_address`), an instance
//! or a syslog host stands for; without a match the syslog host is the egress source.

use chrono::{DateTime, Utc};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

use crate::kumomta::domain_of;
use crate::lines::{BoundedMap, LineError, LineNormaliser, LineSettings, Zone, line_event_id, split_reply};
use crate::syslog::header::Header;

/// Queue ids remembered at once; the oldest are forgotten first.
const MAX_QUEUE_IDS: usize = 100_000;

/// What other lines said about one queue id.
#[derive(Debug, Default)]
struct QueueInfo {
    sender: Option<String>,
    size: Option<u64>,
    message_id: Option<String>,
    /// Recipients whose last attempt was deferred, for `status=expired` at queue level.
    deferred: Vec<String>,
}

/// Correlating Postfix normaliser.
#[derive(Debug)]
pub struct PostfixNormaliser {
    queues: BoundedMap<QueueInfo>,
    settings: LineSettings,
}

impl Default for PostfixNormaliser {
    fn default() -> Self {
        Self::new(LineSettings::default())
    }
}

impl PostfixNormaliser {
    #[must_use]
    pub fn new(settings: LineSettings) -> Self {
        Self { queues: BoundedMap::new(MAX_QUEUE_IDS), settings }
    }
}

/// The parts of a syslog line.
#[derive(Debug, PartialEq, Eq)]
struct SyslogLine<'a> {
    at: Option<DateTime<Utc>>,
    host: Option<&'a str>,
    program: Option<&'a str>,
    message: &'a str,
}

/// The syslog header's parts, or the bare message part (`QUEUEID: ...`) as a shipper that
/// strips the header leaves it.
fn parse_syslog(line: &str, now: DateTime<Utc>, zone: Option<Zone>) -> Option<SyslogLine<'_>> {
    let line = line.trim_end();
    if let Some(header) = crate::syslog::header::parse(line, now, zone) {
        let Header { at, host, program, message, .. } = header;
        return Some(SyslogLine { at, host, program, message });
    }
    queue_id_of(line).map(|_| SyslogLine { at: None, host: None, program: None, message: line })
}

/// Postfix queue ids: short hex (`C93CEB08A046`) or long (`4Xyz...`) alphanumerics.
fn queue_id_of(message: &str) -> Option<(&str, &str)> {
    let (id, rest) = message.split_once(": ")?;
    (id.len() >= 5 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some((id, rest))
}

/// `key=value, key=value, status=word (text)` -> (pairs, status, text).
fn fields(rest: &str) -> (Vec<(&str, &str)>, Option<&str>, Option<&str>) {
    let (head, status_part) = match rest.find("status=") {
        Some(at) => (&rest[..at], Some(&rest[at + "status=".len()..])),
        None => (rest, None),
    };
    let pairs = head.split(", ").filter_map(|pair| pair.trim().trim_end_matches(',').split_once('=')).collect();
    let (status, text) = match status_part {
        Some(part) => {
            let (word, after) = part.split_once(' ').unwrap_or((part, ""));
            let after = after.trim();
            let text = after.strip_prefix('(').map(|t| &t[..t.rfind(')').unwrap_or(t.len())]);
            (Some(word.trim_end_matches(',')), text.or((!after.is_empty()).then_some(after)))
        }
        None => (None, None),
    };
    (pairs, status, text)
}

fn unbracket(value: &str) -> &str {
    value.trim_start_matches('<').trim_end_matches('>')
}

/// `host[ip]:port` -> (host, ip).
fn relay_parts(relay: &str) -> (Option<String>, Option<String>) {
    if relay == "none" || relay.is_empty() {
        return (None, None);
    }
    match relay.split_once('[') {
        Some((host, rest)) => {
            let ip = rest.split(']').next().unwrap_or("");
            let ip = ip.strip_prefix("::ffff:").unwrap_or(ip);
            (Some(host.to_ascii_lowercase()).filter(|h| !h.is_empty()), Some(ip.to_owned()).filter(|i| !i.is_empty()))
        }
        None => (Some(relay.to_ascii_lowercase()), None),
    }
}

impl LineNormaliser for PostfixNormaliser {
    fn push_line(&mut self, line: &str, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, LineError> {
        let parsed = parse_syslog(line, ingested_at, self.settings.time_zone)
            .ok_or_else(|| LineError("not a syslog line".into()))?;
        if parsed.program.is_some_and(|p| !p.starts_with("postfix")) {
            return Ok(Vec::new()); // another daemon in the same log
        }
        let Some((queue_id, rest)) = queue_id_of(parsed.message) else {
            return Ok(Vec::new()); // connection notices and the like
        };
        if rest == "removed" {
            self.queues.remove(queue_id);
            return Ok(Vec::new());
        }
        let (pairs, status, text) = fields(rest);
        let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if let Some(message_id) = get("message-id") {
            self.queues.entry(queue_id).message_id = Some(unbracket(message_id).to_owned());
        }
        let program = parsed.program.unwrap_or("postfix");
        if program.ends_with("/qmgr") || (get("to").is_none() && get("from").is_some()) {
            let info = self.queues.entry(queue_id);
            if let Some(from) = get("from") {
                info.sender = Some(unbracket(from).to_owned()).filter(|s| !s.is_empty());
            }
            if let Some(size) = get("size") {
                info.size = size.parse().ok();
            }
            if status == Some("expired") {
                let recipients = std::mem::take(&mut info.deferred);
                return Ok(recipients
                    .iter()
                    .map(|r| self.event(&parsed, line, queue_id, r, EventKind::Expired, &[], text, ingested_at))
                    .collect());
            }
            return Ok(Vec::new());
        }
        let (Some(to), Some(status)) = (get("to"), status) else { return Ok(Vec::new()) };
        let kind = match status {
            "sent" | "delivered" => EventKind::Delivered,
            "deferred" => EventKind::Deferred,
            "bounced" => EventKind::Bounced,
            "expired" => EventKind::Expired,
            "undeliverable" => EventKind::Bounced,
            other => return Err(LineError(format!("unknown Postfix status `{other}`"))),
        };
        let recipient = unbracket(to).to_owned();
        {
            let info = self.queues.entry(queue_id);
            info.deferred.retain(|r| r != &recipient);
            if kind == EventKind::Deferred {
                info.deferred.push(recipient.clone());
            }
        }
        Ok(vec![self.event(&parsed, line, queue_id, &recipient, kind, &pairs, text, ingested_at)])
    }
}

impl PostfixNormaliser {
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        parsed: &SyslogLine<'_>,
        line: &str,
        queue_id: &str,
        recipient: &str,
        kind: EventKind,
        pairs: &[(&str, &str)],
        text: Option<&str>,
        ingested_at: DateTime<Utc>,
    ) -> DeliveryEvent {
        let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let at = parsed.at.unwrap_or(ingested_at);
        let mut event =
            DeliveryEvent::new(line_event_id("postfix", line, recipient), SourceKind::Postfix, kind, at, ingested_at);
        let info = self.queues.get(queue_id);
        event.source_node = parsed.host.map(str::to_owned);
        event.source_type = Some(format!("status={}", kind.as_str()));
        event.queue_id = Some(queue_id.to_owned());
        event.message_id = info.and_then(|i| i.message_id.clone());
        event.sender = info.and_then(|i| i.sender.clone());
        event.sender_domain = event.sender.as_deref().and_then(domain_of);
        event.size_bytes = info.and_then(|i| i.size);
        event.recipient = Some(recipient.to_owned());
        event.recipient_domain = domain_of(recipient);
        // Postfix does not log the sending address: the configured egress map says which
        // source and IP the transport, instance or host stands for; else the sending host
        // stands for it, and a multi-instance setup's syslog name (postfix-out1/smtp) for
        // the pool.
        match self.settings.postfix_egress.iter().find(|e| e.matches(parsed.program, parsed.host)) {
            Some(egress) => {
                event.egress_source = Some(egress.egress_source.clone());
                event.sending_ip = egress.sending_ip.map(|ip| ip.to_string());
            }
            None => event.egress_source = parsed.host.map(str::to_owned),
        }
        event.egress_pool =
            parsed.program.and_then(|p| p.split('/').next()).filter(|p| *p != "postfix").map(str::to_owned);
        let (mx_host, mx_ip) = relay_parts(get("relay").unwrap_or(""));
        event.mx_host = mx_host;
        event.mx_ip = mx_ip;
        event.enhanced_status = get("dsn").map(str::to_owned);
        if let Some(text) = text {
            let (code, enhanced, reply) = split_reply(text);
            event.smtp_code = code;
            event.enhanced_status = event.enhanced_status.or(enhanced);
            let (reply, command) = match reply.rsplit_once(" (in reply to ") {
                Some((reply, command)) => {
                    (reply.to_owned(), Some(command.trim_end_matches(')').trim_end_matches(" command").to_owned()))
                }
                None => (reply, None),
            };
            event.response_text = Some(reply);
            event.smtp_command = command;
        }
        event.raw = Some(line.to_owned());
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_syslog_shape_is_read() {
        let shapes = [
            "Dec  4 10:33:25 mx postfix/smtp[14678]: ABCDEF: removed",
            "2026-01-09T10:33:25.123+01:00 mx postfix/smtp[14678]: ABCDEF: removed",
            "<22>1 2026-01-09T10:33:25Z mx postfix/smtp 14678 - - ABCDEF: removed",
            // RFC 3164 with its priority: rsyslog's and syslog-ng's default network forwarding.
            "<22>Jan  9 10:33:25 mx postfix/smtp[14678]: ABCDEF: removed",
            "ABCDEF: removed",
        ];
        for shape in shapes {
            let parsed = parse_syslog(shape, now(), None).unwrap();
            assert_eq!(parsed.message, "ABCDEF: removed", "{shape}");
        }
        let parsed = parse_syslog(shapes[1], now(), None).unwrap();
        assert_eq!(parsed.at.unwrap().to_rfc3339(), "2026-01-09T09:33:25.123+00:00");
        assert_eq!((parsed.host, parsed.program), (Some("mx"), Some("postfix/smtp")));
    }

    #[test]
    fn interleaved_queue_ids_are_correlated() {
        let lines = [
            "Jan  9 10:00:00 mx postfix/cleanup[1]: AAAAA11111: message-id=<a@example.net>",
            "Jan  9 10:00:00 mx postfix/cleanup[1]: BBBBB22222: message-id=<b@example.net>",
            "Jan  9 10:00:01 mx postfix/qmgr[2]: BBBBB22222: from=<bob@example.net>, size=200, nrcpt=1 (queue active)",
            "Jan  9 10:00:01 mx postfix/qmgr[2]: AAAAA11111: from=<alice@example.net>, size=100, nrcpt=2 (queue active)",
            "Jan  9 10:00:02 mx postfix/smtp[3]: BBBBB22222: to=<x@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 OK)",
            "Jan  9 10:00:02 mx postfix/smtp[4]: AAAAA11111: to=<y@yahoo.com>, relay=mta5.am0.yahoodns.net[67.195.1.1]:25, delay=1, delays=0/0/0/1, dsn=4.7.0, status=deferred (host mta5.am0.yahoodns.net[67.195.1.1] said: 421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred (in reply to MAIL FROM command))",
            "Jan  9 10:00:03 mx postfix/smtp[4]: AAAAA11111: to=<z@example.org>, relay=mx.example.org[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host mx.example.org[192.0.2.9] said: 550 5.1.1 <z@example.org>: User unknown (in reply to RCPT TO command))",
            "Jan  9 10:00:04 mx postfix/qmgr[2]: BBBBB22222: removed",
        ];
        let mut normaliser = PostfixNormaliser::default();
        let events: Vec<DeliveryEvent> = lines.iter().flat_map(|l| normaliser.push_line(l, now()).unwrap()).collect();
        assert_eq!(events.len(), 3);
        let b = &events[0];
        assert_eq!(
            (b.sender.as_deref(), b.message_id.as_deref(), b.size_bytes),
            (Some("bob@example.net"), Some("b@example.net"), Some(200))
        );
        assert_eq!(b.kind, EventKind::Delivered);
        let a = &events[1];
        assert_eq!((a.sender.as_deref(), a.message_id.as_deref()), (Some("alice@example.net"), Some("a@example.net")));
        assert_eq!(
            (a.kind, a.smtp_code, a.enhanced_status.as_deref()),
            (EventKind::Deferred, Some(421), Some("4.7.0"))
        );
        assert_eq!(a.smtp_command.as_deref(), Some("MAIL FROM"));
        assert_eq!(a.mx_host.as_deref(), Some("mta5.am0.yahoodns.net"));
        assert_eq!(events[2].response_text.as_deref(), Some("550 5.1.1 <z@example.org>: User unknown"));
        assert_eq!(normaliser.queues.len(), 1, "removed queue ids are forgotten");
    }

    #[test]
    fn expiry_at_queue_level_expires_the_deferred_recipients() {
        let mut normaliser = PostfixNormaliser::default();
        let deferred = "Jan  9 10:00:02 mx postfix/smtp[4]: CCCCC33333: to=<y@example.org>, relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred (connect to example.org[192.0.2.1]:25: Connection timed out)";
        assert_eq!(normaliser.push_line(deferred, now()).unwrap()[0].kind, EventKind::Deferred);
        let expired =
            "Jan  9 11:00:00 mx postfix/qmgr[2]: CCCCC33333: from=<s@example.net>, status=expired, returned to sender";
        let events = normaliser.push_line(expired, now()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].kind, events[0].recipient.as_deref()), (EventKind::Expired, Some("y@example.org")));
    }

    #[test]
    fn lines_that_are_not_postfix_give_errors_or_nothing() {
        let mut normaliser = PostfixNormaliser::default();
        assert!(normaliser.push_line("Jan  9 10:00:00 mx sshd[1]: Accepted key", now()).unwrap().is_empty());
        assert!(
            normaliser
                .push_line("Jan  9 10:00:00 mx postfix/smtp[1]: connect to x[1.2.3.4]:25: Connection refused", now())
                .unwrap()
                .is_empty()
        );
        let weird = "Jan  9 10:00:00 mx postfix/smtp[1]: DDDDD44444: to=<a@b.c>, relay=none, status=teleported (x)";
        assert!(normaliser.push_line(weird, now()).unwrap_err().0.contains("teleported"));
    }

    #[test]
    fn rfc3164_lines_land_at_the_instant_of_the_configured_zone() {
        let zone: Zone = "Europe/Berlin".to_owned().try_into().unwrap();
        let settings = LineSettings { time_zone: Some(zone), ..LineSettings::default() };
        let mut normaliser = PostfixNormaliser::new(settings);
        // 10:00 in Berlin in January (CET, +01:00) is 09:00 UTC; in July (CEST) 08:00 UTC.
        let winter = "Jan  9 10:00:00 mx postfix/smtp[4]: AAAAA11111: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, dsn=2.0.0, status=sent (250 ok)";
        let events = normaliser.push_line(winter, now()).unwrap();
        assert_eq!(events[0].occurred_at.to_rfc3339(), "2026-01-09T09:00:00+00:00");
        let summer = "Jul  9 10:00:00 mx postfix/smtp[4]: BBBBB22222: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, dsn=2.0.0, status=sent (250 ok)";
        let july = DateTime::parse_from_rfc3339("2026-07-10T00:00:00Z").unwrap().with_timezone(&Utc);
        let events = normaliser.push_line(summer, july).unwrap();
        assert_eq!(events[0].occurred_at.to_rfc3339(), "2026-07-09T08:00:00+00:00");
        assert!(Zone::try_from("Mars/Olympus".to_owned()).unwrap_err().contains("Mars/Olympus"));
    }

    #[test]
    fn transports_bound_to_addresses_map_to_their_egress_source_and_ip() {
        let settings: LineSettings = toml::from_str(
            r#"
[[postfix_egress]]
service = "postfix/smtp-ip1/smtp"
egress_source = "ip1"
sending_ip = "192.0.2.11"
[[postfix_egress]]
service = "smtp-ip2"
egress_source = "ip2"
sending_ip = "192.0.2.12"
"#,
        )
        .unwrap();
        let mut normaliser = PostfixNormaliser::new(settings);
        let line = |program: &str, id: &str| {
            format!(
                "Jan  9 10:00:00 mx {program}[4]: {id}: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, dsn=2.0.0, status=sent (250 ok)"
            )
        };
        let one = normaliser.push_line(&line("postfix/smtp-ip1/smtp", "AAAAA11111"), now()).unwrap();
        let two = normaliser.push_line(&line("postfix/smtp-ip2/smtp", "BBBBB22222"), now()).unwrap();
        let other = normaliser.push_line(&line("postfix/smtp", "CCCCC33333"), now()).unwrap();
        assert_eq!((one[0].egress_source.as_deref(), one[0].sending_ip.as_deref()), (Some("ip1"), Some("192.0.2.11")));
        assert_eq!((two[0].egress_source.as_deref(), two[0].sending_ip.as_deref()), (Some("ip2"), Some("192.0.2.12")));
        assert_eq!((other[0].egress_source.as_deref(), other[0].sending_ip.as_deref()), (Some("mx"), None));
    }
}
