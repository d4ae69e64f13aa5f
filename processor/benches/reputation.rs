//! Reputation on the embedded log: throughput of classify + provider map + reputation fold,
//! and the memory of the state for 10 000 egress sources x 50 providers.
//!
//! - Throughput: `pipeline::catch_up` (what a start or `vigil replay` runs: read the log,
//!   deserialize, enrich, fold) over a log of generated events, on one thread, with every rule,
//!   without the rules that act, and without the alert rules (what alerting costs). Anchor:
//!   reading and deserializing the same log alone, as the processor does (without the raw
//!   records). Each runs twice, alternating; the better of each is kept.
//! - Memory: the resident set of this process grown by a state holding 10 000 sources x 50
//!   providers, every pair active, events spread over 24 h (see `MEMORY_EVENTS`). Measured
//!   first, before anything else is allocated.
//!
//! Both use mimalloc, the allocator of the `vigil` binary.
//!
//! Not a criterion bench: each figure is one long run. `scripts/bench` runs it with `--bench`
//! and writes the figures into BENCHMARKS.md; without `--bench` (`cargo test`) a small run
//! only checks that it works.

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

/// The allocator of the `vigil` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::time::Instant;

use chrono::{DateTime, Duration};
use vigil_log::{AppendBatch, EventLog};
use vigil_processor::pipeline::catch_up;
use vigil_processor::reputation::ReputationStore;
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, Enricher};
use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

const SOURCES: usize = 10_000;
const PROVIDERS: usize = 50;
/// Ten events per (source, provider) pair over 24 h.
const MEMORY_EVENTS: usize = SOURCES * PROVIDERS * 10;
const LOG_EVENTS: usize = 300_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The state of `events` events over `sources` x `providers`, built one reused event at a
/// time so only the state grows.
fn build_state(events: usize, sources: usize, providers: usize) -> ReputationStore {
    let start = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
    let mut store = ReputationStore::new();
    let mut e = DeliveryEvent::new(String::new(), SourceKind::Kumomta, EventKind::Delivered, start, start);
    let (mut source, mut provider, mut campaign) = (String::new(), String::new(), String::new());
    let step_ms = 24 * 3_600_000 / events as i64;
    for i in 0..events {
        let at = start + Duration::milliseconds(i as i64 * step_ms);
        e.occurred_at = at;
        e.ingested_at = at;
        // Every pair in turn, so each is active through the day.
        let (s, p) = (i % sources, (i / sources) % providers);
        source.clear();
        write!(source, "ip-{s}").unwrap();
        provider.clear();
        write!(provider, "provider-{p}").unwrap();
        campaign.clear();
        write!(campaign, "campaign-{}", i % 1000).unwrap();
        e.egress_source = Some(source.clone());
        e.provider = Some(provider.clone());
        e.campaign = Some(campaign.clone());
        e.egress_pool = Some(format!("pool-{}", s % 100));
        e.tenant = Some(format!("tenant-{}", s % 50));
        e.sender_domain = Some(format!("news{}.example.com", s % 200));
        (e.kind, e.bounce_class) = match i % 50 {
            0 => (EventKind::Bounced, Some(BounceClass::InvalidRecipient)),
            1 | 2 => (EventKind::Deferred, Some(BounceClass::TransientFailure)),
            _ => (EventKind::Delivered, None),
        };
        store.record(&e, None);
    }
    store.evict();
    store
}

fn log_of(dir: &std::path::Path, events: usize) -> EventLog {
    let log = EventLog::open(dir).unwrap();
    let raw = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/kumomta/examples.jsonl"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let mix = support::Mix { sources: 200, ..support::Mix::default() };
    let mut all = support::events(&mix, events);
    for e in &mut all {
        // Events in the log carry their source record (DESIGN §4); reading it is part of the cost.
        e.raw = Some(raw.clone());
    }
    for chunk in all.chunks(10_000) {
        log.append(&AppendBatch { events: chunk.to_vec(), ..AppendBatch::default() }).unwrap();
    }
    log
}

/// Events per second of `run` over the whole log.
fn rate(log: &EventLog, run: impl Fn(&EventLog)) -> f64 {
    let started = Instant::now();
    run(log);
    log.head() as f64 / started.elapsed().as_secs_f64()
}

fn read_only(log: &EventLog) {
    let mut offset = 0;
    while offset < log.head() {
        let chunk = log.read_without_raw(offset, 10_000).unwrap();
        offset = chunk.last().unwrap().0 + 1;
        std::hint::black_box(chunk);
    }
}

/// The fold with the bundled rules that act (KumoMTA automation, rate rules), as `vigil run`.
fn fold(log: &EventLog) {
    fold_under(log, &FoldRules::bundled());
}

/// The fold with the bundled rules that act and no alert rules: what alerting costs is the
/// difference.
fn fold_without_alerts(log: &EventLog) {
    fold_under(log, &FoldRules::bundled().with_alerts(Vec::new()));
}

/// The fold with no rules that act: counts and suppressions only.
fn fold_without_rules(log: &EventLog) {
    fold_under(log, &FoldRules::new(vigil_processor::actuation::RuleSet::default()));
}

fn fold_under(log: &EventLog, rules: &FoldRules) {
    let mut state = DerivedState::new();
    catch_up(log, &Enricher::bundled(), rules, &mut state, log.head(), &mut |d| {
        std::hint::black_box(d);
    })
    .unwrap();
    assert_eq!(state.offset, log.head());
    std::hint::black_box(state);
}

fn main() {
    let timed = std::env::args().any(|a| a == "--bench");
    let (memory_events, sources, log_events) =
        if timed { (MEMORY_EVENTS, SOURCES, LOG_EVENTS) } else { (20_000, 100, 5_000) };

    let before = rss_bytes();
    let started = Instant::now();
    let store = build_state(memory_events, sources, PROVIDERS);
    let build_seconds = started.elapsed().as_secs_f64();
    let state_bytes = rss_bytes().saturating_sub(before);
    assert!(store.scope_count() >= sources * PROVIDERS, "every pair has a scope: {}", store.scope_count());
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let log = log_of(dir.path(), log_events);
    let (mut anchor, mut vigil, mut counts_only, mut no_alerts) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..2 {
        anchor = anchor.max(rate(&log, read_only));
        vigil = vigil.max(rate(&log, fold));
        counts_only = counts_only.max(rate(&log, fold_without_rules));
        no_alerts = no_alerts.max(rate(&log, fold_without_alerts));
    }
    if !timed {
        println!("reputation bench: smoke run passed (no figures without --bench)");
        return;
    }
    let report = serde_json::json!({
        "log_events": log_events,
        "fold_per_s": vigil,
        "read_per_s": anchor,
        "ratio": vigil / anchor,
        "fold_without_rules_per_s": counts_only,
        "ratio_without_rules": counts_only / anchor,
        "fold_without_alerts_per_s": no_alerts,
        "ratio_without_alerts": no_alerts / anchor,
        "alerting_share": 1.0 - vigil / no_alerts,
        "memory_events": memory_events,
        "sources": sources,
        "providers": PROVIDERS,
        "state_rss_bytes": state_bytes,
        "state_build_per_s": memory_events as f64 / build_seconds,
    });
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    std::fs::write(format!("{target}/reputation.json"), report.to_string()).unwrap();
    println!("{report:#}");
}
