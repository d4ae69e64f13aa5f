//! The ClickHouse side of the warehouse: the connection settings, the schema migrations
//! (`schemas/clickhouse/`, applied by `vigil migrate`) and the [`writer`] that inserts enriched
//! events so that replays count nothing twice.
//!
//! Migrations are SQL files numbered in order and compiled into the binary, so a `vigil` and
//! the schema it expects always travel together. Each one is applied once per database and
//! recorded in `schema_migrations`; every statement is `IF NOT EXISTS` (or an `ADD COLUMN`,
//! skipped when the column exists: ClickHouse 18.16 cannot say `IF NOT EXISTS` there), so a
//! migration cut short (the recording comes last) is simply applied again. The DDL runs on ClickHouse 18.16
//! (Debian, used in CI) and on current releases; `schemas/clickhouse/0001_events.sql` says which
//! choices keep it portable.

pub mod decisions;
pub mod reader;
pub mod writer;

use clickhouse::Client;
use serde::Deserialize;

pub use decisions::{DecisionRow, DecisionWriter};
pub use reader::ClickHouseReader;
pub use writer::{ClickHouseWriter, Written};

/// One migration: `schemas/clickhouse/<version>_<name>.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A time as ClickHouse's tables keep it (18.16 has no DateTime64): epoch milliseconds, 0
/// before 1970.
#[must_use]
pub fn epoch_millis(at: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// Every migration, oldest first. Append only: an applied migration is never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "events", sql: include_str!("../../../schemas/clickhouse/0001_events.sql") },
    Migration { version: 2, name: "hourly", sql: include_str!("../../../schemas/clickhouse/0002_hourly.sql") },
    Migration { version: 3, name: "complaints", sql: include_str!("../../../schemas/clickhouse/0003_complaints.sql") },
    Migration { version: 4, name: "dmarc", sql: include_str!("../../../schemas/clickhouse/0004_dmarc.sql") },
    Migration { version: 5, name: "operator", sql: include_str!("../../../schemas/clickhouse/0005_operator.sql") },
    Migration { version: 6, name: "decisions", sql: include_str!("../../../schemas/clickhouse/0006_decisions.sql") },
];

/// Where ClickHouse is and which database Vigil owns there.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
}

fn default_database() -> String {
    "vigil".into()
}
fn default_user() -> String {
    "default".into()
}

/// Why ClickHouse could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("invalid ClickHouse database name {0:?}: use letters, digits and underscores, not starting with a digit")]
    InvalidDatabase(String),
    #[error("ClickHouse at {url}: {source}")]
    Server {
        url: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error(
        "ClickHouse at {url} has not finished {pending} mutation(s) of events (an erasure); it goes on, and erasing again waits for it"
    )]
    MutationPending { url: String, pending: u64 },
    #[error("migration {version} ({name}) failed at statement {statement}: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        statement: usize,
        #[source]
        source: clickhouse::error::Error,
    },
}

impl ClickHouseError {
    /// Wraps a client error with the server it came from (for `map_err`).
    pub(crate) fn at(url: &str) -> impl Fn(clickhouse::error::Error) -> Self + '_ {
        move |source| Self::Server { url: url.to_owned(), source }
    }
}

impl ClickHouseConfig {
    /// The settings with the defaults, for `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), database: default_database(), user: default_user(), password: String::new() }
    }

    /// A client on Vigil's database. Row validation is off: it needs
    /// `RowBinaryWithNamesAndTypes`, which ClickHouse 18.16 lacks.
    ///
    /// # Errors
    /// When the database name is not a plain identifier (it is put in DDL unquoted).
    pub fn client(&self) -> Result<Client, ClickHouseError> {
        Ok(self.server().with_database(self.valid_database()?))
    }

    fn server(&self) -> Client {
        // A pool idle time below ClickHouse's own 3 s keep-alive, as the crate's default client.
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build(connector());
        let client = Client::with_http_client(http).with_url(&self.url).with_user(&self.user).with_validation(false);
        if self.password.is_empty() { client } else { client.with_password(&self.password) }
    }

    fn valid_database(&self) -> Result<&str, ClickHouseError> {
        let name = self.database.as_str();
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            Ok(name)
        } else {
            Err(ClickHouseError::InvalidDatabase(name.to_owned()))
        }
    }
}

/// A migration applied by [`migrate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: u32,
    pub name: &'static str,
}

