//! The processor on Kafka (`vigil process`): two stages, each an async edge around the same
//! pure core as the embedded pipeline.
//!
//! 1. **Enrich** (in a consumer group, so instances share the partitions of `vigil.events`):
//!    decode, classify and map each event, produce it to `vigil.enriched` on the *same
//!    partition number* with the same key, and commit the input offsets only after the broker
//!    acknowledged every enriched record up to them (idempotent producer, `acks=all`). A crash
//!    or a rebalance re-sends what was not committed; the copies are told apart below.
//! 2. **Fold** (every instance, all partitions of `vigil.enriched`): apply each event to the
//!    [`DerivedState`] that answers the API. It drops copies twice over: by input position
//!    (each enriched record names the `vigil.events` partition and offset it came from, and a
//!    partition's records arrive in order, so one already passed is a re-send) and by
//!    `event_id` among the last million events (ingest re-sends after its own crash). Its
//!    position in `vigil.enriched`, the dedupe state and the derived state are snapshotted
//!    together, so a restart resumes exactly where the snapshot was taken.
//!
//! The derived state does not depend on the order events are folded in (see
//! [`crate::reputation::store`] and [`crate::suppression`]), so however partitions interleave,
//! one instance or several give the same answers (tested against a real broker with one of two
//! instances killed).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use vigil_log::backoff::Backoff;
use vigil_log::kafka::{KafkaConfig, LoggingContext, ensure_topics, producer_config};
use vigil_schemas::DeliveryEvent;

use crate::actuation::Decision;
use crate::actuation::push::Outbox;
use crate::complaints::{ComplaintJoin, JoinSettings};
use crate::enrich::Enricher;
use crate::pipeline::SharedState;
use crate::pipeline::{MAX_UNRECORDED_DECISIONS, RETRY_UNRECORDED, record_or_keep};
use crate::state::{DerivedState, FoldRules, SnapshotError, load_snapshot, save_snapshot};

/// The header naming the `vigil.events` position an enriched record came from: `p:o`.
pub const INPUT_HEADER: &str = "vigil-input";
/// Event ids remembered for dedupe. Ingest re-sends at most what was sent since its last
/// stored position: the forwarder's window (50 000) or, for a file tail, the direct window
/// (20 000) plus what was acknowledged since the last checkpoint commit (about 200 ms).
const RECENT_IDS: usize = 1_000_000;
/// Enriched records awaited (and input offsets committed) per batch at most.
const ENRICH_BATCH: usize = 5_000;
/// A batch is closed after this long even if not full.
const ENRICH_LINGER: Duration = Duration::from_millis(100);

/// The processor role's counters (`GET /metrics` of `vigil process`).
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Records of `vigil.events` enriched and acknowledged in `vigil.enriched`.
    pub enriched: Counter,
    /// Records of `vigil.events` that did not decode (logged, skipped).
    pub undecodable: Counter,
    /// Events folded into the derived state.
    pub folded: Counter,
    /// Copies dropped because their input position was already folded.
    pub copies_by_position: Counter,
    /// Copies dropped because their event id was among the recent ones.
    pub copies_by_event_id: Counter,
}

static METRICS: LazyLock<StreamMetrics> = LazyLock::new(StreamMetrics::default);

/// This process's stream counters.
#[must_use]
pub fn stream_metrics() -> &'static StreamMetrics {
    &METRICS
}

/// Registers the stream counters in `registry`.
pub fn register_metrics(registry: &mut Registry) {
    let m = stream_metrics();
    registry.register(
        "vigil_processor_enriched_events",
        "Events enriched and acknowledged in vigil.enriched",
        m.enriched.clone(),
    );
    registry.register(
        "vigil_processor_undecodable_records",
        "Records of vigil.events that did not decode",
        m.undecodable.clone(),
    );
    registry.register("vigil_processor_folded_events", "Events folded into the derived state", m.folded.clone());
    registry.register(
        "vigil_processor_copies_by_position_events",
        "Copies dropped: their vigil.events position was already folded",
        m.copies_by_position.clone(),
    );
    registry.register(
        "vigil_processor_copies_by_event_id_events",
        "Copies dropped: their event id was among the last million folded",
        m.copies_by_event_id.clone(),
    );
}

/// The processor's view of the `[kafka]` section: the one shape every role shares.
pub type StreamConfig = KafkaConfig;

