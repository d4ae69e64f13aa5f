//! Endpoints answered from the processor's derived state: reputation, timeseries of the last
//! 24 h, suppressions, and the state's digest.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_processor::view::{
    HORIZON_MINUTES, LabelKind, MIN_ATTEMPTS, Metric, Rates, Scope, Score, Suppression, View, Window, WindowRow, score,
};
use vigil_schemas::api::StateResponse;
use vigil_warehouse::Store;

use crate::ApiError;
use crate::analytics::timeseries::TimeseriesQuery;
use crate::analytics::{DimensionFilters, Range, page_size};
use crate::routes::parse_time;

const SCOPES_HELP: &str =
    "egress_source, egress_pool, provider, egress_source,provider, sending_domain, tenant or campaign";

fn parse_scope(name: &str, text: &str) -> Result<Scope, ApiError> {
    Scope::parse(text).ok_or_else(|| ApiError::BadRequest(format!("unknown {name} `{text}`; use {SCOPES_HELP}")))
}

/// What the live endpoints read: the derived state, and the warehouse for ranged reputation
/// and time series (`from=`), when the server has one.
#[derive(Debug, Clone)]
pub struct LiveState {
    pub view: View,
    pub store: Option<Store>,
}

impl LiveState {
    fn store(&self) -> Result<&Store, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::BadRequest(
                "this server has no warehouse to answer `from`: configure [clickhouse], or leave out `from` for the \
                 live window"
                    .into(),
            )
        })
    }
}

