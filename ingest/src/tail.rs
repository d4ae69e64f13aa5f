//! Tailing log files into the log of record: a KumoMTA log directory
//! (`kumo.configure_local_logs`), a Postfix maillog, an Exim main log, PowerMTA accounting files.
//! A configured path is one file or a directory of files; each line goes through the format's
//! [`LineNormaliser`](crate::lines::LineNormaliser).
//!
//! kumod writes zstd-compressed JSONL segments named `YYYYMMDD-HHMMSS[_suffix]`, so name order
//! is time order; users also drop plain `.jsonl` files. Each file is read from its checkpoint:
//! the number of (decompressed) bytes of complete lines already in the log. The checkpoint is
//! committed in the same log transaction as the events of those lines, so a restart resumes
//! exactly where the log stands: nothing lost, nothing repeated.
//!
//! A zstd segment still being written ends in an incomplete frame; the tail reads every
//! complete line before it and comes back when the file grows. Because a zstd stream cannot be
//! entered in the middle, a grown segment is decompressed again from its start and the
//! already-committed bytes are skipped: a cost in CPU, not in correctness. Plain files are
//! entered by seeking.
//!
//! In a directory, logrotate's compressed history (`maillog.2.gz`, `maillog.3.zst`) is read the
//! same way, told by its first bytes: each line once. Compressions the tail cannot read (bzip2,
//! xz, lz4, compress) are skipped with one log line, and [`TailConfig::skip_compressed_files`]
//! skips every file named as a compressed rotation.
//!
//! Correlating formats (Postfix, Exim) keep their per-message state in memory per file; after a
//! restart, lines before the checkpoint are not read again, so a message in flight across the
//! restart loses the sender and size its earlier lines gave. A PowerMTA file's header line is
//! read again on restart so its columns are known.
//!
//! # Rotation of a one-file tail
//! A configured file is followed by device and inode, which its checkpoint stores, and every
//! line of it is counted once across rotations:
//! - Renamed (logrotate's `create`, a syslog daemon's own rotation): the old file is found
//!   among the siblings by its inode (`maillog.1`, `maillog-20261207`, whatever the name) and
//!   read from the checkpoint to its end, then the new file from 0. The writer keeps writing
//!   to the renamed file until it is told to reopen, so the old file is followed (the
//!   checkpoint lists it, with its offset) until the new file has lines: a writer writes its
//!   files in order, so from then on the old one is complete.
//! - Copied, then truncated in place (`copytruncate`): the file shrank below the checkpoint or
//!   starts differently. The rest of what was ours is read from the copy, the newest sibling
//!   named like a rotation that starts as the file did, then the new content from 0. A scan
//!   reads only what the file held when it began and checks, before it commits, that the file
//!   was not truncated under it; if it was, the batch is dropped and read again from the
//!   copy. Lines written between logrotate's copy and its truncation are in neither file:
//!   logrotate loses them, as its manual says.
//! - Two rotations between scans: the generations written after the one the checkpoint knew
//!   (newer modification time, named like a rotation) are read whole, oldest first.
//!
//! Not followed: a rotated file compressed (`compress` without `delaycompress`) or moved to
//! another directory (`olddir`) before the tail read its end; the tail logs it. In a
//! directory, each file is tailed by its name (rotations there are new names, read again and
//! deduplicated by the log's event ids).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use vigil_log::{EventLog, LogError};
use vigil_schemas::DeadLetter;
use vigil_schemas::deadletter::DEAD_LETTER_MAX_RAW_BYTES;

use crate::direct::{DirectShipper, Spilled};
use crate::lines::{Format, LineNormaliser};

/// The first bytes of a zstd frame; how a compressed segment is told from plain JSONL.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The first bytes of a gzip member (logrotate's default `compress`).
pub const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];

/// The names logrotate and its `compresscmd`s give compressed rotations.
const COMPRESSED_SUFFIXES: [&str; 6] = [".gz", ".zst", ".bz2", ".xz", ".lz4", ".Z"];

/// How a file's bytes are stored, told by its first bytes: kumod's segments have no
/// extension, and a name can lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Plain,
    Zstd,
    Gzip,
    /// A compression the tail cannot read (named): the file is skipped, not dead-lettered
    /// line by line as binary garbage.
    Unreadable(&'static str),
}

impl Encoding {
    fn of(file: &mut File) -> io::Result<Self> {
        let mut magic = [0u8; 6];
        let mut filled = 0;
        while filled < magic.len() {
            match file.read(&mut magic[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.seek(SeekFrom::Start(0))?;
        let magic = &magic[..filled];
        Ok(if magic.starts_with(&ZSTD_MAGIC) {
            Self::Zstd
        } else if magic.starts_with(&GZIP_MAGIC) {
            Self::Gzip
        } else if magic.starts_with(b"BZh") {
            Self::Unreadable("bzip2")
        } else if magic.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Unreadable("xz")
        } else if magic.starts_with(&[0x04, 0x22, 0x4D, 0x18]) {
            Self::Unreadable("lz4")
        } else if magic.starts_with(&[0x1F, 0x9D]) {
            Self::Unreadable("compress")
        } else {
            Self::Plain
        })
    }

    /// Compressed streams cannot be entered in the middle: they are decompressed from their
    /// start and the committed bytes skipped.
    fn is_compressed(self) -> bool {
        self != Self::Plain
    }

    /// A reader of the decompressed lines of `file` (positioned at its start).
    fn reader(self, file: File) -> io::Result<Box<dyn BufRead>> {
        Ok(match self {
            Self::Zstd => Box::new(BufReader::new(zstd::stream::read::Decoder::new(file)?)),
            // logrotate's gzip writes one member; `cat a.gz b.gz` style files have several.
            Self::Gzip => Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file))),
            Self::Plain | Self::Unreadable(_) => Box::new(BufReader::new(file)),
        })
    }
}

