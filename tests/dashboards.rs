//! The dashboards in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`
//! from npm; `scripts/test` installs both) against `vigil run --demo`: every page, in light and
//! dark, loads with no console error and no failed request, shows data, and has no serious or
//! critical `axe-core` violation; the heat map's click-through lands on the pair; a silence made
//! and an action lifted in the UI are in the API; a shared URL restores the view. Screenshots of every page are
//! written to `target/dashboards/` (`scripts/screenshots` refreshes the README's).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::clickhouse::ClickHouse;
use common::{Vigil, eventually};
use serde_json::Value;

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn node_modules() -> PathBuf {
    std::env::var_os("VIGIL_NODE_MODULES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboards-node/node_modules"),
        PathBuf::from,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_clean_accessible_and_live_in_chromium_on_the_embedded_store() {
    every_page_loads_clean_accessible_and_live(&[], "embedded").await;
}

/// The same pages with the analytics answered by a real ClickHouse (Debian's 18.16 in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_clean_accessible_and_live_in_chromium_on_clickhouse() {
    let server = tokio::task::block_in_place(ClickHouse::start);
    every_page_loads_clean_accessible_and_live(
        &["--clickhouse-url", server.url.as_str(), "--clickhouse-database", "ui"],
        "clickhouse",
    )
    .await;
}

/// With API tokens configured the UI asks for one, shows the data with it, and keeps it in the
/// tab's session only (a new tab asks again; nothing in localStorage but the theme).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_tokens_the_ui_asks_for_one_and_keeps_it_in_the_session_only() {
    const VIEWER: &str = "viewer-token-0123456789abcdef0123";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("[[tokens]]\nname = \"analyst\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n"))
        .unwrap();
    let vigil = Vigil::start(&dir.path().join("data"), &["--demo", "--api-tokens", tokens.to_str().unwrap()]).await;
    eventually("the demo's events folded", Duration::from_secs(60), || async {
        let state = vigil.http.get(vigil.url("/api/v1/state")).bearer_auth(VIEWER).send().await.unwrap();
        state.json::<Value>().await.is_ok_and(|s| s["offset"].as_u64().unwrap_or(0) > 0)
    })
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/tests/token.mjs");
    let node = std::env::var("VIGIL_NODE").unwrap_or_else(|_| "node".into());
    let base = vigil.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&node)
            .arg(script)
            .arg(&base)
            .arg(VIEWER)
            .env("VIGIL_NODE_MODULES", node_modules())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "token.mjs: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["asked"].as_str().unwrap().contains("An API token is needed"), "{report}");
    assert!(report["shown"].as_str().unwrap().contains("Worst egress source"), "{report}");
    assert_eq!(report["stored"]["session"], VIEWER);
    assert!(report["stored"]["local"].as_array().unwrap().iter().all(|k| k == "vigil-theme"), "{report}");
    assert_eq!(report["askedAgain"], true);
    assert_eq!(report["errors"], Value::Array(vec![]));
    vigil.terminate();
}

