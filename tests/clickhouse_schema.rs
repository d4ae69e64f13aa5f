//! `vigil migrate` against a real ClickHouse server (Debian's 18.16 in CI, started here on a
//! free loopback port; `scripts/test` installs it): the schema of `schemas/clickhouse/` applies
//! once, a second run changes nothing, and the tables behave as the warehouse's queries assume
//! (copies of an event collapse under FINAL; the rollups count what is inserted, per minute and
//! per day). And the sink: replaying the log into ClickHouse, even after a batch cut short by
//! a crash, leaves every answer equal to writing each event once. (That the reader answers
//! every endpoint as the Parquet warehouse does is `tests/conformance.rs`.)

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
            "applied 0001 events to {url}/vigil_test\napplied 0002 hourly to {url}/vigil_test\n\
             applied 0003 complaints to {url}/vigil_test\napplied 0004 dmarc to {url}/vigil_test\n\
             applied 0005 operator to {url}/vigil_test\napplied 0006 decisions to {url}/vigil_test\n\
             ClickHouse schema of vigil_test is at version 0006\n",
            url = server.url
        )
    );
    let (ok, stdout, stderr) = migrate(&server.url, "vigil_test");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "ClickHouse schema of vigil_test is at version 0006\n", "a second run applies nothing");
    assert_eq!(
        server.query("SELECT version, name FROM vigil_test.schema_migrations ORDER BY version FORMAT TSV"),
        "1\tevents\n2\thourly\n3\tcomplaints\n4\tdmarc\n5\toperator\n6\tdecisions\n"
    );
    assert_eq!(
        server.query("SELECT name FROM system.tables WHERE database = 'vigil_test' ORDER BY name FORMAT TSV"),
        "decisions\nevents\nevents_per_day\nevents_per_day_mv\nevents_per_hour\nevents_per_hour_mv\nevents_per_minute\n\
         events_per_minute_mv\nschema_migrations\nsink_batches\n"
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
    let hourly = "SELECT hour, kind, internal, sum(events) FROM events_per_hour GROUP BY hour, kind, internal \
                  ORDER BY kind FORMAT TSV";
    let expected = "2025-11-26 00:00:00\tbounced\t0\t2\n2025-11-26 00:00:00\tdelivered\t0\t2\n";
    assert_eq!(server.query_in("vigil_test", hourly), expected);

    // 0002 on a database that already holds events counts them once into the hourly rollup,
    // and applied again (as after a cut-short run) counts nothing more.
    let hourly_sql = vigil_warehouse::clickhouse::MIGRATIONS[1].sql;
    let backfill = vigil_warehouse::clickhouse::statements(hourly_sql)
        .into_iter()
        .find(|s| s.starts_with("INSERT"))
        .expect("0002 backfills");
    server.query_in("vigil_test", "DROP TABLE events_per_hour_mv");
    server.query_in("vigil_test", "DROP TABLE events_per_hour");
    server.query_in("vigil_test", &vigil_warehouse::clickhouse::statements(hourly_sql)[0]);
    // (A merge may have collapsed the copy of `a` by now: the backfill counts what is stored.)
    let stored = server.query_in(
        "vigil_test",
        "SELECT toStartOfHour(occurred_at) AS hour, kind, internal, count() FROM events \
         GROUP BY hour, kind, internal ORDER BY kind FORMAT TSV",
    );
    server.query_in("vigil_test", &backfill);
    server.query_in("vigil_test", &backfill);
    assert_eq!(server.query_in("vigil_test", hourly), stored, "the backfill counts each stored row once");
}

