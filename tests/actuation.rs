//! Closing the loop with KumoMTA: traffic posted as kumod's TSA publisher would (Yahoo TSS04
//! deferrals, Gmail 4.7.28, a Comcast RL0000 threshold) under the bundled rules; the exact
//! frames on `/subscribe_event_v1`, the exact `shaping.toml` overlay, and the admin API calls
//! a recording server standing in for kumod receives. Then a restart: actions in force
//! survive, and nothing is pushed twice.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use chrono::{DateTime, SecondsFormat, Utc};
use common::{Vigil, eventually, recording_kumod};
use futures::StreamExt;
use serde_json::{Value, json};

/// A KumoMTA `TransientFailure` record.
#[allow(clippy::too_many_arguments)]
fn deferral(
    source: &str,
    recipient: &str,
    mx_site: &str,
    code: u16,
    enhanced: (u8, u8, u8),
    text: &str,
    at: DateTime<Utc>,
    id: &str,
) -> String {
    json!({
        "type": "TransientFailure",
        "id": id,
        "sender": "news@shop.example",
        "recipient": recipient,
        "queue": format!("spring:acme@{}", recipient.split('@').nth(1).unwrap()),
        "site": format!("{source}->{mx_site}@smtp_client"),
        "size": 2048,
        "response": {
            "code": code,
            "enhanced_code": {"class": enhanced.0, "subject": enhanced.1, "detail": enhanced.2},
            "content": text,
            "command": "."
        },
        "egress_pool": "pool-1",
        "egress_source": source,
        "timestamp": at.timestamp(),
        "created": at.timestamp() - 5,
        "num_attempts": 1,
        "bounce_classification": "Uncategorized",
        "meta": {},
        "headers": {},
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    })
    .to_string()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kumomta_traffic_suspends_throttles_and_pushes_exactly_once() {
    let (kumod, calls) = recording_kumod().await;
    let data = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(data.path(), &["--kumod-url", &kumod]).await;

    // kumod subscribes first, as setup_with_automation does.
    let ws_url = vigil.url("/subscribe_event_v1").replacen("http", "ws", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();

    // Whole seconds: KumoMTA timestamps are seconds, and expiries are timestamp + duration.
    let t0 = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let yahoo_site = "(mta5|mta6|mta7).am0.yahoodns.net";
    let tss04 =
        "[TSS04] Messages from 10.0.0.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1";
    let gmail_site = "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com";
    let gmail = "Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.";
    let records = [
        deferral("ip-1", "a@yahoo.com", yahoo_site, 421, (4, 7, 0), tss04, t0, "y1"),
        deferral("ip-1", "b@yahoo.com", yahoo_site, 421, (4, 7, 0), tss04, t0, "y2"),
        deferral("ip-2", "c@gmail.com", gmail_site, 421, (4, 7, 28), gmail, t0, "g1"),
        deferral("ip-2", "d@gmail.com", gmail_site, 421, (4, 7, 28), gmail, t0, "g2"),
        deferral(
            "ip-3",
            "e@comcast.net",
            "mx1.comcast.net",
            421,
            (4, 7, 0),
            "RL0000 Rate limited, try later",
            t0,
            "c1",
        ),
        deferral(
            "ip-3",
            "f@comcast.net",
            "mx1.comcast.net",
            421,
            (4, 7, 0),
            "RL0000 Rate limited, try later",
            t0,
            "c2",
        ),
    ];
    for record in &records {
        // kumod's publisher sends one record per request.
        let (status, _) = vigil.post("/publish_log_v1", record.clone()).await;
        assert_eq!(status, 200);
    }

    // The frames: TSS04 suspends ip-1's Yahoo path twice over (the shipped rule on the first
    // response, the community threshold rule on the second); nothing else suspends or bounces.
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap().unwrap().unwrap();
        frames.push(serde_json::from_str::<Value>(message.to_text().unwrap()).unwrap());
    }
    let yahoo_path = format!("ip-1->{yahoo_site}@smtp_client");
    let expires = rfc3339(t0 + chrono::Duration::hours(2));
    for frame in &frames {
        let suspension = &frame["ReadyQSuspension"];
        assert_eq!(suspension["site_name"], yahoo_path, "{frame}");
        assert_eq!(suspension["source"], "ip-1");
        assert_eq!(suspension["expires"], expires);
        assert!(suspension["rule_hash"].as_str().unwrap().len() == 64, "{frame}");
    }
    assert_eq!(frames[0]["ReadyQSuspension"]["reason"], "automation rule: \\[TS?S04\\]");
    assert_eq!(frames[1]["ReadyQSuspension"]["reason"], "automation rule: 421 4\\.7\\.0 \\[TSS04\\]");

    // The overlay: the shipped default rule throttles ip-1 at Yahoo on "Messages from a.b.c.d
    // temporarily deferred" (rolled up to the MX site), the community Gmail rule on the
    // second 4.7.28, the shipped Comcast rule on the second RL0000.
    let (status, overlay) = vigil.get_text("/get_config_v1/shaping.toml").await;
    assert_eq!(status, 200);
    let y_exp = rfc3339(t0 + chrono::Duration::minutes(90));
    let g_exp = rfc3339(t0 + chrono::Duration::minutes(30));
    let c_exp = rfc3339(t0 + chrono::Duration::hours(2));
    let expected = [
        "# Generated by Vigil (TSA-compatible)\n# Number of entries: 4\n".to_owned(),
        format!("\n[\"comcast.net\"]\nmx_rollup = true\n\n[\"comcast.net\".sources.\"ip-3\"]\n# reason: automation rule: RL0000\n# expires: {c}\n\"max_connection_rate\" = \"10000/h\"\n", c = chrono::DateTime::parse_from_rfc3339(&c_exp).unwrap().to_rfc3339()),
        format!("\n[\"gmail.com\"]\nmx_rollup = false\n\n[\"gmail.com\".sources.\"ip-2\"]\n# reason: automation rule: Our system has detected an unusual rate\n# expires: {g}\n\"max_message_rate\" = \"10/minute\"\n", g = chrono::DateTime::parse_from_rfc3339(&g_exp).unwrap().to_rfc3339()),
        format!("\n[\"yahoo.com\"]\nmx_rollup = true\n\n[\"yahoo.com\".sources.\"ip-1\"]\n# reason: automation rule: (Messages from \\d+\\.\\d+\\.\\d+\\.\\d+ temporarily deferred,All messages from \\d+\\.\\d+\\.\\d+\\.\\d+ will be permanently deferred,has been temporarily rate limited due to IP reputation,Unfortunately, messages from \\d+\\.\\d+\\.\\d+\\.\\d+ weren.t sent,Server busy\\. Please try again later from)\n# expires: {y}\n\"connection_limit\" = 1\n# reason: automation rule: (Messages from \\d+\\.\\d+\\.\\d+\\.\\d+ temporarily deferred,All messages from \\d+\\.\\d+\\.\\d+\\.\\d+ will be permanently deferred,has been temporarily rate limited due to IP reputation,Unfortunately, messages from \\d+\\.\\d+\\.\\d+\\.\\d+ weren.t sent,Server busy\\. Please try again later from)\n# expires: {y}\n\"max_message_rate\" = \"1/minute\"\n", y = chrono::DateTime::parse_from_rfc3339(&y_exp).unwrap().to_rfc3339()),
    ]
    .concat();
    assert_eq!(overlay, expected);
    let parsed: toml::Table = toml::from_str(&overlay).expect("the overlay is TOML kumod can load");
    assert_eq!(parsed["yahoo.com"]["sources"]["ip-1"]["connection_limit"].as_integer(), Some(1));

    let (_, suspended) = vigil.get("/get_suspension_v1/suspended.json").await;
    assert_eq!(suspended["ready_q"].as_array().unwrap().len(), 2);
    assert_eq!(suspended["sched_q"], json!([]));
    let (_, bounced) = vigil.get("/get_bounce_v1/bounced.json").await;
    assert_eq!(bounced, json!([]));
    assert_eq!(vigil.get_text("/tsa/status").await, (200, "TSA Daemon OK".to_owned()));

    // kumod's admin API: two ready-queue suspensions with the path and expiry, and an epoch
    // bump per overlay change (ip-1 Yahoo x2, Gmail, Comcast).
    let expected_calls = 6;
    eventually("kumod to receive the admin calls", Duration::from_secs(30), || {
        let calls = Arc::clone(&calls);
        async move { calls.lock().unwrap().len() >= expected_calls }
    })
    .await;
    let received = calls.lock().unwrap().clone();
    let suspends: Vec<&(String, String, Value)> =
        received.iter().filter(|(_, path, _)| path == "/api/admin/suspend-ready-q/v1").collect();
    assert_eq!(suspends.len(), 2, "{received:#?}");
    for (method, _, body) in &suspends {
        assert_eq!(method, "POST");
        assert_eq!(body["name"], yahoo_path);
        assert_eq!(body["expires"], expires);
        assert!(body["reason"].as_str().unwrap().contains("TS"), "{body}");
    }
    let bumps = received.iter().filter(|(_, path, _)| path == "/api/admin/bump-config-epoch").count();
    assert_eq!(bumps, 4, "{received:#?}");
    assert_eq!(received.len(), 6, "nothing else: {received:#?}");

    // The decisions API tells the story with evidence.
    let (_, decisions) = vigil.get("/api/v1/decisions?status=applied").await;
    let decisions = decisions["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 6);
    let community =
        decisions.iter().find(|d| d["evidence"]["count"] == 2 && d["action"] == "suspend_ready_queue").unwrap();
    assert!(community["evidence"]["event_id"].is_string(), "{community}");
    assert!(community["evidence"]["response"].as_str().unwrap().contains("[TSS04]"));
    let (_, throttles) = vigil.get("/api/v1/throttles").await;
    assert_eq!(throttles["active"].as_array().unwrap().len(), 6);

    // Restart: the actions are rebuilt (from the snapshot written at the clean stop), still
    // served, and nothing is pushed again.
    let before = calls.lock().unwrap().len();
    vigil.terminate();
    let vigil = Vigil::start(data.path(), &["--kumod-url", &kumod]).await;
    let (_, again) = vigil.get_text("/get_config_v1/shaping.toml").await;
    assert_eq!(again, expected);
    let (_, suspended_again) = vigil.get("/get_suspension_v1/suspended.json").await;
    assert_eq!(suspended_again, suspended);
    let ws_url = vigil.url("/subscribe_event_v1").replacen("http", "ws", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap().unwrap().unwrap();
        replayed.push(serde_json::from_str::<Value>(message.to_text().unwrap()).unwrap());
    }
    replayed.sort_by_key(|f| f["ReadyQSuspension"]["reason"].to_string());
    frames.sort_by_key(|f| f["ReadyQSuspension"]["reason"].to_string());
    assert_eq!(replayed, frames, "a new subscriber gets the suspensions in force");
    // One more record after the restart proves the pushers are running: it pushes one call.
    let (status, _) = vigil
        .post("/publish_log_v1", deferral("ip-4", "g@yahoo.com", yahoo_site, 421, (4, 7, 0), tss04, t0, "y3"))
        .await;
    assert_eq!(status, 200);
    eventually("kumod to receive the new suspension", Duration::from_secs(30), || {
        let calls = Arc::clone(&calls);
        async move { calls.lock().unwrap().len() > before }
    })
    .await;
    let after: Vec<_> = calls.lock().unwrap()[before..].to_vec();
    assert!(
        after.iter().all(|(_, _, body)| body.get("name").is_none_or(|n| n.as_str().unwrap().starts_with("ip-4"))),
        "only ip-4's new actions, none of the old ones again: {after:#?}"
    );
    vigil.terminate();
}

/// What a webhook receiver got: headers of interest and the raw body.
type Deliveries = Arc<Mutex<Vec<(String, String, String, Vec<u8>)>>>;

async fn recording_webhook() -> (String, Deliveries) {
    async fn record(State(seen): State<Deliveries>, headers: axum::http::HeaderMap, body: axum::body::Bytes) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        seen.lock().unwrap().push((
            header("x-vigil-timestamp"),
            header("x-vigil-signature"),
            header("x-vigil-decision-id"),
            body.to_vec(),
        ));
    }
    let seen: Deliveries = Arc::default();
    let app = axum::Router::new().fallback(record).with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_token_shadow_mode_and_what_if_replay() {
    use hmac::{Hmac, Mac};
    let (hook, seen) = recording_webhook().await;
    let data = tempfile::tempdir().unwrap();
    // The community Yahoo rules in shadow; the shipped ones in force.
    let rules = data.path().join("rules.toml");
    std::fs::write(
        &rules,
        "shaping_files = [\"builtin:kumomta-shipped\", \"builtin:kumomta-community\"]\nshadow_shaping = [\"builtin:kumomta-community\"]\n",
    )
    .unwrap();
    let rules = rules.to_str().unwrap().to_owned();
    let vigil = Vigil::start(
        data.path(),
        &["--action-rules", &rules, "--webhook-url", &hook, "--webhook-secret", "s3cret", "--api-token", "t0ken"],
    )
    .await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let site = "(mta5|mta6|mta7).am0.yahoodns.net";
    let tss04 = "[TSS04] Messages from 10.0.0.1 temporarily deferred due to user complaints";
    for id in ["w1", "w2"] {
        let (status, _) =
            // The TSA token kumod holds admits its records too.
            vigil.post_as("/publish_log_v1", deferral("ip-1", "a@yahoo.com", site, 421, (4, 7, 0), tss04, t0, id), Some("t0ken")).await;
        assert_eq!(status, 200);
    }

    // The token guards the TSA endpoints and the actions API, not the status probe.
    let unauthorised = vigil.http.get(vigil.url("/get_config_v1/shaping.toml")).send().await.unwrap();
    assert_eq!(unauthorised.status(), 401);
    assert_eq!(vigil.get_text("/tsa/status").await.0, 200);
    let decisions = |query: &'static str| {
        let (http, url) = (vigil.http.clone(), vigil.url(query));
        async move {
            let response = http.get(url).bearer_auth("t0ken").send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["decisions"].as_array().unwrap().clone()
        }
    };
    eventually("decisions recorded", Duration::from_secs(30), || async {
        decisions("/api/v1/decisions").await.len() == 4
    })
    .await;
    let shadow = decisions("/api/v1/decisions?status=shadow").await;
    assert_eq!(shadow.len(), 1, "the community TSS04 threshold rule, in shadow: {shadow:#?}");
    assert!(shadow[0]["rule"].as_str().unwrap().starts_with("builtin:kumomta-community:provider.yahoo#"));

    // The webhook gets the three applied decisions (not the shadow one), each signed.
    eventually("the webhook deliveries", Duration::from_secs(30), || {
        let seen = Arc::clone(&seen);
        async move { seen.lock().unwrap().len() >= 3 }
    })
    .await;
    let delivered = seen.lock().unwrap().clone();
    assert_eq!(delivered.len(), 3, "shadow decisions are never delivered");
    for (timestamp, signature, decision_id, body) in &delivered {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signature, &format!("sha256={expected}"));
        let decision: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(&decision["decision_id"], decision_id);
        for field in ["action", "target", "value", "expires", "reason", "rule", "evidence", "decision_id"] {
            assert!(decision.get(field).is_some(), "{field} in {decision}");
        }
        assert_eq!(decision["target"]["egress_source"], "ip-1");
        assert_eq!(decision["status"], "applied");
    }
    vigil.terminate();

    // What-if: the same history with the community rules in force instead of in shadow.
    let other = data.path().join("other.toml");
    std::fs::write(&other, "shaping_files = [\"builtin:kumomta-shipped\", \"builtin:kumomta-community\"]\n").unwrap();
    let out = common::run_vigil(
        &["replay", "--data-dir", data.path().to_str().unwrap(), "--rules", other.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let changes: Vec<&Value> = out.json.iter().filter(|l| l.get("change").is_some()).collect();
    assert_eq!(changes.len(), 2, "{:#?}", out.json);
    let added = changes.iter().find(|c| c["change"] == "added").unwrap();
    let removed = changes.iter().find(|c| c["change"] == "removed").unwrap();
    assert_eq!(added["decision"]["status"], "applied");
    assert_eq!(removed["decision"]["status"], "shadow");
    assert_eq!(added["decision"]["action_key"], removed["decision"]["action_key"]);
    assert_eq!(out.json.last().unwrap()["summary"], json!({"recorded": 4, "replayed": 4, "added": 1, "removed": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_actions_are_rebuilt_expired_ones_are_not_pushed_and_nothing_twice() {
    let data = tempfile::tempdir().unwrap();
    // Two rules for the same response: one lasting 3 s, one lasting an hour.
    let shaping = data.path().join("shaping.toml");
    std::fs::write(
        &shaping,
        "[[\"example.com\".automation]]\nregex = \"TSS04\"\naction = \"Suspend\"\nduration = \"3s\"\n\n\
         [[\"example.com\".automation]]\nregex = \"TSS04\"\naction = \"SuspendTenant\"\nduration = \"1 hour\"\n",
    )
    .unwrap();
    let rules = data.path().join("rules.toml");
    std::fs::write(&rules, "shaping_files = [\"shaping.toml\"]\n").unwrap();
    let rules = rules.to_str().unwrap().to_owned();

    // First run: no kumod configured yet, so nothing is pushed; then kill -9 (no snapshot).
    let vigil = Vigil::start(data.path(), &["--action-rules", &rules]).await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let record = deferral("ip-1", "a@example.com", "mx.example.com", 421, (4, 7, 0), "[TSS04] deferred", t0, "k1");
    assert_eq!(vigil.post("/publish_log_v1", record).await.0, 200);
    eventually("both actions in force", Duration::from_secs(30), || async {
        let (_, s) = vigil.get("/get_suspension_v1/suspended.json").await;
        s["ready_q"].as_array().is_some_and(|a| a.len() == 1) && s["sched_q"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    vigil.kill9();
    let short_expiry = t0 + chrono::Duration::seconds(3);
    common::wait_until("the short action to expire", Duration::from_secs(10), || Utc::now() > short_expiry);

    // Second run, now pushing to kumod: the state is rebuilt from the log; the expired
    // suspension is neither served nor pushed, the live one is pushed once.
    let (kumod, calls) = recording_kumod().await;
    let vigil = Vigil::start(data.path(), &["--action-rules", &rules, "--kumod-url", &kumod]).await;
    let (_, suspended) = vigil.get("/get_suspension_v1/suspended.json").await;
    assert_eq!(suspended["ready_q"], json!([]), "expired while Vigil was down");
    assert_eq!(suspended["sched_q"][0]["tenant"], "acme");
    eventually("the live action pushed", Duration::from_secs(30), || {
        let calls = Arc::clone(&calls);
        async move { !calls.lock().unwrap().is_empty() }
    })
    .await;
    vigil.terminate();
    let received = calls.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0].1, "/api/admin/suspend/v1");
    assert_eq!(received[0].2["tenant"], "acme");
    assert_eq!(received[0].2["domain"], "example.com");

    // Third run: nothing is pushed again.
    let vigil = Vigil::start(data.path(), &["--action-rules", &rules, "--kumod-url", &kumod]).await;
    let (_, suspended) = vigil.get("/get_suspension_v1/suspended.json").await;
    assert_eq!(suspended["sched_q"].as_array().unwrap().len(), 1, "still in force after a restart");
    // A new decision proves the pusher ran past the old ones without repeating them.
    let record =
        deferral("ip-2", "b@example.com", "mx.example.com", 421, (4, 7, 0), "[TSS04] deferred", Utc::now(), "k2");
    assert_eq!(vigil.post("/publish_log_v1", record).await.0, 200);
    eventually("the new actions pushed", Duration::from_secs(30), || {
        let calls = Arc::clone(&calls);
        async move { calls.lock().unwrap().len() >= 2 }
    })
    .await;
    vigil.terminate();
    let received = calls.lock().unwrap().clone();
    let paths: Vec<&str> = received.iter().map(|(_, p, _)| p.as_str()).collect();
    // ip-2's ready-queue suspension is new; its SuspendTenant is the same action (tenant,
    // domain) on another path, so also new.
    assert_eq!(paths[0], "/api/admin/suspend/v1");
    assert!(
        received[1..].iter().all(|(_, _, b)| b.get("name").is_none_or(|n| n.as_str().unwrap().starts_with("ip-2"))),
        "{received:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_hosts_or_a_token_guard_the_tsa_endpoints() {
    let data = tempfile::tempdir().unwrap();
    // The test connects from 127.0.0.1: trusted, so no token is needed.
    let vigil = Vigil::start(data.path(), &["--trusted-hosts", "10.9.9.9,127.0.0.1"]).await;
    assert_eq!(vigil.get_text("/get_config_v1/shaping.toml").await.0, 200);
    vigil.terminate();
    // Not trusted and no token: refused, saying why; the status probe stays open.
    let vigil = Vigil::start(data.path(), &["--trusted-hosts", "10.9.9.9"]).await;
    let (status, body) = vigil.get("/get_suspension_v1/suspended.json").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "127.0.0.1 is not a trusted host");
    assert_eq!(vigil.get_text("/tsa/status").await.0, 200);
    vigil.terminate();
    // Not trusted, but with the token.
    let vigil = Vigil::start(data.path(), &["--trusted-hosts", "10.9.9.9", "--api-token", "t"]).await;
    let response = vigil.http.get(vigil.url("/get_bounce_v1/bounced.json")).bearer_auth("t").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(vigil.get("/get_bounce_v1/bounced.json").await.0, 401);
    vigil.terminate();
}
