//! The async edge of the processor: log of record -> enrich -> warehouse, with the derived
//! state updated after each committed batch and snapshotted now and then.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_log::{EventLog, LogError};
use vigil_schemas::DeliveryEvent;
use vigil_warehouse::{ParquetWriter, WarehouseError};

use crate::actuation::Decision;
use crate::actuation::push::{Outbox, OutboxError};
use crate::alert_push::{AlertOutbox, AlertOutboxError};
use crate::enrich::Enricher;
use crate::state::{DerivedState, FoldRules, SnapshotError};

/// The log consumer name under which the warehouse writer commits its offset.
pub const CONSUMER: &str = "warehouse";

/// Derived state shared with the API. Locked briefly: once per batch to write, per request
/// to read (and while a snapshot is encoded).
pub type SharedState = Arc<RwLock<DerivedState>>;

/// Events read from the log per chunk while replaying.
const REPLAY_CHUNK: usize = 10_000;

/// Alert notices a rebuild decides about changes older than this are not sent.
const STALE_NOTICE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Why a step of the pipeline failed. The pipeline retries from the committed offset.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    AlertOutbox(#[from] AlertOutboxError),
    #[error("pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Batching of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Most events per warehouse batch (and per Parquet file).
    pub max_batch_events: usize,
    /// How long to let a small batch fill before writing it: fewer, larger files at the cost
    /// of this much freshness.
    pub linger: Duration,
    /// First wait before retrying after a failure; it doubles (jittered) up to 30 s while
    /// failures repeat.
    pub retry_backoff: Duration,
    /// How often small warehouse files are merged.
    pub compaction_interval: Duration,
    /// Where derived-state snapshots are kept; `None` keeps none (state is rebuilt from the
    /// whole log at each start).
    pub state_dir: Option<PathBuf>,
    /// How often the derived state is snapshotted (when it changed).
    pub snapshot_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 50_000,
            linger: Duration::from_millis(50),
            retry_backoff: Duration::from_secs(1),
            compaction_interval: Duration::from_secs(10),
            state_dir: None,
            snapshot_interval: Duration::from_secs(60),
        }
    }
}

/// Folds the log from `state.offset` up to `until` into `state`, enriching each event as the
/// pipeline does. Blocking. Used at start and by `vigil replay`.
///
/// # Errors
/// When the log cannot be read.
pub fn catch_up(
    log: &EventLog,
    enricher: &Enricher,
    fold: &FoldRules,
    state: &mut DerivedState,
    until: u64,
    on_decisions: &mut dyn FnMut(Vec<Decision>),
) -> Result<(), LogError> {
    while state.offset < until {
        let mut chunk = log.read_without_raw(state.offset, REPLAY_CHUNK.min((until - state.offset) as usize))?;
        let Some((last, _)) = chunk.last() else { break };
        let next = last + 1;
        for (_, event) in &mut chunk {
            enricher.enrich(event);
        }
        state.attribute(&mut chunk, fold);
        let decisions = state.apply_batch(&chunk, next, fold);
        if !decisions.is_empty() {
            on_decisions(decisions);
        }
    }
    state.advance_to(until);
    Ok(())
}

/// The snapshot directory of a data directory.
#[must_use]
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

/// Moves events from the log to the warehouse. See the crate docs for the guarantee.
#[derive(Debug)]
pub struct Pipeline {
    log: EventLog,
    writer: Arc<ParquetWriter>,
    enricher: Enricher,
    /// Swapped whole when the rules are reloaded; each batch folds under one version.
    fold: Arc<arc_swap::ArcSwap<FoldRules>>,
    outbox: Option<Outbox>,
    /// Where alert notices are written before any receiver is told.
    alert_outbox: Option<AlertOutbox>,
    state: SharedState,
    config: PipelineConfig,
}

impl Pipeline {
    #[must_use]
    pub fn new(log: EventLog, writer: ParquetWriter, enricher: Enricher, config: PipelineConfig) -> Self {
        Self {
            log,
            writer: Arc::new(writer),
            enricher,
            fold: Arc::new(arc_swap::ArcSwap::from_pointee(FoldRules::bundled())),
            outbox: None,
            alert_outbox: None,
            state: Arc::new(RwLock::new(DerivedState::new())),
            config,
        }
    }

    /// Folds with `fold` instead of the bundled rules, and records decisions in `outbox`.
    #[must_use]
    pub fn with_rules(mut self, fold: FoldRules, outbox: Option<Outbox>) -> Self {
        self.fold = Arc::new(arc_swap::ArcSwap::from_pointee(fold));
        self.outbox = outbox;
        self
    }

