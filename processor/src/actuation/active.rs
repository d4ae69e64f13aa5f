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
    /// The earliest `expires` in `by_key`, so that checking for expiries on every event costs
    /// nothing until one is due. `None`: not known (after a load), computed on next use.
    #[serde(skip)]
    soonest: Option<Option<DateTime<Utc>>>,
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
        if let Some(Some(soonest)) = self.soonest
            && decision.expires < soonest
        {
            self.soonest = Some(Some(decision.expires));
        } else if self.soonest == Some(None) {
            self.soonest = Some(Some(decision.expires));
        }
        // Replacing an entry may move the soonest expiry later; an early value only costs a
        // scan that finds nothing due.
        self.by_key.insert(decision.action_key.clone(), decision.clone());
        Some(decision)
    }

    /// Ends every action whose `expires` is at or before `now`, in key order.
    pub fn expire(&mut self, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        let soonest = *self.soonest.get_or_insert_with(|| self.by_key.values().map(|d| d.expires).min());
        if soonest.is_none_or(|soonest| soonest > now) {
            return;
        }
        self.soonest = None;
        let due: Vec<String> = self.by_key.iter().filter(|(_, d)| d.expires <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            if let Some(decision) = self.by_key.remove(&key) {
                let expired_at = decision.expires;
                out.push(decision.ended(Status::Expired, expired_at, format!("expired: {}", decision.reason)));
            }
        }
    }

    /// Takes an action back before it expires.
    pub fn lift(&mut self, key: &str, at: DateTime<Utc>, reason: String) -> Option<Decision> {
        let decision = self.by_key.remove(key)?;
        self.soonest = None;
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
