//! Shipping to Kafka: the ingest role's forwarder from the on-disk buffer to `vigil.events`
//! and `vigil.deadletter`.
//!
//! Sources append to an [`EventLog`] opened as a bounded buffer ([`EventLog::with_limit`]),
//! with their checkpoints in the same transaction, exactly as in `vigil run`; so a source's
//! position only moves once its events are durable on this host, and the forwarder is the only
//! thing that talks to the broker. It sends every buffered event with an idempotent producer
//! (`acks=all`, no local timeout: librdkafka retries until the broker is back), commits its
//! offset in the buffer only for the prefix the broker acknowledged, then deletes that prefix.
//! While the broker is away the buffer fills up to its limit; then appends fail with
//! [`vigil_log::LogError::Full`], tails pause and the HTTP hook answers 503. Nothing is dropped.
//!
//! Exactly once downstream is by `event_id`: a crash between the broker's acknowledgement and
//! the offset commit re-sends at most the unacknowledged window, and those copies carry the
//! same `event_id` (the key and the `vigil-event-id` header), which consumers dedupe on.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryFuture, DeliveryResult, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use vigil_log::backoff::Backoff;
use vigil_log::kafka::{
    KafkaConfig, LoggingContext, event_headers, event_key, log_client_error, log_librdkafka, producer_config,
};
use vigil_log::{EventLog, LogError};

/// The consumer name under which the forwarder's position is kept in the buffer.
pub const BUFFER_CONSUMER: &str = "kafka";
/// The buffer's cursor for dead letters.
pub const BUFFER_DEAD_LETTER_CURSOR: &str = "kafka:dead-letters";

/// Events sent and not yet acknowledged, at most; bounds the producer's memory.
const MAX_IN_FLIGHT: usize = 50_000;
/// Events read from the buffer per read.
const READ_BATCH: usize = 2_000;
/// Acknowledged events that trigger a commit before the next tick.
const COMMIT_EVERY_EVENTS: u64 = 20_000;
/// How often acknowledged progress is committed (and the buffer trimmed) at the latest.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Why the forwarder could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("Kafka client configuration: {0}")]
    Config(#[source] KafkaError),
    #[error("buffer: {0}")]
    Buffer(#[from] LogError),
}

/// The fields of a stored event the forwarder needs, read without decoding the rest.
#[derive(Deserialize)]
struct Routing<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    source: &'a str,
    #[serde(borrow, default)]
    egress_source: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    recipient_domain: Option<std::borrow::Cow<'a, str>>,
}

/// Ships the buffer to Kafka until cancelled.
#[derive(Debug)]
pub struct Forwarder {
    log: EventLog,
    config: KafkaConfig,
    /// The `vigil-schema-version` header's value.
    schema_version: String,
    /// Becomes `true` once the topics exist; the ingest role's direct path creates them
    /// ([`crate::direct::DirectShipper::topics_ready`]), so the broker is asked once at start.
    topics_ready: tokio::sync::watch::Receiver<bool>,
}

impl Forwarder {
    #[must_use]
    pub fn new(log: EventLog, config: KafkaConfig, topics_ready: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { log, config, schema_version: vigil_schemas::SCHEMA_VERSION.to_string(), topics_ready }
    }

