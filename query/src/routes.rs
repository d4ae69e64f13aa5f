//! One handler per endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use vigil_log::EventLog;
use vigil_processor::view::View;
use vigil_schemas::api::deadletters::{DeadLetterParams, DeadLetterResponse, DeadLetterRow};
use vigil_warehouse::Store;

use crate::ApiError;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The warehouse: Parquet files, or ClickHouse.
    pub store: Store,
    /// The processor's read model: reputation windows, suppressions.
    pub view: View,
    pub log: EventLog,
    /// Set once the processor has recovered and rebuilt its state.
    pub ready: Arc<AtomicBool>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let live = crate::live::router(state.view.clone(), Some(state.store.clone()));
    let analytics = crate::analytics::router(state.store.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/deadletters", get(dead_letters))
        .with_state(state)
        .merge(live)
        .merge(analytics)
}

async fn healthz(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "starting" })))
    }
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

const MAX_DEAD_LETTER_PAGE: usize = 1000;

async fn dead_letters(
    State(state): State<ApiState>,
    Query(params): Query<DeadLetterParams>,
) -> Result<Json<DeadLetterResponse>, ApiError> {
    let limit = crate::analytics::page_size(params.limit, 100, MAX_DEAD_LETTER_PAGE)?;
    let log = state.log.clone();
    let from = params.from.unwrap_or(0);
    let (total, rows) = tokio::task::spawn_blocking(move || {
        Ok::<_, vigil_log::LogError>((log.dead_letter_count()?, log.dead_letters(from, limit)?))
    })
    .await??;
    let rows = rows.into_iter().map(|(seq, letter)| DeadLetterRow { seq, letter }).collect();
    Ok(Json(DeadLetterResponse { total, rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_clear_errors() {
        assert!(parse_time("from", Some("yesterday")).unwrap_err().to_string().contains("RFC 3339"));
        assert_eq!(parse_time("from", Some("")).unwrap(), None);
    }
}
