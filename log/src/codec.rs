//! How the log stores an event: its canonical JSON, compressed with a zstd dictionary trained
//! on this log's own events.
//!
//! One event is small (a KumoMTA record and its normalised fields, 1 to 2 KB of JSON) and is
//! committed alone or in small groups, so compressing each on its own finds little to share;
//! a dictionary carries what events have in common (the keys, the record's shape, the
//! provider names, the MTA's phrases) and takes an event to a few hundred bytes. The
//! dictionary is trained on the first [`TRAIN_AFTER`] events the log receives, so it fits
//! the user's own MTAs and relays rather than a sample shipped with Vigil; it is stored in the
//! log itself, so the log stays readable wherever it is copied.
//!
//! Stored values are either plain JSON (they start with `{`: events written before the
//! dictionary existed, and logs written by earlier versions) or `TAG_ZSTD_DICT`, the
//! dictionary's id (u16, little endian), the JSON's length (u32, little endian) and the zstd
//! frame. A log is never rewritten to change this: both forms are read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use redb::{ReadableTable, TableDefinition};

/// dictionary id -> zstd dictionary bytes.
pub(crate) const DICTIONARIES: TableDefinition<u16, &[u8]> = TableDefinition::new("dictionaries");

/// The log trains its dictionary once it holds this many events.
pub(crate) const TRAIN_AFTER: u64 = 2_000;
/// Events (the latest) the dictionary is trained on; 2 000 events of 1-2 KB are a few MB.
const TRAIN_SAMPLES: usize = 2_000;
/// zstd's guidance is a dictionary about a hundredth of its samples.
const DICTIONARY_BYTES: usize = 32 << 10;
/// zstd's default level: the write path compresses every event, in the callers' threads.
const LEVEL: i32 = 3;

const TAG_ZSTD_DICT: u8 = 1;
const HEADER: usize = 1 + 2 + 4;

/// A dictionary, with a key unique in this process (thread-local contexts are cached by it).
#[derive(Debug)]
pub(crate) struct Dictionary {
    id: u16,
    key: u64,
    bytes: Vec<u8>,
}

impl Dictionary {
    fn new(id: u16, bytes: Vec<u8>) -> Arc<Self> {
        static KEYS: AtomicU64 = AtomicU64::new(0);
        Arc::new(Self { id, key: KEYS.fetch_add(1, Ordering::Relaxed), bytes })
    }
}

/// The dictionaries of one log, shared by its handles, its committer and its readers.
#[derive(Debug, Default)]
pub(crate) struct Codec {
    /// The dictionary new events are compressed with (the newest).
    current: RwLock<Option<Arc<Dictionary>>>,
    /// Every dictionary the log holds, for reading.
    known: RwLock<HashMap<u16, Arc<Dictionary>>>,
    /// A training is under way (or failed for good until the log grows).
    training: AtomicBool,
}

/// Why a stored value did not decompress.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("compressed with dictionary {0}, which the log does not hold")]
    UnknownDictionary(u16),
    #[error("truncated header")]
    Truncated,
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
}

thread_local! {
    /// Compression and decompression contexts with a dictionary loaded, by dictionary key: a
    /// context is costly to make, and each thread uses one or two dictionaries.
    static COMPRESSORS: RefCell<HashMap<u64, zstd::bulk::Compressor<'static>>> = RefCell::new(HashMap::new());
    static DECOMPRESSORS: RefCell<HashMap<u64, zstd::bulk::Decompressor<'static>>> = RefCell::new(HashMap::new());
}

/// At most this many contexts per thread and direction (tests open many logs in one process).
const CONTEXTS_PER_THREAD: usize = 4;

impl Codec {
    /// The dictionaries stored in the log.
    pub(crate) fn load(table: &impl ReadableTable<u16, &'static [u8]>) -> Result<Self, redb::StorageError> {
        let codec = Self::default();
        for entry in table.iter()? {
            let (id, bytes) = entry?;
            codec.install(Dictionary::new(id.value(), bytes.value().to_vec()));
        }
        Ok(codec)
    }

    fn install(&self, dictionary: Arc<Dictionary>) {
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_none_or(|c| c.id < dictionary.id) {
            *current = Some(Arc::clone(&dictionary));
        }
        self.known.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(dictionary.id, dictionary);
    }

