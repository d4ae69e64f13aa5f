//! The async edge of the processor: log of record -> enrich -> warehouse, with the window store
//! updated after each committed batch.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use vigil_log::{EventLog, LogError};
use vigil_schemas::DeliveryEvent;
use vigil_warehouse::{ParquetWriter, WarehouseError};

use crate::enrich::Enricher;
use crate::windows::WindowStore;

/// The log consumer name under which the warehouse writer commits its offset.
pub const CONSUMER: &str = "warehouse";

/// Window counts shared with the API. Locked briefly: once per batch to write, per request to
/// read.
pub type SharedWindows = Arc<RwLock<WindowStore>>;

/// Why a step of the pipeline failed. The pipeline retries from the committed offset.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
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
    /// Wait before retrying after a failure.
    pub retry_backoff: Duration,
    /// How often small warehouse files are merged.
    pub compaction_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 50_000,
            linger: Duration::from_millis(250),
            retry_backoff: Duration::from_secs(1),
            compaction_interval: Duration::from_secs(10),
        }
    }
}

/// Moves events from the log to the warehouse. See the crate docs for the guarantee.
#[derive(Debug)]
pub struct Pipeline {
    log: EventLog,
    writer: Arc<ParquetWriter>,
    enricher: Enricher,
    windows: SharedWindows,
    config: PipelineConfig,
}

impl Pipeline {
    #[must_use]
    pub fn new(log: EventLog, writer: ParquetWriter, enricher: Enricher, config: PipelineConfig) -> Self {
        Self { log, writer: Arc::new(writer), enricher, windows: Arc::new(RwLock::new(WindowStore::new())), config }
    }

    /// The live window counts.
    #[must_use]
    pub fn windows(&self) -> SharedWindows {
        Arc::clone(&self.windows)
    }

    /// Makes the warehouse match the committed offset and rebuilds the window counts from the
    /// log. Blocking; call before [`Self::run`]. Returns the committed offset.
    ///
    /// # Errors
    /// When the log or the warehouse cannot be read.
    pub fn prepare(&self) -> Result<u64, PipelineError> {
        let committed = self.log.committed_offset(CONSUMER)?;
        let removed = self.writer.recover(committed)?;
        if removed > 0 {
            tracing::info!(removed, committed, "warehouse rolled back to the committed offset");
        }
        let now = Utc::now();
        let mut windows = WindowStore::new();
        let mut offset = 0;
        while offset < committed {
            let chunk = self.log.read(offset, 10_000.min((committed - offset) as usize))?;
            let Some((last, _)) = chunk.last() else { break };
            offset = last + 1;
            for (_, mut event) in chunk {
                self.enricher.enrich(&mut event);
                windows.record(&event, now);
            }
        }
        *self.windows.write().expect("window lock poisoned") = windows;
        Ok(committed)
    }

    /// Processes the log from `offset` until `shutdown` is cancelled.
    pub async fn run(self, mut offset: u64, shutdown: CancellationToken) {
        let mut head = self.log.subscribe();
        let mut next_compaction = tokio::time::Instant::now() + self.config.compaction_interval;
        loop {
            while self.log.head() <= offset {
                tokio::select! {
                    () = shutdown.cancelled() => return,
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
                Ok(next) => offset = next,
                Err(error) => {
                    tracing::error!(%error, offset, "processing failed; retrying from the committed offset");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.config.retry_backoff) => {}
                    }
                }
            }
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
        let log = self.log.clone();
        let max = self.config.max_batch_events;
        let mut events: Vec<(u64, DeliveryEvent)> =
            tokio::task::spawn_blocking(move || log.read(offset, max)).await??;
        let Some(end) = events.last().map(|(o, _)| o + 1) else { return Ok(offset) };
        for (_, event) in &mut events {
            self.enricher.enrich(event);
        }
        let (writer, log) = (Arc::clone(&self.writer), self.log.clone());
        let events = tokio::task::spawn_blocking(move || -> Result<_, PipelineError> {
            writer.write_batch(offset, end, &events)?;
            log.commit_offset(CONSUMER, end)?;
            Ok(events)
        })
        .await??;
        let now = Utc::now();
        let mut windows = self.windows.write().expect("window lock poisoned");
        for (_, event) in &events {
            windows.record(event, now);
        }
        windows.evict(now);
        tracing::debug!(from = offset, to = end, "batch committed to the warehouse");
        Ok(end)
    }
}
