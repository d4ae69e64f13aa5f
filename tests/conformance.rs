//! The backend conformance suite: the same generated data set (`vigil_warehouse::synthetic`,
//! 1 000 000 events over 35 days by default; `VIGIL_CONFORMANCE_EVENTS` sets another size) is
//! loaded into the embedded Parquet warehouse and into a real ClickHouse (Debian's 18.16 in
//! CI), and every analytics endpoint, over a set of parameter combinations (groupings, ranges
//! on and off the rollups' grain, filters, pages, mistakes), must give the same status and
//! the same body from both. Then the log is replayed into ClickHouse again, and every answer
//! must be unchanged.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Duration, Utc};
use common::clickhouse::ClickHouse;
use tower::ServiceExt;
use vigil_processor::DerivedState;
use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseReader, ClickHouseWriter, Written};
use vigil_warehouse::{ParquetWriter, Reader, Store};

const BATCH: usize = 50_000;

fn app(store: Store) -> Router {
    let state = Arc::new(RwLock::new(DerivedState::new()));
    vigil_query::analytics::router(store.clone())
        .merge(vigil_query::live::router(vigil_processor::view::View::new(state), Some(store)))
}

async fn get(app: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let response = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into()))
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every request compared: (uri, whether it must succeed).
fn requests(start: DateTime<Utc>, days: i64) -> Vec<(String, bool)> {
    let end = start + Duration::days(days);
    let day = end - Duration::days(3);
    let ranges = [
        // The last day, on day bounds: the per-day rollup answers on ClickHouse.
        (day - Duration::days(1), day),
        // Thirty days.
        (end - Duration::days(30), end),
        // On minutes, not days: the per-minute rollup.
        (day - Duration::hours(7) + Duration::minutes(13), day - Duration::hours(2)),
        // Inside minutes: the raw events.
        (
            day - Duration::hours(5) + Duration::milliseconds(13_250),
            day - Duration::hours(1) + Duration::milliseconds(999),
        ),
    ];
    let range = |(from, to): (DateTime<Utc>, DateTime<Utc>)| format!("from={}&to={}", time(from), time(to));
    let mut out = Vec::new();
    let mut ok = |uri: String| out.push((uri, true));
    for group_by in [
        "",
        "kind",
        "egress_source,provider",
        "provider,bounce_class,kind",
        "recipient_domain",
        "tenant,campaign",
        "sending_domain,egress_pool",
    ] {
        ok(format!("/api/v1/summary?group_by={group_by}"));
        for r in ranges {
            ok(format!("/api/v1/summary?group_by={group_by}&{}", range(r)));
        }
    }
    ok(format!("/api/v1/summary?group_by=egress_source&provider=gmail&{}", range(ranges[1])));
    ok(format!("/api/v1/summary?group_by=kind&tenant=tenant-2&campaign=campaign-7&{}", range(ranges[0])));
    ok(format!("/api/v1/summary?group_by=provider&bounce_class=SpamBlock&kind=bounced&{}", range(ranges[2])));
    for scope in
        ["egress_source", "provider", "egress_source,provider", "sending_domain", "tenant", "campaign", "egress_pool"]
    {
        for r in ranges {
            ok(format!("/api/v1/reputation?scope={scope}&{}", range(r)));
        }
    }
    ok(format!("/api/v1/reputation?scope=egress_source&provider=yahoo&{}", range(ranges[1])));
    for (metric, group_by) in [
        ("attempts", "provider"),
        ("bounced", "egress_source,provider"),
        ("hard_bounces", "tenant"),
        ("blocks", "egress_pool"),
        ("complaints", "campaign"),
        ("delivered", "sending_domain"),
    ] {
        ok(format!("/api/v1/timeseries?metric={metric}&group_by={group_by}&step=1h&{}", range(ranges[0])));
        ok(format!("/api/v1/timeseries?metric={metric}&group_by={group_by}&step=1d&{}", range(ranges[1])));
        ok(format!("/api/v1/timeseries?metric={metric}&group_by={group_by}&step=5m&limit=3&{}", range(ranges[3])));
    }
    ok(format!("/api/v1/timeseries?group_by=provider&step=15m&egress_source=ip-4&{}", range(ranges[2])));
    for r in ranges {
        ok(format!("/api/v1/bounces?{}", range(r)));
    }
    ok(format!("/api/v1/bounces?samples=0&provider=microsoft&{}", range(ranges[1])));
    ok(format!("/api/v1/bounces?samples=10&egress_source=ip-1&kind=deferred&{}", range(ranges[0])));
    for r in [ranges[0], ranges[1]] {
        ok(format!("/api/v1/dmarc?{}", range(r)));
        ok(format!("/api/v1/dmarc?group_by=sending_domain,source_ip&{}", range(r)));
    }
    ok(format!("/api/v1/dmarc?group_by=reporter,disposition&{}", range(ranges[2])));
    ok("/api/v1/events?recipient=user123@gmail.com".to_owned());
    ok("/api/v1/events?message_id=%3Cm1000.3001@brand1.example%3E".to_owned());
    ok(format!("/api/v1/events?kind=bounced&provider=yahoo&limit=50&{}", range(ranges[2])));
    ok(format!("/api/v1/events?bounce_class=SpamBlock&egress_source=ip-3&limit=7&{}", range(ranges[3])));
    ok(format!("/api/v1/events?tenant=tenant-1&limit=1000&{}", range(ranges[0])));
    // Mistakes get the same 400 from both.
    for bad in [
        "/api/v1/summary?group_by=ip",
        "/api/v1/dmarc?group_by=provider&from=2026-01-01T00:00:00Z",
        "/api/v1/dmarc",
        "/api/v1/summary?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/api/v1/summary?provider=",
        "/api/v1/reputation?scope=ip&from=2026-01-01T00:00:00Z",
        "/api/v1/reputation?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/api/v1/timeseries?metric=signals&from=2026-01-01T00:00:00Z",
        "/api/v1/timeseries?step=1m&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z",
        "/api/v1/bounces",
        "/api/v1/bounces?samples=11&from=2026-01-01T00:00:00Z",
        "/api/v1/events?limit=1001",
        "/api/v1/events?cursor=yesterday",
    ] {
        out.push((bad.to_owned(), false));
    }
    out
}

