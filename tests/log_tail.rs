//! End to end over a KumoMTA log directory: plain JSONL appended to, zstd segments (including
//! one still being written), bad lines, and restarts.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;

use common::{Vigil, example_records};
use serde_json::json;

fn append(path: &Path, lines: &[&str]) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    file.sync_all().unwrap();
}

fn zstd_segment(path: &Path, lines: &[&str]) {
    let mut encoder = zstd::Encoder::new(std::fs::File::create(path).unwrap(), 3).unwrap();
    for line in lines {
        writeln!(encoder, "{line}").unwrap();
    }
    encoder.finish().unwrap().sync_all().unwrap();
}

fn row(provider: &str, delivered: u64, deferred: u64, bounced: u64) -> serde_json::Value {
    json!({"provider": provider, "delivered": delivered, "deferred": deferred, "bounced": bounced,
           "expired": 0, "complaints": 0, "attempts": delivered + deferred + bounced})
}

/// A record like the example Delivery, with its own message id.
fn delivery(id: usize) -> String {
    example_records()[1].replace("1d98076abbbc11ed940250ebf67f93bd", &format!("{id:032x}"))
}

#[tokio::test]
async fn appended_lines_and_new_segments_are_counted_once_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let records = example_records();
    let r: Vec<&str> = records.iter().map(String::as_str).collect();
    let plain = logs.path().join("20250912-110000.jsonl");
    append(&plain, &r[..2]);
    let args = ["--kumomta-logs", logs.path().to_str().unwrap(), "--tail-interval-ms", "50"];

    let vigil = Vigil::start(data.path(), &args).await;
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 1, 0, 0)])).await;

    // Appended lines, and a compressed segment as kumod writes them.
    append(&plain, &r[2..3]);
    zstd_segment(&logs.path().join("20250912-120000"), &r[3..]);
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 1, 0, 1), row("yahoo", 0, 1, 1)])).await;
    vigil.kill9();

    // A restart reads nothing twice, and picks up what was written while it was down.
    let d1 = delivery(1);
    append(&plain, &[&d1]);
    let vigil = Vigil::start(data.path(), &args).await;
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 2, 0, 1), row("yahoo", 0, 1, 1)])).await;
    vigil.kill9();
    let vigil = Vigil::start(data.path(), &args).await;
    assert_eq!(vigil.summary("group_by=provider").await, json!([row("google", 2, 0, 1), row("yahoo", 0, 1, 1)]));
}

#[tokio::test]
async fn a_segment_still_being_written_is_read_up_to_its_last_whole_line() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let segment = logs.path().join("20250912-130000");
    // kumod flushes whole zstd blocks while the frame is still open.
    let (d1, d2, d3) = (delivery(1), delivery(2), delivery(3));
    let mut encoder = zstd::Encoder::new(std::fs::File::create(&segment).unwrap(), 3).unwrap();
    writeln!(encoder, "{d1}").unwrap();
    writeln!(encoder, "{d2}").unwrap();
    encoder.flush().unwrap();
    let args = ["--kumomta-logs", logs.path().to_str().unwrap(), "--tail-interval-ms", "50"];
    let vigil = Vigil::start(data.path(), &args).await;
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 2, 0, 0)])).await;

    writeln!(encoder, "{d3}").unwrap();
    encoder.finish().unwrap().sync_all().unwrap();
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 3, 0, 0)])).await;
}

#[tokio::test]
async fn bad_lines_become_dead_letters_and_the_tail_keeps_going() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("20250912-140000.jsonl");
    let huge = format!("{{\"type\":\"Delivery\",\"pad\":\"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let (d1, d2) = (delivery(1), delivery(2));
    append(&file, &["{not json", &huge, r#"{"type":"Delivery","id":"x","timestamp":1}"#, &d1]);
    // Invalid UTF-8 on a line of its own.
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(b"{\"type\":\"Delivery\",\"id\":\"\xff\xfe\"}\n").unwrap();
    drop(f);
    append(&file, &[&d2]);

    let args = ["--kumomta-logs", logs.path().to_str().unwrap(), "--tail-interval-ms", "50"];
    let vigil = Vigil::start(data.path(), &args).await;
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 2, 0, 0)])).await;
    let (_, dead) = vigil.get("/api/v1/deadletters").await;
    assert_eq!(dead["total"], 4, "{dead:#}");
    let rows = dead["rows"].as_array().unwrap();
    assert!(rows[0]["reason"].as_str().unwrap().contains("invalid KumoMTA log record"));
    assert!(
        rows[1]["reason"].as_str().unwrap().contains("exceeds the limit of 1048576 bytes"),
        "{}",
        rows[1]["reason"]
    );
    assert!(rows[1]["raw_len"].as_u64().unwrap() > 10 * 1024 * 1024);
    assert!(rows[1]["raw"].as_str().unwrap().len() <= 64 * 1024, "a dead letter keeps a bounded prefix");
    assert!(rows[2]["reason"].as_str().unwrap().contains("missing field `recipient`"));
    assert!(rows[3]["reason"].as_str().unwrap().contains("UTF-8"), "{}", rows[3]["reason"]);
    assert!(rows[3]["location"].as_str().unwrap().starts_with("20250912-140000.jsonl:"));
}
