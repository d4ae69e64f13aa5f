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

fn one_file_tailer(path: &Path, log: &EventLog) -> Tailer {
    Tailer::new(TailConfig::new(path.to_owned(), Format::Postfix), log.clone())
}

fn append(file: &mut std::fs::File, range: std::ops::Range<usize>) {
    file.write_all(lines(range).as_bytes()).unwrap();
}

fn open_append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

/// Issue 31, as reported: 10 lines read; 10 appended; the file renamed to `maillog.1`; 5 more
/// written through the writer's open handle (what syslog does until signalled); a new
/// `maillog` with 10. Before: 20 of 35 counted.
#[test]
fn a_renamed_file_is_read_to_its_end_before_the_new_one() {
    let logs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = EventLog::open(store.path()).unwrap();
    let path = logs.path().join("maillog");
    let mut writer = open_append(&path);
    append(&mut writer, 0..10);
    let tailer = one_file_tailer(&path, &log);
    let mut counted = tailer.scan_once().unwrap();
    assert_eq!(counted, 10);
    append(&mut writer, 10..20);
    std::fs::rename(&path, logs.path().join("maillog.1")).unwrap();
    append(&mut writer, 20..25);
    append(&mut open_append(&path), 25..35);
    counted += tailer.scan_once().unwrap() + tailer.scan_once().unwrap();
    assert_counted_once(&log, counted, 35);
}

/// The rotated file is followed until the writer has moved to the new one, and across a
/// restart in between: the checkpoint holds the rotated file's inode and offset.
#[test]
fn a_restart_between_rename_and_reopen_resumes_exactly() {
    let logs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = EventLog::open(store.path()).unwrap();
    let path = logs.path().join("maillog");
    let mut writer = open_append(&path);
    append(&mut writer, 0..10);
    let mut counted = one_file_tailer(&path, &log).scan_once().unwrap();
    // Renamed, the new file created empty (logrotate's `create`), the writer not yet told.
    std::fs::rename(&path, logs.path().join("maillog.1")).unwrap();
    open_append(&path);
    append(&mut writer, 10..15);
    counted += one_file_tailer(&path, &log).scan_once().unwrap();
    // Still on the old handle after that scan: the rotated file is still followed.
    append(&mut writer, 15..20);
    counted += one_file_tailer(&path, &log).scan_once().unwrap();
    // Signalled: the writer reopens the path.
    let mut writer = open_append(&path);
    append(&mut writer, 20..30);
    let restarted = one_file_tailer(&path, &log);
    counted += restarted.scan_once().unwrap() + restarted.scan_once().unwrap();
    assert_counted_once(&log, counted, 30);
    // Once the writer is on the new file, the old one is no longer read.
    append(&mut open_append(&logs.path().join("maillog.1")), 1000..1001);
    assert_eq!(restarted.scan_once().unwrap(), 0);
}

/// Copy, then truncate in place: the rest of what was ours comes from the copy, and the new
/// content from 0. Before: the copy's unread lines were lost.
#[test]
fn a_copied_and_truncated_file_is_read_from_its_copy_then_from_zero() {
    let logs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = EventLog::open(store.path()).unwrap();
    let path = logs.path().join("maillog");
    let mut writer = open_append(&path);
    append(&mut writer, 0..10);
    let tailer = one_file_tailer(&path, &log);
    let mut counted = tailer.scan_once().unwrap();
    append(&mut writer, 10..20);
    std::fs::copy(&path, logs.path().join("maillog.1")).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    append(&mut writer, 20..24);
    counted += tailer.scan_once().unwrap() + tailer.scan_once().unwrap();
    assert_counted_once(&log, counted, 24);
}

/// A checkpoint written before file ids (issue 31) has no inode: a rename is then found by how
/// the renamed file starts.
#[test]
fn a_checkpoint_without_a_file_id_follows_a_rename_by_the_file_head() {
    let logs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let log = EventLog::open(store.path()).unwrap();
    let path = logs.path().join("maillog");
    let mut writer = open_append(&path);
    append(&mut writer, 0..10);
    // What the tail stored before: offset, length seen and the hash of the first 256 bytes.
    let text = lines(0..10);
    let first: [u8; 16] = blake3::hash(&text.as_bytes()[..256]).as_bytes()[..16].try_into().unwrap();
    let old = format!(
        r#"{{"offset":{len},"seen_len":{len},"head":{},"head_len":256}}"#,
        u128::from_le_bytes(first),
        len = text.len()
    );
    let batch = vigil_log::AppendBatch {
        checkpoints: vec![(format!("postfix-file:{}", path.display()), old.into_bytes())],
        ..vigil_log::AppendBatch::default()
    };
    log.append(&batch).unwrap();
    append(&mut writer, 10..15);
    std::fs::rename(&path, logs.path().join("maillog.1")).unwrap();
    append(&mut open_append(&path), 15..22);
    let tailer = one_file_tailer(&path, &log);
    let counted = tailer.scan_once().unwrap() + tailer.scan_once().unwrap();
    let letters = log.dead_letters(0, 3).unwrap();
    assert!(letters.is_empty(), "dead letters: {letters:#?}");
    assert_eq!((counted, log.head()), (12, 12), "lines 10..22, each once");
}

mod logrotate {
    //! Debian's real logrotate rotating a file a writer thread writes continuously, while the
    //! tail reads it: every line counted exactly once.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock};
    use std::time::{Duration, Instant};

    use super::*;

    const LINES: usize = 10_000;
    const ROTATIONS: usize = 4;