/// The producer settings of every Vigil producer (idempotent, acks=all), named for this role.
#[must_use]
pub fn producer(config: &KafkaConfig) -> ClientConfig {
    let mut client = producer_config(config);
    client.set("client.id", "vigil-process");
    client
}

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("Kafka client configuration: {0}")]
    Config(#[from] KafkaError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Creates the topics if missing.
///
/// # Errors
/// When the client configuration is invalid.
pub async fn ensure_stream_topics(config: &StreamConfig, shutdown: &CancellationToken) -> Result<(), StreamError> {
    let topics = [config.events_topic.as_str(), config.enriched_topic.as_str(), config.decisions_topic.as_str()];
    ensure_topics(&config.client(), &topics, config.partitions, config.replication_factor, shutdown).await?;
    Ok(())
}

/// Stage 1: `vigil.events` -> enrich -> `vigil.enriched`, until `shutdown`. Delivery
/// failures restart the stage from the committed offsets.
///
/// Complaints are attributed here ([`crate::complaints`]) against the deliveries this
/// instance has enriched since it started: the join is in memory, not in a snapshot, and an
/// instance sees only the partitions assigned to it (ARCHITECTURE.md, known limits).
///
/// # Errors
/// When the clients cannot be configured.
pub async fn run_enrich(
    config: StreamConfig,
    enricher: Enricher,
    join: JoinSettings,
    shutdown: CancellationToken,
) -> Result<(), StreamError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut complaints = ComplaintJoin::new(join);
    while !shutdown.is_cancelled() {
        match enrich_until_failure(&config, &enricher, &mut complaints, &shutdown).await? {
            None => return Ok(()),
            Some(error) => {
                tracing::warn!(%error, "enriched records not acknowledged; resuming from the committed offsets");
                backoff.wait(&shutdown).await;
            }
        }
    }
    Ok(())
}

/// One consumer and producer; returns the delivery error that ended it, or `None` on shutdown.
async fn enrich_until_failure(
    config: &StreamConfig,
    enricher: &Enricher,
    complaints: &mut ComplaintJoin,
    shutdown: &CancellationToken,
) -> Result<Option<KafkaError>, StreamError> {
    let consumer: StreamConsumer<LoggingContext> =
        config.consumer(&config.group_id).create_with_context(LoggingContext)?;
    consumer.subscribe(&[&config.events_topic])?;
    let producer: FutureProducer<LoggingContext> = producer(config).create_with_context(LoggingContext)?;
    let mut stream = consumer.stream();
    loop {
        // One batch: produce until it is full or has lingered, then await its
        // acknowledgements and commit the input positions it covers.
        let mut pending = Vec::new();
        let mut positions = TopicPartitionList::new();
        let deadline = tokio::time::sleep(ENRICH_LINGER);
        tokio::pin!(deadline);
        while pending.len() < ENRICH_BATCH {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = &mut deadline, if !pending.is_empty() => break,
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        match enrich_one(config, enricher, complaints, &producer, &message) {
                            Ok(Some(delivery)) => pending.push(delivery),
                            Ok(None) => {}
                            // Nothing of this batch is committed: it is enriched again.
                            Err(error) => return Ok(Some(error)),
                        }
                        positions
                            .add_partition_offset(message.topic(), message.partition(), Offset::Offset(message.offset() + 1))
                            .map_err(StreamError::Config)?;
                    }
                    Some(Err(error)) => tracing::warn!(%error, "consuming vigil.events"),
                    None => return Ok(None),
                },
            }
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {
                    stream_metrics().enriched.inc();
                }
                Ok(Err((error, _))) => return Ok(Some(error)),
                Err(_) => return Ok(Some(KafkaError::Canceled)),
            }
        }
        if positions.count() > 0 {
            // Async: a lost commit only means the batch is enriched again and dropped as a copy.
            if let Err(error) = consumer.commit(&positions, CommitMode::Async) {
                tracing::warn!(%error, "committing vigil.events offsets");
            }
        }
    }
}

