//! A full disk is a state, not a crash: appends fail while the file system is full, nothing
//! acknowledged is lost or damaged, and appends succeed again by themselves once there is
//! room (redb refuses every write after a failed one until reopened; the log reopens it).
//! Mounts a small tmpfs, so it needs root (as the test script runs); elsewhere it says so
//! and checks nothing.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use vigil_log::{AppendBatch, EventLog, LogError};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Events whose raw records do not compress (each holds bytes of its own).
fn batch(b: usize) -> AppendBatch {
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let events = (0..50)
        .map(|i| {
            let mut e = DeliveryEvent::new(format!("{b}-{i}"), SourceKind::Kumomta, EventKind::Delivered, at, at);
            let seed = (b * 50 + i) as u64;
            e.raw = Some((0..300).map(|k| format!("{:x}", (seed * 2_654_435_761 + k * 40_503) % 65_521)).collect());
            e
        })
        .collect();
    AppendBatch { events, ..AppendBatch::default() }
}

#[test]
fn a_full_disk_refuses_appends_loses_nothing_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"]).arg(dir.path()).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mount = Mount(dir.path().to_owned());
    let log = EventLog::open(&mount.0.join("log")).unwrap();
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for b in 0..1_000 {
        let batch = batch(b);
        match log.append(&batch) {
            Ok(_) => acknowledged.extend(batch.events.into_iter().map(|e| e.event_id)),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("the 3 MB file system filled up");
    assert!(matches!(refused, LogError::Storage(_)), "{refused}");
    assert!(log.append(&batch(5_000)).is_err(), "still full: still refused");

    let grown = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&mount.0).status().unwrap();
    assert!(grown.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        let batch = batch(6_000);
        if log.append(&batch).is_ok() {
            break batch;
        }
        assert!(Instant::now() < deadline, "appends did not resume once there was room");
        std::thread::sleep(Duration::from_millis(100));
    };
    acknowledged.extend(recovered.events.into_iter().map(|e| e.event_id));
    let stored: Vec<String> = log.read(0, 100_000).unwrap().into_iter().map(|(_, e)| e.event_id).collect();
    assert_eq!(stored, acknowledged, "every acknowledged event, once, in order");
    drop(log);
    // And the file opens again whole (the dictionary trainer may still hold it a moment).
    let reopened = loop {
        match EventLog::open(&mount.0.join("log")) {
            Ok(log) => break log,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(reopened.head(), acknowledged.len() as u64);
}
