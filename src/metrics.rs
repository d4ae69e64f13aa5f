//! `GET /metrics`: Prometheus / OpenMetrics text for every stage of this process. Every metric
//! is listed in `docs/metrics.md` (name, type, labels, meaning, the roles that export it); a
//! test here fails when the code and the document disagree, and another runs
//! `promtool check metrics` on each role's output.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_log::EventLog;
use vigil_processor::actuation::push::Outbox;

use crate::config::Role;

/// The registry of `role`: every family it exports, whether or not it has samples yet.
fn registry(role: Role) -> (Registry, Offsets) {
    let mut registry = Registry::default();
    let offsets = Offsets::default();
    vigil_query::metrics::register(&mut registry);
    if matches!(role, Role::Run | Role::Ingest) {
        vigil_ingest::metrics::register(&mut registry);
        vigil_log::metrics::register(&mut registry);
        registry.register(
            "vigil_log_head_offset",
            "Offset the next event appended to the log (or ingest's buffer) gets",
            offsets.log_head.clone(),
        );
    }
    if role == Role::Run {
        // Only where the embedded pipeline runs: elsewhere it would read 0 forever.
        registry.register(
            "vigil_processor_committed_offset",
            "Offset up to which the processor has written the warehouse",
            offsets.committed.clone(),
        );
        vigil_processor::metrics::register_pipeline(&mut registry);
    }
    if role == Role::Process {
        vigil_processor::stream::register_metrics(&mut registry);
    }
    if matches!(role, Role::Run | Role::Process) {
        vigil_processor::metrics::register_retention(&mut registry);
        vigil_processor::metrics::register_unrecorded(&mut registry);
        vigil_processor::metrics::register_outbox(&mut registry);
        vigil_processor::metrics::register_complaints(&mut registry);
        vigil_processor::metrics::register_alerts(&mut registry);
        vigil_warehouse::metrics::register(&mut registry);
    }
    (registry, offsets)
}

#[derive(Default)]
struct Offsets {
    /// Offset the next appended event gets; with the committed offset it gives the
    /// processor's lag.
    log_head: Gauge,
    committed: Gauge,
}

struct MetricsState {
    registry: Registry,
    offsets: Offsets,
    log: Option<EventLog>,
    /// The consumer whose committed offset is exported (`vigil run`'s pipeline).
    processor: Option<&'static str>,
    outbox: Option<Outbox>,
}

/// The `/metrics` route of `vigil run` (with the pipeline's consumer and the outbox) and of
/// `vigil ingest` (the buffer as `log`, neither of the others).
pub fn router(log: EventLog, processor: Option<&'static str>, outbox: Option<Outbox>) -> Router {
    let role = if processor.is_some() { Role::Run } else { Role::Ingest };
    let (registry, offsets) = registry(role);
    let state = Arc::new(MetricsState { registry, offsets, log: Some(log), processor, outbox });
    Router::new().route("/metrics", get(metrics)).with_state(state)
}

/// The `/metrics` route of `vigil process`.
pub fn process_router(outbox: Outbox) -> Router {
    let (registry, offsets) = registry(Role::Process);
    let state = Arc::new(MetricsState { registry, offsets, log: None, processor: None, outbox: Some(outbox) });
    Router::new().route("/metrics", get(metrics)).with_state(state)
}

fn encode(registry: &Registry) -> String {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!(%error, "encoding metrics");
    }
    body
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4), for clients that ask for
/// `text/plain` only (older scrapers, `promtool check metrics`): a counter's family is named
/// with its `_total` there, and there is no `# EOF` or `# UNIT`.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Whether the client asked for the classic text format and not for OpenMetrics.
fn wants_classic(headers: &axum::http::HeaderMap) -> bool {
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
}

