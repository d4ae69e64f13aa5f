//! Sliding-window delivery counts per scope: egress source, provider, egress source x provider.
//!
//! Counts live in one-minute buckets keyed by the event's own time, so a late event lands in
//! the minute it happened. A window of `w` minutes at `now` sums the buckets from the minute
//! `w - 1` minutes before `now`'s minute up to the newest bucket. Buckets older than the
//! longest window (24 h) are evicted, which bounds memory to scopes x 1 440 buckets. Events
//! our own MTA generated (`internal`) say nothing about reputation and are not counted.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use vigil_schemas::{DeliveryEvent, EventKind};

/// The scopes counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    EgressSource,
    Provider,
    EgressSourceProvider,
}

impl Scope {
    /// Parses the API spelling: `egress_source`, `provider`, `egress_source,provider`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text.replace(' ', "").as_str() {
            "egress_source" => Some(Self::EgressSource),
            "provider" => Some(Self::Provider),
            "egress_source,provider" | "provider,egress_source" => Some(Self::EgressSourceProvider),
            _ => None,
        }
    }
}

/// The windows offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    FiveMinutes,
    OneHour,
    OneDay,
}

impl Window {
    /// Parses `5m`, `1h` or `24h`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "5m" => Some(Self::FiveMinutes),
            "1h" => Some(Self::OneHour),
            "24h" | "1d" => Some(Self::OneDay),
            _ => None,
        }
    }

    #[must_use]
    pub fn minutes(self) -> i64 {
        match self {
            Self::FiveMinutes => 5,
            Self::OneHour => 60,
            Self::OneDay => 24 * 60,
        }
    }
}

/// The key of one counted scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ScopeKey {
    #[serde(skip)]
    pub scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// Outcome counts. `attempts = delivered + deferred + bounced`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub attempts: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub expired: u64,
    pub complaints: u64,
}

impl Counts {
    fn add(&mut self, other: &Self) {
        self.attempts += other.attempts;
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        self.expired += other.expired;
        self.complaints += other.complaints;
    }

    /// The counts one event contributes, or `None` if it is not an outcome.
    #[must_use]
    pub fn of(kind: EventKind) -> Option<Self> {
        let mut c = Self::default();
        match kind {
            EventKind::Delivered => c.delivered = 1,
            EventKind::Deferred => c.deferred = 1,
            EventKind::Bounced => c.bounced = 1,
            EventKind::Expired => c.expired = 1,
            EventKind::Complaint => c.complaints = 1,
            _ => return None,
        }
        c.attempts = c.delivered + c.deferred + c.bounced;
        Some(c)
    }
}

const HORIZON_MINUTES: i64 = 24 * 60;

/// The window store. Pure: time comes in as an argument.
#[derive(Debug, Default)]
pub struct WindowStore {
    buckets: HashMap<ScopeKey, BTreeMap<i64, Counts>>,
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

impl WindowStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts an enriched event, unless it is internal, not an outcome, or older than the
    /// longest window at `now`.
    pub fn record(&mut self, event: &DeliveryEvent, now: DateTime<Utc>) {
        if event.internal {
            return;
        }
        let Some(counts) = Counts::of(event.kind) else { return };
        let minute = minute_of(event.occurred_at);
        if minute <= minute_of(now) - HORIZON_MINUTES {
            return;
        }
        let provider = event.provider.clone();
        let source = event.egress_source.clone();
        let mut keys = vec![ScopeKey { scope: Scope::Provider, egress_source: None, provider: provider.clone() }];
        if source.is_some() {
            keys.push(ScopeKey { scope: Scope::EgressSource, egress_source: source.clone(), provider: None });
            keys.push(ScopeKey { scope: Scope::EgressSourceProvider, egress_source: source, provider });
        }
        for key in keys {
            self.buckets.entry(key).or_default().entry(minute).or_default().add(&counts);
        }
    }

    /// Drops buckets that no window at `now` can reach.
    pub fn evict(&mut self, now: DateTime<Utc>) {
        let oldest_kept = minute_of(now) - HORIZON_MINUTES + 1;
        self.buckets.retain(|_, buckets| {
            *buckets = buckets.split_off(&oldest_kept);
            !buckets.is_empty()
        });
    }

    /// Counts per key of `scope` over `window` ending at `now`, sorted by key; keys with no
    /// events in the window are left out.
    #[must_use]
    pub fn window(&self, scope: Scope, window: Window, now: DateTime<Utc>) -> Vec<(ScopeKey, Counts)> {
        let start = minute_of(now) - window.minutes() + 1;
        let mut rows: Vec<(ScopeKey, Counts)> = self
            .buckets
            .iter()
            .filter(|(key, _)| key.scope == scope)
            .filter_map(|(key, buckets)| {
                let mut total = Counts::default();
                for counts in buckets.range(start..).map(|(_, c)| c) {
                    total.add(counts);
                }
                (total != Counts::default()).then(|| (key.clone(), total))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::SourceKind;

    fn event(kind: EventKind, at: DateTime<Utc>, source: &str, provider: &str) -> DeliveryEvent {
        let mut e = DeliveryEvent::new("id".into(), SourceKind::Kumomta, kind, at, at);
        e.egress_source = Some(source.into());
        e.provider = Some(provider.into());
        e
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn windows_sum_the_right_minutes_per_scope() {
        let mut store = WindowStore::new();
        let now = at(1_700_000_000);
        store.record(&event(EventKind::Delivered, now, "ip1", "google"), now);
        store.record(&event(EventKind::Deferred, at(1_700_000_000 - 10 * 60), "ip1", "google"), now);
        store.record(&event(EventKind::Bounced, now, "ip2", "yahoo"), now);
        let mut internal = event(EventKind::Deferred, now, "ip2", "yahoo");
        internal.internal = true;
        store.record(&internal, now);

        let five = store.window(Scope::EgressSourceProvider, Window::FiveMinutes, now);
        assert_eq!(five.len(), 2);
        assert_eq!(five[0].1, Counts { attempts: 1, delivered: 1, ..Counts::default() });
        assert_eq!(five[1].1, Counts { attempts: 1, bounced: 1, ..Counts::default() });
        let hour = store.window(Scope::EgressSource, Window::OneHour, now);
        assert_eq!(hour[0].0.egress_source.as_deref(), Some("ip1"));
        assert_eq!(hour[0].1.attempts, 2);
        let providers = store.window(Scope::Provider, Window::OneDay, now);
        assert_eq!(providers.iter().map(|(k, _)| k.provider.clone().unwrap()).collect::<Vec<_>>(), ["google", "yahoo"]);
    }

    #[test]
    fn old_buckets_leave_the_windows_and_are_evicted() {
        let mut store = WindowStore::new();
        let t0 = at(1_700_000_000);
        store.record(&event(EventKind::Delivered, t0, "ip1", "google"), t0);
        let later = at(1_700_000_000 + 24 * 3600);
        assert!(store.window(Scope::Provider, Window::OneDay, later).is_empty());
        store.evict(later);
        assert!(store.buckets.is_empty());
        // Too old to count at all.
        store.record(&event(EventKind::Delivered, t0, "ip1", "google"), later);
        assert!(store.buckets.is_empty());
    }
}
