//! What one event contributes to a scope's counts.

use serde::{Deserialize, Serialize};
use vigil_schemas::{BounceClass, DeliveryEvent, EventKind};

/// A counted quantity. `attempts` is not one: it is `delivered + deferred + bounced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Delivered,
    Deferred,
    Bounced,
    Expired,
    Complaints,
    Unsubscribes,
    Opens,
    Clicks,
    /// Bounces that say the address is bad: the hard bounces list hygiene is judged on.
    HardBounces,
    /// Deferrals and bounces that refuse the sender (block lists, policy, spam verdicts,
    /// authentication): the receiver's opinion of the sender rather than of the recipient.
    Blocks,
    /// Deferrals and bounces carrying one of the providers' named reputation signals.
    Signals,
}

impl Metric {
    pub const ALL: [Self; METRICS] = [
        Self::Delivered,
        Self::Deferred,
        Self::Bounced,
        Self::Expired,
        Self::Complaints,
        Self::Unsubscribes,
        Self::Opens,
        Self::Clicks,
        Self::HardBounces,
        Self::Blocks,
        Self::Signals,
    ];

    /// The snake_case name of the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
            Self::Expired => "expired",
            Self::Complaints => "complaints",
            Self::Unsubscribes => "unsubscribes",
            Self::Opens => "opens",
            Self::Clicks => "clicks",
            Self::HardBounces => "hard_bounces",
            Self::Blocks => "blocks",
            Self::Signals => "signals",
        }
    }

    /// Parses the API name.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

pub const METRICS: usize = 11;

/// The classes that make a bounce hard: the address or its domain does not exist or is
/// closed. Retrying or re-sending to it later only hurts the sender.
pub const HARD_BOUNCE_CLASSES: [&str; 3] = ["InvalidRecipient", "BadDomain", "InactiveMailbox"];

/// The classes that make a failure a block: the receiver refuses this sender or this mail.
pub const BLOCK_CLASSES: [&str; 5] =
    ["SpamBlock", "SpamRelated", "SpamContent", "PolicyRelated", "AuthenticationFailed"];

/// One bucket's counts. `u16` per metric keeps a minute bucket at 28 bytes, which is what
/// lets 24 h of minutes for hundreds of thousands of scopes fit in memory; a scope with more
/// than 65 535 of one count in a minute gets a second bucket for that minute (see the store),
/// so nothing saturates and nothing is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters(pub [u16; METRICS]);

impl Counters {
    #[must_use]
    pub fn get(&self, metric: Metric) -> u16 {
        self.0[metric as usize]
    }

    /// Adds one to a count of a single event's contribution (which starts at zero).
    pub fn bump(&mut self, metric: Metric) {
        self.0[metric as usize] += 1;
    }

    /// Adds `other`, unless a count would overflow; then changes nothing and returns false.
    #[must_use]
    pub fn try_add(&mut self, other: &Self) -> bool {
        let mut sum = self.0;
        for (slot, value) in sum.iter_mut().zip(other.0) {
            match slot.checked_add(value) {
                Some(total) => *slot = total,
                None => return false,
            }
        }
        self.0 = sum;
        true
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&c| c == 0)
    }
}

/// Window totals: the sum of many buckets, so `u64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Totals(pub [u64; METRICS]);

impl Totals {
    #[must_use]
    pub fn get(&self, metric: Metric) -> u64 {
        self.0[metric as usize]
    }

    /// `delivered + deferred + bounced`: every time a receiver answered for a message.
    #[must_use]
    pub fn attempts(&self) -> u64 {
        self.get(Metric::Delivered) + self.get(Metric::Deferred) + self.get(Metric::Bounced)
    }

    pub fn add(&mut self, counters: &Counters) {
        self.add_times(counters, 1);
    }

    /// Adds `counters` as if `times` events had contributed them.
    pub fn add_times(&mut self, counters: &Counters, times: u64) {
        for (slot, value) in self.0.iter_mut().zip(counters.0) {
            *slot += u64::from(value) * times;
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&c| c == 0)
    }
}

/// What a label counts: a failure's class (by kind of failure), or a provider signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    Bounced,
    Deferred,
    Signal,
}

/// A named count kept beside the counters: `bounced` by `SpamBlock`, `signal` `yahoo_tss04`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label<'a> {
    pub kind: LabelKind,
    pub name: &'a str,
}

/// What an enriched event adds: its counters, and up to two labels (the failure's class,
/// the provider signal it carries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contribution<'a> {
    pub counters: Counters,
    pub labels: [Option<Label<'a>>; 2],
}

/// What one event of `kind` with bounce `class` counts, provider signals aside: its metrics
/// and, for a deferral or bounce, its class label (`Uncategorized` when unclassified). `None`
/// for kinds that are not outcomes. Shared by the live fold and the warehouse's reputation, so
/// both count the same way.
#[must_use]
pub fn outcome(kind: EventKind, class: Option<&str>) -> Option<(Counters, Option<Label<'_>>)> {
    let mut counters = Counters::default();
    let mut label = None;
    match kind {
        EventKind::Delivered => counters.bump(Metric::Delivered),
        EventKind::Deferred | EventKind::Bounced => {
            let bounced = kind == EventKind::Bounced;
            counters.bump(if bounced { Metric::Bounced } else { Metric::Deferred });
            let class = class.unwrap_or("Uncategorized");
            if bounced && HARD_BOUNCE_CLASSES.contains(&class) {
                counters.bump(Metric::HardBounces);
            }
            if BLOCK_CLASSES.contains(&class) {
                counters.bump(Metric::Blocks);
            }
            let kind = if bounced { LabelKind::Bounced } else { LabelKind::Deferred };
            label = Some(Label { kind, name: class });
        }
        EventKind::Expired => counters.bump(Metric::Expired),
        EventKind::Complaint => counters.bump(Metric::Complaints),
        EventKind::Unsubscribe => counters.bump(Metric::Unsubscribes),
        EventKind::Open => counters.bump(Metric::Opens),
        EventKind::Click => counters.bump(Metric::Clicks),
        _ => return None,
    }
    Some((counters, label))
}

/// The contribution of an enriched event, or `None` when it says nothing about reputation:
/// not an outcome, or generated by our own MTA (`internal`).
#[must_use]
pub fn contribution<'a>(event: &'a DeliveryEvent, signal: Option<&'a str>) -> Option<Contribution<'a>> {
    if event.internal {
        return None;
    }
    let (mut counters, label) = outcome(event.kind, event.bounce_class.as_ref().map(BounceClass::as_str))?;
    let mut labels = [label, None];
    if let (Some(signal), Some(_)) = (signal, label) {
        counters.bump(Metric::Signals);
        labels[1] = Some(Label { kind: LabelKind::Signal, name: signal });
    }
    Some(Contribution { counters, labels })
}
