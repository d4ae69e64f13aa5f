//! The embedded log's commit counters, in Prometheus / OpenMetrics form (listed in
//! `docs/metrics.md`). `appended_batches / commits` is how many appends share an fsync:
//! near 1 when senders are few or batch for themselves, growing with concurrent senders.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The log counters of this process ([`log_metrics`]).
#[derive(Debug)]
pub struct LogMetrics {
    /// Durable commits of appended batches (one fsync each).
    pub commits: Counter,
    /// Appended batches per commit.
    pub group_batches: Histogram,
    /// Writes that failed on storage (a full disk, an I/O error); the log is reopened after each.
    pub write_failures: Counter,
}

/// This process's log counters.
pub fn log_metrics() -> &'static LogMetrics {
    static METRICS: LazyLock<LogMetrics> = LazyLock::new(|| LogMetrics {
        commits: Counter::default(),
        group_batches: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
        write_failures: Counter::default(),
    });
    &METRICS
}

/// Adds the log's families to `registry`.
pub fn register(registry: &mut Registry) {
    let metrics = log_metrics();
    registry.register(
        "vigil_log_commits",
        "Durable commits of appended batches (one fsync each)",
        metrics.commits.clone(),
    );
    registry.register(
        "vigil_log_group_batches",
        "Appended batches written together by one commit (group commit)",
        metrics.group_batches.clone(),
    );
    registry.register(
        "vigil_log_write_failures",
        "Log writes that failed on storage (a full disk, an I/O error); ingest answers 503 meanwhile",
        metrics.write_failures.clone(),
    );
}
