//! Alerts end to end through `vigil run`: a rule fires on Yahoo TSS04 deferrals posted to the log
//! hook and resolves when they stop; Slack, PagerDuty, Teams and a signed webhook (recording
//! servers checking each documented field) and a real Prometheus Alertmanager hear about it; a
//! receiver that never answers holds back no one; a `kill -9` while the webhook answers 500
//! loses nothing and sends once; silences show on the alerts; `vigil replay` gives the same
//! alert history digest.
//!
//! The fold's clock is the events' own (their `ingested_at`): the rule judges a minute when the
//! first event of the next one arrives, so the test waits for minute boundaries of the wall
//! clock and posts one record after each.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{Timelike, Utc};
use common::{Vigil, eventually, free_port};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// One request a recording server took: which receiver, its headers we check, its body.
#[derive(Debug, Clone)]
struct Taken {
    receiver: &'static str,
    notification_id: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Recorder {
    taken: Arc<Mutex<Vec<Taken>>>,
    /// Requests refused on purpose (the webhook answering 500).
    refused: Arc<Mutex<u32>>,
    /// Requests that broke the documented contract, with why.
    wrong: Arc<Mutex<Vec<String>>>,
    webhook_down: Arc<AtomicBool>,
}

const WEBHOOK_SECRET: &str = "alert-hook-secret";

impl Recorder {
    fn taken(&self, receiver: &str) -> Vec<Taken> {
        self.taken.lock().unwrap().iter().filter(|t| t.receiver == receiver).cloned().collect()
    }

