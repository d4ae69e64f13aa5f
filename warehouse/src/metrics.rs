//! The warehouse's metrics (see `docs/metrics.md`): how long a batch takes to be stored in
//! ClickHouse, rows and record together.

use std::sync::LazyLock;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// 1 ms .. about 16 s.
static INSERT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(exponential_buckets(0.001, 2.0, 15)));

/// The insert latency histogram.
#[must_use]
pub fn insert_seconds() -> &'static Histogram {
    &INSERT_SECONDS
}

/// Registers the warehouse's metrics in `registry` (roles that feed ClickHouse).
pub fn register(registry: &mut Registry) {
    registry.register(
        "vigil_clickhouse_insert_duration_seconds",
        "Seconds to store one batch in ClickHouse (its rows and the record that marks them stored)",
        insert_seconds().clone(),
    );
}
