//! The log of record, in its two bindings (DESIGN.md §2, §5): the embedded log (this module's
//! [`EventLog`], Vigil's single-host equivalent of the `vigil.events` and `vigil.deadletter`
//! topics) and the Kafka binding ([`kafka`]: configuration, producer settings, topics, the
//! librdkafka log context). Ingest and the processor both stand on this crate and never on each
//! other.
//!
//! # Layout
//! - this module: the embedded log ([`EventLog`]), whose contract follows;
//! - [`kafka`]: what every role that talks to a Kafka-protocol broker shares;
//! - [`backoff`]: waiting before a retry (jittered, capped), cut short by shutdown: the one
//!   retry delay of the project;
//! - [`tls`]: the trust store of every outbound TLS connection;
//! - [`metrics`]: the embedded log's commit counters;
//! - [`privacy`]: what is kept of recipients' addresses (`keep`, `hash`, `domain`), applied
//!   to every event and dead letter before it is written;
//! - `codec`: how an event is stored (its JSON, compressed with a zstd dictionary trained on
//!   the log's own first events, so a KumoMTA event takes a few hundred bytes on disk).
//!
//! # Contract
//! - In: batches of normalised [`DeliveryEvent`]s, [`DeadLetter`]s and source checkpoints,
//!   appended together by [`EventLog::append`] in one transaction.
//! - Out: events by offset ([`EventLog::read`]), dense from 0, in append order; a watch channel
//!   ([`EventLog::subscribe`]) that says when the head moves.
//! - Guarantee: when `append` returns `Ok`, the batch is on disk (fsync'd) and survives `kill -9`
//!   or power loss; when it returns `Err`, nothing of the batch is visible. Events whose
//!   `event_id` is already in the log are not appended again (counted as duplicates), so a
//!   source that re-sends after a crash double counts nothing. A source's checkpoint (file
//!   offset) commits in the same transaction as the events it covers, so a restart neither
//!   loses nor repeats records. Consumers keep their own offsets ([`EventLog::commit_offset`]).
//! - As a bounded buffer (the ingest role, in front of Kafka): with [`EventLog::with_limit`],
//!   `append` refuses new events with [`LogError::Full`] while the named consumer is more than
//!   the limit behind, so senders are paused or answered 503 instead of anything being
//!   dropped; the consumer drops what it has shipped with [`EventLog::truncate_before`],
//!   which drops those events' dedupe entries too (the buffer dedupes what it holds; the
//!   consumers downstream dedupe by `event_id`). Offsets are never reused after a truncation.
//! - Storage: an event is kept whole (its normalised fields and its source record) and reads
//!   back byte for byte as `serde_json::to_vec` wrote it (with an annotator's `mx_host`, when
//!   it adds one, as its first field). Once the log holds 2 000 events (or
//!   receives a first batch that large) it trains a zstd dictionary on them and stores it in
//!   itself; events after that are stored compressed with it. Both forms are always read.
//!
//! # Why redb
//! The log needs three things to move atomically: the events, the dedupe index and the
//! source's checkpoint. Hand-written segment files would need a second journal to get that;
//! [redb](https://docs.rs/redb) is a pure-Rust, copy-on-write B-tree with ACID transactions and
//! fsync on commit (`Durability::Immediate`, its default), so one write transaction gives all
//! three. Its cost, one fsync per commit, is paid per group of batches, not per event nor per
//! request: receivers append whole HTTP bodies and tail reads, and concurrent appends share
//! one commit (group commit, [`EventLog::append`]), so single-record requests from many
//! connections are not capped by the disk's fsync rate. Deleting old offsets
//! ([`EventLog::truncate_before`]) is decided by the caller: the buffer's forwarder, or
//! `vigil run`'s retention (`vigil_processor::retention`).

pub mod backoff;
mod codec;
pub mod kafka;
pub mod metrics;
pub mod privacy;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;
use vigil_schemas::{DeadLetter, DeliveryEvent};

/// offset -> serialised DeliveryEvent (JSON).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// The event id's index key ([`index_key`]) -> offset: the dedupe index.
const EVENT_KEYS: TableDefinition<u128, u64> = TableDefinition::new("event_keys");
/// event_id -> offset, as logs before 16-byte keys kept it: moved into [`EVENT_KEYS`] on open.
const LEGACY_EVENT_IDS: TableDefinition<&str, u64> = TableDefinition::new("event_ids");

/// An event id as the dedupe index keys it: 16 bytes, fixed width. Vigil's ids are 32 hex
/// digits (128 bits of a hash), taken as they are; any other id is hashed (SHA-256, first
/// 16 bytes). Half the bytes of the id as text, and no length per entry.
fn index_key(event_id: &str) -> u128 {
    if event_id.len() == 32
        && let Ok(key) = u128::from_str_radix(event_id, 16)
    {
        return key;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(event_id.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("16 of 32 bytes"))
}
/// consumer name -> next offset it will read.
const CONSUMER_OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("consumer_offsets");
/// source key (e.g. a tailed file) -> opaque checkpoint bytes.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// sequence -> serialised DeadLetter (JSON).
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// "events" / "dead_letters" -> the first key still kept, so a truncated table keeps its
/// numbering when it is empty.
const LOW_WATER: TableDefinition<&str, u64> = TableDefinition::new("low_water");

/// Errors from the log. Every variant means the operation did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed (disk full, I/O error, corruption). Retrying may help for transient
    /// I/O; corruption needs an operator.
    #[error("log storage: {0}")]
    Storage(#[from] redb::Error),
    /// A stored record does not decode: a bug or a newer writer. Not retryable.
    #[error("log record at offset {offset} does not decode: {source}")]
    Corrupt { offset: u64, source: serde_json::Error },
    /// The data directory cannot be used.
    #[error("log at {path}: {source}")]
    Open { path: String, source: std::io::Error },
    /// The log is used as a bounded buffer and its consumer is too far behind: retry once it
    /// has caught up. Nothing of the batch was written.
    #[error("buffer full: {pending} events or dead letters not yet shipped (limit {limit}); retry later")]
    Full { pending: u64, limit: u64 },
    /// A stored record does not decompress: a damaged file, or a dictionary missing from it.
    #[error("log record at offset {offset} does not decompress: {reason}")]
    Compressed { offset: u64, reason: String },
    /// The log is being reopened after a failed write (a full disk); retry shortly.
    #[error("the log is reopening after a failed write (a full disk?); retry later")]
    Reopening,
    /// The log's committer thread is gone (the process is stopping, or it panicked): nothing
    /// of the batch was written.
    #[error("the log's committer has stopped")]
    Stopped,
}

impl LogError {
    /// Whether the failure is back-pressure (retry later) rather than a broken store.
    #[must_use]
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full { .. })
    }
}

/// A bound on the events a consumer has not yet committed, for the buffer role.
#[derive(Debug, Clone)]
struct Limit {
    consumer: Arc<str>,
    /// The consumer cursor of the dead letters (they are shipped too, and bounded the same).
    dead_letter_consumer: Arc<str>,
    max_pending: u64,
}

/// `json`, an event without `mx_host`, with `mx_host` as its first field: cheaper than
/// cloning the event to set it, and `raw` stays last (where [`decode_without_raw`] looks).
fn with_mx_host(json: &[u8], mx: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + mx.len() + 16);
    out.extend_from_slice(b"{\"mx_host\":");
    serde_json::to_writer(&mut out, mx).expect("a string serialises");
    if json.len() > 2 {
        out.push(b',');
    }
    out.extend_from_slice(json.get(1..).unwrap_or_default());
    out
}

/// The one field an erasure needs from a stored event.
#[derive(serde::Deserialize)]
struct Recipient {
    #[serde(default)]
    recipient: Option<String>,
}

/// Records an erasure reads, and rewrites, per transaction.
const ERASE_CHUNK: usize = 10_000;

/// What [`EventLog::erase`] rewrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// The person's events.
    pub events: u64,
    /// Dead letters that mentioned the address.
    pub dead_letters: u64,
    /// The log's head when the erasure began: it covers every offset before it.
    pub through: u64,
}

