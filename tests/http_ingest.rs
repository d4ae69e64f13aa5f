//! End to end over HTTP: KumoMTA log-hook posts, summaries, and a `kill -9` in the middle.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Vigil, example_records};
use serde_json::json;

fn by_provider() -> serde_json::Value {
    json!([
        {"provider": "google", "delivered": 1, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 2},
        {"provider": "yahoo", "delivered": 0, "deferred": 1, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 2},
    ])
}

fn by_source_and_provider() -> serde_json::Value {
    json!([
        // The AdminBounce has no egress source: kumod bounced it from the scheduled queue.
        {"egress_source": null, "provider": "yahoo", "delivered": 0, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 1},
        {"egress_source": "ip-10-0-0-1", "provider": "google", "delivered": 0, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 1},
        {"egress_source": "source2", "provider": "google", "delivered": 1, "deferred": 0, "bounced": 0, "expired": 0, "complaints": 0, "attempts": 1},
        {"egress_source": "unspecified", "provider": "yahoo", "delivered": 0, "deferred": 1, "bounced": 0, "expired": 0, "complaints": 0, "attempts": 1},
    ])
}

#[tokio::test]
async fn posted_records_are_counted_once_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let records = example_records();
    let array = format!("[{}]", records.join(","));

    let vigil = Vigil::start(dir.path(), &[]).await;
    let (status, body) = vigil.post("/ingest/kumomta", array.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"accepted": 5, "events": 5, "duplicates": 0, "dead_lettered": 0}));
    // The same records one by one, as `log_hooks:new_json` sends them: all already there.
    for record in &records {
        let (status, body) = vigil.post("/ingest/kumomta", record.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64()), (Some(1), Some(1)));
    }
    vigil.wait_for_summary("group_by=provider", &by_provider()).await;
    vigil.wait_for_summary("group_by=egress_source,provider", &by_source_and_provider()).await;
    // Without grouping, one row of totals; by kind, outcome kinds only.
    assert_eq!(
        vigil.summary("").await,
        json!([{"delivered": 1, "deferred": 1, "bounced": 2, "expired": 0, "complaints": 0, "attempts": 4}])
    );
    let kinds: Vec<String> = vigil
        .summary("group_by=kind")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["bounced", "deferred", "delivered"]);
    vigil.kill9();

    let vigil = Vigil::start(dir.path(), &[]).await;
    assert_eq!(vigil.summary("group_by=provider").await, by_provider());
    // KumoMTA re-sends what it had in flight when we crashed: nothing is counted twice.
    let (status, body) = vigil.post("/ingest/kumomta", array).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicates"], 5);
    assert_eq!(vigil.summary("group_by=provider").await, by_provider());
    assert_eq!(vigil.summary("group_by=egress_source,provider").await, by_source_and_provider());
}

#[tokio::test]
async fn summary_time_range_uses_event_times() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(dir.path(), &[]).await;
    let array = format!("[{}]", example_records().join(","));
    assert_eq!(vigil.post("/ingest/kumomta", array).await.0, 200);
    vigil.wait_for_summary("group_by=provider", &by_provider()).await;
    // The 2023 delivery is outside 2025; the 2025-09-12 records are inside; `to` is exclusive.
    let rows = vigil.summary("group_by=kind&from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z").await;
    assert_eq!(
        rows,
        json!([
            {"kind": "bounced", "delivered": 0, "deferred": 0, "bounced": 2, "expired": 0, "complaints": 0, "attempts": 2},
            {"kind": "deferred", "delivered": 0, "deferred": 1, "bounced": 0, "expired": 0, "complaints": 0, "attempts": 1},
        ])
    );
    let rows = vigil.summary("group_by=kind&from=2025-09-12T11:08:01Z&to=2025-09-12T11:08:10.120Z").await;
    assert_eq!(
        rows,
        json!([{"kind": "deferred", "delivered": 0, "deferred": 1, "bounced": 0, "expired": 0, "complaints": 0, "attempts": 1}])
    );
    assert_eq!(vigil.summary("from=2030-01-01T00:00:00Z").await, json!([]));
}

