//! `POST /ingest/<relay>` (Elastic Email: `GET`): the relay webhook receivers, with the log
//! hook's guarantees.
//!
//! - 200: every event is durable in the log (a repeated delivery is stored once: same relay
//!   event, same `event_id`) or dead-lettered with its reason (listed in `errors`).
//! - 401 with the reason: the signature or credential does not verify, or the signed timestamp
//!   is stale. Nothing is stored: an unverified body is not evidence of anything.
//! - 400: a verified body that is not the relay's format; it is dead-lettered. 413: larger than
//!   the configured limit.
//! - 503 with `Retry-After`: nothing was kept (the log is full or unavailable, or too many
//!   requests waited too long); every relay retries.
//!
//! Receivers share the log hook's [`Admission`], so memory stays at `max_in_flight x
//! max_body_bytes` whatever mix of senders arrives.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use vigil_log::{AppendBatch, EventLog};
use vigil_schemas::DeadLetter;
use vigil_schemas::api::ingest::{IngestResponse, RecordError};

use super::verify::{ReceiverConfig, SnsControl, Verifier};
use super::{Provider, Tags};
use crate::kumomta::{Admission, admit, append, error};
use crate::metrics::BatchObservation;

/// The `[relays]` section: one receiver per relay, keyed by its name.
pub type RelaysConfig = BTreeMap<Provider, ReceiverConfig>;

#[derive(Debug, Clone)]
struct Receiver {
    provider: Provider,
    log: EventLog,
    max_body_bytes: usize,
    admission: Admission,
    verifier: Arc<Verifier>,
    tags: Tags,
}

/// The routes of every configured relay, to merge into the role's router.
///
/// # Errors
/// A relay whose configuration cannot verify its requests (a missing key or credential).
pub fn router(
    log: &EventLog,
    max_body_bytes: usize,
    admission: &Admission,
    relays: &RelaysConfig,
) -> Result<Router, String> {
    let mut router = Router::new();
    for (provider, config) in relays {
        let tags = config.tags.tags();
        let verifier = Arc::new(Verifier::new(*provider, config.clone())?);
        let state = Receiver {
            provider: *provider,
            log: log.clone(),
            max_body_bytes,
            admission: admission.clone(),
            verifier,
            tags,
        };
        let route = if *provider == Provider::Elasticemail {
            get(receive).post(receive).with_state(state)
        } else {
            post(receive).with_state(state)
        };
        router = router.route(&provider.path(), route);
        // The refusal counter starts at 0 for each receiver, so a rule on it has a series.
        let _ = crate::metrics::ingest_metrics()
            .unverified
            .get_or_create(&crate::metrics::SourceLabel { source: provider.as_str().to_owned() });
        tracing::info!(relay = provider.as_str(), path = %provider.path(), "relay webhook receiver on");
    }
    Ok(router)
}

async fn receive(State(state): State<Receiver>, RawQuery(query): RawQuery, headers: HeaderMap, body: Body) -> Response {
    let source = state.provider.as_str();
    let deadline = tokio::time::Instant::now() + state.admission.max_wait;
    let (_turn, body) = match admit(source, &state.admission, body, state.max_body_bytes).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let now = chrono::Utc::now();
    let control = match state.verifier.verify(&headers, query.as_deref(), &body, now).await {
        Ok(control) => control,
        Err(refusal) => {
            crate::metrics::ingest_metrics()
                .unverified
                .get_or_create(&crate::metrics::SourceLabel { source: source.to_owned() })
                .inc();
            tracing::info!(relay = source, reason = %refusal, "webhook request refused: not verified");
            return error(StatusCode::UNAUTHORIZED, refusal.0);
        }
    };
    match control {
        Some(SnsControl::Subscribe { topic, url }) => {
            let verifier = Arc::clone(&state.verifier);
            tokio::spawn(async move { verifier.confirm(&topic, &url).await });
            return (StatusCode::OK, Json(serde_json::json!({ "subscription": "seen" }))).into_response();
        }
        Some(SnsControl::Unsubscribed { topic }) => {
            tracing::warn!(topic, "SNS says the topic was unsubscribed from this endpoint");
            return (StatusCode::OK, Json(serde_json::json!({ "unsubscribed": topic }))).into_response();
        }
        None => {}
    }
    // Elastic Email's event is its query string.
    let input: &[u8] =
        if state.provider == Provider::Elasticemail { query.as_deref().unwrap_or("").as_bytes() } else { &body };
    let normalised = match super::normalise(state.provider, input, &state.tags, now) {
        Ok(normalised) => normalised,
        Err(reason) => {
            let reason = reason.to_string();
            let letter = DeadLetter::new(source, Some("body".into()), reason.clone(), input);
            let batch = AppendBatch { dead_letters: vec![letter], ..AppendBatch::default() };
            return match append(source, &state.log, batch, deadline).await {
                Ok(_) => error(StatusCode::BAD_REQUEST, reason),
                Err(response) => response,
            };
        }
    };
    let total = normalised.events.len() + normalised.rejected.len();
    let errors: Vec<RecordError> = normalised
        .rejected
        .iter()
        .enumerate()
        .map(|(index, r)| RecordError { index, reason: format!("{}: {}", r.location, r.reason) })
        .collect();
    let accepted = normalised.events.len();
    let batch = AppendBatch {
        dead_letters: normalised
            .rejected
            .into_iter()
            .map(|r| DeadLetter::new(source, Some(r.location), r.reason, r.raw.as_bytes()))
            .collect(),
        events: normalised.events,
        checkpoints: Vec::new(),
    };
    let observation = BatchObservation::of(&batch);
    let receipt = match append(source, &state.log, batch, deadline).await {
        Ok(receipt) => receipt,
        Err(response) => return response,
    };
    observation.committed(source, total as u64, input.len() as u64, &receipt);
    // Even when every event was dead-lettered: a relay retrying would only send it again.
    let status = StatusCode::OK;
    let body = IngestResponse {
        accepted,
        events: receipt.appended,
        duplicates: receipt.duplicates,
        dead_lettered: receipt.dead_lettered,
        errors,
    };
    (status, Json(body)).into_response()
}