    /// Records alert notices in `outbox` (else they are only logged).
    #[must_use]
    pub fn with_alert_outbox(mut self, outbox: AlertOutbox) -> Self {
        self.alert_outbox = Some(outbox);
        self
    }

    /// Writes the alert notices the rebuild decided to the alert outbox (idempotent by notice
    /// id), and logs them; before any snapshot, so a notice decided is never lost to a crash.
    /// Notices about alerts that changed more than [`STALE_NOTICE`] ago are not recorded: a
    /// rebuild of a long log (an upgrade, a lost snapshot) would otherwise page people about
    /// last month.
    fn record_rebuilt_notices(&self, state: &mut DerivedState) -> Result<(), AlertOutboxError> {
        let stale_before = chrono::Utc::now() - STALE_NOTICE;
        let (recent, stale): (Vec<_>, Vec<_>) = state
            .alerting
            .take_notices()
            .into_iter()
            .partition(|n| n.alert.resolved_at.or(n.alert.fired_at).is_some_and(|at| at >= stale_before));
        if !stale.is_empty() {
            tracing::info!(
                stale = stale.len(),
                "alert notices older than an hour, decided again by the rebuild, not sent"
            );
        }
        for notice in &recent {
            crate::alert_push::log_notice(notice);
        }
        match &self.alert_outbox {
            Some(outbox) => outbox.record(&recent).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Where reloaded rules are stored: the next batch folds under them.
    #[must_use]
    pub fn rules_handle(&self) -> Arc<arc_swap::ArcSwap<FoldRules>> {
        Arc::clone(&self.fold)
    }

    /// The live derived state.
    #[must_use]
    pub fn state(&self) -> SharedState {
        Arc::clone(&self.state)
    }

    /// Makes the warehouse match the committed offset and the derived state catch up with
    /// it: from the snapshot if there is a usable one, else from offset 0. Blocking; call
    /// before [`Self::run`]. Returns the committed offset.
    ///
    /// # Errors
    /// When the log or the warehouse cannot be read.
    pub fn prepare(&self) -> Result<u64, PipelineError> {
        let committed = self.log.committed_offset(CONSUMER)?;
        let removed = self.writer.recover(committed)?;
        if removed > 0 {
            tracing::info!(removed, committed, "warehouse rolled back to the committed offset");
        }
        let mut state = match self.config.state_dir.as_deref().and_then(DerivedState::load) {
            // State is applied after the warehouse commits, so a snapshot is never ahead of
            // it; one that is belongs to another log (a data directory put back together).
            Some(state) if state.offset <= committed => state,
            Some(state) => {
                tracing::warn!(snapshot = state.offset, committed, "snapshot is ahead of the log; rebuilding");
                DerivedState::new()
            }
            None => DerivedState::new(),
        };
        let from = state.offset;
        let mut unrecorded = Ok(());
        catch_up(&self.log, &self.enricher, &self.fold.load(), &mut state, committed, &mut |decisions| {
            // Recording is idempotent by decision id: what was recorded before is skipped.
            if let (Some(outbox), Ok(())) = (&self.outbox, &unrecorded) {
                unrecorded = outbox.record(&decisions).map(|_| ());
            }
        })?;
        unrecorded?;
        self.record_rebuilt_notices(&mut state)?;
        tracing::info!(from, to = committed, digest = %state.digest(), "derived state rebuilt");
        *self.state.write().expect("state lock poisoned") = state;
        Ok(committed)
    }

    /// Processes the log from `offset` until `shutdown` is cancelled.
    pub async fn run(self, mut offset: u64, shutdown: CancellationToken) {
        let mut head = self.log.subscribe();
        let mut next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
        let mut retry = vigil_log::backoff::Backoff::new(self.config.retry_backoff, Duration::from_secs(30));
        let mut next_snapshot = tokio::time::Instant::now() + self.config.snapshot_interval;
        let mut snapshot_offset = offset;
        loop {
            if offset > snapshot_offset && tokio::time::Instant::now() >= next_snapshot {
                self.snapshot().await;
                snapshot_offset = offset;
                next_snapshot = tokio::time::Instant::now() + self.config.snapshot_interval;
            }
            while self.log.head() <= offset {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        if offset > snapshot_offset {
                            self.snapshot().await;
                        }
                        return;
                    }
                    changed = head.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(next_compaction) => {
                        self.compact().await;
                        next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
                    }
                }
            }
            if tokio::time::Instant::now() >= next_compaction {
                self.compact().await;
                next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
            }
            if self.log.head() - offset < self.config.max_batch_events as u64 {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.config.linger) => {}
                }
            }
            match self.step(offset).await {
                Ok(next) => {
                    offset = next;
                    retry.reset();
                }
                Err(error) => {
                    tracing::error!(%error, offset, retry_in = ?retry.delay(), "processing failed; retrying from the committed offset");
                    retry.wait(&shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
            }
        }
    }

