//! Exact sliding-window counts per scope, in minute buckets.
//!
//! # Time
//! The store keeps its own clock, the *watermark*: the newest minute of `ingested_at` it has
//! seen. Nothing reads the wall clock, so replaying the same log gives the same state.
//! - An event is counted in the minute it happened (`occurred_at`), so a late event lands
//!   where it belongs; one stamped later than it was received (a sender's clock ahead of
//!   ours) is counted in the minute it was received.
//! - Buckets older than the horizon (24 h before the watermark) are out of every window;
//!   an event that old when it arrives is not counted (`too_late`) and
//!   [`ReputationStore::evict`] frees such buckets.
//! - A window of `w` minutes ending at `as_of` sums the buckets of minutes
//!   `(as_of - w, as_of]`, never reaching past the horizon, so whether or not a stale bucket
//!   was evicted yet never changes an answer.
//!
//! # Memory
//! Scope values (egress sources, providers, tenants, ...) and label names are interned to
//! `u32`; a scope's minute bucket is 28 bytes and exists only for minutes with events, and
//! labels (failure classes, signals) are kept sparse beside them. Memory is bounded by the
//! number of (scope, active minute) pairs in 24 h; eviction also drops interned names no
//! live scope uses. For the alert rules, each scope also keeps the series recorded in over the
//! last minutes (16 bytes a recording, at most about one per series), so a
//! [`WindowFollower`] finds what changed in a window without visiting every series.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vigil_schemas::DeliveryEvent;

use super::counters::{Contribution, Counters, LabelKind, Metric, Totals, contribution};

/// The longest window: buckets older than this before the watermark are dropped.
pub const HORIZON_MINUTES: u32 = 24 * 60;

/// The scopes reputation is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    EgressSource,
    EgressPool,
    Provider,
    EgressSourceProvider,
    SendingDomain,
    Tenant,
    Campaign,
}

impl Scope {
    pub const ALL: [Self; 7] = [
        Self::EgressSource,
        Self::EgressPool,
        Self::Provider,
        Self::EgressSourceProvider,
        Self::SendingDomain,
        Self::Tenant,
        Self::Campaign,
    ];

    /// The API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EgressSource => "egress_source",
            Self::EgressPool => "egress_pool",
            Self::Provider => "provider",
            Self::EgressSourceProvider => "egress_source,provider",
            Self::SendingDomain => "sending_domain",
            Self::Tenant => "tenant",
            Self::Campaign => "campaign",
        }
    }

    /// Parses the API spelling; `provider,egress_source` is accepted too.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.replace(' ', "");
        if text == "provider,egress_source" {
            return Some(Self::EgressSourceProvider);
        }
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The field names of the scope's values, as the API writes them.
    #[must_use]
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::EgressSourceProvider => &["egress_source", "provider"],
            one => std::slice::from_ref(match one {
                Self::EgressSource => &"egress_source",
                Self::EgressPool => &"egress_pool",
                Self::Provider => &"provider",
                Self::SendingDomain => &"sending_domain",
                Self::Tenant => &"tenant",
                _ => &"campaign",
            }),
        }
    }

    /// The event's values for this scope, or `None` when it lacks one.
    fn values(self, event: &DeliveryEvent) -> Option<(&str, Option<&str>)> {
        fn one(v: &Option<String>) -> Option<(&str, Option<&str>)> {
            v.as_deref().map(|v| (v, None))
        }
        match self {
            Self::EgressSource => one(&event.egress_source),
            Self::EgressPool => one(&event.egress_pool),
            Self::Provider => one(&event.provider),
            Self::EgressSourceProvider => Some((event.egress_source.as_deref()?, Some(event.provider.as_deref()?))),
            Self::SendingDomain => one(&event.sender_domain),
            Self::Tenant => one(&event.tenant),
            Self::Campaign => one(&event.campaign),
        }
    }
}

/// The windows the API offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    FiveMinutes,
    OneHour,
    OneDay,
}

impl Window {
    /// Parses `5m`, `1h` or `24h` (`1d`).
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
    pub fn minutes(self) -> u32 {
        match self {
            Self::FiveMinutes => 5,
            Self::OneHour => 60,
            Self::OneDay => HORIZON_MINUTES,
        }
    }
}

/// The minute an instant falls in, as minutes since 1970; before 1970 is minute 0.
#[must_use]
pub fn minute_of(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().div_euclid(60).max(0)).unwrap_or(u32::MAX)
}

/// The first minute of a window of `minutes` ending at `as_of`: `(as_of - minutes, as_of]`.
#[must_use]
pub fn window_start(minutes: u32, as_of: DateTime<Utc>) -> u32 {
    minute_of(as_of).saturating_sub(minutes.max(1) - 1)
}