/// The one field truncation needs from a stored event.
#[derive(serde::Deserialize)]
struct EventId {
    event_id: String,
}

fn storage(err: impl Into<redb::Error>) -> LogError {
    LogError::Storage(err.into())
}

/// What one [`EventLog::append`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Events newly written.
    pub appended: usize,
    /// Events skipped because their `event_id` was already in the log.
    pub duplicates: usize,
    /// Dead letters written.
    pub dead_lettered: usize,
    /// The head after the append: the offset the next event will get.
    pub head: u64,
}

/// One atomic unit of work for the log.
#[derive(Debug, Default)]
pub struct AppendBatch {
    pub events: Vec<DeliveryEvent>,
    pub dead_letters: Vec<DeadLetter>,
    /// Checkpoints to store with the events: (source key, opaque value).
    pub checkpoints: Vec<(String, Vec<u8>)>,
}

impl AppendBatch {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dead_letters.is_empty() && self.checkpoints.is_empty()
    }
}

/// The embedded, crash-safe log. Cheap to clone; all clones share one database.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Arc<Store>,
    head: Arc<watch::Sender<u64>>,
    limit: Option<Limit>,
    /// The queue of the committer thread, which writes every batch waiting at that moment in
    /// one transaction. The queue is bounded by its callers: each queued batch is one caller
    /// waiting for its answer, and every receiver bounds how many calls it has in flight.
    committer: std::sync::mpsc::Sender<Request>,
    /// The dictionaries events are stored with ([`codec`]).
    codec: Arc<codec::Codec>,
    /// The log's directory.
    path: Arc<Path>,
    /// What this handle keeps of recipients' addresses.
    privacy: privacy::RecipientPrivacy,
    /// What is added to events from knowledge looked up at the edge (the MX of a recipient
    /// domain), before they are written.
    annotator: Option<Arc<dyn Annotator>>,
}

/// Facts looked up at the edge and written into events before they are stored, so the fold
/// stays a pure function of the log: a replay reads the answer the first pass had, not
/// today's. Called on the append path for every event: answer from memory, never wait (look
/// up in the background and answer a later event).
pub trait Annotator: Send + Sync + std::fmt::Debug {
    /// The MX host to record on an event to `domain` that names none (no `mx_host`, no
    /// KumoMTA `site`), when known.
    fn mx_host(&self, domain: &str) -> Option<Arc<str>>;

    /// Sees every event appended (the sending IPs and domains to watch). Default: nothing.
    fn observe(&self, _event: &DeliveryEvent) {}
}

/// The database, closed and opened again when a failed write (a full disk) left redb
/// refusing every later write ("previous I/O error") until it is reopened.
#[derive(Debug)]
struct Store {
    db: std::sync::RwLock<Option<Database>>,
    file: PathBuf,
    /// When a reopen was last tried: a disk that stays full is tried once a second.
    last_reopen: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The open database, for one call.
struct Db<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("a Db is made only over an open database")
    }
}

impl Store {
    fn create(file: &Path) -> Result<Database, LogError> {
        Database::builder().set_cache_size(LOG_CACHE_BYTES).create(file).map_err(storage)
    }

    /// The database; when a reopen left it closed, another is tried first (if one is due).
    fn db(&self) -> Result<Db<'_>, LogError> {
        {
            let guard = self.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if guard.is_some() {
                return Ok(Db(guard));
            }
        }
        self.reopen()?;
        let guard = self.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_some() { Ok(Db(guard)) } else { Err(LogError::Reopening) }
    }

    /// After `error`: reopens the database when the error left it refusing writes.
    fn recover_from(&self, error: &LogError) {
        if let LogError::Storage(redb::Error::PreviousIo | redb::Error::Io(_)) = error {
            metrics::log_metrics().write_failures.inc();
            match self.reopen() {
                Ok(()) => {
                    tracing::warn!(%error, "the log failed to write (a full disk?) and was reopened; nothing acknowledged is lost")
                }
                Err(reopen) => {
                    tracing::error!(%error, %reopen, "the log cannot write (a full disk?): ingest answers 503 and tails wait until it can")
                }
            }
        }
    }

    /// Closes the database and opens it again, at most once a second.
    fn reopen(&self) -> Result<(), LogError> {
        {
            let mut last = self.last_reopen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
                return Err(LogError::Reopening);
            }
            *last = Some(std::time::Instant::now());
        }
        let mut guard = self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.take();
        *guard = Some(Self::create(&self.file)?);
        Ok(())
    }
}

/// redb's page cache for the log. Its default (1 GiB) grows with what is written, and appends
/// only need the tree's upper pages and the recent leaves; readers follow the head closely.
const LOG_CACHE_BYTES: usize = 64 << 20;

/// At most this many events are written by one commit (a group stops growing at the batch
/// that reaches it), so one transaction stays small whatever the concurrency.
const MAX_GROUP_EVENTS: usize = 10_000;

/// One caller's batch on its way to the committer ([`EventLog::append`]).
struct Request {
    batch: Prepared,
    limit: Option<Limit>,
    reply: Reply,
}

/// Where a batch's outcome goes: a blocked thread or an awaiting task.
enum Reply {
    Blocking(std::sync::mpsc::SyncSender<Result<AppendReceipt, LogError>>),
    Async(tokio::sync::oneshot::Sender<Result<AppendReceipt, LogError>>),
}

impl Reply {
    fn send(self, result: Result<AppendReceipt, LogError>) {
        // A caller that stopped waiting (a dropped request) has nobody left to tell.
        let _ = match self {
            Self::Blocking(tx) => tx.send(result).ok(),
            Self::Async(tx) => tx.send(result).ok(),
        };
    }
}

/// A batch serialised by its caller (in parallel with the other callers), ready to write.
#[derive(Debug)]
struct Prepared {
    /// (event_id, stored bytes).
    events: Vec<(String, Vec<u8>)>,
    dead_letters: Vec<Vec<u8>>,
    checkpoints: Vec<(String, Vec<u8>)>,
    /// A dictionary trained on this batch, stored in its transaction ([`codec`]).
    new_dictionary: Option<Arc<codec::Dictionary>>,
}

impl Prepared {
    fn new(
        batch: &AppendBatch,
        codec: &codec::Codec,
        privacy: &privacy::RecipientPrivacy,
        annotator: Option<&dyn Annotator>,
    ) -> Self {
        let redacted = |json: Vec<u8>| match privacy.apply(&json) {
            std::borrow::Cow::Borrowed(_) => json,
            std::borrow::Cow::Owned(rewritten) => rewritten,
        };
        let serialise = |event: &DeliveryEvent| serde_json::to_vec(event).expect("DeliveryEvent always serialises");
        let json: Vec<Vec<u8>> = batch
            .events
            .iter()
            .map(|event| {
                if let Some(annotator) = annotator {
                    annotator.observe(event);
                }
                // An event that names the MX it went to (or KumoMTA's site, which holds it) keeps it.
                let names_mx = event.mx_host.is_some() || event.site.as_deref().is_some_and(|s| !s.is_empty());
                let mx = annotator.filter(|_| !names_mx).and_then(|annotator| {
                    event.recipient_domain.as_deref().and_then(|domain| annotator.mx_host(domain))
                });
                let json = serialise(event);
                redacted(match mx {
                    Some(mx) => with_mx_host(&json, &mx),
                    None => json,
                })
            })
            .collect();
        let new_dictionary = if codec.has_dictionary() {
            None
        } else {
            codec.train_for_batch(&json.iter().map(Vec::as_slice).collect::<Vec<_>>())
        };
        let dictionary = new_dictionary.clone().or_else(|| codec.current());
        Self {
            events: batch
                .events
                .iter()
                .zip(json)
                .map(|(e, json)| (e.event_id.clone(), codec::Codec::encode(dictionary.as_ref(), json)))
                .collect(),
            dead_letters: batch
                .dead_letters
                .iter()
                .map(|d| redacted(serde_json::to_vec(d).expect("DeadLetter always serialises")))
                .collect(),
            checkpoints: batch.checkpoints.clone(),
            new_dictionary,
        }
    }
}