/// The endpoints answered from the derived state: what `vigil run` and `vigil process` both
/// serve. With a store, `reputation` and `timeseries` also answer ranges (`from=`) from it.
pub fn router(view: View, store: Option<Store>) -> Router {
    let live = LiveState { view: view.clone(), store };
    Router::new()
        .route("/api/v1/reputation", get(reputation))
        .route("/api/v1/timeseries", get(timeseries))
        .with_state(live)
        .merge(
            Router::new()
                .route("/api/v1/suppressions", get(suppressions))
                .route("/api/v1/state", get(derived_state))
                .route("/api/v1/openapi.json", get(crate::openapi::handler))
                .with_state(view),
        )
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ReputationParams {
    /// egress_source, egress_pool, provider, egress_source,provider (default), sending_domain,
    /// tenant or campaign.
    scope: Option<String>,
    /// The live window: 5m, 1h (default) or 24h. Not with `from`.
    window: Option<String>,
    /// End of the live window (RFC 3339); default now.
    #[schemars(extend("format" = "date-time"))]
    as_of: Option<String>,
    /// Start of a range (RFC 3339, inclusive): answer from the analytics store instead.
    #[schemars(extend("format" = "date-time"))]
    from: Option<String>,
    /// End of the range (RFC 3339, exclusive); default now.
    #[schemars(extend("format" = "date-time"))]
    to: Option<String>,
}

/// One scope's reputation over the window: the scope's values (text) and every count (a
/// number) by name, beside the fields below.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(extend("additionalProperties" = {"type": ["string", "integer"]}))]
pub struct ReputationRow {
    #[serde(flatten)]
    key: BTreeMap<&'static str, String>,
    attempts: u64,
    #[serde(flatten)]
    counts: BTreeMap<&'static str, u64>,
    bounced_by_class: BTreeMap<String, u64>,
    deferred_by_class: BTreeMap<String, u64>,
    signals_by_name: BTreeMap<String, u64>,
    rates: Rates,
    /// `null` under the minimum volume.
    score: Option<Score>,
}

impl ReputationRow {
    pub(crate) fn of(row: WindowRow) -> Self {
        let rates = Rates::of(&row.totals);
        let mut by_kind: [BTreeMap<String, u64>; 3] = Default::default();
        for ((kind, name), count) in row.labels {
            let slot = match kind {
                LabelKind::Bounced => 0,
                LabelKind::Deferred => 1,
                LabelKind::Signal => 2,
            };
            by_kind[slot].insert(name, count);
        }
        let [bounced_by_class, deferred_by_class, signals_by_name] = by_kind;
        Self {
            key: row.key.values.into_iter().collect(),
            attempts: row.totals.attempts(),
            counts: Metric::ALL.iter().map(|&m| (m.as_str(), row.totals.get(m))).collect(),
            bounced_by_class,
            deferred_by_class,
            signals_by_name,
            score: score(&row.totals, &rates),
            rates,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReputationResponse {
    scope: &'static str,
    window: String,
    as_of: DateTime<Utc>,
    /// Attempts under which a row has no score.
    min_attempts: u64,
    rows: Vec<ReputationRow>,
}

async fn reputation(
    State(live): State<LiveState>,
    Query(params): Query<ReputationParams>,
    Query(filters): Query<DimensionFilters>,
) -> Result<Response, ApiError> {
    let scope = parse_scope("scope", params.scope.as_deref().unwrap_or("egress_source,provider"))?;
    if params.from.is_some() {
        if params.window.is_some() || params.as_of.is_some() {
            return Err(ApiError::BadRequest(
                "give either `from` (and `to`) or `window` (and `as_of`), not both".into(),
            ));
        }
        let range = Range::parse(params.from.as_deref(), params.to.as_deref())?;
        let answer = crate::analytics::reputation::reputation(live.store()?, scope, range, &filters.parse()?).await?;
        return Ok(Json(answer).into_response());
    }
    if params.to.is_some() || !filters.parse()?.is_empty() {
        return Err(ApiError::BadRequest("`to` and dimension filters need `from`: they ask the warehouse".into()));
    }
    let window_text = params.window.unwrap_or_else(|| "1h".into());
    let window = Window::parse(&window_text)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown window `{window_text}`; use 5m, 1h or 24h")))?;
    let as_of = parse_time("as_of", params.as_of.as_deref())?.unwrap_or_else(Utc::now);
    let rows = live.view.reputation(scope, window.minutes(), as_of)?;
    let rows = rows.into_iter().map(ReputationRow::of).collect();
    let answer =
        ReputationResponse { scope: scope.as_str(), window: window_text, as_of, min_attempts: MIN_ATTEMPTS, rows };
    Ok(Json(answer).into_response())
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct TimeseriesParams {
    /// attempts (default) or one count of reputation (delivered, bounced, hard_bounces, ...).
    metric: Option<String>,
    /// A reputation scope (default provider).
    group_by: Option<String>,
    /// Step: minutes, hours or days such as 5m (default), 1h, 1d.
    step: Option<String>,
    /// The live span, at most 24h (default 1h). Not with `from`.
    window: Option<String>,
    /// Start of a range (RFC 3339, inclusive): answer from the analytics store instead.
    #[schemars(extend("format" = "date-time"))]
    from: Option<String>,
    /// End of the span or range (RFC 3339); default now.
    #[schemars(extend("format" = "date-time"))]
    to: Option<String>,
    /// Most series (default 100), first by key.
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Point {
    pub at: DateTime<Utc>,
    pub value: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Series {
    #[serde(flatten)]
    pub key: BTreeMap<&'static str, String>,
    pub total: u64,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TimeseriesResponse {
    pub metric: String,
    pub group_by: &'static str,
    pub step_seconds: u32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// More series matched than `limit`; the first `limit` by key are returned.
    pub truncated: bool,
    pub series: Vec<Series>,
}

/// `30s` is refused: buckets are minutes. Accepts `Nm`, `Nh`, `Nd`.
fn parse_minutes(name: &str, text: &str) -> Result<u32, ApiError> {
    let bad =
        || ApiError::BadRequest(format!("`{name}` must be minutes, hours or days such as 5m, 1h or 1d, not `{text}`"));
    // The unit is the last character, which need not be one byte (`%C2%80` is a client's right).
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: u32 = text[..text.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let minutes = match unit {
        'm' => n,
        'h' => n.checked_mul(60).ok_or_else(bad)?,
        'd' => n.checked_mul(1440).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if minutes == 0 {
        return Err(bad());
    }
    Ok(minutes)
}

const MAX_SERIES: usize = 1000;
const MAX_POINTS: u32 = 1440;

async fn timeseries(
    State(live): State<LiveState>,
    Query(params): Query<TimeseriesParams>,
    Query(filters): Query<DimensionFilters>,
) -> Result<Json<TimeseriesResponse>, ApiError> {
    let metric_text = params.metric.unwrap_or_else(|| "attempts".into());
    // `None` is `attempts`.
    let metric = if metric_text == "attempts" {
        None
    } else {
        Some(Metric::parse(&metric_text).ok_or_else(|| {
            let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
            ApiError::BadRequest(format!("unknown metric `{metric_text}`; use attempts, {}", names.join(", ")))
        })?)
    };
    let scope = parse_scope("group_by", params.group_by.as_deref().unwrap_or("provider"))?;
    let step = parse_minutes("step", params.step.as_deref().unwrap_or("5m"))?;
    let limit = page_size(params.limit, 100, MAX_SERIES)?;
    if params.from.is_some() {
        if params.window.is_some() {
            return Err(ApiError::BadRequest("give either `from` (and `to`) or `window`, not both".into()));
        }
        let query = TimeseriesQuery {
            metric,
            scope,
            step_minutes: step,
            range: Range::parse(params.from.as_deref(), params.to.as_deref())?,
            filters: filters.parse()?,
            limit,
        };
        return Ok(Json(crate::analytics::timeseries::timeseries(live.store()?, &query).await?));
    }
    if !filters.parse()?.is_empty() {
        return Err(ApiError::BadRequest("dimension filters need `from`: they ask the warehouse".into()));
    }
    let metrics = metric.map_or_else(|| vec![Metric::Delivered, Metric::Deferred, Metric::Bounced], |m| vec![m]);
    let span = parse_minutes("window", params.window.as_deref().unwrap_or("1h"))?;
    if span > HORIZON_MINUTES {
        return Err(ApiError::BadRequest("`window` reaches back at most 24h; older data is in /api/v1/summary".into()));
    }
    if step > span || span / step > MAX_POINTS {
        return Err(ApiError::BadRequest(format!(
            "`step` must be at most `window` and give at most {MAX_POINTS} points"
        )));
    }
    let to = parse_time("to", params.to.as_deref())?.unwrap_or_else(Utc::now);
    let found = live.view.timeseries(scope, &metrics, step, span, to)?;
    let (first, last, found) = (found.first_minute, found.last_minute, found.series);
    let truncated = found.len() > limit;
    let minute_time = |m: u32| DateTime::from_timestamp(i64::from(m) * 60, 0).unwrap_or_default();
    let series = found
        .into_iter()
        .take(limit)
        .map(|(key, points)| {
            // Dense points, zeros included: a chart should not have to guess what a gap means.
            let mut dense: Vec<Point> =
                (first..=last).step_by(step as usize).map(|m| Point { at: minute_time(m), value: 0 }).collect();
            for (minute, value) in points {
                if let Some(point) = dense.get_mut(((minute.saturating_sub(first)) / step) as usize) {
                    point.value += value;
                }
            }
            Series { key: key.values.into_iter().collect(), total: dense.iter().map(|p| p.value).sum(), points: dense }
        })
        .collect();
    Ok(Json(TimeseriesResponse {
        metric: metric_text,
        group_by: scope.as_str(),
        step_seconds: step * 60,
        from: minute_time(first),
        to,
        truncated,
        series,
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct SuppressionParams {
    /// One recipient's suppression.
    recipient: Option<String>,
    /// Only recipients of this domain.
    domain: Option<String>,
    /// The previous page's `next`.
    after: Option<String>,
    /// Rows per page (default 1000).
    #[schemars(range(min = 1, max = 100000))]
    limit: Option<usize>,
    /// json (default), csv or listmonk.
    format: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SuppressionPage {
    total: usize,
    rows: Vec<Suppression>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

const MAX_SUPPRESSION_PAGE: usize = 100_000;

/// Lookup by recipient, listing by domain with a cursor, and CSV export: `format=csv` (one
/// column per field; Mautic maps columns on import) or `format=listmonk` (listmonk's
/// `email,name,attributes` import header, the reason in the attributes).
async fn suppressions(State(view): State<View>, Query(params): Query<SuppressionParams>) -> Result<Response, ApiError> {
    let limit = page_size(params.limit, 1000, MAX_SUPPRESSION_PAGE)?;
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "listmonk") {
        return Err(ApiError::BadRequest(format!("unknown format `{format}`; use json, csv or listmonk")));
    }
    let page = match params.recipient.as_deref() {
        Some(recipient) => view.suppression(recipient)?,
        None => view.suppressions(params.domain.as_deref(), params.after.as_deref(), limit)?,
    };
    let (total, rows) = (page.total, page.rows);
    match format {
        "json" => {
            let next = (rows.len() == limit).then(|| rows[rows.len() - 1].recipient.clone());
            Ok(Json(SuppressionPage { total, rows, next }).into_response())
        }
        csv_format => {
            let body = to_csv(&rows, csv_format == "listmonk").map_err(ApiError::internal)?;
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
        }
    }
}

fn to_csv(rows: &[Suppression], listmonk: bool) -> Result<String, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    if listmonk {
        out.write_record(["email", "name", "attributes"])?;
    } else {
        out.write_record(["email", "reason", "class", "source", "first_seen", "last_seen", "event_id"])?;
    }
    for row in rows {
        if listmonk {
            let attributes = serde_json::json!({
                "vigil_suppressed": row.reason.as_str(),
                "vigil_class": row.class,
                "vigil_first_seen": row.first_seen,
            });
            out.write_record([row.recipient.as_str(), "", &attributes.to_string()])?;
        } else {
            out.write_record([
                row.recipient.as_str(),
                row.reason.as_str(),
                row.class.as_deref().unwrap_or(""),
                row.source.as_str(),
                &row.first_seen.to_rfc3339(),
                &row.last_seen.to_rfc3339(),
                &row.event_id,
            ])?;
        }
    }
    let bytes = out.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8"))
}

async fn derived_state(State(view): State<View>) -> Result<Json<StateResponse>, ApiError> {
    Ok(Json(view.summary()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_anything_else_is_a_clear_400() {
        assert_eq!(parse_minutes("step", "5m").unwrap(), 5);
        assert_eq!(parse_minutes("step", "2h").unwrap(), 120);
        assert_eq!(parse_minutes("step", "1d").unwrap(), 1440);
        // Found by the fuzzer: a multi-byte last character once panicked the handler.
        for bad in ["", "m", "0m", "5s", "\u{80}", "5\u{80}", "99999999999d", "-5m"] {
            assert!(parse_minutes("step", bad).unwrap_err().to_string().contains("`step`"), "{bad:?}");
        }
    }
}
