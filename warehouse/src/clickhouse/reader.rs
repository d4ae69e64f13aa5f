//! Answering the primitive queries ([`crate::query`]) from ClickHouse, with the same answers
//! as the embedded [`Reader`](crate::Reader) gives from Parquet.
//!
//! SQL is rendered from the typed query only: fields are an enum whose names are the column
//! names, values and times are bound (`?`, escaped by the client). A count reads the per-day,
//! per-hour or per-minute rollup when that answers exactly (every field it touches is kept
//! there, and the time bounds and step fall on the rollup's grain; the hourly one with the
//! partial hours at either end read apart), else the raw `events` table.
//!
//! Counts read `events` without FINAL: the sink inserts each log position once, so the table
//! holds each event once, and the rollups (which count every inserted row) and the raw table
//! then agree by construction; FINAL would only add a merge on every read. Event pages read
//! with FINAL, so a page never lists an event twice whatever was inserted.

use chrono::{DateTime, Utc};
use clickhouse::Client;
use serde::Deserialize;
use vigil_schemas::api::EventRecord;

use super::{ClickHouseConfig, ClickHouseError};
use crate::query::{
    CountQuery, CountRow, EventFilter, Field, HOURLY_FIELDS, SearchQuery, event_record, present, split_for_rollup,
};

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
struct CountRecord {
    bucket: u64,
    values: Vec<String>,
    count: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct EventRecordRow {
    event_id: String,
    occurred_ms: u64,
    kind: String,
    text: Vec<String>,
    smtp_code: Option<u16>,
    enhanced_status: String,
    response_text: String,
    original_sent_ms: Option<u64>,
}

/// Where a count is read from.
struct Source {
    table: &'static str,
    /// The row's time in epoch milliseconds.
    time_ms: &'static str,
    /// How time bounds are written so the table's partitions and key prune them.
    index: TimeIndex,
    count: &'static str,
}

/// The time column a source's partitions and sorting key are on.
enum TimeIndex {
    /// `events`: bounds on `occurred_ms`, and the same bounds on `occurred_at` (whole seconds),
    /// which the partitions and the key are on.
    Raw,
    /// A rollup's `DateTime` column; its bounds fall on the rollup's grain.
    Column(&'static str),
    /// The day rollup (small): bounds on `time_ms`.
    Day,
}

const RAW: Source = Source { table: "events", time_ms: "occurred_ms", index: TimeIndex::Raw, count: "count()" };
const PER_HOUR: Source = Source {
    table: "events_per_hour",
    time_ms: "(toUInt64(hour) * 1000)",
    index: TimeIndex::Column("hour"),
    count: "sum(events)",
};
const PER_MINUTE: Source = Source {
    table: "events_per_minute",
    time_ms: "(toUInt64(minute) * 1000)",
    index: TimeIndex::Column("minute"),
    count: "sum(events)",
};
// A Date converts to its day number since the epoch.
const PER_DAY: Source = Source {
    table: "events_per_day",
    time_ms: "(toUInt64(day) * 86400000)",
    index: TimeIndex::Day,
    count: "sum(events)",
};

/// The fields `events_per_minute` keeps.
const MINUTE_FIELDS: [Field; 4] = [Field::EgressSource, Field::Provider, Field::Kind, Field::BounceClass];
/// The fields `events_per_day` keeps.
const DAY_FIELDS: [Field; 7] = [
    Field::EgressSource,
    Field::Provider,
    Field::Kind,
    Field::BounceClass,
    Field::Tenant,
    Field::Campaign,
    Field::SenderDomain,
];

fn aligned(at: Option<DateTime<Utc>>, grain_ms: i64) -> bool {
    at.is_none_or(|t| t.timestamp_millis().rem_euclid(grain_ms) == 0)
}

/// Where a count over `filter` is read from, when it is read whole: the per-day or per-minute
/// rollup when it holds every field the query touches and its grain divides the bounds and
/// step (the coarsest such), else the raw events.
fn whole_source(query: &CountQuery, filter: &EventFilter) -> &'static Source {
    if filter.external_only || query.weighted {
        // Only the hourly rollup keeps `internal`; only the events their message counts.
        return &RAW;
    }
    let fields: Vec<Field> = query.group_by.iter().copied().chain(filter.fields()).collect();
    let kept = |rollup: &[Field]| fields.iter().all(|f| rollup.contains(f));
    let bounds = |grain_ms: i64| aligned(filter.from, grain_ms) && aligned(filter.to, grain_ms);
    if kept(&DAY_FIELDS) && bounds(86_400_000) && query.step_minutes.is_none_or(|s| s % 1440 == 0) {
        return &PER_DAY;
    }
    if kept(&MINUTE_FIELDS) && bounds(60_000) {
        return &PER_MINUTE;
    }
    &RAW
}

/// The reads a count is made of: the whole query from one source; or, when the hourly rollup
/// keeps every field the query touches and the step is whole hours (and the day rollup does
/// not answer it whole), the whole hours of the range from the hourly rollup and the partial
/// hours at either end from their own best source. A group may then come in several rows;
/// callers sum them.
fn plan(query: &CountQuery) -> Vec<(&'static Source, EventFilter)> {
    let whole = whole_source(query, &query.filter);
    let hourly = query.group_by.iter().copied().chain(query.filter.fields()).all(|f| HOURLY_FIELDS.contains(&f))
        && query.step_minutes.is_none_or(|s| s % 60 == 0)
        && !query.weighted;
    if std::ptr::eq(whole, &PER_DAY) || !hourly {
        return vec![(whole, query.filter.clone())];
    }
    let Some((inner, edges)) = split_for_rollup(&query.filter, 3_600_000) else {
        return vec![(whole, query.filter.clone())];
    };
    let mut plan = vec![(&PER_HOUR, inner)];
    plan.extend(edges.into_iter().map(|edge| (whole_source(query, &edge), edge)));
    plan
}

/// A value bound to a `?` of rendered SQL (the client escapes it).
enum Bound {
    Number(u64),
    Text(String),
}

/// The WHERE clause of a filter over `time_ms`, with `?` for every value, and the values in
/// order.
fn render_filter(filter: &EventFilter, source: &Source) -> (String, Vec<Bound>) {
    let mut conditions = vec!["1".to_owned()];
    let mut values = Vec::new();
    let time_ms = source.time_ms;
    if let Some(from) = filter.from.map(millis) {
        match source.index {
            TimeIndex::Raw => {
                conditions.push("occurred_ms >= ? AND occurred_at >= toDateTime(?)".to_owned());
                values.extend([Bound::Number(from), Bound::Number(from / 1000)]);
            }
            TimeIndex::Column(column) => {
                conditions.push(format!("{column} >= toDateTime(?)"));
                values.push(Bound::Number(from / 1000));
            }
            TimeIndex::Day => {
                conditions.push(format!("{time_ms} >= ?"));
                values.push(Bound::Number(from));
            }
        }
    }
    if let Some(to) = filter.to.map(millis) {
        match source.index {
            TimeIndex::Raw => {
                // `occurred_at` is `occurred_ms` in whole seconds, so `occurred_ms < to` implies this.
                conditions.push("occurred_ms < ? AND occurred_at <= toDateTime(?)".to_owned());
                values.extend([Bound::Number(to), Bound::Number(to.saturating_sub(1) / 1000)]);
            }
            TimeIndex::Column(column) => {
                conditions.push(format!("{column} < toDateTime(?)"));
                values.push(Bound::Number(to / 1000));
            }
            TimeIndex::Day => {
                conditions.push(format!("{time_ms} < ?"));
                values.push(Bound::Number(to));
            }
        }
    }
    if !filter.kinds.is_empty() {
        conditions.push(format!("kind IN ({})", vec!["?"; filter.kinds.len()].join(", ")));
        values.extend(filter.kinds.iter().map(|k| Bound::Text((*k).to_owned())));
    }
    for (field, value) in &filter.equals {
        conditions.push(format!("{} = ?", field.column()));
        values.push(Bound::Text(value.clone()));
    }
    for field in &filter.present {
        conditions.push(format!("{} != ''", field.column()));
    }
    for field in &filter.absent {
        conditions.push(format!("{} = ''", field.column()));
    }
    if filter.external_only {
        conditions.push("internal = 0".to_owned());
    }
    (conditions.join(" AND "), values)
}

fn bind_all(mut query: clickhouse::query::Query, values: Vec<Bound>) -> clickhouse::query::Query {
    for value in values {
        query = match value {
            Bound::Number(n) => query.bind(n),
            Bound::Text(t) => query.bind(t),
        };
    }
    query
}

use super::epoch_millis as millis;

fn time_of(millis: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(millis).ok()?)
}

