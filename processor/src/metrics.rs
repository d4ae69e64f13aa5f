//! The processor's metrics, named `vigil_processor_*` and `vigil_push_*` (see
//! `docs/metrics.md`): batch latency of the embedded pipeline, the Kafka stages' counters
//! ([`crate::stream::stream_metrics`]), and each pusher's backlog in the outbox.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::actuation::push::Outbox;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub pusher: String,
    /// `permanent` (the decision is marked failed) or `temporary` (retried).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PusherLabel {
    /// `kumod`, `webhook:<name>` or `topic:<name>`: set by configuration, so bounded.
    pub pusher: String,
}

/// The processor's gauges and histograms. One set per process ([`processor_metrics`]).
#[derive(Debug)]
pub struct ProcessorMetrics {
    /// Seconds from reading a batch of the log to its state being folded (embedded pipeline).
    pub batch_seconds: Histogram,
    /// Decisions recorded and not yet passed by each pusher.
    pub outbox_depth: Family<PusherLabel, Gauge>,
    /// Age of the oldest decision each pusher has not passed yet (0 when caught up).
    pub outbox_oldest_seconds: Family<PusherLabel, Gauge>,
    /// Failed delivery attempts by pusher and kind.
    pub push_failures: Family<FailureLabels, Counter>,
    /// Decisions each pusher is waiting to retry.
    pub push_retrying: Family<PusherLabel, Gauge>,
    /// Complaints by how they were attributed to a stream.
    pub complaints: Family<AttributionLabel, Counter>,
    /// Suppressions delivered to each marketing app (`suppressions:<name>`).
    pub suppressions_pushed: Family<PusherLabel, Counter>,
    /// Alert notifications delivered to each receiver (`alerts:<name>`).
    pub alerts_sent: Family<PusherLabel, Counter>,
    /// Alerts now, by state and severity.
    pub alerts: Family<AlertLabels, Gauge>,
    /// Decisions and alert notices an outbox refused, waiting in memory to be recorded.
    pub unrecorded: Family<WhatLabel, Gauge>,
    /// What retention deleted: `events`, `dead_letters`, `warehouse_days`, `decisions`.
    pub retention_deleted: Family<WhatLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    /// `decisions` or `alert_notices` (unrecorded); `events`, `dead_letters` or
    /// `warehouse_days` (retention).
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `pending` or `firing`.
    pub state: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttributionLabel {
    /// `trace`, `joined` or `unattributed`.
    pub attribution: &'static str,
}

impl Default for ProcessorMetrics {
    fn default() -> Self {
        Self {
            // 1 ms .. about 16 s.
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            outbox_depth: Family::default(),
            outbox_oldest_seconds: Family::default(),
            push_failures: Family::default(),
            push_retrying: Family::default(),
            complaints: Family::default(),
            suppressions_pushed: Family::default(),
            alerts_sent: Family::default(),
            alerts: Family::default(),
            unrecorded: Family::default(),
            retention_deleted: Family::default(),
        }
    }
}

static METRICS: LazyLock<ProcessorMetrics> = LazyLock::new(ProcessorMetrics::default);

/// This process's processor metrics.
#[must_use]
pub fn processor_metrics() -> &'static ProcessorMetrics {
    &METRICS
}

/// Registers the embedded pipeline's batch latency.
pub fn register_pipeline(registry: &mut Registry) {
    registry.register(
        "vigil_processor_batch_duration_seconds",
        "Seconds from reading a batch of the log to its state being folded",
        processor_metrics().batch_seconds.clone(),
    );
}

/// Registers the retention counter (`vigil run`'s pipeline), every kind at 0 from the start.
pub fn register_retention(registry: &mut Registry) {
    let deleted = &processor_metrics().retention_deleted;
    for what in ["events", "dead_letters", "warehouse_days", "clickhouse_partitions"] {
        let _ = deleted.get_or_create(&WhatLabel { what });
    }
    registry.register(
        "vigil_retention_deleted",
        "What retention deleted: events and dead letters of the log, days of the Parquet warehouse",
        deleted.clone(),
    );
}

/// Registers the complaints counter (the embedded pipeline and the Kafka enrich stage).
pub fn register_complaints(registry: &mut Registry) {
    let complaints = &processor_metrics().complaints;
    // Every attribution is listed from the start, at 0, so a rule on the unattributed share
    // has a series before the first complaint.
    for attribution in ATTRIBUTIONS {
        let _ = complaints.get_or_create(&AttributionLabel { attribution: attribution.as_str() });
    }
    registry.register(
        "vigil_complaints",
        "Complaints by how they were attributed to an egress source: trace (the report says), joined (the latest delivery to the complainer), unattributed (counted for the provider only)",
        complaints.clone(),
    );
}

const ATTRIBUTIONS: [vigil_schemas::Attribution; 3] =
    [vigil_schemas::Attribution::Trace, vigil_schemas::Attribution::Joined, vigil_schemas::Attribution::Unattributed];

