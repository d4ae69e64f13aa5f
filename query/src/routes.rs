//! One handler per endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vigil_log::EventLog;
use vigil_processor::SharedState;
use vigil_schemas::DeadLetter;
use vigil_schemas::api::{Dimension, SummaryQuery, SummaryResponse};
use vigil_warehouse::Reader;

use crate::ApiError;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub reader: Reader,
    /// The processor's derived state: reputation windows, suppressions.
    pub state: SharedState,
    pub log: EventLog,
    /// Set once the processor has recovered and rebuilt its state.
    pub ready: Arc<AtomicBool>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let live = crate::live::router(state.state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/deadletters", get(dead_letters))
        .with_state(state)
        .merge(live)
}

async fn healthz(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "starting" })))
    }
}

#[derive(Debug, Deserialize)]
struct SummaryParams {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub(crate) fn parse_time(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|e| {
                ApiError::BadRequest(format!("`{name}` must be an RFC 3339 time such as 2026-11-25T00:00:00Z: {e}"))
            })
        })
        .transpose()
}

/// Parses `group_by`: a comma list of distinct dimension names.
fn parse_dimensions(text: Option<&str>) -> Result<Vec<Dimension>, ApiError> {
    let mut dims = Vec::new();
    for name in text.unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let dim = Dimension::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
            ApiError::BadRequest(format!("unknown dimension `{name}` in group_by; use any of {}", known.join(", ")))
        })?;
        if dims.contains(&dim) {
            return Err(ApiError::BadRequest(format!("dimension `{name}` appears twice in group_by")));
        }
        dims.push(dim);
    }
    Ok(dims)
}

async fn summary(
    State(state): State<ApiState>,
    Query(params): Query<SummaryParams>,
) -> Result<Json<SummaryResponse>, ApiError> {
    let query = SummaryQuery {
        group_by: parse_dimensions(params.group_by.as_deref())?,
        from: parse_time("from", params.from.as_deref())?,
        to: parse_time("to", params.to.as_deref())?,
    };
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from > to
    {
        return Err(ApiError::BadRequest(format!("`from` ({from}) is after `to` ({to})")));
    }
    Ok(Json(state.reader.summary(&query).await?))
}

#[derive(Debug, Deserialize)]
struct DeadLetterParams {
    from: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct DeadLetterRow {
    seq: u64,
    #[serde(flatten)]
    letter: DeadLetter,
}

#[derive(Debug, Serialize)]
struct DeadLetterResponse {
    total: u64,
    rows: Vec<DeadLetterRow>,
}

const MAX_DEAD_LETTER_PAGE: usize = 1000;

async fn dead_letters(
    State(state): State<ApiState>,
    Query(params): Query<DeadLetterParams>,
) -> Result<Json<DeadLetterResponse>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_DEAD_LETTER_PAGE {
        return Err(ApiError::BadRequest(format!("`limit` must be 1 to {MAX_DEAD_LETTER_PAGE}")));
    }
    let log = state.log.clone();
    let from = params.from.unwrap_or(0);
    let (total, rows) = tokio::task::spawn_blocking(move || {
        Ok::<_, vigil_log::LogError>((log.dead_letter_count()?, log.dead_letters(from, limit)?))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let rows = rows.into_iter().map(|(seq, letter)| DeadLetterRow { seq, letter }).collect();
    Ok(Json(DeadLetterResponse { total, rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_parse_with_clear_errors() {
        assert_eq!(
            parse_dimensions(Some("egress_source, provider")).unwrap(),
            vec![Dimension::EgressSource, Dimension::Provider]
        );
        assert!(parse_dimensions(None).unwrap().is_empty());
        let err = parse_dimensions(Some("provider,ip")).unwrap_err().to_string();
        assert!(err.contains("`ip`") && err.contains("recipient_domain"), "{err}");
        assert!(parse_dimensions(Some("kind,kind")).unwrap_err().to_string().contains("twice"));
        assert!(parse_time("from", Some("yesterday")).unwrap_err().to_string().contains("RFC 3339"));
    }
}