impl ClickHouseReader {
    /// # Errors
    /// When the database name is invalid.
    pub fn new(config: &ClickHouseConfig) -> Result<Self, ClickHouseError> {
        Ok(Self { client: config.client()?, url: config.url.clone() })
    }

    /// Event counts by the query's groups.
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached.
    pub async fn counts(&self, query: &CountQuery) -> Result<Vec<CountRow>, ClickHouseError> {
        let mut rows = Vec::new();
        for (source, filter) in plan(query) {
            rows.extend(self.counts_from(source, &filter, query).await?);
        }
        Ok(rows)
    }

    async fn counts_from(
        &self,
        source: &Source,
        filter: &EventFilter,
        query: &CountQuery,
    ) -> Result<Vec<CountRow>, ClickHouseError> {
        let (condition, values) = render_filter(filter, source);
        let fields: Vec<&str> = query.group_by.iter().map(|f| f.column()).collect();
        let bucket = match query.step_minutes {
            Some(step) => {
                let width = u64::from(step) * 60_000;
                format!("intDiv({}, {width}) * {width}", source.time_ms)
            }
            None => "toUInt64(0)".to_owned(),
        };
        let mut groups = vec!["bucket"];
        groups.extend(&fields);
        let sql = format!(
            "SELECT {bucket} AS bucket, [{}] AS values, {} AS count FROM {} WHERE {condition} GROUP BY {}",
            fields.iter().map(|f| format!("toString({f})")).collect::<Vec<_>>().join(", "),
            if query.weighted { "sum(ifNull(message_count, 1))" } else { source.count },
            source.table,
            groups.join(", "),
        );
        let select = bind_all(self.client.query(&sql), values);
        let records =
            within_deadline(select.fetch_all::<CountRecord>()).await.map_err(ClickHouseError::at(&self.url))?;
        Ok(records
            .into_iter()
            .filter(|r| r.count > 0)
            .map(|r| CountRow {
                bucket: query.step_minutes.and_then(|_| time_of(r.bucket)),
                values: r.values.iter().map(|v| present(Some(v))).collect(),
                count: r.count,
            })
            .collect())
    }

