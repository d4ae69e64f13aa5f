//! `vigil run --demo` shows data at once: several sources and providers, and the Yahoo
//! deferrals of one IP visible in the reputation windows.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Vigil, eventually};

#[tokio::test]
async fn demo_traffic_fills_summary_and_reputation() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(dir.path(), &["--demo"]).await;
    eventually("demo data in the summary", Duration::from_secs(30), || async {
        let rows = vigil.summary("group_by=provider").await;
        let providers: Vec<&str> = rows.as_array().unwrap().iter().filter_map(|r| r["provider"].as_str()).collect();
        ["google", "microsoft", "yahoo", "apple", "other"].iter().all(|p| providers.contains(p))
    })
    .await;
    // The warehouse and the reputation state are updated one after the other from the same
    // batch: wait for the state too.
    eventually("demo deferrals in the reputation rows", Duration::from_secs(30), || async {
        let (status, body) = vigil.get("/api/v1/reputation?scope=egress_source,provider&window=1h").await;
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().unwrap();
        let deferred = |source: &str, provider: &str| {
            rows.iter()
                .find(|r| r["egress_source"] == source && r["provider"] == provider)
                .map_or(0, |r| r["deferred"].as_u64().unwrap())
        };
        // Every source sends to every provider; Yahoo defers ip-3.
        deferred("ip-3", "yahoo") > 0 && rows.len() >= 4 * 5
    })
    .await;
    let (_, sources) = vigil.get("/api/v1/reputation?scope=egress_source&window=24h").await;
    assert_eq!(sources["rows"].as_array().unwrap().len(), 4, "{sources:#}");
    let total = |body: &serde_json::Value| {
        body["rows"].as_array().unwrap().iter().map(|r| r["attempts"].as_u64().unwrap()).sum::<u64>()
    };
    vigil.kill9();

    // Window state is a fold over the log: a restart (without new traffic) rebuilds it.
    let vigil = Vigil::start(dir.path(), &[]).await;
    let (_, after) = vigil.get("/api/v1/reputation?scope=egress_source&window=24h").await;
    assert_eq!(after["rows"].as_array().unwrap().len(), 4, "{after:#}");
    assert!(total(&after) >= total(&sources), "nothing lost: {} < {}", total(&after), total(&sources));
}
