//! Vigil against KumoMTA's own tsa-daemon, scenario by scenario (issue 16).
//!
//! `scripts/tsa-differential/harness.py` played every scenario of
//! `testdata/tsa-differential/scenarios/` into the real daemon and recorded its answers in
//! `testdata/tsa-differential/golden/` (times as seconds from the scenario's start, rule
//! hashes left out: each side hashes its own way). Here the same records go through Vigil's
//! normaliser, enrichment and fold, and Vigil's answers, put in the same form, must equal the
//! daemon's: the ready-queue and scheduled-queue suspensions, the bounces, the shaping overlay
//! (its entry count, each domain's `mx_rollup`, every key with its value, reason and expiry)
//! and the frames a subscriber receives. `SHA256SUMS`, written by the harness, catches a
//! golden file or scenario edited by hand.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vigil_processor::actuation::{Decision, RuleSet, kumomta};
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, Enricher, ProviderMap};

/// Scenarios where Vigil knowingly answers otherwise, each listed with its reason in
/// docs/actuation.md ("Where Vigil knowingly differs"): they must still differ (else take them
/// off this list) and be named there.
const KNOWN_DIFFERENCES: &[&str] = &[
    // An older response processed after a newer one: tsa-daemon overwrites the expiry with the
    // older one's (shortening it); Vigil keeps the later expiry.
    "out-of-order",
    // A rollup block matches every domain on its MX site: tsa-daemon resolves the named
    // domain's MX at load; Vigil learns the site from the named domain's own traffic (no DNS
    // lookups yet: issue 22).
    "rollup-two-domains",
];

/// How long after T0 the harness read the daemon's answers.
const SETTLE: f64 = 1.5;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tsa-differential")
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().into()
}

fn seconds(at: DateTime<Utc>) -> f64 {
    ((at - t0()).num_milliseconds() as f64) / 1000.0
}

/// `item` as the harness writes it: `expires` in seconds from T0, no rule hash.
fn relative(item: &impl serde::Serialize) -> Value {
    let mut value = serde_json::to_value(item).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("rule_hash");
    if let Some(expires) = object.get("expires").and_then(Value::as_str) {
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339(expires).unwrap().into();
        object.insert("expires".into(), json!(seconds(at)));
    }
    value
}

fn frame(item: &kumomta::SubscriptionItem) -> Value {
    let value = serde_json::to_value(item).unwrap();
    let (kind, body) = value.as_object().unwrap().iter().next().unwrap();
    let mut body = body.clone();
    body.as_object_mut().unwrap().remove("rule_hash");
    if let Some(expires) = body.get("expires").and_then(Value::as_str) {
        let at: DateTime<Utc> = DateTime::parse_from_rfc3339(expires).unwrap().into();
        body["expires"] = json!(seconds(at));
    }
    json!({ kind: body })
}

/// The overlay as the harness parses the daemon's: entry count, `mx_rollup` per domain, and
/// each key of each source with its value and the reason and expiry of its comments.
fn parse_overlay(text: &str) -> Value {
    let count =
        text.lines().find_map(|l| l.strip_prefix("# Number of entries:")).map(|n| n.trim().parse::<u64>().unwrap());
    let (mut path, mut reason, mut expires): (Option<Vec<String>>, Option<String>, Option<f64>) = (None, None, None);
    let mut domains = serde_json::Map::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            let mut table: toml::Table = toml::from_str(line).unwrap();
            let mut keys = Vec::new();
            while table.len() == 1 {
                let (key, inner) = table.into_iter().next().unwrap();
                keys.push(key);
                match inner {
                    toml::Value::Table(t) => table = t,
                    _ => break,
                }
            }
            path = Some(keys);
        } else if let Some(text) = line.strip_prefix("# reason:") {
            reason = Some(text.trim().to_owned());
        } else if let Some(text) = line.strip_prefix("# expires:") {
            let at: DateTime<Utc> = DateTime::parse_from_rfc3339(text.trim()).unwrap().into();
            expires = Some(seconds(at));
        } else if line.contains('=') && !line.starts_with('#') {
            let Some(path) = &path else { continue };
            let table: toml::Table = toml::from_str(line).unwrap();
            let (key, value) = table.into_iter().next().unwrap();
            let value = serde_json::to_value(value).unwrap();
            if path.len() == 1 && key == "mx_rollup" {
                domains.insert(path[0].clone(), value);
            } else if path.len() == 3 && path[1] == "sources" {
                entries.push(json!({"domain": path[0], "source": path[2], "name": key, "value": value,
                                    "reason": reason, "expires": expires}));
            }
            reason = None;
            expires = None;
        }
    }
    entries.sort_by_key(|e| (e["domain"].to_string(), e["source"].to_string(), e["name"].to_string()));
    json!({"count": count, "domains": domains, "entries": entries})
}

