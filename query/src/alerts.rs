//! Alerts and silences: `GET /api/v1/alerts`, `GET/POST /api/v1/silences`,
//! `DELETE /api/v1/silences/{id}`. Changing silences needs the operator role (the `/api/v1`
//! guard, [`crate::auth`]).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_processor::view::{Alert, AlertNotice, AlertOutbox, AlertState, Silence, View};

use crate::ApiError;

/// What the alert endpoints read: the derived state, and the alert outbox where silences live
/// (absent on roles that deliver no alerts: silences then answer 404).
#[derive(Debug, Clone)]
pub struct AlertsState {
    pub view: View,
    pub outbox: Option<AlertOutbox>,
}

/// The alert and silence routes.
pub fn router(state: AlertsState) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/silences", get(silences).post(add_silence))
        .route("/api/v1/silences/{id}", delete(delete_silence))
        .with_state(state)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertsParams {
    /// `pending`, `firing` or `resolved` (the recent resolves); all alerts now when absent.
    state: Option<String>,
}

/// An alert with the silences muting it now.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct AlertView {
    #[serde(flatten)]
    alert: Alert,
    /// Ids of the silences in force that match its labels: its notifications are held.
    silenced_by: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct AlertsResponse {
    alerts: Vec<AlertView>,
    /// The recent firings and resolves, newest first (with `state=resolved`, only resolves).
    history: Vec<AlertNotice>,
}

async fn silences_now(outbox: Option<&AlertOutbox>) -> Result<Vec<Silence>, ApiError> {
    let Some(outbox) = outbox.cloned() else { return Ok(Vec::new()) };
    tokio::task::spawn_blocking(move || outbox.silences()).await?.map_err(ApiError::internal)
}

async fn alerts(
    State(state): State<AlertsState>,
    params: Result<Query<AlertsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlertsResponse>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let wanted = match params.state.as_deref() {
        None | Some("") => None,
        Some("pending") => Some(AlertState::Pending),
        Some("firing") => Some(AlertState::Firing),
        Some("resolved") => Some(AlertState::Resolved),
        Some(other) => {
            return Err(ApiError::BadRequest(format!("unknown state `{other}`; use pending, firing or resolved")));
        }
    };
    let (now_alerts, history) = state.view.alerts()?;
    let silences = silences_now(state.outbox.as_ref()).await?;
    let now = Utc::now();
    let alerts = now_alerts
        .into_iter()
        .filter(|a| wanted.is_none_or(|w| a.state == w))
        .map(|alert| {
            let silenced_by = silences.iter().filter(|s| s.mutes(&alert.labels, now)).map(|s| s.id.clone()).collect();
            AlertView { alert, silenced_by }
        })
        .collect();
    let history = history.into_iter().filter(|n| wanted.is_none_or(|w| n.alert.state == w)).collect();
    Ok(Json(AlertsResponse { alerts, history }))
}

fn outbox(state: &AlertsState) -> Result<AlertOutbox, ApiError> {
    state
        .outbox
        .clone()
        .ok_or_else(|| ApiError::NotFound("this role delivers no alerts, so it keeps no silences".into()))
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SilencesResponse {
    silences: Vec<SilenceView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SilenceView {
    #[serde(flatten)]
    silence: Silence,
    /// `active`, `pending` (starts later) or `expired`.
    status: &'static str,
}

async fn silences(State(state): State<AlertsState>) -> Result<Json<SilencesResponse>, ApiError> {
    let now = Utc::now();
    let mut silences: Vec<SilenceView> = silences_now(Some(&outbox(&state)?))
        .await?
        .into_iter()
        .map(|silence| {
            let status = if now < silence.starts_at {
                "pending"
            } else if now < silence.ends_at {
                "active"
            } else {
                "expired"
            };
            SilenceView { silence, status }
        })
        .collect();
    silences.sort_by_key(|s| std::cmp::Reverse(s.silence.created_at));
    Ok(Json(SilencesResponse { silences }))
}

/// A new silence. `matchers` must not be empty: a silence of everything is a mistake.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSilence {
    matchers: std::collections::BTreeMap<String, String>,
    /// Now when absent.
    starts_at: Option<DateTime<Utc>>,
    ends_at: DateTime<Utc>,
    comment: String,
    author: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SilenceCreated {
    id: String,
}

async fn add_silence(
    State(state): State<AlertsState>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<SilenceCreated>), ApiError> {
    let Json(new) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let now = Utc::now();
    let starts_at = new.starts_at.unwrap_or(now);
    if new.matchers.is_empty() {
        return Err(ApiError::BadRequest(
            "`matchers` must name at least one label (alertname, egress_source, ...)".into(),
        ));
    }
    if new.ends_at <= starts_at || new.ends_at <= now {
        return Err(ApiError::BadRequest("`ends_at` must be after `starts_at` and in the future".into()));
    }
    if new.comment.trim().is_empty() || new.author.trim().is_empty() {
        return Err(ApiError::BadRequest("`comment` and `author` say why and who; both are required".into()));
    }
    let id = Silence::new_id(now, &new.matchers, &new.author, &new.comment);
    let silence = Silence {
        id: id.clone(),
        matchers: new.matchers,
        starts_at,
        ends_at: new.ends_at,
        comment: new.comment,
        author: new.author,
        created_at: now,
    };
    let outbox = outbox(&state)?;
    tokio::task::spawn_blocking(move || outbox.put_silence(&silence, now)).await?.map_err(|e| match e {
        vigil_processor::view::AlertOutboxError::TooManySilences => ApiError::BadRequest(e.to_string()),
        other => ApiError::internal(other),
    })?;
    Ok((StatusCode::CREATED, Json(SilenceCreated { id })))
}

async fn delete_silence(State(state): State<AlertsState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let outbox = outbox(&state)?;
    let removed = tokio::task::spawn_blocking(move || outbox.delete_silence(&id)).await?.map_err(ApiError::internal)?;
    if removed { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::NotFound("no silence with that id".into())) }
}