/// Counts a batch's complaints per attribution ([`crate::complaints::AttributionCounts`]).
pub fn complaints_attributed(counts: crate::complaints::AttributionCounts) {
    for (attribution, count) in ATTRIBUTIONS.iter().zip(counts) {
        if count > 0 {
            processor_metrics()
                .complaints
                .get_or_create(&AttributionLabel { attribution: attribution.as_str() })
                .inc_by(count);
        }
    }
}

/// Registers the pushers' backlogs (refreshed by [`refresh_outbox`] before each scrape).
pub fn register_outbox(registry: &mut Registry) {
    let m = processor_metrics();
    registry.register(
        "vigil_push_outbox_depth_decisions",
        "Decisions recorded and not yet passed by each pusher",
        m.outbox_depth.clone(),
    );
    registry.register(
        "vigil_push_oldest_undelivered_seconds",
        "Age of the oldest decision each pusher has not passed yet (0 when caught up)",
        m.outbox_oldest_seconds.clone(),
    );
    registry.register(
        "vigil_suppressions_pushed",
        "Suppressed recipients delivered to each marketing app (listmonk, Mautic, webhook)",
        m.suppressions_pushed.clone(),
    );
    registry.register(
        "vigil_alert_notifications_sent",
        "Alert notifications delivered to each receiver (Slack, PagerDuty, Teams, webhook, Alertmanager)",
        m.alerts_sent.clone(),
    );
    registry.register(
        "vigil_push_failures",
        "Failed delivery attempts by pusher; kind permanent marks the decision failed, temporary is retried",
        m.push_failures.clone(),
    );
    registry.register(
        "vigil_push_retrying_decisions",
        "Decisions each pusher is waiting to retry after a temporary failure",
        m.push_retrying.clone(),
    );
}

/// Registers the gauge of what the outboxes refused (embedded pipeline), at 0 from the start.
pub fn register_unrecorded(registry: &mut Registry) {
    for what in ["decisions", "alert_notices"] {
        unrecorded(what, 0);
    }
    registry.register(
        "vigil_unrecorded",
        "Decisions and alert notices an outbox could not write (a full disk), waiting in memory; no snapshot is written meanwhile",
        processor_metrics().unrecorded.clone(),
    );
}

/// Sets how many `what` wait to be recorded.
pub fn unrecorded(what: &'static str, waiting: usize) {
    processor_metrics().unrecorded.get_or_create(&WhatLabel { what }).set(i64::try_from(waiting).unwrap_or(i64::MAX));
}

/// Registers the alerts gauge (set by [`refresh_alerts`] as the fold goes).
pub fn register_alerts(registry: &mut Registry) {
    refresh_alerts(&crate::alerting::AlertingState::default());
    registry.register(
        "vigil_alerts",
        "Alerts now by state (pending, firing) and severity, as Vigil's alert rules judge them on the events' clock",
        processor_metrics().alerts.clone(),
    );
}

/// Sets the alerts gauge from the fold's alerting state; every state and severity has a
/// series, at 0 when none, so a rule on it has something to read from the start.
pub fn refresh_alerts(alerting: &crate::alerting::AlertingState) {
    use crate::alerting::{AlertState, Severity};
    let tally = alerting.tally();
    for (state, name) in [(AlertState::Pending, "pending"), (AlertState::Firing, "firing")] {
        for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
            let count = tally.get(&(state, severity)).copied().unwrap_or(0);
            processor_metrics()
                .alerts
                .get_or_create(&AlertLabels { state: name, severity: severity.as_str() })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Counts a failed delivery attempt.
pub fn delivery_failed(pusher: &str, permanent: bool) {
    let kind = if permanent { "permanent" } else { "temporary" };
    processor_metrics().push_failures.get_or_create(&FailureLabels { pusher: pusher.to_owned(), kind }).inc();
}

/// Sets how many decisions `pusher` is waiting to retry.
pub fn refresh_pending(pusher: &str, waiting: usize) {
    let label = PusherLabel { pusher: pusher.to_owned() };
    processor_metrics().push_retrying.get_or_create(&label).set(i64::try_from(waiting).unwrap_or(i64::MAX));
}

/// Reads each pusher's backlog from `outbox` into the gauges.
pub fn refresh_outbox(outbox: &Outbox) {
    let m = processor_metrics();
    match outbox.backlogs() {
        Ok(backlogs) => {
            let now = chrono::Utc::now();
            for backlog in backlogs {
                let label = PusherLabel { pusher: backlog.pusher };
                m.outbox_depth.get_or_create(&label).set(i64::try_from(backlog.depth).unwrap_or(i64::MAX));
                let age = backlog.oldest.map_or(0, |at| (now - at).num_seconds().max(0));
                m.outbox_oldest_seconds.get_or_create(&label).set(age);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read the outbox backlog for /metrics"),
    }
}