/// Enriches one input record and hands it to the producer; `None` when it cannot be decoded
/// (logged: ingest only ships events it wrote itself, so this is a bug or a foreign writer).
///
/// # Errors
/// When the producer refuses the record.
fn enrich_one<'a>(
    config: &'a StreamConfig,
    enricher: &Enricher,
    complaints: &mut ComplaintJoin,
    producer: &FutureProducer<LoggingContext>,
    message: &BorrowedMessage<'a>,
) -> Result<Option<rdkafka::producer::DeliveryFuture>, KafkaError> {
    let payload = message.payload().unwrap_or_default();
    let mut event: DeliveryEvent = match vigil_schemas::event::raw_record::without_raw(|| {
        serde_json::from_slice(payload)
    }) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(%error, partition = message.partition(), offset = message.offset(), "undecodable record in vigil.events; skipped");
            return Ok(None);
        }
    };
    enricher.enrich(&mut event);
    let attributed = complaints.observe_all([&mut event]);
    crate::metrics::complaints_attributed(attributed);
    let body = serde_json::to_vec(&event).expect("DeliveryEvent always serialises");
    let input = format!("{}:{}", message.partition(), message.offset());
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header { key: "vigil-event-id", value: Some(event.event_id.as_str()) })
        .insert(Header { key: INPUT_HEADER, value: Some(input.as_str()) });
    let mut record =
        FutureRecord::to(&config.enriched_topic).partition(message.partition()).payload(&body).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    // librdkafka's queue (200 000 records) is far larger than a batch, so a refusal here is
    // a real failure, handled as one by the caller.
    producer.send_result(record).map(Some).map_err(|(error, _)| error)
}

/// Event ids seen lately, bounded: a ring of hashes and a set of the same.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RecentIds {
    order: VecDeque<u64>,
    #[serde(skip)]
    set: HashSet<u64>,
}

impl RecentIds {
    /// A stable hash (snapshots outlive processes and releases).
    fn hash(id: &str) -> u64 {
        let digest = blake3::hash(id.as_bytes());
        u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// True the first time an id is seen (within the last [`RECENT_IDS`]).
    fn insert(&mut self, id: &str) -> bool {
        let hash = Self::hash(id);
        if !self.set.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    fn after_load(&mut self) {
        self.set = self.order.iter().copied().collect();
    }
}

/// What the fold stage snapshots besides the derived state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FoldPosition {
    /// Next offset to read per `vigil.enriched` partition.
    enriched_next: BTreeMap<i32, i64>,
    /// Highest `vigil.events` offset applied per input partition.
    input_seen: BTreeMap<i32, i64>,
    recent: RecentIds,
}

#[derive(Serialize)]
struct FoldSnapshotRef<'a> {
    state: &'a DerivedState,
    position: &'a FoldPosition,
}

#[derive(Deserialize)]
struct FoldSnapshot {
    state: DerivedState,
    position: FoldPosition,
}

/// Stage 2: all of `vigil.enriched` -> the derived state.
#[derive(Debug)]
pub struct Folder {
    config: StreamConfig,
    state: SharedState,
    state_dir: PathBuf,
    snapshot_interval: Duration,
    position: FoldPosition,
    fold: FoldRules,
    /// Where this instance records its decisions. Every fold instance decides the same
    /// (each folds everything); configure pushers on one of them.
    outbox: Option<Outbox>,
    /// Decisions the outbox refused (a full disk), recorded again, in order, before the next
    /// ones; while any wait, or once some were dropped to bound memory, no snapshot is
    /// written, so a crash refolds from an older one and decides them again.
    unrecorded: Vec<Decision>,
    unrecorded_dropped: bool,
    /// Not before then is a refusing outbox tried again (new decisions queue meanwhile).
    retry_unrecorded_at: Option<std::time::Instant>,
}

impl Folder {
    /// Loads the snapshot in `state_dir` into `state`, if there is one.
    #[must_use]
    pub fn new(config: StreamConfig, state: SharedState, state_dir: PathBuf, snapshot_interval: Duration) -> Self {
        let mut position = FoldPosition::default();
        if let Some(snapshot) = load_snapshot::<FoldSnapshot>(&state_dir) {
            let mut derived = snapshot.state;
            derived.after_load();
            position = snapshot.position;
            position.recent.after_load();
            tracing::info!(events = derived.offset, "derived state loaded from the snapshot");
            *state.write().expect("state lock poisoned") = derived;
        }
        Self {
            config,
            state,
            state_dir,
            snapshot_interval,
            position,
            fold: FoldRules::bundled(),
            outbox: None,
            unrecorded: Vec::new(),
            unrecorded_dropped: false,
            retry_unrecorded_at: None,
        }
    }

    /// Folds with `fold` instead of the bundled rules, and records decisions in `outbox`.
    #[must_use]
    pub fn with_rules(mut self, fold: FoldRules, outbox: Option<Outbox>) -> Self {
        self.fold = fold;
        self.outbox = outbox;
        self
    }

