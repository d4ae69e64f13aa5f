//! The suppression list: recipients no one should mail again, and why.
//!
//! A recipient joins on a hard bounce (a permanent failure of a hard class: the address or
//! its domain does not exist or is closed), a complaint or an unsubscribe. The earliest
//! reason (by the event's time, then its id) is kept, with when and from which source it
//! came; other events of the same recipient only update `last_seen` and `events`. Choosing by
//! time rather than by arrival makes the list independent of the order events are folded in,
//! so processors reading partitions in any interleaving agree. Events our own MTA generated
//! never suppress anyone: an administrative bounce says nothing about the address.
//!
//! An operator takes a recipient off the list with a `suppression_removed` event in the log
//! (its audit record: who, why, when); a later suppressing event puts them back. Removals act
//! in log order, so only `vigil run`, which folds one log, serves them. An address an erasure
//! rewrote (`vigil_log::privacy::is_erased`) is never suppressed: it belongs to no one.

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

/// The event that takes `recipient` off the list when folded: what an operator's request is
/// written to the log as, its audit record. Its id is unique to the request (its time
/// included).
#[must_use]
pub fn operator_removal(recipient: &str, action: vigil_schemas::OperatorAction, at: DateTime<Utc>) -> DeliveryEvent {
    let mut hasher = blake3::Hasher::new();
    for part in ["operator-unsuppress", recipient, &action.author, &action.reason, &format!("{at:?}")] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let id = hasher.finalize().to_hex()[..32].to_owned();
    let mut event = DeliveryEvent::new(id, SourceKind::Operator, EventKind::SuppressionRemoved, at, at);
    event.source_type = Some("unsuppress".into());
    event.recipient = Some(recipient.to_ascii_lowercase());
    event.recipient_domain = recipient.rsplit_once('@').map(|(_, domain)| domain.to_ascii_lowercase());
    event.operator = Some(action);
    event
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

    /// Adds the event's recipient when the event suppresses it, removes it on an operator's
    /// `suppression_removed`. Returns true if the event suppressed.
    pub fn record(&mut self, event: &DeliveryEvent) -> bool {
        if event.kind == EventKind::SuppressionRemoved {
            if let Some(recipient) = &event.recipient {
                self.remove(recipient);
            }
            return false;
        }
        let Some((reason, class)) = reason_of(event) else { return false };
        // `@domain` is an address whose person was not kept ([privacy] recipients = "domain");
        // an erased address belongs to no one.
        let Some(recipient) = event
            .recipient
            .as_deref()
            .filter(|r| !r.is_empty() && !r.starts_with('@') && !vigil_log::privacy::is_erased(r))
        else {
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

    /// Takes a recipient (case-insensitive) off the list; returns its entry.
    pub fn remove(&mut self, recipient: &str) -> Option<Suppression> {
        self.by_recipient.remove(&recipient.to_ascii_lowercase())
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

    #[test]
    fn an_operator_removal_takes_a_recipient_off_until_the_next_suppressing_event() {
        let mut list = Suppressions::new();
        list.record(&event(EventKind::Complaint, "angry@example.org", None, 0));
        let mut removal = event(EventKind::SuppressionRemoved, "Angry@Example.org", None, 1);
        removal.source = SourceKind::Operator;
        assert!(!list.record(&removal));
        assert!(list.get("angry@example.org").is_none());
        assert!(list.record(&event(EventKind::Unsubscribe, "angry@example.org", None, 2)), "suppressed again");
        assert_eq!(list.get("angry@example.org").unwrap().reason, Reason::Unsubscribe);
        let erased = "erased-0123456789abcdef0123456789abcdef@example.org";
        assert!(!list.record(&event(EventKind::Complaint, erased, None, 3)), "an erased address is no one");
    }
}