    /// Writes the derived state's snapshot; a failure is logged and retried next interval
    /// (the log still holds everything, so a missing snapshot only slows the next start).
    async fn snapshot(&self) {
        let Some(dir) = self.config.state_dir.clone() else { return };
        let state = Arc::clone(&self.state);
        let result = tokio::task::spawn_blocking(move || state.read().expect("state lock poisoned").save(&dir)).await;
        match result {
            Ok(Ok(())) => tracing::debug!("derived state snapshotted"),
            Ok(Err(error)) => tracing::warn!(%error, "snapshot failed; will retry"),
            Err(error) => tracing::error!(%error, "snapshot task failed"),
        }
    }

    /// Merges small warehouse files. Runs between batches, so every file it sees is committed.
    async fn compact(&self) {
        let writer = Arc::clone(&self.writer);
        match tokio::task::spawn_blocking(move || writer.compact()).await {
            Ok(Ok(report)) if report.merged + report.deleted > 0 => tracing::debug!(?report, "warehouse compacted"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "warehouse compaction failed; will retry"),
            Err(error) => tracing::error!(%error, "warehouse compaction task failed"),
        }
    }

    /// One batch: read, enrich, write, commit, count. Returns the next offset.
    async fn step(&self, offset: u64) -> Result<u64, PipelineError> {
        let started = std::time::Instant::now();
        let log = self.log.clone();
        let max = self.config.max_batch_events;
        let mut events: Vec<(u64, DeliveryEvent)> =
            tokio::task::spawn_blocking(move || log.read_without_raw(offset, max)).await??;
        let Some(end) = events.last().map(|(o, _)| o + 1) else { return Ok(offset) };
        let batch = tracing::debug_span!("batch", from = offset, to = end);
        batch.in_scope(|| {
            let _enrich = tracing::debug_span!("enrich", events = events.len()).entered();
            for (_, event) in &mut events {
                self.enricher.enrich(event);
            }
            let attributed = self.state.write().expect("state lock poisoned").attribute(&mut events, &self.fold.load());
            crate::metrics::complaints_attributed(attributed);
        });
        let warehouse = tracing::debug_span!(parent: &batch, "warehouse", events = events.len());
        let (writer, log) = (Arc::clone(&self.writer), self.log.clone());
        let events = tokio::task::spawn_blocking(move || -> Result<_, PipelineError> {
            let _warehouse = warehouse.entered();
            writer.write_batch(offset, end, &events)?;
            log.commit_offset(CONSUMER, end)?;
            Ok(events)
        })
        .await??;
        let (decisions, announced, notices) = {
            let _fold = tracing::debug_span!(parent: &batch, "fold", events = events.len()).entered();
            let mut state = self.state.write().expect("state lock poisoned");
            let decisions = state.apply_batch(&events, end, &self.fold.load());
            crate::metrics::refresh_alerts(&state.alerting);
            (decisions, state.take_announced(), state.alerting.take_notices())
        };
        if !notices.is_empty() {
            for notice in &notices {
                crate::alert_push::log_notice(notice);
            }
            if let Some(outbox) = self.alert_outbox.clone() {
                let recorded = tokio::task::spawn_blocking(move || outbox.record(&notices)).await?;
                if let Err(error) = recorded {
                    // As for decisions: the next rebuild from the log decides them again.
                    tracing::error!(%error, "alert notices could not be recorded");
                }
            }
        }
        if let Some(outbox) = &self.outbox {
            outbox.announce(announced);
        }
        if let (Some(outbox), false) = (&self.outbox, decisions.is_empty()) {
            let outbox = outbox.clone();
            let recorded = tokio::task::spawn_blocking(move || outbox.record(&decisions)).await?;
            if let Err(error) = recorded {
                // The state moved on; the decisions come back when the state is rebuilt from
                // the log, which a restart does.
                tracing::error!(%error, "decisions could not be recorded");
            }
        }
        crate::metrics::processor_metrics().batch_seconds.observe(started.elapsed().as_secs_f64());
        tracing::debug!(from = offset, to = end, "batch committed to the warehouse and folded");
        Ok(end)
    }
}
