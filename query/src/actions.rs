//! What the rules decided, for people and tools: `/api/v1/decisions`, `/api/v1/throttles`,
//! `/api/v1/warmup`. Guarded as the TSA surface is ([`crate::tsa`]); kumod's own endpoints are
//! there.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use vigil_processor::view::Status;

use crate::ApiError;
use crate::tsa::{TsaState, in_force, require_token};

/// The decisions API.
pub fn router(state: TsaState) -> Router {
    Router::new()
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/throttles", get(throttles))
        .route("/api/v1/warmup", get(warmup))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionsParams {
    limit: Option<usize>,
    status: Option<String>,
    rule: Option<String>,
    egress_source: Option<String>,
    provider: Option<String>,
    domain: Option<String>,
}

const MAX_DECISIONS: usize = 1000;

async fn decisions(
    State(state): State<TsaState>,
    params: Result<Query<DecisionsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_DECISIONS {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_DECISIONS}")));
    }
    let status = match params.status.as_deref() {
        None => None,
        Some(text) => {
            Some(serde_json::from_value::<Status>(serde_json::Value::String(text.to_owned())).map_err(|_| {
                ApiError::BadRequest(format!("unknown status `{text}`; use applied, shadow, lifted or expired"))
            })?)
        }
    };
    let outbox = state.outbox.clone();
    let (found, mut failures) = tokio::task::spawn_blocking(move || {
        let found = outbox.newest(limit, |d| {
            status.is_none_or(|s| d.status == s)
                && params.rule.as_deref().is_none_or(|r| d.rule == r)
                && params.egress_source.as_deref().is_none_or(|s| d.target.egress_source.as_deref() == Some(s))
                && params.provider.as_deref().is_none_or(|p| d.target.provider.as_deref() == Some(p))
                && params.domain.as_deref().is_none_or(|p| d.target.domain.as_deref() == Some(p))
        })?;
        let failures = outbox.failures(found.iter().map(|d| d.decision_id.as_str()))?;
        Ok::<_, vigil_processor::view::OutboxError>((found, failures))
    })
    .await?
    .map_err(ApiError::internal)?;
    // Each decision as recorded, with the deliveries given up (a target's permanent refusal,
    // with its answer) when there are any.
    let decisions: Vec<serde_json::Value> = found
        .into_iter()
        .map(|decision| {
            let failed = failures.remove(&decision.decision_id);
            let mut json = serde_json::to_value(decision).unwrap_or_default();
            if let (Some(failed), Some(object)) = (failed, json.as_object_mut()) {
                object.insert("failed_deliveries".into(), serde_json::to_value(failed).unwrap_or_default());
            }
            json
        })
        .collect();
    Ok(Json(serde_json::json!({ "decisions": decisions })))
}

async fn throttles(State(state): State<TsaState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({ "as_of": Utc::now(), "active": in_force(&state)? })))
}

async fn warmup(State(state): State<TsaState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({ "plans": state.view.warmup()? })))
}
