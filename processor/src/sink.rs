//! Feeding the embedded log into ClickHouse (`vigil run --clickhouse-url`).
//!
//! The sink follows the log on its own, beside the Parquet pipeline: ClickHouse's
//! `sink_batches` table is its position of record, so it needs no offset of its own in the log
//! and a restart (or a second `vigil run` on a copy of the log) resumes exactly where the
//! database says, counting nothing twice (see [`ClickHouseSink`]). Events are enriched as the
//! pipeline enriches them, and inserted in batches of up to `max_rows`, or whatever has
//! arrived after `max_wait`; a failed insert is retried with a capped exponential backoff,
//! and nothing moves on until it succeeds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_ingest::backoff::Backoff;
use vigil_log::EventLog;
use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseSink};

use crate::Enricher;

/// How the sink batches its inserts.
#[derive(Debug, Clone, Copy)]
pub struct SinkBatching {
    /// Most events per insert. ClickHouse prefers few large inserts (10 k - 100 k rows).
    pub max_rows: usize,
    /// Longest wait for a batch to fill before inserting what there is.
    pub max_wait: Duration,
}

impl Default for SinkBatching {
    fn default() -> Self {
        Self { max_rows: 50_000, max_wait: Duration::from_secs(1) }
    }
}

/// Inserts the log into ClickHouse until `shutdown`. Never returns an error: ClickHouse being
/// away is waited out (and logged), since the log keeps everything meanwhile.
pub async fn run_clickhouse_sink(
    log: EventLog,
    enricher: Enricher,
    config: ClickHouseConfig,
    batching: SinkBatching,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut head = log.subscribe();
    'reopen: while !shutdown.is_cancelled() {
        let mut sink = match ClickHouseSink::open(&config, 0).await {
            Ok(sink) => sink,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff.delay(), "ClickHouse sink cannot open; retrying");
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        tracing::info!(from = sink.stored_until(), url = %config.url, "ClickHouse sink following the log");
        loop {
            let offset = sink.stored_until();
            // Wait for events, then for a full batch or `max_wait`, whichever comes first.
            while log.head() <= offset {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = head.changed() => if changed.is_err() { return },
                }
            }
            let deadline = tokio::time::Instant::now() + batching.max_wait;
            while log.head() - offset < batching.max_rows as u64 {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => break,
                    changed = head.changed() => if changed.is_err() { return },
                }
            }
            let reader = log.clone();
            let max = batching.max_rows;
            let events = match tokio::task::spawn_blocking(move || reader.read_without_raw(offset, max)).await {
                Ok(Ok(events)) => events,
                Ok(Err(error)) => {
                    tracing::error!(%error, offset, "ClickHouse sink cannot read the log; retrying");
                    backoff.wait(&shutdown).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "ClickHouse sink read task failed");
                    return;
                }
            };
            let mut events = events;
            for (_, event) in &mut events {
                enricher.enrich(event);
            }
            let batch: Vec<(u64, &vigil_schemas::DeliveryEvent)> = events.iter().map(|(o, e)| (*o, e)).collect();
            match sink.write_batch(&batch).await {
                Ok(written) => {
                    backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
                    tracing::debug!(inserted = written.inserted, skipped = written.skipped, "ClickHouse batch stored");
                }
                Err(error) => {
                    tracing::warn!(%error, offset, retry_in = ?backoff.delay(), "ClickHouse insert failed; retrying");
                    backoff.wait(&shutdown).await;
                    // Reopening reads what the database holds, so a half-done insert is
                    // completed rather than repeated.
                    continue 'reopen;
                }
            }
        }
    }
}
