//! API errors: client errors keep their status and reason; server errors are opaque to the
//! client and logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// Vigil is starting or a dependency is down; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A fault on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Self::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, message),
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log".to_owned())
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

impl From<vigil_warehouse::WarehouseError> for ApiError {
    fn from(error: vigil_warehouse::WarehouseError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<vigil_log::LogError> for ApiError {
    fn from(error: vigil_log::LogError) -> Self {
        Self::Internal(error.to_string())
    }
}
