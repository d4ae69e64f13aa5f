//! Log rotation under the file tail (issue 31): rotated and compressed histories in a
//! directory, and a one-file tail that logrotate rotates under it. Every line is counted
//! exactly once: `scan_once`'s count, the log's events, and no dead letters agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;

use vigil_ingest::lines::Format;
use vigil_ingest::tail::{TailConfig, Tailer};
use vigil_log::EventLog;

/// A Postfix delivery line of its own: a unique queue id and recipient, so a line counted twice
/// would show as a second scan count, and a lost one as a missing event.
fn postfix_line(n: usize) -> String {
    format!(
        "Dec  6 19:00:01 mx postfix/smtp[77]: Q{n:08}X: to=<u{n}@example.org>, relay=mx.example.org[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)\n"
    )
}

fn lines(range: std::ops::Range<usize>) -> String {
    range.map(postfix_line).collect()
}

fn assert_counted_once(log: &EventLog, counted: usize, expected: usize) {
    let letters = log.dead_letters(0, 3).unwrap();
    assert!(letters.is_empty(), "dead letters: {letters:#?}");
    assert_eq!(counted, expected, "lines counted by the tail");
    assert_eq!(log.head(), expected as u64, "events in the log");
}

/// A directory with logrotate's history: `mail.log`, `mail.log.1`, and compressed older ones.
fn rotated_directory(dir: &Path) {
    std::fs::write(dir.join("mail.log"), lines(0..20)).unwrap();
    std::fs::write(dir.join("mail.log.1"), lines(20..50)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(lines(50..100).as_bytes()).unwrap();
    std::fs::write(dir.join("mail.log.2.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.join("mail.log.3.zst"), zstd::encode_all(lines(100..140).as_bytes(), 3).unwrap()).unwrap();
}

/// Issue 31: `mail.log.2.gz` was one "not valid UTF-8" dead letter and its lines never read.
#[test]
fn a_directory_with_gz_and_zst_history_is_read_once() {
    let logs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    rotated_directory(logs.path());
    let log = EventLog::open(store.path()).unwrap();
    let tailer = Tailer::new(TailConfig::new(logs.path().to_owned(), Format::Postfix), log.clone());
    let counted = tailer.scan_once().unwrap() + tailer.scan_once().unwrap();
    assert_counted_once(&log, counted, 140);
    // A restart resumes from the checkpoints: nothing is read twice.
    let restarted = Tailer::new(TailConfig::new(logs.path().to_owned(), Format::Postfix), log.clone());
    assert_eq!(restarted.scan_once().unwrap(), 0);
}

#[test]
fn compressed_rotations_are_skipped_by_name_when_asked() {
    let logs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    rotated_directory(logs.path());
    let log = EventLog::open(store.path()).unwrap();
    let mut config = TailConfig::new(logs.path().to_owned(), Format::Postfix);
    config.skip_compressed_files = true;
    let tailer = Tailer::new(config, log.clone());
    let counted = tailer.scan_once().unwrap() + tailer.scan_once().unwrap();
    assert_counted_once(&log, counted, 50);
}
