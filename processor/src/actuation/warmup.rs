//! Warm-up plans: a schedule of daily volumes for a new egress source (optionally towards
//! one provider), enforced as a `max_message_rate` of `N/d`, that advances only while the
//! source is healthy.
//!
//! Evaluated once per day of the events' clock, on the day just ended (its 24 h window):
//! - healthy (every rate under its limit, or fewer than `min_volume` attempts, which is no
//!   evidence either way) and the stage has lasted its days: advance to the next stage;
//! - deferrals over `max_deferral_rate`: hold the stage (it must then last its days again);
//! - blocks over `max_block_rate` or complaints over `max_complaint_rate`: step back a stage.
//!
//! Past the last stage the limit is lifted and the plan is done.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::active::ActiveActions;
use super::decision::{ActionKind, Decision, Evidence, SettingValue, Status, Target};
use crate::reputation::{Metric, ReputationStore, Scope};

/// A plan as written in the rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    pub name: String,
    pub egress_source: String,
    #[serde(default)]
    pub provider: Option<String>,
    /// The first day of the plan (UTC).
    pub start_date: NaiveDate,
    /// Daily volumes, one stage per day: `[500, 1000, 2000]`.
    #[serde(default)]
    pub schedule: Vec<u64>,
    /// Or: start at `start` and double every `double_every_days` up to `max`.
    #[serde(default)]
    pub start: Option<u64>,
    #[serde(default)]
    pub double_every_days: Option<u32>,
    #[serde(default)]
    pub max: Option<u64>,
    #[serde(default = "default_deferral")]
    pub max_deferral_rate: f64,
    #[serde(default = "default_block")]
    pub max_block_rate: f64,
    #[serde(default = "default_complaint")]
    pub max_complaint_rate: f64,
    #[serde(default = "default_min_volume")]
    pub min_volume: u64,
    #[serde(default)]
    pub shadow: bool,
}

fn default_deferral() -> f64 {
    0.10
}
fn default_block() -> f64 {
    0.02
}
fn default_complaint() -> f64 {
    0.003
}
fn default_min_volume() -> u64 {
    50
}

/// One stage: a daily volume held for some days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stage {
    pub daily: u64,
    pub days: u32,
}

/// A compiled plan.
#[derive(Debug, Clone)]
pub struct WarmupPlan {
    pub name: String,
    pub egress_source: String,
    pub provider: Option<String>,
    pub start_day: i64,
    pub stages: Vec<Stage>,
    pub max_deferral_rate: f64,
    pub max_block_rate: f64,
    pub max_complaint_rate: f64,
    pub min_volume: u64,
    pub shadow: bool,
}

impl WarmupPlan {
    /// # Errors
    /// A message naming what is wrong.
    pub fn compile(config: WarmupConfig) -> Result<Self, String> {
        let stages = match (&config.schedule[..], config.start, config.double_every_days, config.max) {
            ([], Some(start), Some(every), Some(max)) if start > 0 && every > 0 && max >= start => {
                let mut stages = Vec::new();
                let mut daily = start;
                while daily < max {
                    stages.push(Stage { daily, days: every });
                    daily = daily.saturating_mul(2);
                }
                stages.push(Stage { daily: max, days: every });
                stages
            }
            (schedule, None, None, None) if !schedule.is_empty() && schedule.iter().all(|&v| v > 0) => {
                schedule.iter().map(|&daily| Stage { daily, days: 1 }).collect()
            }
            _ => {
                return Err(format!(
                    "plan `{}` needs either `schedule = [volumes...]` or `start`, `double_every_days` and `max` (max >= start > 0)",
                    config.name
                ));
            }
        };
        Ok(Self {
            start_day: day_number(config.start_date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()),
            name: config.name,
            egress_source: config.egress_source,
            provider: config.provider,
            stages,
            max_deferral_rate: config.max_deferral_rate,
            max_block_rate: config.max_block_rate,
            max_complaint_rate: config.max_complaint_rate,
            min_volume: config.min_volume,
            shadow: config.shadow,
        })
    }
}

fn day_number(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

fn day_start(day: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(day * 86_400, 0).unwrap_or_default()
}

/// Where a plan stands; served by `GET /api/v1/warmup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub plan: String,
    /// Index into the plan's stages.
    pub stage: usize,
    pub daily_limit: u64,
    /// Days spent on the current stage that count (healthy ones).
    pub days_on_stage: u32,
    /// `warming`, `holding`, `stepped_back` or `done`.
    pub state: String,
    /// The last day judged, and what it showed.
    pub last_day: Option<NaiveDate>,
    pub last_attempts: u64,
    pub last_deferral_rate: f64,
    pub last_block_rate: f64,
    pub last_complaint_rate: f64,
}

/// Every plan's progress, by plan name. Pure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmupState {
    plans: BTreeMap<String, Progress>,
    /// The last day judged.
    judged: Option<i64>,
}

impl WarmupState {
    #[must_use]
    pub fn progress(&self) -> Vec<Progress> {
        self.plans.values().cloned().collect()
    }

