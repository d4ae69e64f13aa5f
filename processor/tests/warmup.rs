//! Warm-up plans over 30 simulated days: a healthy IP advances on schedule, a struggling one
//! holds, one drawing blocks steps back.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeDelta, Utc};
use vigil_processor::actuation::{Decision, RuleSet, SettingValue, Status};
use vigil_processor::state::FoldRules;
use vigil_processor::{DerivedState, ProviderMap};
use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

const PLAN: &str = r#"
[[warmup]]
name = "ip-new"
egress_source = "ip-new"
provider = "google"
start_date = "2026-03-01"
start = 50
double_every_days = 2
max = 3200
max_deferral_rate = 0.10
max_block_rate = 0.02
"#;

#[derive(Clone, Copy)]
enum Health {
    Good,
    /// A fifth of attempts deferred.
    Deferring,
    /// Deferred with a block class: the provider refusing the sender.
    Blocked,
}

/// 30 days of traffic at the plan's daily limit; returns the decisions and the limit in
/// force on each day.
fn simulate(health_on: impl Fn(i64) -> Health) -> (Vec<Decision>, Vec<u64>, DerivedState) {
    let fold = FoldRules::new(RuleSet::from_toml("test", PLAN, &ProviderMap::bundled()).unwrap());
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap().into();
    let mut state = DerivedState::new();
    let mut decisions = Vec::new();
    let mut limits = Vec::new();
    let mut limit = 0;
    let mut offset = 0;
    for day in 0..30 {
        let day_start = start + TimeDelta::days(day);
        // The first event of the day moves the clock: yesterday is judged, today's limit said.
        let before = decisions.len();
        let mut event =
            DeliveryEvent::new(format!("tick{day}"), SourceKind::Kumomta, EventKind::Delivered, day_start, day_start);
        event.egress_source = Some("ip-other".into());
        state.apply(offset, &event, &fold, &mut decisions);
        offset += 1;
        for d in &decisions[before..] {
            if let (Status::Applied, Some(SettingValue::Text(v))) = (d.status, &d.value) {
                limit = v.trim_end_matches("/d").parse().unwrap();
            }
            if d.status == Status::Lifted {
                limit = u64::MAX;
            }
        }
        limits.push(limit);
        let health = health_on(day);
        let volume = limit.min(4000);
        for i in 0..volume {
            let at = day_start + TimeDelta::seconds(60 + i64::try_from(i).unwrap() * 20);
            let bad = match health {
                Health::Good => false,
                Health::Deferring | Health::Blocked => i % 5 == 0,
            };
            let kind = if bad { EventKind::Deferred } else { EventKind::Delivered };
            let mut event = DeliveryEvent::new(format!("d{day}-{i}"), SourceKind::Kumomta, kind, at, at);
            event.egress_source = Some("ip-new".into());
            event.provider = Some("google".into());
            if bad && matches!(health, Health::Blocked) {
                event.bounce_class = Some(BounceClass::SpamBlock);
            }
            state.apply(offset, &event, &fold, &mut decisions);
            offset += 1;
        }
    }
    (decisions, limits, state)
}

#[test]
fn a_healthy_ip_advances_on_schedule_and_finishes() {
    let (decisions, limits, state) = simulate(|_| Health::Good);
    // Stage k (50 x 2^k a day) starts on day 2k; after 7 stages of 2 days the plan is done.
    let expected: Vec<u64> = (0..30).map(|day| if day < 14 { 50 << (day / 2) } else { u64::MAX }).collect();
    assert_eq!(limits, expected);
    let lifted = decisions.iter().filter(|d| d.status == Status::Lifted).count();
    assert_eq!(lifted, 1, "the limit is lifted once the plan is done");
    let progress = state.actuation.warmup.progress();
    assert_eq!(progress[0].state, "done");
    assert_eq!(progress[0].daily_limit, 3200);
    // Each limit names the plan, targets the source and provider, and shows the day judged.
    let step = decisions.iter().find(|d| d.value == Some(SettingValue::Text("200/d".into()))).unwrap();
    assert_eq!(step.target.egress_source.as_deref(), Some("ip-new"));
    assert_eq!(step.target.provider.as_deref(), Some("google"));
    assert_eq!(step.rule, "ip-new");
    assert_eq!(step.evidence.metrics["attempts"], 100.0, "the day before ran at the 100/d stage");
}

#[test]
fn a_deferring_ip_holds_its_first_stage() {
    let (_, limits, state) = simulate(|_| Health::Deferring);
    assert!(limits.iter().all(|&l| l == 50), "{limits:?}");
    let progress = &state.actuation.warmup.progress()[0];
    assert_eq!((progress.stage, progress.state.as_str()), (0, "holding"));
    assert!((progress.last_deferral_rate - 0.2).abs() < 1e-9);
}

#[test]
fn blocks_step_a_plan_back() {
    // Healthy for six days (to the 400/d stage on day 6), then drawing blocks: back a stage
    // per bad day, down to the first.
    let (_, limits, state) = simulate(|day| if day < 6 { Health::Good } else { Health::Blocked });
    assert_eq!(&limits[..10], &[50, 50, 100, 100, 200, 200, 400, 200, 100, 50]);
    assert!(limits[10..].iter().all(|&l| l == 50), "{limits:?}");
    assert_eq!(state.actuation.warmup.progress()[0].state, "stepped_back");
}