const NONE: u32 = u32::MAX;

/// A fast hasher: keys are our own ids and scope values, and iteration order never reaches
/// an answer or a digest (both sort).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Key {
    scope: Scope,
    first: u32,
    /// The provider of an `EgressSourceProvider` key, else [`NONE`].
    second: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    minute: u32,
    counters: Counters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LabelBucket {
    minute: u32,
    kind: LabelKind,
    name: u32,
    count: u32,
}

/// One scope's buckets, sorted by minute (labels by minute, kind, name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Series {
    buckets: Vec<Bucket>,
    labels: Vec<LabelBucket>,
}

/// Grows a vector by an eighth instead of doubling: these vectors are many and long-lived,
/// so slack costs more than the occasional copy.
fn reserve_for_one<T>(items: &mut Vec<T>) {
    if items.len() == items.capacity() {
        items.reserve_exact((items.len() / 8).max(2));
    }
}

impl Series {
    fn add(&mut self, minute: u32, contribution: &Contribution<'_>, label_ids: [Option<(LabelKind, u32)>; 2]) {
        // The bucket to add to is the last one of the minute: events mostly arrive in order,
        // so usually the newest bucket.
        let at = match self.buckets.last() {
            Some(last) if last.minute <= minute => self.buckets.len(),
            _ => self.buckets.partition_point(|b| b.minute <= minute),
        };
        let absorbed = at > 0
            && self.buckets[at - 1].minute == minute
            && self.buckets[at - 1].counters.try_add(&contribution.counters);
        if !absorbed {
            // A new minute, or a full bucket: another bucket of that minute follows it.
            reserve_for_one(&mut self.buckets);
            self.buckets.insert(at, Bucket { minute, counters: contribution.counters });
        }
        for (kind, name) in label_ids.into_iter().flatten() {
            let sort_key = (minute, kind, name);
            match self.labels.binary_search_by_key(&sort_key, |l| (l.minute, l.kind, l.name)) {
                Ok(i) => self.labels[i].count = self.labels[i].count.saturating_add(1),
                Err(i) => {
                    reserve_for_one(&mut self.labels);
                    self.labels.insert(i, LabelBucket { minute, kind, name, count: 1 });
                }
            }
        }
    }

    fn buckets_in(&self, first: u32, last: u32) -> &[Bucket] {
        let start = self.buckets.partition_point(|b| b.minute < first);
        // Windows mostly end at the newest minute: no second search then.
        let end = match self.buckets.last() {
            Some(newest) if newest.minute <= last => self.buckets.len(),
            _ => self.buckets.partition_point(|b| b.minute <= last),
        };
        &self.buckets[start..end.max(start)]
    }

    /// The minute of the oldest bucket in `[first, last]`, if any.
    fn oldest_in(&self, first: u32, last: u32) -> Option<u32> {
        let start = self.buckets.partition_point(|b| b.minute < first);
        self.buckets.get(start).map(|b| b.minute).filter(|minute| *minute <= last)
    }

    fn labels_in(&self, first: u32, last: u32) -> &[LabelBucket] {
        let start = self.labels.partition_point(|l| l.minute < first);
        let end = self.labels.partition_point(|l| l.minute <= last);
        &self.labels[start..end.max(start)]
    }

    /// Drops buckets before `first`; true when nothing is left.
    fn evict_before(&mut self, first: u32) -> bool {
        let keep = self.buckets.partition_point(|b| b.minute < first);
        if keep == 0 {
            return self.buckets.is_empty();
        }
        self.buckets.drain(..keep);
        let keep = self.labels.partition_point(|l| l.minute < first);
        self.labels.drain(..keep);
        self.buckets.shrink_to(self.buckets.len() + self.buckets.len() / 4);
        self.labels.shrink_to(self.labels.len() + self.labels.len() / 4);
        self.buckets.is_empty()
    }
}

/// Strings to dense ids.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Interner {
    names: Vec<Box<str>>,
    #[serde(skip)]
    ids: HashMap<Box<str>, u32>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 4 billion names");
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn rebuild_index(&mut self) {
        self.ids = self.names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
    }
}

/// A scope's values by field name, e.g. `egress_source = ip-1, provider = google`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeValues {
    pub scope: Scope,
    pub values: Vec<(&'static str, String)>,
}

/// A scope's totals over a window, with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    pub key: ScopeValues,
    pub totals: Totals,
    /// (kind, name) -> count: failures by class, provider signals.
    pub labels: BTreeMap<(LabelKind, String), u64>,
}

/// What [`ReputationStore::record`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// Not an outcome, or generated by our own MTA.
    NotCounted,
    /// Older than the horizon when it arrived.
    TooLate,
}