    fn take(&self, receiver: &'static str, headers: &HeaderMap, body: &str) -> StatusCode {
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            self.wrong.lock().unwrap().push(format!("{receiver}: content-type {headers:?}"));
        }
        let Ok(body) = serde_json::from_str::<Value>(body) else {
            self.wrong.lock().unwrap().push(format!("{receiver}: body is not JSON: {body}"));
            return StatusCode::BAD_REQUEST;
        };
        let notification_id = headers.get("x-vigil-notification-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.taken.lock().unwrap().push(Taken { receiver, notification_id, body });
        StatusCode::OK
    }
}

async fn slack(State(r): State<Recorder>, headers: HeaderMap, body: String) -> StatusCode {
    r.take("slack", &headers, &body)
}

async fn pagerduty(State(r): State<Recorder>, headers: HeaderMap, body: String) -> (StatusCode, String) {
    // PagerDuty answers 202 with a status and the dedup key.
    let status = r.take("pagerduty", &headers, &body);
    let key = serde_json::from_str::<Value>(&body).ok().and_then(|b| b["dedup_key"].as_str().map(str::to_owned));
    (
        if status == StatusCode::OK { StatusCode::ACCEPTED } else { status },
        json!({"status": "success", "message": "Event processed", "dedup_key": key}).to_string(),
    )
}

async fn teams(State(r): State<Recorder>, headers: HeaderMap, body: String) -> StatusCode {
    r.take("teams", &headers, &body)
}

/// The signed webhook: checks `X-Vigil-Signature` over `timestamp.body`, answers 500 while down.
async fn webhook(State(r): State<Recorder>, headers: HeaderMap, body: String) -> StatusCode {
    if r.webhook_down.load(Ordering::SeqCst) {
        *r.refused.lock().unwrap() += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.{body}", header("x-vigil-timestamp")).as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    if header("x-vigil-signature") != format!("sha256={expected}") {
        r.wrong.lock().unwrap().push(format!("webhook signature {:?}", header("x-vigil-signature")));
        return StatusCode::UNAUTHORIZED;
    }
    r.take("webhook", &headers, &body)
}

async fn recording_server(recorder: Recorder) -> String {
    let app = axum::Router::new()
        .route("/slack", post(slack))
        .route("/pagerduty", post(pagerduty))
        .route("/teams", post(teams))
        .route("/webhook", post(webhook))
        .with_state(recorder);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A receiver that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/never", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

/// A real Alertmanager on a loopback port, its data in `dir`; killed when dropped.
struct Alertmanager {
    child: Child,
    url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alertmanager_binary() -> PathBuf {
    std::env::var_os("VIGIL_ALERTMANAGER")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus-alertmanager"), PathBuf::from)
}

async fn start_alertmanager(dir: &Path) -> Alertmanager {
    let config = dir.join("alertmanager.yml");
    std::fs::write(&config, "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n").unwrap();
    let port = free_port();
    let child = Command::new(alertmanager_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No cluster: a single instance, listening on nothing else.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {} (Debian's prometheus-alertmanager): {e}", alertmanager_binary().display())
        });
    let am = Alertmanager { child, url: format!("http://127.0.0.1:{port}") };
    let ready = format!("{}/-/ready", am.url);
    eventually("Alertmanager to be ready", Duration::from_secs(60), || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    am
}

/// Alertmanager's active alerts named `alertname`.
async fn alertmanager_alerts(am: &Alertmanager, alertname: &str) -> Vec<Value> {
    let alerts: Value = reqwest::get(format!("{}/api/v2/alerts", am.url)).await.unwrap().json().await.unwrap();
    alerts.as_array().unwrap().iter().filter(|a| a["labels"]["alertname"] == alertname).cloned().collect()
}

const RULES: &str = r#"
[[alert]]
name = "yahoo-tss04-test"
metric = "signal:yahoo_tss04"
scope = "egress_source,provider"
window = "1m"
threshold = 3
severity = "critical"
labels = { team = "deliverability" }
summary = "{scope}: {value} TSS04 deferrals in a minute"
"#;

fn config(dir: &Path, recorder_url: &str, black_hole: &str, am: &Alertmanager) -> PathBuf {
    let rules = dir.join("alerts.toml");
    std::fs::write(&rules, RULES).unwrap();
    let text = format!(
        r#"
[alerting]
rules = "{rules}"

[[alerting.receivers]]
name = "chat"
kind = "slack"
url = "{recorder_url}/slack"
link = "http://vigil.example/"
group_wait = "0s"
group_interval = "0s"

[[alerting.receivers]]
name = "pager"
kind = "pagerduty"
url = "{recorder_url}/pagerduty"
routing_key = "R0UT1NGKEY0123456789ABCDEFGHIJKL"
matchers = {{ severity = "critical" }}
group_wait = "0s"
group_interval = "0s"

[[alerting.receivers]]
name = "teams"
kind = "teams"
url = "{recorder_url}/teams"
group_wait = "0s"
group_interval = "0s"

[[alerting.receivers]]
name = "hook"
kind = "webhook"
url = "{recorder_url}/webhook"
secret = "{WEBHOOK_SECRET}"
group_wait = "0s"
group_interval = "0s"

[[alerting.receivers]]
name = "stuck"
kind = "webhook"
url = "{black_hole}"
secret = "x"
group_wait = "0s"

[[alerting.receivers]]
name = "am"
kind = "alertmanager"
url = "{am}"
"#,
        rules = rules.display(),
        am = am.url,
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A KumoMTA record for `ip-1` to Yahoo: a TSS04 deferral, or a delivery.
fn record(n: u32, tss04: bool) -> String {
    let now = Utc::now();
    if tss04 {
        common::deferral(
            "ip-1",
            &format!("user{n}@yahoo.com"),
            "(mta5|mta6|mta7).am0.yahoodns.net",
            421,
            (4, 7, 0),
            "[TSS04] Messages from 10.0.0.1 temporarily deferred due to unexpected volume or user complaints",
            now,
            &format!("tss04-{n}-{}", now.timestamp_millis()),
        )
    } else {
        let mut delivery: Value = serde_json::from_str(&record(n, true)).unwrap();
        delivery["type"] = json!("Delivery");
        delivery["id"] = json!(format!("ok-{n}-{}", now.timestamp_millis()));
        delivery["response"] = json!({"code": 250, "enhanced_code": {"class": 2, "subject": 0, "detail": 0}, "content": "ok", "command": "."});
        delivery.to_string()
    }
}

/// Waits until the wall clock is past the minute `minute` (minutes since 1970), then a moment.
async fn after_minute(minute: i64) {
    eventually("the next minute of the clock", Duration::from_secs(75), || async move {
        Utc::now().timestamp() / 60 > minute
    })
    .await;
}

fn minute_now() -> i64 {
    Utc::now().timestamp() / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_every_receiver_and_alertmanager_once_through_a_crash_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    recorder.webhook_down.store(true, Ordering::SeqCst);
    let recorder_url = recording_server(recorder.clone()).await;
    let hole = black_hole().await;
    let am = start_alertmanager(dir.path()).await;
    let config = config(dir.path(), &recorder_url, &hole, &am);
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let vigil = Vigil::start(&data, &args).await;

    // Three TSS04 deferrals early in a minute (not in its last seconds, so they share it).
    if Utc::now().second() > 50 {
        after_minute(minute_now()).await;
    }
    let fired_minute = minute_now();
    for n in 0..3 {
        let (status, _) = vigil.post("/ingest/kumomta", record(n, true)).await;
        assert_eq!(status, 200);
    }
    after_minute(fired_minute).await;
    assert_eq!(vigil.post("/ingest/kumomta", record(10, false)).await.0, 200);

    // Every receiver that answers hears about it; the stuck one and the failing webhook hold
    // back no one.
    eventually("the firing alert at Slack, PagerDuty, Teams and Alertmanager", Duration::from_secs(30), || {
        let (recorder, am) = (recorder.clone(), &am);
        async move {
            !recorder.taken("slack").is_empty()
                && !recorder.taken("pagerduty").is_empty()
                && !recorder.taken("teams").is_empty()
                && !alertmanager_alerts(am, "yahoo-tss04-test").await.is_empty()
        }
    })
    .await;
    assert!(*recorder.refused.lock().unwrap() >= 1, "the webhook was tried while it answered 500");

    // Slack: an incoming-webhook message with `text` and Block Kit blocks.
    let slack = &recorder.taken("slack")[0].body;
    assert_eq!(slack["text"], "[FIRING:1] yahoo-tss04-test", "{slack}");
    assert_eq!(slack["blocks"][0]["type"], "header");
    assert_eq!(slack["blocks"][0]["text"]["type"], "plain_text");
    assert_eq!(slack["blocks"][1]["type"], "section");
    assert_eq!(slack["blocks"][1]["text"]["type"], "mrkdwn");
    let line = slack["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(line.contains("ip-1 x yahoo: 3 TSS04 deferrals in a minute"), "{line}");
    let fields = slack["blocks"][2]["fields"].as_array().unwrap();
    assert!(fields.iter().all(|f| f["type"] == "mrkdwn") && fields.len() <= 10);
    assert!(fields.iter().any(|f| f["text"] == "*egress_source*\nip-1"), "{fields:?}");
    assert_eq!(slack["blocks"][3]["elements"][0]["text"], "<http://vigil.example/|Open in Vigil>");

    // PagerDuty Events API v2: a trigger with the routing key, a dedup key and the payload's
    // required fields.
    let trigger = &recorder.taken("pagerduty")[0].body;
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY0123456789ABCDEFGHIJKL");
    assert_eq!(trigger["event_action"], "trigger");
    let dedup_key = trigger["dedup_key"].as_str().unwrap().to_owned();
    assert!(!dedup_key.is_empty() && dedup_key.len() <= 255);
    let payload = &trigger["payload"];
    assert!(payload["summary"].as_str().unwrap().contains("yahoo-tss04-test"), "{payload}");
    assert!(payload["summary"].as_str().unwrap().len() <= 1024);
    assert_eq!(payload["source"], "vigil");
    assert_eq!(payload["severity"], "critical");
    assert!(chrono::DateTime::parse_from_rfc3339(payload["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(payload["component"], "ip-1");
    assert_eq!(payload["group"], "yahoo");
    assert_eq!(payload["class"], "yahoo-tss04-test");
    assert_eq!(payload["custom_details"]["team"], "deliverability");

    // Teams workflow webhook: a message with one Adaptive Card attachment.
    let teams = &recorder.taken("teams")[0].body;
    assert_eq!(teams["type"], "message");
    let attachment = &teams["attachments"][0];
    assert_eq!(attachment["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(attachment["content"]["version"], "1.4");
    assert_eq!(attachment["content"]["body"][0]["type"], "TextBlock");
    assert_eq!(attachment["content"]["body"][2]["type"], "FactSet");

    // Alertmanager: the alert with Vigil's labels and annotations.
    let in_am = alertmanager_alerts(&am, "yahoo-tss04-test").await;
    assert_eq!(in_am.len(), 1);
    let labels = &in_am[0]["labels"];
    assert_eq!((labels["egress_source"].as_str(), labels["provider"].as_str()), (Some("ip-1"), Some("yahoo")));
    assert_eq!((labels["severity"].as_str(), labels["team"].as_str()), (Some("critical"), Some("deliverability")));
    assert!(in_am[0]["annotations"]["summary"].as_str().unwrap().contains("TSS04"));
    assert_eq!(in_am[0]["status"]["state"], "active");

    // /metrics counts it for a Prometheus rule or a dashboard.
    let (_, metrics) = vigil.get_text("/metrics").await;
    assert!(metrics.contains("vigil_alerts{state=\"firing\",severity=\"critical\"} 1\n"), "{metrics}");
    assert!(metrics.contains("vigil_alerts{state=\"pending\",severity=\"info\"} 0\n"), "{metrics}");

    // The API lists it; a silence shows on it; deleting the silence ends it.
    let (status, alerts) = vigil.get("/api/v1/alerts?state=firing").await;
    assert_eq!(status, 200);
    let firing = alerts["alerts"].as_array().unwrap();
    assert_eq!(firing.len(), 1, "{alerts}");
    assert_eq!(firing[0]["rule"], "yahoo-tss04-test");
    assert_eq!(firing[0]["value"], 3.0);
    let fired_at = chrono::DateTime::parse_from_rfc3339(firing[0]["fired_at"].as_str().unwrap()).unwrap();
    assert_eq!(fired_at.timestamp() / 60, fired_minute, "fired for the minute the deferrals came in");
    let silence = json!({"matchers": {"egress_source": "ip-1"}, "ends_at": (Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339(), "comment": "moving ip-1", "author": "test"});
    let (status, created) = vigil.post("/api/v1/silences", silence.to_string()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, alerts) = vigil.get("/api/v1/alerts").await;
    assert_eq!(alerts["alerts"][0]["silenced_by"], json!([id]));
    let (_, silences) = vigil.get("/api/v1/silences").await;
    assert_eq!(silences["silences"][0]["status"], "active");
    let deleted = vigil.http.delete(vigil.url(&format!("/api/v1/silences/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _) = vigil
        .post(
            "/api/v1/silences",
            json!({"matchers": {}, "ends_at": "2030-01-01T00:00:00Z", "comment": "x", "author": "y"}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "a silence of everything is refused");

    // kill -9 while the webhook still answers 500: the notice is in the outbox, not sent.
    assert!(recorder.taken("webhook").is_empty());
    vigil.kill9();
    recorder.webhook_down.store(false, Ordering::SeqCst);
    let vigil = Vigil::start(&data, &args).await;
    eventually("the webhook to get the firing notification after the restart", Duration::from_secs(30), || {
        let recorder = recorder.clone();
        async move { !recorder.taken("webhook").is_empty() }
    })
    .await;
    let hook = &recorder.taken("webhook")[0];
    assert_eq!(hook.body["status"], "firing");
    assert_eq!(hook.body["firing"][0]["labels"]["alertname"], "yahoo-tss04-test");
    assert_eq!(hook.notification_id.as_deref(), hook.body["id"].as_str());

    // The next minute without TSS04 resolves it everywhere, once.
    after_minute(fired_minute + 1).await;
    assert_eq!(vigil.post("/ingest/kumomta", record(11, false)).await.0, 200);
    eventually("the resolve at every receiver and in Alertmanager", Duration::from_secs(30), || {
        let (recorder, am) = (recorder.clone(), &am);
        async move {
            let resolved = |receiver: &str, field: &str, value: &str| {
                recorder.taken(receiver).iter().any(|t| t.body[field].as_str().is_some_and(|v| v.starts_with(value)))
            };
            resolved("slack", "text", "[RESOLVED")
                && resolved("pagerduty", "event_action", "resolve")
                && resolved("webhook", "status", "resolved")
                && alertmanager_alerts(am, "yahoo-tss04-test").await.is_empty()
        }
    })
    .await;
    let resolve = recorder.taken("pagerduty").into_iter().find(|t| t.body["event_action"] == "resolve").unwrap();
    assert_eq!(
        resolve.body,
        json!({"routing_key": "R0UT1NGKEY0123456789ABCDEFGHIJKL", "event_action": "resolve", "dedup_key": dedup_key})
    );

    // Once each, by the receivers' own keys: one firing and one resolve per receiver.
    let hook_ids: std::collections::BTreeSet<_> =
        recorder.taken("webhook").iter().map(|t| (t.body["status"].to_string(), t.notification_id.clone())).collect();
    assert_eq!(hook_ids.len(), 2, "{hook_ids:?}");
    let slack_texts: std::collections::BTreeSet<_> =
        recorder.taken("slack").iter().map(|t| t.body["text"].to_string()).collect();
    assert_eq!(slack_texts.len(), 2, "{slack_texts:?}");
    assert!(recorder.wrong.lock().unwrap().is_empty(), "{:?}", recorder.wrong.lock().unwrap());

    // The alert history is a function of the log: a replay gives the same digest.
    let (_, state) = vigil.get("/api/v1/state").await;
    let (_, history) = vigil.get("/api/v1/alerts?state=resolved").await;
    assert_eq!(history["history"].as_array().unwrap().len(), 1, "{history}");
    vigil.terminate();
    let replay = common::run_vigil(
        &[
            "replay",
            "--data-dir",
            data.to_str().unwrap(),
            "--alert-rules",
            dir.path().join("alerts.toml").to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert_eq!(replay.json[0]["offset"], state["offset"]);
    assert_eq!(replay.json[0]["alerts_digest"], state["alerts_digest"]);
}

/// The bundled rules on `vigil run --demo`: Yahoo's TSS04 deferrals of `ip-3` fire
/// `yahoo-tss04` within a minute of event time; no other egress source gets a signal, block or
/// bounce alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_rules_fire_on_the_demo_yahoo_episode_and_only_there() {
    let dir = tempfile::tempdir().unwrap();
    let started = Utc::now();
    let vigil = Vigil::start(dir.path(), &["--demo"]).await;
    eventually("yahoo-tss04 to fire on the demo", Duration::from_secs(150), || {
        let vigil = &vigil;
        async move {
            let (_, alerts) = vigil.get("/api/v1/alerts?state=firing").await;
            alerts["alerts"].as_array().is_some_and(|a| a.iter().any(|a| a["rule"] == "yahoo-tss04"))
        }
    })
    .await;
    let (_, firing) = vigil.get("/api/v1/alerts?state=firing").await;
    let firing = firing["alerts"].clone();
    let alerts = firing.as_array().unwrap();
    let tss04 = alerts.iter().find(|a| a["rule"] == "yahoo-tss04").unwrap();
    assert_eq!(tss04["labels"]["egress_source"], "ip-3");
    assert_eq!(tss04["labels"]["provider"], "yahoo");
    assert!(tss04["top"].as_array().unwrap().iter().any(|t| t[0] == "yahoo_tss04"), "{tss04}");
    let fired_at = chrono::DateTime::parse_from_rfc3339(tss04["fired_at"].as_str().unwrap()).unwrap();
    assert!(fired_at.timestamp() - started.timestamp() < 60, "fired for the first minute of the episode: {fired_at}");
    for alert in alerts {
        let rule = alert["rule"].as_str().unwrap();
        if ["yahoo-tss04", "gmail-rate-limited", "microsoft-s3140", "block-rate", "hard-bounce-rate"].contains(&rule) {
            assert_eq!(alert["labels"]["egress_source"], "ip-3", "healthy pairs stay quiet: {alert}");
        }
    }
    vigil.terminate();
}
