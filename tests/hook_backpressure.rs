//! KumoMTA's stock log hook (`log_hooks:new_json`) drops a record for good on any non-2xx
//! answer and retries only a connection error. A client that behaves the same, at 256
//! concurrent connections (eight times the in-flight limit), must lose nothing: Vigil slows
//! it down instead of refusing it.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Vigil, eventually};
use serde_json::json;

const CONNECTIONS: usize = 256;
const RECORDS_PER_CONNECTION: usize = 20;

fn delivery(connection: usize, n: usize) -> String {
    let now = chrono::Utc::now().timestamp();
    json!({
        "type": "Delivery", "id": format!("hook-{connection}-{n}"), "sender": "news@sender.example",
        "recipient": format!("r{connection}-{n}@gmail.com"), "queue": "gmail.com",
        "site": "source1->gmail-smtp-in.l.google.com", "size": 1024, "num_attempts": 0,
        "bounce_classification": "Uncategorized",
        "response": {"code": 250, "enhanced_code": {"class": 2, "subject": 0, "detail": 0}, "content": "OK", "command": "."},
        "peer_address": {"name": "gmail-smtp-in.l.google.com", "addr": "142.251.2.27"},
        "timestamp": now, "created": now, "egress_pool": "pool0", "egress_source": "source1",
        "feedback_report": null, "meta": {}, "headers": {}, "delivery_protocol": "ESMTP",
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    })
    .to_string()
        + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_drops_every_non_2xx_loses_nothing_at_256_connections() {
    let data = tempfile::tempdir().unwrap();
    // The default in-flight limit (32): the other 224 connections must wait, not be refused.
    let vigil = Vigil::start(data.path(), &[]).await;
    let url = vigil.url("/ingest/kumomta");
    let dropped = Arc::new(AtomicU64::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for connection in 0..CONNECTIONS {
        let (url, dropped) = (url.clone(), Arc::clone(&dropped));
        senders.spawn(async move {
            // One client per connection, as each of kumod's hook connections is its own.
            let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
            for n in 0..RECORDS_PER_CONNECTION {
                loop {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(delivery(connection, n))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => break,
                        // new_json: kumo.reject(500) -> a Bounce of the hook message; gone.
                        Ok(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // A connection error or timeout: kumod retries the record.
                        Err(_) => continue,
                    }
                }
            }
        });
    }
    while let Some(sender) = senders.join_next().await {
        sender.unwrap();
    }
    assert_eq!(dropped.load(Ordering::Relaxed), 0, "records answered with a non-2xx (lost with new_json)");
    let total = (CONNECTIONS * RECORDS_PER_CONNECTION) as u64;
    eventually("every record counted", Duration::from_secs(60), || async {
        vigil.summary("").await.as_array().unwrap().iter().filter_map(|r| r["delivered"].as_u64()).sum::<u64>() == total
    })
    .await;
    vigil.terminate();
}
