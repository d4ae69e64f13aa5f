//! Rate rules: a failure rate over a window, with a minimum volume, that throttles an egress
//! source (per provider) to a share of its baseline and gives the rate back step by step.
//!
//! Each rule is evaluated once per minute of the events' clock, for every target that had
//! traffic since the last evaluation and every target it holds throttled:
//! - **Trigger**: at least `min_volume` attempts in `window` and `metric / attempts >=
//!   threshold`. Below the volume nothing happens, however bad the rate: a handful of
//!   deferrals is not evidence.
//! - **Throttle**: the setting goes to `reduce_to` % of `baseline` (never under `floor`), or
//!   the ready queues are suspended (`action = "suspend"`). Still failing a `healthy_for`
//!   later, it is reduced again by the same share.
//! - **Hysteresis**: healthy means under `recover_below`, which is lower than `threshold`;
//!   a rate between the two holds the throttle where it is and restarts the healthy clock, so
//!   a rate wobbling around the threshold cannot flap the throttle on and off.
//! - **Recovery**: each `healthy_for` of health steps the share up by `step_up` points;
//!   reaching 100 %, or `lift_after` of continuous health, lifts the throttle.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::active::ActiveActions;
use super::decision::{ActionKind, Decision, Evidence, SettingValue, Status, Target};
use crate::reputation::{Metric, ReputationStore, Scope};

/// A rate rule as written in the rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRuleConfig {
    pub name: String,
    /// `deferred`, `bounced`, `blocks`, `signals`, `hard_bounces`, `expired` (of attempts) or
    /// `complaints` (of delivered).
    pub metric: String,
    /// `egress_source,provider` (default) or `egress_source`.
    #[serde(default = "default_scope")]
    pub scope: String,
    pub window: String,
    pub threshold: f64,
    pub min_volume: u64,
    pub recover_below: f64,
    pub healthy_for: String,
    /// `throttle` (default) or `suspend`.
    #[serde(default = "default_action")]
    pub action: String,
    /// The setting throttled: `max_message_rate` or `connection_limit`.
    #[serde(default)]
    pub setting: Option<String>,
    /// The setting's normal value: `"1000/h"` for a rate, an integer for a limit.
    #[serde(default)]
    pub baseline: Option<toml::Value>,
    /// Percent of the baseline to throttle to.
    #[serde(default = "default_reduce_to")]
    pub reduce_to: u32,
    #[serde(default)]
    pub floor: Option<toml::Value>,
    /// Percentage points given back per healthy period.
    #[serde(default = "default_step_up")]
    pub step_up: u32,
    /// Continuous health after which the throttle is lifted at once.
    #[serde(default)]
    pub lift_after: Option<String>,
    /// The longest a throttle or suspension lasts without being renewed.
    #[serde(default = "default_max_duration")]
    pub max_duration: String,
    #[serde(default)]
    pub shadow: bool,
}

fn default_scope() -> String {
    "egress_source,provider".into()
}
fn default_action() -> String {
    "throttle".into()
}
fn default_reduce_to() -> u32 {
    50
}
fn default_step_up() -> u32 {
    25
}
fn default_max_duration() -> String {
    "24h".into()
}

/// A throttled setting's value: a count per period (`"1000/h"`) or a plain count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    pub amount: u64,
    /// `Some("h")` for a rate.
    pub per: Option<&'static str>,
}

