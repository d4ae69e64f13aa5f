//! API errors, mapped to HTTP once, here, by whose fault they are:
//! - the request is wrong: 4xx with the reason, not logged;
//! - a dependency is down or timing out (ClickHouse, the broker, a full log): 503 with
//!   `Retry-After` and which dependency, logged as a warning (the operator's problem, not a
//!   bug);
//! - a fault of ours: 500, opaque to the client and logged once as an error.

use std::error::Error as StdError;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long a client should wait before retrying a request a dependency refused.
pub const RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// What the request names does not exist here; the message says what.
    #[error("{0}")]
    NotFound(String),
    /// A dependency is down or slow; retrying later helps.
    #[error("{dependency} is unavailable: {reason}")]
    Unavailable { dependency: &'static str, reason: String },
    /// A fault on our side.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl ApiError {
    /// A fault of ours, keeping its source for the log.
    pub fn internal(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Internal(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": message })),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, serde_json::json!({ "error": message })),
            Self::Unavailable { dependency, reason } => {
                tracing::warn!(dependency, %reason, "request refused: a dependency is unavailable");
                let body = serde_json::json!({
                    "error": format!("{dependency} is unavailable; retry in {RETRY_AFTER_SECS} s: {reason}"),
                    "dependency": dependency,
                });
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                return response;
            }
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({ "error": "internal error; see the server log" }),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// Middleware (`axum::middleware::map_response`): every 503 says when to retry, also those
/// that do not come from an [`ApiError`] (the request timeout, a full ingest queue, a role
/// still starting).
pub async fn retry_after_on_503(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE && !response.headers().contains_key(header::RETRY_AFTER) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

impl From<vigil_warehouse::WarehouseError> for ApiError {
    fn from(error: vigil_warehouse::WarehouseError) -> Self {
        match error.unavailable() {
            Some(dependency) => Self::Unavailable { dependency, reason: error.to_string() },
            None => Self::internal(error),
        }
    }
}

impl From<vigil_log::LogError> for ApiError {
    fn from(error: vigil_log::LogError) -> Self {
        if error.is_full() {
            Self::Unavailable { dependency: "log", reason: error.to_string() }
        } else {
            Self::internal(error)
        }
    }
}

impl From<vigil_processor::view::ViewError> for ApiError {
    fn from(error: vigil_processor::view::ViewError) -> Self {
        Self::internal(error)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_503_says_when_to_retry_and_others_are_left_alone() {
        let bare = StatusCode::SERVICE_UNAVAILABLE.into_response();
        let answered = retry_after_on_503(bare).await;
        assert_eq!(answered.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS.to_string().as_str());
        let ok = retry_after_on_503(StatusCode::OK.into_response()).await;
        assert!(!ok.headers().contains_key(header::RETRY_AFTER));
        let down = ApiError::Unavailable { dependency: "clickhouse", reason: "connection refused".into() };
        let response = down.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
