//! Retention for `vigil run` (`[retention]` of the configuration): the log of record by age
//! and by size, its dead letters by age, the Parquet warehouse by day; and ClickHouse's
//! partitions by day or month, wherever a role feeds ClickHouse ([`clickhouse_loop`]).
//!
//! Deleting from the log never passes what the derived state's latest durable snapshot and
//! every consumer of the log have taken (the warehouse writer and any other cursor), so a
//! restart, or `vigil replay`, can always rebuild the state from a snapshot and the events
//! after it. Deleting an event also forgets its `event_id`: a copy of it sent again later is
//! counted again, so the log's age is also its dedupe horizon (the default, seven days,
//! covers KumoMTA's and the relays' retry windows).
//!
//! The plan ([`log_cut`]) is a pure function of the log's facts and the clock; [`apply`]
//! does the deleting, in chunks so appends never wait long behind it.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use vigil_log::{EventLog, LogError};
use vigil_warehouse::{ParquetWriter, WarehouseError};

/// The consumer name under which the pipeline records its latest durable snapshot's offset.
pub const SNAPSHOT_CONSUMER: &str = "snapshot";

/// Events deleted per transaction: appends wait behind each one.
const CHUNK: u64 = 20_000;

/// `[retention]`. Each limit can be `"off"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Events older than this (by ingest time) leave the log, and their dedupe entries with
    /// them. Default 7 days.
    pub log: Option<Duration>,
    /// When the log's file is larger than this, the oldest events go until their share is
    /// 90 % of it. Default 20 GiB. The file does not shrink (freed pages are reused).
    pub log_max_bytes: Option<u64>,
    /// Days of the Parquet warehouse older than this are deleted. Default 400 days.
    pub warehouse: Option<Duration>,
    /// Dead letters older than this are deleted. Default 30 days.
    pub dead_letters: Option<Duration>,
    /// Decisions (`/api/v1/decisions`, the decision outbox) made longer ago than this, once
    /// every pusher has passed them, are deleted. Default 90 days; never shorter than `log`.
    /// (Alert notices are kept 7 days on the events' clock, by the alert outbox itself.)
    pub decisions: Option<Duration>,
    /// How often the limits are applied. Default 5 minutes.
    pub check_every: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            log: Some(Duration::from_secs(7 * 86_400)),
            log_max_bytes: Some(20 << 30),
            warehouse: Some(Duration::from_secs(400 * 86_400)),
            dead_letters: Some(Duration::from_secs(30 * 86_400)),
            decisions: Some(Duration::from_secs(90 * 86_400)),
            check_every: Duration::from_secs(300),
        }
    }
}

impl<'de> Deserialize<'de> for RetentionSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given {
            log: Option<String>,
            log_max_bytes: Option<String>,
            warehouse: Option<String>,
            dead_letters: Option<String>,
            decisions: Option<String>,
            check_every: Option<String>,
        }
        let given = Given::deserialize(deserializer)?;
        let mut settings = Self::default();
        let age = |key: &str, text: &str| -> Result<Option<Duration>, D::Error> {
            if text.trim() == "off" {
                return Ok(None);
            }
            humantime::parse_duration(text.trim())
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("{key} `{text}`: {e} (e.g. \"7d\", \"36h\", \"off\")")))
        };
        if let Some(text) = given.log {
            settings.log = age("log", &text)?;
        }
        if let Some(text) = given.warehouse {
            settings.warehouse = age("warehouse", &text)?;
        }
        if let Some(text) = given.dead_letters {
            settings.dead_letters = age("dead_letters", &text)?;
        }
        if let Some(text) = given.decisions {
            settings.decisions = age("decisions", &text)?;
        }
        if let (Some(decisions), Some(log)) = (settings.decisions, settings.log)
            && decisions < log
        {
            // A state rebuilt from the log decides again what the log still holds.
            return Err(serde::de::Error::custom(format!(
                "decisions ({}) must be at least log ({}): a rebuild from the log decides its decisions again",
                humantime::format_duration(decisions),
                humantime::format_duration(log)
            )));
        }
        if let Some(text) = given.check_every {
            settings.check_every = age("check_every", &text)?
                .filter(|d| !d.is_zero())
                .ok_or_else(|| serde::de::Error::custom("check_every must be a positive duration"))?;
        }
        if let Some(text) = given.log_max_bytes {
            settings.log_max_bytes = parse_bytes(&text).map_err(serde::de::Error::custom)?;
        }
        Ok(settings)
    }
}

