//! The actions in force (and those in force in shadow), by action key.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::decision::{Decision, Status};

/// Every action in force, keyed by [`Decision::action_key`]. Each entry is the decision that
/// put it in force (or last extended it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActiveActions {
    by_key: BTreeMap<String, Decision>,
    /// (expires, key) of every entry put in force, soonest first, so that checking for
    /// expiries on every event costs nothing until one is due. Entries replaced or lifted since
    /// are left in and skipped when they come up. Rebuilt from `by_key` after a load.
    #[serde(skip)]
    due: std::collections::BinaryHeap<std::cmp::Reverse<(DateTime<Utc>, String)>>,
    #[serde(skip)]
    due_built: bool,
}

impl ActiveActions {
    /// Puts `decision` in force. A repeat of an action in force only extends it, and is only
    /// said (returned) when it moves `expires` by at least `min_extension` or changes the
    /// value: a threshold rule triggering on every matching response would otherwise send a
    /// frame and an admin call per response.
    pub fn upsert(&mut self, decision: Decision, min_extension: TimeDelta) -> Option<Decision> {
        if let Some(current) = self.by_key.get(&decision.action_key)
            && current.status == decision.status
            && current.value == decision.value
            && decision.expires < current.expires + min_extension
        {
            return None;
        }
        self.build_due();
        self.due.push(std::cmp::Reverse((decision.expires, decision.action_key.clone())));
        self.by_key.insert(decision.action_key.clone(), decision.clone());
        Some(decision)
    }

    /// Whether putting an action in force under `key` with `status` until `expires` would only
    /// be a quiet extension (see [`Self::upsert`]), for a decision whose value is fixed by its
    /// key.
    #[must_use]
    pub fn is_quiet_repeat(&self, key: &str, status: Status, expires: DateTime<Utc>, min_extension: TimeDelta) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|current| current.status == status && expires < current.expires + min_extension)
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
