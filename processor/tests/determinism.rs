//! Derived state is a fold over the log: replaying the same log twice, or restarting from a
//! snapshot taken at any offset, gives byte-identical digests and the same answers.

#![allow(clippy::unwrap_used)]

mod support;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use vigil_log::{AppendBatch, EventLog};
use vigil_processor::pipeline::catch_up;
use vigil_processor::reputation::{Metric, Scope, WindowRow};
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, Enricher};

const EVENTS: usize = 30_000;

fn log_with_events(dir: &std::path::Path) -> EventLog {
    let log = EventLog::open(dir).unwrap();
    for chunk in support::events(&support::Mix::default(), EVENTS).chunks(5000) {
        log.append(&AppendBatch { events: chunk.to_vec(), ..AppendBatch::default() }).unwrap();
    }
    assert_eq!(log.head(), EVENTS as u64);
    log
}

fn replay(log: &EventLog, state: &mut DerivedState, until: u64) {
    catch_up(log, &Enricher::bundled(), &FoldRules::bundled(), state, until, &mut |_| {}).unwrap();
}

/// Every answer the API derives from the state, at `as_of`.
fn answers(state: &DerivedState, as_of: DateTime<Utc>) -> (Vec<Vec<WindowRow>>, Vec<String>) {
    let mut windows = Vec::new();
    for scope in Scope::ALL {
        for minutes in [5, 60, 24 * 60] {
            windows.push(state.reputation.window(scope, minutes, as_of));
        }
    }
    let series = state.reputation.timeseries(Scope::EgressSourceProvider, &[Metric::Deferred], 5, 24 * 60, as_of);
    let mut other: Vec<String> = series.iter().map(|s| format!("{s:?}")).collect();
    other.extend(state.suppressions.list(None, None, usize::MAX).iter().map(|s| format!("{s:?}")));
    (windows, other)
}

fn as_of(state: &DerivedState) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(state.reputation.watermark().unwrap()) * 60, 0).unwrap()
}

#[test]
fn replaying_twice_gives_the_same_digest_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_events(dir.path());
    let (mut first, mut second) = (DerivedState::new(), DerivedState::new());
    replay(&log, &mut first, log.head());
    replay(&log, &mut second, log.head());
    assert_eq!(first.digest(), second.digest());
    assert_eq!(first.actions_digest(), second.actions_digest());
    assert_eq!(answers(&first, as_of(&first)), answers(&second, as_of(&second)));
    // The state is not trivially empty: every scope, signals, suppressions, late events.
    let (windows, _) = answers(&first, as_of(&first));
    assert!(windows.iter().all(|rows| !rows.is_empty()));
    let day = first.reputation.window(Scope::Provider, 24 * 60, as_of(&first));
    assert!(day.iter().map(|r| r.totals.get(Metric::Signals)).sum::<u64>() > 0);
    assert!(first.suppressions.len() > 100);
    assert!(first.reputation.too_late() > 0, "the mix spans 36 h, so some late events fall past the horizon");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// A crash at any offset: the state up to there is snapshotted, loaded by a new process
    /// and the rest of the log replayed.
    #[test]
    fn a_restart_from_a_snapshot_at_any_offset_changes_nothing(crash_at in 0..EVENTS as u64) {
        let dir = tempfile::tempdir().unwrap();
        let log = log_with_events(&dir.path().join("log"));
        let mut straight = DerivedState::new();
        replay(&log, &mut straight, log.head());

        let mut before_crash = DerivedState::new();
        replay(&log, &mut before_crash, crash_at);
        let snapshots = dir.path().join("state");
        before_crash.save(&snapshots).unwrap();
        drop(before_crash);
        let mut restarted = DerivedState::load(&snapshots).unwrap();
        prop_assert_eq!(restarted.offset, crash_at);
        replay(&log, &mut restarted, log.head());

        prop_assert_eq!(restarted.digest(), straight.digest());
        prop_assert_eq!(restarted.actions_digest(), straight.actions_digest());
        prop_assert_eq!(answers(&restarted, as_of(&straight)), answers(&straight, as_of(&straight)));
    }
}

/// Partitions read in any interleaving must agree: the state does not depend on the order
/// events are folded in.
#[test]
fn folding_in_any_order_gives_the_same_digest() {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let enricher = Enricher::bundled();
    // Rules that act decide on the order events come in (thresholds, expiries); the counts
    // and the suppression list do not. This checks the latter.
    let fold_rules = FoldRules::new(vigil_processor::actuation::RuleSet::default());
    let mut events = support::events(&support::Mix::default(), 10_000);
    for e in &mut events {
        enricher.enrich(e);
    }
    let fold = |events: &[vigil_schemas::DeliveryEvent]| {
        let mut state = DerivedState::new();
        for (offset, e) in events.iter().enumerate() {
            state.apply(offset as u64, e, &fold_rules, &mut Vec::new());
            if offset % 997 == 0 {
                state.reputation.evict();
            }
        }
        state
    };
    let in_order = fold(&events);
    events.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
    let shuffled = fold(&events);
    assert_eq!(shuffled.digest(), in_order.digest());
    assert_eq!(answers(&shuffled, as_of(&in_order)), answers(&in_order, as_of(&in_order)));
}

#[test]
fn a_snapshot_of_another_format_or_garbage_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    assert!(DerivedState::load(dir.path()).is_none(), "no snapshot yet");
    std::fs::write(dir.path().join("snapshot.bin.zst"), b"not a snapshot").unwrap();
    assert!(DerivedState::load(dir.path()).is_none());
}