/// A migration cut short before it was recorded is applied again: the complaint columns'
/// migration (ADD COLUMN, which ClickHouse 18.16 cannot guard with IF NOT EXISTS) skips the
/// columns that are there and adds the rest.
#[test]
fn a_migration_cut_short_is_applied_again() {
    let server = ClickHouse::start();
    let (ok, _, stderr) = migrate(&server.url, "vigil_cut");
    assert!(ok, "{stderr}");
    // As if the process died after the first two columns of 0003: the last two and every
    // record are gone (dropping the record table is the synchronous way to forget them).
    server.query("ALTER TABLE vigil_cut.events DROP COLUMN attribution");
    server.query("ALTER TABLE vigil_cut.events DROP COLUMN original_sent_ms");
    server.query("DROP TABLE vigil_cut.schema_migrations");
    let (ok, stdout, stderr) = migrate(&server.url, "vigil_cut");
    assert!(ok, "{stderr}");
    assert!(
        stdout.ends_with(
            "applied 0003 complaints to {}/vigil_cut\napplied 0004 dmarc to {}/vigil_cut\n\
             applied 0005 operator to {}/vigil_cut\napplied 0006 decisions to {}/vigil_cut\n\
             ClickHouse schema of vigil_cut is at version 0006\n"
                .replace("{}", &server.url)
                .as_str()
        ),
        "{stdout}"
    );
    assert_eq!(
        server.query(
            "SELECT name, type FROM system.columns WHERE database = 'vigil_cut' AND table = 'events' \
             AND name IN ('report_recipient', 'feedback_loop', 'original_sent_ms', 'attribution') ORDER BY name FORMAT TSV"
        ),
        "attribution\tString\nfeedback_loop\tString\noriginal_sent_ms\tNullable(UInt64)\nreport_recipient\tString\n"
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

/// `n` KumoMTA events from the example records (new message ids, spread over hours), as
/// the processor would hand them to the sink with their log offsets.
fn events(n: usize) -> Vec<vigil_schemas::DeliveryEvent> {
    let examples =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/kumomta/examples.jsonl")).unwrap();
    let examples: Vec<&str> = examples.lines().collect();
    let ingested = chrono::DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z").unwrap().to_utc();
    let mut out = Vec::with_capacity(n);
    let mut i = 0_usize;
    while out.len() < n {
        let mut record: serde_json::Value = serde_json::from_str(examples[i % examples.len()]).unwrap();
        record["id"] = format!("{i:08}-{}", record["id"].as_str().unwrap()).into();
        // About seven records every 13 s: the set spans several hours.
        record["timestamp"] = (1_764_115_200 + i / 7 * 13).into();
        out.extend(vigil_ingest::kumomta::normalise_record(&record.to_string(), ingested).unwrap_or_default());
        i += 1;
    }
    out.truncate(n);
    out
}

/// What the API will read: raw events collapsed, and both rollups.
fn answers(server: &ClickHouse, database: &str) -> Vec<String> {
    vec![
        server.query(&format!("SELECT count(), uniqExact(event_id) FROM {database}.events FINAL FORMAT TSV")),
        server.query(&format!(
            "SELECT minute, egress_source, provider, kind, bounce_class, sum(events) FROM {database}.events_per_minute \
             GROUP BY minute, egress_source, provider, kind, bounce_class \
             ORDER BY minute, egress_source, provider, kind, bounce_class FORMAT TSV"
        )),
        server.query(&format!(
            "SELECT day, tenant, campaign, sender_domain, sum(events) FROM {database}.events_per_day \
             GROUP BY day, tenant, campaign, sender_domain ORDER BY day, tenant, campaign, sender_domain FORMAT TSV"
        )),
        server.query(&format!("SELECT sum(events) FROM {database}.events_per_minute FORMAT TSV")),
    ]
}

#[test]
fn a_replay_into_clickhouse_counts_nothing_twice_even_after_a_batch_cut_short() {
    use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseWriter, Written};

    let server = ClickHouse::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events = events(3_500);
    let logged: Vec<(u64, &vigil_schemas::DeliveryEvent)> = (0..).zip(&events).collect();
    let config = |database: &str| ClickHouseConfig { database: database.into(), ..ClickHouseConfig::new(&server.url) };
    for database in ["clean", "replayed"] {
        assert!(migrate(&server.url, database).0);
    }

    // The reference: every event written once.
    runtime.block_on(async {
        let mut sink = ClickHouseWriter::open(&config("clean"), 0).await.unwrap();
        for batch in logged.chunks(500) {
            assert_eq!(sink.write_batch(batch).await.unwrap(), Written { inserted: batch.len(), skipped: 0 });
        }
    });
    let expected = answers(&server, "clean");
    assert_eq!(expected[0], "3500\t3500\n");
    assert_eq!(expected[3], "3500\n", "the rollups count every event once");

    runtime.block_on(async {
        // The first 3 000 events, then the whole log replayed from offset 0 by a new sink.
        let mut sink = ClickHouseWriter::open(&config("replayed"), 0).await.unwrap();
        for batch in logged[..3_000].chunks(500) {
            sink.write_batch(batch).await.unwrap();
        }
        let mut replay = ClickHouseWriter::open(&config("replayed"), 0).await.unwrap();
        assert_eq!(replay.stored_until(), 3_000);
        for batch in logged[..3_000].chunks(700) {
            assert_eq!(replay.write_batch(batch).await.unwrap(), Written { inserted: 0, skipped: batch.len() });
        }
        // A crash cuts the next batch short: half its rows are in, the batch is not recorded.
        replay.insert_events(&logged[3_000..3_250]).await.unwrap();
        drop(replay);
        let mut restarted = ClickHouseWriter::open(&config("replayed"), 0).await.unwrap();
        assert_eq!(restarted.stored_until(), 3_000);
        assert_eq!(restarted.write_batch(&logged[3_000..]).await.unwrap(), Written { inserted: 250, skipped: 250 });
        // And the whole log once more, after everything.
        let mut again = ClickHouseWriter::open(&config("replayed"), 0).await.unwrap();
        assert_eq!(again.stored_until(), 3_500);
        assert_eq!(again.write_batch(&logged).await.unwrap(), Written { inserted: 0, skipped: 3_500 });
    });
    let replayed = answers(&server, "replayed");
    assert_eq!(replayed, expected, "replays and a batch cut short leave every answer unchanged");
    assert!(expected[1].lines().count() > 10, "the data spans minutes and kinds:\n{}", expected[1]);
}

/// Retention on ClickHouse 18.16 (no table TTL there): the partitions whose days are all before
/// the first kept day go, from the raw events and every rollup; later days, and the sink's
/// record of what it stored, stay.
#[test]
fn retention_drops_old_partitions_from_every_table_and_keeps_the_rest() {
    use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseWriter, drop_partitions_before};

    let server = ClickHouse::start();
    assert!(migrate(&server.url, "retained").0);
    let config = ClickHouseConfig { database: "retained".into(), ..ClickHouseConfig::new(&server.url) };
    // Events of late 2025, 200 of them moved forty days on (into January 2026).
    let mut all = events(500);
    for event in &mut all[300..] {
        event.occurred_at += chrono::TimeDelta::days(40);
    }
    let first_kept = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let kept = all.iter().filter(|e| e.occurred_at.date_naive() >= first_kept).count();
    assert!(kept > 50 && kept < 500, "{kept}");
    let logged: Vec<(u64, &vigil_schemas::DeliveryEvent)> = (0..).zip(&all).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dropped = runtime.block_on(async {
        let mut sink = ClickHouseWriter::open(&config, 0).await.unwrap();
        sink.write_batch(&logged).await.unwrap();
        drop_partitions_before(&config, first_kept).await.unwrap()
    });
    let mut tables: Vec<&str> = dropped.iter().map(|d| d.table.as_str()).collect();
    tables.sort_unstable();
    tables.dedup();
    assert_eq!(tables, ["events", "events_per_day", "events_per_hour", "events_per_minute"], "{dropped:?}");
    for query in [
        "SELECT count() FROM retained.events FINAL FORMAT TSV",
        "SELECT sum(events) FROM retained.events_per_minute FORMAT TSV",
        "SELECT sum(events) FROM retained.events_per_day FORMAT TSV",
    ] {
        assert_eq!(server.query(query), format!("{kept}\n"), "{query}");
    }
    assert_eq!(
        server.query("SELECT sum(events) FROM retained.sink_batches FORMAT TSV"),
        "500\n",
        "the sink's record stays"
    );
    let again = runtime.block_on(drop_partitions_before(&config, first_kept));
    assert!(again.unwrap().is_empty(), "nothing more to drop");
}
