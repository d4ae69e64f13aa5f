//! Ingest metrics, per source (`kumomta-http`, `postfix-file`, `exim-syslog`, ...), in
//! Prometheus / OpenMetrics form. Names follow `vigil_<stage>_<what>_<unit>` (`_total` added to counters), listed in
//! `docs/metrics.md`; label
//! values are bounded: the source names above and a fixed set of dead-letter reasons.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_log::{AppendBatch, AppendReceipt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub source: String,
    /// `wait` (no turn within the wait), `queue` (too many already waiting), `full` (no room
    /// in the log within the wait), `log` (the log failed).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `resolved`, `no_mx`, `failed`, `dropped` (the lookup queue was full).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    /// A block list's zone, from the configuration.
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub source: String,
    pub reason: &'static str,
}

/// The ingest counters. One set per process ([`ingest_metrics`]).
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub records: Family<SourceLabel, Counter>,
    pub bytes: Family<SourceLabel, Counter>,
    pub events: Family<SourceLabel, Counter>,
    pub duplicates: Family<SourceLabel, Counter>,
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    /// Bytes in tailed files not yet read (the tail's lag), per source.
    pub file_lag_bytes: Family<SourceLabel, Gauge>,
    /// UDP syslog datagrams dropped because the queue was full.
    pub syslog_dropped: Counter,
    /// HTTP ingest requests refused after waiting for a turn or for room in the log.
    pub refused: Family<RefusalLabels, Counter>,
    /// HTTP ingest requests waiting for a turn.
    pub waiting: Gauge,
    /// Webhook requests refused because their signature or credential did not verify.
    pub unverified: Family<SourceLabel, Counter>,
    /// Events the Kafka broker acknowledged (ingest role).
    pub shipped_events: Counter,
    /// Dead letters the Kafka broker acknowledged (ingest role).
    pub shipped_dead_letters: Counter,
    /// Times the forwarder went back to its last acknowledged event after a failed delivery.
    pub ship_resends: Counter,
    /// Events in the on-disk buffer not yet acknowledged by the broker (ingest role).
    pub buffer_depth: Gauge,
    /// Events file tails sent straight to the broker and not yet acknowledged (ingest role).
    pub ship_in_flight: Gauge,
    /// Times the file tails spilled to the on-disk buffer because the broker stopped
    /// acknowledging (ingest role).
    pub ship_spills: Counter,
    /// Age in seconds of the oldest event not yet acknowledged by the broker (ingest role).
    pub oldest_unacknowledged_seconds: Gauge,
    /// MX lookups of recipient domains, by outcome ([`crate::dns`]).
    pub dns_lookups: Family<OutcomeLabel, Counter>,
    /// Our sending IPs and domains a block list lists now, per list ([`crate::blocklist`]).
    pub blocklisted: Family<ZoneLabel, Gauge>,
}

static METRICS: LazyLock<IngestMetrics> = LazyLock::new(IngestMetrics::default);

/// This process's ingest metrics.
#[must_use]
pub fn ingest_metrics() -> &'static IngestMetrics {
    &METRICS
}

