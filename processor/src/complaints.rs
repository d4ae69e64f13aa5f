//! Tying each complaint to the mail stream that caused it.
//!
//! A feedback report arrives hours or days after the message it is about and names the person
//! who complained, not the IP that sent to them. Reputation, rules and alerts need the egress
//! source, pool, campaign and tenant of that message, so every complaint is attributed:
//!
//! - **`trace`**: the report carried the stream itself (KumoMTA's `X-KumoRef` meta, a relay's
//!   event fields); the normaliser already set `attribution`, and it is left alone.
//! - **`joined`**: otherwise, the most recent delivery to the complainer within the horizon
//!   gives whatever the report lacked (a value the report has is never overwritten).
//! - **`unattributed`**: neither. The complaint is still counted for its provider.
//!
//! [`ComplaintJoin`] remembers the most recent delivery per recipient, bounded by a number of
//! recipients (least recently delivered to go first) and by the horizon on the events' own
//! clock. It is part of the derived state, so a restart from a snapshot attributes exactly as
//! the first pass did.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use vigil_schemas::{Attribution, DeliveryEvent, EventKind};

/// How far back and how many recipients the join remembers (`[processor]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinSettings {
    /// A complaint about mail older than this stays unattributed. Feedback loops report
    /// within minutes to a few days; a week covers the slow ones.
    pub horizon: Duration,
    /// Most recipients remembered; each costs about 100 bytes (their address, a time and a
    /// shared reference to their stream).
    pub max_recipients: usize,
}

/// `[processor.complaint_join]`: `horizon = "7d"`, `max_recipients = 200000`.
impl<'de> Deserialize<'de> for JoinSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given {
            horizon: Option<String>,
            max_recipients: Option<usize>,
        }
        let given = Given::deserialize(deserializer)?;
        let mut settings = Self::default();
        if let Some(text) = given.horizon {
            settings.horizon = humantime::parse_duration(text.trim())
                .map_err(|e| serde::de::Error::custom(format!("horizon `{text}`: {e} (e.g. \"7d\", \"36h\")")))?;
        }
        if let Some(max) = given.max_recipients {
            if max == 0 {
                return Err(serde::de::Error::custom("max_recipients must be at least 1"));
            }
            settings.max_recipients = max;
        }
        Ok(settings)
    }
}

impl Default for JoinSettings {
    fn default() -> Self {
        Self { horizon: Duration::from_secs(7 * 86_400), max_recipients: 200_000 }
    }
}

/// Where a message went out: what a joined complaint takes from its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Stream {
    egress_source: Option<String>,
    egress_pool: Option<String>,
    tenant: Option<String>,
    campaign: Option<String>,
    sending_ip: Option<String>,
}

#[derive(Debug, Clone)]
struct Sent {
    at: DateTime<Utc>,
    stream: Arc<Stream>,
}

/// Complaints counted by how they were attributed, in [`Attribution`] order
/// (trace, joined, unattributed).
pub type AttributionCounts = [u64; 3];

/// The most recent delivery per recipient, bounded. See the module documentation.
#[derive(Debug)]
pub struct ComplaintJoin {
    settings: JoinSettings,
    recent: LruCache<String, Sent>,
    /// One copy of each stream: recipients share a handful of them.
    streams: HashSet<Arc<Stream>>,
    /// The stream of the last delivery remembered.
    last: Option<Arc<Stream>>,
}

impl Default for ComplaintJoin {
    fn default() -> Self {
        Self::new(JoinSettings::default())
    }
}

impl Clone for ComplaintJoin {
    fn clone(&self) -> Self {
        let mut copy = Self::new(self.settings);
        for (recipient, sent) in self.recent.iter().rev() {
            let stream = copy.intern((*sent.stream).clone());
            copy.remember(recipient.clone(), sent.at, stream);
        }
        copy
    }
}

impl ComplaintJoin {
    #[must_use]
    pub fn new(settings: JoinSettings) -> Self {
        let capacity = NonZeroUsize::new(settings.max_recipients).unwrap_or(NonZeroUsize::MIN);
        Self { settings, recent: LruCache::new(capacity), streams: HashSet::new(), last: None }
    }