/// How the tail reads a file or a directory.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// A file, or a directory whose files are read in name order.
    pub path: PathBuf,
    pub format: Format,
    /// How often the directory is scanned for new files and growth.
    pub poll_interval: Duration,
    /// Lines longer than this become dead letters instead of events.
    pub max_line_bytes: usize,
    /// Upper bound of one log append, in bytes of input; bounds the tail's memory.
    pub max_batch_bytes: usize,
    /// What the lines leave out: their time zone, Postfix's egress.
    pub settings: crate::lines::LineSettings,
    /// In a directory, skip files named as compressed rotations (`.gz`, `.zst`, `.bz2`, `.xz`,
    /// `.lz4`, `.Z`) with one log line each, instead of reading the `.gz` and `.zst` ones: for a
    /// logrotate history whose lines are already in the log. KumoMTA's zstd segments carry no
    /// such name and are read either way.
    pub skip_compressed_files: bool,
}

impl TailConfig {
    /// Defaults suited to kumod's segments: 1 s scans, 1 MiB lines, 8 MiB batches.
    #[must_use]
    pub fn new(path: PathBuf, format: Format) -> Self {
        Self {
            path,
            format,
            poll_interval: Duration::from_secs(1),
            max_line_bytes: 1024 * 1024,
            max_batch_bytes: 8 * 1024 * 1024,
            settings: crate::lines::LineSettings::default(),
            skip_compressed_files: false,
        }
    }
}

/// Why a scan stopped. The next scan resumes from the last committed checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Spilled(#[from] Spilled),
}

/// Per-file progress, stored in the log next to the events it covers.
///
/// Checkpoints written before rotation following (issue 31) have no `file`, `rotated` or
/// `emptied_at`: they read as the file now at the path, as they always meant.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Checkpoint {
    /// Bytes of the (decompressed) stream whose lines are in the log.
    offset: u64,
    /// File length when the file was last read to its end; unchanged length means nothing new.
    seen_len: u64,
    /// Hash of the file's first `head_len` bytes (up to [`HEAD_BYTES`]): a file replaced or
    /// truncated and rewritten under the same name (copy-truncate rotation) starts
    /// differently, even when it has already grown past, or back to, the old length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head: Option<u128>,
    #[serde(default)]
    head_len: u16,
    /// The file `offset` counts in, by device and inode: a rename keeps it, so a one-file tail
    /// finds its file again among the siblings after a rotation renamed it away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<FileId>,
    /// Earlier generations of a one-file tail's path still being read to their end, oldest
    /// first: rotated away (renamed, or copied before a truncation) while lines of theirs were
    /// unread, or still being written by a writer not yet told to reopen the path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rotated: Vec<Rotated>,
    /// When the file was last seen empty (its modification time then): a copy made of it
    /// after that, before any of its lines were read, holds lines that are nowhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emptied_at: Option<SystemTime>,
}

/// A file's identity on its filesystem: kept by a rename, not by a copy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[cfg(unix)]
    #[allow(clippy::unnecessary_wraps)] // `None` where there are no inodes
    fn of(metadata: &std::fs::Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        Some(Self { dev: metadata.dev(), ino: metadata.ino() })
    }

    /// Without inodes a rename cannot be followed: the tail behaves as before issue 31.
    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> Option<Self> {
        None
    }
}

/// An earlier generation of the path and how far into it the log stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Rotated {
    file: FileId,
    offset: u64,
}

/// Where a read advances the checkpoint: the path's file, or a rotated generation.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Current,
    Rotated(usize),
}

impl Checkpoint {
    fn offset_mut(&mut self, slot: Slot) -> &mut u64 {
        match slot {
            Slot::Current => &mut self.offset,
            Slot::Rotated(i) => &mut self.rotated[i].offset,
        }
    }

    fn is_rotated(&self, id: FileId) -> bool {
        self.rotated.iter().any(|r| r.file == id)
    }
}

/// Another regular file in the directory of a one-file tail's path.
#[derive(Debug)]
struct Sibling {
    path: PathBuf,
    id: FileId,
    len: u64,
    modified: SystemTime,
    /// Named as a rotation of the path (`maillog.1`, `maillog-20261207`) and not compressed:
    /// a candidate for a copy or a generation nobody has read yet.
    rotation: bool,
}