/// The window store. Pure: no clock, no I/O.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReputationStore {
    names: Interner,
    labels: Interner,
    #[serde(with = "series_as_pairs")]
    series: HashMap<Key, Series>,
    watermark: Option<u32>,
    too_late: u64,
    /// Per scope, the series recorded in, with the watermark then: what a [`WindowFollower`]
    /// reads to find what changed without visiting every series. Not snapshotted.
    #[serde(skip)]
    touched: [Touched; Scope::ALL.len()],
    /// Bumped when interned ids are renumbered: a follower's keys are then stale.
    #[serde(skip)]
    names_epoch: u64,
}

fn sum(buckets: &[Bucket]) -> Totals {
    let mut totals = Totals::default();
    buckets.iter().for_each(|b| totals.add(&b.counters));
    totals
}

/// How many watermark minutes [`ReputationStore::touched`] covers: a follower called less
/// often than this starts over from every series.
const TOUCHED_MINUTES: u32 = 16;

/// Series recorded in, oldest first, for [`TOUCHED_MINUTES`] of watermark and at most about
/// one entry per series: beyond that, a follower would save nothing over reading every series.
#[derive(Debug, Clone)]
struct Touched {
    entries: VecDeque<(u32, Key)>,
    /// Every series recorded in at a watermark minute from this one on is in `entries`.
    complete_from: u32,
}

impl Default for Touched {
    fn default() -> Self {
        Self { entries: VecDeque::new(), complete_from: NONE }
    }
}

impl Touched {
    fn push(&mut self, watermark: u32, key: Key, cap: usize) {
        if self.complete_from == NONE {
            self.complete_from = watermark;
        }
        self.entries.push_back((watermark, key));
        while let Some(&(minute, _)) = self.entries.front() {
            if minute + TOUCHED_MINUTES >= watermark && self.entries.len() <= cap {
                break;
            }
            self.entries.pop_front();
            self.complete_from = self.complete_from.max(minute + 1);
        }
    }

    fn clear(&mut self, watermark: Option<u32>) {
        self.entries.clear();
        self.complete_from = watermark.map_or(NONE, |w| w + 1);
    }
}

/// Follows one window (a scope and a length) as it slides, so that a caller judging every
/// scope value each minute re-reads only the values whose totals over the window may have
/// changed since its last call ([`ReputationStore::follow`]).
#[derive(Debug, Clone)]
pub struct WindowFollower {
    scope: Scope,
    minutes: u32,
    /// The window's last minute at the last call, and the store's names epoch then.
    last: Option<(u32, u64)>,
    /// Per series in the window, the minute of its oldest bucket there: when the window's start
    /// passes it, the series' totals change. A min-heap, with stale entries skipped on pop.
    leaving: BinaryHeap<Reverse<(u32, Key)>>,
    oldest: HashMap<Key, u32>,
}

/// What changed in a followed window.
#[derive(Debug)]
pub enum Followed {
    /// The follower cannot tell (first call, long gap, renumbered ids): read everything.
    Everything,
    /// The series whose totals over the window may have changed, with their totals now
    /// (empty for those that left it), sorted.
    Changed(Vec<(SeriesId, Totals)>),
}

/// A scope value's series, without its names: cheap to keep and compare. Valid until the
/// store renumbers its names, which every follower then reports as [`Followed::Everything`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(Key);

impl WindowFollower {
    #[must_use]
    pub fn new(scope: Scope, minutes: u32) -> Self {
        Self { scope, minutes: minutes.max(1), last: None, leaving: BinaryHeap::new(), oldest: HashMap::default() }
    }

    /// Notes where `key`'s oldest bucket in the window now is.
    fn schedule(&mut self, key: Key, oldest: Option<u32>) {
        match oldest {
            Some(minute) => {
                if self.oldest.insert(key, minute) != Some(minute) {
                    self.leaving.push(Reverse((minute, key)));
                }
            }
            None => {
                self.oldest.remove(&key);
            }
        }
    }
}

/// JSON-like formats want string map keys; a snapshot stores the map as pairs.
mod series_as_pairs {
    use super::{HashMap, Key, Series};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &HashMap<Key, Series>, s: S) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&Key, &Series)> = map.iter().collect();
        pairs.sort_by_key(|(k, _)| **k);
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<Key, Series>, D::Error> {
        Ok(Vec::<(Key, Series)>::deserialize(d)?.into_iter().collect())
    }
}

