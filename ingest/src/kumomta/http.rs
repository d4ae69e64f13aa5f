//! `POST /ingest/kumomta`: KumoMTA's log hook, one JSON record per request (`log_hooks:new_json`)
//! or a JSON array of records (batched `log_hooks:new`).
//!
//! Status codes say what the sender should do:
//! - 200: every record is either durable in the log or in the dead-letter store (listed in
//!   `errors`); retrying would not help.
//! - 400 / 422: the body (or every record in it) is unusable; it was dead-lettered with the
//!   reason. 413: the body is larger than the configured limit.
//! - 503 with `Retry-After`: nothing was kept, retry. The last resort of back-pressure, counted
//!   (`vigil_ingest_refused_requests_total`) and logged.
//!
//! Back-pressure, not refusal ([`Admission`]): KumoMTA's stock `log_hooks:new_json` treats any
//! non-2xx as final (it rejects with 500 and kumod bounces the record; only a connection
//! error or a 4xx rejection is retried), so a 503 loses the record. A request over the
//! in-flight limit therefore waits for a turn, and an append that finds the shipping buffer
//! full waits for room, both within [`MAX_WAIT`], well under kumod's 60 s HTTP client timeout;
//! only then is it refused. Waiting requests hold their connection, not their body (it is read
//! after the turn), so memory stays at `max_in_flight x max_body_bytes`; at most
//! [`MAX_WAITING`] wait. One admission is shared by every route that takes hook records.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use vigil_log::{AppendBatch, AppendReceipt, EventLog};
use vigil_schemas::DeadLetter;

use crate::metrics::BatchObservation;

const SOURCE: &str = "kumomta-http";

pub use vigil_schemas::api::ingest::{IngestResponse, RecordError};

#[derive(Debug, Clone)]
struct ReceiverState {
    log: EventLog,
    max_body_bytes: usize,
    admission: Admission,
}

/// How long a hook request may wait for a turn or for room in the log before it is refused:
/// under kumod's 60 s HTTP client timeout (`kumo.http.build_client`'s default), with room for
/// the append itself.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Most hook requests waiting for a turn at once; beyond, refused at once.
pub const MAX_WAITING: usize = 4096;

/// Who may be handled now: at most `max_in_flight` requests at once, the others wait their
/// turn (in arrival order) for up to [`MAX_WAIT`]. Cheap to clone; clones share the limit.
#[derive(Debug, Clone)]
pub struct Admission {
    turns: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    pub(crate) max_wait: Duration,
}

impl Admission {
    #[must_use]
    pub fn new(max_in_flight: usize) -> Self {
        Self::with_wait(max_in_flight, MAX_WAIT)
    }

    #[must_use]
    pub fn with_wait(max_in_flight: usize, max_wait: Duration) -> Self {
        Self { turns: Arc::new(Semaphore::new(max_in_flight)), waiting: Arc::default(), max_wait }
    }

    /// Waits for a turn; `Err` with the refusal's reason when none came in time.
    pub(crate) async fn turn(&self) -> Result<OwnedSemaphorePermit, &'static str> {
        if let Ok(permit) = Arc::clone(&self.turns).try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err("queue");
        }
        let gauge = &crate::metrics::ingest_metrics().waiting;
        gauge.inc();
        let turn = tokio::time::timeout(self.max_wait, Arc::clone(&self.turns).acquire_owned()).await;
        gauge.dec();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match turn {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or the semaphore closed (never: it is not closed).
            _ => Err("wait"),
        }
    }
}

/// The receiver's routes, to be merged into the server's router, with an admission of its own.
pub fn router(log: EventLog, max_body_bytes: usize, max_in_flight: usize) -> Router {
    Router::new().route(PATH, receiver(log, max_body_bytes, Admission::new(max_in_flight)))
}

/// Where KumoMTA's log hook posts.
pub const PATH: &str = "/ingest/kumomta";

/// The receiver as a route of its own, for every path that takes KumoMTA log records (the
/// TSA surface mounts it at `/publish_log_v1`); give every mount the same `admission`.
pub fn receiver(log: EventLog, max_body_bytes: usize, admission: Admission) -> MethodRouter {
    post(ingest).with_state(ReceiverState { log, max_body_bytes, admission })
}