/// The regular files beside `path` (not `path` itself). Bounded by the directory.
fn siblings(path: &Path) -> io::Result<Vec<Sibling>> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else { return Ok(Vec::new()) };
    let name = name.to_string_lossy();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if entry_name == name {
            continue;
        }
        // Follows symbolic links, as opening the path does.
        let Ok(metadata) = std::fs::metadata(entry.path()) else { continue };
        let (Some(id), Ok(modified)) = (FileId::of(&metadata), metadata.modified()) else { continue };
        if !metadata.is_file() {
            continue;
        }
        let rotation = entry_name.starts_with(name.as_ref())
            && !COMPRESSED_SUFFIXES.iter().any(|suffix| entry_name.ends_with(suffix));
        found.push(Sibling { path: entry.path(), id, len: metadata.len(), modified, rotation });
    }
    Ok(found)
}

/// How many leading bytes identify a file.
const HEAD_BYTES: usize = 256;

/// The hash of a file's first `len` bytes, or `None` if it is shorter.
fn head_of(file: &mut File, len: usize) -> io::Result<Option<u128>> {
    let mut head = vec![0u8; len];
    file.seek(SeekFrom::Start(0))?;
    let complete = file.read_exact(&mut head).is_ok();
    file.seek(SeekFrom::Start(0))?;
    Ok(complete.then(|| hash_head(&head)))
}