    /// Applies new settings, keeping what still fits (a snapshot taken under other settings).
    pub fn configure(&mut self, settings: JoinSettings) {
        if settings != self.settings {
            self.settings = settings;
            self.recent.resize(NonZeroUsize::new(settings.max_recipients).unwrap_or(NonZeroUsize::MIN));
            self.forget_unused_streams();
        }
    }

    /// Recipients remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Renames a remembered recipient (an erasure: see `vigil_log::privacy::Erasure`), keeping
    /// its place in the recency order, so later complaints join exactly as a replay of the
    /// rewritten log would. Returns whether it was remembered. Linear in what is remembered.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let from = from.to_ascii_lowercase();
        if !self.recent.contains(&from) {
            return false;
        }
        let mut renamed = LruCache::new(self.recent.cap());
        while let Some((recipient, sent)) = self.recent.pop_lru() {
            renamed.put(if recipient == from { to.to_ascii_lowercase() } else { recipient }, sent);
        }
        self.recent = renamed;
        true
    }

    /// Remembers a delivery, or attributes a complaint that is not attributed yet; other
    /// events pass untouched. Returns the complaint's attribution.
    pub fn observe(&mut self, event: &mut DeliveryEvent) -> Option<Attribution> {
        match event.kind {
            EventKind::Delivered if !event.internal => {
                if let Some(recipient) = &event.recipient {
                    self.record_delivery(recipient.to_ascii_lowercase(), event);
                }
                None
            }
            EventKind::Complaint => {
                if event.attribution.is_none() {
                    let attribution = self.attribute(event);
                    event.attribution = Some(attribution);
                }
                event.attribution
            }
            _ => None,
        }
    }

    /// Observes every event of a batch in order; returns the complaints per attribution.
    pub fn observe_all<'a>(&mut self, events: impl IntoIterator<Item = &'a mut DeliveryEvent>) -> AttributionCounts {
        let mut counts = [0; 3];
        for event in events {
            if let Some(attribution) = self.observe(event) {
                counts[attribution as usize] += 1;
            }
        }
        counts
    }

    fn record_delivery(&mut self, recipient: String, event: &DeliveryEvent) {
        // Deliveries arrive roughly in time order; a late one never replaces a newer one.
        if self.recent.peek(&recipient).is_some_and(|sent| sent.at > event.occurred_at) {
            return;
        }
        let stream = self.stream_of(event);
        self.remember(recipient, event.occurred_at, stream);
        self.expire(event.occurred_at);
    }

    /// The shared copy of the event's stream. Deliveries come in runs from one stream, so the
    /// last one is tried before anything is allocated.
    fn stream_of(&mut self, event: &DeliveryEvent) -> Arc<Stream> {
        let same = |s: &Stream| {
            s.egress_source == event.egress_source
                && s.egress_pool == event.egress_pool
                && s.tenant == event.tenant
                && s.campaign == event.campaign
                && s.sending_ip == event.sending_ip
        };
        if let Some(last) = self.last.as_ref().filter(|last| same(last)) {
            return Arc::clone(last);
        }
        let stream = self.intern(Stream {
            egress_source: event.egress_source.clone(),
            egress_pool: event.egress_pool.clone(),
            tenant: event.tenant.clone(),
            campaign: event.campaign.clone(),
            sending_ip: event.sending_ip.clone(),
        });
        self.last = Some(Arc::clone(&stream));
        stream
    }

    fn intern(&mut self, stream: Stream) -> Arc<Stream> {
        if let Some(shared) = self.streams.get(&stream) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(stream);
        self.streams.insert(Arc::clone(&shared));
        shared
    }

    fn remember(&mut self, recipient: String, at: DateTime<Utc>, stream: Arc<Stream>) {
        self.recent.put(recipient, Sent { at, stream });
        // Streams no recipient refers to any more are dropped now and then, in time linear
        // in what is kept, so the set stays within a small multiple of the live ones.
        if self.streams.len() > 64 && self.streams.len() > 2 * self.recent.len() {
            self.forget_unused_streams();
        }
    }

    /// Forgets deliveries older than the horizon before `now`, least recent first.
    fn expire(&mut self, now: DateTime<Utc>) {
        let horizon = TimeDelta::from_std(self.settings.horizon).unwrap_or(TimeDelta::MAX);
        while self.recent.peek_lru().is_some_and(|(_, sent)| now - sent.at > horizon) {
            self.recent.pop_lru();
        }
    }

    fn forget_unused_streams(&mut self) {
        self.last = None;
        self.streams.retain(|stream| Arc::strong_count(stream) > 1);
    }

    fn attribute(&self, complaint: &mut DeliveryEvent) -> Attribution {
        let Some(recipient) = complaint.recipient.as_deref() else { return Attribution::Unattributed };
        let Some(sent) = self.recent.peek(&recipient.to_ascii_lowercase()) else {
            return Attribution::Unattributed;
        };
        let horizon = TimeDelta::from_std(self.settings.horizon).unwrap_or(TimeDelta::MAX);
        // The report says when the original arrived at the provider; the delivery is only
        // the one this complaint is about if it went out by then.
        let about = complaint.original_sent_at.unwrap_or(complaint.occurred_at);
        if complaint.occurred_at - sent.at > horizon || sent.at > about + TimeDelta::minutes(5) {
            return Attribution::Unattributed;
        }
        let stream = &sent.stream;
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut complaint.egress_source, &stream.egress_source);
        fill(&mut complaint.egress_pool, &stream.egress_pool);
        fill(&mut complaint.tenant, &stream.tenant);
        fill(&mut complaint.campaign, &stream.campaign);
        fill(&mut complaint.sending_ip, &stream.sending_ip);
        complaint.original_sent_at.get_or_insert(sent.at);
        Attribution::Joined
    }
}