/// Creates the database if missing and applies the migrations it has not had yet, in order.
/// Returns those applied now (none when the schema is current).
///
/// # Errors
/// When ClickHouse cannot be reached or a statement fails; migrations before it stay applied.
pub async fn migrate(config: &ClickHouseConfig) -> Result<Vec<Applied>, ClickHouseError> {
    let database = config.valid_database()?;
    config
        .server()
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .map_err(ClickHouseError::at(&config.url))?;
    let client = config.client()?;
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version UInt32, name String, applied_at DateTime('UTC')) \
             ENGINE = MergeTree ORDER BY version",
        )
        .execute()
        .await
        .map_err(ClickHouseError::at(&config.url))?;
    #[derive(clickhouse::Row, Deserialize)]
    struct Version {
        version: u32,
    }
    let done: Vec<u32> = client
        .query("SELECT version FROM schema_migrations")
        .fetch_all::<Version>()
        .await
        .map_err(ClickHouseError::at(&config.url))?
        .into_iter()
        .map(|v| v.version)
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for (index, statement) in statements(migration.sql).iter().enumerate() {
            if let Some((table, column)) = added_column(statement)
                && has_column(&client, database, table, column).await.map_err(ClickHouseError::at(&config.url))?
            {
                continue;
            }
            client.query(statement).execute().await.map_err(|source| ClickHouseError::Migration {
                version: migration.version,
                name: migration.name,
                statement: index + 1,
                source,
            })?;
        }
        client
            .query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, now())")
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await
            .map_err(ClickHouseError::at(&config.url))?;
        tracing::info!(version = migration.version, name = migration.name, "ClickHouse migration applied");
        applied.push(Applied { version: migration.version, name: migration.name });
    }
    Ok(applied)
}

/// A partition [`drop_partitions_before`] dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPartition {
    pub table: String,
    /// `YYYYMMDD` (the raw events) or `YYYYMM` (the rollups, the decisions).
    pub partition: String,
}

/// Retention in ClickHouse: drops every partition of Vigil's tables whose days all fall
/// before `first_kept` (a day of `events`; a month of the rollups and decisions, once the
/// whole month is past). ClickHouse 18.16 has no table TTL, but drops a partition in one
/// cheap step, and every Vigil table is partitioned by time; tables without a time partition
/// (`sink_batches`, `schema_migrations`) are never touched.
///
/// # Errors
/// When ClickHouse cannot be reached or refuses a drop; the partitions dropped before stay
/// dropped.
pub async fn drop_partitions_before(
    config: &ClickHouseConfig,
    first_kept: chrono::NaiveDate,
) -> Result<Vec<DroppedPartition>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Part {
        table: String,
        partition: String,
    }
    let database = config.valid_database()?;
    let client = config.client()?;
    let parts = client
        .query("SELECT table, partition FROM system.parts WHERE database = ? AND active GROUP BY table, partition")
        .bind(database)
        .fetch_all::<Part>()
        .await
        .map_err(ClickHouseError::at(&config.url))?;
    let mut dropped = Vec::new();
    for Part { table, partition } in parts {
        let plain = |name: &str| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain(&table) || !partition_is_before(&partition, first_kept) {
            continue;
        }
        client
            .query(&format!("ALTER TABLE {database}.{table} DROP PARTITION {partition}"))
            .execute()
            .await
            .map_err(ClickHouseError::at(&config.url))?;
        tracing::info!(table, partition, "ClickHouse partition dropped by retention");
        dropped.push(DroppedPartition { table, partition });
    }
    Ok(dropped)
}

