//! `kill -HUP` reloads the bounce-classifier rule files without a restart.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Vigil, example_records};
use serde_json::json;

fn bounce(id: usize) -> String {
    // The example Bounce, as a new message, with a response no bundled rule knows.
    let mut record: serde_json::Value = serde_json::from_str(&example_records()[3]).unwrap();
    record["id"] = json!(format!("{id:032x}"));
    record["response"] = json!({"code": 550, "enhanced_code": null, "content": "Zorglub says no.", "command": "."});
    record["bounce_classification"] = json!("Uncategorized");
    record.to_string()
}

#[tokio::test]
async fn sighup_swaps_in_the_edited_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("mine.toml");
    std::fs::write(&rules, "[rules]\nSpamBlock = ['Nothing matches this']\n").unwrap();
    let data = dir.path().join("data");
    let vigil = Vigil::start(&data, &["--rules", rules.to_str().unwrap()]).await;

    assert_eq!(vigil.post("/ingest/kumomta", bounce(1)).await.0, 200);
    let row = |class: &str, n: u64| json!({"bounce_class": class, "delivered": 0, "deferred": 0, "bounced": n, "expired": 0, "complaints": 0, "attempts": n});
    vigil.wait_for_summary("group_by=bounce_class", &json!([row("Uncategorized", 1)])).await;

    std::fs::write(&rules, "[rules]\nZorglub = ['Zorglub says no']\n").unwrap();
    let status = std::process::Command::new("kill").args(["-HUP", &vigil.pid().to_string()]).status().unwrap();
    assert!(status.success());
    // The reload is asynchronous: post until a new record is classified by the new rule.
    let mut id = 2;
    common::eventually("the reloaded rule to apply", std::time::Duration::from_secs(30), || {
        id += 1;
        let body = bounce(id);
        let vigil = &vigil;
        async move {
            vigil.post("/ingest/kumomta", body).await;
            vigil
                .summary("group_by=bounce_class")
                .await
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["bounce_class"] == "Zorglub")
        }
    })
    .await;
}

#[tokio::test]
async fn sighup_swaps_in_edited_action_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shaping.toml"),
        "[[\"example.com\".automation]]\nregex = \"Zorglub\"\naction = \"Suspend\"\nduration = \"1 hour\"\n",
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "shaping_files = [\"shaping.toml\"]\nshadow_shaping = [\"*\"]\n").unwrap();
    let vigil = Vigil::start(&dir.path().join("data"), &["--action-rules", rules.to_str().unwrap()]).await;
    let record = |n: usize| {
        let mut record: serde_json::Value = serde_json::from_str(&example_records()[3]).unwrap();
        record["id"] = json!(format!("{n:032x}"));
        record["type"] = json!("TransientFailure");
        record["recipient"] = json!("x@example.com");
        record["egress_source"] = json!(format!("ip-{n}"));
        record["site"] = json!(format!("ip-{n}->mx.example.com@smtp_client"));
        record["timestamp"] = json!(chrono::Utc::now().timestamp());
        record["event_time"] = json!(chrono::Utc::now().to_rfc3339());
        record["response"] =
            json!({"code": 421, "enhanced_code": null, "content": "Zorglub says later.", "command": "."});
        record.to_string()
    };
    let statuses = |vigil: &Vigil| {
        let (http, url) = (vigil.http.clone(), vigil.url("/api/v1/decisions"));
        async move {
            let body: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            body["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["status"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(vigil.post("/publish_log_v1", record(1)).await.0, 200);
    common::eventually("the shadow decision", std::time::Duration::from_secs(30), || async {
        statuses(&vigil).await == ["shadow"]
    })
    .await;

    std::fs::write(&rules, "shaping_files = [\"shaping.toml\"]\n").unwrap();
    let status = std::process::Command::new("kill").args(["-HUP", &vigil.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let mut n = 1;
    common::eventually("the rule to act for real", std::time::Duration::from_secs(30), || {
        n += 1;
        let body = record(n);
        let vigil = &vigil;
        async move {
            vigil.post("/publish_log_v1", body).await;
            statuses(vigil).await.contains(&"applied".to_owned())
        }
    })
    .await;
}