/// Every answer, with the next pages of event searches followed once.
async fn answers(app: &Router, requests: &[(String, bool)]) -> Vec<(String, StatusCode, serde_json::Value)> {
    let mut out = Vec::new();
    for (uri, must_succeed) in requests {
        let (status, body) = get(app, uri).await;
        assert_eq!(status.is_success(), *must_succeed, "{uri}: {status} {body}");
        if let Some(next) = body.get("next").and_then(|n| n.as_str()) {
            let uri = format!("{uri}&cursor={next}");
            let (status, page) = get(app, &uri).await;
            assert!(status.is_success(), "{uri}: {page}");
            out.push((uri, status, page));
        }
        out.push((uri.clone(), status, body));
    }
    out
}

#[test]
fn every_endpoint_answers_the_same_from_parquet_and_from_clickhouse() {
    let n: usize = std::env::var("VIGIL_CONFORMANCE_EVENTS").map_or(1_000_000, |v| v.parse().unwrap());
    let days = 35;
    let start = DateTime::parse_from_rfc3339("2026-10-20T00:00:00Z").unwrap().to_utc();
    let events = vigil_warehouse::synthetic::events(n, start, days, 42);
    let logged: Vec<(u64, &vigil_schemas::DeliveryEvent)> = (0..).zip(&events).collect();

    let parquet_dir = tempfile::tempdir().unwrap();
    let writer = ParquetWriter::open(parquet_dir.path()).unwrap();
    for (k, batch) in events.chunks(BATCH).enumerate() {
        let first = (k * BATCH) as u64;
        let owned: Vec<(u64, vigil_schemas::DeliveryEvent)> = (first..).zip(batch.iter().cloned()).collect();
        writer.write_batch(first, first + batch.len() as u64, &owned).unwrap();
    }
    writer.compact().unwrap();

    let server = ClickHouse::start();
    let config = ClickHouseConfig { database: "conformance".into(), ..ClickHouseConfig::new(&server.url) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        vigil_warehouse::clickhouse::migrate(&config).await.unwrap();
        let mut sink = ClickHouseWriter::open(&config, 0).await.unwrap();
        for batch in logged.chunks(BATCH) {
            assert_eq!(sink.write_batch(batch).await.unwrap().inserted, batch.len());
        }
    });

    let parquet = app(Store::Parquet(Reader::new(parquet_dir.path())));
    let clickhouse = app(Store::ClickHouse(ClickHouseReader::new(&config).unwrap()));
    let requests = requests(start, days.into());
    runtime.block_on(async {
        let expected = answers(&parquet, &requests).await;
        let answered = answers(&clickhouse, &requests).await;
        assert_eq!(expected.len(), answered.len());
        let mut with_rows = 0;
        for (want, got) in expected.iter().zip(&answered) {
            assert_eq!(got, want, "ClickHouse and Parquet differ on {}", want.0);
            let body = want.2.to_string();
            with_rows += usize::from(
                body.contains("\"rows\":[{") || body.contains("\"series\":[{") || body.contains("\"classes\":[{"),
            );
        }
        let ok = expected.iter().filter(|a| a.1.is_success()).count();
        println!("{} answers compared ({ok} successful, {with_rows} with rows) over {n} events", expected.len());
        assert!(with_rows * 10 >= ok * 9, "nearly every successful answer has rows: {with_rows} of {ok}");

        // Replay the whole log into ClickHouse again: nothing is inserted, nothing changes.
        let mut replay = ClickHouseWriter::open(&config, 0).await.unwrap();
        assert_eq!(replay.stored_until(), n as u64);
        for batch in logged.chunks(BATCH) {
            assert_eq!(replay.write_batch(batch).await.unwrap(), Written { inserted: 0, skipped: batch.len() });
        }
        assert_eq!(answers(&clickhouse, &requests).await, answered, "a replay leaves every answer unchanged");
    });
}
