//! Request latency of every HTTP route a role serves, as `vigil_api_request_duration_seconds`
//! by route template, method and status (see `docs/metrics.md`). The route is the matched
//! template (`/api/v1/summary`), never the raw path, so the label set stays bounded; requests
//! that match no route count as `unmatched`.

use std::sync::LazyLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

type Latencies = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    // 0.5 ms .. about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

static LATENCIES: LazyLock<Latencies> = LazyLock::new(|| Family::new_with_constructor(histogram));

/// Registers the request latency histogram in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(
        "vigil_api_request_duration_seconds",
        "Seconds to answer an HTTP request, by route template, method and status",
        LATENCIES.clone(),
    );
}

/// Middleware (`axum::middleware::from_fn`) that times each request. Put it outermost, so the
/// time includes authentication and a timeout's 503.
pub async fn observe(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    record(&route, method.as_str(), response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Counts one answered request.
pub fn record(route: &str, method: &str, status: u16, seconds: f64) {
    let labels = RequestLabels { route: route.to_owned(), method: method.to_owned(), status };
    LATENCIES.get_or_create(&labels).observe(seconds);
}
