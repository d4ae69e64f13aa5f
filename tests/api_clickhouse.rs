//! `vigil run --clickhouse-url` end to end, with API tokens: records posted to the log hook
//! reach a real ClickHouse (Debian's 18.16 in CI) through the sink, the API answers from it
//! only with a bearer token of the right role, the same answers as the embedded Parquet
//! warehouse gives on the same data directory, and a restart (the sink follows the log again)
//! inserts nothing and changes no answer. And an open API refuses to listen beyond loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::clickhouse::ClickHouse;
use common::{Vigil, eventually, example_records, run_vigil};
use serde_json::{Value, json};

const VIEWER: &str = "viewer-token-for-the-e2e-test";

const QUERIES: [&str; 5] = [
    "/api/v1/summary?group_by=provider",
    "/api/v1/summary?group_by=egress_source,provider,kind",
    "/api/v1/reputation?scope=provider&from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    "/api/v1/bounces?from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    "/api/v1/events?limit=3",
];

async fn get(vigil: &Vigil, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = vigil.http.get(vigil.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn answers(vigil: &Vigil) -> Vec<Value> {
    let mut out = Vec::new();
    for path in QUERIES {
        let (status, body) = get(vigil, path, Some(VIEWER)).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.push(body);
    }
    out
}

/// `server.query` from async code: the test helper uses a blocking HTTP client.
fn query(server: &ClickHouse, sql: &str) -> String {
    tokio::task::block_in_place(|| server.query(sql))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_from_clickhouse_as_from_parquet_and_a_restart_changes_nothing() {
    let server = tokio::task::block_in_place(ClickHouse::start);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("[[tokens]]\nname = \"grafana\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n"))
        .unwrap();
    let data = dir.path().join("data");
    let tokens_arg = tokens.to_str().unwrap();
    let with_clickhouse =
        ["--clickhouse-url", server.url.as_str(), "--clickhouse-database", "e2e", "--api-tokens", tokens_arg];

    let vigil = Vigil::start(&data, &with_clickhouse).await;
    let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", example_records().join(","))).await;
    assert_eq!(status, 200, "{body}");
    // The sink inserts within about a second. Wait on its record of the batch, written once the
    // insert (and the materialized rollups it feeds) returned: the raw table's rows are visible
    // a moment before the rollups', and the summary reads a rollup.
    eventually("the events to reach ClickHouse", Duration::from_secs(30), || async {
        query(&server, "SELECT sum(events) FROM e2e.sink_batches") == "5\n"
    })
    .await;
    let (status, body) = get(&vigil, "/api/v1/summary?group_by=provider", None).await;
    assert_eq!((status, body["error"].as_str().unwrap().contains("Bearer")), (401, true), "{body}");
    let (status, _) = get(&vigil, "/api/v1/summary?group_by=provider", Some("not-a-configured-token")).await;
    assert_eq!(status, 401);
    let from_clickhouse = answers(&vigil).await;
    // The bounce explorer's class -> rule -> samples: each class's failures split by the rule
    // that decided them, read from the raw events.
    let classes = from_clickhouse[3]["classes"].as_array().unwrap();
    assert!(!classes.is_empty(), "{classes:?}");
    for class in classes {
        let rules = class["rules"].as_array().unwrap();
        let by_rule: u64 = rules.iter().map(|r| r["deferred"].as_u64().unwrap() + r["bounced"].as_u64().unwrap()).sum();
        let total = class["deferred"].as_u64().unwrap() + class["bounced"].as_u64().unwrap();
        assert_eq!(by_rule, total, "{class}");
        if class["bounce_class"].is_string() {
            assert!(rules.iter().all(|r| r["rule"].is_string()), "a classified failure names its rule: {class}");
            assert!(class["samples"].as_array().unwrap().iter().all(|e| e["classifier_rule"].is_string()), "{class}");
        }
    }
    assert_eq!(
        from_clickhouse[0]["rows"],
        json!([
            {"provider": "google", "delivered": 1, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 2},
            {"provider": "yahoo", "delivered": 0, "deferred": 1, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 2},
        ])
    );
    assert_eq!(from_clickhouse[4]["rows"].as_array().unwrap().len(), 3);
    vigil.terminate();

    // The same data directory, answered from Parquet.
    let vigil = Vigil::start(&data, &["--api-tokens", tokens_arg]).await;
    eventually("the warehouse to hold the events", Duration::from_secs(30), || async {
        get(&vigil, QUERIES[0], Some(VIEWER)).await.1 == from_clickhouse[0]
    })
    .await;
    assert_eq!(answers(&vigil).await, from_clickhouse, "both backends answer alike");
    vigil.terminate();

    // ClickHouse again: the sink resumes where the database says, so nothing is inserted twice.
    let vigil = Vigil::start(&data, &with_clickhouse).await;
    let (status, body) = vigil.post("/ingest/kumomta", example_records()[0].clone()).await;
    assert_eq!((status, body["duplicates"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(answers(&vigil).await, from_clickhouse, "a restart changes no answer");
    assert_eq!(query(&server, "SELECT count() FROM e2e.events"), "5\n", "no row inserted twice");
    vigil.terminate();
    tokio::task::block_in_place(|| drop(server));
}

/// ClickHouse stopped under a running Vigil: the analytics endpoints answer 503 with
/// `Retry-After` and say which dependency is down (not a 500, which would read as a bug in
/// Vigil); the log hook keeps taking records; once the server is back, the endpoints answer
/// again by themselves and the records taken meanwhile reach ClickHouse.
#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_down_is_a_503_with_retry_after_and_the_api_recovers_by_itself() {
    let mut server = tokio::task::block_in_place(ClickHouse::start);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let vigil =
        Vigil::start(&data, &["--clickhouse-url", server.url.as_str(), "--clickhouse-database", "outage"]).await;
    let records = example_records();
    let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", records[..3].join(","))).await;
    assert_eq!(status, 200, "{body}");
    eventually("the first events to reach ClickHouse", Duration::from_secs(30), || async {
        query(&server, "SELECT sum(events) FROM outage.sink_batches") == "3\n"
    })
    .await;
    let (status, before) = vigil.get(QUERIES[0]).await;
    assert_eq!(status, 200, "{before}");

    tokio::task::block_in_place(|| server.stop());
    for path in [QUERIES[0], QUERIES[2], QUERIES[4]] {
        let response = vigil.http.get(vigil.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503, "{path}");
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)), "{path}: Retry-After in seconds");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["dependency"], "clickhouse", "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("clickhouse is unavailable"), "{path}: {body}");
    }
    // Ingest does not depend on ClickHouse: the log takes the records.
    let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", records[3..].join(","))).await;
    assert_eq!(status, 200, "{body}");

    tokio::task::block_in_place(|| server.resume());
    eventually("the API to answer from ClickHouse again", Duration::from_secs(60), || async {
        vigil.get(QUERIES[0]).await.0 == 200
    })
    .await;
    eventually("the records taken during the outage to reach ClickHouse", Duration::from_secs(60), || async {
        query(&server, "SELECT sum(events) FROM outage.sink_batches") == "5\n"
    })
    .await;
    vigil.terminate();
    tokio::task::block_in_place(|| drop(server));
}

#[test]
fn an_open_api_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run_vigil(&["run", "--listen", "0.0.0.0:0", "--data-dir", data], b"");
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("may only listen on loopback") && out.stderr.contains("--api-tokens"),
        "{}",
        out.stderr
    );
}
