//! One person's data, on `vigil run`:
//! - `POST /api/v1/suppressions/remove` (operator): `{"recipient", "author", "reason"}` takes a
//!   recipient off the suppression list. Written to the log as a `suppression_removed` event,
//!   which is the audit record (who, why, when: `/api/v1/events?kind=suppression_removed`)
//!   and which the fold applies, so a replay removes it again. Answers 202; a later hard
//!   bounce, complaint or unsubscribe suppresses the recipient again.
//! - `DELETE /api/v1/admin/recipients/{address}` (admin): erases the person from the log, the
//!   warehouse, the derived state and ClickHouse ([`vigil_processor::view::Eraser`]) and
//!   answers what was rewritten where. It waits for the erasure; one that outlasts the
//!   request timeout still finishes (the server log says so).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use vigil_processor::view::{EraseError, Eraser, ErasureReport, Suppression, View};
use vigil_schemas::OperatorAction;

use crate::ApiError;

/// What the routes need: the log the removal is written to, and the eraser.
#[derive(Debug, Clone)]
pub struct RecipientsState {
    pub view: View,
    pub log: vigil_log::EventLog,
    pub eraser: Eraser,
}

/// Where an operator takes a recipient off the suppression list.
pub const UNSUPPRESS_PATH: &str = "/api/v1/suppressions/remove";
/// Where an admin erases one person.
pub const ERASE_PATH: &str = "/api/v1/admin/recipients/{address}";

/// The routes; the role guard ([`crate::auth`]) gives the removal to operators and the
/// erasure (under `/api/v1/admin/`) to admins.
pub fn router(state: RecipientsState) -> Router {
    Router::new().route(UNSUPPRESS_PATH, post(unsuppress)).route(ERASE_PATH, delete(erase)).with_state(state)
}

/// An operator's request to take a recipient off the list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unsuppress {
    recipient: String,
    author: String,
    reason: String,
}

/// What a removal request was turned into.
#[derive(Debug, Serialize)]
struct Unsuppressed {
    /// The `suppression_removed` event written to the log; the recipient is off the list
    /// once the fold reaches it.
    event_id: String,
    /// The suppression as it stood when the request was taken.
    suppression: Suppression,
}

async fn unsuppress(
    State(state): State<RecipientsState>,
    body: Result<Json<Unsuppress>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Unsuppressed>), ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (recipient, author, reason) =
        (request.recipient.trim(), request.author.trim().to_owned(), request.reason.trim().to_owned());
    if recipient.is_empty() || author.is_empty() || reason.is_empty() {
        return Err(ApiError::BadRequest(
            "`recipient`, `author` and `reason` say whom, who and why; all are required".into(),
        ));
    }
    // The list is kept under the address's stored form (its pseudonym with [privacy] hash).
    let stored = state.log.privacy().address(recipient);
    let Some(suppression) = state.view.suppression(&stored).map_err(ApiError::internal)?.rows.into_iter().next() else {
        return Err(ApiError::NotFound(format!("`{recipient}` is not on the suppression list")));
    };
    let action = OperatorAction { action_key: "suppression".into(), author, reason };
    // Written with the address as given: the log applies [privacy] to it like to any event.
    let event = vigil_processor::view::operator_removal(recipient, action, Utc::now());
    let event_id = event.event_id.clone();
    let batch = vigil_log::AppendBatch { events: vec![event], ..vigil_log::AppendBatch::default() };
    state.log.append_async(&batch).await?;
    tracing::info!(%event_id, "an operator took a recipient off the suppression list");
    Ok((StatusCode::ACCEPTED, Json(Unsuppressed { event_id, suppression })))
}

async fn erase(
    State(state): State<RecipientsState>,
    Path(address): Path<String>,
) -> Result<Json<ErasureReport>, ApiError> {
    match state.eraser.erase(&address).await {
        Ok(report) => Ok(Json(report)),
        Err(EraseError::Refused(reason)) => Err(ApiError::BadRequest(reason.to_string())),
        Err(EraseError::Stopped) => {
            Err(ApiError::Unavailable { dependency: "the pipeline", reason: "it is stopping".into() })
        }
        Err(EraseError::ClickHouse(error)) => {
            Err(ApiError::Unavailable { dependency: "ClickHouse", reason: error.to_string() })
        }
        Err(other) => Err(ApiError::internal(other)),
    }
}