#[tokio::test]
async fn bad_input_gets_a_reason_and_is_kept_as_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(dir.path(), &["--max-body-bytes", "4194304"]).await;

    let (status, body) = vigil.post("/ingest/kumomta", "{\"type\": \"Delivery\",").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not a JSON log record"), "{body}");

    let mut invalid_utf8 = br#"{"type":"Delivery","id":"x","recipient":"a@b","timestamp":1,"sender":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(b"\"}");
    let (status, body) = vigil.post("/ingest/kumomta", invalid_utf8).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("UTF-8"), "{body}");

    let (status, body) = vigil.post("/ingest/kumomta", vec![b'x'; 10 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("4194304"), "{body}");

    let (status, body) = vigil.post("/ingest/kumomta", r#"{"type":"Delivery","id":"x","timestamp":1}"#).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"][0]["reason"].as_str().unwrap().contains("missing field `recipient`"), "{body}");

    // One bad record in a batch does not cost the good ones.
    let records = example_records();
    let batch =
        format!("[{}, {{\"type\":\"Teleport\",\"id\":\"y\",\"recipient\":\"a@b\",\"timestamp\":1}}]", records[1]);
    let (status, body) = vigil.post("/ingest/kumomta", batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["dead_lettered"], 1);
    assert_eq!(body["errors"][0]["index"], 1);

    let (status, dead) = vigil.get("/api/v1/deadletters").await;
    assert_eq!(status, 200);
    assert_eq!(dead["total"], 4, "{dead:#}");
    let reasons: Vec<&str> = dead["rows"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(reasons[3].contains("unknown KumoMTA record type `Teleport`"), "{reasons:?}");
    assert_eq!(dead["rows"][2]["source"], "kumomta-http");

    // Still serving, and the good record was counted.
    vigil
        .wait_for_summary(
            "group_by=provider",
            &json!([{"provider": "google", "delivered": 1, "deferred": 0, "bounced": 0, "expired": 0, "complaints": 0, "attempts": 1}]),
        )
        .await;
}

#[tokio::test]
async fn bad_query_parameters_get_a_400_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(dir.path(), &[]).await;
    for (query, needle) in [
        ("group_by=ip", "unknown dimension `ip`"),
        ("from=yesterday", "RFC 3339"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "is after"),
    ] {
        let (status, body) = vigil.get(&format!("/api/v1/summary?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{query}: {body}");
    }
    let (status, body) = vigil.get("/api/v1/reputation?window=7m").await;
    assert_eq!(status, 400, "{body}");
}

/// A KumoMTA-style stream of unique deliveries, killed mid-stream: everything acknowledged
/// survives, and re-sending the whole stream afterwards counts each record exactly once.
#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_acknowledged_and_counts_resends_once() {
    let dir = tempfile::tempdir().unwrap();
    let template = example_records()[1].clone();
    let batches: Vec<String> = (0..40)
        .map(|b| {
            let records: Vec<String> = (0..50)
                .map(|i| template.replace("1d98076abbbc11ed940250ebf67f93bd", &format!("{:032x}", b * 50 + i)))
                .collect();
            format!("[{}]", records.join(","))
        })
        .collect();
    let delivered = |n: u64| json!([{"provider": "google", "delivered": n, "deferred": 0, "bounced": 0, "expired": 0, "complaints": 0, "attempts": n}]);

    let vigil = Vigil::start(dir.path(), &[]).await;
    let mut acknowledged = 0u64;
    for (i, batch) in batches.iter().enumerate() {
        if i == 20 {
            // Two requests in flight when the process dies.
            let (a, b) = (vigil.url("/ingest/kumomta"), vigil.http.clone());
            let (c, d) = (batches[20].clone(), batches[21].clone());
            tokio::spawn(async move {
                let _ = b.post(&a).body(c).send().await;
            });
            let (a, b) = (vigil.url("/ingest/kumomta"), vigil.http.clone());
            tokio::spawn(async move {
                let _ = b.post(&a).body(d).send().await;
            });
            break;
        }
        let (status, body) = vigil.post("/ingest/kumomta", batch.clone()).await;
        assert_eq!(status, 200, "{body}");
        acknowledged += body["accepted"].as_u64().unwrap();
    }
    vigil.kill9();
    assert_eq!(acknowledged, 1000);

    let vigil = Vigil::start(dir.path(), &[]).await;
    common::eventually("acknowledged records to be counted", std::time::Duration::from_secs(30), || async {
        vigil.summary("group_by=provider").await[0]["delivered"].as_u64().unwrap_or(0) >= acknowledged
    })
    .await;
    // The sender retries everything it is unsure of (here: all of it).
    for batch in &batches {
        let (status, body) = vigil.post("/ingest/kumomta", batch.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    vigil.wait_for_summary("group_by=provider", &delivered(2000)).await;
    vigil.kill9();
    let vigil = Vigil::start(dir.path(), &[]).await;
    assert_eq!(vigil.summary("group_by=provider").await, delivered(2000));
}

/// Many connections posting one record each (a log hook without batching): their appends share
/// commits, and each 200 still means the record is durable. The process is killed while
/// requests are in flight; every record answered 200 is in the log afterwards.
#[tokio::test]
async fn concurrent_single_record_posts_are_durable_when_answered() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let template = example_records()[1].clone();
    let record = move |lane: usize, i: usize| {
        template.replace("1d98076abbbc11ed940250ebf67f93bd", &format!("{lane:08x}{i:024x}"))
    };
    let vigil = Vigil::start(dir.path(), &[]).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let (enough, done) = tokio::sync::watch::channel(false);
    let lanes: Vec<_> = (0..32)
        .map(|lane| {
            let (http, url, answered, enough) =
                (vigil.http.clone(), vigil.url("/ingest/kumomta"), Arc::clone(&answered), enough.clone());
            let record = record.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    let Ok(response) = http.post(&url).body(record(lane, i)).send().await else { break };
                    if response.status() != 200 {
                        break;
                    }
                    acknowledged.push(record(lane, i));
                    if answered.fetch_add(1, Ordering::SeqCst) + 1 == 1500 {
                        let _ = enough.send(true);
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut done = done;
    done.wait_for(|enough| *enough).await.unwrap();
    // Killed with the lanes still posting: some requests are in flight, unanswered.
    vigil.kill9();
    let mut acknowledged = Vec::new();
    for lane in lanes {
        acknowledged.extend(lane.await.unwrap());
    }
    assert!(acknowledged.len() >= 1500);

    let vigil = Vigil::start(dir.path(), &[]).await;
    for chunk in acknowledged.chunks(200) {
        let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", chunk.join(","))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["duplicates"].as_u64(),
            Some(chunk.len() as u64),
            "every acknowledged record was already stored: {body}"
        );
    }
}

/// A full disk under `vigil run`: ingest answers 503 with `Retry-After` while the log cannot
/// write, a restart in that state comes up, and once there is room again ingest resumes by
/// itself with every acknowledged record stored once. Mounts a tmpfs (the test script runs
/// as root); elsewhere it says so and checks nothing.
#[tokio::test]
async fn a_full_disk_answers_503_and_recovers_with_nothing_acknowledged_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(dir.path()).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let mount = Unmount(dir.path().to_owned());
    let data = mount.0.join("data");
    let template = example_records()[1].clone();
    // Records that do not compress: each carries bytes of its own.
    let batch = |b: usize| {
        let records: Vec<String> = (0..50)
            .map(|i| {
                let n = (b * 50 + i) as u64;
                let blob: String =
                    (0..200).map(|k| format!("{:x}", (n * 2_654_435_761 + k * 40_503) % 65_521)).collect();
                template
                    .replace("1d98076abbbc11ed940250ebf67f93bd", &format!("{n:032x}"))
                    .replace("\"meta\":{}", &format!("\"meta\":{{\"blob\":\"{blob}\"}}"))
            })
            .collect();
        format!("[{}]", records.join(","))
    };
    let vigil = Vigil::start(&data, &[]).await;
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for b in 0..400 {
        let response = vigil.http.post(vigil.url("/ingest/kumomta")).body(batch(b)).send().await.unwrap();
        if response.status() == 503 {
            refusal = Some(response);
            break;
        }
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        acknowledged.push(batch(b));
    }
    let refusal = refusal.expect("the 6 MB file system filled up");
    assert!(refusal.headers().contains_key("retry-after"));
    assert!(!acknowledged.is_empty());
    vigil.kill9();

    // A restart while the disk is still full comes up (and still refuses what it cannot keep).
    let vigil = Vigil::start(&data, &[]).await;
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=256m"]).arg(&mount.0).status().unwrap();
    assert!(grown.success());
    common::eventually("ingest to resume once there is room", std::time::Duration::from_secs(60), || async {
        vigil.post("/ingest/kumomta", batch(1_000)).await.0 == 200
    })
    .await;
    for body in &acknowledged {
        let (status, answer) = vigil.post("/ingest/kumomta", body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["duplicates"], 50, "every acknowledged record was kept: {answer}");
    }
}