    /// Folds until `shutdown`, then snapshots.
    ///
    /// # Errors
    /// When the consumer cannot be configured or a snapshot cannot be written at shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StreamError> {
        // Its own group id, never committed: positions live in the snapshot.
        let group = format!("{}-fold-{}", self.config.group_id, std::process::id());
        let consumer: StreamConsumer<LoggingContext> =
            self.config.consumer(&group).create_with_context(LoggingContext)?;
        let Some(partitions) = self.partitions(&consumer, &shutdown).await else { return Ok(()) };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            let offset = self.position.enriched_next.get(&partition).map_or(Offset::Beginning, |&o| Offset::Offset(o));
            assignment.add_partition_offset(&self.config.enriched_topic, partition, offset)?;
        }
        consumer.assign(&assignment)?;
        let mut snapshot_tick = tokio::time::interval(self.snapshot_interval);
        snapshot_tick.tick().await;
        let mut changed = false;
        let mut stream = consumer.stream();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = snapshot_tick.tick() => {
                    // Also while idle, so that refused decisions are tried again.
                    if changed || !self.unrecorded.is_empty() {
                        changed = !self.snapshot().await?;
                    }
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        self.apply(&message);
                        changed = true;
                    }
                    Some(Err(error)) => tracing::warn!(%error, "consuming vigil.enriched"),
                    None => break,
                },
            }
        }
        if changed || !self.unrecorded.is_empty() {
            self.snapshot().await?;
        }
        let metrics = stream_metrics();
        tracing::info!(
            by_position = metrics.copies_by_position.get(),
            by_event_id = metrics.copies_by_event_id.get(),
            "fold stage stopped; copies dropped"
        );
        Ok(())
    }

    /// The partition count of `vigil.enriched`, waiting for the topic to exist.
    async fn partitions(&self, consumer: &StreamConsumer<LoggingContext>, shutdown: &CancellationToken) -> Option<i32> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let metadata =
                consumer.fetch_metadata(Some(&self.config.enriched_topic), Timeout::After(Duration::from_secs(5)));
            match metadata {
                Ok(metadata) => {
                    let count = metadata.topics().first().map_or(0, |t| t.partitions().len());
                    if count > 0 {
                        return i32::try_from(count).ok();
                    }
                    tracing::info!(topic = %self.config.enriched_topic, "waiting for the topic");
                }
                Err(error) => tracing::warn!(%error, "Kafka broker unreachable; retrying"),
            }
            backoff.wait(shutdown).await;
            if shutdown.is_cancelled() {
                return None;
            }
        }
    }

    fn apply(&mut self, message: &BorrowedMessage<'_>) {
        self.position.enriched_next.insert(message.partition(), message.offset() + 1);
        let input = message.headers().and_then(|headers| {
            headers.iter().find(|h| h.key == INPUT_HEADER).and_then(|h| h.value).and_then(parse_input)
        });
        if let Some((partition, offset)) = input {
            let seen = self.position.input_seen.entry(partition).or_insert(-1);
            if offset <= *seen {
                stream_metrics().copies_by_position.inc();
                return;
            }
            *seen = offset;
        }
        let event: DeliveryEvent = match serde_json::from_slice(message.payload().unwrap_or_default()) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, partition = message.partition(), offset = message.offset(), "undecodable record in vigil.enriched; skipped");
                return;
            }
        };
        if !self.position.recent.insert(&event.event_id) {
            stream_metrics().copies_by_event_id.inc();
            return;
        }
        stream_metrics().folded.inc();
        let mut decisions = Vec::new();
        let announced = {
            let mut state = self.state.write().expect("state lock poisoned");
            let next = state.offset;
            state.apply(next, &event, &self.fold, &mut decisions);
            if next.is_multiple_of(10_000) {
                state.reputation.evict();
                state.actuation.evict(&self.fold.rules);
            }
            // Alerts are not delivered from the Kafka fold yet (each instance folds every
            // partition, so each would notify); they are logged and queryable.
            let notices = state.alerting.take_notices();
            for notice in &notices {
                crate::alert_push::log_notice(notice);
            }
            if !notices.is_empty() || next.is_multiple_of(1_000) {
                crate::metrics::refresh_alerts(&state.alerting);
            }
            state.actuation.active.take_announced()
        };
        self.record_decisions(decisions);
        if let Some(outbox) = &self.outbox {
            outbox.announce(announced);
        }
    }

    /// Records the decisions waiting and `fresh`, in order; they wait for the next try when
    /// the outbox refuses ([`record_or_keep`]).
    fn record_decisions(&mut self, fresh: Vec<Decision>) {
        let Some(outbox) = &self.outbox else { return };
        let mut all = std::mem::take(&mut self.unrecorded);
        all.extend(fresh);
        if all.is_empty() {
            return;
        }
        if self.retry_unrecorded_at.is_some_and(|at| std::time::Instant::now() < at) {
            // The outbox refused moments ago: queue, without a write (and an error) per event.
            let excess = all.len().saturating_sub(MAX_UNRECORDED_DECISIONS);
            all.drain(..excess);
            self.unrecorded_dropped |= excess > 0;
            self.unrecorded = all;
            return;
        }
        let (waiting, dropped) = tokio::task::block_in_place(|| {
            record_or_keep(all, |d| outbox.record(d), MAX_UNRECORDED_DECISIONS, "decisions")
        });
        self.retry_unrecorded_at = (!waiting.is_empty()).then(|| std::time::Instant::now() + RETRY_UNRECORDED);
        self.unrecorded = waiting;
        self.unrecorded_dropped |= dropped;
    }

    /// Writes a snapshot; false when none could be written now (decisions wait to be
    /// recorded, or writing failed), so the caller tries again later.
    async fn snapshot(&mut self) -> Result<bool, StreamError> {
        // What the outbox refused is tried again first; a snapshot past decisions not recorded
        // would mean no refold decides them again.
        self.record_decisions(Vec::new());
        if self.unrecorded_dropped || !self.unrecorded.is_empty() {
            tracing::warn!(waiting = self.unrecorded.len(), "decisions wait to be recorded; no snapshot meanwhile");
            return Ok(false);
        }
        // Encoding and fsync block; the runtime moves other tasks off this thread meanwhile.
        let result = tokio::task::block_in_place(|| {
            let state = self.state.read().expect("state lock poisoned");
            save_snapshot(&self.state_dir, &FoldSnapshotRef { state: &state, position: &self.position })
        });
        match result {
            Ok(()) => Ok(true),
            Err(error) => {
                // The broker still holds everything: a missing snapshot only slows a restart.
                tracing::warn!(%error, "snapshot failed; will retry");
                Ok(false)
            }
        }
    }
}

