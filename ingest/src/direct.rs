//! The ingest role's direct path: file tails hand their events straight to the Kafka producer,
//! and a file's checkpoint moves only once the broker has acknowledged every event before it.
//! While events are in flight the log file itself holds them, so the healthy path writes
//! nothing per event on this host; the on-disk buffer is for when the broker is away.
//!
//! - **Direct.** A tail hands a batch of events to the shipper's sending thread (so reading and
//!   normalising overlap with serialising and producing), which sends each event and registers
//!   the batch's checkpoint and dead letters as [`Covered`] by the send sequence reached. The
//!   committer stores them in the buffer's checkpoint table once the broker acknowledged that
//!   prefix. A crash in between re-reads the file from the stored checkpoint and sends those
//!   events again, with the same `event_id` (consumers dedupe on it).
//! - **Spill.** When the broker has acknowledged nothing for `spill_after`, or a delivery failed
//!   for good, the shipper starts a new *epoch*. Every position a tail reached in an older
//!   epoch is forgotten: the tail reads again from its stored checkpoint, which only covers
//!   acknowledged events, into the on-disk buffer (checkpoints committed with the events, as in
//!   `vigil run`), and the forwarder ships the buffer. Events in flight at the spill may so be
//!   delivered twice, never lost.
//! - **Back to direct** once the broker acknowledges again and the forwarder has drained the
//!   buffer, so buffered events go before new ones.
//!
//! Going from the buffer to direct is safe at any batch (the buffer's checkpoints are durable);
//! going from direct to the buffer is only ever done by a spill, never per batch, because a
//! buffered batch's checkpoint would otherwise cover direct events not yet acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;
use vigil_log::kafka::{KafkaConfig, ensure_topics, event_headers, event_key, producer_config};
use vigil_log::{AppendBatch, EventLog, LogError};
use vigil_schemas::{DeadLetter, DeliveryEvent};

use crate::forward::{Acks, BUFFER_CONSUMER, ForwardError, ShipContext, offset_opaque};

/// Events sent and not yet acknowledged, at most; bounds the producer's memory (librdkafka
/// holds a copy of each).
const MAX_IN_FLIGHT: usize = 20_000;
/// Batches handed over by tails and not yet sent, at most (each is at most the tail's direct
/// batch size of input).
const QUEUED_BATCHES: usize = 4;
/// Acknowledged events that trigger a checkpoint commit before the next tick.
const COMMIT_EVERY_EVENTS: u64 = 20_000;
/// How often acknowledged checkpoints are committed at the latest.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How long the tails wait at start for the topics, before they begin into the buffer.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Why a batch was not taken: the shipper spilled; read again from the stored checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("the broker is not acknowledging; file tails spill to the on-disk buffer")]
pub struct Spilled;

/// A tail's batch for the sending thread.
struct Batch {
    epoch: u64,
    events: Vec<DeliveryEvent>,
    dead_letters: Vec<DeadLetter>,
    key: String,
    checkpoint: Vec<u8>,
}

/// A batch sent directly: its checkpoint (and dead letters) are stored once every send before
/// `until` is acknowledged.
#[derive(Debug)]
struct Covered {
    until: u64,
    epoch: u64,
    key: String,
    checkpoint: Vec<u8>,
    dead_letters: Vec<DeadLetter>,
    events: u64,
}

/// The producer and the acknowledgements of its sends; replaced after a fatal failure.
struct Producing {
    producer: ThreadedProducer<ShipContext>,
    acks: Arc<Acks>,
}

/// Sends the file tails' events straight to `vigil.events`; see the module documentation.
pub struct DirectShipper {
    shared: Arc<Shared>,
    batches: SyncSender<Batch>,
}

/// What the tails, the sending thread and the committer share.
struct Shared {
    log: EventLog,
    config: KafkaConfig,
    schema_version: String,
    spill_after: Duration,
    producing: Mutex<Arc<Producing>>,
    covered: Mutex<VecDeque<Covered>>,
    epoch: AtomicU64,
    /// Not sending directly: before the topics are known to exist, and after a spill until the
    /// buffer is drained.
    spilled: AtomicBool,
    /// The producer failed for good and is replaced before the next direct send.
    broken: AtomicBool,
    ready: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for DirectShipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectShipper")
            .field("epoch", &self.shared.epoch)
            .field("spilled", &self.shared.spilled)
            .finish_non_exhaustive()
    }
}

impl DirectShipper {
    /// Creates the producer and starts the sending thread.
    ///
    /// # Errors
    /// When the producer cannot be configured.
    pub fn new(log: EventLog, config: KafkaConfig) -> Result<Self, ForwardError> {
        let producing = Shared::producing(&config)?;
        let shared = Arc::new(Shared {
            log,
            spill_after: Duration::from_millis(config.spill_after_ms.max(1)),
            config,
            schema_version: vigil_schemas::SCHEMA_VERSION.to_string(),
            producing: Mutex::new(Arc::new(producing)),
            covered: Mutex::new(VecDeque::new()),
            epoch: AtomicU64::new(0),
            spilled: AtomicBool::new(true),
            broken: AtomicBool::new(false),
            ready: tokio::sync::watch::Sender::new(false),
        });
        let (batches, queued) = std::sync::mpsc::sync_channel(QUEUED_BATCHES);
        let sender = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("vigil-direct".into())
            .spawn(move || sender.send_all(&queued))
            .expect("spawning the direct sending thread");
        Ok(Self { shared, batches })
    }

