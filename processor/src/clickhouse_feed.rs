//! Feeding ClickHouse: from the embedded log (`vigil run --clickhouse-url`,
//! [`feed_from_log`]) or from `vigil.enriched` (`vigil process` with `[clickhouse]`,
//! [`feed_from_kafka`]).
//!
//! The embedded sink follows the log on its own, beside the Parquet pipeline: ClickHouse's
//! `sink_batches` table is its position of record, so a restart (or a second `vigil run` on a
//! copy of the log) resumes exactly where the database says, counting nothing twice (see
//! [`ClickHouseWriter`]). It mirrors that position into the log as the consumer
//! [`CLICKHOUSE_CONSUMER`] only so retention never deletes what ClickHouse has not stored. Events are enriched as the
//! pipeline enriches them, and inserted in batches of up to `max_rows`, or whatever has
//! arrived after `max_wait`; a failed insert is retried with a capped exponential backoff,
//! and nothing moves on until it succeeds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_log::EventLog;
use vigil_log::backoff::Backoff;
use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseWriter};

use crate::Enricher;

/// The log consumer mirroring what ClickHouse holds (retention's bound, never read back).
pub const CLICKHOUSE_CONSUMER: &str = "clickhouse";

/// Records in the log that ClickHouse holds everything before `stored_until`.
async fn mirror_position(log: &EventLog, stored_until: u64) {
    let log = log.clone();
    match tokio::task::spawn_blocking(move || log.commit_offset(CLICKHOUSE_CONSUMER, stored_until)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "ClickHouse sink could not record its position for retention"),
        Err(error) => tracing::warn!(%error, "ClickHouse sink position task failed"),
    }
}

/// How the sink batches its inserts.
#[derive(Debug, Clone, Copy)]
pub struct FeedBatching {
    /// Most events per insert. ClickHouse prefers few large inserts (10 k - 100 k rows).
    pub max_rows: usize,
    /// Longest wait for a batch to fill before inserting what there is.
    pub max_wait: Duration,
}

impl Default for FeedBatching {
    fn default() -> Self {
        Self { max_rows: 50_000, max_wait: Duration::from_secs(1) }
    }
}

/// Inserts the log into ClickHouse until `shutdown`. Never returns an error: ClickHouse being
/// away is waited out (and logged), since the log keeps everything meanwhile.
pub async fn feed_from_log(
    log: EventLog,
    enricher: Enricher,
    config: ClickHouseConfig,
    batching: FeedBatching,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut head = log.subscribe();
    // Until ClickHouse answers, retention keeps what the sink last recorded (or everything).
    let known = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.consumer_offsets()).await
    };
    if let Ok(Ok(offsets)) = known
        && !offsets.iter().any(|(name, _)| name == CLICKHOUSE_CONSUMER)
    {
        mirror_position(&log, 0).await;
    }
    'reopen: while !shutdown.is_cancelled() {
        let mut sink = match ClickHouseWriter::open(&config, 0).await {
            Ok(sink) => sink,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff.delay(), "ClickHouse sink cannot open; retrying");
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        tracing::info!(from = sink.stored_until(), url = %config.url, "ClickHouse sink following the log");
        mirror_position(&log, sink.stored_until()).await;
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
                    backoff.reset();
                    mirror_position(&log, sink.stored_until()).await;
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

/// How many recent event ids per partition the Kafka sink remembers to drop copies.
const RECENT_IDS: usize = 100_000;

/// Event ids seen lately in one partition, bounded: the copies `vigil.enriched` can hold (a
/// batch enriched again after a failure) sit a batch or so after their first copy.
#[derive(Debug, Default)]
struct RecentIds {
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

impl RecentIds {
    /// True when `id` was seen; else remembers it.
    fn seen(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return true;
        }
        if self.order.len() == RECENT_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        false
    }
}

/// One assigned partition of `vigil.enriched`: its sink, what waits to be inserted, and the
/// ids it has seen.
struct PartitionSink {
    sink: ClickHouseWriter,
    pending: Vec<(u64, vigil_schemas::DeliveryEvent)>,
    recent: RecentIds,
}

/// Tells the sink which partitions a rebalance took away, so it drops them before it inserts
/// again (see [`feed_from_kafka`]).
struct SinkContext {
    logs: vigil_log::kafka::LoggingContext,
    revoked: std::sync::Mutex<Vec<i32>>,
}

impl rdkafka::ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            revoked
                .extend(list.elements().iter().map(rdkafka::topic_partition_list::TopicPartitionListElem::partition));
        }
    }
}