async fn every_page_loads_clean_accessible_and_live(store: &[&str], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = ["--demo"].iter().chain(store).copied().collect();
    let vigil = Vigil::start(dir.path(), &args).await;
    // The alerts page needs an alert to silence: the demo's Yahoo episode fires one within a
    // minute boundary of the clock.
    eventually("an alert to fire on the demo", Duration::from_secs(150), || async {
        let (_, alerts) = vigil.get("/api/v1/alerts?state=firing").await;
        alerts["alerts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    // The decisions page needs an action in force to lift: the same episode suspends ip-3.
    eventually("an action in force on the demo", Duration::from_secs(60), || async {
        let (_, throttles) = vigil.get("/api/v1/throttles").await;
        throttles["active"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    // A DMARC report of yesterday (the fixture's, moved in time), for the DMARC page.
    let xml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/dmarc/parsedmarc_outlook_com_aggregate.xml"),
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let xml = xml
        .replace("<begin>1711756800</begin>", &format!("<begin>{}</begin>", now - 86_400))
        .replace("<end>1711843200</end>", &format!("<end>{now}</end>"));
    assert_eq!(vigil.post("/ingest/dmarc", xml).await.0, 200);
    // A suppressed recipient of the demo, for the search page.
    let (_, suppressed) = vigil.get("/api/v1/suppressions?domain=gmail.com&limit=1").await;
    // The analytics store has the demo's back-filled hour (the ClickHouse sink follows the log).
    eventually("the demo's bounces in the analytics store", Duration::from_secs(60), || async {
        let from = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
        let (_, bounces) = vigil.get(&format!("/api/v1/bounces?from={}&samples=0", urlencode(&from))).await;
        bounces["classes"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    let recipient = suppressed["rows"][0]["recipient"].as_str().unwrap().to_owned();
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Vigil::start(empty_dir.path(), &[]).await;

    let (status, page) = vigil.get_text("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Vigil</title>"), "{page}");

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboards").join(name);
    std::fs::create_dir_all(&shots).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/tests/browse.mjs");
    let node = std::env::var("VIGIL_NODE").unwrap_or_else(|_| "node".into());
    let (base, empty_base, searched) = (vigil.base.clone(), empty.base.clone(), recipient.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&node)
            .arg(script)
            .arg(&base)
            .arg(&shots)
            .arg(&searched)
            .arg(&empty_base)
            .env("VIGIL_NODE_MODULES", node_modules())
            .output()
            .unwrap_or_else(|e| panic!("{node}: {e}; ./scripts/test installs Node's packages and Debian's chromium"))
    })
    .await
    .unwrap();
    assert!(out.status.success(), "browse.mjs: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();

    let pages = report["pages"].as_object().unwrap();
    assert_eq!(pages.len(), 26, "twelve pages, light and dark, and two over the warehouse: {:?}", pages.keys());
    // Every page's faults at once, so one run shows them all.
    let faults: Vec<String> = pages
        .iter()
        .flat_map(|(name, page)| {
            let listed = |key: &str| {
                page[key].as_array().unwrap().iter().map(move |p| format!("{name}: {p}")).collect::<Vec<_>>()
            };
            let mut faults = listed("problems");
            faults.extend(listed("violations"));
            if page["failedToLoad"] != false {
                faults.push(format!("{name}: did not load: {}", page["text"]));
            }
            faults
        })
        .collect();
    assert!(
        faults.is_empty(),
        "console errors, failed requests, serious or critical axe violations:\n{}",
        faults.join("\n")
    );
    // Each shows data from the demo.
    let text = |name: &str| pages[name]["text"].as_str().unwrap().to_owned();
    assert!(
        text("overview").contains("yahoo") && text("overview").contains("Worst egress source"),
        "{}",
        text("overview")
    );
    assert!(text("heatmap").contains("ip-3 × yahoo"), "{}", text("heatmap"));
    // Past 24 h the same pages read the warehouse.
    assert!(
        text("overview-7d").contains("yahoo") && text("overview-7d").contains("Worst egress source × provider"),
        "{}",
        text("overview-7d")
    );
    assert!(text("pair-30d").contains("ip-3 × yahoo"), "{}", text("pair-30d"));
    assert!(text("pair").contains("ip-3 × yahoo") && text("pair").contains("yahoo_tss04"), "{}", text("pair"));
    assert!(text("alerts").contains("yahoo-tss04"), "{}", text("alerts"));
    assert!(
        text("bounces").contains("InvalidRecipient") && text("bounces").contains("Decided by"),
        "{}",
        text("bounces")
    );
    // Any scope's values, and one value's drill-down.
    assert!(text("scopes").contains("acme") && text("scopes").contains("globex"), "{}", text("scopes"));
    assert!(text("scope").contains("ip-3") && text("scope").contains("Egress source (IP)"), "{}", text("scope"));
    assert!(text("search").contains(&recipient) && text("search").contains("Suppressed: "), "{}", text("search"));
    assert!(text("suppressions").contains(" suppressed"), "{}", text("suppressions"));
    assert!(
        text("dmarc").contains("messages") && !text("dmarc").contains("No DMARC aggregate report yet"),
        "{}",
        text("dmarc")
    );
    assert!(text("decisions").contains("In force"), "{}", text("decisions"));
    // Without events, the overview says how to connect a source and draws no chart.
    let empty_text = report["empty"]["text"].as_str().unwrap();
    assert!(
        empty_text.contains("connect a source")
            && empty_text.contains("/ingest/kumomta")
            && empty_text.contains("--demo"),
        "{empty_text}"
    );
    assert_eq!(report["empty"]["charts"], 0);

    let click = &report["clickThrough"];
    let (source, provider) =
        (click["expected"]["source"].as_str().unwrap(), click["expected"]["provider"].as_str().unwrap());
    let hash = click["hash"].as_str().unwrap();
    assert!(
        hash.starts_with("#/pair?")
            && hash.contains(&format!("egress_source={source}"))
            && hash.contains(&format!("provider={provider}")),
        "{click}"
    );
    assert_eq!(click["heading"], format!("{source} × {provider}"));
    assert_eq!(click["problems"], Value::Array(vec![]));

    assert!(report["silence"]["alertsShown"].as_u64().unwrap() >= 1, "{}", report["silence"]);
    let (_, silences) = vigil.get("/api/v1/silences").await;
    let made: Vec<&Value> =
        silences["silences"].as_array().unwrap().iter().filter(|s| s["author"] == "dashboard").collect();
    assert_eq!(made.len(), 1, "the silence made in the UI is in the API: {silences}");
    assert_eq!(made[0]["status"], "active");

    // The lift made in the UI: written to the log, folded, a `lifted` decision saying who and why.
    assert!(report["lift"]["liftsShown"].as_u64().unwrap() >= 1, "{}", report["lift"]);
    assert_eq!(report["lift"]["problems"], Value::Array(vec![]));
    eventually("the lift made in the UI in the API", Duration::from_secs(30), || async {
        let (_, lifted) = vigil.get("/api/v1/decisions?status=lifted").await;
        lifted["decisions"].as_array().unwrap().iter().any(|d| d["reason"] == "lifted by dashboard: checked by hand")
    })
    .await;

    assert_eq!(
        (report["shared"]["metric"].as_str(), report["shared"]["window"].as_str()),
        (Some("block"), Some("24h"))
    );
    vigil.terminate();
    empty.terminate();
}
