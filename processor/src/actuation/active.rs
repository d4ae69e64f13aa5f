//! The actions in force (and those in force in shadow), by action key.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::decision::{Decision, Status};

/// Every action in force, keyed by [`Decision::action_key`]. Each entry is the decision that
/// put it in force (or last extended it), with `expires` moved to the latest trigger's.
///
/// As KumoMTA's tsa-daemon, every later trigger of an action in force moves its expiry to
/// that trigger's: a provider that keeps deferring keeps the source suspended until the rule's
/// duration after the *last* match. Only extensions of at least the caller's `min_extension`
/// are *said* (a new decision, recorded and pushed); smaller ones change the table quietly and
/// are *announced* (see [`Self::take_announced`]) so that live subscribers hear every new expiry
/// without a decision, an admin call or a webhook per matching response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActiveActions {
    by_key: BTreeMap<String, Decision>,
    /// The expiry each entry last had when it was said, where a quiet extension has moved it
    /// since: the next said extension is measured from here.
    #[serde(default)]
    said_expires: BTreeMap<String, DateTime<Utc>>,
    /// Quiet extensions since the last [`Self::take_announced`], as the entry now stands.
    #[serde(skip)]
    announced: Vec<Decision>,
    /// (expires, key) of every entry put in force, soonest first, so that checking for
    /// expiries on every event costs nothing until one is due. Entries replaced or lifted since
    /// are left in and skipped when they come up. Rebuilt from `by_key` after a load.
    #[serde(skip)]
    due: std::collections::BinaryHeap<std::cmp::Reverse<(DateTime<Utc>, String)>>,
    #[serde(skip)]
    due_built: bool,
}

impl ActiveActions {
    /// Puts `decision` in force; returns it when it is said (see the type's documentation): a
    /// new action, a changed value or status, or an extension by at least `min_extension` past
    /// the expiry last said. A repeat that moves the expiry by less extends the entry quietly
    /// and is announced; one that does not move it (an older trigger) changes nothing.
    pub fn upsert(&mut self, decision: Decision, min_extension: TimeDelta) -> Option<Decision> {
        let key = decision.action_key.clone();
        if let Some(current) = self.by_key.get_mut(&key)
            && current.status == decision.status
            && current.value == decision.value
        {
            if decision.expires <= current.expires {
                return None;
            }
            let said = *self.said_expires.get(&key).unwrap_or(&current.expires);
            if decision.expires < said + min_extension {
                self.said_expires.insert(key.clone(), said);
                // The entry now stands as this trigger says (tsa-daemon overwrites it: an
                // override keyed by egress path follows the latest recipient domain), under
                // the id of the decision last said.
                let said_id = std::mem::take(&mut current.decision_id);
                *current = Decision { decision_id: said_id, ..decision };
                self.announced.push(current.clone());
                let expires = current.expires;
                self.build_due();
                self.due.push(std::cmp::Reverse((expires, key)));
                return None;
            }
        }
        self.said_expires.remove(&key);
        self.build_due();
        self.due.push(std::cmp::Reverse((decision.expires, key.clone())));
        self.by_key.insert(key, decision.clone());
        Some(decision)
    }

    /// Whether putting an action in force under `key` with `status` until `expires` would
    /// change nothing (in force already, at least that long), for a decision whose value is
    /// fixed by its key: the caller need not build one.
    #[must_use]
    pub fn is_covered(&self, key: &str, status: Status, expires: DateTime<Utc>) -> bool {
        self.by_key.get(key).is_some_and(|current| current.status == status && expires <= current.expires)
    }

    /// The quiet extensions since the last call (each entry as it now stands), for live
    /// subscribers; the fold clears them at each batch.
    pub fn take_announced(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.announced)
    }

    /// Ends every action whose `expires` is at or before `now`, in key order.
    pub fn expire(&mut self, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        self.build_due();
        let mut due = Vec::new();
        while let Some(std::cmp::Reverse((expires, _))) = self.due.peek()
            && *expires <= now
        {
            let Some(std::cmp::Reverse((expires, key))) = self.due.pop() else { break };
            // Only if the entry still expires then (not replaced or lifted since).
            if self.by_key.get(&key).is_some_and(|d| d.expires == expires) {
                due.push(key);
            }
        }
        // In key order, as a scan of the table would give them.
        due.sort();
        due.dedup();
        for key in due {
            self.said_expires.remove(&key);
            if let Some(decision) = self.by_key.remove(&key) {
                let expired_at = decision.expires;
                out.push(decision.ended(Status::Expired, expired_at, format!("expired: {}", decision.reason)));
            }
        }
    }

    fn build_due(&mut self) {
        if !self.due_built {
            self.due = self.by_key.iter().map(|(k, d)| std::cmp::Reverse((d.expires, k.clone()))).collect();
            self.due_built = true;
        }
    }

    /// Takes an action back before it expires.
    pub fn lift(&mut self, key: &str, at: DateTime<Utc>, reason: String) -> Option<Decision> {
        self.said_expires.remove(key);
        let decision = self.by_key.remove(key)?;
        Some(decision.ended(Status::Lifted, at, reason))
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Decision> {
        self.by_key.get(key)
    }

    /// Actions in force at `now` (wall clock for the MTA-facing endpoints), shadow ones
    /// included; in key order.
    pub fn in_force(&self, now: DateTime<Utc>) -> impl Iterator<Item = &Decision> {
        self.by_key.values().filter(move |d| d.expires > now)
    }

    pub fn digest_into(&self, hasher: &mut blake3::Hasher) {
        for decision in self.by_key.values() {
            hasher.update(decision.decision_id.as_bytes());
        }
    }
}