/// `vigil process` with `[clickhouse]`: inserts `vigil.enriched` into ClickHouse in a consumer
/// group of its own (`<group_id>-clickhouse`), so instances share the partitions.
///
/// - Position of record: `sink_batches`, per partition (the log partition is the Kafka
///   partition). Offsets are also committed to the group after each insert, only so a restart
///   starts near where ClickHouse is; what is below `stored_until` is skipped whatever Kafka says.
/// - Copies: `vigil.enriched` may hold an event twice (a batch enriched again after a failure);
///   the last 100 000 event ids of each partition are remembered and copies dropped.
/// - Rebalances: librdkafka revokes partitions only while the consumer is polled, and the sink
///   does not poll while it inserts; it drops a revoked partition's sink and pending events
///   before inserting again, so a partition's new owner, which reads `stored_until` once the
///   rebalance completes, never races an insert of the old one. (An instance stalled past the
///   group's session timeout is the exception: it could insert once more.)
pub async fn feed_from_kafka(
    kafka: crate::stream::StreamConfig,
    config: ClickHouseConfig,
    batching: FeedBatching,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    use rdkafka::Message;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let group = format!("{}-clickhouse", kafka.group_id);
    while !shutdown.is_cancelled() {
        let context = SinkContext { logs: vigil_log::kafka::LoggingContext, revoked: std::sync::Mutex::default() };
        let consumer: StreamConsumer<SinkContext> = match kafka.consumer(&group).create_with_context(context) {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::error!(%error, "ClickHouse sink: Kafka consumer configuration refused");
                return;
            }
        };
        if let Err(error) = consumer.subscribe(&[&kafka.enriched_topic]) {
            tracing::warn!(%error, "ClickHouse sink cannot subscribe; retrying");
            backoff.wait(&shutdown).await;
            continue;
        }
        let mut partitions: std::collections::HashMap<i32, PartitionSink> = std::collections::HashMap::new();
        let mut stream = consumer.stream();
        let failed = 'consume: loop {
            let deadline = tokio::time::sleep(batching.max_wait);
            tokio::pin!(deadline);
            let mut waiting = 0;
            while waiting < batching.max_rows {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut deadline => break,
                    message = stream.next() => match message {
                        Some(Ok(message)) => {
                            let partition = message.partition();
                            let offset = u64::try_from(message.offset()).unwrap_or(0);
                            let payload = message.payload().unwrap_or_default();
                            let decoded = vigil_schemas::event::raw_record::without_raw(|| serde_json::from_slice(payload));
                            let event: vigil_schemas::DeliveryEvent = match decoded {
                                Ok(event) => event,
                                Err(error) => {
                                    tracing::error!(%error, partition, offset, "undecodable record in vigil.enriched; skipped");
                                    continue;
                                }
                            };
                            drop_revoked(consumer.context(), &mut partitions);
                            let target = match partitions.entry(partition) {
                                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                                std::collections::hash_map::Entry::Vacant(entry) => {
                                    match open_partition(&config, partition).await {
                                        Ok(opened) => entry.insert(opened),
                                        Err(error) => break 'consume error.to_string(),
                                    }
                                }
                            };
                            if offset < target.sink.stored_until() || target.recent.seen(&event.event_id) {
                                continue;
                            }
                            target.pending.push((offset, event));
                            waiting += 1;
                        }
                        Some(Err(error)) => tracing::warn!(%error, "ClickHouse sink consuming vigil.enriched"),
                        None => return,
                    },
                }
            }
            drop_revoked(consumer.context(), &mut partitions);
            let mut positions = rdkafka::TopicPartitionList::new();
            for (partition, target) in &mut partitions {
                if target.pending.is_empty() {
                    continue;
                }
                let batch: Vec<(u64, &vigil_schemas::DeliveryEvent)> =
                    target.pending.iter().map(|(o, e)| (*o, e)).collect();
                if let Err(error) = target.sink.write_batch(&batch).await {
                    break 'consume error.to_string();
                }
                let next = i64::try_from(target.sink.stored_until()).unwrap_or(i64::MAX);
                target.pending.clear();
                let _ =
                    positions.add_partition_offset(&kafka.enriched_topic, *partition, rdkafka::Offset::Offset(next));
            }
            if positions.count() > 0
                && let Err(error) = consumer.commit(&positions, CommitMode::Async)
            {
                tracing::warn!(%error, "ClickHouse sink committing offsets");
            }
            backoff.reset();
        };
        // Pending events are gone with the consumer: a new one reads from the committed
        // offsets, at or below what ClickHouse holds, and the sinks skip what is stored.
        tracing::warn!(error = %failed, retry_in = ?backoff.delay(), "ClickHouse sink failed; restarting from what ClickHouse holds");
        drop(stream);
        drop(consumer);
        backoff.wait(&shutdown).await;
    }
}

/// Opens a partition's sink, remembering the ids of what it last stored: copies of those (a
/// batch the previous owner's enrich stage had not committed, enriched again) come next.
async fn open_partition(
    config: &ClickHouseConfig,
    partition: i32,
) -> Result<PartitionSink, vigil_warehouse::clickhouse::ClickHouseError> {
    let sink = ClickHouseWriter::open(config, u32::try_from(partition).unwrap_or(0)).await?;
    let mut recent = RecentIds::default();
    for id in sink.recent_event_ids(RECENT_IDS as u64).await? {
        recent.seen(&id);
    }
    tracing::info!(partition, from = sink.stored_until(), "ClickHouse sink took the partition");
    Ok(PartitionSink { sink, pending: Vec::new(), recent })
}

fn drop_revoked(context: &SinkContext, partitions: &mut std::collections::HashMap<i32, PartitionSink>) {
    let revoked = std::mem::take(&mut *context.revoked.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for partition in revoked {
        if let Some(dropped) = partitions.remove(&partition) {
            tracing::info!(
                partition,
                pending = dropped.pending.len(),
                "partition revoked; its new owner resumes from ClickHouse"
            );
        }
    }
}
