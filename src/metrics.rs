//! `GET /metrics`: Prometheus / OpenMetrics text for every stage of this process (`router` for
//! `vigil run` and `vigil ingest`, `process_router` for `vigil process`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_log::EventLog;

struct MetricsState {
    registry: Registry,
    /// Offset the next appended event gets; with the committed offset it gives the
    /// processor's lag.
    log_head: Gauge,
    committed: Gauge,
    log: EventLog,
    processor: Option<&'static str>,
}

/// The `/metrics` route over the ingest metrics and the log offsets, and the committed offset
/// of `processor` (the consumer whose lag matters in this role) when there is one.
pub fn router(log: EventLog, processor: Option<&'static str>) -> Router {
    let mut registry = Registry::default();
    vigil_ingest::metrics::register(&mut registry);
    let (log_head, committed) = (Gauge::default(), Gauge::default());
    registry.register("vigil_log_head_offset", "Offset the next event appended to the log gets", log_head.clone());
    // Only where a processor runs: in the ingest role it would read 0 forever.
    if processor.is_some() {
        registry.register(
            "vigil_processor_committed_offset",
            "Offset up to which the processor has written the warehouse",
            committed.clone(),
        );
    }
    let state = Arc::new(MetricsState { registry, log_head, committed, log, processor });
    Router::new().route("/metrics", get(metrics)).with_state(state)
}

/// The `/metrics` route of `vigil process`: the stream counters.
pub fn process_router() -> Router {
    let mut registry = Registry::default();
    vigil_processor::stream::register_metrics(&mut registry);
    let registry = Arc::new(registry);
    Router::new().route("/metrics", get(move || async move { encode(&registry) }))
}

fn encode(registry: &Registry) -> impl IntoResponse + use<> {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!(%error, "encoding metrics");
    }
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn metrics(State(state): State<Arc<MetricsState>>) -> impl IntoResponse {
    let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    state.log_head.set(as_gauge(state.log.head()));
    let log = state.log.clone();
    if let Some(consumer) = state.processor
        && let Ok(Ok(committed)) = tokio::task::spawn_blocking(move || log.committed_offset(consumer)).await
    {
        state.committed.set(as_gauge(committed));
    }
    encode(&state.registry)
}
