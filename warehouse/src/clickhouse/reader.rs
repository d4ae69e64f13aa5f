//! Answering the API's typed queries from ClickHouse, with the same answers as the embedded
//! [`Reader`](crate::Reader) gives from Parquet.
//!
//! SQL is rendered from the typed query model only: dimensions are an enum whose names are
//! the column names, times are bound as numbers. A summary reads the per-minute rollup when it
//! can answer exactly (its dimensions are the rollup's and the time bounds fall on minutes),
//! else the raw `events` table with FINAL, so copies never count twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Timelike, Utc};
use clickhouse::Client;
use serde::Deserialize;
use vigil_schemas::api::{Dimension, SummaryQuery, SummaryResponse, SummaryRow};

use super::{ClickHouseConfig, ClickHouseError};
use crate::OUTCOMES;

/// The dimensions `events_per_minute` keeps.
const MINUTE_ROLLUP: [Dimension; 4] =
    [Dimension::EgressSource, Dimension::Provider, Dimension::Kind, Dimension::BounceClass];

/// Reads Vigil's ClickHouse database.
#[derive(Clone)]
pub struct ClickHouseReader {
    client: Client,
    url: String,
}

impl std::fmt::Debug for ClickHouseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseReader").field("url", &self.url).finish_non_exhaustive()
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct SummaryRecord {
    dims: Vec<String>,
    delivered: u64,
    deferred: u64,
    bounced: u64,
    expired: u64,
    complaints: u64,
}

fn on_minute(at: Option<DateTime<Utc>>) -> bool {
    at.is_none_or(|t| t.second() == 0 && t.nanosecond() == 0)
}

impl ClickHouseReader {
    /// # Errors
    /// When the database name is invalid.
    pub fn new(config: &ClickHouseConfig) -> Result<Self, ClickHouseError> {
        Ok(Self { client: config.client()?, url: config.url.clone() })
    }

    /// Outcome counts grouped by the query's dimensions, sorted by them.
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached.
    pub async fn summary(&self, query: &SummaryQuery) -> Result<SummaryResponse, ClickHouseError> {
        let rollup =
            query.group_by.iter().all(|d| MINUTE_ROLLUP.contains(d)) && on_minute(query.from) && on_minute(query.to);
        // Rollup rows carry a count; raw rows count one each. Times: the rollup's minute in
        // seconds, the raw event's milliseconds.
        let (source, count, time, scale) = if rollup {
            ("events_per_minute", "events", "toUInt64(minute)", 1_000)
        } else {
            ("events FINAL", "1", "occurred_ms", 1)
        };
        let dims: Vec<&str> = query.group_by.iter().map(|d| d.as_str()).collect();
        let outcomes: Vec<String> =
            OUTCOMES.iter().map(|(name, kind)| format!("sumIf({count}, kind = '{kind}') AS {name}")).collect();
        let kinds: Vec<String> = OUTCOMES.iter().map(|(_, kind)| format!("'{kind}'")).collect();
        let mut sql = format!(
            "SELECT [{}] AS dims, {} FROM {source} WHERE kind IN ({})",
            dims.iter().map(|d| format!("toString({d})")).collect::<Vec<_>>().join(", "),
            outcomes.join(", "),
            kinds.join(", ")
        );
        if query.from.is_some() {
            sql.push_str(&format!(" AND {time} >= ?"));
        }
        if query.to.is_some() {
            sql.push_str(&format!(" AND {time} < ?"));
        }
        if !dims.is_empty() {
            let list = dims.join(", ");
            sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
        }
        let bound = |at: DateTime<Utc>| u64::try_from(at.timestamp_millis()).unwrap_or(0) / scale;
        let mut select = self.client.query(&sql);
        for at in [query.from, query.to].into_iter().flatten() {
            select = select.bind(bound(at));
        }
        let records = select.fetch_all::<SummaryRecord>().await.map_err(ClickHouseError::at(&self.url))?;
        let rows = records
            .into_iter()
            .filter(|r| r.delivered + r.deferred + r.bounced + r.expired + r.complaints > 0)
            .map(|r| SummaryRow {
                // Absent text is '' in ClickHouse and null in the API (and in Parquet).
                dimensions: dims
                    .iter()
                    .zip(r.dims)
                    .map(|(name, value)| ((*name).to_owned(), Some(value).filter(|v| !v.is_empty())))
                    .collect::<BTreeMap<_, _>>(),
                attempts: r.delivered + r.deferred + r.bounced,
                delivered: r.delivered,
                deferred: r.deferred,
                bounced: r.bounced,
                expired: r.expired,
                complaints: r.complaints,
            })
            .collect();
        Ok(SummaryResponse { rows })
    }
}