/// Registers the ingest metrics in `registry`.
pub fn register(registry: &mut Registry) {
    let m = ingest_metrics();
    registry.register("vigil_ingest_records", "Records (lines, objects, datagrams) read", m.records.clone());
    registry.register("vigil_ingest_input_bytes", "Bytes of input read", m.bytes.clone());
    registry.register("vigil_ingest_events", "Events appended to the log", m.events.clone());
    registry.register(
        "vigil_ingest_duplicate_events",
        "Events already in the log, not counted again",
        m.duplicates.clone(),
    );
    registry.register(
        "vigil_ingest_dead_letters",
        "Records rejected to the dead-letter store, by reason",
        m.dead_letters.clone(),
    );
    registry.register("vigil_ingest_file_lag_bytes", "Bytes of tailed files not yet read", m.file_lag_bytes.clone());
    registry.register(
        "vigil_ingest_syslog_dropped",
        "UDP syslog datagrams dropped on a full queue",
        m.syslog_dropped.clone(),
    );
    registry.register(
        "vigil_ingest_refused_requests",
        "HTTP ingest requests answered 503 (the sender must retry): no turn or no room in the log within the wait",
        m.refused.clone(),
    );
    registry.register("vigil_ingest_waiting_requests", "HTTP ingest requests waiting for a turn", m.waiting.clone());
    registry.register(
        "vigil_dns_mx_lookups",
        "MX lookups of recipient domains, by outcome (resolved, no_mx, failed; dropped: the lookup queue was full)",
        m.dns_lookups.clone(),
    );
    registry.register(
        "vigil_dns_blocklisted",
        "Our sending IPs and domains the block list lists at its last check (GET /api/v1/blocklists)",
        m.blocklisted.clone(),
    );
    registry.register(
        "vigil_ingest_unverified_requests",
        "Webhook requests answered 401: signature or credential not verified, or a stale timestamp",
        m.unverified.clone(),
    );
    registry.register(
        "vigil_ingest_shipped_events",
        "Events acknowledged by the Kafka broker",
        m.shipped_events.clone(),
    );
    registry.register(
        "vigil_ingest_shipped_dead_letters",
        "Dead letters acknowledged by the Kafka broker",
        m.shipped_dead_letters.clone(),
    );
    registry.register(
        "vigil_ingest_ship_resends",
        "Restarts from the last acknowledged event after a failed delivery",
        m.ship_resends.clone(),
    );
    registry.register(
        "vigil_ingest_buffer_depth_events",
        "Events in the on-disk buffer not yet acknowledged by the broker",
        m.buffer_depth.clone(),
    );
    registry.register(
        "vigil_ingest_ship_in_flight_events",
        "Events sent straight to the broker by file tails and not yet acknowledged",
        m.ship_in_flight.clone(),
    );
    registry.register(
        "vigil_ingest_ship_spills",
        "Times file tails spilled to the on-disk buffer because the broker stopped acknowledging",
        m.ship_spills.clone(),
    );
    registry.register(
        "vigil_ingest_ship_oldest_unacknowledged_seconds",
        "Age of the oldest event not yet acknowledged by the broker",
        m.oldest_unacknowledged_seconds.clone(),
    );
}

/// A dead-letter reason as a bounded label value.
#[must_use]
pub fn reason_category(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("utf-8") {
        "invalid_utf8"
    } else if reason.contains("exceeds") {
        "too_large"
    } else if reason.contains("missing field") || reason.contains("no recipient") || reason.contains("neither") {
        "missing_field"
    } else if reason.contains("unknown") {
        "unknown_type"
    } else if reason.contains("json") || reason.contains("expected") || reason.contains("eof") {
        "invalid_json"
    } else {
        "unparsable"
    }
}

/// What a batch will count, taken before it is handed to the log.
#[derive(Debug)]
pub struct BatchObservation {
    reasons: Vec<&'static str>,
}

impl BatchObservation {
    #[must_use]
    pub fn of(batch: &AppendBatch) -> Self {
        Self { reasons: batch.dead_letters.iter().map(|d| reason_category(&d.reason)).collect() }
    }

    /// Counts a batch once the log has taken it.
    pub fn committed(self, source: &str, records: u64, bytes: u64, receipt: &AppendReceipt) {
        let m = ingest_metrics();
        let label = SourceLabel { source: source.to_owned() };
        m.records.get_or_create(&label).inc_by(records);
        m.bytes.get_or_create(&label).inc_by(bytes);
        m.events.get_or_create(&label).inc_by(receipt.appended as u64);
        m.duplicates.get_or_create(&label).inc_by(receipt.duplicates as u64);
        for reason in self.reasons {
            m.dead_letters.get_or_create(&DeadLetterLabels { source: source.to_owned(), reason }).inc();
        }
    }
}