impl Quantity {
    fn parse(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(n) if *n > 0 => Ok(Self { amount: *n as u64, per: None }),
            toml::Value::String(text) => {
                let (amount, per) = text.split_once('/').ok_or_else(|| format!("`{text}` is not N/period"))?;
                let amount = amount.trim().parse().map_err(|_| format!("`{text}` does not start with a count"))?;
                let per = match per.trim() {
                    "s" | "sec" | "second" => "s",
                    "m" | "min" | "minute" => "m",
                    "h" | "hr" | "hour" => "h",
                    "d" | "day" => "d",
                    other => return Err(format!("unknown period `{other}` in `{text}`")),
                };
                Ok(Self { amount, per: Some(per) })
            }
            other => Err(format!("`{other}` is neither a positive integer nor N/period")),
        }
    }

    /// `percent` of this, never under `floor`.
    fn share(self, percent: u32, floor: u64) -> Self {
        Self { amount: (self.amount * u64::from(percent) / 100).max(floor).max(1), per: self.per }
    }

    fn value(self) -> SettingValue {
        match self.per {
            Some(per) => SettingValue::Text(format!("{}/{per}", self.amount)),
            None => SettingValue::Integer(i64::try_from(self.amount).unwrap_or(i64::MAX)),
        }
    }
}

/// What a rule does to a failing target.
#[derive(Debug, Clone, PartialEq)]
pub enum RateAction {
    Throttle { setting: String, baseline: Quantity, floor: u64 },
    Suspend,
}

/// A compiled rate rule.
#[derive(Debug, Clone)]
pub struct RateRule {
    pub name: String,
    pub metric: Metric,
    pub scope: Scope,
    pub window_minutes: u32,
    pub threshold: f64,
    pub min_volume: u64,
    pub recover_below: f64,
    pub healthy_minutes: u32,
    pub action: RateAction,
    pub reduce_to: u32,
    pub step_up: u32,
    pub lift_after_minutes: Option<u32>,
    pub max_duration: TimeDelta,
    pub shadow: bool,
}

/// A duration such as `15m`, `1h` or `0m`, as whole minutes (zero allowed). The alert rules
/// read their windows and holds with it too.
pub(crate) fn whole_minutes(text: &str, what: &str) -> Result<u32, String> {
    let d: Duration = humantime::parse_duration(text.trim()).map_err(|e| format!("{what} `{text}`: {e}"))?;
    if !d.as_secs().is_multiple_of(60) {
        return Err(format!("{what} `{text}` must be a whole number of minutes"));
    }
    u32::try_from(d.as_secs() / 60).map_err(|_| format!("{what} `{text}` is too long"))
}

fn minutes(text: &str, what: &str) -> Result<u32, String> {
    match whole_minutes(text, what)? {
        0 => Err(format!("{what} `{text}` must be a whole number of minutes")),
        m => Ok(m),
    }
}

impl RateRule {
    /// Checks and compiles a rule.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn compile(config: RateRuleConfig) -> Result<Self, String> {
        let metric =
            Metric::parse(&config.metric).filter(|m| !matches!(m, Metric::Delivered | Metric::Opens | Metric::Clicks));
        let metric = metric.ok_or_else(|| format!("metric `{}` is not a failure metric", config.metric))?;
        let scope = match Scope::parse(&config.scope) {
            Some(scope @ (Scope::EgressSource | Scope::EgressSourceProvider)) => scope,
            _ => return Err(format!("scope `{}` must be `egress_source,provider` or `egress_source`", config.scope)),
        };
        let window_minutes = minutes(&config.window, "window")?;
        if window_minutes > crate::reputation::store::HORIZON_MINUTES {
            return Err(format!("window `{}` is longer than the 24 h the store keeps", config.window));
        }
        if !(0.0..=1.0).contains(&config.threshold) || !(0.0..config.threshold).contains(&config.recover_below) {
            return Err(format!(
                "need 0 <= recover_below < threshold <= 1, got recover_below {} and threshold {}",
                config.recover_below, config.threshold
            ));
        }
        if config.min_volume == 0 {
            return Err("min_volume must be at least 1".into());
        }
        if config.reduce_to == 0 || config.reduce_to >= 100 || config.step_up == 0 {
            return Err("reduce_to must be between 1 and 99, step_up at least 1".into());
        }
        let action = match config.action.as_str() {
            "suspend" => RateAction::Suspend,
            "throttle" => {
                let setting = config.setting.clone().ok_or("a throttle needs `setting`")?;
                if !matches!(setting.as_str(), "max_message_rate" | "connection_limit" | "max_connection_rate") {
                    return Err(format!("setting `{setting}` is not one a rate rule can throttle"));
                }
                let baseline = Quantity::parse(config.baseline.as_ref().ok_or("a throttle needs `baseline`")?)?;
                let floor = match &config.floor {
                    Some(value) => {
                        let floor = Quantity::parse(value)?;
                        if floor.per != baseline.per {
                            return Err("`floor` and `baseline` must be in the same unit".into());
                        }
                        floor.amount
                    }
                    None => 1,
                };
                RateAction::Throttle { setting, baseline, floor }
            }
            other => return Err(format!("action `{other}` is not `throttle` or `suspend`")),
        };
        let max_duration = humantime::parse_duration(&config.max_duration)
            .map_err(|e| format!("max_duration `{}`: {e}", config.max_duration))
            .and_then(|d| TimeDelta::from_std(d).map_err(|e| e.to_string()))?;
        Ok(Self {
            name: config.name,
            metric,
            scope,
            window_minutes,
            threshold: config.threshold,
            min_volume: config.min_volume,
            recover_below: config.recover_below,
            healthy_minutes: minutes(&config.healthy_for, "healthy_for")?,
            action,
            reduce_to: config.reduce_to,
            step_up: config.step_up,
            lift_after_minutes: config.lift_after.as_deref().map(|t| minutes(t, "lift_after")).transpose()?,
            max_duration,
            shadow: config.shadow,
        })
    }
}