/// Up to `len` bytes of the file's start (fewer when it is shorter).
fn first_bytes(file: &mut File, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(len);
    file.seek(SeekFrom::Start(0))?;
    (&mut *file).take(len as u64).read_to_end(&mut bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(bytes)
}

fn hash_head(head: &[u8]) -> u128 {
    let hash = blake3::hash(head);
    let first: [u8; 16] = hash.as_bytes()[..16].try_into().expect("16 of 32 bytes");
    u128::from_le_bytes(first)
}

/// Whether the path's file still holds what a scan read from it. copytruncate truncates the
/// file in place and the writer refills it from 0, also while a scan reads: bytes read after
/// that belong to the next generation, not at the offsets the scan counts. A scan reads only
/// what the file held when it began (its length then), and before committing checks that the
/// file still starts as it did then (its head) and is no shorter than what was read.
#[derive(Debug)]
struct Unchanged {
    file: File,
    head: Option<u128>,
    head_len: u16,
}

impl Unchanged {
    #[cfg(unix)]
    fn holds(&self, offset: u64) -> io::Result<bool> {
        use std::os::unix::fs::FileExt as _;
        if self.file.metadata()?.len() < offset {
            return Ok(false);
        }
        let mut head = vec![0u8; usize::from(self.head_len)];
        // Read at a position: the scan's reader shares this handle's offset.
        if self.file.read_exact_at(&mut head, 0).is_err() {
            return Ok(false);
        }
        Ok(self.head == Some(hash_head(&head)))
    }

    /// Without positioned reads the check would move the reader: only the length is checked.
    #[cfg(not(unix))]
    fn holds(&self, offset: u64) -> io::Result<bool> {
        Ok(self.file.metadata()?.len() >= offset)
    }
}

/// Input bytes per batch sent straight to Kafka: small, so sending starts while the rest of a
/// large file is still being read.
const DIRECT_BATCH_BYTES: usize = 256 * 1024;

/// Reads log files into the log of record.
pub struct Tailer {
    config: TailConfig,
    log: EventLog,
    /// One normaliser per file: correlation state belongs to a file.
    normalisers: std::sync::Mutex<std::collections::HashMap<PathBuf, Box<dyn LineNormaliser>>>,
    /// The ingest role's direct path to Kafka, when there is one.
    direct: Option<Arc<DirectShipper>>,
    /// Per file, how far direct sends got and in which epoch: ahead of the stored checkpoint,
    /// which only moves once the broker acknowledged. Good only in that epoch.
    sent: std::sync::Mutex<std::collections::HashMap<PathBuf, (u64, Checkpoint)>>,
    /// Files skipped (by name or as unreadable), so each is reported once, not every scan.
    skipped: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Tailer {
    #[must_use]
    pub fn new(config: TailConfig, log: EventLog) -> Self {
        Self {
            config,
            log,
            normalisers: std::sync::Mutex::new(std::collections::HashMap::new()),
            direct: None,
            sent: std::sync::Mutex::new(std::collections::HashMap::new()),
            skipped: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Sends batches straight to Kafka through `direct` while the broker acknowledges, instead
    /// of appending them to the log (the ingest role's buffer); see [`crate::direct`].
    #[must_use]
    pub fn with_direct(mut self, direct: Arc<DirectShipper>) -> Self {
        self.direct = Some(direct);
        self
    }

    /// The dead-letter source and checkpoint prefix of this tail's format.
    fn source(&self) -> &'static str {
        match self.config.format {
            Format::Kumomta => "kumomta-file",
            Format::Postfix => "postfix-file",
            Format::Exim => "exim-file",
            Format::Powermta => "powermta-file",
        }
    }

    /// Scans until `shutdown` is cancelled. Errors are logged and the scan retried at the next
    /// tick, from the last checkpoint.
    pub async fn run(self, shutdown: CancellationToken) {
        let tailer = std::sync::Arc::new(self);
        let mut tick = tokio::time::interval(tailer.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let scan = std::sync::Arc::clone(&tailer);
            match tokio::task::spawn_blocking(move || scan.scan_once()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(records)) => tracing::debug!(records, path = %tailer.config.path.display(), "tailed"),
                // The shipping buffer is full: the tail pauses (re-reads from its checkpoint at
                // the next tick) until the forwarder has drained it.
                Ok(Err(TailError::Log(error))) if error.is_full() => tracing::debug!(%error, "tail paused"),
                // Read again from the stored checkpoint, into the buffer, at the next tick.
                Ok(Err(TailError::Spilled(spilled))) => tracing::debug!(%spilled, "tail spilled"),
                Ok(Err(error)) => tracing::warn!(%error, "log directory scan failed; retrying from the checkpoint"),
                Err(error) => tracing::error!(%error, "log directory scan panicked"),
            }
        }
    }

    /// One pass: the file, or every file of the directory, oldest name first. Returns the
    /// number of lines committed (events and dead letters).
    ///
    /// # Errors
    /// When the directory or a file cannot be read, or the log cannot append.
    pub fn scan_once(&self) -> Result<usize, TailError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| TailError::Io { path, source }
        };
        let root = &self.config.path;
        let one_file = match std::fs::metadata(root) {
            Ok(metadata) => metadata.is_file(),
            Err(error) if error.kind() == io::ErrorKind::NotFound && self.was_one_file(root)? => true,
            Err(error) => return Err(io_err(root)(error)),
        };
        let mut files: Vec<PathBuf> = if one_file {
            vec![root.clone()]
        } else {
            std::fs::read_dir(root)
                .map_err(io_err(root))?
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
                .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
                .map(|entry| entry.path())
                .collect()
        };
        files.sort();
        if !one_file && self.config.skip_compressed_files {
            files.retain(|path| {
                let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let compressed = COMPRESSED_SUFFIXES.iter().any(|suffix| name.ends_with(suffix));
                if compressed {
                    self.skip_once(path, "named as a compressed rotation (skip_compressed_files)");
                }
                !compressed
            });
        }
        // Files gone from the directory take their parser state with them.
        let present: std::collections::HashSet<&PathBuf> = files.iter().collect();
        self.lock_skipped().retain(|path| path.exists());
        self.normalisers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|path, _| present.contains(path));
        self.lock_sent().retain(|path, _| present.contains(path));
        let (mut lines, mut lag) = (0, 0);
        for path in files {
            let (read, behind) = self.scan_file(&path, one_file).map_err(|e| match e {
                FileError::Io(source) => io_err(&path)(source),
                FileError::Log(log) => TailError::Log(log),
                FileError::Spilled(spilled) => TailError::Spilled(spilled),
            })?;
            lines += read;
            lag += behind;
        }
        let label = crate::metrics::SourceLabel { source: self.source().to_owned() };
        crate::metrics::ingest_metrics()
            .file_lag_bytes
            .get_or_create(&label)
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        Ok(lines)
    }

    /// The checkpoint key of `path`.
    fn key(&self, path: &Path) -> String {
        format!("{}:{}", self.source(), path.display())
    }

    /// Whether `path` was tailed as one file before: it is then one file still while a
    /// rotation has renamed it away and not yet created it again.
    fn was_one_file(&self, path: &Path) -> Result<bool, LogError> {
        Ok(self.lock_sent().contains_key(path) || self.log.checkpoint(&self.key(path))?.is_some())
    }

    /// Reads one file from its checkpoint; with `follow` (a one-file tail) also what rotations
    /// took from the path: the rest of a renamed or copied-away generation first, then the new
    /// file from its start. Returns the lines committed and the bytes still unread (0 for
    /// compressed segments, whose compressed size says nothing about lines).
    fn scan_file(&self, path: &Path, follow: bool) -> Result<(usize, u64), FileError> {
        let key = self.key(path);
        // Where direct sends of the current epoch got, else where the log (buffer) stands.
        let live = self.direct.as_ref().map(|d| d.epoch());
        let sent = self.lock_sent().get(path).cloned().filter(|(epoch, _)| Some(*epoch) == live);
        let epoch = sent.as_ref().map(|(epoch, _)| *epoch);
        let mut checkpoint: Checkpoint = match sent {
            Some((_, checkpoint)) => checkpoint,
            None => {
                self.log.checkpoint(&key)?.and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
            }
        };
        let mut current = match File::open(path) {
            Ok(file) => Some(file),
            // Between a rotation's rename and the new file's creation: the renamed one may
            // still have lines to read.
            Err(error) if follow && error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error.into()),
        };
        if current.is_none() && checkpoint.file.is_none() && checkpoint.rotated.is_empty() {
            return Ok((0, 0));
        }
        // The path's file as it stands before anything is read. A writer writes its files in
        // order, so once it has written to this one it is done with the rotated ones.
        let (id, len, modified) = match &current {
            Some(file) => {
                let metadata = file.metadata()?;
                (FileId::of(&metadata), metadata.len(), metadata.modified().ok())
            }
            None => (None, 0, None),
        };
        let encoding = match current.as_mut() {
            Some(file) => Encoding::of(file)?,
            None => Encoding::Plain,
        };
        if let Encoding::Unreadable(compression) = encoding {
            self.skip_once(path, compression);
            return Ok((0, 0));
        }
        let compressed = encoding.is_compressed();
        let follow = follow && !compressed;
        // One read of the file's start gives both the head the checkpoint is compared with and
        // the one this scan stores and checks its reads against, so a truncation can only
        // fall before both (and be seen now) or after both (and be seen by `Unchanged`).
        let prefix = match current.as_mut() {
            Some(file) => first_bytes(file, HEAD_BYTES)?,
            None => Vec::new(),
        };
        let head_over = |len: u16| prefix.get(..usize::from(len)).map(hash_head);
        let head_now = head_over(checkpoint.head_len);
        let head_len = u16::try_from(len.min(HEAD_BYTES as u64)).unwrap_or(0);
        let head = head_over(head_len);
        let moved = current.is_none() || (checkpoint.file.is_some() && id != checkpoint.file);
        let rewritten = checkpoint.head.is_some() && checkpoint.head != head_now;
        let shrunk = if compressed { len < checkpoint.seen_len } else { len < checkpoint.offset };
        if !moved && !rewritten && !shrunk && len == checkpoint.seen_len && checkpoint.rotated.is_empty() {
            return Ok((0, 0));
        }

        let mut listed: Option<Vec<Sibling>> = None;
        let mut lost_predecessor = false;
        if follow && (moved || rewritten || shrunk) {
            let mut siblings = listed.insert(siblings(path)?);
            // A directory listed while logrotate renames in it may miss the renamed entry:
            // one more look before taking a file for gone.
            if moved && checkpoint.file.is_some_and(|old| !siblings.iter().any(|s| s.id == old)) {
                siblings = listed.insert(self::siblings(path)?);
            }
            let predecessor = if moved {
                // Renamed away (logrotate's `create`, syslog's own rotation): by its inode.
                checkpoint.file.and_then(|old| siblings.iter().find(|s| s.id == old))
            } else {
                // Copied, then truncated in place (`copytruncate`); or renamed, in a
                // checkpoint from before file ids: by how it starts.
                copy_of(&checkpoint, id, siblings)?
            };
            match predecessor {
                Some(predecessor) => {
                    tracing::info!(
                        file = %path.display(),
                        rotated = %predecessor.path.display(),
                        "file rotated: reading the rest of the rotated file, then the new one from its start"
                    );
                    if !checkpoint.is_rotated(predecessor.id) {
                        checkpoint.rotated.push(Rotated { file: predecessor.id, offset: checkpoint.offset });
                    }
                    push_newer_generations(&mut checkpoint, siblings, id, predecessor.modified, false);
                }
                None => {
                    tracing::warn!(
                        file = %path.display(),
                        "file was replaced or truncated and what it was is not beside it (deleted, compressed or moved away): reading the new file from its start; lines written to the old one since the last scan are lost"
                    );
                    lost_predecessor = true;
                }
            }
            checkpoint =
                Checkpoint { file: id, rotated: std::mem::take(&mut checkpoint.rotated), ..Checkpoint::default() };
        } else if follow
            && checkpoint.head_len == 0
            && len > 0
            && let Some(emptied_at) = checkpoint.emptied_at
        {
            // Seen empty, now written: nothing of it was read, so a copy made of it meanwhile
            // (copytruncate twice between two scans) holds lines that are nowhere else.
            let siblings = listed.insert(siblings(path)?);
            push_newer_generations(&mut checkpoint, siblings, id, emptied_at, true);
        } else if moved || rewritten || shrunk {
            tracing::warn!(file = %path.display(), "file was truncated or replaced since it was last read; reading it again from the start");
            checkpoint = Checkpoint::default();
            lost_predecessor = true;
        }

        let mut normalisers = self.normalisers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if lost_predecessor {
            normalisers.remove(path);
        }
        // A fresh normaliser entering a PowerMTA file mid-way needs its header line.
        let mut fresh = !normalisers.contains_key(path);
        let normaliser = normalisers
            .entry(path.to_owned())
            .or_insert_with(|| self.config.format.normaliser_with(&self.config.settings));
        let batch_bytes = if self.direct.is_some() {
            self.config.max_batch_bytes.min(DIRECT_BATCH_BYTES)
        } else {
            self.config.max_batch_bytes
        };
        let mut scan =
            Scan { path, key, checkpoint, pending: PendingBatch::default(), committed: 0, epoch, batch_bytes };
        let mut behind = 0;

        if !scan.checkpoint.rotated.is_empty() {
            let mut siblings = match listed {
                Some(listed) => listed,
                None => siblings(path)?,
            };
            if scan.checkpoint.rotated.iter().any(|r| !siblings.iter().any(|s| s.id == r.file)) {
                siblings = self::siblings(path)?; // one more look, as above
            }
            scan.checkpoint.rotated.retain(|rotated| {
                let found = siblings.iter().any(|s| s.id == rotated.file);
                if !found {
                    tracing::info!(file = %path.display(), ?rotated, "a rotated generation is gone (deleted or compressed); no longer following it");
                }
                found
            });
            // Generations not read this time (renamed again since the listing): followed on,
            // found at the next scan by their inode.
            let mut unread = vec![false; scan.checkpoint.rotated.len()];
            for (i, unread) in unread.iter_mut().enumerate() {
                let Rotated { file: rotated, offset } = scan.checkpoint.rotated[i];
                let opened = siblings
                    .iter()
                    .find(|s| s.id == rotated)
                    .and_then(|sibling| Some((sibling, File::open(&sibling.path).ok()?)));
                let Some((sibling, mut file)) = opened else {
                    *unread = true;
                    continue;
                };
                let metadata = file.metadata()?;
                if FileId::of(&metadata) != Some(rotated) {
                    *unread = true;
                    continue;
                }
                if std::mem::take(&mut fresh) && offset > 0 {
                    self.read_header(normaliser.as_mut(), &sibling.path, Encoding::Plain);
                }
                file.seek(SeekFrom::Start(offset))?;
                let name = file_name(&sibling.path);
                let input = Input {
                    reader: &mut BufReader::new(file),
                    compressed: false,
                    slot: Slot::Rotated(i),
                    name: &name,
                    // A renamed generation is only appended to; a copy is never written again.
                    limit: u64::MAX,
                    unchanged: None,
                };
                self.read_lines(&mut scan, normaliser.as_mut(), input)?;
                behind += metadata.len().saturating_sub(scan.checkpoint.rotated[i].offset);
            }
            if len > 0 {
                let mut unread = unread.into_iter();
                scan.checkpoint.rotated.retain(|_| unread.next().unwrap_or(false));
            }
        }

        if let Some(mut file) = current {
            scan.checkpoint.file = id;
            scan.checkpoint.head_len = head_len;
            scan.checkpoint.head = head;
            let unchanged = if compressed {
                None
            } else {
                let (head, head_len) = (scan.checkpoint.head, scan.checkpoint.head_len);
                Some(Unchanged { file: file.try_clone()?, head, head_len })
            };
            let offset = scan.checkpoint.offset;
            if std::mem::take(&mut fresh) && offset > 0 {
                self.read_header(normaliser.as_mut(), path, encoding);
            }
            let reader: Option<Box<dyn BufRead>> = if compressed {
                let mut decoder = encoding.reader(file)?;
                let skipped = io::copy(&mut (&mut decoder).take(offset), &mut io::sink())?;
                // Fewer bytes than before: the next growth will tell.
                (skipped == offset).then_some(decoder)
            } else {
                file.seek(SeekFrom::Start(offset))?;
                Some(Box::new(BufReader::new(file)))
            };
            if let Some(mut reader) = reader {
                let input = Input {
                    reader: reader.as_mut(),
                    compressed,
                    slot: Slot::Current,
                    name: &file_name(path),
                    // A segment is never rewritten; a plain file can be, by copytruncate.
                    limit: if compressed { u64::MAX } else { len },
                    unchanged: unchanged.as_ref(),
                };
                let read = self.read_lines(&mut scan, normaliser.as_mut(), input)?;
                let still = match &unchanged {
                    Some(unchanged) => unchanged.holds(scan.checkpoint.offset)?,
                    None => true,
                };
                if !read || !still {
                    tracing::debug!(file = %path.display(), "file rewritten while it was read; reading again from the checkpoint");
                    return Ok((scan.committed, behind));
                }
                scan.checkpoint.seen_len = len;
                scan.checkpoint.emptied_at = if len == 0 { modified } else { None };
                if !compressed {
                    behind += len.saturating_sub(scan.checkpoint.offset);
                }
            }
        }
        let checkpoint = scan.checkpoint.clone();
        scan.committed += self.commit(path, &scan.key, &mut scan.pending, checkpoint, &mut scan.epoch)?;
        Ok((scan.committed, behind))
    }

    /// Reads the complete lines of `input` into the scan's batch, advancing the checkpoint at
    /// its slot, and commits whenever the batch is full. Returns `false` when the file was
    /// rewritten under the read (see [`Unchanged`]): the batch is then dropped, not committed,
    /// and the next scan starts again from the last checkpoint.
    fn read_lines(
        &self,
        scan: &mut Scan<'_>,
        normaliser: &mut dyn LineNormaliser,
        input: Input<'_>,
    ) -> Result<bool, FileError> {
        let Input { reader, compressed, slot, name, limit, unchanged } = input;
        let source = self.source();
        let mut buf = Vec::new();
        while *scan.checkpoint.offset_mut(slot) < limit {
            let line = match read_bounded_line(reader, self.config.max_line_bytes, &mut buf) {
                Ok(line) => line,
                // A zstd segment still being written ends mid-frame (a .gz being written, mid
                // member); what came before is whole.
                Err(error) if compressed => {
                    tracing::debug!(%error, file = %scan.path.display(), "segment ends in an incomplete frame");
                    break;
                }
                Err(error) => return Err(error.into()),
            };
            let offset = scan.checkpoint.offset_mut(slot);
            let start = *offset;
            match line {
                Line::End => break,
                Line::Complete { consumed } => {
                    *offset += consumed;
                    let record = buf.trim_ascii();
                    if !record.is_empty() {
                        scan.pending.bytes += record.len();
                        let location = format!("{name}:{start}");
                        // A rejected line is in the batch as a dead letter, in line order.
                        let _ = crate::lines::push_into_batch(
                            &mut scan.pending.batch,
                            normaliser,
                            source,
                            location,
                            record,
                            Utc::now(),
                        );
                        scan.pending.lines += 1;
                    }
                }
                Line::TooLong { consumed } => {
                    *offset += consumed;
                    let reason =
                        format!("line of {consumed} bytes exceeds the limit of {} bytes", self.config.max_line_bytes);
                    let mut letter = DeadLetter::new(source, Some(format!("{name}:{start}")), reason, &buf);
                    letter.raw_len = consumed;
                    scan.pending.batch.dead_letters.push(letter);
                    scan.pending.lines += 1;
                }
            }
            if scan.pending.bytes >= scan.batch_bytes {
                if let Some(unchanged) = unchanged
                    && !unchanged.holds(*scan.checkpoint.offset_mut(slot))?
                {
                    return Ok(false);
                }
                // Not read to the end: the next scan must not take an unchanged length for
                // "nothing new".
                let checkpoint = Checkpoint { seen_len: 0, ..scan.checkpoint.clone() };
                scan.committed += self.commit(scan.path, &scan.key, &mut scan.pending, checkpoint, &mut scan.epoch)?;
            }
        }
        Ok(true)
    }

    /// A PowerMTA file entered mid-way: its header line names the columns. Best effort: a
    /// file that cannot be read here fails the read that follows, with its error.
    fn read_header(&self, normaliser: &mut dyn LineNormaliser, path: &Path, encoding: Encoding) {
        if self.config.format != Format::Powermta {
            return;
        }
        let Ok(mut first) = File::open(path).and_then(|file| encoding.reader(file)) else { return };
        let mut header = Vec::new();
        if let Ok(Line::Complete { .. }) = read_bounded_line(first.as_mut(), self.config.max_line_bytes, &mut header) {
            let _ = normaliser.push_line(&String::from_utf8_lossy(&header), Utc::now());
        }
    }

    /// Logs once that `path` is not read, and why.
    fn skip_once(&self, path: &Path, why: &str) {
        if self.lock_skipped().insert(path.to_owned()) {
            tracing::info!(file = %path.display(), why, "not reading this file");
        }
    }

    fn lock_skipped(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PathBuf>> {
        self.skipped.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_sent(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, (u64, Checkpoint)>> {
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits a batch: straight to Kafka when the direct path takes it, else into the log.
    /// `epoch` is the direct epoch this scan of the file is in, if any: once a file's lines went
    /// direct, its later batches must too (or fail with [`Spilled`]), because a batch committed
    /// to the log would store a checkpoint past events the broker has not acknowledged.
    fn commit(
        &self,
        path: &Path,
        key: &str,
        pending: &mut PendingBatch,
        checkpoint: Checkpoint,
        epoch: &mut Option<u64>,
    ) -> Result<usize, FileError> {
        let direct_epoch = match (*epoch, &self.direct) {
            (Some(epoch), _) => Some(epoch),
            (None, Some(direct)) => direct.accepting()?,
            (None, None) => None,
        };
        let PendingBatch { mut batch, lines, bytes } = std::mem::take(pending);
        let observation = crate::metrics::BatchObservation::of(&batch);
        let stored = serde_json::to_vec(&checkpoint).expect("checkpoint serialises");
        if let (Some(direct), Some(in_epoch)) = (&self.direct, direct_epoch) {
            let receipt = vigil_log::AppendReceipt {
                appended: batch.events.len(),
                dead_lettered: batch.dead_letters.len(),
                ..vigil_log::AppendReceipt::default()
            };
            direct.ship(in_epoch, batch.events, batch.dead_letters, key.to_owned(), stored)?;
            self.lock_sent().insert(path.to_owned(), (in_epoch, checkpoint));
            *epoch = Some(in_epoch);
            observation.committed(self.source(), lines as u64, bytes as u64, &receipt);
            return Ok(lines);
        }
        batch.checkpoints.push((key.to_owned(), stored));
        let receipt = self.log.append(&batch)?;
        self.lock_sent().remove(path);
        observation.committed(self.source(), lines as u64, bytes as u64, &receipt);
        if receipt.dead_lettered > 0 {
            tracing::warn!(file = key, dead_letters = receipt.dead_lettered, "lines rejected to the dead-letter store");
        }
        Ok(lines)
    }
}

/// What [`Tailer::read_lines`] reads: one file (or a rotated generation of it) from its offset.
struct Input<'r> {
    reader: &'r mut dyn BufRead,
    /// A compressed stream ends mid-frame while it is being written: not an error.
    compressed: bool,
    slot: Slot,
    /// The file's name, for dead letters' locations.
    name: &'r str,
    /// Read no line that starts at or after this offset: what the file held when the scan
    /// began.
    limit: u64,
    unchanged: Option<&'r Unchanged>,
}

/// One file's scan in progress: where it stands and what is read but not yet committed.
struct Scan<'a> {
    path: &'a Path,
    key: String,
    checkpoint: Checkpoint,
    pending: PendingBatch,
    committed: usize,
    /// The direct epoch this scan's batches went to, if any (see [`Tailer::commit`]).
    epoch: Option<u64>,
    batch_bytes: usize,
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The newest rotation-named sibling that starts as the path's file did when last read: the
/// copy copytruncate made of it (or, for a checkpoint from before file ids, the file renamed
/// away). `None` when nothing was read of it (an empty start matches every file).
fn copy_of<'s>(
    checkpoint: &Checkpoint,
    current: Option<FileId>,
    siblings: &'s [Sibling],
) -> io::Result<Option<&'s Sibling>> {
    let (Some(head), len) = (checkpoint.head, checkpoint.head_len) else { return Ok(None) };
    if len == 0 {
        return Ok(None);
    }
    let mut newest: Option<&Sibling> = None;
    let candidates = siblings
        .iter()
        .filter(|s| s.rotation && Some(s.id) != current && !checkpoint.is_rotated(s.id) && s.len >= u64::from(len));
    for sibling in candidates {
        if newest.is_some_and(|n| n.modified >= sibling.modified) {
            continue;
        }
        let Ok(mut file) = File::open(&sibling.path) else { continue };
        if head_of(&mut file, usize::from(len))? == Some(head) {
            newest = Some(sibling);
        }
    }
    Ok(newest)
}

