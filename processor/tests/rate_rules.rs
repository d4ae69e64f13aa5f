//! Rate rules against simulated traffic, minute by minute: nothing below the minimum volume
//! however bad the rate; action at the threshold; recovery step by step; and, under a noisy
//! rate, no flapping (property tests).

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use vigil_processor::actuation::{Decision, RuleSet, SettingValue, Status};
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, ProviderMap};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

const RULE: &str = r#"
[[rate]]
name = "deferrals"
metric = "deferred"
window = "15m"
threshold = 0.10
min_volume = 200
recover_below = 0.03
healthy_for = "10m"
setting = "max_message_rate"
baseline = "1000/h"
reduce_to = 50
floor = "100/h"
step_up = 25
lift_after = "60m"
"#;

/// Folds traffic of one egress source to one provider, a minute at a time.
struct Sim {
    state: DerivedState,
    fold: FoldRules,
    t0: DateTime<Utc>,
    minute: i64,
    offset: u64,
    decisions: Vec<Decision>,
}

impl Sim {
    fn new() -> Self {
        let rules = RuleSet::from_toml("test", RULE, &ProviderMap::bundled()).unwrap();
        Self {
            state: DerivedState::new(),
            fold: FoldRules::new(rules),
            t0: DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z").unwrap().into(),
            minute: 0,
            offset: 0,
            decisions: Vec::new(),
        }
    }

    /// One minute with `attempts` attempts of which `deferred` deferred.
    fn minute(&mut self, attempts: u32, deferred: u32) {
        for i in 0..attempts {
            let at = self.t0 + TimeDelta::minutes(self.minute) + TimeDelta::milliseconds(i64::from(i) * 50);
            let kind = if i < deferred { EventKind::Deferred } else { EventKind::Delivered };
            let mut event = DeliveryEvent::new(format!("e{}", self.offset), SourceKind::Kumomta, kind, at, at);
            event.egress_source = Some("ip-1".into());
            event.provider = Some("google".into());
            event.recipient_domain = Some("gmail.com".into());
            self.state.apply(self.offset, &event, &self.fold, &mut self.decisions);
            self.offset += 1;
        }
        self.minute += 1;
    }

    /// A minute with no traffic but one delivery to another source, so the clock moves.
    fn quiet_minute(&mut self) {
        let at = self.t0 + TimeDelta::minutes(self.minute);
        let mut event =
            DeliveryEvent::new(format!("e{}", self.offset), SourceKind::Kumomta, EventKind::Delivered, at, at);
        event.egress_source = Some("ip-other".into());
        self.state.apply(self.offset, &event, &self.fold, &mut self.decisions);
        self.offset += 1;
        self.minute += 1;
    }

    fn summary(&self) -> Vec<(Status, Option<String>)> {
        self.decisions
            .iter()
            .map(|d| {
                let value = d.value.as_ref().map(|v| match v {
                    SettingValue::Text(t) => t.clone(),
                    other => format!("{other:?}"),
                });
                (d.status, value)
            })
            .collect()
    }
}

#[test]
fn no_action_below_the_minimum_volume_however_bad_the_rate() {
    let mut sim = Sim::new();
    // 13 attempts a minute, all deferred: 195 in any 15-minute window, under 200.
    for _ in 0..120 {
        sim.minute(13, 13);
    }
    assert_eq!(sim.decisions, []);
    // One more attempt a minute reaches the volume: the rule acts.
    for _ in 0..16 {
        sim.minute(14, 14);
    }
    assert_eq!(sim.summary()[0], (Status::Applied, Some("500/h".into())));
}

#[test]
fn action_exactly_at_the_threshold_and_not_just_under_it() {
    let mut under = Sim::new();
    // 20 attempts a minute: 1 in 10 minutes deferred twice, else once -> under 10 %.
    for m in 0..60 {
        under.minute(20, if m % 10 == 0 { 2 } else { 1 } + u32::from(m % 2 == 0));
    }
    // 1.5 deferred per minute on average = 7.5 % .. check nothing happened.
    assert_eq!(under.decisions, [], "7.5 % to 8 % is under the 10 % threshold");

    let mut at = Sim::new();
    for _ in 0..11 {
        at.minute(20, 2); // exactly 10 %
    }
    // Minute 10 completes the first window with 200 attempts (minutes 0-9); it is evaluated
    // when minute 10's traffic arrives.
    let first = &at.decisions[0];
    assert_eq!((first.status, first.value.clone()), (Status::Applied, Some(SettingValue::Text("500/h".into()))));
    assert_eq!(first.evidence.metrics["attempts"], 200.0);
    assert_eq!(first.evidence.metrics["rate"], 0.10);
    assert_eq!(first.target.egress_source.as_deref(), Some("ip-1"));
    assert_eq!(first.target.provider.as_deref(), Some("google"));
    assert_eq!(first.target.domain.as_deref(), Some("gmail.com"), "provider-wide overrides go under its first domain");
    assert_eq!(first.at, at.t0 + TimeDelta::minutes(10) - TimeDelta::milliseconds(1));
}

