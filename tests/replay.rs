//! Derived state across restarts, end to end: after a `kill -9` (rebuilt from the log), after
//! a clean stop (loaded from the snapshot), and from `vigil replay`, the digest and the API's
//! answers are the same.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Vigil, eventually, run_vigil, settled_state};

#[tokio::test]
async fn state_survives_kill_9_clean_restart_and_replay_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(dir.path(), &["--demo"]).await;
    eventually("demo traffic in the state", Duration::from_secs(60), || async {
        let (_, state) = vigil.get("/api/v1/state").await;
        state["offset"].as_u64().unwrap() > 2000
    })
    .await;
    vigil.kill9();

    // Rebuilt from the log (no snapshot was due yet).
    let vigil = Vigil::start(dir.path(), &[]).await;
    let rebuilt = settled_state(&vigil, None).await;
    assert!(rebuilt["scopes"].as_u64().unwrap() > 20, "{rebuilt}");
    let as_of = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let queries = [
        format!("/api/v1/reputation?scope=egress_source,provider&window=1h&as_of={as_of}"),
        format!("/api/v1/reputation?scope=tenant&window=24h&as_of={as_of}"),
        format!("/api/v1/timeseries?metric=deferred&group_by=provider&step=1m&window=1h&to={as_of}"),
        "/api/v1/suppressions?limit=100000".to_owned(),
    ];
    let mut answers = Vec::new();
    for query in &queries {
        let (status, body) = vigil.get(query).await;
        assert_eq!(status, 200, "{query}: {body}");
        answers.push(body);
    }
    assert!(!answers[0]["rows"].as_array().unwrap().is_empty());
    vigil.terminate();
    assert!(dir.path().join("state/snapshot.bin.zst").exists(), "a clean stop writes a snapshot");

    // Loaded from the snapshot.
    let vigil = Vigil::start(dir.path(), &[]).await;
    let loaded = settled_state(&vigil, None).await;
    assert_eq!(loaded, rebuilt);
    for (query, expected) in queries.iter().zip(&answers) {
        assert_eq!(&vigil.get(query).await.1, expected, "{query}");
    }
    vigil.terminate();

    // From offset 0 by the replay command.
    let out = run_vigil(&["replay", "--data-dir", dir.path().to_str().unwrap()], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json[0]["digest"], rebuilt["digest"], "{:?}", out.json);
    assert_eq!(out.json[0]["actions_digest"], rebuilt["actions_digest"], "{:?}", out.json);
    assert_eq!(out.json[0]["offset"], rebuilt["offset"]);
}

#[test]
fn replay_without_a_log_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_vigil(&["replay", "--data-dir", dir.path().to_str().unwrap()], b"");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no log in") && out.stderr.contains("--data-dir"), "{}", out.stderr);
}

/// `[retention]` deletes the log's oldest events once the snapshot and the warehouse have
/// them: the state and the warehouse's answers stay as they were, `vigil replay` rebuilds the
/// same digest from the snapshot (and says so), and a copy sent again after the log's age is
/// counted again (the documented dedupe horizon).
#[tokio::test]
async fn retention_trims_the_log_without_changing_the_state_and_replay_starts_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[processor]\nsnapshot_seconds = 1\n[retention]\nlog = \"1s\"\ncheck_every = \"200ms\"\n# The example records are from 2023: older than any default.\nwarehouse = \"off\"\n")
        .unwrap();
    let data = dir.path().join("data");
    let template = common::example_records()[1].clone();
    let batch = |b: usize| {
        let records: Vec<String> = (0..100)
            .map(|i| template.replace("1d98076abbbc11ed940250ebf67f93bd", &format!("{:032x}", b * 100 + i)))
            .collect();
        format!("[{}]", records.join(","))
    };
    let vigil = Vigil::start(&data, &["--config", config.to_str().unwrap()]).await;
    for b in 0..3 {
        let (status, body) = vigil.post("/ingest/kumomta", batch(b)).await;
        assert_eq!(status, 200, "{body}");
    }
    let before = settled_state(&vigil, None).await;
    let delivered = serde_json::json!([{"provider": "google", "delivered": 300, "deferred": 0, "bounced": 0, "expired": 0, "complaints": 0, "attempts": 300}]);
    vigil.wait_for_summary("group_by=provider", &delivered).await;
    eventually("retention to delete the 300 events", Duration::from_secs(60), || async {
        let (_, metrics) = vigil.get_text("/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("vigil_retention_deleted_total{what=\"events\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            == Some(300)
    })
    .await;
    assert_eq!(vigil.summary("group_by=provider").await, delivered, "the warehouse keeps its days");
    assert_eq!(vigil.get("/api/v1/state").await.1["digest"], before["digest"]);
    vigil.terminate();

    let out = run_vigil(&["replay", "--data-dir", data.to_str().unwrap()], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("deleted by [retention]"), "{}", out.stderr);
    assert_eq!(out.json[0]["from_snapshot"], 300);
    assert_eq!(out.json[0]["digest"], before["digest"], "{:?}", out.json);

    let vigil = Vigil::start(&data, &["--config", config.to_str().unwrap()]).await;
    let (status, body) = vigil.post("/ingest/kumomta", batch(0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["events"].as_u64(), body["duplicates"].as_u64()),
        (Some(100), Some(0)),
        "past the horizon: counted again"
    );
}