/// Adds the rotation-named generations written after `after` (at or after, with `inclusive`)
/// that are neither the path's file nor followed already, oldest first, to be read whole: two
/// rotations between scans leave one that was never the path's file when a scan looked.
fn push_newer_generations(
    checkpoint: &mut Checkpoint,
    siblings: &[Sibling],
    current: Option<FileId>,
    after: SystemTime,
    inclusive: bool,
) {
    let mut newer: Vec<&Sibling> = siblings
        .iter()
        .filter(|s| s.rotation && Some(s.id) != current && !checkpoint.is_rotated(s.id))
        .filter(|s| s.modified > after || (inclusive && s.modified == after))
        .collect();
    newer.sort_by_key(|s| s.modified);
    checkpoint.rotated.extend(newer.into_iter().map(|s| Rotated { file: s.id, offset: 0 }));
}

/// Lines read but not yet committed, already normalised.
#[derive(Debug, Default)]
struct PendingBatch {
    batch: vigil_log::AppendBatch,
    lines: usize,
    bytes: usize,
}

#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Spilled(#[from] Spilled),
}

/// One line from a reader, bounded in memory.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line is in the buffer (without its newline); `consumed` includes the newline.
    Complete { consumed: u64 },
    /// The line was longer than the limit; the buffer holds its first bytes only.
    TooLong { consumed: u64 },
    /// End of input; any bytes after the last newline are an unfinished line, left for later.
    End,
}