async fn metrics(State(state): State<Arc<MetricsState>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(log) = &state.log {
        state.offsets.log_head.set(as_gauge(log.head()));
        let log = log.clone();
        if let Some(consumer) = state.processor
            && let Ok(Ok(committed)) = tokio::task::spawn_blocking(move || log.committed_offset(consumer)).await
        {
            state.offsets.committed.set(as_gauge(committed));
        }
    }
    if let Some(outbox) = state.outbox.clone() {
        let _ = tokio::task::spawn_blocking(move || vigil_processor::metrics::refresh_outbox(&outbox)).await;
    }
    let text = encode(&state.registry);
    if wants_classic(&headers) {
        ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic(&text))
    } else {
        ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    const ROLES: [(Role, &str); 3] = [(Role::Run, "run"), (Role::Ingest, "ingest"), (Role::Process, "process")];

    /// `name -> type` of every family `text` declares (counters without their `_total`).
    fn families(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').expect("# TYPE name type");
                (name.to_owned(), kind.to_owned())
            })
            .collect()
    }

    /// `name -> (type, roles)` from the table of `docs/metrics.md`.
    fn documented() -> BTreeMap<String, (String, Vec<String>)> {
        let doc = include_str!("../docs/metrics.md");
        doc.lines()
            .filter(|l| l.starts_with("| `vigil_"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells[1].trim_matches('`').trim_end_matches("_total").to_owned();
                let roles = cells[5].split(',').map(|r| r.trim().trim_matches('`').to_owned()).collect();
                (name, (cells[2].to_owned(), roles))
            })
            .collect()
    }

    /// One sample in every labelled family, so each is encoded (an empty family is not).
    fn populate() {
        use vigil_ingest::metrics::{DeadLetterLabels, SourceLabel, ingest_metrics};
        let source = SourceLabel { source: "kumomta-http".into() };
        let ingest = ingest_metrics();
        for family in [&ingest.records, &ingest.bytes, &ingest.events, &ingest.duplicates] {
            family.get_or_create(&source).inc();
        }
        ingest
            .dead_letters
            .get_or_create(&DeadLetterLabels { source: "kumomta-http".into(), reason: "invalid_json" })
            .inc();
        ingest.file_lag_bytes.get_or_create(&source).set(0);
        ingest.unverified.get_or_create(&SourceLabel { source: "ses".into() }).inc();
        ingest.dns_lookups.get_or_create(&vigil_ingest::metrics::OutcomeLabel { outcome: "resolved" }).inc();
        ingest.blocklisted.get_or_create(&vigil_ingest::metrics::ZoneLabel { zone: "zen.spamhaus.org".into() }).set(0);
        let pusher = vigil_processor::metrics::PusherLabel { pusher: "kumod".into() };
        vigil_processor::metrics::processor_metrics().outbox_depth.get_or_create(&pusher).set(0);
        vigil_processor::metrics::processor_metrics().outbox_oldest_seconds.get_or_create(&pusher).set(0);
        vigil_processor::metrics::processor_metrics().push_retrying.get_or_create(&pusher).set(0);
        let suppressions = vigil_processor::metrics::PusherLabel { pusher: "suppressions:newsletter".into() };
        vigil_processor::metrics::processor_metrics().suppressions_pushed.get_or_create(&suppressions).inc();
        let alerts = vigil_processor::metrics::PusherLabel { pusher: "alerts:oncall".into() };
        vigil_processor::metrics::processor_metrics().alerts_sent.get_or_create(&alerts).inc();
        vigil_processor::metrics::delivery_failed("kumod", true);
        ingest
            .refused
            .get_or_create(&vigil_ingest::metrics::RefusalLabels { source: "kumomta-http".into(), reason: "wait" })
            .inc();
        vigil_query::metrics::record("/api/v1/summary", "GET", 200, 0.001);
    }

    #[test]
    fn classic_text_names_counters_with_total_and_has_no_eof() {
        let open = "# HELP a_things Things.\n# TYPE a_things counter\n# UNIT a_things things\na_things_total 3\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total 3\n# TYPE b gauge\nb 1\n"
        );
        let headers = |accept: &str| {
            let mut map = axum::http::HeaderMap::new();
            map.insert(axum::http::header::ACCEPT, accept.parse().unwrap());
            map
        };
        assert!(wants_classic(&headers("text/plain; version=0.0.4")));
        assert!(!wants_classic(&headers("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")));
        assert!(!wants_classic(&axum::http::HeaderMap::new()), "OpenMetrics by default");
    }

    #[test]
    fn docs_metrics_md_lists_exactly_what_each_role_exports() {
        populate();
        let documented = documented();
        let mut exported: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for (role, name) in ROLES {
            for (family, kind) in families(&encode(&registry(role).0)) {
                let entry = exported.entry(family).or_insert_with(|| (kind, Vec::new()));
                entry.1.push(name.to_owned());
            }
        }
        for (name, (kind, roles)) in &exported {
            assert!(name.starts_with("vigil_"), "{name}: every metric is vigil_<stage>_<what>_<unit>");
            let Some((doc_kind, doc_roles)) = documented.get(name) else {
                panic!("{name} ({kind}, {roles:?}) is exported but not in docs/metrics.md")
            };
            assert_eq!(doc_kind, kind, "{name}: docs/metrics.md says {doc_kind}");
            assert_eq!(doc_roles, roles, "{name}: the roles docs/metrics.md names");
        }
        for name in documented.keys() {
            assert!(exported.contains_key(name), "docs/metrics.md lists {name}, which nothing exports");
        }
    }

    /// Debian's `prometheus` package (installed by `scripts/test`) checks each role's text, in
    /// the classic format its `check metrics` reads (what `/metrics` serves to `text/plain`).
    #[test]
    fn promtool_accepts_every_role_s_metrics() {
        let promtool = std::env::var("VIGIL_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
        populate();
        for (role, name) in ROLES {
            let text = classic(&encode(&registry(role).0));
            let mut child = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{promtool}: {e}; ./scripts/test installs Debian's prometheus"));
            child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("writing to promtool");
            let out = child.wait_with_output().expect("promtool runs");
            assert!(
                out.status.success(),
                "promtool check metrics, role {name}:\n{}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
