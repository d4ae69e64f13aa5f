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

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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
}

/// How many leading bytes identify a file.
const HEAD_BYTES: usize = 256;

/// The hash of a file's first `len` bytes, or `None` if it is shorter.
fn head_of(file: &mut File, len: usize) -> io::Result<Option<u128>> {
    let mut head = vec![0u8; len];
    file.seek(SeekFrom::Start(0))?;
    let complete = file.read_exact(&mut head).is_ok();
    file.seek(SeekFrom::Start(0))?;
    let hash = blake3::hash(&head);
    let first: [u8; 16] = hash.as_bytes()[..16].try_into().expect("16 of 32 bytes");
    Ok(complete.then(|| u128::from_le_bytes(first)))
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
        let one_file = std::fs::metadata(root).map_err(io_err(root))?.is_file();
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
            let (read, behind) = self.scan_file(&path).map_err(|e| match e {
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

    /// Reads one file from its checkpoint. Returns the lines committed and the bytes still
    /// unread (0 for compressed segments, whose compressed size says nothing about lines).
    fn scan_file(&self, path: &Path) -> Result<(usize, u64), FileError> {
        let source = self.source();
        let key = format!("{source}:{}", path.display());
        // Where direct sends of the current epoch got, else where the log (buffer) stands.
        let live = self.direct.as_ref().map(|d| d.epoch());
        let sent = self.lock_sent().get(path).copied().filter(|(epoch, _)| Some(*epoch) == live);
        let mut epoch = sent.map(|(epoch, _)| epoch);
        let mut checkpoint: Checkpoint = match sent {
            Some((_, checkpoint)) => checkpoint,
            None => {
                self.log.checkpoint(&key)?.and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
            }
        };
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let replaced =
            checkpoint.head.is_some() && checkpoint.head != head_of(&mut file, usize::from(checkpoint.head_len))?;
        if len == checkpoint.seen_len && !replaced {
            return Ok((0, 0));
        }
        let encoding = Encoding::of(&mut file)?;
        if let Encoding::Unreadable(compression) = encoding {
            self.skip_once(path, compression);
            return Ok((0, 0));
        }
        let compressed = encoding.is_compressed();
        let shrunk = replaced || if compressed { len < checkpoint.seen_len } else { len < checkpoint.offset };
        if shrunk {
            tracing::warn!(file = %path.display(), "file was truncated or replaced since it was last read; reading it again from the start");
            checkpoint = Checkpoint::default();
        }
        checkpoint.head_len = u16::try_from(len.min(HEAD_BYTES as u64)).unwrap_or(0);
        checkpoint.head = head_of(&mut file, usize::from(checkpoint.head_len))?;
        let mut normalisers = self.normalisers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if shrunk {
            normalisers.remove(path);
        }
        let normaliser = match normalisers.entry(path.to_owned()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let normaliser = entry.insert(self.config.format.normaliser_with(&self.config.settings));
                // Resuming a PowerMTA file mid-way: its header line names the columns.
                if self.config.format == Format::Powermta && checkpoint.offset > 0 {
                    let mut first = encoding.reader(File::open(path)?)?;
                    let mut header = Vec::new();
                    if let Ok(Line::Complete { .. }) =
                        read_bounded_line(&mut first, self.config.max_line_bytes, &mut header)
                    {
                        let _ = normaliser.push_line(&String::from_utf8_lossy(&header), Utc::now());
                    }
                }
                normaliser
            }
        };

        let mut reader: Box<dyn BufRead> = if compressed {
            let mut decoder = encoding.reader(file)?;
            let skipped = io::copy(&mut (&mut decoder).take(checkpoint.offset), &mut io::sink())?;
            if skipped < checkpoint.offset {
                return Ok((0, 0)); // Fewer bytes than before: the next growth will tell.
            }
            decoder
        } else {
            file.seek(SeekFrom::Start(checkpoint.offset))?;
            Box::new(BufReader::new(file))
        };

        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let batch_bytes = if self.direct.is_some() {
            self.config.max_batch_bytes.min(DIRECT_BATCH_BYTES)
        } else {
            self.config.max_batch_bytes
        };
        let mut pending = PendingBatch::default();
        let mut committed = 0;
        let mut buf = Vec::new();
        loop {
            let line = match read_bounded_line(&mut reader, self.config.max_line_bytes, &mut buf) {
                Ok(line) => line,
                // A zstd segment still being written ends mid-frame (a .gz being written, mid
                // member); what came before is whole.
                Err(error) if compressed => {
                    tracing::debug!(%error, file = %path.display(), "segment ends in an incomplete frame");
                    break;
                }
                Err(error) => return Err(error.into()),
            };
            let start = checkpoint.offset;
            match line {
                Line::End => break,
                Line::Complete { consumed } => {
                    checkpoint.offset += consumed;
                    let record = buf.trim_ascii();
                    if !record.is_empty() {
                        pending.bytes += record.len();
                        let location = format!("{name}:{start}");
                        // A rejected line is kept as a dead letter, in line order.
                        // A rejected line is in the batch as a dead letter; nothing more to do.
                        let _ = crate::lines::push_into_batch(
                            &mut pending.batch,
                            normaliser.as_mut(),
                            source,
                            location,
                            record,
                            Utc::now(),
                        );
                        pending.lines += 1;
                    }
                }
                Line::TooLong { consumed } => {
                    checkpoint.offset += consumed;
                    let reason =
                        format!("line of {consumed} bytes exceeds the limit of {} bytes", self.config.max_line_bytes);
                    let mut letter = DeadLetter::new(source, Some(format!("{name}:{start}")), reason, &buf);
                    letter.raw_len = consumed;
                    pending.batch.dead_letters.push(letter);
                    pending.lines += 1;
                }
            }
            if pending.bytes >= batch_bytes {
                committed +=
                    self.commit(path, &key, &mut pending, Checkpoint { seen_len: 0, ..checkpoint }, &mut epoch)?;
            }
        }
        checkpoint.seen_len = len;
        let behind = if compressed { 0 } else { len.saturating_sub(checkpoint.offset) };
        committed += self.commit(path, &key, &mut pending, checkpoint, &mut epoch)?;
        Ok((committed, behind))
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
    fn bounded_lines_split_on_newlines_and_leave_the_unfinished_tail() {
        let got = lines(b"ab\ncdefgh\nxyz", 5);
        assert_eq!(got[0], (Line::Complete { consumed: 3 }, b"ab".to_vec()));
        assert_eq!(got[1].0, Line::TooLong { consumed: 7 });
        assert_eq!(got[1].1, b"cdefg".to_vec());
        assert_eq!(got[2].0, Line::End);
    }
}