    pub(crate) fn has_dictionary(&self) -> bool {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    /// Claims the one training of this log; `false` when it is taken.
    pub(crate) fn start_training(&self) -> bool {
        !self.training.swap(true, Ordering::AcqRel)
    }

    /// The dictionary new events are compressed with, if the log has one yet.
    pub(crate) fn current(&self) -> Option<Arc<Dictionary>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// A dictionary trained on `samples` (JSON of events) to be stored with the batch it
    /// compresses, when the log has none yet and this caller claimed the training: a first
    /// large batch (a backfill, a replayed file) is then stored compressed from its first
    /// event. `None` leaves the batch to the current dictionary, or none.
    pub(crate) fn train_for_batch(&self, samples: &[&[u8]]) -> Option<Arc<Dictionary>> {
        if samples.len() < TRAIN_AFTER as usize || self.has_dictionary() || !self.start_training() {
            return None;
        }
        match train(&samples[..samples.len().min(TRAIN_SAMPLES)]) {
            Ok(bytes) => Some(Dictionary::new(1, bytes)),
            Err(error) => {
                tracing::warn!(%error, "log dictionary not trained on a large batch: stored uncompressed");
                self.training.store(false, Ordering::Release);
                None
            }
        }
    }

    /// After the commit of a batch that carried `dictionary`: readers and writers use it.
    /// When that commit failed, the training may be claimed again.
    pub(crate) fn settle(&self, dictionary: &Arc<Dictionary>, committed: bool) {
        if committed {
            self.install(Arc::clone(dictionary));
        } else {
            self.training.store(false, Ordering::Release);
        }
    }

    /// The stored form of `json`: compressed with `dictionary` when there is one and it helps.
    pub(crate) fn encode(dictionary: Option<&Arc<Dictionary>>, json: Vec<u8>) -> Vec<u8> {
        let Some(dictionary) = dictionary else { return json };
        let Ok(length) = u32::try_from(json.len()) else { return json };
        let compressed = with_context(
            &COMPRESSORS,
            dictionary,
            |d| zstd::bulk::Compressor::with_dictionary(LEVEL, d),
            |c| c.compress(&json),
        );
        match compressed {
            Ok(frame) if frame.len() + HEADER < json.len() => {
                let mut stored = Vec::with_capacity(HEADER + frame.len());
                stored.push(TAG_ZSTD_DICT);
                stored.extend_from_slice(&dictionary.id.to_le_bytes());
                stored.extend_from_slice(&length.to_le_bytes());
                stored.extend_from_slice(&frame);
                stored
            }
            // Nothing gained (or zstd failed): the JSON as it is, which always reads back.
            _ => json,
        }
    }

    /// The JSON of a stored value: `stored` itself when it is plain, else decompressed into
    /// `buf`.
    pub(crate) fn decode<'a>(&self, stored: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], DecodeError> {
        if stored.first() != Some(&TAG_ZSTD_DICT) {
            return Ok(stored);
        }
        let header = stored.get(..HEADER).ok_or(DecodeError::Truncated)?;
        let id = u16::from_le_bytes([header[1], header[2]]);
        let length = u32::from_le_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let dictionary = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or(DecodeError::UnknownDictionary(id))?;
        buf.clear();
        buf.reserve(length);
        with_context(&DECOMPRESSORS, &dictionary, zstd::bulk::Decompressor::with_dictionary, |d| {
            d.decompress_to_buffer(&stored[HEADER..], buf)
        })
        .map_err(DecodeError::Zstd)?;
        Ok(buf.as_slice())
    }

    /// Trains a dictionary on `samples` (stored values; compressed ones are skipped) and
    /// stores it under the next id; from then on new events are compressed with it.
    pub(crate) fn train_and_store(&self, db: &redb::Database, samples: &[Vec<u8>]) -> Result<u16, String> {
        let plain: Vec<&[u8]> = samples.iter().map(Vec::as_slice).filter(|s| s.first() == Some(&b'{')).collect();
        let bytes = train(&plain)?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        let id = {
            let mut table = txn.open_table(DICTIONARIES).map_err(|e| e.to_string())?;
            let id = table.last().map_err(|e| e.to_string())?.map_or(1, |(k, _)| k.value().saturating_add(1));
            table.insert(id, bytes.as_slice()).map_err(|e| e.to_string())?;
            id
        };
        txn.commit().map_err(|e| e.to_string())?;
        self.install(Dictionary::new(id, bytes));
        Ok(id)
    }
}

fn train(samples: &[&[u8]]) -> Result<Vec<u8>, String> {
    zstd::dict::from_samples(samples, DICTIONARY_BYTES).map_err(|e| format!("training: {e}"))
}

impl Dictionary {
    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Runs `work` with this thread's context for `dictionary`, made by `make` the first time.
fn with_context<C, T>(
    contexts: &'static std::thread::LocalKey<RefCell<HashMap<u64, C>>>,
    dictionary: &Dictionary,
    make: impl FnOnce(&[u8]) -> std::io::Result<C>,
    work: impl FnOnce(&mut C) -> std::io::Result<T>,
) -> std::io::Result<T> {
    contexts.with(|cell| {
        let mut contexts = cell.borrow_mut();
        if !contexts.contains_key(&dictionary.key) {
            if contexts.len() >= CONTEXTS_PER_THREAD {
                contexts.clear();
            }
            contexts.insert(dictionary.key, make(&dictionary.bytes)?);
        }
        work(contexts.get_mut(&dictionary.key).expect("inserted above"))
    })
}

/// The latest `TRAIN_SAMPLES` stored events.
pub(crate) fn samples(db: &redb::Database, events: TableDefinition<u64, &[u8]>) -> Result<Vec<Vec<u8>>, String> {
    use redb::ReadableDatabase as _;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(events).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(TRAIN_SAMPLES);
    for entry in table.iter().map_err(|e| e.to_string())?.rev().take(TRAIN_SAMPLES) {
        let (_, value) = entry.map_err(|e| e.to_string())?;
        out.push(value.value().to_vec());
    }
    Ok(out)
}