/// In snapshots: the settings' horizon aside, the remembered deliveries, oldest first.
#[derive(Serialize, Deserialize)]
struct Remembered {
    streams: Vec<Stream>,
    /// (recipient, unix milliseconds, index into `streams`), least recent first.
    recent: Vec<(String, i64, u32)>,
}

impl Serialize for ComplaintJoin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut index: std::collections::HashMap<*const Stream, u32> = std::collections::HashMap::new();
        let mut streams = Vec::new();
        let mut recent = Vec::with_capacity(self.recent.len());
        for (recipient, sent) in self.recent.iter().rev() {
            let at = *index.entry(Arc::as_ptr(&sent.stream)).or_insert_with(|| {
                streams.push((*sent.stream).clone());
                u32::try_from(streams.len() - 1).unwrap_or(u32::MAX)
            });
            recent.push((recipient.clone(), sent.at.timestamp_millis(), at));
        }
        Remembered { streams, recent }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ComplaintJoin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let remembered = Remembered::deserialize(deserializer)?;
        // Loaded with room for everything; `configure` applies the settings in force.
        let mut join = Self::new(JoinSettings {
            max_recipients: remembered.recent.len().max(JoinSettings::default().max_recipients),
            ..JoinSettings::default()
        });
        let streams: Vec<Arc<Stream>> = remembered.streams.into_iter().map(|s| join.intern(s)).collect();
        for (recipient, millis, at) in remembered.recent {
            let (Some(stream), Some(at_time)) =
                (streams.get(at as usize), DateTime::<Utc>::from_timestamp_millis(millis))
            else {
                return Err(serde::de::Error::custom("complaint join: a delivery refers to no stream"));
            };
            join.remember(recipient, at_time, Arc::clone(stream));
        }
        Ok(join)
    }
}

#[cfg(test)]
mod tests {
    use vigil_schemas::SourceKind;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn delivery(recipient: &str, source: &str, secs: i64) -> DeliveryEvent {
        let mut e = DeliveryEvent::new(
            format!("d-{recipient}-{secs}"),
            SourceKind::Kumomta,
            EventKind::Delivered,
            at(secs),
            at(secs),
        );
        e.recipient = Some(recipient.into());
        e.egress_source = Some(source.into());
        e.egress_pool = Some("pool-1".into());
        e.campaign = Some("spring".into());
        e
    }

