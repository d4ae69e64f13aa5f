//! Query latency of the analytics API on both backends, and ClickHouse ingest.
//!
//! 10 000 000 generated events (`vigil_warehouse::synthetic`, 35 days) are written to the
//! embedded Parquet warehouse (`ParquetWriter`, batches of 100 000, then compacted) and
//! inserted into a real ClickHouse through the sink (`ClickHouseWriter`, the same batches), each
//! timed: the sink's rate is the ClickHouse ingest figure, the Parquet writer's the anchor.
//! Then `summary` (by egress source and provider), `reputation` (scope egress source x
//! provider) and `timeseries` (attempts by provider; 5-minute steps over 24 h, hourly over
//! 30 days) are asked through the API's router over the last 24 h and the last 30 days, ending
//! on a minute, 30 times each after one warm-up; p50 and p95 per backend.
//!
//! Then the dashboards' overview over 7 and 30 days (from the warehouse) is loaded in headless
//! Chromium (`dashboards/tests/overview-load.mjs`, fresh browser contexts, 10 loads after one
//! warm-up), served by the same routes as `vigil run` over each backend: p50 and p95 from
//! navigation to the last chart drawn. It needs `VIGIL_NODE_MODULES` (playwright-core) and
//! Chromium, which `scripts/test` installs; without `VIGIL_NODE_MODULES` it is left out.
//!
//! Not a criterion bench; `scripts/bench` runs it and writes BENCHMARKS.md. Without `--bench`
//! (as `cargo test --all-targets` runs it) 20 000 events and 2 rounds check that it works, and
//! nothing is timed. `VIGIL_QUERY_BENCH_EVENTS` sets another size.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, Utc};
use tower::ServiceExt;
use vigil_processor::DerivedState;
use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseReader, ClickHouseWriter};
use vigil_warehouse::{ParquetWriter, Reader, Store};

const EVENTS: usize = 10_000_000;
const SMOKE_EVENTS: usize = 20_000;
const ROUNDS: usize = 30;
const DAYS: u32 = 35;
/// Overview loads in the browser per window and backend.
const LOADS: usize = 10;

fn app(store: Store) -> Router {
    let state = Arc::new(RwLock::new(DerivedState::new()));
    vigil_query::analytics::router(store.clone())
        .merge(vigil_query::live::router(vigil_processor::view::View::new(state), Some(store)))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// p50 and p95 in milliseconds of `rounds` requests, after one not counted.
async fn latency(app: &Router, uri: &str, rounds: usize) -> serde_json::Value {
    let mut times = Vec::with_capacity(rounds);
    for round in 0..=rounds {
        let started = Instant::now();
        let response = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 256 << 20).await.unwrap();
        assert!(status.is_success(), "{uri}: {status} {}", String::from_utf8_lossy(&body));
        assert!(body.len() > 100, "{uri} answered almost nothing: {}", String::from_utf8_lossy(&body));
        if round > 0 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    serde_json::json!({ "p50_ms": percentile(&times, 50.0), "p95_ms": percentile(&times, 95.0) })
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let n = std::env::var("VIGIL_QUERY_BENCH_EVENTS")
        .map_or(if measure { EVENTS } else { SMOKE_EVENTS }, |v| v.parse().unwrap());
    let rounds = if measure { ROUNDS } else { 2 };
    let start = DateTime::parse_from_rfc3339("2026-10-20T00:00:00Z").unwrap().to_utc();
    let dir = tempfile::tempdir().unwrap();
    let server = common::clickhouse::ClickHouse::start();
    let config = ClickHouseConfig { database: "bench".into(), ..ClickHouseConfig::new(&server.url) };
    let version = server.query("SELECT version()").trim().to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async {
        vigil_warehouse::clickhouse::migrate(&config).await.unwrap();
        let (parquet_time, clickhouse_time) = load(dir.path(), &config, n, start).await;
        let parquet = app(Store::Parquet(Reader::new(dir.path())));
        let clickhouse = app(Store::ClickHouse(ClickHouseReader::new(&config).unwrap()));
        // Ranges end on a minute, three days before the data does, as a dashboard's "now".
        let end = start + chrono::Duration::days(i64::from(DAYS) - 3) + chrono::Duration::minutes(37);
        let time = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut queries = serde_json::Map::new();
        for (span, days, step) in [("24h", 1, "5m"), ("30d", 30, "1h")] {
            let range = format!("from={}&to={}", time(end - chrono::Duration::days(days)), time(end));
            for (name, uri) in [
                ("summary", format!("/api/v1/summary?group_by=egress_source,provider&{range}")),
                ("reputation", format!("/api/v1/reputation?scope=egress_source,provider&{range}")),
                ("timeseries", format!("/api/v1/timeseries?metric=attempts&group_by=provider&step={step}&{range}")),
            ] {
                queries.insert(
                    format!("{name}_{span}"),
                    serde_json::json!({
                        "uri": uri,
                        "parquet": latency(&parquet, &uri, rounds).await,
                        "clickhouse": latency(&clickhouse, &uri, rounds).await,
                    }),
                );
            }
        }
        let overview = match std::env::var("VIGIL_NODE_MODULES") {
            Ok(_) => {
                let loads = if measure { LOADS } else { 1 };
                let mut by_backend = serde_json::Map::new();
                for (name, store) in [
                    ("parquet", Store::Parquet(Reader::new(dir.path()))),
                    ("clickhouse", Store::ClickHouse(ClickHouseReader::new(&config).unwrap())),
                ] {
                    let base = serve(ui_app(store, &dir.path().join(name), n as u64)).await;
                    by_backend.insert(name.into(), overview_loads(&base, end, loads).await);
                }
                serde_json::Value::Object(by_backend)
            }
            Err(_) => {
                eprintln!("VIGIL_NODE_MODULES is not set: the overview in the browser is left out");
                serde_json::Value::Null
            }
        };
        serde_json::json!({
            "overview": overview,
            "commit": std::env::var("VIGIL_BENCH_COMMIT").unwrap_or_else(|_| "unknown".into()),
            "date": Utc::now().date_naive().to_string(),
            "events": n,
            "days": DAYS,
            "rounds": rounds,
            "clickhouse_ingest_per_s": n as f64 / clickhouse_time.as_secs_f64(),
            "parquet_write_per_s": n as f64 / parquet_time.as_secs_f64(),
            "ingest_ratio": parquet_time.as_secs_f64() / clickhouse_time.as_secs_f64(),
            "clickhouse_version": version,
            "queries": queries,
        })
    });
    println!("query latency: {result}");
    if measure {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        std::fs::write(Path::new(&target).join("query_latency.json"), result.to_string()).unwrap();
    }
}