/// `p:o` -> (p, o).
fn parse_input(value: &[u8]) -> Option<(i32, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (partition, offset) = text.split_once(':')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk under the decision outbox: the decision waits (and is counted), no snapshot
    /// is written meanwhile, and the next try records it, once; then snapshots go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn decisions_the_outbox_refused_wait_and_hold_snapshots_back() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
        let state_dir = dir.path().join("state");
        let mut folder = Folder::new(
            StreamConfig::new("127.0.0.1:9"),
            crate::pipeline::SharedState::default(),
            state_dir.clone(),
            Duration::from_secs(60),
        )
        .with_rules(FoldRules::bundled(), Some(outbox.clone()));
        let decision =
            crate::actuation::push::test_suspension(crate::actuation::Status::Applied, chrono::TimeDelta::hours(1));

        outbox.refuse_writes(true);
        folder.record_decisions(vec![decision.clone()]);
        assert_eq!(folder.unrecorded.len(), 1, "kept to be recorded later");
        assert!(!folder.snapshot().await.unwrap(), "no snapshot while a decision waits");
        assert!(load_snapshot::<FoldSnapshot>(&state_dir).is_none());

        outbox.refuse_writes(false);
        folder.record_decisions(Vec::new());
        assert_eq!(folder.unrecorded.len(), 1, "not tried again at once after a refusal");
        folder.retry_unrecorded_at = Some(std::time::Instant::now());
        assert!(folder.snapshot().await.unwrap(), "recorded first, then the snapshot");
        assert!(folder.unrecorded.is_empty());
        let recorded = outbox.read(0, 10).unwrap();
        assert_eq!(recorded.iter().map(|(_, d)| &d.decision_id).collect::<Vec<_>>(), [&decision.decision_id]);
        assert!(load_snapshot::<FoldSnapshot>(&state_dir).is_some());
    }

    #[test]
    fn recent_ids_forget_the_oldest_beyond_the_bound() {
        let mut recent = RecentIds::default();
        assert!(recent.insert("a"));
        assert!(!recent.insert("a"));
        for i in 0..RECENT_IDS {
            recent.insert(&i.to_string());
        }
        assert_eq!(recent.order.len(), RECENT_IDS);
        assert!(recent.insert("a"), "forgotten after a million others");
    }

    #[test]
    fn input_positions_parse() {
        assert_eq!(parse_input(b"3:1042"), Some((3, 1042)));
        assert_eq!(parse_input(b"3"), None);
        assert_eq!(parse_input(b"x:1"), None);
    }
}
