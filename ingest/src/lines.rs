//! Line-oriented log formats behind one interface, so the tail, syslog receivers and
//! `vigil parse` share the same normalisers.
//!
//! Every format reads a line's syslog header, when it has one, with the one parser in
//! [`crate::syslog::header`]: Postfix and Exim take their time, host and program from it,
//! KumoMTA and PowerMTA records that were shipped over syslog are the message after it.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use vigil_schemas::DeliveryEvent;

/// Why a line could not be normalised. The text names what is wrong, for the dead letter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct LineError(pub String);

/// Turns log lines into events. Stateful formats (Postfix correlates lines by queue id; a CSV
/// needs its header) keep their state between calls, bounded in size.
pub trait LineNormaliser: Send {
    /// Normalises one line (without its newline). A line that is valid but reports no outcome
    /// (a connection notice, a queue-manager line whose facts are kept for later) gives no event.
    ///
    /// # Errors
    /// When the line cannot be read as the format at all.
    fn push_line(&mut self, line: &str, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, LineError>;
}

/// The formats `vigil parse --from` and the tails understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Kumomta,
    Postfix,
    Exim,
    Powermta,
}

impl Format {
    /// A fresh normaliser for this format, with the default settings (UTC, no egress map).
    #[must_use]
    pub fn normaliser(self) -> Box<dyn LineNormaliser> {
        self.normaliser_with(&LineSettings::default())
    }

    /// A fresh normaliser for this format with the source's `settings`.
    #[must_use]
    pub fn normaliser_with(self, settings: &LineSettings) -> Box<dyn LineNormaliser> {
        match self {
            Self::Kumomta => Box::new(KumoLines),
            Self::Postfix => Box::new(crate::postfix::PostfixNormaliser::new(settings.clone())),
            Self::Exim => Box::new(crate::exim::EximNormaliser::new(settings.time_zone)),
            Self::Powermta => Box::new(crate::powermta::PowermtaNormaliser::default()),
        }
    }
}

/// Per-source settings for the gaps in what MTA log lines say (part of `[sources]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSettings {
    /// The zone of times that carry none (RFC 3164 syslog, Postfix files, Exim without
    /// `log_timezone`): an IANA name such as `Europe/Berlin`. Default UTC.
    #[serde(default)]
    pub time_zone: Option<Zone>,
    /// Postfix logs no sending address: which egress source and IP a line's transport, instance
    /// or host stands for. First match wins; a line no entry matches keeps the syslog host as
    /// its egress source, as before.
    #[serde(default)]
    pub postfix_egress: Vec<PostfixEgress>,
}

/// An IANA time zone, named in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Zone(pub chrono_tz::Tz);

impl std::str::FromStr for Zone {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        name.parse::<chrono_tz::Tz>()
            .map(Zone)
            .map_err(|_| format!("unknown time zone `{name}`: use an IANA name such as `Europe/Berlin` or `UTC`"))
    }
}

impl TryFrom<String> for Zone {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

/// `naive` read in `zone` (UTC without one). In the hour a clock goes back, the earlier
/// instant; in the hour it skips, the time as if the clock had not moved yet.
#[must_use]
pub fn local_time(naive: &NaiveDateTime, zone: Option<Zone>) -> DateTime<Utc> {
    let Some(Zone(zone)) = zone else { return Utc.from_utc_datetime(naive) };
    match zone.from_local_datetime(naive) {
        chrono::LocalResult::Single(at) | chrono::LocalResult::Ambiguous(at, _) => at.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // The offset in force before the clock moved: a day earlier (zones never change
            // twice in a day), whichever side of UTC the zone is.
            let before = zone.offset_from_utc_datetime(&(*naive - chrono::TimeDelta::days(1)));
            Utc.from_utc_datetime(&(*naive - chrono::offset::Offset::fix(&before)))
        }
    }
}