/// One throttled target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Throttle {
    /// Percent of the baseline in force.
    level: u32,
    /// Minute of the last change.
    changed: u32,
    /// First minute of the current healthy run.
    healthy_since: Option<u32>,
    action_key: String,
}

/// Per rule: the targets it holds throttled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RuleState {
    throttled: BTreeMap<(String, String), Throttle>,
}

/// State of every rate rule, keyed by rule name. Pure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateState {
    rules: BTreeMap<String, RuleState>,
    /// Targets with traffic since the last evaluation: egress source -> providers, with `""`
    /// standing for the source as a whole. Small: one minute's active targets.
    pending: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The last minute evaluated.
    evaluated: Option<u32>,
}

/// A target's figures over a rule's window.
#[derive(Debug, Clone, Copy)]
struct Health {
    attempts: u64,
    hits: u64,
    rate: f64,
}

impl Health {
    /// At least the minimum volume, at or above the threshold.
    fn failing(self, rule: &RateRule) -> bool {
        self.attempts >= rule.min_volume && self.rate >= rule.threshold
    }
}

/// A target's figures over the rule's window ending at `as_of`; `provider` is `""` for
/// per-source rules.
fn health_of(rule: &RateRule, store: &ReputationStore, source: &str, provider: &str, as_of: DateTime<Utc>) -> Health {
    let provider = (rule.scope == Scope::EgressSourceProvider).then_some(provider);
    let totals = store.totals(rule.scope, source, provider, rule.window_minutes, as_of);
    let attempts = if rule.metric == Metric::Complaints { totals.get(Metric::Delivered) } else { totals.attempts() };
    let hits = totals.get(rule.metric);
    #[allow(clippy::cast_precision_loss)]
    let rate = if attempts == 0 { 0.0 } else { hits as f64 / attempts as f64 };
    Health { attempts, hits, rate }
}

fn minute_start(minute: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(minute) * 60, 0).unwrap_or_default()
}

impl RateState {
    /// Notes that a target had traffic (called per event, after [`Self::tick`]).
    pub fn seen(&mut self, rules: &[RateRule], source: Option<&str>, provider: Option<&str>) {
        let (Some(source), false) = (source, rules.is_empty()) else { return };
        // Look up before inserting: the common case allocates nothing.
        let providers = match self.pending.get_mut(source) {
            Some(providers) => providers,
            None => self.pending.entry(source.to_owned()).or_default(),
        };
        for key in [provider, Some("")].into_iter().flatten() {
            if !providers.contains(key) {
                providers.insert(key.to_owned());
            }
        }
    }