/// Decodes a stored event without its `raw` field, cheaply.
///
/// The log stores what `serde_json::to_vec(&DeliveryEvent)` wrote in [`EventLog::append`]:
/// fields in declaration order, `raw` last (`raw_is_serialised_last` in `vigil-schemas` pins
/// that), every field a scalar. Inside a JSON string a quote is always escaped, so the bytes
/// `,"raw":"` can only be the raw field's key: the event is decoded from the bytes before
/// them, closed with `}`. That skips walking the raw record and its escapes, which cost more
/// than decoding every other field. Bytes of another shape are decoded in full, with `raw`
/// skipped by serde.
fn decode_without_raw(bytes: &[u8], prefix: &mut Vec<u8>) -> Result<DeliveryEvent, serde_json::Error> {
    if let Some(at) = memchr::memmem::find(bytes, b",\"raw\":\"")
        && bytes.ends_with(b"\"}")
    {
        prefix.clear();
        prefix.extend_from_slice(&bytes[..at]);
        prefix.push(b'}');
        if let Ok(event) = serde_json::from_slice(prefix) {
            return Ok(event);
        }
    }
    vigil_schemas::event::raw_record::without_raw(|| serde_json::from_slice(bytes))
}

impl EventLog {
    /// Opens (or creates) the log in `dir`.
    ///
    /// # Errors
    /// When the directory cannot be created or the store cannot be opened (for example, another
    /// process holds it).
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Open { path: dir.display().to_string(), source })?;
        let db = Store::create(&dir.join("log.redb"))?;
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(EVENTS).map_err(storage)?;
        txn.open_table(EVENT_KEYS).map_err(storage)?;
        txn.open_table(CONSUMER_OFFSETS).map_err(storage)?;
        txn.open_table(CHECKPOINTS).map_err(storage)?;
        txn.open_table(DEAD_LETTERS).map_err(storage)?;
        txn.open_table(LOW_WATER).map_err(storage)?;
        txn.open_table(codec::DICTIONARIES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        move_legacy_index(&db)?;
        let head = {
            let txn = db.begin_read().map_err(storage)?;
            let events = txn.open_table(EVENTS).map_err(storage)?;
            let low = txn.open_table(LOW_WATER).map_err(storage)?;
            next_key(&events, &low, "events")?
        };
        let codec = {
            let txn = db.begin_read().map_err(storage)?;
            Arc::new(codec::Codec::load(&txn.open_table(codec::DICTIONARIES).map_err(storage)?).map_err(storage)?)
        };
        let db = Arc::new(Store {
            db: std::sync::RwLock::new(Some(db)),
            file: dir.join("log.redb"),
            last_reopen: std::sync::Mutex::new(None),
        });
        let head = Arc::new(watch::Sender::new(head));
        let (committer, requests) = std::sync::mpsc::channel();
        // The thread holds the database weakly: dropping the last handle closes it at once,
        // so the same directory can be opened again, and ends the thread.
        let (weak_db, thread_head, thread_codec) = (Arc::downgrade(&db), Arc::clone(&head), Arc::clone(&codec));
        std::thread::Builder::new()
            .name("vigil-log-commit".into())
            .spawn(move || commit_loop(&weak_db, &thread_head, &thread_codec, &requests))
            .map_err(|source| LogError::Open { path: dir.display().to_string(), source })?;
        Ok(Self {
            db,
            head,
            limit: None,
            committer,
            codec,
            path: dir.into(),
            privacy: privacy::RecipientPrivacy::Keep,
            annotator: None,
        })
    }

    /// This log as a bounded buffer: appends fail with [`LogError::Full`] while `consumer` has
    /// `max_pending` or more events left to commit, or `dead_letter_consumer` as many dead
    /// letters. One batch may overshoot the bound (a batch is never split), so the bound on
    /// disk is `max_pending` plus one batch, for each.
    #[must_use]
    pub fn with_limit(mut self, consumer: &str, dead_letter_consumer: &str, max_pending: u64) -> Self {
        self.limit = Some(Limit {
            consumer: consumer.into(),
            dead_letter_consumer: dead_letter_consumer.into(),
            max_pending: max_pending.max(1),
        });
        self
    }

    /// This log rewriting recipients' addresses as `privacy` says in everything appended
    /// through it (and its clones), before anything is written.
    #[must_use]
    pub fn with_privacy(mut self, privacy: privacy::RecipientPrivacy) -> Self {
        self.privacy = privacy;
        self
    }

    /// This log adding `annotator`'s facts to everything appended through it (and its clones).
    #[must_use]
    pub fn with_annotator(mut self, annotator: Arc<dyn Annotator>) -> Self {
        self.annotator = Some(annotator);
        self
    }

    /// What this handle keeps of recipients' addresses.
    #[must_use]
    pub fn privacy(&self) -> &privacy::RecipientPrivacy {
        &self.privacy
    }

    /// Deletes the events before `offset` and the dead letters before `dead_letter_seq`
    /// (shipped elsewhere), with the events' dedupe entries, so a truncated log's index stays
    /// as small as what it holds: a source that re-sends a shipped event appends it again, and
    /// the consumers downstream drop the copy by its `event_id`. Offsets and sequences are not
    /// reused.
    ///
    /// # Errors
    /// On storage failure; then nothing was deleted.
    pub fn truncate_before(&self, offset: u64, dead_letter_seq: u64) -> Result<(), LogError> {
        let truncated = self.truncate(offset, dead_letter_seq);
        if let Err(error) = &truncated {
            self.db.recover_from(error);
        }
        truncated
    }

    fn truncate(&self, offset: u64, dead_letter_seq: u64) -> Result<(), LogError> {
        let txn = self.db.db()?.begin_write().map_err(storage)?;
        {
            let mut low = txn.open_table(LOW_WATER).map_err(storage)?;
            let mut events = txn.open_table(EVENTS).map_err(storage)?;
            let offset = offset.min(next_key(&events, &low, "events")?);
            let mut shipped_ids = Vec::new();
            let mut buf = Vec::new();
            events
                .retain_in(..offset, |_, stored| {
                    // Stored events always decode; one that did not would only keep its entry.
                    if let Ok(json) = self.codec.decode(stored, &mut buf)
                        && let Ok(id) = serde_json::from_slice::<EventId>(json)
                    {
                        shipped_ids.push(id.event_id);
                    }
                    false
                })
                .map_err(storage)?;
            let mut ids = txn.open_table(EVENT_KEYS).map_err(storage)?;
            for id in &shipped_ids {
                ids.remove(index_key(id)).map_err(storage)?;
            }
            let mut dead = txn.open_table(DEAD_LETTERS).map_err(storage)?;
            let seq = dead_letter_seq.min(next_key(&dead, &low, "dead_letters")?);
            dead.retain_in(..seq, |_, _| false).map_err(storage)?;
            for (name, mark) in [("events", offset), ("dead_letters", seq)] {
                let current = low.get(name).map_err(storage)?.map_or(0, |v| v.value());
                low.insert(name, current.max(mark)).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Appends a batch durably. Blocking (it waits for an fsync): in async code, await
    /// [`Self::append_async`] instead.
    ///
    /// Concurrent appends share commits (group commit): the batch is serialised here, queued,
    /// and written by the log's committer thread with every other batch waiting at that moment,
    /// in one transaction and one fsync. Each call still returns only once its own batch is
    /// durable, with its own receipt, exactly as if the batches had been appended one after
    /// the other in queue order; a batch refused as [`LogError::Full`] holds back no other.
    /// So throughput grows with the number of concurrent senders instead of stopping at the
    /// disk's fsync rate.
    ///
    /// # Errors
    /// On storage failure; then nothing of the batch was written.
    pub fn append(&self, batch: &AppendBatch) -> Result<AppendReceipt, LogError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(batch, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| LogError::Stopped)?
    }

    /// [`Self::append`] for async callers: the task waits for the commit, no thread does.
    ///
    /// # Errors
    /// As [`Self::append`].
    pub async fn append_async(&self, batch: &AppendBatch) -> Result<AppendReceipt, LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(batch, Reply::Async(tx))?;
        rx.await.map_err(|_| LogError::Stopped)?
    }

    fn enqueue(&self, batch: &AppendBatch, reply: Reply) -> Result<(), LogError> {
        let request = Request {
            batch: Prepared::new(batch, &self.codec, &self.privacy, self.annotator.as_deref()),
            limit: self.limit.clone(),
            reply,
        };
        self.committer.send(request).map_err(|_| LogError::Stopped)
    }

    /// Rewrites one person's events and dead letters in place (see
    /// [`privacy::Erasure`]): every copy of their address, in every field and in the source
    /// record, becomes the erasure's pseudonym. Offsets, event ids and everything else stay,
    /// so consumers' positions, the dedupe index and the counts derived from the log do not
    /// move. Covers what the log holds when it is called; returns what was rewritten.
    ///
    /// The log is scanned under read transactions (appends go on meanwhile) and rewritten in
    /// write transactions of at most [`ERASE_CHUNK`] records, so memory stays bounded.
    ///
    /// # Errors
    /// On storage failure or an undecodable record; what was rewritten before stays rewritten,
    /// and calling again finishes the job.
    pub fn erase(&self, erasure: &privacy::Erasure) -> Result<Erased, LogError> {
        let through = self.head();
        let mut erased = Erased { events: 0, dead_letters: 0, through };
        let mut from = self.first_offset()?;
        let mut buf = Vec::new();
        while from < through {
            let mut rewritten = Vec::new();
            {
                let txn = self.db.db()?.begin_read().map_err(storage)?;
                let events = txn.open_table(EVENTS).map_err(storage)?;
                let mut read = 0;
                for entry in events.range(from..through).map_err(storage)?.take(ERASE_CHUNK) {
                    let (offset, stored) = entry.map_err(storage)?;
                    let offset = offset.value();
                    (from, read) = (offset + 1, read + 1);
                    let json = self.decompress(offset, stored.value(), &mut buf)?;
                    if !erasure.mentions(json) {
                        continue;
                    }
                    let recipient = serde_json::from_slice::<Recipient>(json)
                        .map_err(|source| LogError::Corrupt { offset, source })?
                        .recipient;
                    if recipient.is_some_and(|r| erasure.is_person(&r)) {
                        let json = erasure.rewrite(json).into_owned();
                        rewritten.push((offset, codec::Codec::encode(self.codec.current().as_ref(), json)));
                    }
                }
                if read < ERASE_CHUNK {
                    from = through;
                }
            }
            erased.events += self.rewrite_in_place(EVENTS, &rewritten)?;
        }
        let mut seq = 0;
        loop {
            let letters = self.dead_letters_stored(seq, ERASE_CHUNK)?;
            let Some((last, _)) = letters.last() else { break };
            seq = last + 1;
            let rewritten: Vec<_> = letters
                .into_iter()
                .filter(|(_, json)| erasure.mentions(json))
                .map(|(seq, json)| (seq, erasure.rewrite(&json).into_owned()))
                .collect();
            erased.dead_letters += self.rewrite_in_place(DEAD_LETTERS, &rewritten)?;
        }
        Ok(erased)
    }

    /// Up to `max` dead letters from `from`, as stored.
    fn dead_letters_stored(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let dead = txn.open_table(DEAD_LETTERS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in dead.range(from..).map_err(storage)?.take(max) {
            let (seq, bytes) = entry.map_err(storage)?;
            out.push((seq.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }

    /// Replaces the values of `records` in `table` that it still holds (retention may have
    /// deleted some since they were read), in one durable transaction. Returns how many.
    fn rewrite_in_place(
        &self,
        table: TableDefinition<u64, &[u8]>,
        records: &[(u64, Vec<u8>)],
    ) -> Result<u64, LogError> {
        if records.is_empty() {
            return Ok(0);
        }
        let written = (|| {
            let txn = self.db.db()?.begin_write().map_err(storage)?;
            let mut count = 0;
            {
                let mut table = txn.open_table(table).map_err(storage)?;
                for (key, value) in records {
                    if table.get(key).map_err(storage)?.is_some() {
                        table.insert(key, value.as_slice()).map_err(storage)?;
                        count += 1;
                    }
                }
            }
            txn.commit().map_err(storage)?;
            Ok(count)
        })();
        if let Err(error) = &written {
            self.db.recover_from(error);
        }
        written
    }

    /// The first offset the log still holds (0 until retention deletes; the head when it
    /// holds nothing).
    ///
    /// # Errors
    /// On storage failure.
    pub fn first_offset(&self) -> Result<u64, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let low = txn.open_table(LOW_WATER).map_err(storage)?;
        match events.first().map_err(storage)? {
            Some((offset, _)) => Ok(offset.value()),
            None => next_key(&events, &low, "events"),
        }
    }

    /// The first offset whose event was ingested at or after `since` (the head when none
    /// was): a binary search, as events are appended in about the order they are ingested.
    ///
    /// # Errors
    /// On storage failure or an undecodable record.
    pub fn first_offset_ingested_since(&self, since: chrono::DateTime<chrono::Utc>) -> Result<u64, LogError> {
        partition_point(self.first_offset()?, self.head(), |offset| {
            Ok(self.read_without_raw(offset, 1)?.first().is_some_and(|(_, event)| event.ingested_at < since))
        })
    }

    /// The first dead-letter sequence received at or after `since` (the next sequence when
    /// none was).
    ///
    /// # Errors
    /// On storage failure or an undecodable record.
    pub fn first_dead_letter_since(&self, since: chrono::DateTime<chrono::Utc>) -> Result<u64, LogError> {
        let first = {
            let txn = self.db.db()?.begin_read().map_err(storage)?;
            let dead = txn.open_table(DEAD_LETTERS).map_err(storage)?;
            dead.first().map_err(storage)?.map(|(k, _)| k.value())
        };
        partition_point(first.unwrap_or(0), self.dead_letter_head()?, |seq| {
            Ok(self.dead_letters(seq, 1)?.first().is_some_and(|(_, letter)| letter.received_at < since))
        })
    }

    /// Every consumer's committed offset (the next offset each will read).
    ///
    /// # Errors
    /// On storage failure.
    pub fn consumer_offsets(&self) -> Result<Vec<(String, u64)>, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let offsets = txn.open_table(CONSUMER_OFFSETS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in offsets.iter().map_err(storage)? {
            let (name, offset) = entry.map_err(storage)?;
            out.push((name.value().to_owned(), offset.value()));
        }
        Ok(out)
    }

    /// Bytes the log's file takes on disk (redb reuses freed pages, so the file stops
    /// growing once retention deletes as much as is appended; it does not shrink).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn file_bytes(&self) -> Result<u64, LogError> {
        let path = self.path.join("log.redb");
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|source| LogError::Open { path: path.display().to_string(), source })
    }

    /// The offset the next appended event will get (= number of events in the log).
    #[must_use]
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that changes whenever the head moves; consumers await it instead of polling.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Reads up to `max` events starting at offset `from`.
    ///
    /// # Errors
    /// On storage failure or an undecodable record.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, DeliveryEvent)>, LogError> {
        self.read_events(from, max, |bytes| serde_json::from_slice(bytes))
    }

    /// [`Self::read`] without the events' source records (`raw` is `None`): for consumers
    /// that never look at them, reading is much cheaper
    /// ([`vigil_schemas::event::raw_record`]).
    ///
    /// # Errors
    /// On storage failure or an undecodable record.
    pub fn read_without_raw(&self, from: u64, max: usize) -> Result<Vec<(u64, DeliveryEvent)>, LogError> {
        let mut prefix = Vec::new();
        self.read_events(from, max, |bytes| decode_without_raw(bytes, &mut prefix))
    }

    fn read_events(
        &self,
        from: u64,
        max: usize,
        mut decode: impl FnMut(&[u8]) -> Result<DeliveryEvent, serde_json::Error>,
    ) -> Result<Vec<(u64, DeliveryEvent)>, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::with_capacity(max.min(4096));
        let mut buf = Vec::new();
        for entry in events.range(from..).map_err(storage)?.take(max) {
            let (offset, bytes) = entry.map_err(storage)?;
            let offset = offset.value();
            let json = self.decompress(offset, bytes.value(), &mut buf)?;
            let event = decode(json).map_err(|source| LogError::Corrupt { offset, source })?;
            out.push((offset, event));
        }
        Ok(out)
    }

    /// Reads up to `max` events starting at offset `from`, as stored (canonical JSON), for
    /// forwarding without decoding.
    ///
    /// # Errors
    /// On storage failure.
    pub fn read_raw(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::with_capacity(max.min(4096));
        let mut buf = Vec::new();
        for entry in events.range(from..).map_err(storage)?.take(max) {
            let (offset, bytes) = entry.map_err(storage)?;
            let offset = offset.value();
            out.push((offset, self.decompress(offset, bytes.value(), &mut buf)?.to_vec()));
        }
        Ok(out)
    }

    fn decompress<'a>(&self, offset: u64, stored: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], LogError> {
        self.codec.decode(stored, buf).map_err(|e| LogError::Compressed { offset, reason: e.to_string() })
    }

    /// The next offset `consumer` will read (0 when it never committed).
    ///
    /// # Errors
    /// On storage failure.
    pub fn committed_offset(&self, consumer: &str) -> Result<u64, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let offsets = txn.open_table(CONSUMER_OFFSETS).map_err(storage)?;
        Ok(offsets.get(consumer).map_err(storage)?.map_or(0, |v| v.value()))
    }

    /// Durably records that `consumer` has finished everything before `next_offset`.
    ///
    /// # Errors
    /// On storage failure; the previous offset then still stands.
    pub fn commit_offset(&self, consumer: &str, next_offset: u64) -> Result<(), LogError> {
        let committed = (|| {
            let txn = self.db.db()?.begin_write().map_err(storage)?;
            txn.open_table(CONSUMER_OFFSETS).map_err(storage)?.insert(consumer, next_offset).map_err(storage)?;
            txn.commit().map_err(storage)
        })();
        if let Err(error) = &committed {
            self.db.recover_from(error);
        }
        committed
    }

    /// The checkpoint last stored under `key`, if any.
    ///
    /// # Errors
    /// On storage failure.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let checkpoints = txn.open_table(CHECKPOINTS).map_err(storage)?;
        Ok(checkpoints.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Up to `max` dead letters starting at sequence `from`, oldest first.
    ///
    /// # Errors
    /// On storage failure or an undecodable record.
    pub fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<(u64, DeadLetter)>, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let dead = txn.open_table(DEAD_LETTERS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in dead.range(from..).map_err(storage)?.take(max) {
            let (seq, bytes) = entry.map_err(storage)?;
            let seq = seq.value();
            let letter =
                serde_json::from_slice(bytes.value()).map_err(|source| LogError::Corrupt { offset: seq, source })?;
            out.push((seq, letter));
        }
        Ok(out)
    }

    /// How many dead letters the log holds.
    ///
    /// # Errors
    /// On storage failure.
    pub fn dead_letter_count(&self) -> Result<u64, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        txn.open_table(DEAD_LETTERS).map_err(storage)?.len().map_err(storage)
    }

    /// The sequence the next dead letter will get.
    ///
    /// # Errors
    /// On storage failure.
    pub fn dead_letter_head(&self) -> Result<u64, LogError> {
        let txn = self.db.db()?.begin_read().map_err(storage)?;
        let low = txn.open_table(LOW_WATER).map_err(storage)?;
        next_key(&txn.open_table(DEAD_LETTERS).map_err(storage)?, &low, "dead_letters")
    }
}

