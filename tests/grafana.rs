//! The Grafana dashboards of `dashboards/grafana/`: every panel's and every variable's SQL runs
//! against a real ClickHouse (Debian's 18.16 in CI) holding `vigil run --demo`'s traffic, with
//! the ClickHouse data source plugin's macros expanded as the plugin expands them
//! (`$__timeFilter`, `$__timeInterval`, `$__fromTime`, `$__toTime`, `$__interval_s`) and the
//! dashboard's variables substituted, and answers rows.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::clickhouse::ClickHouse;
use common::{Vigil, eventually};
use serde_json::Value;

const DATABASE: &str = "grafana";

/// What Grafana gives a query: its range (Unix seconds) and step.
struct Range {
    from: i64,
    to: i64,
    interval_s: i64,
}

/// Expands the plugin's macros in `sql` as `pkg/macros/macros.go` of grafana-clickhouse-datasource
/// does, and `${name}` variables with `variables`.
fn expand(sql: &str, range: &Range, variables: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let name_end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..name_end];
        let (args, consumed) = if after[name_end..].starts_with('(') {
            let close = after[name_end..].find(')').unwrap() + name_end;
            (after[name_end + 1..close].trim().to_owned(), close + 1)
        } else {
            (String::new(), name_end)
        };
        let (from, to) = (format!("toDateTime({})", range.from), format!("toDateTime({})", range.to));
        out.push_str(&match name {
            "timeFilter" => format!("{args} >= {from} AND {args} <= {to}"),
            "timeInterval" => {
                format!("toStartOfInterval(toDateTime({args}), INTERVAL {} second)", range.interval_s.max(1))
            }
            "fromTime" => from,
            "toTime" => to,
            "interval_s" => range.interval_s.max(1).to_string(),
            other => panic!("macro $__{other} is not expanded by this test: add it as the plugin does"),
        });
        rest = &after[consumed..];
    }
    out.push_str(rest);
    for (name, value) in variables {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    assert!(!out.contains("${"), "a variable is left in {out}");
    out
}

fn rows(server: &ClickHouse, sql: &str) -> Vec<Value> {
    let answer: Value = serde_json::from_str(&server.query_in(DATABASE, &format!("{sql} FORMAT JSON"))).unwrap();
    answer["data"].as_array().unwrap().clone()
}

#[test]
fn macros_expand_as_the_plugin_does() {
    let range = Range { from: 1_700_000_000, to: 1_700_003_600, interval_s: 60 };
    assert_eq!(
        expand("WHERE $__timeFilter(minute) GROUP BY $__timeInterval(minute), '${p}'", &range, &[("p", "yahoo")]),
        "WHERE minute >= toDateTime(1700000000) AND minute <= toDateTime(1700003600) GROUP BY toStartOfInterval(toDateTime(minute), INTERVAL 60 second), 'yahoo'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_every_dashboard_answers_from_clickhouse() {
    let server = tokio::task::block_in_place(ClickHouse::start);
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(
        dir.path(),
        &["--demo", "--clickhouse-url", server.url.as_str(), "--clickhouse-database", DATABASE],
    )
    .await;
    let server = std::sync::Arc::new(server);
    // `sql` answers `check` before long (ClickHouse queried off the async threads).
    let answers = |what: &'static str, sql: String, check: fn(&str) -> bool| {
        let server = std::sync::Arc::clone(&server);
        eventually(what, Duration::from_secs(90), move || {
            let (server, sql) = (std::sync::Arc::clone(&server), sql.clone());
            async move {
                tokio::task::spawn_blocking(move || server.try_query(&sql).is_ok_and(|answer| check(&answer)))
                    .await
                    .unwrap()
            }
        })
    };
    answers(
        "the demo's back-filled hour in ClickHouse",
        format!("SELECT count() FROM {DATABASE}.events WHERE kind = 'bounced'"),
        |answer| answer.trim().parse::<u64>().unwrap_or(0) > 100,
    )
    .await;
    // The demo's Yahoo episode suspends ip-3: its decisions reach the decisions table.
    answers(
        "the demo's decisions in ClickHouse",
        format!("SELECT count() FROM {DATABASE}.decisions WHERE status = 'applied'"),
        |answer| answer.trim().parse::<u64>().unwrap_or(0) > 0,
    )
    .await;
    // Every decision the API lists reaches the table, once.
    let (_, listed) = vigil.get("/api/v1/decisions?limit=1000").await;
    let listed: Vec<String> =
        listed["decisions"].as_array().unwrap().iter().map(|d| d["decision_id"].as_str().unwrap().to_owned()).collect();
    eventually("every listed decision in ClickHouse", Duration::from_secs(30), || {
        let (server, listed) = (std::sync::Arc::clone(&server), listed.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let stored = server
                    .try_query(&format!("SELECT decision_id FROM {DATABASE}.decisions FINAL FORMAT TSV"))
                    .unwrap_or_default();
                let stored: Vec<&str> = stored.lines().collect();
                listed.iter().all(|id| stored.iter().filter(|s| **s == id.as_str()).count() == 1)
            })
            .await
            .unwrap()
        }
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let range = Range { from: now - 2 * 3600, to: now + 300, interval_s: 60 };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana");
    let mut checked = 0;
    for name in ["fleet-overview", "ip-provider", "bounces", "decisions"] {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(format!("{name}.json"))).unwrap()).unwrap();
        // Variables first: each query lists values; the test picks the demo's Yahoo episode.
        let mut variables = Vec::new();
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            let variable_name = variable["name"].as_str().unwrap();
            let sql = expand(variable["query"].as_str().unwrap(), &range, &[]);
            let server = std::sync::Arc::clone(&server);
            let values = tokio::task::spawn_blocking(move || rows(&server, &sql)).await.unwrap();
            let values: Vec<String> = values
                .iter()
                .map(|row| row.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned())
                .collect();
            let wanted = match variable_name {
                "egress_source" => "ip-3",
                "provider" => "yahoo",
                other => panic!("{name}: variable {other} has no value chosen by this test"),
            };
            assert!(values.iter().any(|v| v == wanted), "{name}: variable {variable_name} lists {values:?}");
            variables.push((variable_name, wanted));
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap().to_owned();
            assert_eq!(panel["datasource"]["uid"], "vigil-clickhouse", "{name}/{title}");
            for target in panel["targets"].as_array().unwrap() {
                let sql = expand(target["rawSql"].as_str().unwrap(), &range, &variables);
                let server = std::sync::Arc::clone(&server);
                let answer = tokio::task::spawn_blocking(move || rows(&server, &sql)).await.unwrap();
                assert!(!answer.is_empty(), "{name}/{title}: no rows on the demo's data");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 13, "every panel of the four dashboards");
    vigil.terminate();
}