    /// Runs until `shutdown`; returns on a configuration error or a broken buffer.
    ///
    /// # Errors
    /// When the producer cannot be configured or the buffer fails; broker trouble is never an
    /// error here (it is retried).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ForwardError> {
        let mut topics_ready = self.topics_ready.clone();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = topics_ready.wait_for(|ready| *ready) => {}
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        while !shutdown.is_cancelled() {
            let dead_letters: FutureProducer<LoggingContext> =
                producer_config(&self.config).create_with_context(LoggingContext).map_err(ForwardError::Config)?;
            match self.ship(&dead_letters, &shutdown).await? {
                Shipped::Stopped => break,
                Shipped::Failed(error) => {
                    // A delivery failed for good (a fatal idempotence error, a rejected
                    // record): start again from the committed offset with a new producer.
                    crate::metrics::ingest_metrics().ship_resends.inc();
                    let delay = backoff.delay();
                    tracing::warn!(%error, ?delay, "Kafka delivery failed; re-sending from the last acknowledged event");
                    backoff.wait(&shutdown).await;
                }
            }
        }
        Ok(())
    }

    /// Sends from the committed offset on, committing acknowledged prefixes, until shutdown
    /// or a failed delivery. Acknowledgements arrive on librdkafka's thread and are recorded
    /// in an [`AckWindow`], with no task per message.
    async fn ship(
        &self,
        dead_letters: &FutureProducer<LoggingContext>,
        shutdown: &CancellationToken,
    ) -> Result<Shipped, ForwardError> {
        let mut committed = self.blocking(|log| log.committed_offset(BUFFER_CONSUMER)).await?;
        let acks = Arc::new(Acks::new(committed));
        let producer: ThreadedProducer<ShipContext> = producer_config(&self.config)
            .create_with_context(ShipContext { acks: Arc::clone(&acks) })
            .map_err(ForwardError::Config)?;
        let mut head = self.log.subscribe();
        let mut next = committed;
        let mut commit_tick = tokio::time::interval(COMMIT_EVERY);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = 'ship: loop {
            let acknowledged = match acks.acknowledged() {
                Ok(acknowledged) => acknowledged,
                Err(error) => break Shipped::Failed(error),
            };
            if acknowledged - committed >= COMMIT_EVERY_EVENTS {
                committed = self.commit(committed, acknowledged).await?;
            }
            let in_flight = usize::try_from(next - acknowledged).unwrap_or(usize::MAX);
            // Fill the window from the buffer.
            if in_flight < MAX_IN_FLIGHT && next < *head.borrow_and_update() {
                let want = READ_BATCH.min(MAX_IN_FLIGHT - in_flight);
                let records = self.blocking(move |log| log.read_raw(next, want)).await?;
                for (offset, bytes) in records {
                    let routing: Routing<'_> =
                        serde_json::from_slice(&bytes).map_err(|source| LogError::Corrupt { offset, source })?;
                    let headers = event_headers(&self.schema_version, routing.source, &routing.event_id);
                    let key = event_key(routing.egress_source.as_deref(), routing.recipient_domain.as_deref());
                    let mut record = BaseRecord::with_opaque_to(&self.config.events_topic, offset_opaque(offset))
                        .key(key)
                        .payload(&bytes[..])
                        .headers(headers);
                    let sent = acks.send_next();
                    debug_assert_eq!(sent, offset, "the buffer is sent in order from the committed offset");
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            // librdkafka's own queue is full: wait for acknowledgements.
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                record = back;
                                let _ = tokio::time::timeout(Duration::from_millis(10), acks.changed.notified()).await;
                            }
                            Err((error, _)) => break 'ship Shipped::Failed(error.to_string()),
                        }
                    }
                    next = offset + 1;
                }
                continue;
            }
            let room = in_flight < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Shipped::Stopped,
                // Before the acknowledgements, which under load are always ready: the tick
                // must not starve (dead letters and lag metrics ride on it).
                _ = commit_tick.tick() => {
                    committed = self.commit(committed, acks.prefix()).await?;
                    self.observe_lag(committed).await?;
                    if let Err(error) = self.ship_dead_letters(dead_letters).await? {
                        break Shipped::Failed(error);
                    }
                }
                () = acks.changed.notified(), if in_flight > 0 => {}
                changed = head.changed(), if room => {
                    if changed.is_err() {
                        break Shipped::Stopped;
                    }
                }
            }
        };
        // What the broker acknowledged is kept, whatever ended the loop; the rest is re-sent
        // by the next attempt or the next start.
        self.commit(committed, acks.prefix()).await?;
        Ok(outcome)
    }

    /// Commits the acknowledged prefix and trims the buffer; returns the new committed offset.
    async fn commit(&self, committed: u64, acknowledged: u64) -> Result<u64, ForwardError> {
        if acknowledged <= committed {
            return Ok(committed);
        }
        self.blocking(move |log| {
            log.commit_offset(BUFFER_CONSUMER, acknowledged)?;
            let dead_letters = log.committed_offset(BUFFER_DEAD_LETTER_CURSOR)?;
            log.truncate_before(acknowledged, dead_letters)
        })
        .await?;
        crate::metrics::ingest_metrics().shipped_events.inc_by(acknowledged - committed);
        Ok(acknowledged)
    }

    /// Buffer depth and the age of the oldest unacknowledged event, for `/metrics`.
    async fn observe_lag(&self, acknowledged: u64) -> Result<(), ForwardError> {
        #[derive(Deserialize)]
        struct Ingested {
            ingested_at: chrono::DateTime<chrono::Utc>,
        }
        let metrics = crate::metrics::ingest_metrics();
        let depth = self.log.head().saturating_sub(acknowledged);
        metrics.buffer_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        let oldest = self.blocking(move |log| log.read_raw(acknowledged, 1)).await?;
        let age = oldest
            .first()
            .and_then(|(_, bytes)| serde_json::from_slice::<Ingested>(bytes).ok())
            .map_or(0, |e| (chrono::Utc::now() - e.ingested_at).num_seconds().max(0));
        metrics.oldest_unacknowledged_seconds.set(age);
        Ok(())
    }

    /// Ships the dead letters stored since the last call to the dead-letter topic, keyed by
    /// source; they are rare, so this waits for each batch's acknowledgement.
    async fn ship_dead_letters(
        &self,
        producer: &FutureProducer<LoggingContext>,
    ) -> Result<Result<(), String>, ForwardError> {
        let from = self.blocking(|log| log.committed_offset(BUFFER_DEAD_LETTER_CURSOR)).await?;
        let letters = self.blocking(move |log| log.dead_letters(from, READ_BATCH)).await?;
        let Some(&(last, _)) = letters.last() else { return Ok(Ok(())) };
        let mut deliveries = Vec::with_capacity(letters.len());
        for (_, letter) in &letters {
            let payload = serde_json::to_vec(letter).expect("DeadLetter always serialises");
            let headers = OwnedHeaders::new()
                .insert(Header { key: "vigil-schema-version", value: Some(self.schema_version.as_str()) })
                .insert(Header { key: "vigil-source", value: Some(letter.source.as_str()) });
            let record =
                FutureRecord::to(&self.config.dead_letter_topic).key(&letter.source).payload(&payload).headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => return Ok(Err(error.to_string())),
            }
        }
        for delivery in deliveries {
            if let Err(error) = settle(delivery).await {
                return Ok(Err(error));
            }
        }
        self.blocking(move |log| {
            log.commit_offset(BUFFER_DEAD_LETTER_CURSOR, last + 1)?;
            // Trim them now: with no events flowing, the event commit would never do it.
            log.truncate_before(log.committed_offset(BUFFER_CONSUMER)?, last + 1)
        })
        .await?;
        crate::metrics::ingest_metrics().shipped_dead_letters.inc_by(letters.len() as u64);
        Ok(Ok(()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&EventLog) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, ForwardError> {
        let log = self.log.clone();
        Ok(tokio::task::spawn_blocking(move || work(&log)).await.expect("buffer task does not panic")?)
    }
}