/// Reads up to and including the next `\n`, keeping at most `max` bytes of the line in `buf`
/// (and at most [`DEAD_LETTER_MAX_RAW_BYTES`] of one that is too long).
fn read_bounded_line(reader: &mut dyn BufRead, max: usize, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut consumed: u64 = 0;
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(Line::End);
        }
        let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        let line_part = if found_newline { &chunk[..chunk.len() - 1] } else { chunk };
        if !too_long && buf.len() + line_part.len() > max {
            too_long = true;
            buf.truncate(DEAD_LETTER_MAX_RAW_BYTES.min(max));
        }
        let room =
            if too_long { DEAD_LETTER_MAX_RAW_BYTES.min(max).saturating_sub(buf.len()) } else { line_part.len() };
        buf.extend_from_slice(&line_part[..line_part.len().min(room)]);
        let n = chunk.len();
        reader.consume(n);
        consumed += n as u64;
        if found_newline {
            return Ok(if too_long { Line::TooLong { consumed } } else { Line::Complete { consumed } });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_bounded_line(&mut reader, max, &mut buf).unwrap();
            let end = line == Line::End;
            out.push((line, buf.clone()));
            if end {
                return out;
            }
        }
    }

    #[test]
    fn checkpoints_from_before_file_ids_still_read() {
        let old: Checkpoint = serde_json::from_str(r#"{"offset":10,"seen_len":12,"head":5,"head_len":3}"#).unwrap();
        assert_eq!(old, Checkpoint { offset: 10, seen_len: 12, head: Some(5), head_len: 3, ..Checkpoint::default() });
        let new = Checkpoint {
            file: Some(FileId { dev: 1, ino: 2 }),
            rotated: vec![Rotated { file: FileId { dev: 1, ino: 3 }, offset: 7 }],
            emptied_at: Some(SystemTime::UNIX_EPOCH),
            ..old.clone()
        };
        let stored = serde_json::to_vec(&new).unwrap();
        assert_eq!(serde_json::from_slice::<Checkpoint>(&stored).unwrap(), new);
        // A checkpoint without rotation state stores as before.
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"offset":10,"seen_len":12,"head":5,"head_len":3}"#);
    }

    #[test]
    fn bounded_lines_split_on_newlines_and_leave_the_unfinished_tail() {
        let got = lines(b"ab\ncdefgh\nxyz", 5);
        assert_eq!(got[0], (Line::Complete { consumed: 3 }, b"ab".to_vec()));
        assert_eq!(got[1].0, Line::TooLong { consumed: 7 });
        assert_eq!(got[1].1, b"cdefg".to_vec());
        assert_eq!(got[2].0, Line::End);
    }
}
