//! Closing-the-loop latency: from a KumoMTA bounce record reaching Vigil to the admin call a
//! recording server standing in for kumod receives. p50 and p99 over 1 000 trials, for:
//!
//! - embedded, record posted to the log hook (`vigil run`);
//! - embedded, record appended to a KumoMTA log file (`vigil run --tail-interval-ms 20`);
//! - through the broker: `vigil ingest` (log hook) -> tansu -> `vigil process`.
//!
//! Each trial is a Yahoo `[TSS04]` deferral from a new egress source, so the bundled rules
//! (KumoMTA's shipped Yahoo rule) suspend a new ready queue at once; the clock stops when
//! `POST /api/admin/suspend-ready-q/v1` for that source arrives. Trials run one after the
//! other on an otherwise idle system. Not a criterion bench; `scripts/bench` runs it and
//! writes BENCHMARKS.md. Without `--bench` (as `cargo test --all-targets` runs it) 5 trials
//! per path check that the paths work, and nothing is timed.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

const TRIALS: usize = 1000;
const SMOKE_TRIALS: usize = 5;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a `vigil` subcommand and returns it with the base URL it prints first.
fn start(args: &[&str], prefix: &str) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix(prefix).unwrap_or_else(|| panic!("{line}")).to_owned();
    (Killed(child), base)
}

/// The recording kumod: each ready-queue suspension's egress source, when it arrived.
async fn recording_kumod() -> (String, mpsc::UnboundedReceiver<(String, Instant)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(Mutex::new(tx));
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
        let tx = Arc::clone(&tx);
        async move {
            let at = Instant::now();
            if uri.path() == "/api/admin/suspend-ready-q/v1" {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                let name = body["name"].as_str().unwrap_or_default();
                let source = name.split("->").next().unwrap_or_default().to_owned();
                let _ = tx.lock().unwrap().send((source, at));
            }
            axum::Json(serde_json::json!({"id": "x"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

fn record(trial: usize, path: &str) -> String {
    let now = chrono::Utc::now();
    serde_json::json!({
        "type": "TransientFailure",
        "id": format!("{path}-{trial:08}"),
        "sender": "news@shop.example",
        "recipient": format!("u{trial}@yahoo.com"),
        "queue": "yahoo.com",
        "site": format!("{path}-{trial}->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client"),
        "size": 2048,
        "response": {"code": 421, "enhanced_code": {"class": 4, "subject": 7, "detail": 0},
                     "content": "[TSS04] Messages from 10.0.0.1 temporarily deferred due to user complaints", "command": "."},
        "egress_source": format!("{path}-{trial}"),
        "timestamp": now.timestamp(),
        "event_time": now.to_rfc3339(),
        "created": now.timestamp(),
        "num_attempts": 1,
        "bounce_classification": "Uncategorized",
        "meta": {}, "headers": {},
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    })
    .to_string()
}

/// Runs `trials` trials; `send` delivers trial `n`'s record. Returns the latencies.
async fn trials(
    path: &str,
    count: usize,
    arrivals: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    mut send: impl AsyncFnMut(String),
) -> Vec<Duration> {
    let mut early: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let source = format!("{path}-{n}");
        let body = record(n, path);
        let started = Instant::now();
        send(body).await;
        let arrived = loop {
            if let Some(at) = early.remove(&source) {
                break at;
            }
            let (who, at) = tokio::time::timeout(Duration::from_secs(60), arrivals.recv())
                .await
                .unwrap_or_else(|_| panic!("{path}: no actuation for trial {n} within 60 s"))
                .unwrap();
            if who == source {
                break at;
            }
            early.insert(who, at);
        };
        latencies.push(arrived.duration_since(started));
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn summary(mut latencies: Vec<Duration>) -> serde_json::Value {
    latencies.sort();
    serde_json::json!({
        "trials": latencies.len(),
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "max_ms": latencies.last().unwrap().as_secs_f64() * 1000.0,
    })
}

async fn embedded_hook(dir: &Path, count: usize) -> serde_json::Value {
    let (kumod, mut arrivals) = recording_kumod().await;
    let data = dir.join("hook");
    let (_vigil, base) = start(
        &["run", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--kumod-url", &kumod],
        "vigil listening on ",
    );
    let http = reqwest::Client::new();
    wait_healthy(&http, &base).await;
    let url = format!("{base}/ingest/kumomta");
    summary(
        trials("hook", count, &mut arrivals, async |body| {
            let status = http.post(&url).body(body).send().await.unwrap().status();
            assert!(status.is_success());
        })
        .await,
    )
}

async fn embedded_file(dir: &Path, count: usize) -> serde_json::Value {
    let (kumod, mut arrivals) = recording_kumod().await;
    let logs = dir.join("kumomta-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("20261126-000000");
    std::fs::write(&file, "").unwrap();
    let data = dir.join("file");
    let (_vigil, base) = start(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--kumod-url",
            &kumod,
            "--kumomta-logs",
            logs.to_str().unwrap(),
            "--tail-interval-ms",
            "20",
        ],
        "vigil listening on ",
    );
    wait_healthy(&reqwest::Client::new(), &base).await;
    let mut log = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    summary(
        trials("file", count, &mut arrivals, async |body| {
            log.write_all(format!("{body}\n").as_bytes()).unwrap();
            log.flush().unwrap();
        })
        .await,
    )
}

async fn through_broker(dir: &Path, count: usize) -> serde_json::Value {
    let (kumod, mut arrivals) = recording_kumod().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let tansu = std::env::var("VIGIL_TANSU").map_or_else(|_| PathBuf::from("tansu"), PathBuf::from);
    let _broker = Killed(
        Command::new(tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu (set VIGIL_TANSU or put it on the PATH)"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let brokers = format!("127.0.0.1:{port}");
    let ingest_config = dir.join("ingest.toml");
    std::fs::write(
        &ingest_config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{brokers}\"\npartitions = 2\n",
            dir.join("ingest").display().to_string()
        ),
    )
    .unwrap();
    let process_config = dir.join("process.toml");
    std::fs::write(
        &process_config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[actuation]\nkumod_url = \"{kumod}\"\n[kafka]\nbrokers = \"{brokers}\"\npartitions = 2\n",
            dir.join("process").display().to_string()
        ),
    )
    .unwrap();
    let (_ingest, ingest) =
        start(&["ingest", "--config", ingest_config.to_str().unwrap()], "vigil ingest listening on ");
    let (_process, process) =
        start(&["process", "--config", process_config.to_str().unwrap()], "vigil process listening on ");
    let http = reqwest::Client::new();
    wait_healthy(&http, &ingest).await;
    wait_healthy(&http, &process).await;
    let url = format!("{ingest}/ingest/kumomta");
    // The first records wait for topic creation and the consumer group; warm up first.
    let _ = trials("warmup", 3, &mut arrivals, async |body| {
        http.post(&url).body(body).send().await.unwrap();
    })
    .await;
    summary(
        trials("broker", count, &mut arrivals, async |body| {
            let status = http.post(&url).body(body).send().await.unwrap().status();
            assert!(status.is_success());
        })
        .await,
    )
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "{base} did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let count = if measure { TRIALS } else { SMOKE_TRIALS };
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async {
        serde_json::json!({
            "hook": embedded_hook(dir.path(), count).await,
            "file": embedded_file(dir.path(), count).await,
            "broker": through_broker(dir.path(), count).await,
        })
    });
    println!("actuation latency: {result}");
    if measure {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        std::fs::write(Path::new(&target).join("actuation_latency.json"), result.to_string()).unwrap();
    }
}
