//! Who may put events in: beyond loopback, every ingest route needs a trusted client address
//! or a bearer token that may ingest, and without one configured `vigil run` refuses to start.
//! A forged hard bounce must not suppress anyone.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Vigil, eventually, run_vigil};
use serde_json::{Value, json};

const INGEST_TOKEN: &str = "kumod-ingest-token-0123456789";
const VIEWER_TOKEN: &str = "grafana-viewer-token-0123456789";

/// A KumoMTA `Bounce` record: a `550 5.1.1` for `recipient`, now.
fn hard_bounce(id: &str, recipient: &str) -> String {
    json!({
        "type": "Bounce", "id": id, "sender": "news@sender.example", "recipient": recipient,
        "queue": "gmail.com", "site": "source1->gmail-smtp-in.l.google.com",
        "size": 1024, "num_attempts": 1, "bounce_classification": "InvalidRecipient",
        "response": {"code": 550, "enhanced_code": {"class": 5, "subject": 1, "detail": 1},
                     "content": "The email account that you tried to reach does not exist", "command": "RCPT TO"},
        "peer_address": {"name": "gmail-smtp-in.l.google.com", "addr": "142.251.2.27"},
        "timestamp": chrono::Utc::now().timestamp(), "created": chrono::Utc::now().timestamp(),
        "egress_pool": "pool0", "egress_source": "source1", "feedback_report": null,
        "meta": {}, "headers": {}, "delivery_protocol": "ESMTP", "nodeid": "4eb22880-dc03-44dc-a4d1-4d0e68ac7845"
    })
    .to_string()
}

async fn suppressed(vigil: &Vigil, recipient: &str) -> bool {
    let response = vigil
        .http
        .get(vigil.url(&format!("/api/v1/suppressions?recipient={recipient}")))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    !response.json::<Value>().await.unwrap()["rows"].as_array().unwrap().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_ingest_needs_a_trusted_host_or_an_ingest_token() {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"kumod\"\ntoken = \"{INGEST_TOKEN}\"\nrole = \"ingest\"\n\n\
             [[tokens]]\nname = \"grafana\"\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n"
        ),
    )
    .unwrap();
    // Listening on every address; the trusted hosts leave loopback, where the test connects
    // from, out.
    let vigil = Vigil::start_on(
        "0.0.0.0:0",
        &data.path().join("data"),
        &["--api-tokens", tokens.to_str().unwrap(), "--trusted-hosts", "10.9.9.9"],
    )
    .await;

    // No credential, a token that may not ingest, a wrong token: 401 on both ingest routes.
    for path in ["/ingest/kumomta", "/publish_log_v1"] {
        for bearer in [None, Some(VIEWER_TOKEN), Some("not-a-token-at-all-000000")] {
            let (status, body) = vigil.post_as(path, hard_bounce("forged", "victim@gmail.com"), bearer).await;
            assert_eq!(status, 401, "{path} with {bearer:?}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
    }

    // With the ingest token: taken. Once it is in the state, the forged one is not.
    let (status, body) =
        vigil.post_as("/ingest/kumomta", hard_bounce("real", "gone@gmail.com"), Some(INGEST_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        vigil.post_as("/publish_log_v1", hard_bounce("real-tsa", "gone2@gmail.com"), Some(INGEST_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    eventually("the admitted bounces suppress their recipients", Duration::from_secs(30), || async {
        suppressed(&vigil, "gone@gmail.com").await && suppressed(&vigil, "gone2@gmail.com").await
    })
    .await;
    assert!(!suppressed(&vigil, "victim@gmail.com").await, "a refused record changed the state");
    let response = vigil.http.get(vigil.url("/api/v1/summary")).bearer_auth(VIEWER_TOKEN).send().await.unwrap();
    let rows: Value = response.json().await.unwrap();
    let bounced: u64 = rows["rows"].as_array().unwrap().iter().filter_map(|r| r["bounced"].as_u64()).sum();
    assert_eq!(bounced, 2, "only the two admitted records were counted: {rows}");
    vigil.terminate();

    // From a trusted address (loopback trusted this time): no token needed.
    let vigil = Vigil::start_on(
        "0.0.0.0:0",
        &data.path().join("data"),
        &["--api-tokens", tokens.to_str().unwrap(), "--trusted-hosts", "10.9.9.9,127.0.0.1"],
    )
    .await;
    let (status, body) = vigil.post("/ingest/kumomta", hard_bounce("trusted", "gone3@gmail.com")).await;
    assert_eq!(status, 200, "{body}");
    vigil.terminate();
}

#[test]
fn listening_beyond_loopback_without_an_ingest_credential_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens.toml");
    // API tokens, but nothing that guards ingest.
    std::fs::write(&tokens, format!("[[tokens]]\nname = \"grafana\"\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n"))
        .unwrap();
    let dir = data.path().join("data");
    let out = run_vigil(
        &[
            "run",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            dir.to_str().unwrap(),
            "--api-tokens",
            tokens.to_str().unwrap(),
        ],
        b"",
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("nothing guards ingest") && out.stderr.contains("--trusted-hosts"), "{}", out.stderr);
}