    fn complaint(recipient: Option<&str>, secs: i64) -> DeliveryEvent {
        let mut e =
            DeliveryEvent::new(format!("c-{secs}"), SourceKind::Kumomta, EventKind::Complaint, at(secs), at(secs));
        e.recipient = recipient.map(Into::into);
        e
    }

    #[test]
    fn a_complaint_takes_the_stream_of_the_latest_delivery_to_its_complainer() {
        let mut join = ComplaintJoin::default();
        join.observe(&mut delivery("Alice@yahoo.com", "ip-1", 0));
        join.observe(&mut delivery("alice@yahoo.com", "ip-2", 60));
        join.observe(&mut delivery("bob@yahoo.com", "ip-3", 90));
        let mut c = complaint(Some("alice@yahoo.com"), 86_400);
        c.campaign = Some("from-the-trace".into());
        assert_eq!(join.observe(&mut c), Some(Attribution::Joined));
        assert_eq!(c.egress_source.as_deref(), Some("ip-2"));
        assert_eq!(c.egress_pool.as_deref(), Some("pool-1"));
        assert_eq!(c.campaign.as_deref(), Some("from-the-trace"), "the report's own value stands");
        assert_eq!(c.original_sent_at, Some(at(60)));
    }

    #[test]
    fn complaints_without_a_delivery_in_reach_are_unattributed_and_traced_ones_stay_traced() {
        let settings = JoinSettings { horizon: Duration::from_secs(3_600), max_recipients: 2 };
        let mut join = ComplaintJoin::new(settings);
        join.observe(&mut delivery("a@x.example", "ip-1", 0));
        join.observe(&mut delivery("b@x.example", "ip-1", 10));
        join.observe(&mut delivery("c@x.example", "ip-1", 20));
        assert_eq!(join.len(), 2, "bounded by recipients: a went first");
        let mut events = [
            complaint(Some("a@x.example"), 30),
            complaint(Some("c@x.example"), 7_200),
            complaint(None, 40),
            complaint(Some("b@x.example"), 50),
        ];
        events[3].attribution = Some(Attribution::Trace);
        let counts = join.observe_all(events.iter_mut());
        assert_eq!(counts, [1, 0, 3], "a forgotten, c past the horizon, one unnamed, b traced");
        assert!(events.iter().take(3).all(|e| e.egress_source.is_none()));
        // A report about mail the provider got before this delivery went out is not about it.
        let mut join = ComplaintJoin::default();
        join.observe(&mut delivery("a@x.example", "ip-1", 1_000));
        let mut early = complaint(Some("a@x.example"), 2_000);
        early.original_sent_at = Some(at(0));
        assert_eq!(join.observe(&mut early), Some(Attribution::Unattributed));
    }

    #[test]
    fn a_snapshot_round_trip_attributes_as_before() {
        let mut join = ComplaintJoin::default();
        for n in 0..50 {
            join.observe(&mut delivery(&format!("r{n}@x.example"), &format!("ip-{}", n % 3), n));
        }
        let bytes = postcard::to_allocvec(&join).unwrap();
        let mut loaded: ComplaintJoin = postcard::from_bytes(&bytes).unwrap();
        loaded.configure(JoinSettings { max_recipients: 10, ..JoinSettings::default() });
        assert_eq!(loaded.len(), 10, "the 10 most recent kept");
        assert!(loaded.streams.len() <= 3);
        let mut c = complaint(Some("r49@x.example"), 100);
        assert_eq!(loaded.observe(&mut c), Some(Attribution::Joined));
        assert_eq!(c.egress_source.as_deref(), Some("ip-1"));
        let mut old = complaint(Some("r5@x.example"), 100);
        assert_eq!(loaded.observe(&mut old), Some(Attribution::Unattributed));
    }
}