/// The columns of `events` an erasure leaves alone: the sorting key (ClickHouse cannot
/// update it; none of it is a recipient's) and what holds no text.
const ERASE_KEEPS: [&str; 3] = ["egress_source", "provider", "event_id"];
/// How long an erasure waits for ClickHouse to finish rewriting.
const ERASE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Erasure in ClickHouse: in every row of `events` whose recipient is `stored` (any case),
/// every copy of the address in every text column becomes `replacement`, by an
/// `ALTER TABLE events UPDATE` mutation (18.16 has them), awaited until ClickHouse has
/// rewritten every part. The rollups hold no addresses, and their counts stay right: the
/// rows stay, rewritten. Returns the rows rewritten.
///
/// # Errors
/// When ClickHouse cannot be reached, refuses the mutation, or has not finished it within
/// five minutes (it goes on; calling again waits for it).
pub async fn erase_recipient(
    config: &ClickHouseConfig,
    stored: &str,
    replacement: &str,
) -> Result<u64, ClickHouseError> {
    let database = config.valid_database()?;
    let client = config.client()?;
    let at = ClickHouseError::at(&config.url);
    let rows: u64 = client
        .query(&format!("SELECT count() FROM {database}.events WHERE lower(recipient) = ?"))
        .bind(stored)
        .fetch_one()
        .await
        .map_err(at)?;
    if rows > 0 {
        let columns: Vec<String> = client
            .query("SELECT name FROM system.columns WHERE database = ? AND table = 'events' AND type = 'String'")
            .bind(database)
            .fetch_all()
            .await
            .map_err(ClickHouseError::at(&config.url))?;
        let plain = |name: &str| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let pattern = format!("(?i){}", regex::escape(stored));
        let mut assignments = Vec::new();
        let mut binds = Vec::new();
        for column in columns.iter().filter(|c| plain(c) && !ERASE_KEEPS.contains(&c.as_str())) {
            assignments.push(format!("{column} = replaceRegexpAll({column}, ?, ?)"));
            binds.extend([pattern.as_str(), replacement]);
        }
        let mut mutation = client.query(&format!(
            "ALTER TABLE {database}.events UPDATE {} WHERE lower(recipient) = ?",
            assignments.join(", ")
        ));
        for bind in binds {
            mutation = mutation.bind(bind);
        }
        mutation.bind(stored).execute().await.map_err(ClickHouseError::at(&config.url))?;
    }
    let deadline = std::time::Instant::now() + ERASE_WAIT;
    loop {
        let pending: u64 = client
            .query("SELECT count() FROM system.mutations WHERE database = ? AND table = 'events' AND is_done = 0")
            .bind(database)
            .fetch_one()
            .await
            .map_err(ClickHouseError::at(&config.url))?;
        if pending == 0 {
            return Ok(rows);
        }
        if std::time::Instant::now() >= deadline {
            return Err(ClickHouseError::MutationPending { url: config.url.clone(), pending });
        }
        // ClickHouse has no way to wait for a mutation on 18.16 (`mutations_sync` came later).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Whether a time partition (`YYYYMMDD` or `YYYYMM`) lies wholly before `first_kept`.
fn partition_is_before(partition: &str, first_kept: chrono::NaiveDate) -> bool {
    use chrono::NaiveDate;
    if !partition.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match partition.len() {
        8 => NaiveDate::parse_from_str(partition, "%Y%m%d").is_ok_and(|day| day < first_kept),
        6 => NaiveDate::parse_from_str(&format!("{partition}01"), "%Y%m%d")
            .ok()
            .and_then(|month| month.checked_add_months(chrono::Months::new(1)))
            .is_some_and(|next_month| next_month <= first_kept),
        _ => false,
    }
}

/// `(table, column)` of an `ALTER TABLE <table> ADD COLUMN <column> ...` statement.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = statement.split_whitespace().take(6).collect();
    match words.as_slice() {
        [alter, table_word, table, add, column_word, column]
            if alter.eq_ignore_ascii_case("ALTER")
                && table_word.eq_ignore_ascii_case("TABLE")
                && add.eq_ignore_ascii_case("ADD")
                && column_word.eq_ignore_ascii_case("COLUMN") =>
        {
            Some((table, column))
        }
        _ => None,
    }
}

async fn has_column(client: &Client, database: &str, table: &str, column: &str) -> clickhouse::error::Result<bool> {
    let count: u64 = client
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(database)
        .bind(table)
        .bind(column)
        .fetch_one()
        .await?;
    Ok(count > 0)
}

/// The statements of a migration file: `--` comments dropped, split on `;`. The files are
/// Vigil's own DDL, which keeps `;` and `--` out of string literals.
#[must_use]
pub fn statements(sql: &str) -> Vec<String> {
    let without_comments: String =
        sql.lines().map(|line| line.split_once("--").map_or(line, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The connector under the ClickHouse client: http or https, TLS from the process's trust
/// store ([`vigil_log::tls`], so `SSL_CERT_FILE` and `[tls] ca_file` apply: ClickHouse Cloud,
/// a private CA), TCP keep-alive as the crate's default client has.
fn connector() -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*vigil_log::tls::client_config()).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_goes_only_when_all_its_days_are_past() {
        let first_kept = chrono::NaiveDate::from_ymd_opt(2026, 3, 15).unwrap();
        assert!(partition_is_before("20260314", first_kept));
        assert!(!partition_is_before("20260315", first_kept));
        assert!(partition_is_before("202602", first_kept), "February is wholly past");
        assert!(!partition_is_before("202603", first_kept), "March still has kept days");
        assert!(!partition_is_before("tuple()", first_kept));
        assert!(!partition_is_before("2026", first_kept));
    }

    #[test]
    fn migration_files_split_into_statements_without_comments() {
        let parts = statements("-- a table\nCREATE TABLE a (x UInt8) -- trailing\nENGINE = Log;\n\n;SELECT 1;\n");
        assert_eq!(parts, ["CREATE TABLE a (x UInt8) \nENGINE = Log", "SELECT 1"]);
        let events = statements(MIGRATIONS[0].sql);
        assert!(events.iter().all(|s| !s.contains("--")));
        assert!(events.iter().all(|s| s.contains("IF NOT EXISTS")), "every statement can run twice");
        // From 0003 on (0002 backfills its rollups once, guarded by its record).
        for migration in MIGRATIONS.iter().filter(|m| m.version >= 3) {
            for statement in statements(migration.sql) {
                assert!(
                    statement.contains("IF NOT EXISTS") || added_column(&statement).is_some(),
                    "migration {} cannot run twice: {statement}",
                    migration.version
                );
            }
        }
        assert_eq!(added_column("ALTER TABLE events ADD COLUMN x String"), Some(("events", "x")));
        assert_eq!(added_column("ALTER TABLE events DROP COLUMN x"), None);
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<u32> = (1..=u32::try_from(MIGRATIONS.len()).unwrap()).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn database_names_are_plain_identifiers() {
        let mut config = ClickHouseConfig::new("http://127.0.0.1:8123");
        assert!(config.client().is_ok());
        for bad in ["", "1vigil", "vigil; DROP TABLE x", "vi-gil", "`vigil`"] {
            config.database = bad.into();
            assert!(matches!(config.client(), Err(ClickHouseError::InvalidDatabase(_))), "{bad}");
        }
    }
}