    fn logrotate() -> PathBuf {
        let path =
            std::env::var_os("VIGIL_LOGROTATE").map_or_else(|| PathBuf::from("/usr/sbin/logrotate"), PathBuf::from);
        assert!(
            path.is_file(),
            "logrotate not found at {} (set VIGIL_LOGROTATE): scripts/test installs it (Debian's logrotate package)",
            path.display()
        );
        path
    }

    fn rotate(dir: &Path, conf: &Path) {
        let out = std::process::Command::new(logrotate())
            .arg("-f")
            .arg("-s")
            .arg(dir.join("logrotate.state"))
            .arg(conf)
            .output()
            .expect("running logrotate");
        assert!(out.status.success(), "logrotate failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The tail as `Tailer::run` drives it, counting what each scan commits.
    fn start_tail(path: &Path, log: &EventLog) -> (Arc<AtomicUsize>, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let counted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut config = TailConfig::new(path.to_owned(), Format::Postfix);
        config.poll_interval = Duration::from_millis(5);
        let tailer = Tailer::new(config, log.clone());
        let (count, stopping) = (Arc::clone(&counted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                // The path can be missing for a moment between logrotate's rename and create.
                match tailer.scan_once() {
                    Ok(n) => count.fetch_add(n, Ordering::AcqRel),
                    Err(error) => panic!("scan failed: {error}"),
                };
                // The tail's own poll interval, as `Tailer::run` ticks.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        (counted, stop, thread)
    }

    /// A writer thread writes LINES lines, paced so that logrotate (in `mode`) rotates the
    /// file ROTATIONS times in the middle of the stream, while the tail reads it.
    fn run(mode: &str) {
        let logs = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let log = EventLog::open(store.path()).unwrap();
        let dir = logs.path();
        let path = dir.join("maillog");
        let reopen = dir.join("reopen");
        let postrotate = if mode == "create" {
            // The writer's "SIGHUP": a flag file it checks between lines.
            format!("    postrotate\n        touch {}\n    endscript\n", reopen.display())
        } else {
            String::new()
        };
        let conf = dir.join("logrotate.conf");
        std::fs::write(
            &conf,
            format!(
                "{} {{\n    rotate 20\n    {mode}\n    nocompress\n    missingok\n{postrotate}}}\n",
                path.display()
            ),
        )
        .unwrap();
        std::fs::write(&path, "").unwrap();
        let (counted, stop, tail) = start_tail(&path, &log);

        let written = Arc::new(AtomicUsize::new(0));
        // copytruncate loses the lines written between logrotate's copy and its truncate (its
        // manual says so): the writer holds while logrotate runs in that mode, so the test
        // measures the tail, not logrotate. In create mode it writes on.
        let hold = Arc::new(RwLock::new(()));
        let writer = {
            let (path, reopen, written, hold) = (path.clone(), reopen.clone(), Arc::clone(&written), Arc::clone(&hold));
            std::thread::spawn(move || {
                let mut file = open_append(&path);
                for n in 0..LINES {
                    let held = hold.read().unwrap();
                    if reopen.exists() {
                        std::fs::remove_file(&reopen).unwrap();
                        file = open_append(&path);
                    }
                    file.write_all(postfix_line(n).as_bytes()).unwrap();
                    written.store(n + 1, Ordering::Release);
                    drop(held);
                    if n % 50 == 49 {
                        // Pacing: about 20 000 lines a second, a busy MTA.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // A writer told to reopen after its last line reopens too.
                if reopen.exists() {
                    std::fs::remove_file(&reopen).unwrap();
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for rotation in 1..=ROTATIONS {
            let at = rotation * LINES / (ROTATIONS + 1);
            while written.load(Ordering::Acquire) < at {
                assert!(Instant::now() < deadline, "writer stalled");
                std::thread::yield_now();
            }
            let held = (mode == "copytruncate").then(|| hold.write().unwrap());
            rotate(dir, &conf);
            drop(held);
        }
        writer.join().unwrap();
        while counted.load(Ordering::Acquire) < LINES {
            assert!(
                Instant::now() < deadline && !tail.is_finished(),
                "{mode}: {} of {LINES} lines counted, missing {:?}; checkpoint {:?}; files {:?}",
                counted.load(Ordering::Acquire),
                missing(&log),
                log.checkpoint(&format!("postfix-file:{}", path.display()))
                    .unwrap()
                    .map(|c| String::from_utf8_lossy(&c).into_owned()),
                files_in(dir)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        tail.join().unwrap();
        let generations = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("maillog."));
        assert_eq!(generations.count(), ROTATIONS, "{mode}: logrotate made every rotation");
        // Nothing left over: a fresh scan finds nothing new, and a line counted twice would
        // have pushed the count past LINES.
        let rest = one_file_tailer(&path, &log).scan_once().unwrap();
        assert_counted_once(&log, counted.load(Ordering::Acquire) + rest, LINES);
    }

    /// The first and last line numbers missing from the log, and how many.
    fn missing(log: &EventLog) -> (Option<usize>, Option<usize>, usize) {
        let mut seen = vec![false; LINES];
        for (_, event) in log.read(0, 2 * LINES).unwrap() {
            let n: usize = event.queue_id.unwrap()[1..9].parse().unwrap();
            seen[n] = true;
        }
        let missing: Vec<usize> = (0..LINES).filter(|n| !seen[*n]).collect();
        (missing.first().copied(), missing.last().copied(), missing.len())
    }

    /// Name, length, inode and modification time of the files in `dir`, for failure messages.
    fn files_in(dir: &Path) -> Vec<(String, u64, u64, std::time::SystemTime)> {
        use std::os::unix::fs::MetadataExt as _;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), m.len(), m.ino(), m.modified().ok()?))
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn create_mode_counts_every_line_once() {
        run("create");
    }

    #[test]
    fn copytruncate_mode_counts_every_line_once() {
        run("copytruncate");
    }
}