/// Vigil's answers to `scenario`, in the golden files' form.
fn vigil_answers(scenario: &Value) -> Value {
    let files: Vec<String> = scenario["shaping_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Path::new(env!("CARGO_MANIFEST_DIR")).join(f.as_str().unwrap()).display().to_string())
        .collect();
    let providers = ProviderMap::bundled();
    let fold =
        FoldRules::new(RuleSet::from_toml("scenario", &format!("shaping_files = {files:?}\n"), &providers).unwrap());
    let enricher = Enricher::bundled();
    let mut state = DerivedState::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    for item in scenario["records"].as_array().unwrap() {
        let mut record = item["record"].clone();
        let at = t0().timestamp() + item["offset"].as_i64().unwrap();
        record["timestamp"] = json!(at);
        record["created"] = json!(at);
        let events = vigil_ingest::kumomta::normalise_record(&record.to_string(), t0()).unwrap();
        for mut event in events {
            enricher.enrich(&mut event);
            let mut decisions: Vec<Decision> = Vec::new();
            state.apply(offset, &event, &fold, &mut decisions);
            offset += 1;
            decisions.extend(state.take_announced());
            frames.extend(decisions.iter().filter_map(kumomta::frame).map(|f| frame(&f)));
        }
    }
    let now = t0() + TimeDelta::milliseconds((SETTLE * 1000.0) as i64);
    let in_force: Vec<&Decision> = state.actuation.active.in_force(now).collect();
    let (suspensions, bounces) = kumomta::split(in_force.iter().copied());
    json!({
        "ready_q": suspensions.ready_q.iter().map(relative).collect::<Vec<_>>(),
        "sched_q": suspensions.sched_q.iter().map(relative).collect::<Vec<_>>(),
        "bounces": bounces.iter().map(relative).collect::<Vec<_>>(),
        "overlay": parse_overlay(&kumomta::overlay(in_force.iter().copied())),
        "frames": frames,
    })
}

/// Lists compared as multisets: the daemon orders ties (and frames across its worker
/// threads) in hash order.
fn sorted(value: &Value) -> Value {
    let mut items: Vec<Value> = value.as_array().cloned().unwrap_or_default();
    items.sort_by_key(Value::to_string);
    Value::Array(items)
}

#[test]
fn golden_files_are_as_the_harness_wrote_them() {
    let sums = std::fs::read_to_string(data().join("golden/SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines() {
        let (digest, file) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(data().join(file)).unwrap();
        let actual: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actual, digest, "{file} was changed after scripts/tsa-differential/harness.py recorded it");
        checked += 1;
    }
    let goldens = std::fs::read_dir(data().join("golden"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"));
    assert_eq!(checked, 2 * goldens.count(), "every golden file and its scenario are in SHA256SUMS");
}

#[test]
fn vigil_answers_every_scenario_as_tsa_daemon_does() {
    let mut compared = Vec::new();
    let mut differing = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data().join("golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let golden: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let name = golden["scenario"].as_str().unwrap().to_owned();
        let scenario: Value =
            serde_json::from_slice(&std::fs::read(data().join(format!("scenarios/{name}.json"))).unwrap()).unwrap();
        let vigil = vigil_answers(&scenario);
        let mut diffs = Vec::new();
        for part in ["ready_q", "sched_q", "bounces", "frames"] {
            if sorted(&golden[part]) != sorted(&vigil[part]) {
                diffs.push(format!(
                    "  {part}:\n    tsa-daemon {}\n    vigil      {}",
                    sorted(&golden[part]),
                    sorted(&vigil[part])
                ));
            }
        }
        if golden["overlay"] != vigil["overlay"] {
            diffs
                .push(format!("  overlay:\n    tsa-daemon {}\n    vigil      {}", golden["overlay"], vigil["overlay"]));
        }
        if KNOWN_DIFFERENCES.contains(&name.as_str()) {
            assert!(!diffs.is_empty(), "{name} now answers as tsa-daemon: take it off KNOWN_DIFFERENCES and the docs");
            let docs =
                std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/actuation.md")).unwrap();
            assert!(docs.contains(&format!("`{name}`")), "docs/actuation.md does not name the known difference {name}");
        } else if diffs.is_empty() {
            compared.push(name);
        } else {
            differing.push(format!("{name} ({}):\n{}", golden["about"].as_str().unwrap_or(""), diffs.join("\n")));
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} scenarios differ from tsa-daemon:\n{}",
        differing.len(),
        differing.len() + compared.len(),
        differing.join("\n")
    );
    assert!(compared.len() >= 40, "only {} scenarios", compared.len());
}