    /// Judges the days completed before the day of `now` (once each) and starts plans whose
    /// first day has come.
    pub fn tick(
        &mut self,
        plans: &[WarmupPlan],
        store: &ReputationStore,
        overlay_domain: &dyn Fn(&str) -> Option<String>,
        now: DateTime<Utc>,
        active: &mut ActiveActions,
        out: &mut Vec<Decision>,
    ) {
        let today = day_number(now);
        let yesterday = today - 1;
        if self.judged.is_some_and(|d| d >= yesterday) || plans.is_empty() {
            self.judged = Some(self.judged.map_or(yesterday, |d| d.max(yesterday)));
            return;
        }
        self.judged = Some(yesterday);
        for plan in plans {
            if today < plan.start_day {
                continue;
            }
            let progress = self.plans.entry(plan.name.clone()).or_insert_with(|| Progress {
                plan: plan.name.clone(),
                stage: 0,
                daily_limit: plan.stages[0].daily,
                days_on_stage: 0,
                state: "warming".into(),
                last_day: None,
                last_attempts: 0,
                last_deferral_rate: 0.0,
                last_block_rate: 0.0,
                last_complaint_rate: 0.0,
            });
            if progress.state == "done" {
                continue;
            }
            let stage_before = progress.stage;
            if yesterday >= plan.start_day {
                judge(plan, progress, store, yesterday);
            }
            let at = day_start(today);
            let key = format!("warmup:{}", plan.name);
            if progress.state == "done" {
                let why = format!("warm-up plan {} complete: {} a day reached", plan.name, progress.daily_limit);
                if let Some(lifted) = active.lift(&key, at, why) {
                    out.push(lifted);
                }
                continue;
            }
            let why = if progress.stage == stage_before {
                format!("warm-up plan {}: stage {} ({})", plan.name, progress.stage + 1, progress.state)
            } else {
                format!(
                    "warm-up plan {}: stage {} -> {} ({})",
                    plan.name,
                    stage_before + 1,
                    progress.stage + 1,
                    progress.state
                )
            };
            let decision = Decision {
                decision_id: String::new(),
                status: if plan.shadow { Status::Shadow } else { Status::Applied },
                at,
                action: ActionKind::SetConfig,
                target: Target {
                    egress_source: Some(plan.egress_source.clone()),
                    provider: plan.provider.clone(),
                    domain: plan.provider.as_deref().and_then(overlay_domain),
                    ..Target::default()
                },
                setting: Some("max_message_rate".into()),
                value: Some(SettingValue::Text(format!("{}/d", progress.daily_limit))),
                mx_rollup: true,
                // Renewed every day; a Vigil that stops leaves the limit to run out.
                expires: at + TimeDelta::days(2),
                reason: why,
                rule: plan.name.clone(),
                action_key: key,
                evidence: Evidence {
                    event_id: None,
                    response: None,
                    count: Some(progress.last_attempts),
                    window_seconds: Some(86_400),
                    metrics: BTreeMap::from([
                        ("attempts".into(), progress.last_attempts as f64),
                        ("deferral_rate".into(), progress.last_deferral_rate),
                        ("block_rate".into(), progress.last_block_rate),
                        ("complaint_rate".into(), progress.last_complaint_rate),
                        ("stage".into(), (progress.stage + 1) as f64),
                    ]),
                },
            }
            .with_id();
            if let Some(said) = active.upsert(decision, TimeDelta::days(1)) {
                out.push(said);
            }
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn judge(plan: &WarmupPlan, progress: &mut Progress, store: &ReputationStore, day: i64) {
    let as_of = day_start(day + 1) - TimeDelta::milliseconds(1);
    let totals = match &plan.provider {
        Some(provider) => store.totals(Scope::EgressSourceProvider, &plan.egress_source, Some(provider), 1440, as_of),
        None => store.totals(Scope::EgressSource, &plan.egress_source, None, 1440, as_of),
    };
    let attempts = totals.attempts();
    let rate = |hits: u64, of: u64| if of == 0 { 0.0 } else { hits as f64 / of as f64 };
    progress.last_day = Some(as_of.date_naive());
    progress.last_attempts = attempts;
    progress.last_deferral_rate = rate(totals.get(Metric::Deferred), attempts);
    progress.last_block_rate = rate(totals.get(Metric::Blocks), attempts);
    progress.last_complaint_rate = rate(totals.get(Metric::Complaints), totals.get(Metric::Delivered));
    let evidence = attempts >= plan.min_volume;
    if evidence
        && (progress.last_block_rate > plan.max_block_rate || progress.last_complaint_rate > plan.max_complaint_rate)
    {
        progress.stage = progress.stage.saturating_sub(1);
        progress.days_on_stage = 0;
        progress.state = "stepped_back".into();
    } else if evidence && progress.last_deferral_rate > plan.max_deferral_rate {
        progress.days_on_stage = 0;
        progress.state = "holding".into();
    } else {
        progress.days_on_stage += 1;
        progress.state = "warming".into();
        if progress.days_on_stage >= plan.stages[progress.stage].days {
            if progress.stage + 1 == plan.stages.len() {
                progress.state = "done".into();
            } else {
                progress.stage += 1;
                progress.days_on_stage = 0;
            }
        }
    }
    progress.daily_limit = plan.stages[progress.stage].daily;
}
