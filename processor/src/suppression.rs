//! The suppression list: recipients no one should mail again, and why.
//!
//! A recipient joins on a hard bounce (a permanent failure of a hard class: the address or
//! its domain does not exist or is closed), a complaint or an unsubscribe. The earliest
//! reason (by the event's time, then its id) is kept, with when and from which source it
//! came; other events of the same recipient only update `last_seen` and `events`. Choosing by
//! time rather than by arrival makes the list independent of the order events are folded in,
//! so processors reading partitions in any interleaving agree. Events our own MTA generated
//! never suppress anyone: an administrative bounce says nothing about the address.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

use crate::reputation::counters::HARD_BOUNCE_CLASSES;

/// Why a recipient is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    HardBounce,
    Complaint,
    Unsubscribe,
}

impl Reason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HardBounce => "hard_bounce",
            Self::Complaint => "complaint",
            Self::Unsubscribe => "unsubscribe",
        }
    }
}

/// One suppressed recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Suppression {
    pub recipient: String,
    pub reason: Reason,
    /// The bounce class of a hard bounce.
    pub class: Option<String>,
    pub source: SourceKind,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The event that suppressed the recipient.
    pub event_id: String,
    /// How many suppressing events were seen for this recipient.
    pub events: u64,
}

/// The list, keyed by lower-cased recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressions {
    by_recipient: HashMap<String, Suppression>,
}

/// Why an event suppresses its recipient, if it does: the reason, and a hard bounce's class.
#[must_use]
pub fn suppresses(event: &DeliveryEvent) -> Option<(Reason, Option<String>)> {
    reason_of(event)
}

fn reason_of(event: &DeliveryEvent) -> Option<(Reason, Option<String>)> {
    if event.internal {
        return None;
    }
    match event.kind {
        EventKind::Complaint => Some((Reason::Complaint, None)),
        EventKind::Unsubscribe => Some((Reason::Unsubscribe, None)),
        EventKind::Bounced => {
            let class = event.bounce_class.as_ref().map(BounceClass::as_str)?;
            HARD_BOUNCE_CLASSES.contains(&class).then(|| (Reason::HardBounce, Some(class.to_owned())))
        }
        _ => None,
    }
}

impl Suppressions {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the event's recipient when the event suppresses it. Returns true if it did.
    pub fn record(&mut self, event: &DeliveryEvent) -> bool {
        let Some((reason, class)) = reason_of(event) else { return false };
        // `@domain` is an address whose person was not kept ([privacy] recipients = "domain").
        let Some(recipient) = event.recipient.as_deref().filter(|r| !r.is_empty() && !r.starts_with('@')) else {
            return false;
        };
        let key = recipient.to_ascii_lowercase();
        match self.by_recipient.get_mut(&key) {
            Some(entry) => {
                entry.events += 1;
                entry.last_seen = entry.last_seen.max(event.occurred_at);
                if (event.occurred_at, event.event_id.as_str()) < (entry.first_seen, entry.event_id.as_str()) {
                    entry.reason = reason;
                    entry.class = class;
                    entry.source = event.source;
                    entry.first_seen = event.occurred_at;
                    entry.event_id.clone_from(&event.event_id);
                }
            }
            None => {
                let entry = Suppression {
                    recipient: key.clone(),
                    reason,
                    class,
                    source: event.source,
                    first_seen: event.occurred_at,
                    last_seen: event.occurred_at,
                    event_id: event.event_id.clone(),
                    events: 1,
                };
                self.by_recipient.insert(key, entry);
            }
        }
        true
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_recipient.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_recipient.is_empty()
    }

    /// The entry of one recipient (case-insensitive).
    #[must_use]
    pub fn get(&self, recipient: &str) -> Option<&Suppression> {
        self.by_recipient.get(&recipient.to_ascii_lowercase())
    }

    /// Entries matching `domain` (if given), sorted by recipient, after `after`, at most
    /// `limit`. Sorting costs a pass over the list; export is rare next to lookups.
    #[must_use]
    pub fn list(&self, domain: Option<&str>, after: Option<&str>, limit: usize) -> Vec<&Suppression> {
        let domain = domain.map(|d| format!("@{}", d.to_ascii_lowercase()));
        let mut rows: Vec<&Suppression> = self
            .by_recipient
            .values()
            .filter(|s| domain.as_deref().is_none_or(|d| s.recipient.ends_with(d)))
            .filter(|s| after.is_none_or(|a| s.recipient.as_str() > a))
            .collect();
        rows.sort_by(|a, b| a.recipient.cmp(&b.recipient));
        rows.truncate(limit);
        rows
    }

    /// Counts by reason.
    #[must_use]
    pub fn counts(&self) -> BTreeMap<Reason, u64> {
        let mut counts = BTreeMap::new();
        for entry in self.by_recipient.values() {
            *counts.entry(entry.reason).or_default() += 1;
        }
        counts
    }

    /// Feeds the list into `hasher` in recipient order.
    pub fn digest_into(&self, hasher: &mut blake3::Hasher) {
        let mut entries: Vec<&Suppression> = self.by_recipient.values().collect();
        entries.sort_by(|a, b| a.recipient.cmp(&b.recipient));
        for entry in entries {
            let line = serde_json::to_vec(entry).expect("a suppression serializes");
            hasher.update(&(line.len() as u64).to_le_bytes());
            hasher.update(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, recipient: &str, class: Option<BounceClass>, secs: i64) -> DeliveryEvent {
        let at = DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        let mut e = DeliveryEvent::new(format!("e{secs}"), SourceKind::Kumomta, kind, at, at);
        e.recipient = Some(recipient.into());
        e.bounce_class = class;
        e
    }

    #[test]
    fn hard_bounces_complaints_and_unsubscribes_suppress_and_the_earliest_reason_stays() {
        let mut list = Suppressions::new();
        assert!(list.record(&event(EventKind::Bounced, "Gone@Example.com", Some(BounceClass::InvalidRecipient), 0)));
        assert!(!list.record(&event(EventKind::Bounced, "full@example.com", Some(BounceClass::QuotaIssues), 1)));
        assert!(!list.record(&event(EventKind::Deferred, "x@example.com", Some(BounceClass::InvalidRecipient), 2)));
        assert!(list.record(&event(EventKind::Complaint, "angry@example.org", None, 3)));
        assert!(list.record(&event(EventKind::Unsubscribe, "gone@example.com", None, 4)));
        let mut internal = event(EventKind::Bounced, "admin@example.com", Some(BounceClass::InvalidRecipient), 5);
        internal.internal = true;
        assert!(!list.record(&internal));

        let gone = list.get("GONE@example.com").unwrap();
        assert_eq!(
            (gone.reason, gone.class.as_deref(), gone.events),
            (Reason::HardBounce, Some("InvalidRecipient"), 2)
        );
        assert_eq!(gone.event_id, "e0");
        assert_eq!(list.len(), 2);
        assert_eq!(list.list(Some("example.org"), None, 10)[0].recipient, "angry@example.org");
        let all = list.list(None, None, 10);
        assert_eq!(list.list(None, Some(&all[0].recipient), 10).len(), 1, "cursor after the first");

        // Folded in the other order, the same list.
        let mut reversed = Suppressions::new();
        reversed.record(&event(EventKind::Unsubscribe, "gone@example.com", None, 4));
        reversed.record(&event(EventKind::Complaint, "angry@example.org", None, 3));
        reversed.record(&event(EventKind::Bounced, "Gone@Example.com", Some(BounceClass::InvalidRecipient), 0));
        assert_eq!(reversed, list);
    }
}
