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
use crate::alerting::{AlertNotice, MAX_UNSENT};
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

/// How often what the outboxes refused is tried again while no event comes.
pub(crate) const RETRY_UNRECORDED: Duration = Duration::from_secs(5);

/// Decisions kept in memory at most while the outbox refuses them.
pub(crate) const MAX_UNRECORDED_DECISIONS: usize = 100_000;

/// Decisions and alert notices the outboxes refused (a full disk), recorded again, in order,
/// before the next batch's. While any wait, or once some were dropped to bound memory, no
/// snapshot is written: a crash or a restart then rebuilds the state from an older snapshot,
/// which decides them again (both outboxes record idempotently by id), so none is lost.
#[derive(Debug, Default)]
struct Unrecorded {
    decisions: Vec<Decision>,
    notices: Vec<AlertNotice>,
    /// Some were dropped to bound memory: only a rebuild from the log brings them back.
    dropped: bool,
}

impl Unrecorded {
    fn holds_back_snapshots(&self) -> bool {
        self.dropped || !self.decisions.is_empty() || !self.notices.is_empty()
    }
}

/// Records `all` (what waited, then what is new) with `record`; what it refuses is returned to
/// wait for the next try, the newest `cap` of it, with whether older ones had to be dropped
/// (then only a rebuild from the log brings them back, so snapshots stay held back until a
/// restart). `vigil_unrecorded{what}` says how many wait. Blocking: call it off the runtime.
pub(crate) fn record_or_keep<T, E: std::fmt::Display>(
    mut all: Vec<T>,
    record: impl FnOnce(&[T]) -> Result<usize, E>,
    cap: usize,
    what: &'static str,
) -> (Vec<T>, bool) {
    let mut dropped = false;
    match record(&all) {
        Ok(_) => all.clear(),
        Err(error) => {
            let excess = all.len().saturating_sub(cap);
            all.drain(..excess);
            dropped = excess > 0;
            tracing::error!(%error, what, waiting = all.len(), dropped, "could not be recorded; tried again, and no snapshot is written meanwhile");
        }
    }
    crate::metrics::unrecorded(what, all.len());
    (all, dropped)
}

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
    /// What is deleted, and how often; `None` deletes nothing.
    pub retention: Option<crate::retention::RetentionSettings>,
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
            retention: None,
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
    /// What the outboxes refused, recorded before the next batch's.
    unrecorded: std::sync::Mutex<Unrecorded>,
    state: SharedState,
    config: PipelineConfig,
    /// Erasures asked for through [`crate::erasure::Eraser`], done between batches.
    erasures: Option<crate::erasure::ErasureRequests>,
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
            unrecorded: std::sync::Mutex::default(),
            state: Arc::new(RwLock::new(DerivedState::new())),
            config,
            erasures: None,
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

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, Unrecorded> {
        self.unrecorded.lock().expect("unrecorded lock poisoned")
    }

    /// Records the notices waiting and `fresh` in the alert outbox, in order; they wait for
    /// the next try when it refuses.
    async fn record_notices(&self, fresh: Vec<AlertNotice>) -> Result<(), PipelineError> {
        let Some(outbox) = self.alert_outbox.clone() else { return Ok(()) };
        self.record_waiting(|u| &mut u.notices, fresh, move |n| outbox.record(n), MAX_UNSENT, "alert_notices").await
    }

    /// Records the decisions waiting and `fresh` in the outbox, in order; they wait for the
    /// next try when it refuses.
    async fn record_decisions(&self, fresh: Vec<Decision>) -> Result<(), PipelineError> {
        let Some(outbox) = self.outbox.clone() else { return Ok(()) };
        self.record_waiting(
            |u| &mut u.decisions,
            fresh,
            move |d| outbox.record(d),
            MAX_UNRECORDED_DECISIONS,
            "decisions",
        )
        .await
    }

    /// Records what waits in `field` of [`Unrecorded`], then `fresh`, with `record` off the
    /// runtime ([`record_or_keep`]).
    async fn record_waiting<T, E>(
        &self,
        field: fn(&mut Unrecorded) -> &mut Vec<T>,
        fresh: Vec<T>,
        record: impl FnOnce(&[T]) -> Result<usize, E> + Send + 'static,
        cap: usize,
        what: &'static str,
    ) -> Result<(), PipelineError>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut all = std::mem::take(field(&mut self.unrecorded()));
        all.extend(fresh);
        if all.is_empty() {
            return Ok(());
        }
        let (all, dropped) = tokio::task::spawn_blocking(move || record_or_keep(all, record, cap, what)).await?;
        let mut unrecorded = self.unrecorded();
        *field(&mut unrecorded) = all;
        unrecorded.dropped |= dropped;
        Ok(())
    }

    /// Whether something the outboxes refused keeps snapshots back.
    fn snapshots_held_back(&self) -> bool {
        self.unrecorded().holds_back_snapshots()
    }

    /// Whether something the outboxes refused waits to be recorded.
    fn waiting(&self) -> bool {
        let unrecorded = self.unrecorded();
        !unrecorded.decisions.is_empty() || !unrecorded.notices.is_empty()
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
        let first = self.log.first_offset()?;
        if from < first {
            tracing::warn!(
                state_offset = from,
                log_starts_at = first,
                "the log's events before offset {first} were deleted by retention and no snapshot covers them: \
                 the state is rebuilt from what the log keeps, without them"
            );
        }
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

    /// Takes the erasures `requests` brings (from its [`crate::erasure::Eraser`]), each
    /// between two batches.
    #[must_use]
    pub fn with_erasures(mut self, requests: crate::erasure::ErasureRequests) -> Self {
        self.erasures = Some(requests);
        self
    }

    /// Processes the log from `offset` until `shutdown` is cancelled.
    pub async fn run(mut self, mut offset: u64, shutdown: CancellationToken) {
        let mut erasures = self.erasures.take();
        let mut head = self.log.subscribe();
        let mut next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
        let retention_every = self.config.retention.as_ref().map_or(Duration::from_secs(3600), |r| r.check_every);
        let mut next_retention = tokio::time::Instant::now() + retention_every;
        let mut retry = vigil_log::backoff::Backoff::new(self.config.retry_backoff, Duration::from_secs(30));
        let mut next_snapshot = tokio::time::Instant::now() + self.config.snapshot_interval;
        let mut snapshot_offset = offset;
        loop {
            while let Some(request) = erasures.as_mut().and_then(|e| e.0.try_recv().ok()) {
                self.erase(request).await;
            }
            if offset > snapshot_offset && tokio::time::Instant::now() >= next_snapshot && !self.snapshots_held_back() {
                self.snapshot().await;
                snapshot_offset = offset;
                next_snapshot = tokio::time::Instant::now() + self.config.snapshot_interval;
            }
            while self.log.head() <= offset {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        if self.snapshots_held_back() {
                            tracing::warn!("decisions or alert notices unrecorded at shutdown; no snapshot, so the next start decides them again");
                        } else if offset > snapshot_offset {
                            self.snapshot().await;
                        }
                        return;
                    }
                    changed = head.changed() => if changed.is_err() { return },
                    Some(request) = next_erasure(&mut erasures) => self.erase(request).await,
                    () = tokio::time::sleep(RETRY_UNRECORDED), if self.waiting() => {
                        let retried = match self.record_decisions(Vec::new()).await {
                            Ok(()) => self.record_notices(Vec::new()).await,
                            error => error,
                        };
                        if let Err(error) = retried {
                            tracing::error!(%error, "retrying what the outboxes refused failed");
                        }
                    }
                    () = tokio::time::sleep_until(next_compaction) => {
                        self.compact().await;
                        next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
                    }
                    // An idle pipeline still snapshots what it folded last, so a restart need
                    // not replay it and retention may pass it.
                    () = tokio::time::sleep_until(next_snapshot), if offset > snapshot_offset && !self.snapshots_held_back() => {
                        self.snapshot().await;
                        snapshot_offset = offset;
                        next_snapshot = tokio::time::Instant::now() + self.config.snapshot_interval;
                    }
                    () = tokio::time::sleep_until(next_retention), if self.config.retention.is_some() => {
                        self.retain().await;
                        next_retention = tokio::time::Instant::now() + retention_every;
                    }
                }
            }
            if tokio::time::Instant::now() >= next_compaction {
                self.compact().await;
                next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
            }
            if tokio::time::Instant::now() >= next_retention {
                self.retain().await;
                next_retention = tokio::time::Instant::now() + retention_every;
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

    /// One erasure (see [`crate::erasure`]): the log, the warehouse files and the state, then
    /// the snapshot again, so no file of the data directory keeps the address. Between
    /// batches, so nothing folds or writes the warehouse meanwhile.
    async fn erase(&self, request: crate::erasure::Request) {
        use crate::erasure::{EraseError, ErasureReport};
        let crate::erasure::Request { erasure, reply } = request;
        let (log, writer, state) = (self.log.clone(), Arc::clone(&self.writer), Arc::clone(&self.state));
        // A snapshot held back (the outboxes refused something) stays held back; the next
        // one, written once they recover, is without the person.
        let snapshot_dir = self.config.state_dir.clone().filter(|_| !self.snapshots_held_back());
        let erased = tokio::task::spawn_blocking(move || -> Result<ErasureReport, EraseError> {
            let (in_log, warehouse) = crate::erasure::erase_files(&log, &writer, &erasure)?;
            let mut erased = state.write().expect("state lock poisoned").erase(&erasure);
            if let Some(dir) = snapshot_dir {
                state.read().expect("state lock poisoned").save(&dir)?;
                erased.snapshot = true;
            }
            Ok(ErasureReport {
                erased_as: erasure.replacement().to_owned(),
                log: in_log,
                warehouse,
                state: erased,
                clickhouse_rows: None,
            })
        })
        .await
        .unwrap_or(Err(EraseError::Stopped));
        if let Err(error) = &erased {
            tracing::error!(%error, "an erasure failed; what it rewrote stays rewritten, and erasing again finishes it");
        }
        // The asker may have given up (a timed-out request); the erasure stands.
        let _ = reply.send(erased);
    }

    /// Writes the derived state's snapshot; a failure is logged and retried next interval
    /// (the log still holds everything, so a missing snapshot only slows the next start).
    async fn snapshot(&self) {
        let Some(dir) = self.config.state_dir.clone() else { return };
        let (state, log) = (Arc::clone(&self.state), self.log.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<(), PipelineError> {
            let offset = {
                let state = state.read().expect("state lock poisoned");
                state.save(&dir)?;
                state.offset
            };
            // Retention never deletes past the latest durable snapshot.
            log.commit_offset(crate::retention::SNAPSHOT_CONSUMER, offset)?;
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::debug!("derived state snapshotted"),
            Ok(Err(error)) => tracing::warn!(%error, "snapshot failed; will retry"),
            Err(error) => tracing::error!(%error, "snapshot task failed"),
        }
    }

    /// Applies retention once (between batches, so it never races compaction).
    async fn retain(&self) {
        let Some(settings) = self.config.retention.clone() else { return };
        let (log, writer, snapshots) = (self.log.clone(), Arc::clone(&self.writer), self.config.state_dir.is_some());
        let outbox = self.outbox.clone();
        let pass = tokio::task::spawn_blocking(move || -> Result<_, crate::retention::RetentionError> {
            let now = chrono::Utc::now();
            if let Some(outbox) = &outbox {
                crate::retention::apply_to_decisions(outbox, &settings, now)?;
            }
            let keep_from = crate::retention::keep_from(&log, snapshots)?;
            crate::retention::apply(&log, &writer, &settings, now, keep_from)
        })
        .await;
        match pass {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "retention failed; will retry"),
            Err(error) => tracing::error!(%error, "retention task failed"),
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
        for notice in &notices {
            crate::alert_push::log_notice(notice);
        }
        self.record_notices(notices).await?;
        if let Some(outbox) = &self.outbox {
            outbox.announce(announced);
        }
        self.record_decisions(decisions).await?;
        crate::metrics::processor_metrics().batch_seconds.observe(started.elapsed().as_secs_f64());
        tracing::debug!(from = offset, to = end, "batch committed to the warehouse and folded");
        Ok(end)
    }
}

/// The next erasure asked for; never, without an eraser.
async fn next_erasure(erasures: &mut Option<crate::erasure::ErasureRequests>) -> Option<crate::erasure::Request> {
    match erasures {
        Some(requests) => requests.0.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use vigil_log::AppendBatch;
    use vigil_schemas::{EventKind, SourceKind};

    use super::*;

    fn event(id: &str, kind: EventKind, minute: i64) -> DeliveryEvent {
        let at = chrono::DateTime::from_timestamp(1_767_225_600 + minute * 60, 0).unwrap();
        let mut e = DeliveryEvent::new(id.into(), SourceKind::Kumomta, kind, at, at);
        e.egress_source = Some("ip-1".into());
        e.provider = Some("yahoo".into());
        e.recipient = Some(format!("{id}@yahoo.com"));
        e
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_the_alert_outbox_refused_are_recorded_with_the_next_batch_and_hold_back_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("log")).unwrap();
        let writer = ParquetWriter::open(&dir.path().join("warehouse")).unwrap();
        let outbox = AlertOutbox::open(&dir.path().join("state")).unwrap();
        let rules = crate::alerting::compile_rules(
            "test",
            Some("[[alert]]\nname = \"bounced\"\nmetric = \"bounced\"\nwindow = \"1m\"\nthreshold = 1\n"),
        )
        .unwrap();
        let pipeline = Pipeline::new(log.clone(), writer, Enricher::bundled(), PipelineConfig::default())
            .with_rules(FoldRules::bundled().with_alerts(rules), None)
            .with_alert_outbox(outbox.clone());
        // A bounce in minute 0; the first event of minute 1 has the rule judge minute 0.
        let batch = |events| AppendBatch { events, ..AppendBatch::default() };
        log.append(&batch(vec![event("a", EventKind::Bounced, 0), event("b", EventKind::Delivered, 1)])).unwrap();

        outbox.refuse_writes(true);
        let offset = pipeline.step(0).await.unwrap();
        assert_eq!(offset, 2);
        assert!(outbox.read(0, 10).unwrap().is_empty(), "the disk refused the firing");
        assert!(pipeline.waiting() && pipeline.snapshots_held_back(), "it waits, and holds back snapshots");

        outbox.refuse_writes(false);
        log.append(&batch(vec![event("c", EventKind::Delivered, 1)])).unwrap();
        pipeline.step(offset).await.unwrap();
        let recorded = outbox.read(0, 10).unwrap();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].1.alert.rule, "bounced");
        assert!(recorded[0].1.id.ends_with(":firing"), "{}", recorded[0].1.id);
        assert!(!pipeline.snapshots_held_back());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_the_outbox_refused_are_recorded_with_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("log")).unwrap();
        let writer = ParquetWriter::open(&dir.path().join("warehouse")).unwrap();
        let outbox = Outbox::open(&dir.path().join("state")).unwrap();
        let pipeline = Pipeline::new(log.clone(), writer, Enricher::bundled(), PipelineConfig::default())
            .with_rules(FoldRules::bundled(), Some(outbox.clone()));
        // Yahoo's TSS04: KumoMTA's shipped rules suspend the source.
        let mut deferral = event("a", EventKind::Deferred, 0);
        deferral.recipient_domain = Some("yahoo.com".into());
        deferral.smtp_code = Some(421);
        deferral.enhanced_status = Some("4.7.0".into());
        deferral.response_text = Some("[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes".into());
        let batch = |events| AppendBatch { events, ..AppendBatch::default() };
        log.append(&batch(vec![deferral])).unwrap();

        outbox.refuse_writes(true);
        let offset = pipeline.step(0).await.unwrap();
        assert!(outbox.newest(10, |_| true).unwrap().is_empty(), "the disk refused the decisions");
        assert!(pipeline.waiting() && pipeline.snapshots_held_back());

        outbox.refuse_writes(false);
        log.append(&batch(vec![event("b", EventKind::Delivered, 0)])).unwrap();
        pipeline.step(offset).await.unwrap();
        let recorded = outbox.newest(10, |_| true).unwrap();
        assert!(!recorded.is_empty(), "recorded with the next batch");
        assert!(recorded.iter().all(|d| d.target.egress_source.as_deref() == Some("ip-1")), "{recorded:#?}");
        assert!(!pipeline.snapshots_held_back());
    }
}
