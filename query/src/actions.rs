//! What the rules decided, for people and tools: `/api/v1/decisions`, `/api/v1/throttles`,
//! `/api/v1/warmup`, and `POST /api/v1/actions/lift`, an operator taking an action back.
//! Guarded as the TSA surface is ([`crate::tsa`]), and lifting needs the operator role (the
//! `/api/v1` guard, [`crate::auth`]); kumod's own endpoints are there.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use vigil_processor::view::{Decision, Status};
use vigil_schemas::OperatorAction;

use crate::ApiError;
use crate::tsa::{TsaState, in_force, require_token};

/// The decisions API.
pub fn router(state: TsaState) -> Router {
    let routes = Router::new()
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/throttles", get(throttles))
        .route("/api/v1/warmup", get(warmup));
    let routes = if state.operator_log.is_some() { routes.route(LIFT_PATH, post(lift)) } else { routes };
    routes.route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token)).with_state(state)
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

/// Where an operator lifts an action.
pub const LIFT_PATH: &str = "/api/v1/actions/lift";

/// What a lift request was turned into.
#[derive(Debug, Serialize)]
struct LiftAccepted {
    /// The `action_lifted` event written to the log; the fold ends the action when it reaches
    /// it (a `lifted` decision in `/api/v1/decisions`, pushed as a rule's lift is).
    event_id: String,
    /// The action as it stood when the request was taken.
    action: Decision,
}

/// Writes the operator's lift into the log of record (so a replay lifts it again), for an
/// action in force now. Answers 202: the action ends when the fold reaches the event.
async fn lift(
    State(state): State<TsaState>,
    body: Result<Json<OperatorAction>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<LiftAccepted>), ApiError> {
    let Json(mut request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    for field in [&mut request.action_key, &mut request.author, &mut request.reason] {
        *field = field.trim().to_owned();
    }
    if request.action_key.is_empty() || request.author.is_empty() || request.reason.is_empty() {
        return Err(ApiError::BadRequest(
            "`action_key`, `author` and `reason` say what, who and why; all are required".into(),
        ));
    }
    let Some(action) = in_force(&state)?.into_iter().find(|d| d.action_key == request.action_key) else {
        return Err(ApiError::NotFound(format!("no action in force under `{}`", request.action_key)));
    };
    let Some(log) = state.operator_log.clone() else {
        return Err(ApiError::NotFound("lifting is served by `vigil run`".into()));
    };
    let event = vigil_processor::view::operator_lift(&action, request, Utc::now());
    let event_id = event.event_id.clone();
    let batch = vigil_log::AppendBatch { events: vec![event], ..vigil_log::AppendBatch::default() };
    log.append_async(&batch).await?;
    tracing::info!(%event_id, action_key = %action.action_key, "an operator lifted an action");
    Ok((StatusCode::ACCEPTED, Json(LiftAccepted { event_id, action })))
}
