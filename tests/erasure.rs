//! Erasing one person, end to end: `DELETE /api/v1/admin/recipients/{address}` on a running
//! `vigil run` feeding ClickHouse, and `vigil erase` on a stopped one kept in `hash` mode. After
//! either, the address is in no file of the data directory, no row of ClickHouse and no answer
//! of the API; the counts are unchanged; the person is off the suppression list; and the state
//! equals a replay of the rewritten log. An operator's removal of one suppression is written
//! to the log with who and why.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::clickhouse::ClickHouse;
use common::{Vigil, eventually, run_vigil, settled_state};
use serde_json::{Value, json};

const PERSON: &str = "Jane.Doe@Example.org";
const OTHER: &str = "bob@example.org";
const OPERATOR: &str = "operator-token-0123456789";
const ADMIN: &str = "admin-token-0123456789ab";

/// A KumoMTA record of `kind` (`Delivery` or `Bounce`) to `recipient`, now.
fn record(kind: &str, id: &str, recipient: &str, code: u16, text: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    json!({
        "type": kind, "id": id, "sender": "news@shop.example", "recipient": recipient,
        "queue": "example.org", "site": "ip-1->mx.example.org@smtp_client", "size": 2048,
        "response": {"code": code, "enhanced_code": {"class": code / 100, "subject": 1, "detail": 1}, "content": text, "command": "."},
        "egress_pool": "pool-1", "egress_source": "ip-1", "timestamp": now, "created": now - 5,
        "num_attempts": 1, "bounce_classification": "Uncategorized", "meta": {}, "headers": {},
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    })
    .to_string()
}

/// The person's delivery and hard bounce (quoting the address), another recipient's delivery
/// and hard bounce, as one hook post.
fn records() -> String {
    let unknown = |who: &str| format!("550 5.1.1 <{who}>: Recipient address rejected: User unknown");
    let records = [
        record("Delivery", "p1", PERSON, 250, "OK"),
        record("Bounce", "p2", PERSON, 550, &unknown(&PERSON.to_lowercase())),
        record("Delivery", "o1", OTHER, 250, "OK"),
        record("Bounce", "o2", OTHER, 550, &unknown(OTHER)),
    ];
    format!("[{}]", records.join(","))
}

/// A record no normaliser takes: a dead letter that quotes the person.
fn broken() -> String {
    format!(r#"{{"type":"Teleport","id":"x","recipient":"{PERSON}","timestamp":1}}"#)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files(&path)) } else { out.push(path) }
    }
    out
}

/// Panics when `needle` (any case) is in a file of `data`, or in an event or dead letter the
/// log reads back (the log stores them compressed).
fn assert_nowhere(data: &Path, needle: &str) {
    let needle = needle.to_lowercase();
    for path in files(data) {
        let bytes = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_lowercase();
        assert!(!bytes.contains(&needle), "{needle} is still in {}", path.display());
    }
    let log = vigil_log::EventLog::open(&data.join("log")).unwrap();
    for (_, event) in log.read(0, 1000).unwrap() {
        let text = serde_json::to_string(&event).unwrap().to_lowercase();
        assert!(!text.contains(&needle), "{needle} is still in the log: {text}");
    }
    for (_, letter) in log.dead_letters(0, 1000).unwrap() {
        let text = serde_json::to_string(&letter).unwrap().to_lowercase();
        assert!(!text.contains(&needle), "{needle} is still in a dead letter: {text}");
    }
}

async fn send(vigil: &Vigil, method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, vigil.url(path)).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn tokens(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[tokens]]\nname = \"oncall\"\ntoken = \"{OPERATOR}\"\nrole = \"operator\"\n\n\
             [[tokens]]\nname = \"dpo\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n"
        ),
    )
    .unwrap();
    path
}

async fn suppressed(vigil: &Vigil) -> Vec<String> {
    let (status, body) = vigil.get_as("/api/v1/suppressions?limit=100", Some(OPERATOR)).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["suppressions"].as_array().or_else(|| body["rows"].as_array()).unwrap();
    rows.iter().map(|r| r["recipient"].as_str().unwrap().to_owned()).collect()
}