/// Acknowledgements between wake-ups of whoever waits on [`Acks`].
const WAKE_EVERY: u64 = 1024;

/// Which sent offsets the broker acknowledged, as a window from the first unacknowledged one;
/// written by librdkafka's delivery callbacks, read by the forwarder and the direct path.
#[derive(Debug)]
pub(crate) struct Acks {
    window: Mutex<AckWindow>,
    /// Woken on every acknowledgement batch (and failure), for async waiters.
    pub(crate) changed: tokio::sync::Notify,
    /// The same, for the tails' blocking threads waiting for room in the window.
    room: Condvar,
}

#[derive(Debug)]
struct AckWindow {
    /// The first offset not yet acknowledged; everything before it is.
    base: u64,
    /// `done[i]`: offset `base + i` was acknowledged.
    done: VecDeque<bool>,
    failed: Option<String>,
    /// When the acknowledged prefix last moved, or the window last went from empty to not.
    progress_at: Instant,
}

impl Acks {
    pub(crate) fn new(base: u64) -> Self {
        Self {
            window: Mutex::new(AckWindow { base, done: VecDeque::new(), failed: None, progress_at: Instant::now() }),
            changed: tokio::sync::Notify::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckWindow> {
        self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the next offset and records it as being sent (offsets are sent in order).
    pub(crate) fn send_next(&self) -> u64 {
        let mut window = self.lock();
        if window.done.is_empty() {
            window.progress_at = Instant::now();
        }
        window.done.push_back(false);
        window.base + window.done.len() as u64 - 1
    }

    pub(crate) fn delivered(&self, offset: u64, outcome: Result<(), String>) {
        let mut window = self.lock();
        let wake = match outcome {
            Ok(()) => {
                if let Some(index) = offset.checked_sub(window.base).and_then(|i| usize::try_from(i).ok())
                    && let Some(slot) = window.done.get_mut(index)
                {
                    *slot = true;
                }
                let before = window.base;
                while window.done.front() == Some(&true) {
                    window.done.pop_front();
                    window.base += 1;
                }
                if window.base != before {
                    window.progress_at = Instant::now();
                }
                // Waking the waiters on every acknowledgement costs a context switch each;
                // they want progress in bulk, or the moment everything is acknowledged.
                window.done.is_empty() || window.base / WAKE_EVERY != before / WAKE_EVERY
            }
            Err(error) => {
                window.failed.get_or_insert(error);
                true
            }
        };
        drop(window);
        if wake {
            self.changed.notify_one();
            self.room.notify_all();
        }
    }

    /// The acknowledged prefix (the next offset to commit), or the failure that stops it.
    pub(crate) fn acknowledged(&self) -> Result<u64, String> {
        let window = self.lock();
        window.failed.clone().map_or(Ok(window.base), Err)
    }

    /// The acknowledged prefix, failure or not.
    pub(crate) fn prefix(&self) -> u64 {
        self.lock().base
    }

    /// The offset the next send will take: everything before it was sent.
    pub(crate) fn end(&self) -> u64 {
        let window = self.lock();
        window.base + window.done.len() as u64
    }

    /// Sent and not yet acknowledged (in order).
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().done.len()
    }

    /// Events are in flight and the broker has acknowledged none of them for `after`.
    pub(crate) fn stalled(&self, after: Duration) -> bool {
        let window = self.lock();
        !window.done.is_empty() && window.progress_at.elapsed() >= after
    }

    /// Blocks until fewer than `max` are in flight, a delivery failed, or `timeout` passed;
    /// returns whether there is room.
    pub(crate) fn wait_for_room(&self, max: usize, timeout: Duration) -> bool {
        let window = self.lock();
        let (window, _) = self
            .room
            .wait_timeout_while(window, timeout, |w| w.done.len() >= max && w.failed.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        window.done.len() < max
    }
}

#[expect(clippy::cast_possible_truncation, reason = "buffer offsets fit in usize on 64-bit targets")]
pub(crate) fn offset_opaque(offset: u64) -> usize {
    offset as usize
}

/// Routes librdkafka's delivery reports into [`Acks`].
pub(crate) struct ShipContext {
    pub(crate) acks: Arc<Acks>,
}

impl ClientContext for ShipContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ProducerContext for ShipContext {
    /// The buffer offset of the record (Vigil targets 64-bit platforms, where it fits).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, offset: usize) {
        self.acks.delivered(offset as u64, result.as_ref().map(|_| ()).map_err(|(error, _)| error.to_string()));
    }
}

enum Shipped {
    Stopped,
    Failed(String),
}

/// A delivery's outcome: acknowledged, or why not.
async fn settle(delivery: DeliveryFuture) -> Result<(), String> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error.to_string()),
        Err(_) => Err("the producer was dropped before the broker answered".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_acknowledged_prefix_counts() {
        let acks = Acks::new(10);
        for offset in 10..15 {
            assert_eq!(acks.send_next(), offset);
        }
        // Partitions acknowledge out of order.
        acks.delivered(12, Ok(()));
        acks.delivered(11, Ok(()));
        assert_eq!(acks.acknowledged(), Ok(10));
        acks.delivered(10, Ok(()));
        assert_eq!(acks.acknowledged(), Ok(13));
        acks.delivered(14, Err("broker said no".into()));
        assert_eq!(acks.acknowledged(), Err("broker said no".into()));
        assert_eq!(acks.prefix(), 13, "a failure keeps what was acknowledged before it");
    }

    #[test]
    fn shared_senders_take_consecutive_offsets_and_wait_for_room() {
        let acks = Acks::new(0);
        assert!(!acks.stalled(Duration::ZERO), "nothing in flight is never stalled");
        assert_eq!((acks.send_next(), acks.send_next(), acks.send_next()), (0, 1, 2));
        assert_eq!(acks.in_flight(), 3);
        assert!(acks.stalled(Duration::ZERO), "in flight and unacknowledged");
        assert!(!acks.stalled(Duration::from_secs(3600)));
        assert!(!acks.wait_for_room(3, Duration::ZERO), "the window is full");
        acks.delivered(1, Ok(()));
        assert!(!acks.wait_for_room(3, Duration::ZERO), "offset 0 still holds the window");
        acks.delivered(0, Ok(()));
        assert!(acks.wait_for_room(3, Duration::ZERO));
        assert_eq!((acks.prefix(), acks.in_flight()), (2, 1));
        acks.delivered(2, Err("rejected".into()));
        assert!(!acks.wait_for_room(1, Duration::ZERO));
        assert_eq!(acks.acknowledged(), Err("rejected".into()));
    }
}
