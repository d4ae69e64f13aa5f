//! `POST /ingest/kumomta`: KumoMTA's log hook, one JSON record per request (`log_hooks:new_json`)
//! or a JSON array of records (batched `log_hooks:new`).
//!
//! Status codes say what the sender should do:
//! - 200: every record is either durable in the log or in the dead-letter store (listed in
//!   `errors`); retrying would not help.
//! - 400 / 422: the body (or every record in it) is unusable; it was dead-lettered with the
//!   reason. 413: the body is larger than the configured limit.
//! - 503: the log could not store the batch, or too many requests are in flight; nothing was
//!   kept, so retry. Bodies in flight are bounded by `max_in_flight x max_body_bytes`.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::value::RawValue;
use vigil_log::{AppendBatch, AppendReceipt, EventLog};
use vigil_schemas::DeadLetter;

use crate::metrics::BatchObservation;

const SOURCE: &str = "kumomta-http";

pub use vigil_schemas::api::ingest::{IngestResponse, RecordError};

#[derive(Debug, Clone)]
struct ReceiverState {
    log: EventLog,
    max_body_bytes: usize,
}

/// The receiver's routes, to be merged into the server's router. At most `max_in_flight`
/// requests are handled at once; more get a 503 at once rather than queueing in memory.
pub fn router(log: EventLog, max_body_bytes: usize, max_in_flight: usize) -> Router {
    Router::new().route(PATH, receiver(log, max_body_bytes, max_in_flight))
}

/// Where KumoMTA's log hook posts.
pub const PATH: &str = "/ingest/kumomta";

/// The receiver as a route of its own, for every path that takes KumoMTA log records (the
/// TSA surface mounts it at `/publish_log_v1`). Each mount has its own `max_in_flight`.
pub fn receiver(log: EventLog, max_body_bytes: usize, max_in_flight: usize) -> MethodRouter {
    let shed = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            error(StatusCode::SERVICE_UNAVAILABLE, "too many ingest requests in flight; retry later")
        }))
        .load_shed()
        .concurrency_limit(max_in_flight);
    post(ingest).layer(shed).with_state(ReceiverState { log, max_body_bytes })
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

async fn ingest(State(state): State<ReceiverState>, body: Body) -> Response {
    let body = match read_body(body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {} bytes; send smaller batches", state.max_body_bytes),
            );
        }
        Err(BodyError::Read(reason)) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {reason}")),
    };
    let records = match split_records(&body) {
        Ok(records) => records,
        Err(reason) => {
            let reason = format!("body is not a JSON log record or array of records: {reason}");
            let letter = DeadLetter::new(SOURCE, Some("body".into()), reason.clone(), &body);
            let batch = AppendBatch { dead_letters: vec![letter], ..AppendBatch::default() };
            let observation = BatchObservation::of(&batch);
            return match append(&state.log, batch).await {
                Ok(receipt) => {
                    observation.committed(SOURCE, 1, body.len() as u64, &receipt);
                    error(StatusCode::BAD_REQUEST, reason)
                }
                Err(response) => response,
            };
        }
    };
    let total = records.len();
    let (batch, rejected) = super::batch_from_records(
        SOURCE,
        records.iter().enumerate().map(|(i, raw)| (format!("index {i}"), raw.get().as_bytes())),
    );
    let observation = BatchObservation::of(&batch);
    let receipt = match append(&state.log, batch).await {
        Ok(receipt) => receipt,
        Err(response) => return response,
    };
    observation.committed(SOURCE, total as u64, body.len() as u64, &receipt);
    let errors: Vec<RecordError> = rejected.into_iter().map(|(index, reason)| RecordError { index, reason }).collect();
    let status = if total > 0 && errors.len() == total { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let body = IngestResponse {
        accepted: total - errors.len(),
        events: receipt.appended,
        duplicates: receipt.duplicates,
        dead_lettered: receipt.dead_lettered,
        errors,
    };
    (status, Json(body)).into_response()
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads at most `limit` bytes of body. A larger body is read on to its end and discarded (up
/// to four times the limit), so a client still sending gets the 413 instead of a broken pipe;
/// memory stays at `limit` either way.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    use futures::StreamExt;
    let drain_limit = limit.saturating_mul(4);
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        total = total.saturating_add(chunk.len());
        if total > drain_limit {
            return Err(BodyError::TooLarge);
        }
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if !buf.is_empty() {
            buf = bytes::BytesMut::new();
        }
    }
    if total > limit { Err(BodyError::TooLarge) } else { Ok(buf.freeze()) }
}

/// A body is one JSON object or an array of them; each record keeps its own raw text.
fn split_records(body: &[u8]) -> Result<Vec<Box<RawValue>>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not valid UTF-8: {e}"))?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<Box<RawValue>>>(text).map_err(|e| e.to_string())
    } else {
        serde_json::from_str::<Box<RawValue>>(text).map(|one| vec![one]).map_err(|e| e.to_string())
    }
}

async fn append(log: &EventLog, batch: AppendBatch) -> Result<AppendReceipt, Response> {
    let log = log.clone();
    let span = tracing::debug_span!("ingest", source = "kumomta-http", events = batch.events.len());
    match tokio::task::spawn_blocking(move || span.in_scope(|| log.append(&batch))).await {
        Ok(Ok(receipt)) => Ok(receipt),
        Ok(Err(err)) if err.is_full() => {
            // Back-pressure from the shipping buffer: KumoMTA keeps the record and retries.
            tracing::warn!(error = %err, "ingest buffer full; answering 503 so the sender retries");
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
            Err(response)
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, "log append failed; answering 503 so the sender retries");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "the log of record is unavailable; retry later"))
        }
        Err(join) => {
            tracing::error!(error = %join, "log append task failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_full_receiver_answers_503_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let request = || Request::post("/ingest/kumomta").body(Body::from("[]")).unwrap();
        let ok = router(log.clone(), 1024, 1).oneshot(request()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let full = router(log, 1024, 0).oneshot(request()).await.unwrap();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = to_bytes(full.into_body(), 1024).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("too many ingest requests"));
    }
}