/// The committer thread: takes the first waiting batch and every batch queued behind it (up
/// to [`MAX_GROUP_EVENTS`]), commits them together, moves the head, then answers each caller.
fn commit_loop(
    db: &std::sync::Weak<Store>,
    head: &watch::Sender<u64>,
    codec: &Arc<codec::Codec>,
    requests: &std::sync::mpsc::Receiver<Request>,
) {
    while let Ok(first) = requests.recv() {
        let mut events = first.batch.events.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS
            && let Ok(next) = requests.try_recv()
        {
            events += next.batch.events.len();
            group.push(next);
        }
        let results = match db.upgrade() {
            Some(store) => {
                let batches: Vec<_> = group.iter().map(|r| (&r.batch, r.limit.as_ref())).collect();
                let results = match store.db() {
                    Ok(db) => commit_group(&db, &batches),
                    Err(_) => batches.iter().map(|_| Err(LogError::Reopening)).collect(),
                };
                if let Some(Err(error)) = results.iter().find(|r| r.is_err()) {
                    store.recover_from(error);
                }
                results
            }
            None => group.iter().map(|_| Err(LogError::Stopped)).collect(),
        };
        for (request, result) in group.iter().zip(&results) {
            if let Some(dictionary) = &request.batch.new_dictionary {
                codec.settle(dictionary, result.is_ok());
            }
        }
        let moved = results.iter().filter_map(|r| r.as_ref().ok()).filter(|r| r.appended > 0);
        if let Some(new_head) = moved.map(|r| r.head).max() {
            head.send_replace(new_head);
            if new_head >= codec::TRAIN_AFTER && !codec.has_dictionary() && codec.start_training() {
                train_in_background(db.clone(), Arc::clone(codec));
            }
        }
        for (request, result) in group.into_iter().zip(results) {
            request.reply.send(result);
        }
    }
}

