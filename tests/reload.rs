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