    /// The epoch in which positions reached by direct sends are still good.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.shared.epoch()
    }

    /// The epoch to send a new batch in, or `None` when batches go to the buffer. Blocking (it
    /// reads the buffer's offsets while spilled).
    ///
    /// # Errors
    /// When the buffer cannot be read.
    pub fn accepting(&self) -> Result<Option<u64>, LogError> {
        self.shared.accepting()
    }

    /// Hands `events` over for sending in `epoch`, with the `checkpoint` (under `key`) and
    /// `dead_letters` to store once the broker acknowledged them. Blocking: waits while
    /// [`QUEUED_BATCHES`] are queued.
    ///
    /// # Errors
    /// [`Spilled`] when the shipper spilled since `epoch` began.
    pub fn ship(
        &self,
        epoch: u64,
        events: Vec<DeliveryEvent>,
        dead_letters: Vec<DeadLetter>,
        key: String,
        checkpoint: Vec<u8>,
    ) -> Result<(), Spilled> {
        if self.shared.epoch() != epoch || self.shared.spilled.load(Ordering::SeqCst) {
            return Err(Spilled);
        }
        let batch = Batch { epoch, events, dead_letters, key, checkpoint };
        if self.batches.send(batch).is_err() {
            tracing::error!("the direct sending thread is gone; file tails stay on the buffer");
            self.shared.spill("the direct sending thread stopped");
            return Err(Spilled);
        }
        Ok(())
    }

    /// Becomes `true` once [`run`](Self::run) has made sure the topics exist.
    #[must_use]
    pub fn topics_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// Waits until the topics exist (or [`READY_WAIT`] passed), so tails that start now go
    /// direct from their first batch when the broker is up.
    pub async fn wait_ready(&self) {
        let mut ready = self.shared.ready.subscribe();
        let _ = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await;
    }

    /// Ensures the topics, then commits acknowledged checkpoints and watches the broker's
    /// health until `shutdown`.
    ///
    /// # Errors
    /// When the buffer fails.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ForwardError> {
        let shared = &self.shared;
        let topics = [shared.config.events_topic.as_str(), shared.config.dead_letter_topic.as_str()];
        let client = producer_config(&shared.config);
        ensure_topics(&client, &topics, shared.config.partitions, shared.config.replication_factor, &shutdown)
            .await
            .map_err(ForwardError::Config)?;
        shared.ready.send_replace(true);
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut committed_at = 0;
        loop {
            let acks = Arc::clone(&shared.current().acks);
            let ticked = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => true,
                () = acks.changed.notified() => false,
            };
            shared.healthy(&acks);
            let prefix = acks.prefix();
            let idle = acks.in_flight() == 0;
            if ticked || idle || prefix.saturating_sub(committed_at) >= COMMIT_EVERY_EVENTS {
                shared.commit(&acks).await?;
                committed_at = prefix;
            }
            crate::metrics::ingest_metrics().ship_in_flight.set(i64::try_from(acks.in_flight()).unwrap_or(i64::MAX));
        }
        // Give what is in flight a moment to be acknowledged, so a clean stop re-sends little.
        let producing = shared.current();
        let flush = {
            let producing = Arc::clone(&producing);
            tokio::task::spawn_blocking(move || producing.producer.flush(Duration::from_secs(5)))
        };
        let _ = flush.await;
        shared.commit(&producing.acks).await
    }
}

impl Shared {
    fn producing(config: &KafkaConfig) -> Result<Producing, ForwardError> {
        let acks = Arc::new(Acks::new(0));
        let producer = producer_config(config)
            .create_with_context(ShipContext { acks: Arc::clone(&acks) })
            .map_err(ForwardError::Config)?;
        Ok(Producing { producer, acks })
    }

