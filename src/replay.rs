//! `vigil replay`: the derived state rebuilt from offset 0 of the log, as a digest.
//!
//! The digest is the one `GET /api/v1/state` reports for a running `vigil run` at the same
//! offset: equal digests mean the state, and every answer derived from it, are equal. While
//! the log is whole the snapshot is neither read nor written: a replay checks it, it does not
//! trust it. Once retention has deleted the log's oldest events, the replay starts from the
//! snapshot (retention never deletes past it) and says so; without a usable snapshot it
//! folds what the log keeps and says what is missing.

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use vigil_log::EventLog;
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, Enricher, ProviderMap};

use crate::cli::ReplayArgs;

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    state: vigil_schemas::api::StateResponse,
    provider_map_version: u32,
    seconds: f64,
    /// The snapshot's offset, when the replay started from it (the log was trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    from_snapshot: Option<u64>,
    /// The log's first offset, when the events before it are deleted and no snapshot
    /// covered them: the state lacks them.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_before: Option<u64>,
}

pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let log_dir = args.data_dir.join("log");
    if !log_dir.join("log.redb").exists() {
        anyhow::bail!("no log in {}: is this the --data-dir of vigil run?", args.data_dir.display());
    }
    let log = EventLog::open(&log_dir).with_context(|| {
        format!("opening the log in {} (is vigil run still running on it? stop it first)", log_dir.display())
    })?;
    let providers = ProviderMap::bundled();
    let provider_map_version = providers.version();
    let enricher = Enricher::new(Arc::new(crate::run::build_classifier(&args.bounce_rules)?), Arc::new(providers));
    let until = args.until.unwrap_or_else(|| log.head()).min(log.head());
    let started = std::time::Instant::now();
    let mut state = DerivedState::new();
    if args.rules.is_some() {
        eprintln!("warning: `vigil replay --rules` is deprecated; use --what-if-rules (it means the same)");
    }
    if let Some(rules) = args.what_if_rules.as_ref().or(args.rules.as_ref()) {
        return what_if(&log, &enricher, rules, &args.data_dir, until);
    }
    let fold = FoldRules::new(crate::run::load_rules(args.action_rules.as_deref())?)
        .with_alerts(crate::run::load_alert_rules(args.alert_rules.as_deref())?);
    let (mut from_snapshot, mut missing_before) = (None, None);
    let first = log.first_offset()?;
    if first > 0 {
        let state_dir = vigil_processor::pipeline::state_dir(&args.data_dir);
        match DerivedState::load(&state_dir) {
            Some(snapshot) if snapshot.offset >= first && snapshot.offset <= until => {
                eprintln!(
                    "note: the log starts at offset {first} (older events were deleted by [retention]); replaying from the snapshot at offset {}",
                    snapshot.offset
                );
                from_snapshot = Some(snapshot.offset);
                state = snapshot;
            }
            _ => {
                eprintln!(
                    "warning: the log starts at offset {first} (older events were deleted by [retention]) and no snapshot in {} covers them: \
                     the state below lacks offsets 0..{first}",
                    state_dir.display()
                );
                missing_before = Some(first);
            }
        }
    }
    vigil_processor::pipeline::catch_up(&log, &enricher, &fold, &mut state, until, &mut |_| {})?;
    // A replay tells no one: the notices it decides again are dropped.
    state.alerting.take_notices();
    let report = Report {
        state: state.summary(),
        provider_map_version,
        seconds: started.elapsed().as_secs_f64(),
        from_snapshot,
        missing_before,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `vigil replay --rules FILE`: the log replayed under other rules, compared with the decisions
/// `vigil run` recorded. Prints one JSON line per decision that differs,
/// `{"change":"added"|"removed","decision":{...}}`, then a summary line.
fn what_if(
    log: &EventLog,
    enricher: &Enricher,
    rules: &std::path::Path,
    data_dir: &std::path::Path,
    until: u64,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    let rules = crate::run::load_rules(Some(rules))?;
    let recorded_dir = vigil_processor::pipeline::state_dir(data_dir);
    let outbox = vigil_processor::actuation::push::Outbox::open(&recorded_dir)
        .with_context(|| format!("opening the recorded decisions in {}", recorded_dir.display()))?;
    let mut recorded = BTreeMap::new();
    let mut from = 0;
    loop {
        let batch = outbox.read(from, 10_000)?;
        let Some((last, _)) = batch.last() else { break };
        from = last + 1;
        recorded.extend(batch.into_iter().map(|(_, d)| (d.decision_id.clone(), d)));
    }
    let mut replayed = BTreeMap::new();
    let mut state = DerivedState::new();
    vigil_processor::pipeline::catch_up(log, enricher, &FoldRules::new(rules), &mut state, until, &mut |decisions| {
        replayed.extend(decisions.into_iter().map(|d| (d.decision_id.clone(), d)));
    })?;
    let mut out = std::io::stdout().lock();
    let (mut added, mut removed) = (0, 0);
    for (id, decision) in &replayed {
        if !recorded.contains_key(id) {
            added += 1;
            writeln!(out, "{}", serde_json::json!({ "change": "added", "decision": decision }))?;
        }
    }
    for (id, decision) in &recorded {
        if !replayed.contains_key(id) {
            removed += 1;
            writeln!(out, "{}", serde_json::json!({ "change": "removed", "decision": decision }))?;
        }
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({ "summary": { "recorded": recorded.len(), "replayed": replayed.len(), "added": added, "removed": removed } })
    )?;
    Ok(())
}
