//! Single-record posts to the KumoMTA log hook at 1, 8 and 64 connections (issue 21): how a
//! log hook without batching, and kumod's traffic-shaping publisher, send. Every request is
//! answered 200 only once its record is durable, so without group commit the rate would stop at
//! the disk's fsync rate; with it, concurrent requests share commits.
//!
//! - Anchor: the fsync rate of the same disk, measured in the same run (a 4 KiB append and an
//!   `fdatasync` of one file in the data directory's file system, for three seconds).
//! - Load: Debian's `wrk` with a Lua script that makes every record unique (its `id`), each
//!   level for ten seconds against a fresh `vigil run` (release build, default settings). The
//!   client and the server share this machine's cores.
//!
//! Accepted records per second are the 200 answers over the run's length; each run's log head
//! is checked to hold at least that many events, and its mean group (batches per commit) is
//! read from `/metrics`; after the run, the bytes of its `log/` directory over its events (a
//! log of single-record commits, the compact log's hardest case). `cargo test --all-targets` runs this without `--bench`: then it only
//! posts a few hundred records from concurrent tasks and checks each is stored once.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::Vigil;

const LEVELS: [usize; 3] = [1, 8, 64];
const SECONDS: u64 = 10;
const TEMPLATE_ID: &str = "1d98076abbbc11ed940250ebf67f93bd";

fn start(data: &Path) -> Vigil {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    command.args(["run", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data);
    common::start(command)
}

/// The Delivery record of the KumoMTA examples, whose `id` each request replaces.
fn template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kumomta/examples.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().find(|l| l.contains(TEMPLATE_ID)).unwrap().to_owned()
}

/// fsyncs per second of one file in `dir`, each after appending 4 KiB to it (the file grows,
/// as a log does, so each sync also commits the file system's metadata).
fn fsync_rate(dir: &Path) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = vec![7u8; 4096];
    let (started, mut syncs) = (Instant::now(), 0u64);
    while started.elapsed() < Duration::from_secs(3) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        syncs += 1;
    }
    syncs as f64 / started.elapsed().as_secs_f64()
}

fn lua_script(template: &str) -> String {
    let template = serde_json::to_string(template).unwrap();
    format!(
        r#"-- One unique KumoMTA Delivery record per request.
local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end
local template = {template}
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  counter = counter + 1
  local id = string.format("%08x%024x", tid, counter)
  local body = template:gsub("{TEMPLATE_ID}", id, 1)
  return wrk.format(nil, "/ingest/kumomta", nil, body)
end
"#
    )
}

/// A figure of `/metrics`, by its exact name.
fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{base}/metrics")).unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Level {
    connections: usize,
    accepted_per_s: f64,
    refused: u64,
    mean_group: f64,
    p99_ms: f64,
    /// Bytes of the run's `log/` directory over the events it holds.
    log_bytes_per_event: f64,
}

/// One wrk run at `connections` against a fresh `vigil run`.
fn run_level(dir: &Path, script: &Path, connections: usize) -> Level {
    let data = dir.join(format!("data-{connections}"));
    let vigil = start(&data);
    let output = Command::new("wrk")
        .arg(format!("-t{}", connections.min(2)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{SECONDS}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("{}/", vigil.base))
        .output()
        .expect("wrk runs (Debian's `wrk` package)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "wrk failed: {text}");
    let number_before = |marker: &str| -> f64 {
        let line = text.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no `{marker}` in {text}"));
        line.split_whitespace().find_map(|w| w.parse().ok()).unwrap()
    };
    let requests = number_before("requests in");
    let seconds: f64 = {
        let line = text.lines().find(|l| l.contains("requests in")).unwrap();
        let span = line.split("requests in").nth(1).unwrap().split(',').next().unwrap().trim();
        let (value, unit) = span.split_at(span.find(|c: char| c.is_alphabetic()).unwrap());
        value.parse::<f64>().unwrap()
            * if unit == "ms" {
                0.001
            } else if unit == "m" {
                60.0
            } else {
                1.0
            }
    };
    let refused = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().trim().parse().unwrap());
    let p99_ms = {
        let line = text.lines().find(|l| l.trim_start().starts_with("99%")).unwrap();
        let value = line.split_whitespace().nth(1).unwrap();
        let (number, unit) = value.split_at(value.find(|c: char| c.is_alphabetic()).unwrap());
        number.parse::<f64>().unwrap()
            * match unit {
                "us" => 0.001,
                "s" => 1000.0,
                _ => 1.0,
            }
    };
    let accepted = requests - refused;
    let head = metric(&vigil.base, "vigil_log_head_offset");
    assert!(head >= accepted, "every 200 is in the log: head {head} < accepted {accepted}");
    let mean_group =
        metric(&vigil.base, "vigil_log_group_batches_sum") / metric(&vigil.base, "vigil_log_group_batches_count");
    drop(vigil);
    let log_bytes: u64 =
        std::fs::read_dir(data.join("log")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    Level {
        connections,
        accepted_per_s: accepted / seconds,
        refused: refused as u64,
        mean_group,
        p99_ms,
        log_bytes_per_event: log_bytes as f64 / head,
    }
}

/// Without `--bench`: concurrent single-record posts through reqwest, each stored once.
fn smoke(dir: &Path, template: &str) {
    let vigil = start(&dir.join("smoke"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let stored: u64 = runtime.block_on(async {
        let client = reqwest::Client::new();
        let tasks: Vec<_> = (0..16)
            .map(|lane| {
                let (client, url) = (client.clone(), format!("{}/ingest/kumomta", vigil.base));
                let template = template.to_owned();
                tokio::spawn(async move {
                    let mut stored = 0;
                    for i in 0..25 {
                        let body = template.replacen(TEMPLATE_ID, &format!("{lane:08x}{i:024x}"), 1);
                        let response = client.post(&url).body(body).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                        stored += response.json::<serde_json::Value>().await.unwrap()["events"].as_u64().unwrap();
                    }
                    stored
                })
            })
            .collect();
        let mut stored = 0;
        for task in tasks {
            stored += task.await.unwrap();
        }
        stored
    });
    assert_eq!(stored, 400);
    assert!((metric(&vigil.base, "vigil_log_head_offset") - 400.0).abs() < f64::EPSILON);
    println!("group_commit: the path works (400 concurrent single-record posts); run `scripts/bench` to measure");
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    let template = template();
    if !measure {
        smoke(dir.path(), &template);
        return;
    }
    let script = dir.path().join("post.lua");
    std::fs::write(&script, lua_script(&template)).unwrap();
    let fsyncs = fsync_rate(dir.path());
    let levels: Vec<Level> = LEVELS.iter().map(|&c| run_level(dir.path(), &script, c)).collect();
    let result = serde_json::json!({
        "fsync_per_s": fsyncs,
        "seconds": SECONDS,
        "levels": levels.iter().map(|l| serde_json::json!({
            "connections": l.connections,
            "accepted_per_s": l.accepted_per_s,
            "ratio": l.accepted_per_s / fsyncs,
            "refused": l.refused,
            "mean_group": l.mean_group,
            "p99_ms": l.p99_ms,
            "log_bytes_per_event": l.log_bytes_per_event,
        })).collect::<Vec<_>>(),
        "commit": std::env::var("VIGIL_BENCH_COMMIT").unwrap_or_default(),
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
    });
    println!("group_commit: {result}");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::write(Path::new(&target).join("group_commit.json"), result.to_string()).unwrap();
}