    /// Evaluates every rule for each minute completed before `minute` that was not yet
    /// evaluated (at most one: the clock is the watermark, evaluated as it moves).
    pub fn tick(
        &mut self,
        rules: &[RateRule],
        store: &ReputationStore,
        overlay_domain: &dyn Fn(&str) -> Option<String>,
        minute: u32,
        active: &mut ActiveActions,
        out: &mut Vec<Decision>,
    ) {
        let Some(done) = minute.checked_sub(1) else { return };
        if self.evaluated.is_some_and(|e| e >= done) {
            return;
        }
        self.evaluated = Some(done);
        if rules.is_empty() {
            return;
        }
        let as_of = minute_start(minute) - TimeDelta::milliseconds(1);
        // Targets with traffic since the last evaluation, and those held throttled: a target
        // without new traffic is judged again when it has some. This keeps a minute's work
        // proportional to that minute's traffic rather than to every target of the window.
        let pending = std::mem::take(&mut self.pending);
        for rule in rules {
            let state = self.rules.entry(rule.name.clone()).or_default();
            let per_provider = rule.scope == Scope::EgressSourceProvider;
            // Most targets are neither failing nor throttled: judge those without allocating.
            let mut targets: Vec<(String, String)> = state.throttled.keys().cloned().collect();
            for (source, providers) in &pending {
                for provider in providers.iter().filter(|p| p.is_empty() != per_provider) {
                    let health = health_of(rule, store, source, provider, as_of);
                    let held = state.throttled.keys().any(|(s, p)| s == source && p == provider);
                    if !held && health.failing(rule) {
                        targets.push((source.clone(), provider.clone()));
                    }
                }
            }
            targets.sort();
            targets.dedup();
            for target in targets {
                let health = health_of(rule, store, &target.0, &target.1, as_of);
                evaluate(rule, state, &target, health, done, as_of, overlay_domain, active, out);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    rule: &RateRule,
    state: &mut RuleState,
    target: &(String, String),
    health: Health,
    minute: u32,
    as_of: DateTime<Utc>,
    overlay_domain: &dyn Fn(&str) -> Option<String>,
    active: &mut ActiveActions,
    out: &mut Vec<Decision>,
) {
    let failing = health.failing(rule);
    let healthy = health.rate < rule.recover_below;
    // A throttle whose action ran out (max_duration) is over: start afresh.
    if let Some(throttle) = state.throttled.get(target)
        && active.get(&throttle.action_key).is_none()
    {
        state.throttled.remove(target);
    }
    let decision = |level: u32, why: String| build(rule, target, level, health, as_of, overlay_domain, why);
    // A throttle moving to a new level: in force from this minute, announced.
    let mut step = |throttle: &mut Throttle, level: u32, why: String| {
        throttle.level = level;
        throttle.changed = minute;
        if let Some(said) = active.upsert(decision(level, why), TimeDelta::zero()) {
            out.push(said);
        }
    };
    match state.throttled.get_mut(target) {
        None if failing => {
            let level = rule.reduce_to;
            let decision = decision(
                level,
                format!(
                    "{} rate {:.4} >= {} over {} attempts",
                    rule.metric.as_str(),
                    health.rate,
                    rule.threshold,
                    health.attempts
                ),
            );
            let key = decision.action_key.clone();
            if let Some(said) = active.upsert(decision, TimeDelta::zero()) {
                out.push(said);
            }
            state
                .throttled
                .insert(target.clone(), Throttle { level, changed: minute, healthy_since: None, action_key: key });
        }
        None => {}
        Some(throttle) => {
            if failing {
                throttle.healthy_since = None;
                if minute >= throttle.changed + rule.healthy_minutes && rule.action != RateAction::Suspend {
                    let why = format!(
                        "still failing: {} rate {:.4} over {} attempts",
                        rule.metric.as_str(),
                        health.rate,
                        health.attempts
                    );
                    step(throttle, (throttle.level * rule.reduce_to / 100).max(1), why);
                }
            } else if healthy {
                let since = *throttle.healthy_since.get_or_insert(minute);
                let healthy_for = minute - since + 1;
                let lift = rule.lift_after_minutes.is_some_and(|after| healthy_for >= after)
                    || (rule.action == RateAction::Suspend && healthy_for >= rule.healthy_minutes);
                if !lift && healthy_for >= rule.healthy_minutes && minute >= throttle.changed + rule.healthy_minutes {
                    let level = throttle.level + rule.step_up;
                    if level < 100 {
                        let why = format!(
                            "recovering: {} rate {:.4} < {} for {healthy_for} min",
                            rule.metric.as_str(),
                            health.rate,
                            rule.recover_below
                        );
                        step(throttle, level, why);
                        return;
                    }
                } else if !lift {
                    return;
                }
                let key = throttle.action_key.clone();
                state.throttled.remove(target);
                let why = format!(
                    "recovered: {} rate {:.4} < {} for {healthy_for} min",
                    rule.metric.as_str(),
                    health.rate,
                    rule.recover_below
                );
                if let Some(mut lifted) = active.lift(&key, as_of, why) {
                    // A lift's evidence is the health that lifted it, not the failure that
                    // applied the throttle (which the applied decision already shows).
                    lifted.evidence.metrics = evidence_metrics(rule, health, 100);
                    out.push(lifted);
                }
            } else {
                // Between recover_below and threshold: hold, and health has to start over.
                throttle.healthy_since = None;
            }
        }
    }
}

/// What a decision of `rule` shows as its evidence: the health it was judged on, the rule's
/// bounds and the level it sets.
fn evidence_metrics(rule: &RateRule, health: Health, level: u32) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    #[allow(clippy::cast_precision_loss)]
    {
        metrics.insert("attempts".into(), health.attempts as f64);
        metrics.insert(rule.metric.as_str().into(), health.hits as f64);
    }
    metrics.insert("rate".into(), health.rate);
    metrics.insert("threshold".into(), rule.threshold);
    metrics.insert("recover_below".into(), rule.recover_below);
    metrics.insert("level_percent".into(), f64::from(level));
    metrics
}

fn build(
    rule: &RateRule,
    target: &(String, String),
    level: u32,
    health: Health,
    as_of: DateTime<Utc>,
    overlay_domain: &dyn Fn(&str) -> Option<String>,
    reason: String,
) -> Decision {
    let provider = (rule.scope == Scope::EgressSourceProvider).then(|| target.1.clone());
    let (action, setting, value) = match &rule.action {
        RateAction::Throttle { setting, baseline, floor } => {
            (ActionKind::SetConfig, Some(setting.clone()), Some(baseline.share(level, *floor).value()))
        }
        RateAction::Suspend => (ActionKind::SuspendReadyQueue, None, None),
    };
    let metrics = evidence_metrics(rule, health, level);
    Decision {
        decision_id: String::new(),
        status: if rule.shadow { Status::Shadow } else { Status::Applied },
        at: as_of,
        action,
        target: Target {
            egress_source: Some(target.0.clone()),
            domain: provider.as_deref().and_then(overlay_domain),
            provider,
            ..Target::default()
        },
        setting,
        value,
        mx_rollup: true,
        expires: as_of + rule.max_duration,
        reason: format!("rate rule {}: {reason}", rule.name),
        rule: rule.name.clone(),
        action_key: format!("rate:{}:{}:{}", rule.name, target.0, target.1),
        evidence: Evidence {
            event_id: None,
            response: None,
            count: Some(health.hits),
            window_seconds: Some(u64::from(rule.window_minutes) * 60),
            metrics,
        },
    }
    .with_id()
}