/// Trains the log's dictionary on its latest events, beside the committer (training takes a
/// fraction of a second that appends should not wait for). Until it is stored, events are
/// stored uncompressed; if it fails, they stay so (logged) until the process restarts.
fn train_in_background(store: std::sync::Weak<Store>, codec: Arc<codec::Codec>) {
    let spawned = std::thread::Builder::new().name("vigil-log-train".into()).spawn(move || {
        let Some(store) = store.upgrade() else { return };
        let Ok(db) = store.db() else { return };
        let trained = codec::samples(&db, EVENTS).and_then(|samples| codec.train_and_store(&db, &samples));
        match trained {
            Ok(id) => tracing::info!(dictionary = id, "log dictionary trained: new events are stored compressed"),
            Err(error) => tracing::warn!(%error, "log dictionary not trained: events stay uncompressed"),
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "log dictionary not trained: no thread");
    }
}

/// Writes `batches` in one transaction, each with its own outcome, as if appended one after
/// the other. When the transaction fails as a whole, each batch is tried again alone, so one
/// batch's failure is its own.
fn commit_group(db: &Database, batches: &[(&Prepared, Option<&Limit>)]) -> Vec<Result<AppendReceipt, LogError>> {
    let together = (|| {
        let txn = db.begin_write().map_err(storage)?;
        let mut results = Vec::with_capacity(batches.len());
        for &(batch, limit) in batches {
            match write(&txn, batch, limit) {
                Err(full @ LogError::Full { .. }) => results.push(Err(full)),
                other => results.push(Ok(other?)),
            }
        }
        txn.commit().map_err(storage)?;
        Ok::<_, LogError>(results)
    })();
    match together {
        Ok(results) => {
            let metrics = metrics::log_metrics();
            metrics.commits.inc();
            metrics.group_batches.observe(batches.len() as f64);
            results
        }
        Err(err) if batches.len() == 1 => vec![Err(err)],
        Err(err) => {
            tracing::warn!(error = %err, batches = batches.len(), "group commit failed; committing its batches one by one");
            batches.iter().map(|one| commit_group(db, std::slice::from_ref(one)).remove(0)).collect()
        }
    }
}

/// Writes one batch into `txn`. [`LogError::Full`] means nothing of it was written and
/// the transaction is still good; any other error spoils the transaction.
fn write(txn: &redb::WriteTransaction, batch: &Prepared, limit: Option<&Limit>) -> Result<AppendReceipt, LogError> {
    let mut receipt = AppendReceipt::default();
    let low = txn.open_table(LOW_WATER).map_err(storage)?;
    let mut events = txn.open_table(EVENTS).map_err(storage)?;
    let mut ids = txn.open_table(EVENT_KEYS).map_err(storage)?;
    let mut offset = next_key(&events, &low, "events")?;
    if let Some(limit) = limit {
        let offsets = txn.open_table(CONSUMER_OFFSETS).map_err(storage)?;
        let behind = |consumer: &str, head: u64| -> Result<u64, LogError> {
            let shipped = offsets.get(consumer).map_err(storage)?.map_or(0, |v| v.value());
            Ok(head.saturating_sub(shipped))
        };
        let mut pending = 0;
        if !batch.events.is_empty() {
            pending = behind(&limit.consumer, offset)?;
        }
        if !batch.dead_letters.is_empty() {
            let dead = txn.open_table(DEAD_LETTERS).map_err(storage)?;
            pending = pending.max(behind(&limit.dead_letter_consumer, next_key(&dead, &low, "dead_letters")?)?);
        }
        if pending >= limit.max_pending {
            return Err(LogError::Full { pending, limit: limit.max_pending });
        }
    }
    for (event_id, bytes) in &batch.events {
        let key = index_key(event_id);
        if ids.get(key).map_err(storage)?.is_some() {
            receipt.duplicates += 1;
            continue;
        }
        events.insert(offset, bytes.as_slice()).map_err(storage)?;
        ids.insert(key, offset).map_err(storage)?;
        offset += 1;
        receipt.appended += 1;
    }
    receipt.head = offset;

    let mut dead = txn.open_table(DEAD_LETTERS).map_err(storage)?;
    for (seq, bytes) in (next_key(&dead, &low, "dead_letters")?..).zip(&batch.dead_letters) {
        dead.insert(seq, bytes.as_slice()).map_err(storage)?;
        receipt.dead_lettered += 1;
    }

    if let Some(dictionary) = &batch.new_dictionary {
        txn.open_table(codec::DICTIONARIES)
            .map_err(storage)?
            .insert(dictionary.id(), dictionary.bytes())
            .map_err(storage)?;
    }
    let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(storage)?;
    for (key, value) in &batch.checkpoints {
        checkpoints.insert(key.as_str(), value.as_slice()).map_err(storage)?;
    }
    tracing::debug!(
        appended = receipt.appended,
        duplicates = receipt.duplicates,
        dead_lettered = receipt.dead_lettered,
        head = receipt.head,
        "log append written"
    );
    Ok(receipt)
}

/// The first key in `low..high` for which `before` is false, `before` being true then false
/// along the range (a binary search over a dense table).
fn partition_point(
    mut low: u64,
    mut high: u64,
    mut before: impl FnMut(u64) -> Result<bool, LogError>,
) -> Result<u64, LogError> {
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle)? {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// Moves a log's dedupe index from its former string keys to [`index_key`]s, in chunks (a
/// one-time step when a log written by an earlier version is opened).
fn move_legacy_index(db: &Database) -> Result<(), LogError> {
    use redb::TableHandle as _;
    loop {
        let txn = db.begin_write().map_err(storage)?;
        if !txn.list_tables().map_err(storage)?.any(|t| t.name() == LEGACY_EVENT_IDS.name()) {
            return Ok(());
        }
        let moved = {
            let mut legacy = txn.open_table(LEGACY_EVENT_IDS).map_err(storage)?;
            let mut keys = txn.open_table(EVENT_KEYS).map_err(storage)?;
            let mut chunk = Vec::new();
            for entry in legacy.iter().map_err(storage)?.take(50_000) {
                let (id, offset) = entry.map_err(storage)?;
                chunk.push((id.value().to_owned(), offset.value()));
            }
            for (id, offset) in &chunk {
                keys.insert(index_key(id), offset).map_err(storage)?;
                legacy.remove(id.as_str()).map_err(storage)?;
            }
            chunk.len()
        };
        if moved == 0 {
            txn.delete_table(LEGACY_EVENT_IDS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        if moved > 0 {
            tracing::info!(moved, "log dedupe index: entries moved to 16-byte keys");
        }
    }
}

/// One past the largest key of a dense u64-keyed table, or its low-water mark when truncation
/// emptied it.
fn next_key<T: ReadableTable<u64, V>, V: redb::Value + 'static>(
    table: &T,
    low_water: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, LogError> {
    let low = low_water.get(name).map_err(storage)?.map_or(0, |v| v.value());
    Ok(table.last().map_err(storage)?.map_or(low, |(k, _)| (k.value() + 1).max(low)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use vigil_schemas::{EventKind, SourceKind};

    /// Knows one domain's MX.
    #[derive(Debug)]
    struct AcmeMx;

    impl Annotator for AcmeMx {
        fn mx_host(&self, domain: &str) -> Option<Arc<str>> {
            (domain == "acme.example").then(|| Arc::from("mx1.acme.example"))
        }
    }

    #[test]
    fn the_annotator_gives_an_mx_to_events_that_name_none() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap().with_annotator(Arc::new(AcmeMx));
        let to = |id: &str, domain: &str| DeliveryEvent { recipient_domain: Some(domain.into()), ..event(id) };
        let named = DeliveryEvent { mx_host: Some("mx.elsewhere.example".into()), ..to("named", "acme.example") };
        let site =
            DeliveryEvent { site: Some("ip-1->mx.kumo.example@smtp_client".into()), ..to("site", "acme.example") };
        let bare = DeliveryEvent { raw: Some(r#"{"email":"jo@acme.example"}"#.into()), ..to("bare", "acme.example") };
        let events = vec![bare, named, site, to("unknown", "other.example")];
        log.append(&AppendBatch { events, ..AppendBatch::default() }).unwrap();
        let expected = [Some("mx1.acme.example".into()), Some("mx.elsewhere.example".into()), None, None];
        let stored: Vec<Option<String>> = log.read(0, 10).unwrap().into_iter().map(|(_, e)| e.mx_host).collect();
        assert_eq!(stored, expected);
        let lean: Vec<Option<String>> =
            log.read_without_raw(0, 10).unwrap().into_iter().map(|(_, e)| e.mx_host).collect();
        assert_eq!(lean, expected, "the fast path that cuts the raw record off keeps the MX");
        assert_eq!(log.read(0, 1).unwrap()[0].1.raw.as_deref(), Some(r#"{"email":"jo@acme.example"}"#));
    }

    #[test]
    fn reading_without_raw_is_reading_with_raw_minus_raw() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let tricky = [
            None,
            Some(String::new()),
            Some(r#"{"type":"Delivery","note":",\"raw\":\"inside","x":"\\"}"#.to_owned()),
            Some("ends with a backslash \\".to_owned()),
            Some(",\"raw\":\"".to_owned()),
        ];
        let events: Vec<DeliveryEvent> = tricky
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let mut e = event(&format!("e{i}"));
                e.raw.clone_from(raw);
                e.response_text = Some(r#"550 ,"raw":"not a field" \"#.to_owned());
                e
            })
            .collect();
        log.append(&AppendBatch { events: events.clone(), ..AppendBatch::default() }).unwrap();
        let lean = log.read_without_raw(0, 10).unwrap();
        assert_eq!(lean.len(), events.len());
        for ((_, got), mut want) in lean.into_iter().zip(events) {
            want.raw = None;
            assert_eq!(got, want);
        }
    }

    #[test]
    fn bytes_whose_cut_does_not_decode_are_decoded_in_full() {
        let mut e = event("late-raw");
        e.raw = Some("r".into());
        e.sending_ip = Some("192.0.2.1".into());
        // Through a map: keys in alphabetical order, so required fields (`source`) and
        // `sending_ip` come after `raw`, and the bytes before `raw` are not an event.
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        let bytes = serde_json::to_vec(&map).unwrap();
        let decoded = decode_without_raw(&bytes, &mut Vec::new()).unwrap();
        assert_eq!(decoded.sending_ip.as_deref(), Some("192.0.2.1"), "the field after raw is not lost");
        assert_eq!(decoded.raw, None);
    }

    fn event(id: &str) -> DeliveryEvent {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        DeliveryEvent::new(id.into(), SourceKind::Kumomta, EventKind::Delivered, at, at)
    }

    fn batch(ids: &[&str]) -> AppendBatch {
        AppendBatch { events: ids.iter().map(|id| event(id)).collect(), ..AppendBatch::default() }
    }

    #[test]
    fn appends_are_dense_ordered_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let receipt = log.append(&batch(&["a", "b", "a"])).unwrap();
        assert_eq!((receipt.appended, receipt.duplicates, receipt.head), (2, 1, 2));
        let receipt = log.append(&batch(&["b", "c"])).unwrap();
        assert_eq!((receipt.appended, receipt.duplicates, receipt.head), (1, 1, 3));
        let read: Vec<_> = log.read(0, 10).unwrap().into_iter().map(|(o, e)| (o, e.event_id)).collect();
        assert_eq!(read, vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]);
        assert_eq!(log.read(2, 10).unwrap().len(), 1);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path()).unwrap();
            let mut b = batch(&["a", "b"]);
            b.checkpoints.push(("file:x".into(), b"42".to_vec()));
            b.dead_letters.push(DeadLetter::new("test", None, "bad".into(), b"{"));
            log.append(&b).unwrap();
            log.commit_offset("warehouse", 1).unwrap();
        }
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), 2);
        assert_eq!(log.committed_offset("warehouse").unwrap(), 1);
        assert_eq!(log.committed_offset("other").unwrap(), 0);
        assert_eq!(log.checkpoint("file:x").unwrap().as_deref(), Some(&b"42"[..]));
        assert_eq!(log.dead_letter_count().unwrap(), 1);
        assert_eq!(log.dead_letters(0, 10).unwrap()[0].1.reason, "bad");
        // The dedupe index survives too.
        assert_eq!(log.append(&batch(&["a"])).unwrap().duplicates, 1);
    }

    #[test]
    fn subscribers_see_the_head_move() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let mut rx = log.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        log.append(&batch(&["a"])).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        // A batch of only duplicates does not wake anyone.
        log.append(&batch(&["a"])).unwrap();
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn a_bounded_log_refuses_appends_until_its_consumer_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap().with_limit("kafka", "kafka:dead", 2);
        log.append(&batch(&["a", "b", "c"])).unwrap(); // one batch may overshoot
        let err = log.append(&batch(&["d"])).unwrap_err();
        assert!(matches!(err, LogError::Full { pending: 3, limit: 2 }), "{err}");
        // A refused append left nothing behind, and checkpoints-only batches still go through.
        assert_eq!(log.head(), 3);
        let mut only_checkpoint = AppendBatch::default();
        only_checkpoint.checkpoints.push(("file:x".into(), b"1".to_vec()));
        log.append(&only_checkpoint).unwrap();
        assert_eq!(log.head(), 3);
        assert_eq!(log.checkpoint("file:x").unwrap().as_deref(), Some(&b"1"[..]));
        log.commit_offset("kafka", 2).unwrap();
        log.append(&batch(&["d"])).unwrap();
        assert_eq!(log.head() - log.committed_offset("kafka").unwrap(), 2);
    }

    #[test]
    fn dead_letters_are_bounded_too() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap().with_limit("kafka", "kafka:dead", 2);
        let garbage = || AppendBatch {
            dead_letters: vec![DeadLetter::new("test", None, "bad".into(), b"{"); 2],
            ..AppendBatch::default()
        };
        log.append(&garbage()).unwrap();
        assert!(log.append(&garbage()).unwrap_err().is_full());
        log.commit_offset("kafka:dead", 2).unwrap();
        log.append(&garbage()).unwrap();
    }

    #[test]
    fn truncation_keeps_offsets_and_drops_the_dedupe_of_what_it_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path()).unwrap();
            let mut b = batch(&["a", "b"]);
            b.dead_letters.push(DeadLetter::new("test", None, "bad".into(), b"{"));
            log.append(&b).unwrap();
            log.truncate_before(2, 1).unwrap();
            assert!(log.read(0, 10).unwrap().is_empty());
            assert_eq!(log.dead_letter_count().unwrap(), 0);
        }
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), 2, "offsets are not reused after a restart");
        assert_eq!(log.dead_letter_head().unwrap(), 1);
        // "a" was shipped and truncated: the index forgot it, so it is appended again (the
        // consumer downstream drops the copy); "c" twice in the log is still a duplicate.
        let receipt = log.append(&batch(&["a", "c"])).unwrap();
        assert_eq!((receipt.appended, receipt.duplicates, receipt.head), (2, 0, 4));
        let receipt = log.append(&batch(&["c", "d"])).unwrap();
        assert_eq!((receipt.appended, receipt.duplicates, receipt.head), (1, 1, 5));
        assert_eq!(log.read(0, 10).unwrap()[0].0, 2);
        log.truncate_before(5, 1).unwrap();
        let txn = log.db.db().unwrap().begin_read().unwrap();
        assert_eq!(txn.open_table(EVENT_KEYS).unwrap().len().unwrap(), 0, "the index holds nothing truncated");
    }

    /// `batches` committed as one group, as the committer does with batches queued together.
    fn append_as_one_group(log: &EventLog, batches: &[AppendBatch]) -> Vec<Result<AppendReceipt, LogError>> {
        let prepared: Vec<Prepared> =
            batches.iter().map(|b| Prepared::new(b, &log.codec, &log.privacy, None)).collect();
        commit_group(&log.db.db().unwrap(), &prepared.iter().map(|b| (b, log.limit.as_ref())).collect::<Vec<_>>())
    }

    #[test]
    fn batches_committed_together_keep_their_own_receipts() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let mut with_checkpoint = batch(&["c", "a"]);
        with_checkpoint.checkpoints.push(("file:x".into(), b"7".to_vec()));
        with_checkpoint.dead_letters.push(DeadLetter::new("test", None, "bad".into(), b"{"));
        let receipts: Vec<_> = append_as_one_group(&log, &[batch(&["a", "b"]), with_checkpoint, batch(&["b", "d"])])
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                (r.appended, r.duplicates, r.dead_lettered, r.head)
            })
            .collect();
        // Exactly what three appends one after the other would have answered.
        assert_eq!(receipts, [(2, 0, 0, 2), (1, 1, 1, 3), (1, 1, 0, 4)]);
        let read: Vec<_> = log.read(0, 10).unwrap().into_iter().map(|(o, e)| (o, e.event_id)).collect();
        assert_eq!(read, [(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into())]);
        assert_eq!(log.checkpoint("file:x").unwrap().as_deref(), Some(&b"7"[..]));
        assert_eq!(log.dead_letter_count().unwrap(), 1);
    }

    #[test]
    fn a_refused_batch_in_a_group_holds_back_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap().with_limit("kafka", "kafka:dead", 2);
        let mut only_checkpoint = AppendBatch::default();
        only_checkpoint.checkpoints.push(("file:x".into(), b"1".to_vec()));
        let results = append_as_one_group(&log, &[batch(&["a", "b", "c"]), batch(&["d"]), only_checkpoint]);
        assert_eq!(results[0].as_ref().unwrap().appended, 3);
        assert!(matches!(results[1], Err(LogError::Full { pending: 3, limit: 2 })), "{:?}", results[1]);
        assert!(results[2].is_ok());
        assert_eq!(log.read(0, 10).unwrap().len(), 3);
        assert_eq!(log.checkpoint("file:x").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn many_threads_appending_at_once_lose_and_repeat_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            // Every id twice across threads: one copy is appended, one is a duplicate.
                            let id = format!("e{}", (t % 8) * 25 + i);
                            log.append(&batch(&[id.as_str()])).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let receipts: Vec<AppendReceipt> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert_eq!(receipts.iter().map(|r| r.appended).sum::<usize>(), 200);
        assert_eq!(receipts.iter().map(|r| r.duplicates).sum::<usize>(), 200);
        let mut ids: Vec<String> = log.read(0, 1000).unwrap().into_iter().map(|(_, e)| e.event_id).collect();
        assert_eq!(log.head(), 200);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200);
    }

    /// A delivery event as the KumoMTA normaliser makes them, its raw record included.
    fn realistic(i: usize) -> DeliveryEvent {
        let mut e = event(&format!("{i:032x}"));
        let domain = ["gmail.com", "yahoo.com", "outlook.com", "example.org"][i % 4];
        e.recipient = Some(format!("user{i}@{domain}"));
        e.recipient_domain = Some(domain.into());
        e.response_text = Some(format!("250 2.0.0 OK {i:x} - gsmtp"));
        e.raw = Some(format!(
            r#"{{"type":"Delivery","id":"{i:032x}","sender":"bounce@example.net","recipient":"user{i}@{domain}","queue":"{domain}","site":"ip-{}->mx.{domain}","response":{{"code":250,"content":"OK {i:x}"}},"timestamp":{}}}"#,
            i % 7,
            1_700_000_000 + i
        ));
        e
    }

    fn stored_value(log: &EventLog, offset: u64) -> Vec<u8> {
        let txn = log.db.db().unwrap().begin_read().unwrap();
        txn.open_table(EVENTS).unwrap().get(offset).unwrap().unwrap().value().to_vec()
    }

    #[test]
    fn a_large_first_batch_is_stored_compressed_and_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<DeliveryEvent> = (0..2_500).map(realistic).collect();
        let plain_bytes: usize = events.iter().map(|e| serde_json::to_vec(e).unwrap().len()).sum();
        {
            let log = EventLog::open(dir.path()).unwrap();
            log.append(&AppendBatch { events: events.clone(), ..AppendBatch::default() }).unwrap();
            assert!(log.codec.has_dictionary(), "trained on the batch itself");
            assert_eq!(stored_value(&log, 0)[0], 1, "compressed from the first event");
            let stored: usize = (0..2_500).map(|o| stored_value(&log, o).len()).sum();
            assert!(stored * 3 < plain_bytes, "{stored} stored bytes for {plain_bytes} of JSON");
            // Every reader sees the events as they were written.
            let read: Vec<DeliveryEvent> = log.read(0, 3_000).unwrap().into_iter().map(|(_, e)| e).collect();
            assert_eq!(read, events);
            let raw = log.read_raw(10, 1).unwrap();
            assert_eq!(raw[0].1, serde_json::to_vec(&events[10]).unwrap());
            let lean = log.read_without_raw(5, 1).unwrap();
            assert_eq!(lean[0].1.raw, None);
            assert_eq!(lean[0].1.recipient, events[5].recipient);
            // Truncation still finds the ids of what it drops.
            log.truncate_before(100, 0).unwrap();
            assert_eq!(
                log.append(&AppendBatch { events: events[..101].to_vec(), ..AppendBatch::default() }).unwrap().appended,
                100
            );
        }
        // The dictionary is in the log: a reopened log reads and keeps compressing.
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(log.read(2_499, 1).unwrap()[0].1, events[2_499]);
        log.append(&AppendBatch { events: vec![realistic(9_999)], ..AppendBatch::default() }).unwrap();
        assert_eq!(stored_value(&log, log.head() - 1)[0], 1);
        assert_eq!(log.read(log.head() - 1, 1).unwrap()[0].1, realistic(9_999));
    }

    #[test]
    fn a_log_fed_small_batches_trains_its_dictionary_beside_the_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        for chunk in (0..2_000).collect::<Vec<_>>().chunks(100) {
            log.append(&AppendBatch {
                events: chunk.iter().map(|&i| realistic(i)).collect(),
                ..AppendBatch::default()
            })
            .unwrap();
        }
        assert_eq!(stored_value(&log, 0)[0], b'{', "before the dictionary, events are stored as JSON");
        let trained = std::time::Instant::now();
        while !log.codec.has_dictionary() {
            assert!(trained.elapsed() < std::time::Duration::from_secs(60), "the dictionary was trained");
            std::thread::yield_now();
        }
        log.append(&batch_of_realistic(2_000..2_010)).unwrap();
        assert_eq!(stored_value(&log, 2_005)[0], 1);
        let read: Vec<DeliveryEvent> = log.read(1_995, 20).unwrap().into_iter().map(|(_, e)| e).collect();
        assert_eq!(read, (1_995..2_010).map(realistic).collect::<Vec<_>>(), "both forms read back");
    }

    fn batch_of_realistic(range: std::ops::Range<usize>) -> AppendBatch {
        AppendBatch { events: range.map(realistic).collect(), ..AppendBatch::default() }
    }

    #[test]
    fn retention_finds_the_first_offset_and_dead_letter_of_an_age() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let at = |minute: i64| DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap();
        let events: Vec<DeliveryEvent> = (0..10)
            .map(|i| {
                let mut e = event(&format!("e{i}"));
                e.ingested_at = at(i);
                e
            })
            .collect();
        let dead_letters: Vec<DeadLetter> = (0..4)
            .map(|i| {
                let mut d = DeadLetter::new("test", None, "bad".into(), b"{");
                d.received_at = at(i * 3);
                d
            })
            .collect();
        log.append(&AppendBatch { events, dead_letters, ..AppendBatch::default() }).unwrap();
        assert_eq!(log.first_offset_ingested_since(at(4)).unwrap(), 4);
        assert_eq!(log.first_offset_ingested_since(at(-5)).unwrap(), 0);
        assert_eq!(log.first_offset_ingested_since(at(60)).unwrap(), 10, "nothing that recent: the head");
        assert_eq!(log.first_dead_letter_since(at(4)).unwrap(), 2);
        log.truncate_before(4, 2).unwrap();
        assert_eq!(log.first_offset().unwrap(), 4);
        assert_eq!(log.first_offset_ingested_since(at(0)).unwrap(), 4, "from what is left");
        assert_eq!(log.first_dead_letter_since(at(0)).unwrap(), 2);
        log.commit_offset("warehouse", 7).unwrap();
        assert_eq!(log.consumer_offsets().unwrap(), [("warehouse".to_owned(), 7)]);
        assert!(log.file_bytes().unwrap() > 0);
        log.truncate_before(10, 4).unwrap();
        assert_eq!(log.first_offset().unwrap(), 10, "an emptied log starts at its head");
    }

    #[test]
    fn a_log_with_the_former_string_index_still_dedupes_after_it_is_moved() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path()).unwrap();
            log.append(&batch(&["a", "0123456789abcdef0123456789abcdef"])).unwrap();
            // Put the index back as an earlier version kept it.
            let db = log.db.db().unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(EVENT_KEYS).unwrap();
            {
                let mut legacy = txn.open_table(LEGACY_EVENT_IDS).unwrap();
                legacy.insert("a", 0).unwrap();
                legacy.insert("0123456789abcdef0123456789abcdef", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let log = EventLog::open(dir.path()).unwrap();
        let receipt = log.append(&batch(&["a", "0123456789abcdef0123456789abcdef", "b"])).unwrap();
        assert_eq!((receipt.appended, receipt.duplicates), (1, 2));
        let txn = log.db.db().unwrap().begin_read().unwrap();
        assert!(txn.open_table(LEGACY_EVENT_IDS).is_err(), "the former table is gone");
        assert_ne!(index_key("a"), index_key("b"));
        assert_eq!(index_key("0123456789abcdef0123456789abcdef"), 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    }

    proptest::proptest! {
        #[test]
        fn log_matches_a_model_of_first_occurrence_order(batches in proptest::collection::vec(
            proptest::collection::vec(0u8..20, 0..8), 1..6)) {
            let dir = tempfile::tempdir().unwrap();
            let log = EventLog::open(dir.path()).unwrap();
            let mut model: Vec<String> = Vec::new();
            for ids in &batches {
                let ids: Vec<String> = ids.iter().map(|i| format!("e{i}")).collect();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                log.append(&batch(&refs)).unwrap();
                for id in ids {
                    if !model.contains(&id) { model.push(id); }
                }
            }
            let read: Vec<String> = log.read(0, 1000).unwrap().into_iter().map(|(_, e)| e.event_id).collect();
            proptest::prop_assert_eq!(read, model);
        }
    }
}