/// One entry of `[[sources.postfix_egress]]`: the keys given must all match a line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostfixEgress {
    /// The syslog program of the delivery line, as master.cf's transports appear in the log:
    /// `postfix/smtp-ip1/smtp` (a transport bound with `smtp_bind_address`), or its middle
    /// part `smtp-ip1`.
    #[serde(default)]
    pub service: Option<String>,
    /// A multi-instance setup's syslog name, the program's first part (`postfix-out1`).
    #[serde(default)]
    pub instance: Option<String>,
    /// The syslog host that logged the line.
    #[serde(default)]
    pub host: Option<String>,
    /// The egress source the line's events are counted under.
    pub egress_source: String,
    /// The address that transport sends from.
    #[serde(default)]
    pub sending_ip: Option<std::net::IpAddr>,
}

impl PostfixEgress {
    /// Whether a line logged by `program` on `host` left through this egress.
    #[must_use]
    pub fn matches(&self, program: Option<&str>, host: Option<&str>) -> bool {
        let program = program.unwrap_or("");
        let service_ok = self.service.as_deref().is_none_or(|service| {
            program == service || (service.find('/').is_none() && program.split('/').nth(1) == Some(service))
        });
        let instance_ok = self.instance.as_deref().is_none_or(|instance| program.split('/').next() == Some(instance));
        let host_ok = self.host.as_deref().is_none_or(|h| host.is_some_and(|l| l.eq_ignore_ascii_case(h)));
        (self.service.is_some() || self.instance.is_some() || self.host.is_some())
            && service_ok
            && instance_ok
            && host_ok
    }
}

/// KumoMTA JSONL: every line stands alone.
#[derive(Debug)]
struct KumoLines;