impl ReputationStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores the lookup indexes a deserialized store does not carry.
    pub fn after_load(&mut self) {
        self.names.rebuild_index();
        self.labels.rebuild_index();
    }

    /// The store's clock: the newest ingest minute seen.
    #[must_use]
    pub fn watermark(&self) -> Option<u32> {
        self.watermark
    }

    /// Events not counted because they were older than the horizon when they arrived.
    #[must_use]
    pub fn too_late(&self) -> u64 {
        self.too_late
    }

    /// Number of scopes with buckets (some may be stale until the next eviction).
    #[must_use]
    pub fn scope_count(&self) -> usize {
        self.series.len()
    }

    /// The first minute every window can still reach.
    fn horizon_start(&self) -> u32 {
        self.watermark.map_or(0, |w| w.saturating_sub(HORIZON_MINUTES - 1))
    }

    /// Counts an enriched event in every scope it has values for. `signal` is the provider
    /// signal its response carries, if any.
    pub fn record(&mut self, event: &DeliveryEvent, signal: Option<&str>) -> Recorded {
        let received = minute_of(event.ingested_at);
        self.watermark = Some(self.watermark.map_or(received, |w| w.max(received)));
        let Some(contribution) = contribution(event, signal) else { return Recorded::NotCounted };
        let minute = minute_of(event.occurred_at).min(received);
        if minute < self.horizon_start() {
            self.too_late += 1;
            return Recorded::TooLate;
        }
        let label_ids = contribution.labels.map(|l| l.map(|l| (l.kind, self.labels.id(l.name))));
        let watermark = self.watermark.unwrap_or(received);
        let cap = self.series.len().max(4096);
        for scope in Scope::ALL {
            let Some((first, second)) = scope.values(event) else { continue };
            let key = Key { scope, first: self.names.id(first), second: second.map_or(NONE, |s| self.names.id(s)) };
            self.series.entry(key).or_default().add(minute, &contribution, label_ids);
            self.touched[scope as usize].push(watermark, key, cap);
        }
        Recorded::Counted
    }

    /// Frees buckets no window can reach, and interned names no scope uses any more.
    pub fn evict(&mut self) {
        let first = self.horizon_start();
        self.series.retain(|_, series| !series.evict_before(first));
        if self.names.names.len() > 1024 && self.names.names.len() > 2 * self.series.len() {
            self.compact_names();
        }
    }

    /// Renumbers the names still used; ids are internal, so nothing outside changes.
    fn compact_names(&mut self) {
        let mut fresh = Interner::default();
        let old = std::mem::take(&mut self.series);
        for (key, series) in old {
            let remap = |id: u32, fresh: &mut Interner| if id == NONE { NONE } else { fresh.id(self.names.name(id)) };
            let key =
                Key { scope: key.scope, first: remap(key.first, &mut fresh), second: remap(key.second, &mut fresh) };
            self.series.insert(key, series);
        }
        self.names = fresh;
        self.names_epoch += 1;
        let watermark = self.watermark;
        self.touched.iter_mut().for_each(|touched| touched.clear(watermark));
    }

    fn values_of(&self, key: Key) -> ScopeValues {
        let fields = key.scope.fields();
        let mut values = vec![(fields[0], self.names.name(key.first).to_owned())];
        if key.second != NONE {
            values.push((fields[1], self.names.name(key.second).to_owned()));
        }
        ScopeValues { scope: key.scope, values }
    }

    /// The minutes a window of `minutes` ending at `as_of` covers, cut at the horizon.
    fn range(&self, minutes: u32, as_of: DateTime<Utc>) -> (u32, u32) {
        (window_start(minutes, as_of).max(self.horizon_start()), minute_of(as_of))
    }

    /// Totals per scope value over a window of `minutes` ending at `as_of`, sorted by value;
    /// values with nothing in the window are left out.
    #[must_use]
    pub fn window(&self, scope: Scope, minutes: u32, as_of: DateTime<Utc>) -> Vec<WindowRow> {
        let (first, last) = self.range(minutes.max(1), as_of);
        let mut rows: Vec<WindowRow> = self
            .series
            .iter()
            .filter(|(key, _)| key.scope == scope)
            .map(|(key, series)| self.row(*key, Some(series), first, last))
            .filter(|row| !row.totals.is_empty())
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// One series' totals and labels over `[first, last]` (empty when it is gone).
    fn row(&self, key: Key, series: Option<&Series>, first: u32, last: u32) -> WindowRow {
        let mut totals = Totals::default();
        let mut labels = BTreeMap::new();
        if let Some(series) = series {
            totals = sum(series.buckets_in(first, last));
            for label in series.labels_in(first, last) {
                *labels.entry((label.kind, self.labels.name(label.name).to_owned())).or_default() +=
                    u64::from(label.count);
            }
        }
        WindowRow { key: self.values_of(key), totals, labels }
    }

    /// The series of `scope` with something in the window of `minutes` ending at `as_of`, with
    /// their totals there, in no particular order.
    #[must_use]
    pub fn window_totals(&self, scope: Scope, minutes: u32, as_of: DateTime<Utc>) -> Vec<(SeriesId, Totals)> {
        let (first, last) = self.range(minutes.max(1), as_of);
        self.series
            .iter()
            .filter(|(key, _)| key.scope == scope)
            .map(|(key, series)| (SeriesId(*key), sum(series.buckets_in(first, last))))
            .filter(|(_, totals)| !totals.is_empty())
            .collect()
    }

    /// A series' totals over the window of `minutes` ending at `as_of` (empty when it is gone).
    #[must_use]
    pub fn series_totals(&self, id: SeriesId, minutes: u32, as_of: DateTime<Utc>) -> Totals {
        let (first, last) = self.range(minutes.max(1), as_of);
        self.series.get(&id.0).map(|series| sum(series.buckets_in(first, last))).unwrap_or_default()
    }

    /// A series' count of one label over the window of `minutes` ending at `as_of`.
    #[must_use]
    pub fn series_label(&self, id: SeriesId, kind: LabelKind, name: &str, minutes: u32, as_of: DateTime<Utc>) -> u64 {
        let (Some(series), Some(&name)) = (self.series.get(&id.0), self.labels.ids.get(name)) else { return 0 };
        let (first, last) = self.range(minutes.max(1), as_of);
        series
            .labels_in(first, last)
            .iter()
            .filter(|l| l.kind == kind && l.name == name)
            .map(|l| u64::from(l.count))
            .sum()
    }

    /// A series' row (values, totals, labels) over the window of `minutes` ending at `as_of`.
    #[must_use]
    pub fn series_row(&self, id: SeriesId, minutes: u32, as_of: DateTime<Utc>) -> WindowRow {
        let (first, last) = self.range(minutes.max(1), as_of);
        self.row(id.0, self.series.get(&id.0), first, last)
    }

    /// A series' value of `field` (`egress_source`, `provider`, ...), if its scope has it.
    #[must_use]
    pub fn series_value(&self, id: SeriesId, field: &str) -> Option<&str> {
        let fields = id.0.scope.fields();
        match fields.iter().position(|f| *f == field)? {
            0 => Some(self.names.name(id.0.first)),
            _ if id.0.second != NONE => Some(self.names.name(id.0.second)),
            _ => None,
        }
    }

    /// A series' values by field.
    #[must_use]
    pub fn series_values(&self, id: SeriesId) -> ScopeValues {
        self.values_of(id.0)
    }

    /// The series of a scope value, if it was seen.
    #[must_use]
    pub fn series_id(&self, values: &ScopeValues) -> Option<SeriesId> {
        let id = |i: usize| values.values.get(i).map(|(_, v)| self.names.ids.get(v.as_str()).copied());
        let first = id(0)??;
        let second = match id(1) {
            None => NONE,
            Some(id) => id?,
        };
        let key = Key { scope: values.scope, first, second };
        self.series.contains_key(&key).then_some(SeriesId(key))
    }

    /// Whether any value of `scope` had an attempt in the window of `minutes` ending at `as_of`.
    #[must_use]
    pub fn any_attempts(&self, scope: Scope, minutes: u32, as_of: DateTime<Utc>) -> bool {
        let (first, last) = self.range(minutes.max(1), as_of);
        self.series
            .iter()
            .filter(|(key, _)| key.scope == scope)
            .any(|(_, series)| sum(series.buckets_in(first, last)).attempts() > 0)
    }

    /// What changed in `follower`'s window, now ending at `as_of`, since its last call: the
    /// rows of the series touched since (by the watermark minute) and of those whose oldest
    /// bucket in the window has left it. Exact: a row left out has the totals and labels it had
    /// at the last call. `as_of` never goes back between calls.
    pub fn follow(&self, follower: &mut WindowFollower, as_of: DateTime<Utc>) -> Followed {
        let (first, last) = self.range(follower.minutes, as_of);
        let previous = follower.last.replace((last, self.names_epoch));
        let touched = &self.touched[follower.scope as usize];
        let can_tell = previous.is_some_and(|(previous_last, epoch)| {
            epoch == self.names_epoch && previous_last <= last && touched.complete_from <= previous_last + 1
        });
        if !can_tell {
            follower.leaving.clear();
            follower.oldest.clear();
            let scope = follower.scope;
            for (key, series) in self.series.iter().filter(|(key, _)| key.scope == scope) {
                follower.schedule(*key, series.oldest_in(first, last));
            }
            return Followed::Everything;
        }
        let previous_last = previous.map_or(0, |(l, _)| l);
        // Touched at a watermark after the last window's end: everything recorded since the
        // last call, and whatever was recorded before it in minutes that have since entered.
        let since = touched.entries.partition_point(|(minute, _)| *minute <= previous_last);
        let mut changed: Vec<Key> = touched.entries.range(since..).map(|(_, key)| *key).collect();
        while let Some(&Reverse((minute, key))) = follower.leaving.peek() {
            if minute >= first {
                break;
            }
            follower.leaving.pop();
            if follower.oldest.get(&key) == Some(&minute) {
                follower.oldest.remove(&key);
                changed.push(key);
            }
        }
        changed.sort_unstable();
        changed.dedup();
        let changed = changed
            .into_iter()
            .map(|key| {
                let buckets = self.series.get(&key).map_or(&[][..], |s| s.buckets_in(first, last));
                follower.schedule(key, buckets.first().map(|b| b.minute));
                (SeriesId(key), sum(buckets))
            })
            .collect();
        Followed::Changed(changed)
    }

    /// One scope value's totals over a window of `minutes` ending at `as_of`: `first` is the
    /// scope's value (the egress source of `EgressSourceProvider`), `second` the provider of
    /// `EgressSourceProvider`. Zero when the value was never seen.
    #[must_use]
    pub fn totals(
        &self,
        scope: Scope,
        first: &str,
        second: Option<&str>,
        minutes: u32,
        as_of: DateTime<Utc>,
    ) -> Totals {
        let id = |name: &str| self.names.ids.get(name).copied();
        let (Some(first), second) = (id(first), second.map(id)) else { return Totals::default() };
        let second = match second {
            None => NONE,
            Some(Some(id)) => id,
            Some(None) => return Totals::default(),
        };
        self.series_totals(SeriesId(Key { scope, first, second }), minutes, as_of)
    }

    /// Per scope value, the sum of `metrics` per step of `step` minutes over
    /// `(to - span, to]`; steps are labelled by their first minute, counted from
    /// [`window_start`] (also when the horizon cuts the window), so callers can lay the
    /// steps out themselves. Sorted by value.
    #[must_use]
    pub fn timeseries(
        &self,
        scope: Scope,
        metrics: &[Metric],
        step: u32,
        span: u32,
        to: DateTime<Utc>,
    ) -> Vec<(ScopeValues, Vec<(u32, u64)>)> {
        let step = step.max(1);
        let origin = window_start(span, to);
        let (first, last) = self.range(span.max(1), to);
        let mut out: Vec<(ScopeValues, Vec<(u32, u64)>)> = self
            .series
            .iter()
            .filter(|(key, _)| key.scope == scope)
            .filter_map(|(key, series)| {
                let mut points: Vec<(u32, u64)> = Vec::new();
                for bucket in series.buckets_in(first, last) {
                    let value: u64 = metrics.iter().map(|&m| u64::from(bucket.counters.get(m))).sum();
                    if value == 0 {
                        continue;
                    }
                    let slot = origin + (bucket.minute - origin) / step * step;
                    match points.last_mut() {
                        Some((at, total)) if *at == slot => *total += value,
                        _ => points.push((slot, value)),
                    }
                }
                (!points.is_empty()).then(|| (self.values_of(*key), points))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Feeds the state every window can still see into `hasher`, in an order that does not
    /// depend on insertion or eviction: equal digests mean equal answers.
    ///
    /// What windows can see does not depend on the order events were recorded in either:
    /// an event is visible iff its minute is within the horizon of the final watermark, and
    /// one refused on arrival (past the horizon of an earlier, smaller watermark) would be
    /// outside it too.
    pub fn digest_into(&self, hasher: &mut blake3::Hasher) {
        let first = self.horizon_start();
        let mut keyed: Vec<(ScopeValues, &Series)> =
            self.series.iter().map(|(key, series)| (self.values_of(*key), series)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        // `too_late` is left out: it counts what arrived past the horizon, which depends on
        // the order partitions are read in; everything else here does not.
        hasher.update(&self.watermark.unwrap_or(0).to_le_bytes());
        for (key, series) in keyed {
            let buckets = series.buckets_in(first, u32::MAX);
            if buckets.is_empty() {
                continue;
            }
            hasher.update(key.scope.as_str().as_bytes());
            for (_, value) in &key.values {
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(value.as_bytes());
            }
            // Per minute, whether or not the minute was split into several buckets.
            for minute in buckets.chunk_by(|a, b| a.minute == b.minute) {
                let mut totals = Totals::default();
                minute.iter().for_each(|b| totals.add(&b.counters));
                hasher.update(&minute[0].minute.to_le_bytes());
                for count in totals.0 {
                    hasher.update(&count.to_le_bytes());
                }
            }
            let mut labels: Vec<(u32, LabelKind, &str, u32)> = series
                .labels_in(first, u32::MAX)
                .iter()
                .map(|l| (l.minute, l.kind, self.labels.name(l.name), l.count))
                .collect();
            labels.sort_unstable();
            for (minute, kind, name, count) in labels {
                hasher.update(&minute.to_le_bytes());
                hasher.update(&[kind as u8]);
                hasher.update(name.as_bytes());
                hasher.update(&count.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::{BounceClass, EventKind, SourceKind};

    fn at(minute: i64, second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(minute * 60 + second, 0).unwrap()
    }

    fn event(kind: EventKind, occurred: DateTime<Utc>, received: DateTime<Utc>) -> DeliveryEvent {
        let mut e = DeliveryEvent::new("id".into(), SourceKind::Kumomta, kind, occurred, received);
        e.egress_source = Some("ip-1".into());
        e.provider = Some("google".into());
        e.tenant = Some("acme".into());
        e
    }

    const T: i64 = 28_000_000; // a minute in 2023

    #[test]
    fn window_edges_are_exact() {
        let mut store = ReputationStore::new();
        // Minutes T-5 .. T, one delivery each, all received at T.
        for m in (T - 5)..=T {
            store.record(&event(EventKind::Delivered, at(m, 59), at(T, 0)), None);
        }
        let five = store.window(Scope::EgressSource, 5, at(T, 30));
        assert_eq!(five[0].totals.get(Metric::Delivered), 5, "(T-5, T]: T-4 ..= T");
        // At the very first second of a minute, that minute is in the window.
        assert_eq!(store.window(Scope::EgressSource, 1, at(T, 0))[0].totals.get(Metric::Delivered), 1);
        // A window ending before the events sees none of the later ones.
        assert_eq!(store.window(Scope::EgressSource, 5, at(T - 3, 0))[0].totals.get(Metric::Delivered), 3);
    }

    #[test]
    fn late_events_land_in_their_minute_and_too_late_ones_are_counted_as_such() {
        let mut store = ReputationStore::new();
        store.record(&event(EventKind::Delivered, at(T, 0), at(T, 0)), None);
        // Seven minutes late: outside the 5-minute window, inside the hour.
        let late = event(EventKind::Deferred, at(T - 7, 0), at(T, 10));
        assert_eq!(store.record(&late, None), Recorded::Counted);
        let five = store.window(Scope::Provider, 5, at(T, 0));
        assert_eq!(five[0].totals.get(Metric::Deferred), 0);
        assert_eq!(store.window(Scope::Provider, 60, at(T, 0))[0].totals.get(Metric::Deferred), 1);
        // A day and a minute late: never counted.
        let stale = event(EventKind::Deferred, at(T - 24 * 60, 0), at(T, 0));
        assert_eq!(store.record(&stale, None), Recorded::TooLate);
        assert_eq!(store.too_late(), 1);
    }

    #[test]
    fn clock_jumps_neither_lose_nor_invent_counts() {
        let mut store = ReputationStore::new();
        // A sender whose clock is an hour ahead: counted when received.
        store.record(&event(EventKind::Delivered, at(T + 60, 0), at(T, 0)), None);
        assert_eq!(store.window(Scope::Tenant, 1, at(T, 0))[0].totals.get(Metric::Delivered), 1);
        // Our clock jumps a day ahead, then back: the watermark keeps the newest, so the
        // day-old bucket leaves the windows and the store does not resurrect it.
        store.record(&event(EventKind::Delivered, at(T + 24 * 60, 0), at(T + 24 * 60, 0)), None);
        assert!(store.window(Scope::Tenant, 24 * 60, at(T, 0)).is_empty());
        assert_eq!(store.record(&event(EventKind::Delivered, at(T, 1), at(T, 1)), None), Recorded::TooLate);
        store.evict();
        assert_eq!(store.window(Scope::Tenant, 24 * 60, at(T + 24 * 60, 0))[0].totals.get(Metric::Delivered), 1);
    }

    #[test]
    fn failures_count_by_class_signal_and_scope() {
        let mut store = ReputationStore::new();
        let mut bounce = event(EventKind::Bounced, at(T, 0), at(T, 0));
        bounce.bounce_class = Some(BounceClass::InvalidRecipient);
        store.record(&bounce, None);
        let mut block = event(EventKind::Deferred, at(T, 0), at(T, 0));
        block.bounce_class = Some(BounceClass::SpamBlock);
        store.record(&block, Some("yahoo_tss04"));
        let mut internal = event(EventKind::Bounced, at(T, 0), at(T, 0));
        internal.internal = true;
        assert_eq!(store.record(&internal, None), Recorded::NotCounted);

        let row = &store.window(Scope::EgressSourceProvider, 5, at(T, 0))[0];
        assert_eq!(row.key.values, [("egress_source", "ip-1".to_owned()), ("provider", "google".to_owned())]);
        assert_eq!(row.totals.attempts(), 2);
        for (metric, n) in [(Metric::HardBounces, 1), (Metric::Blocks, 1), (Metric::Signals, 1), (Metric::Bounced, 1)] {
            assert_eq!(row.totals.get(metric), n, "{metric:?}");
        }
        let labels: Vec<_> = row.labels.iter().map(|((k, n), c)| (*k, n.as_str(), *c)).collect();
        assert_eq!(
            labels,
            [
                (LabelKind::Bounced, "InvalidRecipient", 1),
                (LabelKind::Deferred, "SpamBlock", 1),
                (LabelKind::Signal, "yahoo_tss04", 1)
            ]
        );
        assert!(store.window(Scope::Campaign, 5, at(T, 0)).is_empty(), "no campaign, no campaign scope");
    }

    #[test]
    fn eviction_and_name_compaction_change_no_answer() {
        let mut store = ReputationStore::new();
        for i in 0..3000 {
            let mut e = event(EventKind::Delivered, at(T, 0), at(T, 0));
            e.campaign = Some(format!("c{i}"));
            store.record(&e, None);
        }
        let mut e = event(EventKind::Delivered, at(T + 24 * 60, 0), at(T + 24 * 60, 0));
        e.campaign = Some("c1".into());
        store.record(&e, None);
        let mut digest = blake3::Hasher::new();
        store.digest_into(&mut digest);
        let before = store.window(Scope::Campaign, 60, at(T + 24 * 60, 0));
        store.evict();
        assert!(store.names.names.len() < 10, "unused names dropped: {}", store.names.names.len());
        assert_eq!(store.window(Scope::Campaign, 60, at(T + 24 * 60, 0)), before);
        let mut after = blake3::Hasher::new();
        store.digest_into(&mut after);
        assert_eq!(digest.finalize(), after.finalize());
    }

    #[test]
    fn a_minute_past_u16_counts_gets_a_second_bucket_and_loses_nothing() {
        let mut store = ReputationStore::new();
        let e = event(EventKind::Delivered, at(T, 0), at(T, 0));
        for _ in 0..70_000 {
            store.record(&e, None);
        }
        store.record(&event(EventKind::Delivered, at(T - 1, 0), at(T, 0)), None);
        let row = &store.window(Scope::EgressSource, 5, at(T, 0))[0];
        assert_eq!(row.totals.get(Metric::Delivered), 70_001);
        let series = store.series.values().next().unwrap();
        let minutes: Vec<u32> = series.buckets.iter().map(|b| b.minute).collect();
        let t = u32::try_from(T).unwrap();
        assert_eq!(minutes, [t - 1, t, t], "sorted, the full minute split in two");
        let points = store.timeseries(Scope::EgressSource, &[Metric::Delivered], 1, 2, at(T, 0));
        assert_eq!(points[0].1, [(t - 1, 1), (t, 70_000)]);
    }

    #[test]
    fn timeseries_steps_stay_aligned_to_the_window_when_the_horizon_cuts_it() {
        let mut store = ReputationStore::new();
        let newest = T + 2000;
        store.record(&event(EventKind::Delivered, at(newest, 0), at(newest, 0)), None);
        let oldest_kept = newest - i64::from(HORIZON_MINUTES) + 1;
        store.record(&event(EventKind::Delivered, at(oldest_kept, 0), at(newest, 0)), None);
        // A day ending 10 minutes before the newest event starts 10 minutes before the horizon.
        let to = at(newest - 10, 0);
        let series = store.timeseries(Scope::Provider, &[Metric::Delivered], 60, HORIZON_MINUTES, to);
        let origin = window_start(HORIZON_MINUTES, to);
        assert_eq!(i64::from(origin), oldest_kept - 10);
        assert_eq!(series[0].1, [(origin, 1)], "the step is counted from the window's start, not the horizon");
    }

    #[test]
    fn timeseries_steps_sum_their_minutes() {
        let mut store = ReputationStore::new();
        for m in 0..10 {
            store.record(&event(EventKind::Delivered, at(T - m, 0), at(T, 0)), None);
        }
        let series = store.timeseries(Scope::Provider, &[Metric::Delivered], 5, 10, at(T, 0));
        let start = u32::try_from(T).unwrap() - 9;
        assert_eq!(series[0].1, [(start, 5), (start + 5, 5)]);
    }
}