    /// A page of matching events, newest first.
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached.
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<EventRecord>, ClickHouseError> {
        let (mut condition, mut values) = render_filter(&query.filter, &RAW);
        if let Some((at, event_id)) = &query.before {
            condition.push_str(" AND (occurred_ms < ? OR (occurred_ms = ? AND event_id < ?))");
            values.extend([Bound::Number(millis(*at)), Bound::Number(millis(*at)), Bound::Text(event_id.clone())]);
        }
        let sql = format!(
            "SELECT event_id, occurred_ms, kind, [{}] AS text, smtp_code, enhanced_status, response_text, \
             original_sent_ms \
             FROM events FINAL WHERE {condition} ORDER BY occurred_ms DESC, event_id DESC LIMIT {}",
            EventRecord::TEXT_COLUMNS.join(", "),
            query.limit,
        );
        let select = bind_all(self.client.query(&sql), values);
        let rows =
            within_deadline(select.fetch_all::<EventRecordRow>()).await.map_err(ClickHouseError::at(&self.url))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut record = event_record(
                    r.event_id,
                    time_of(r.occurred_ms).unwrap_or_default(),
                    r.kind,
                    std::array::from_fn(|k| present(r.text.get(k).map(String::as_str))),
                    r.smtp_code,
                    present(Some(&r.enhanced_status)),
                    present(Some(&r.response_text)),
                );
                record.original_sent_at = r.original_sent_ms.and_then(time_of);
                record
            })
            .collect())
    }
}

/// How long a query may take before ClickHouse counts as unavailable: under the API's own
/// request timeout, so the client hears which dependency was slow and when to retry.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `query`, or `TimedOut` once [`QUERY_TIMEOUT`] has passed (the client sets no read timeout
/// of its own on queries).
async fn within_deadline<T>(
    query: impl std::future::Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, clickhouse::error::Error> {
    tokio::time::timeout(QUERY_TIMEOUT, query).await.unwrap_or(Err(clickhouse::error::Error::TimedOut))
}
