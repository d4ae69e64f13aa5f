//! `GET /metrics`: ingest counters per source and reason, the log head and the processor's
//! committed offset.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Vigil, eventually, example_records};

#[tokio::test]
async fn metrics_count_what_ingest_did() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let maillog = logs.path().join("maillog");
    std::fs::write(&maillog, "Jan  9 10:00:02 mx postfix/smtp[4]: AAAAA11111: to=<a@gmail.com>, relay=x[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)\n").unwrap();
    let vigil =
        Vigil::start(data.path(), &["--postfix-log", maillog.to_str().unwrap(), "--tail-interval-ms", "50"]).await;
    let batch = format!(
        "[{}, {{\"type\":\"Teleport\",\"id\":\"y\",\"recipient\":\"a@b\",\"timestamp\":1}}]",
        example_records().join(",")
    );
    assert_eq!(vigil.post("/ingest/kumomta", batch).await.0, 200);

    let metrics = || async { vigil.http.get(vigil.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let expected = [
        "vigil_ingest_records_total{source=\"kumomta-http\"} 6",
        "vigil_ingest_events_total{source=\"kumomta-http\"} 5",
        "vigil_ingest_dead_letters_total{source=\"kumomta-http\",reason=\"unknown_type\"} 1",
        "vigil_ingest_events_total{source=\"postfix-file\"} 1",
        "vigil_log_head_offset 6",
        "vigil_processor_committed_offset 6",
    ];
    eventually("the expected metrics", Duration::from_secs(30), || async {
        let text = metrics().await;
        expected.iter().all(|line| text.lines().any(|l| l == *line))
    })
    .await;
    let text = metrics().await;
    assert!(text.contains("# TYPE vigil_ingest_file_lag_bytes gauge"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    assert!(
        text.contains(
            "vigil_api_request_duration_seconds_count{route=\"/ingest/kumomta\",method=\"POST\",status=\"200\"} 1"
        ),
        "request latency by route, method and status: {text}"
    );
    assert!(text.contains("# TYPE vigil_processor_batch_duration_seconds histogram"), "{text}");

    // The classic text format, for clients that ask for it, passes Prometheus's own linter.
    let classic = vigil
        .http
        .get(vigil.url("/metrics"))
        .header("accept", "text/plain; version=0.0.4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let promtool = std::env::var("VIGIL_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{promtool}: {e}; ./scripts/test installs Debian's prometheus"));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), classic.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{classic}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Prometheus rules shipped for Vigil's own health load, and fire as their unit tests say
/// (`deploy/prometheus/vigil-alerts.test.yml`: input stopped, a lagging processor, a failing
/// alert receiver, and quiet before each).
#[test]
fn the_shipped_health_rules_load_and_fire_as_tested() {
    let promtool = std::env::var("VIGIL_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [["check", "rules", "vigil-alerts.yml"], ["test", "rules", "vigil-alerts.test.yml"]] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{promtool}: {e}; ./scripts/test installs Debian's prometheus"));
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