/// `"20GiB"`, `"500MiB"`, `"1048576"` or `"off"`.
fn parse_bytes(text: &str) -> Result<Option<u64>, String> {
    let trimmed = text.trim();
    if trimmed == "off" {
        return Ok(None);
    }
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => {
            return Err(format!("log_max_bytes `{text}`: unknown unit `{other}` (B, KiB, MiB, GiB, TiB, or \"off\")"));
        }
    };
    let value: u64 = number.parse().map_err(|_| format!("log_max_bytes `{text}`: not a number of bytes"))?;
    value
        .checked_shl(shift)
        .filter(|v| v >> shift == value && *v > 0)
        .map(Some)
        .ok_or_else(|| format!("log_max_bytes `{text}`: out of range"))
}

/// Where the log may be cut: the later of the age cut and the size cut, never past
/// `keep_from` (what the snapshot and the consumers still need) and never before `first`.
#[must_use]
pub fn log_cut(first: u64, head: u64, file_bytes: u64, age_cut: u64, max_bytes: Option<u64>, keep_from: u64) -> u64 {
    let held = head.saturating_sub(first);
    let size_cut = match max_bytes {
        Some(max) if file_bytes > max && held > 0 => {
            // The file's bytes over the events it holds overestimate an event's share (free
            // pages count too), so this deletes a little more than needed, never less.
            let keep = (u128::from(held) * u128::from(max) * 9 / (u128::from(file_bytes) * 10)) as u64;
            head - keep.min(held)
        }
        _ => first,
    };
    age_cut.max(size_cut).min(keep_from).max(first)
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retained {
    pub events: u64,
    pub dead_letters: u64,
    pub days: Vec<NaiveDate>,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Decisions(#[from] crate::actuation::push::OutboxError),
}

/// What the log must keep for the state to be rebuilt: the smallest consumer offset, with the
/// durable snapshot's among them when snapshots are kept (none yet: everything is kept).
///
/// # Errors
/// On storage failure.
pub fn keep_from(log: &EventLog, snapshots_kept: bool) -> Result<u64, LogError> {
    let offsets = log.consumer_offsets()?;
    if snapshots_kept && !offsets.iter().any(|(name, _)| name == SNAPSHOT_CONSUMER) {
        return Ok(0);
    }
    Ok(offsets.iter().map(|(_, offset)| *offset).min().unwrap_or(0))
}

/// One pass of retention at `now`. Blocking.
///
/// # Errors
/// When the log or the warehouse fails; what was deleted before stays deleted.
pub fn apply(
    log: &EventLog,
    writer: &ParquetWriter,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
    keep_from: u64,
) -> Result<Retained, RetentionError> {
    let mut retained = Retained::default();
    let first = log.first_offset()?;
    let age_cut = match settings.log {
        Some(age) => log.first_offset_ingested_since(now - age)?,
        None => first,
    };
    let cut = log_cut(first, log.head(), log.file_bytes()?, age_cut, settings.log_max_bytes, keep_from);
    let dead_cut = match settings.dead_letters {
        Some(age) => log.first_dead_letter_since(now - age)?,
        None => 0,
    };
    let dead_first = log.dead_letter_head()? - log.dead_letter_count()?;
    let mut at = first;
    loop {
        let to = cut.min(at.saturating_add(CHUNK));
        log.truncate_before(to, dead_cut)?;
        at = to;
        if at >= cut {
            break;
        }
    }
    retained.events = cut - first;
    retained.dead_letters = dead_cut.saturating_sub(dead_first);
    if let Some(age) = settings.warehouse {
        retained.days = writer.drop_days_before((now - age).date_naive())?;
    }
    let metrics = crate::metrics::processor_metrics();
    metrics.retention_deleted.get_or_create(&crate::metrics::WhatLabel { what: "events" }).inc_by(retained.events);
    metrics
        .retention_deleted
        .get_or_create(&crate::metrics::WhatLabel { what: "dead_letters" })
        .inc_by(retained.dead_letters);
    metrics
        .retention_deleted
        .get_or_create(&crate::metrics::WhatLabel { what: "warehouse_days" })
        .inc_by(retained.days.len() as u64);
    if retained.events + retained.dead_letters > 0 || !retained.days.is_empty() {
        tracing::info!(events = retained.events, dead_letters = retained.dead_letters, days = ?retained.days, first_kept = cut, "retention deleted");
    }
    if settings.log.is_some() && age_cut > keep_from {
        let slowest = log.consumer_offsets()?.into_iter().min_by_key(|(_, offset)| *offset).map(|(name, _)| name);
        tracing::warn!(
            wanted = age_cut,
            kept_from = keep_from,
            consumer = slowest.as_deref().unwrap_or("snapshot"),
            "the log keeps events past its retention: this consumer (or the state's snapshot) has not taken them yet \
             (a consumer no longer used, such as ClickHouse removed from the configuration, holds the log back)"
        );
    }
    Ok(retained)
}

/// Decisions per transaction: recording new ones waits behind each.
const DECISION_CHUNK: usize = 10_000;

/// Retention of the decision outbox at `now` (`[retention] decisions`): decisions made
/// before `now - decisions` that every pusher has passed. Blocking. Returns how many went.
///
/// # Errors
/// When the outbox fails; what was deleted before stays deleted.
pub fn apply_to_decisions(
    outbox: &crate::actuation::push::Outbox,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
) -> Result<u64, RetentionError> {
    let Some(age) = settings.decisions else { return Ok(0) };
    let before = now - age;
    let mut deleted = 0;
    loop {
        let chunk = outbox.delete_before(before, DECISION_CHUNK)?;
        deleted += chunk;
        if chunk < DECISION_CHUNK as u64 {
            break;
        }
    }
    let metrics = crate::metrics::processor_metrics();
    metrics.retention_deleted.get_or_create(&crate::metrics::WhatLabel { what: "decisions" }).inc_by(deleted);
    if deleted > 0 {
        tracing::info!(decisions = deleted, "retention deleted");
    }
    Ok(deleted)
}

/// Retention in ClickHouse until `shutdown`: every `check_every`, the partitions older than
/// `warehouse` are dropped (ClickHouse 18.16 has no TTL; see
/// [`vigil_warehouse::clickhouse::drop_partitions_before`]). A failure is logged and tried at
/// the next check.
pub async fn clickhouse_loop(
    config: vigil_warehouse::clickhouse::ClickHouseConfig,
    settings: RetentionSettings,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(age) = settings.warehouse else { return };
    loop {
        // As the pipeline's retention: the first pass one interval after the start.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.check_every) => {}
        }
        let first_kept = (Utc::now() - age).date_naive();
        match vigil_warehouse::clickhouse::drop_partitions_before(&config, first_kept).await {
            Ok(dropped) => {
                crate::metrics::processor_metrics()
                    .retention_deleted
                    .get_or_create(&crate::metrics::WhatLabel { what: "clickhouse_partitions" })
                    .inc_by(dropped.len() as u64);
            }
            Err(error) => tracing::warn!(%error, "ClickHouse retention failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_is_the_later_limit_but_never_past_what_is_still_needed() {
        // Age alone.
        assert_eq!(log_cut(0, 100, 1_000, 40, None, 100), 40);
        // Size: 100 events in 2 000 bytes against a 1 000-byte limit keep 45 (90 % of it).
        assert_eq!(log_cut(0, 100, 2_000, 0, Some(1_000), 100), 55);
        assert_eq!(log_cut(0, 100, 2_000, 70, Some(1_000), 100), 70, "the later of the two");
        // Never past the snapshot or a consumer, never before the first offset.
        assert_eq!(log_cut(0, 100, 2_000, 70, Some(1_000), 30), 30);
        assert_eq!(log_cut(50, 100, 100, 10, Some(1_000), 100), 50);
        // Under the size limit, nothing by size.
        assert_eq!(log_cut(0, 100, 900, 0, Some(1_000), 100), 0);
    }

    #[test]
    fn settings_read_durations_sizes_and_off() {
        let settings: RetentionSettings = toml::from_str(
            r#"log = "3d"
log_max_bytes = "512MiB"
warehouse = "off"
check_every = "30s""#,
        )
        .unwrap();
        assert_eq!(settings.log, Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(settings.log_max_bytes, Some(512 << 20));
        assert_eq!(settings.warehouse, None);
        assert_eq!(settings.dead_letters, RetentionSettings::default().dead_letters);
        assert_eq!(settings.check_every, Duration::from_secs(30));
        let bad = toml::from_str::<RetentionSettings>(r#"log_max_bytes = "5 parsecs""#).unwrap_err();
        assert!(bad.to_string().contains("unknown unit"), "{bad}");
        assert!(toml::from_str::<RetentionSettings>(r#"log = "soon""#).is_err());
        assert!(toml::from_str::<RetentionSettings>(r#"check_every = "0s""#).is_err());
        let short = toml::from_str::<RetentionSettings>(r#"decisions = "1d""#).unwrap_err();
        assert!(short.to_string().contains("must be at least log"), "{short}");
        let both: RetentionSettings = toml::from_str("log = \"1d\"\ndecisions = \"2d\"").unwrap();
        assert_eq!(both.decisions, Some(Duration::from_secs(2 * 86_400)));
    }

    #[test]
    fn a_pass_deletes_old_events_dead_letters_and_days_but_keeps_what_the_snapshot_needs() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("log")).unwrap();
        let writer = ParquetWriter::open(&dir.path().join("warehouse")).unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let day = chrono::TimeDelta::days(1);
        let events: Vec<_> = (0..10)
            .map(|i| {
                let at = now - day * (10 - i);
                vigil_schemas::DeliveryEvent::new(
                    format!("e{i}"),
                    vigil_schemas::SourceKind::Kumomta,
                    vigil_schemas::EventKind::Delivered,
                    at,
                    at,
                )
            })
            .collect();
        let mut letter = vigil_schemas::DeadLetter::new("test", None, "bad".into(), b"{");
        letter.received_at = now - day * 40;
        log.append(&vigil_log::AppendBatch {
            events: events.clone(),
            dead_letters: vec![letter],
            ..Default::default()
        })
        .unwrap();
        writer
            .write_batch(0, 10, &events.iter().cloned().enumerate().map(|(i, e)| (i as u64, e)).collect::<Vec<_>>())
            .unwrap();
        let settings = RetentionSettings {
            log: Some(Duration::from_secs(3 * 86_400)),
            warehouse: Some(Duration::from_secs(5 * 86_400)),
            ..RetentionSettings::default()
        };
        // No snapshot yet: the log keeps everything; the warehouse and dead letters do not wait.
        assert_eq!(keep_from(&log, true).unwrap(), 0);
        let pass = apply(&log, &writer, &settings, now, 0).unwrap();
        assert_eq!((pass.events, pass.dead_letters, pass.days.len()), (0, 1, 5));
        // A snapshot at 5, the warehouse at 10: the log may go up to 5, not the 7 its age allows.
        log.commit_offset(SNAPSHOT_CONSUMER, 5).unwrap();
        log.commit_offset("warehouse", 10).unwrap();
        assert_eq!(keep_from(&log, true).unwrap(), 5);
        assert_eq!(apply(&log, &writer, &settings, now, 5).unwrap().events, 5);
        log.commit_offset(SNAPSHOT_CONSUMER, 10).unwrap();
        assert_eq!(apply(&log, &writer, &settings, now, 10).unwrap().events, 2);
        assert_eq!(log.first_offset().unwrap(), 7);
        assert_eq!(log.read(0, 10).unwrap().first().map(|(o, _)| *o), Some(7));
    }
}