pub(crate) fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// The last resort: a 503 the sender must retry, counted and logged.
pub(crate) fn refuse(source: &str, reason: &'static str, why: impl Into<String>) -> Response {
    let why = why.into();
    let refused = crate::metrics::ingest_metrics();
    let counter = refused.refused.get_or_create(&crate::metrics::RefusalLabels { source: source.into(), reason });
    counter.inc();
    // Powers of two: visible under a flood without a line per request.
    if counter.get().is_power_of_two() {
        tracing::warn!(source, reason, refused = counter.get(), %why, "ingest request refused with 503; the sender must retry it");
    }
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, why);
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
    response
}

async fn ingest(State(state): State<ReceiverState>, body: Body) -> Response {
    let deadline = tokio::time::Instant::now() + state.admission.max_wait;
    let (_turn, body) = match admit(SOURCE, &state.admission, body, state.max_body_bytes).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let records = match split_records(&body) {
        Ok(records) => records,
        Err(reason) => {
            let reason = format!("body is not a JSON log record or array of records: {reason}");
            let letter = DeadLetter::new(SOURCE, Some("body".into()), reason.clone(), &body);
            let batch = AppendBatch { dead_letters: vec![letter], ..AppendBatch::default() };
            let observation = BatchObservation::of(&batch);
            return match append(SOURCE, &state.log, batch, deadline).await {
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
    let receipt = match append(SOURCE, &state.log, batch, deadline).await {
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

/// A turn and the body, or the response that refuses them: what every ingest route does first.
/// The turn is held while the request is handled; the body is read only once it is granted.
pub(crate) async fn admit(
    source: &'static str,
    admission: &Admission,
    body: Body,
    limit: usize,
) -> Result<(OwnedSemaphorePermit, bytes::Bytes), Response> {
    let turn = admission
        .turn()
        .await
        .map_err(|reason| refuse(source, reason, "too many ingest requests in flight for too long; retry later"))?;
    match read_body(body, limit).await {
        Ok(body) => Ok((turn, body)),
        Err(BodyError::TooLarge) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes; send smaller batches"),
        )),
        Err(BodyError::Read(reason)) => Err(error(StatusCode::BAD_REQUEST, format!("reading the body: {reason}"))),
    }
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

/// Appends `batch`; while the shipping buffer is full, waits for room (with backoff) until
/// `deadline`, so the sender is slowed rather than refused.
pub(crate) async fn append(
    source: &'static str,
    log: &EventLog,
    batch: AppendBatch,
    deadline: tokio::time::Instant,
) -> Result<AppendReceipt, Response> {
    let mut room = vigil_log::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let appended = log
            .append_async(&batch)
            .instrument(tracing::debug_span!("ingest", source, events = batch.events.len()))
            .await;
        match appended {
            Ok(receipt) => return Ok(receipt),
            Err(err) if err.is_full() => {
                if tokio::time::Instant::now() + room.delay() >= deadline {
                    return Err(refuse(source, "full", err.to_string()));
                }
                tokio::time::sleep(room.next_delay()).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "log append failed");
                return Err(refuse(source, "log", "the log of record is unavailable; retry later"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_limit_waits_for_a_turn_and_is_refused_only_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let request = || Request::post("/ingest/kumomta").body(Body::from("[]")).unwrap();
        let admission = Admission::with_wait(1, Duration::from_secs(20));
        let app = Router::new().route(PATH, receiver(log, 1024, admission.clone()));
        assert_eq!(app.clone().oneshot(request()).await.unwrap().status(), StatusCode::OK);

        // The only turn is taken: the next request waits, and is answered once it is free.
        let held = admission.turn().await.unwrap();
        let waiting = tokio::spawn(app.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished(), "it waits instead of being refused");
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);

        // Held past the wait: refused, with Retry-After and the reason.
        let _held = admission.turn().await.unwrap();
        let refused = app.oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.headers().contains_key(axum::http::header::RETRY_AFTER));
        let body = to_bytes(refused.into_body(), 1024).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("too many ingest requests"));
    }
}