impl LineNormaliser for KumoLines {
    fn push_line(&mut self, line: &str, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, LineError> {
        // Records shipped over syslog arrive behind a header; the record is the message.
        let record = crate::syslog::header::parse(line, ingested_at, None).map_or(line, |header| header.message);
        crate::kumomta::normalise_record(record, ingested_at).map_err(|e| LineError(e.to_string()))
    }
}

/// Normalises one raw record into `batch`: its events, or a dead letter with the reason (which
/// is also returned). The one place where input bytes become events or dead letters, for every
/// receiver and tail.
///
/// # Errors
/// The reason the record was rejected (it is in `batch` as a dead letter as well).
pub fn push_into_batch(
    batch: &mut vigil_log::AppendBatch,
    normaliser: &mut dyn LineNormaliser,
    source: &str,
    location: String,
    raw: &[u8],
    ingested_at: DateTime<Utc>,
) -> Result<(), String> {
    let outcome = std::str::from_utf8(raw)
        .map_err(|e| format!("record is not valid UTF-8: {e}"))
        .and_then(|text| normaliser.push_line(text.trim_end_matches(['\r', '\n']), ingested_at).map_err(|e| e.0));
    match outcome {
        Ok(events) => {
            batch.events.extend(events);
            Ok(())
        }
        Err(reason) => {
            batch.dead_letters.push(vigil_schemas::DeadLetter::new(source, Some(location), reason.clone(), raw));
            Err(reason)
        }
    }
}

/// A stable 128-bit id (hex) for an event of a line-oriented source: the source name, the raw
/// line and the recipient, so the same line read twice (a re-read file, a syslog retry) gets the
/// same id, and two recipients of one line get different ones.
#[must_use]
pub fn line_event_id(source: &str, line: &str, recipient: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [source, line, recipient] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// A bounded map that forgets its oldest entries: per-message state of a correlating parser
/// (a message whose last line never comes must not hold memory forever).
#[derive(Debug)]
pub struct BoundedMap<V> {
    map: std::collections::HashMap<String, V>,
    order: std::collections::VecDeque<String>,
    capacity: usize,
}

impl<V> BoundedMap<V> {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self { map: std::collections::HashMap::new(), order: std::collections::VecDeque::new(), capacity }
    }

    /// The entry for `key`, created with `V::default()` if absent (evicting the oldest when full).
    pub fn entry(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        if !self.map.contains_key(key) {
            while self.map.len() >= self.capacity {
                let Some(oldest) = self.order.pop_front() else { break };
                self.map.remove(&oldest);
            }
            self.order.push_back(key.to_owned());
            self.map.insert(key.to_owned(), V::default());
        }
        self.map.get_mut(key).expect("inserted above")
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let removed = self.map.remove(key);
        // The key stays in `order` (popping a missing key later is harmless); when removed keys
        // pile up there, drop them, so `order` stays within twice the capacity.
        if self.order.len() > self.capacity.saturating_mul(2).max(16) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        removed
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The reply code and enhanced code in a remote server's reply quoted by an MTA (`host x said:
/// 550 5.1.1 <a@b>: ...`), and the reply itself without the MTA's wrapping.
#[must_use]
pub fn split_reply(text: &str) -> (Option<u16>, Option<String>, String) {
    let reply = text.split_once(" said: ").map_or(text, |(_, r)| r);
    let reply = reply.trim();
    let mut words = reply.split_whitespace();
    let code = words
        .next()
        .and_then(|w| w.get(..3).filter(|_| w.len() == 3 || w.as_bytes()[3] == b'-'))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c));
    let enhanced = code.and_then(|_| {
        let second = reply.get(4..)?.split_whitespace().next()?;
        let mut parts = second.split('.');
        let ok = parts.clone().count() == 3 && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| second.to_owned())
    });
    (code, enhanced, reply.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_across_daylight_saving_changes() {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        let new_york: Zone = "America/New_York".parse().unwrap();
        let at = |text: &str| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap();
        let utc = |zone, text: &str| local_time(&at(text), Some(zone)).to_rfc3339();
        assert_eq!(utc(berlin, "2026-01-09 10:00:00"), "2026-01-09T09:00:00+00:00");
        // 02:30 does not exist on 2026-03-29 in Berlin: read as if the clock had not moved.
        assert_eq!(utc(berlin, "2026-03-29 01:59:00"), "2026-03-29T00:59:00+00:00");
        assert_eq!(utc(berlin, "2026-03-29 02:30:00"), "2026-03-29T01:30:00+00:00");
        // 02:30 happens twice on 2026-10-25: the earlier one.
        assert_eq!(utc(berlin, "2026-10-25 02:30:00"), "2026-10-25T00:30:00+00:00");
        assert_eq!(utc(new_york, "2026-03-08 02:30:00"), "2026-03-08T07:30:00+00:00");
        assert_eq!(local_time(&at("2026-03-29 02:30:00"), None).to_rfc3339(), "2026-03-29T02:30:00+00:00");
    }

    #[test]
    fn bounded_maps_forget_the_oldest() {
        let mut map: BoundedMap<u32> = BoundedMap::new(2);
        *map.entry("a") = 1;
        *map.entry("b") = 2;
        *map.entry("c") = 3;
        assert_eq!((map.get("a"), map.get("b"), map.get("c")), (None, Some(&2), Some(&3)));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn insert_and_remove_forever_stays_bounded() {
        let mut map: BoundedMap<u32> = BoundedMap::new(100);
        for i in 0..100_000 {
            let key = i.to_string();
            *map.entry(&key) = i;
            map.remove(&key);
        }
        assert!(map.is_empty());
        assert!(map.order.len() <= 200, "{}", map.order.len());
    }

    #[test]
    fn replies_are_split_from_their_wrapping() {
        let (code, enhanced, reply) = split_reply("host mx[192.0.2.1] said: 550 5.1.1 <a@b>: unknown");
        assert_eq!((code, enhanced.as_deref(), reply.as_str()), (Some(550), Some("5.1.1"), "550 5.1.1 <a@b>: unknown"));
        assert_eq!(split_reply("connect to x[1.2.3.4]:25: Connection timed out").0, None);
        assert_eq!(split_reply("550-5.7.1 blocked").1.as_deref(), Some("5.7.1"));
    }
}