/// The routes `vigil run` serves to the dashboards, over `store`: the UI, the API, the actions
/// and the alerts. The live state says the log holds `events` (its windows are empty: the data
/// set is older than a day), so the overview draws rather than asking to connect a source.
fn ui_app(store: Store, dir: &Path, events: u64) -> Router {
    let mut derived = DerivedState::new();
    derived.offset = events;
    let state = Arc::new(RwLock::new(derived));
    let view = || vigil_processor::view::View::new(Arc::clone(&state));
    let log = vigil_log::EventLog::open(&dir.join("log")).unwrap();
    let outbox = vigil_processor::actuation::push::Outbox::open(&dir.join("outbox")).unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    vigil_query::router(vigil_query::ApiState { store, view: view(), log, ready })
        .merge(vigil_query::actions::router(vigil_query::tsa::TsaState {
            view: view(),
            outbox,
            token: None,
            trusted_hosts: Vec::new(),
            operator_log: None,
        }))
        .merge(vigil_query::alerts::router(vigil_query::alerts::AlertsState { view: view(), outbox: None }))
        .merge(vigil_query::ui::router())
}

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// The overview's load times in Chromium over 7 and 30 days ending at `now`.
async fn overview_loads(base: &str, now: DateTime<Utc>, loads: usize) -> serde_json::Value {
    let mut node = std::process::Command::new("node");
    node.args(["dashboards/tests/overview-load.mjs", base, &now.to_rfc3339(), &loads.to_string(), "7d", "30d"]);
    // The browser asks this process's server: wait for it off the runtime's threads.
    let output = tokio::task::spawn_blocking(move || node.output()).await.unwrap().expect("node runs");
    assert!(output.status.success(), "overview-load.mjs: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Writes the data set to both backends; returns the time each took.
async fn load(dir: &Path, config: &ClickHouseConfig, n: usize, start: DateTime<Utc>) -> (Duration, Duration) {
    let writer = Arc::new(ParquetWriter::open(dir).unwrap());
    let mut sink = ClickHouseWriter::open(config, 0).await.unwrap();
    let (mut parquet, mut clickhouse) = (Duration::ZERO, Duration::ZERO);
    // Generated on a thread of its own, a chunk ahead, so generating is timed by neither side.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    std::thread::spawn(move || {
        vigil_warehouse::synthetic::generate(n, start, DAYS, 42, |first, chunk| {
            tx.blocking_send((first as u64, chunk)).unwrap();
        });
    });
    while let Some((first, chunk)) = rx.recv().await {
        let logged: Vec<(u64, vigil_schemas::DeliveryEvent)> = (first..).zip(chunk).collect();
        let end = first + logged.len() as u64;
        let started = Instant::now();
        let (w, logged) = (Arc::clone(&writer), logged);
        let logged = tokio::task::spawn_blocking(move || {
            w.write_batch(first, end, &logged).unwrap();
            logged
        })
        .await
        .unwrap();
        parquet += started.elapsed();
        let batch: Vec<(u64, &vigil_schemas::DeliveryEvent)> = logged.iter().map(|(o, e)| (*o, e)).collect();
        let started = Instant::now();
        sink.write_batch(&batch).await.unwrap();
        clickhouse += started.elapsed();
    }
    let started = Instant::now();
    let w = Arc::clone(&writer);
    tokio::task::spawn_blocking(move || while w.compact().unwrap().merged > 0 {}).await.unwrap();
    parquet += started.elapsed();
    (parquet, clickhouse)
}
