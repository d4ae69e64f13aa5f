//! File -> broker shipping (issue: `vigil ingest` >= 0.8 x a bare producer), measured side by
//! side in one run against the same tansu broker on this machine.
//!
//! - Anchor, the bare producer: the same KumoMTA lines, unparsed, sent with the producer
//!   settings Vigil uses (`vigil_log::kafka::producer_config`) until all are acknowledged.
//!   It is the ceiling of the path: no file reading, parsing, buffer or checkpoints.
//! - Vigil: `vigil ingest` tailing a directory holding the same lines, from process start until
//!   the broker acknowledged every event (`vigil_ingest_shipped_events_total`).
//!
//! Not a criterion bench (one end-to-end run per side is the measurement; both sides are run
//! twice, alternating, and the better run of each is kept). Run with `scripts/bench`, which
//! writes the figures into BENCHMARKS.md; needs tansu (`VIGIL_TANSU` or on the PATH).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

const RECORDS: usize = 100_000;
/// Records of the check `cargo test` runs (no `--bench` flag): the path works, nothing is timed.
const SMOKE_RECORDS: usize = 200;

fn tansu() -> PathBuf {
    std::env::var("VIGIL_TANSU").map_or_else(|_| PathBuf::from("tansu"), PathBuf::from)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn lines(records: usize) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/kumomta/examples.jsonl");
    let examples: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
    // The mix of the normalise bench: mostly deliveries, then deferrals and bounces.
    let weights = [1, 6, 2, 1, 0];
    let mut out = Vec::with_capacity(records);
    let mut n = 0;
    while out.len() < records {
        for (example, weight) in examples.iter().zip(weights) {
            for _ in 0..weight {
                out.push(example.replacen("\"id\":\"", &format!("\"id\":\"{n:08}"), 1));
                n += 1;
            }
        }
    }
    out.truncate(records);
    out
}

fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn config(brokers: &str) -> vigil_log::kafka::KafkaConfig {
    toml::from_str(&format!("brokers = \"{brokers}\"\npartitions = 6\n")).unwrap()
}

async fn bare_producer(brokers: &str, topic: &str, lines: &[String]) -> f64 {
    // The topic exists before the clock starts, as Vigil's does after its first round trip.
    let admin: AdminClient<DefaultClientContext> =
        vigil_log::kafka::producer_config(&config(brokers)).create().unwrap();
    let new_topic = NewTopic::new(topic, 6, TopicReplication::Fixed(1));
    admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap();
    let producer: FutureProducer = vigil_log::kafka::producer_config(&config(brokers)).create().unwrap();
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(lines.len());
    for line in lines {
        let mut record = FutureRecord::<(), _>::to(topic).payload(line.as_bytes());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break deliveries.push(delivery),
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
    lines.len() as f64 / start.elapsed().as_secs_f64()
}

fn vigil_ingest(brokers: &str, dir: &Path, lines: &[String]) -> f64 {
    let logs = dir.join("kumomta");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("20261125-000000"), lines.join("\n") + "\n").unwrap();
    let config = dir.join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[sources]\nkumomta_logs = [\"{}\"]\ntail_interval_ms = 10\n[kafka]\nbrokers = \"{brokers}\"\npartitions = 6\n",
            dir.join("data").display(),
            logs.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["ingest", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("vigil ingest listening on ").unwrap().to_owned();
    let shipped = || -> f64 {
        let body = reqwest::blocking::get(format!("{base}/metrics")).unwrap().text().unwrap();
        body.lines()
            .find(|l| l.starts_with("vigil_ingest_shipped_events_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(600), || shipped() >= lines.len() as f64);
    let rate = lines.len() as f64 / start.elapsed().as_secs_f64();
    child.kill().unwrap();
    child.wait().unwrap();
    rate
}

/// The canonical events of `lines`, as `vigil parse --raw` prints them (what the topic gets).
fn events_of(dir: &Path, lines: &[String]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let input = dir.join("records.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["parse", "--from", "kumomta", "--raw"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "vigil parse failed");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and filters, which this one measurement ignores);
    // `cargo test --all-targets` runs it without: then only check that the path works.
    let measure = std::env::args().any(|a| a == "--bench");
    let records = if measure { RECORDS } else { SMOKE_RECORDS };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let _broker = Broker(
        Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu (set VIGIL_TANSU or put it on the PATH)"),
    );
    wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let brokers = format!("127.0.0.1:{port}");
    let lines = lines(records);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A diagnostic second anchor: the bare producer sending what Vigil sends, the canonical
    // events (normalised fields plus the raw record, as DESIGN §4 keeps it in the log), which
    // are about three times the bytes of the raw lines.
    let events = events_of(&dir.path().join("events-input"), &lines);
    let (mut bare, mut bare_events, mut vigil) = (0.0_f64, 0.0_f64, 0.0_f64);
    for round in 0..if measure { 2 } else { 1 } {
        bare = bare.max(runtime.block_on(bare_producer(&brokers, &format!("bare-{round}"), &lines)));
        bare_events = bare_events.max(runtime.block_on(bare_producer(&brokers, &format!("events-{round}"), &events)));
        vigil = vigil.max(vigil_ingest(&brokers, &dir.path().join(format!("run-{round}")), &lines));
    }
    if !measure {
        println!("shipping: the path works ({records} records shipped); run `scripts/bench` to measure");
        return;
    }
    let line_bytes = lines.iter().map(String::len).sum::<usize>() / lines.len();
    let event_bytes = events.iter().map(String::len).sum::<usize>() / events.len();
    let result = serde_json::json!({
        "records": records,
        "bare_per_s": bare,
        "bare_events_per_s": bare_events,
        "vigil_per_s": vigil,
        "ratio": vigil / bare,
        "ratio_to_events": vigil / bare_events,
        "line_bytes": line_bytes,
        "event_bytes": event_bytes,
    });
    println!("shipping: {result}");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::write(Path::new(&target).join("shipping.json"), result.to_string()).unwrap();
}
