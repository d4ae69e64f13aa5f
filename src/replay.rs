//! `vigil replay`: the derived state rebuilt from offset 0 of the log, as a digest.
//!
//! The digest is the one `GET /api/v1/state` reports for a running `vigil run` at the same
//! offset: equal digests mean the state, and every answer derived from it, are equal. The
//! snapshot is neither read nor written: a replay checks it, it does not trust it.

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use vigil_log::EventLog;
use vigil_processor::reputation::SignalMatcher;
use vigil_processor::{DerivedState, Enricher, ProviderMap};

use crate::cli::ReplayArgs;

#[derive(Debug, Serialize)]
struct Report {
    offset: u64,
    digest: String,
    scopes: usize,
    suppressions: usize,
    too_late: u64,
    provider_map_version: u32,
    seconds: f64,
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
    let enricher = Enricher::new(Arc::new(crate::run::build_classifier(&args.rules)?), Arc::new(providers));
    let until = args.until.unwrap_or_else(|| log.head()).min(log.head());
    let started = std::time::Instant::now();
    let mut state = DerivedState::new();
    vigil_processor::pipeline::catch_up(&log, &enricher, &SignalMatcher::new(), &mut state, until)?;
    let report = Report {
        offset: state.offset,
        digest: state.digest(),
        scopes: state.reputation.scope_count(),
        suppressions: state.suppressions.len(),
        too_late: state.reputation.too_late(),
        provider_map_version,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
