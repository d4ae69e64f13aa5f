//! The processor's read model: everything outside the processor (the API, and after it the
//! dashboards, alerting and the query role) reads the derived state, the actions in force and
//! the decisions through this module and nothing else, so the fold's internals can change
//! without breaking a reader.
//!
//! # Contract
//! - [`View`] answers typed queries over the derived state: a scope's reputation over a live
//!   window, live time series with their minute bounds, suppressions, the state's digests, the
//!   actions in force and warm-up progress. Every answer is an owned value taken under the
//!   state's read lock, which is held only for the copy.
//! - The value types those answers carry ([`Scope`], [`Metric`], [`WindowRow`], [`Decision`],
//!   ...) and the pure functions a warehouse-backed endpoint needs to count as the fold counts
//!   ([`outcome`], [`score`]) are re-exported here; they are the processor's public vocabulary.
//!
//! # Poisoned locks
//! One policy across Vigil: a lock is poisoned only when a thread panicked while holding it,
//! which is a bug. For the derived state the writer is the fold, which may have stopped half
//! way through a batch, so the view refuses to answer from it ([`ViewError::Poisoned`], a 500
//! "fault of ours") instead of serving a state no replay would produce; the fold itself stops
//! (the pipeline panics on the poisoned lock and the role exits, to be restarted from its last
//! snapshot). Locks that guard only bookkeeping whose invariants hold between statements (the
//! shippers' acknowledgement windows, a tail's normalisers, the partitions a rebalance revoked)
//! are recovered with `PoisonError::into_inner`.

use std::sync::RwLockReadGuard;

use chrono::{DateTime, Utc};
use vigil_schemas::api::StateResponse;

pub use crate::actuation::kumomta;
pub use crate::actuation::push::{Outbox, OutboxError};
pub use crate::actuation::warmup::Progress as WarmupProgress;
pub use crate::actuation::{Decision, Status, operator_lift};
pub use crate::alert_dispatch::Silence;
pub use crate::alert_push::{AlertOutbox, AlertOutboxError};
pub use crate::alerting::{Alert, AlertNotice, AlertState, Severity};
pub use crate::erasure::{EraseError, Eraser, ErasureReport};
pub use crate::pipeline::SharedState;
pub use crate::reputation::counters::outcome;
pub use crate::reputation::score::{MIN_ATTEMPTS, score};
pub use crate::reputation::store::HORIZON_MINUTES;
pub use crate::reputation::{LabelKind, Metric, Rates, Scope, ScopeValues, Score, Totals, Window, WindowRow};
use crate::state::DerivedState;
pub use crate::suppression::{Suppression, operator_removal};

/// Why the view could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The fold panicked while it held the state (a bug); see the module's poisoned-lock policy.
    #[error("the derived state is unavailable: the fold stopped while updating it")]
    Poisoned,
}

/// Live time series: one row of `(first minute of the step, value)` points per scope value,
/// and the minutes the window covers, `first..=last` (minutes since 1970), so a caller can
/// lay out dense steps.
#[derive(Debug, Clone)]
pub struct LiveSeries {
    pub first_minute: u32,
    pub last_minute: u32,
    pub series: Vec<(ScopeValues, Vec<(u32, u64)>)>,
}

/// A page of the suppression list.
#[derive(Debug, Clone)]
pub struct SuppressionPage {
    /// Suppressed recipients in all.
    pub total: usize,
    pub rows: Vec<Suppression>,
}

/// The read side of the processor's derived state. Cheap to clone (it shares the state).
#[derive(Debug, Clone)]
pub struct View {
    state: SharedState,
}

impl View {
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self { state }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, DerivedState>, ViewError> {
        self.state.read().map_err(|_| ViewError::Poisoned)
    }

    /// Every value of `scope` with traffic in the `minutes` ending at `as_of`, with its counts.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn reputation(&self, scope: Scope, minutes: u32, as_of: DateTime<Utc>) -> Result<Vec<WindowRow>, ViewError> {
        Ok(self.read()?.reputation.window(scope, minutes, as_of))
    }

    /// The sum of `metrics` per `step` minutes over the `span` minutes ending at `to`, per
    /// value of `scope`.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn timeseries(
        &self,
        scope: Scope,
        metrics: &[Metric],
        step: u32,
        span: u32,
        to: DateTime<Utc>,
    ) -> Result<LiveSeries, ViewError> {
        let series = self.read()?.reputation.timeseries(scope, metrics, step, span, to);
        Ok(LiveSeries {
            first_minute: crate::reputation::store::window_start(span, to),
            last_minute: crate::reputation::store::minute_of(to),
            series,
        })
    }

    /// One recipient's suppression, if any.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn suppression(&self, recipient: &str) -> Result<SuppressionPage, ViewError> {
        let state = self.read()?;
        let list = &state.suppressions;
        Ok(SuppressionPage { total: list.len(), rows: list.get(recipient).into_iter().cloned().collect() })
    }

    /// Up to `limit` suppressions after the recipient `after`, of `domain` if given, by
    /// recipient.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SuppressionPage, ViewError> {
        let state = self.read()?;
        let list = &state.suppressions;
        Ok(SuppressionPage { total: list.len(), rows: list.list(domain, after, limit).into_iter().cloned().collect() })
    }

    /// The state's offset, digests and sizes.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn summary(&self) -> Result<StateResponse, ViewError> {
        Ok(self.read()?.summary())
    }

    /// The actions in force at `now` (the wall clock: the MTA acts now).
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn in_force(&self, now: DateTime<Utc>) -> Result<Vec<Decision>, ViewError> {
        Ok(self.read()?.actuation.active.in_force(now).cloned().collect())
    }

    /// Where each warm-up plan stands.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn warmup(&self) -> Result<Vec<WarmupProgress>, ViewError> {
        Ok(self.read()?.actuation.warmup.progress())
    }

    /// Alerts pending and firing now, most recent first, and the recent notices (firings and
    /// resolves), newest first.
    ///
    /// # Errors
    /// [`ViewError::Poisoned`].
    pub fn alerts(&self) -> Result<(Vec<Alert>, Vec<AlertNotice>), ViewError> {
        let state = self.read()?;
        Ok((state.alerting.alerts(), state.alerting.history()))
    }
}