#[test]
fn recovery_steps_back_up_then_lifts() {
    let mut sim = Sim::new();
    for _ in 0..20 {
        sim.minute(40, 20);
    }
    // Healthy from minute 20 on; the bad minutes leave the 15-minute window at minute 35.
    for _ in 0..80 {
        sim.minute(40, 0);
    }
    let summary = sim.summary();
    assert_eq!(
        summary,
        [
            (Status::Applied, Some("500/h".into())),
            // Still failing 10 minutes after each step (the bad minutes stay in the
            // 15-minute window until minute 35): halved, and halved again.
            (Status::Applied, Some("250/h".into())),
            (Status::Applied, Some("120/h".into())),
            // Healthy for 10 minutes at a time: 25 points back each time.
            (Status::Applied, Some("370/h".into())),
            (Status::Applied, Some("620/h".into())),
            (Status::Applied, Some("870/h".into())),
            // The next step reaches 100 %: lifted.
            (Status::Lifted, Some("870/h".into())),
        ],
        "{:#?}",
        sim.decisions.iter().map(|d| (&d.at, &d.reason)).collect::<Vec<_>>()
    );
    assert!(sim.decisions[6].reason.contains("recovered"), "{}", sim.decisions[6].reason);
}

#[test]
fn a_quiet_target_recovers_too() {
    let mut sim = Sim::new();
    for _ in 0..12 {
        sim.minute(40, 20);
    }
    for _ in 0..120 {
        sim.quiet_minute();
    }
    assert_eq!(sim.summary().last().unwrap().0, Status::Lifted, "{:?}", sim.summary());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A deferral rate wandering around the threshold (spells of 4 % to 16 %, each minute
    /// jittered) but never down to the recovery level throttles once and never lets go:
    /// no lift, so no flapping.
    #[test]
    fn a_noisy_rate_around_the_threshold_throttles_once(
        spells in proptest::collection::vec((15usize..40, 4u32..=16), 4..10),
        jitter in proptest::collection::vec(0u32..=2, 400),
    ) {
        let mut sim = Sim::new();
        let mut minute = 0;
        for (length, pct) in spells {
            for _ in 0..length {
                sim.minute(100, pct + jitter[minute % jitter.len()]);
                minute += 1;
            }
        }
        let applied_from_normal = sim.decisions.iter().filter(|d| d.reason.contains(">=")).count();
        prop_assert!(applied_from_normal <= 1, "{:?}", sim.summary());
        prop_assert!(sim.decisions.iter().all(|d| d.status == Status::Applied), "{:?}", sim.summary());
    }

    /// Any traffic: every throttle from normal had the volume and the rate; lifts only follow
    /// throttles; a new throttle only follows a lift; values stay between floor and baseline.
    #[test]
    fn decisions_are_consistent_under_any_traffic(
        minutes in proptest::collection::vec((0u32..40, 0u32..=100), 30..200)
    ) {
        let mut sim = Sim::new();
        for (attempts, deferred_pct) in minutes {
            sim.minute(attempts, attempts * deferred_pct / 100);
        }
        let mut throttled = false;
        for d in &sim.decisions {
            match d.status {
                Status::Applied if !throttled => {
                    prop_assert!(d.evidence.metrics["attempts"] >= 200.0, "{d:?}");
                    prop_assert!(d.evidence.metrics["rate"] >= 0.10, "{d:?}");
                    throttled = true;
                }
                Status::Applied => {}
                Status::Lifted => {
                    prop_assert!(throttled);
                    // The lift's own evidence: the rate it recovered to, not the applied one's.
                    prop_assert!(d.evidence.metrics["rate"] < 0.03, "{d:?}");
                    prop_assert!(d.reason.starts_with("recovered"), "{d:?}");
                    throttled = false;
                }
                other => prop_assert!(false, "unexpected {other:?}"),
            }
            if let Some(SettingValue::Text(v)) = &d.value {
                let n: u64 = v.trim_end_matches("/h").parse().unwrap();
                prop_assert!((100..=1000).contains(&n), "{v}");
            }
        }
    }
}