    fn current(&self) -> Arc<Producing> {
        Arc::clone(&self.producing.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn accepting(&self) -> Result<Option<u64>, LogError> {
        if !self.spilled.load(Ordering::SeqCst) {
            return Ok(Some(self.epoch()));
        }
        if !*self.ready.borrow() {
            return Ok(None);
        }
        // Back to direct only behind everything buffered, and only with a producer that works.
        let drained = self.log.head() <= self.log.committed_offset(BUFFER_CONSUMER)?;
        if !drained {
            return Ok(None);
        }
        let mut producing = self.producing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.broken.load(Ordering::SeqCst) {
            match Self::producing(&self.config) {
                Ok(fresh) => *producing = Arc::new(fresh),
                Err(error) => {
                    tracing::warn!(%error, "recreating the Kafka producer failed; staying on the buffer");
                    return Ok(None);
                }
            }
            self.broken.store(false, Ordering::SeqCst);
        } else if producing.acks.in_flight() > 0 {
            return Ok(None); // Still waiting for the broker to acknowledge earlier sends.
        }
        drop(producing);
        // Epoch 0 is the start (spilled until the topics exist), not a return from a spill.
        if self.spilled.swap(false, Ordering::SeqCst) && self.epoch() > 0 {
            tracing::info!("the broker acknowledges again and the buffer is drained; file tails send directly");
        }
        Ok(Some(self.epoch()))
    }

    /// Starts a new epoch: positions reached by direct sends are forgotten and tails read again
    /// from their stored checkpoints into the buffer.
    fn spill(&self, why: &str) {
        if !self.spilled.swap(true, Ordering::SeqCst) {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            crate::metrics::ingest_metrics().ship_spills.inc();
            tracing::warn!(why, "file tails spill to the on-disk buffer");
        }
    }

    /// Whether the broker still acknowledges; spills when it does not. Returns `false` after a
    /// spill.
    fn healthy(&self, acks: &Acks) -> bool {
        if let Err(error) = acks.acknowledged() {
            self.broken.store(true, Ordering::SeqCst);
            self.spill(&format!("a delivery failed: {error}"));
        } else if acks.stalled(self.spill_after) {
            self.spill("the broker acknowledged nothing for spill_after_ms");
        }
        !self.spilled.load(Ordering::SeqCst)
    }

    /// The sending thread: sends the queued batches until the shipper is dropped. Batches of
    /// an epoch that ended are dropped unsent; their tails read those lines again.
    fn send_all(&self, queued: &Receiver<Batch>) {
        let mut payload = Vec::with_capacity(4096);
        for batch in queued {
            if batch.epoch == self.epoch() {
                self.send(batch, &mut payload);
            }
        }
    }

    /// Sends one batch's events (waiting while the window is full) and registers its
    /// checkpoint; gives up on a spill.
    fn send(&self, batch: Batch, payload: &mut Vec<u8>) {
        let producing = self.current();
        let acks = &producing.acks;
        for event in &batch.events {
            // The committer judges the broker's health on every tick; here it is only judged
            // while the window is full, and otherwise a spill shows as a new epoch.
            while !acks.wait_for_room(MAX_IN_FLIGHT, Duration::from_millis(100)) {
                if !self.healthy(acks) {
                    return;
                }
            }
            if self.epoch() != batch.epoch {
                return;
            }
            payload.clear();
            serde_json::to_writer(&mut *payload, event).expect("DeliveryEvent always serialises");
            let headers = event_headers(&self.schema_version, event.source.as_str(), &event.event_id);
            let record_key = event_key(event.egress_source.as_deref(), event.recipient_domain.as_deref());
            let sequence = acks.send_next();
            let mut record = BaseRecord::with_opaque_to(&self.config.events_topic, offset_opaque(sequence))
                .key(record_key)
                .payload(&payload[..])
                .headers(headers);
            loop {
                match producing.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        acks.wait_for_room(acks.in_flight(), Duration::from_millis(10));
                    }
                    Err((error, _)) => {
                        acks.delivered(sequence, Err(error.to_string()));
                        self.healthy(acks);
                        return;
                    }
                }
            }
        }
        let until = acks.end();
        let Batch { epoch, events, dead_letters, key, checkpoint } = batch;
        let events = events.len() as u64;
        self.lock_covered().push_back(Covered { until, epoch, key, checkpoint, dead_letters, events });
    }

    fn lock_covered(&self) -> std::sync::MutexGuard<'_, VecDeque<Covered>> {
        self.covered.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores the checkpoints (and dead letters) of the batches whose events are all
    /// acknowledged, in one buffer transaction. Batches of a spilled epoch are dropped: their
    /// tails read those lines again.
    async fn commit(&self, acks: &Acks) -> Result<(), ForwardError> {
        let prefix = acks.prefix();
        let (count, events, batch) = {
            let mut covered = self.lock_covered();
            let epoch = self.epoch();
            covered.retain(|c| c.epoch == epoch);
            let count = covered.iter().take_while(|c| c.until <= prefix).count();
            let mut latest: HashMap<&str, &[u8]> = HashMap::new();
            let mut batch = AppendBatch::default();
            for c in covered.iter().take(count) {
                batch.dead_letters.extend(c.dead_letters.iter().cloned());
                latest.insert(&c.key, &c.checkpoint);
            }
            batch.checkpoints = latest.into_iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
            (count, covered.iter().take(count).map(|c| c.events).sum::<u64>(), batch)
        };
        if count == 0 {
            return Ok(());
        }
        match self.log.append_async(&batch).await {
            Ok(_) => {
                // Only this task removes entries, and new ones go to the back: the first `count`
                // are the ones just stored.
                self.lock_covered().drain(..count);
                crate::metrics::ingest_metrics().shipped_events.inc_by(events);
                Ok(())
            }
            // The dead-letter store is full: the checkpoints wait for the next commit.
            Err(error) if error.is_full() => {
                tracing::debug!(%error, "checkpoint commit waits for room in the dead-letter store");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}
