//! `vigil migrate` against a real ClickHouse server (Debian's 18.16 in CI, started here on a
//! free loopback port; `scripts/test` installs it): the schema of `schemas/clickhouse/` applies
//! once, a second run changes nothing, and the tables behave as the warehouse's queries assume
//! (copies of an event collapse under FINAL; the rollups count what is inserted, per minute and
//! per day).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::clickhouse::ClickHouse;

fn migrate(url: &str, database: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["migrate", "--clickhouse-url", url, "--database", database])
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn migrate_applies_the_schema_once_and_its_tables_behave() {
    let server = ClickHouse::start();

    let (ok, stdout, stderr) = migrate(&server.url, "vigil_test");
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "applied 0001 events to {}/vigil_test\nClickHouse schema of vigil_test is at version 0001\n",
            server.url
        )
    );
    let (ok, stdout, stderr) = migrate(&server.url, "vigil_test");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "ClickHouse schema of vigil_test is at version 0001\n", "a second run applies nothing");
    assert_eq!(server.query("SELECT version, name FROM vigil_test.schema_migrations FORMAT TSV"), "1\tevents\n");
    assert_eq!(
        server.query("SELECT name FROM system.tables WHERE database = 'vigil_test' ORDER BY name FORMAT TSV"),
        "events\nevents_per_day\nevents_per_day_mv\nevents_per_minute\nevents_per_minute_mv\nschema_migrations\nsink_batches\n"
    );

    // Three events over two minutes of one day, one of them inserted twice (a replay).
    let row = |offset: u32, id: &str, ms: u64, kind: &str, class: &str| {
        format!("(0, {offset}, '{id}', {ms}, '{kind}', 'ip-1', 'google', '{class}', 't1', 0)")
    };
    let t0 = 1_764_115_200_123_u64; // 2025-11-26 00:00:00.123 UTC
    let insert = "INSERT INTO vigil_test.events (log_partition, log_offset, event_id, occurred_ms, kind, \
                  egress_source, provider, bounce_class, tenant, internal) VALUES ";
    server.query(&format!(
        "{insert}{}, {}",
        row(1, "a", t0, "bounced", "policy"),
        row(2, "b", t0 + 60_000, "delivered", "")
    ));
    server.query(&format!("{insert}{}", row(3, "c", t0 + 61_000, "delivered", "")));
    server.query(&format!("{insert}{}", row(1, "a", t0, "bounced", "policy")));

    assert_eq!(
        server.query("SELECT event_id, occurred_at FROM vigil_test.events FINAL ORDER BY event_id FORMAT TSV"),
        "a\t2025-11-26 00:00:00\nb\t2025-11-26 00:01:00\nc\t2025-11-26 00:01:01\n",
        "the copy of event a collapses under FINAL, and times are UTC"
    );
    // The rollups count every inserted row: the copy too. This is why the sink must never
    // insert an event twice (it skips positions `sink_batches` records as stored).
    assert_eq!(
        server.query(
            "SELECT minute, kind, bounce_class, sum(events) FROM vigil_test.events_per_minute \
             GROUP BY minute, kind, bounce_class ORDER BY minute, kind FORMAT TSV"
        ),
        "2025-11-26 00:00:00\tbounced\tpolicy\t2\n2025-11-26 00:01:00\tdelivered\t\t2\n"
    );
    assert_eq!(
        server.query("SELECT day, tenant, sum(events) FROM vigil_test.events_per_day GROUP BY day, tenant FORMAT TSV"),
        "2025-11-26\tt1\t4\n"
    );
}

#[test]
fn migrate_refuses_a_bad_database_name_and_says_why_it_cannot_connect() {
    let (ok, _, stderr) = migrate("http://127.0.0.1:9", "vigil-prod");
    assert!(!ok);
    assert!(stderr.contains("invalid ClickHouse database name \"vigil-prod\""), "{stderr}");
    let (ok, _, stderr) = migrate(&format!("http://127.0.0.1:{}", common::free_port()), "vigil");
    assert!(!ok);
    assert!(stderr.contains("ClickHouse at http://127.0.0.1:"), "{stderr}");
}