fn replayed_digest(data: &Path) -> Value {
    let out = run_vigil(&["replay", "--data-dir", data.to_str().unwrap()], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json[0]["digest"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_erases_a_person_everywhere_while_vigil_runs_and_an_operator_removes_a_suppression() {
    let server = tokio::task::block_in_place(ClickHouse::start);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tokens = tokens(dir.path());
    let args = [
        "--clickhouse-url",
        server.url.as_str(),
        "--clickhouse-database",
        "erase",
        "--api-tokens",
        tokens.to_str().unwrap(),
    ];
    let vigil = Vigil::start(&data, &args).await;
    let (status, body) = vigil.post_as("/ingest/kumomta", records(), Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = vigil.post_as("/ingest/kumomta", broken(), Some(ADMIN)).await;
    assert_eq!(status, 422, "{body}");
    eventually("both hard bounces to suppress", Duration::from_secs(30), || async {
        suppressed(&vigil).await.len() == 2
    })
    .await;
    let clickhouse = |sql: &str| tokio::task::block_in_place(|| server.query(sql));
    eventually("the events to reach ClickHouse", Duration::from_secs(30), || async {
        clickhouse("SELECT sum(events) FROM erase.sink_batches") == "4\n"
    })
    .await;
    let summary = vigil.get_as("/api/v1/summary?group_by=provider", Some(OPERATOR)).await.1;

    // Only an admin erases, and only an address.
    let path = format!("/api/v1/admin/recipients/{PERSON}");
    assert_eq!(send(&vigil, reqwest::Method::DELETE, &path, OPERATOR, None).await.0, 403);
    let (status, body) = send(&vigil, reqwest::Method::DELETE, "/api/v1/admin/recipients/jane", ADMIN, None).await;
    assert_eq!((status, body["error"].as_str().unwrap().contains("not an email address")), (400, true), "{body}");

    let (status, report) = send(&vigil, reqwest::Method::DELETE, &path, ADMIN, None).await;
    assert_eq!(status, 200, "{report}");
    let erased_as = report["erased_as"].as_str().unwrap().to_owned();
    assert!(erased_as.starts_with("erased-") && erased_as.ends_with("@example.org"), "{report}");
    assert_eq!(report["log"]["events"], 2, "{report}");
    assert_eq!(report["log"]["dead_letters"], 1, "{report}");
    assert_eq!(report["warehouse"]["rows"], 2, "{report}");
    assert_eq!(report["state"]["suppression"], true, "{report}");
    assert_eq!(report["state"]["snapshot"], true, "{report}");
    assert_eq!(report["clickhouse_rows"], 2, "{report}");

    assert_eq!(suppressed(&vigil).await, vec![OTHER.to_owned()]);
    let (_, found) = vigil.get_as(&format!("/api/v1/events?recipient={}", PERSON.to_lowercase()), Some(OPERATOR)).await;
    assert_eq!(found["rows"].as_array().unwrap().len(), 0, "{found}");
    let (_, found) = vigil.get_as(&format!("/api/v1/events?recipient={erased_as}"), Some(OPERATOR)).await;
    assert_eq!(found["rows"].as_array().unwrap().len(), 2, "the events stay, anonymous: {found}");
    assert_eq!(vigil.get_as("/api/v1/summary?group_by=provider", Some(OPERATOR)).await.1, summary, "counts unchanged");
    let person = PERSON.to_lowercase();
    assert_eq!(
        clickhouse(&format!(
            "SELECT count() FROM erase.events WHERE positionCaseInsensitive(concat(recipient, response_text), '{person}') > 0"
        )),
        "0\n"
    );
    assert_eq!(clickhouse(&format!("SELECT count() FROM erase.events WHERE recipient = '{erased_as}'")), "2\n");

    // An operator takes the other recipient off the list; the log keeps who and why.
    let removal = json!({"recipient": OTHER, "author": "oncall", "reason": "asked to be mailed again"});
    let (status, body) =
        send(&vigil, reqwest::Method::POST, "/api/v1/suppressions/remove", OPERATOR, Some(removal.clone())).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["suppression"]["reason"], "hard_bounce", "{body}");
    eventually("the removal to be folded", Duration::from_secs(30), || async { suppressed(&vigil).await.is_empty() })
        .await;
    let (status, body) =
        send(&vigil, reqwest::Method::POST, "/api/v1/suppressions/remove", OPERATOR, Some(removal)).await;
    assert_eq!(status, 404, "no longer suppressed: {body}");
    eventually("the audit record in the warehouse", Duration::from_secs(30), || async {
        let (_, audit) = vigil.get_as("/api/v1/events?kind=suppression_removed", Some(OPERATOR)).await;
        audit["rows"].as_array().is_some_and(|e| e.len() == 1)
    })
    .await;
    let (_, audit) = vigil.get_as("/api/v1/events?kind=suppression_removed", Some(OPERATOR)).await;
    assert_eq!(audit["rows"][0]["recipient"], OTHER, "{audit}");

    let state = settled_state(&vigil, Some(OPERATOR)).await;
    vigil.terminate();
    assert_eq!(replayed_digest(&data), state["digest"], "the state is a replay of the rewritten log");
    assert_nowhere(&data, PERSON);
    // The log keeps who removed the suppression, and why.
    let log = vigil_log::EventLog::open(&data.join("log")).unwrap();
    let removals: Vec<_> = log
        .read(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.kind == vigil_schemas::EventKind::SuppressionRemoved)
        .collect();
    assert_eq!(removals.len(), 1);
    let operator = removals[0].1.operator.as_ref().unwrap();
    assert_eq!((operator.author.as_str(), operator.reason.as_str()), ("oncall", "asked to be mailed again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn vigil_erase_on_a_stopped_vigil_in_hash_mode_finds_the_person_by_their_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = "a test key of enough bytes";
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n[privacy]\nrecipients = \"hash\"\n", data.to_str().unwrap()))
        .unwrap();
    let start = || {
        let listen = format!("127.0.0.1:{}", common::free_port());
        let (data, config) = (data.clone(), config.clone());
        async move {
            Vigil::start_with_env(
                &listen,
                &data,
                &["--config", config.to_str().unwrap()],
                &[("VIGIL_PRIVACY_KEY", key)],
            )
            .await
        }
    };
    let vigil = start().await;
    let (status, body) = vigil.post("/ingest/kumomta", records()).await;
    assert_eq!(status, 200, "{body}");
    let pseudonym = vigil_log::privacy::RecipientPrivacy::Hash(key.as_bytes().into()).address(PERSON);
    eventually("both hard bounces to suppress", Duration::from_secs(30), || async {
        vigil.get("/api/v1/suppressions?limit=100").await.1.to_string().contains(&pseudonym[..32])
    })
    .await;
    settled_state(&vigil, None).await;
    vigil.terminate();

    let erase = |key: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
        command
            .args(["erase", "--config", config.to_str().unwrap(), "--recipient", PERSON])
            .env_remove("VIGIL_PRIVACY_KEY");
        if let Some(key) = key {
            command.env("VIGIL_PRIVACY_KEY", key);
        }
        command.output().unwrap()
    };
    let refused = erase(None);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("needs a key"));
    let out = erase(Some(key));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["log"]["events"].as_u64(), report["warehouse"]["rows"].as_u64()),
        (Some(2), Some(2)),
        "{report}"
    );
    assert_eq!(
        (report["state"]["suppression"].as_bool(), report["state"]["snapshot"].as_bool()),
        (Some(true), Some(true))
    );
    assert_nowhere(&data, &pseudonym[..32]);

    let vigil = start().await;
    let suppressions = vigil.get("/api/v1/suppressions?limit=100").await.1;
    let rows = suppressions["suppressions"].as_array().or_else(|| suppressions["rows"].as_array()).unwrap();
    assert_eq!(rows.len(), 1, "only the other recipient: {suppressions}");
    let state = settled_state(&vigil, None).await;
    vigil.terminate();
    assert_eq!(replayed_digest(&data), state["digest"]);
}
