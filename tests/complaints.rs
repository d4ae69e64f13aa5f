//! A spam complaint suppresses the person who complained, never the feedback mailbox the
//! report was addressed to, and counts for the complainer's provider (issue 32, first part).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Vigil, eventually};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_suppresses_the_complainer_and_counts_for_their_provider() {
    let data = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(data.path(), &[]).await;
    // As kumod writes it on receiving Yahoo's ARF report (log_arf): the record's recipient is
    // the feedback mailbox and its peer the reporting host.
    let record = json!({
        "type": "Feedback", "id": "5f0a3c1e2b7d11f1a4c250ebf67f93bd",
        "sender": "fbl-reports@yahoo.com", "recipient": "fbl@fbl.sender-example.com",
        "queue": "fbl.sender-example.com", "site": "", "size": 2911,
        "response": {"code": 250, "enhanced_code": null, "content": "", "command": null},
        "peer_address": {"name": "mta1.feedback.yahoo.com", "addr": "98.136.0.1"},
        "timestamp": chrono::Utc::now().timestamp(), "num_attempts": 0,
        "bounce_classification": "Uncategorized", "egress_pool": null, "egress_source": null,
        "source_address": null, "meta": {}, "headers": {},
        "feedback_report": {
            "feedback_type": "abuse", "user_agent": "Yahoo!-Mail-Feedback/2.0", "version": "1",
            "original_rcpto_to": ["alice@yahoo.com"],
            "supplemental_trace": {"recipient": "alice@yahoo.com"}
        }
    });
    assert_eq!(vigil.post("/ingest/kumomta", record.to_string()).await.0, 200);
    eventually("the complainer suppressed", Duration::from_secs(30), || async {
        let (_, page) = vigil.get("/api/v1/suppressions?recipient=alice@yahoo.com").await;
        page["rows"].as_array().is_some_and(|rows| rows.iter().any(|r| r["reason"] == "complaint"))
    })
    .await;
    let (_, mailbox) = vigil.get("/api/v1/suppressions?recipient=fbl@fbl.sender-example.com").await;
    assert_eq!(mailbox["rows"], json!([]), "the feedback mailbox is never suppressed");
    let rows = vigil.summary("group_by=provider").await;
    let yahoo: Vec<&Value> = rows.as_array().unwrap().iter().filter(|r| r["provider"] == "yahoo").collect();
    assert_eq!(yahoo.len(), 1, "{rows}");
    assert_eq!(yahoo[0]["complaints"], 1, "{rows}");
    vigil.terminate();
}
