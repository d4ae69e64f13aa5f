//! `[privacy] recipients`: in `hash` and `domain` modes no address the inputs carried is in
//! any file of the data directory (the bytes grepped, and the log read back), while counts by
//! provider still work; `hash` keeps suppressions under pseudonyms, `domain` keeps none.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Vigil, example_records};
use serde_json::json;

/// Every `local@domain` in `text` (the characters of a dot-atom around an `@`).
fn addresses(text: &str) -> Vec<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".+-_".contains(c);
    let mut out = Vec::new();
    for (at, _) in text.match_indices('@') {
        let start = text[..at].rfind(|c: char| !allowed(c)).map_or(0, |i| i + 1);
        let end = text[at + 1..].find(|c: char| !allowed(c)).map_or(text.len(), |i| at + 1 + i);
        if start < at && text[at + 1..end].contains('.') {
            out.push(text[start..end].trim_end_matches('.').to_lowercase());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files(&path)) } else { out.push(path) }
    }
    out
}

/// Runs `vigil run` in `mode` on the example records and a broken one; returns the addresses
/// the inputs held, the data directory, and the suppressions the API listed.
async fn run_in(mode: &str, dir: &Path) -> (Vec<String>, serde_json::Value) {
    let config = dir.join("vigil.toml");
    std::fs::write(&config, format!("[privacy]\nrecipients = \"{mode}\"\n")).unwrap();
    let data = dir.join("data");
    let records = example_records();
    let broken = r#"{"type":"Teleport","id":"y","recipient":"leaked.person@private.example.org","timestamp":1}"#;
    let mut inputs = records.join("\n");
    inputs.push_str(broken);
    let vigil = Vigil::start_with_env(
        &format!("127.0.0.1:{}", common::free_port()),
        &data,
        &["--config", config.to_str().unwrap()],
        &[("VIGIL_PRIVACY_KEY", "a test key of enough bytes")],
    )
    .await;
    let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", records.join(","))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = vigil.post("/ingest/kumomta", broken).await;
    assert_eq!(status, 422, "{body}");
    vigil
        .wait_for_summary(
            "group_by=provider",
            &json!([
                {"provider": "google", "delivered": 1, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 2},
                {"provider": "yahoo", "delivered": 0, "deferred": 1, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 2},
            ]),
        )
        .await;
    let suppressions = vigil.get("/api/v1/suppressions?limit=100").await.1;
    vigil.terminate();
    let found = addresses(&inputs);
    assert!(found.len() >= 4, "{found:?}");

    // No address in any byte of any file (a compressed store hides nothing here: the log is
    // read back below).
    for path in files(&data) {
        let bytes = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_lowercase();
        for address in &found {
            assert!(!bytes.contains(address.as_str()), "{address} in {}", path.display());
        }
    }
    let log = vigil_log::EventLog::open(&data.join("log")).unwrap();
    let stored: Vec<String> = log
        .read(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| serde_json::to_string(&e).unwrap())
        .chain(log.dead_letters(0, 100).unwrap().into_iter().map(|(_, d)| serde_json::to_string(&d).unwrap()))
        .collect();
    assert_eq!(log.dead_letter_count().unwrap(), 1);
    for text in &stored {
        for address in &found {
            assert!(!text.to_lowercase().contains(address.as_str()), "{address} in {text}");
        }
    }
    (found, suppressions)
}

#[tokio::test]
async fn hash_mode_keeps_pseudonyms_and_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let (_, suppressions) = run_in("hash", dir.path()).await;
    let rows = suppressions["suppressions"].as_array().or_else(|| suppressions["rows"].as_array()).unwrap();
    assert!(!rows.is_empty(), "hard bounces still suppress, by pseudonym: {suppressions}");
    for row in rows {
        let recipient = row["recipient"].as_str().unwrap();
        let (local, _) = recipient.split_once('@').unwrap();
        assert!(local.len() == 32 && local.chars().all(|c| c.is_ascii_hexdigit()), "{recipient}");
    }
}

#[tokio::test]
async fn domain_mode_keeps_domains_only_and_suppresses_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, suppressions) = run_in("domain", dir.path()).await;
    let rows = suppressions["suppressions"].as_array().or_else(|| suppressions["rows"].as_array()).unwrap();
    assert!(rows.is_empty(), "{suppressions}");
}

#[test]
fn hash_mode_without_a_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[privacy]\nrecipients = \"hash\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env_remove("VIGIL_PRIVACY_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a key"), "{}", String::from_utf8_lossy(&out.stderr));
}
