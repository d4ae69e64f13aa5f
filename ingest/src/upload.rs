//! `POST /ingest/dsn` and `POST /ingest/dmarc`: mail and reports uploaded by a script, a
//! mail filter (`| curl --data-binary @- .../ingest/dsn`) or another mailbox reader.
//!
//! - `/ingest/dsn`: one email (`message/rfc822`) or an mbox of them; bounces, complaints and
//!   auto-replies become events ([`crate::mail`]). 200 with the counts; an email Vigil cannot
//!   read is dead-lettered and answered 422 with the reason.
//! - `/ingest/dmarc`: one aggregate report, XML, gzip or zip; one event per report row
//!   ([`crate::dmarc`]). Malformed XML is answered 422 with the line and the reason, and
//!   dead-lettered.
//!
//! Both take the log hook's [`Admission`], body limit and back-pressure (503 with
//! `Retry-After` when the log is full).

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use vigil_log::{AppendBatch, EventLog};
use vigil_schemas::DeadLetter;
use vigil_schemas::api::ingest::{IngestResponse, RecordError};

use crate::kumomta::{Admission, admit, append, error};
use crate::mail::Verp;
use crate::metrics::BatchObservation;

pub const DSN_PATH: &str = "/ingest/dsn";
pub const DMARC_PATH: &str = "/ingest/dmarc";

#[derive(Debug, Clone)]
struct Uploads {
    log: EventLog,
    max_body_bytes: usize,
    admission: Admission,
    verp: Verp,
}

/// The upload routes, to merge (behind the ingest guard) into the role's router.
pub fn router(log: EventLog, max_body_bytes: usize, admission: Admission, verp: Verp) -> Router {
    let state = Uploads { log, max_body_bytes, admission, verp };
    Router::new().route(DSN_PATH, post(dsn).with_state(state.clone())).route(DMARC_PATH, post(dmarc).with_state(state))
}

/// What one upload became, before it is appended.
struct Parsed {
    batch: AppendBatch,
    errors: Vec<RecordError>,
    items: usize,
}

async fn dsn(State(state): State<Uploads>, body: Body) -> Response {
    let verp = state.verp.clone();
    receive(state, "dsn-http", body, move |raw, now| {
        let mut parsed = Parsed { batch: AppendBatch::default(), errors: Vec::new(), items: 0 };
        for (index, mail) in crate::dsn::split_mailbox(raw).iter().enumerate() {
            parsed.items += 1;
            match crate::mail::events(mail, &verp, now) {
                Ok(events) => parsed.batch.events.extend(events),
                Err(reason) => {
                    let location = format!("message {}", index + 1);
                    parsed.errors.push(RecordError { index, reason: reason.to_string() });
                    parsed.batch.dead_letters.push(DeadLetter::new(
                        "dsn-http",
                        Some(location),
                        reason.to_string(),
                        mail,
                    ));
                }
            }
        }
        parsed
    })
    .await
}

async fn dmarc(State(state): State<Uploads>, body: Body) -> Response {
    receive(state, "dmarc-http", body, |raw, now| {
        let mut parsed = Parsed { batch: AppendBatch::default(), errors: Vec::new(), items: 1 };
        match crate::dmarc::decode(raw) {
            Ok(report) => parsed.batch.events = crate::dmarc::events(&report, now),
            Err(reason) => {
                parsed.errors.push(RecordError { index: 0, reason: reason.to_string() });
                parsed.batch.dead_letters.push(DeadLetter::new(
                    "dmarc-http",
                    Some("report".into()),
                    reason.to_string(),
                    raw,
                ));
            }
        }
        parsed
    })
    .await
}

async fn receive(
    state: Uploads,
    source: &'static str,
    body: Body,
    parse: impl FnOnce(&[u8], chrono::DateTime<chrono::Utc>) -> Parsed + Send + 'static,
) -> Response {
    let deadline = tokio::time::Instant::now() + state.admission.max_wait;
    let (_turn, body) = match admit(source, &state.admission, body, state.max_body_bytes).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let bytes = body.len() as u64;
    // Decoding mail and unpacking archives is CPU work: off the async threads.
    let parsed = match tokio::task::spawn_blocking(move || parse(&body, chrono::Utc::now())).await {
        Ok(parsed) => parsed,
        Err(join) => {
            tracing::error!(error = %join, source, "upload parser failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let Parsed { batch, errors, items } = parsed;
    let observation = BatchObservation::of(&batch);
    let receipt = match append(source, &state.log, batch, deadline).await {
        Ok(receipt) => receipt,
        Err(response) => return response,
    };
    observation.committed(source, items as u64, bytes, &receipt);
    let status = if items > 0 && errors.len() == items { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let body = IngestResponse {
        accepted: items - errors.len(),
        events: receipt.appended,
        duplicates: receipt.duplicates,
        dead_lettered: receipt.dead_lettered,
        errors,
    };
    (status, Json(body)).into_response()
}
