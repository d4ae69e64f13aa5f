//! Alert rules over the reputation view, folded like the rest of the state.
//!
//! # Contract
//! - A rule names a metric of a scope (a rate with the side of its 95 % bounds it compares,
//!   a count, decisions taken, or a source gone silent), a window, a threshold, a minimum
//!   volume under which it never fires, a `for` duration and a `keep_firing_for`.
//! - Rules are evaluated once per minute of the events' clock (the latest `ingested_at` folded,
//!   as the rules that act are), for every scope value of the rule's scope that had traffic in
//!   its window: the alert history is a function of the log, so `vigil replay` reproduces it
//!   (`alerts_digest`). A minute measures again only the scope values whose windows changed
//!   (found by the store's [`WindowFollower`]s), and decides exactly what measuring every value
//!   would: a test holds the two side by side.
//! - Each (rule, scope value) is a state machine: inactive -> pending (the condition holds) ->
//!   firing (it held for `for`) -> resolved (it stopped holding for `keep_firing_for`) ->
//!   inactive. A pending alert whose condition stops holding goes back to inactive without a
//!   notice. Each firing and each resolve is an [`AlertNotice`], exactly once.
//! - Alerts and their recent history are bounded: at most [`MAX_ALERTS`] alerts tracked and the
//!   last [`MAX_HISTORY`] notices kept.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::actuation::rate::whole_minutes as minutes;
use crate::reputation::store::minute_of;
use crate::reputation::{
    Followed, LabelKind, Metric, Rate, Rates, ReputationStore, Scope, ScopeValues, SeriesId, Totals, WindowFollower,
};

/// Alerts tracked at once (pending, firing, or resolved and kept for `keep_firing_for`).
pub const MAX_ALERTS: usize = 10_000;
/// Notices kept for `GET /api/v1/alerts?state=resolved` and the digest.
pub const MAX_HISTORY: usize = 1_000;
/// Notices kept for the notifier at most: a rebuild from an old snapshot (or `vigil replay`,
/// which sends nothing) must not grow memory without bound; the oldest go first, said once.
pub const MAX_UNSENT: usize = 10_000;
/// The longest window a rule may use: what the reputation store keeps.
const MAX_WINDOW_MINUTES: u32 = crate::reputation::store::HORIZON_MINUTES;

/// How bad it is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// Which side of a rate's 95 % interval is compared: `lower` fires only when the rate is
/// confidently over the threshold (the default: few events do not page anyone), `upper` when
/// it may be, `value` on the point estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    #[default]
    Lower,
    Value,
    Upper,
}

/// An alert rule as written in `[[alerting.rules]]` or the rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    pub name: String,
    /// A rate (`complaint_rate` of delivered; `bounce_rate`, `hard_bounce_rate`, `block_rate`,
    /// `deferral_rate`, `signal_rate` of attempts), a count (`complaints`, `bounced`,
    /// `hard_bounces`, `blocks`, `deferred`, `signals`, `attempts`), `signal:<name>` (a provider
    /// signal such as `signal:yahoo_tss04`), `decisions` (applied by the rules that act) or
    /// `silent` (no attempts in the window after traffic in the window before).
    pub metric: String,
    /// `egress_source,provider` (default), `egress_source`, `egress_pool`, `provider`,
    /// `sending_domain`, `tenant`, `campaign`.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Only scope values whose fields equal these (`provider = "yahoo"`).
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// `15m`, `1h`, `24h`.
    pub window: String,
    /// A rate as a fraction (`0.003` is 0.3 %), or a count.
    pub threshold: f64,
    /// For rates, the side of the interval compared.
    #[serde(default)]
    pub bound: Bound,
    /// Attempts (delivered, for `complaint_rate`) the window needs before the rule judges.
    #[serde(default)]
    pub min_volume: u64,
    /// How long the condition holds before the alert fires. Default `0m`.
    #[serde(default = "zero", rename = "for")]
    pub for_duration: String,
    /// How long a firing alert stays firing after the condition stops holding. Default `0m`.
    #[serde(default = "zero")]
    pub keep_firing_for: String,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// Labels added to the alert's own (`alertname`, `severity`, the scope's fields).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// One line for humans, with `{scope}`, `{value}`, `{lower}`, `{upper}`, `{of}` and
    /// `{threshold}` (rates as percentages).
    #[serde(default)]
    pub summary: Option<String>,
}

fn default_scope() -> String {
    "egress_source,provider".into()
}

fn zero() -> String {
    "0m".into()
}

fn default_severity() -> Severity {
    Severity::Warning
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Measure {
    /// `Rates::of` field name.
    Rate(String),
    Count(Metric),
    Signal(String),
    Decisions,
    Silent,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    measure: Measure,
    pub metric: String,
    pub scope: Scope,
    matchers: Vec<(String, String)>,
    pub window_minutes: u32,
    pub threshold: f64,
    bound: Bound,
    min_volume: u64,
    for_minutes: u32,
    keep_firing_minutes: u32,
    pub severity: Severity,
    labels: BTreeMap<String, String>,
    summary: Option<String>,
}

const RATES: [&str; 6] =
    ["complaint_rate", "bounce_rate", "hard_bounce_rate", "block_rate", "deferral_rate", "signal_rate"];

fn count_metric(name: &str) -> Option<Metric> {
    Some(match name {
        "complaints" => Metric::Complaints,
        "bounced" => Metric::Bounced,
        "hard_bounces" => Metric::HardBounces,
        "blocks" => Metric::Blocks,
        "deferred" => Metric::Deferred,
        "delivered" => Metric::Delivered,
        "signals" => Metric::Signals,
        _ => return None,
    })
}

impl AlertRule {
    /// Checks and compiles a rule.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn compile(config: AlertRuleConfig) -> Result<Self, String> {
        let measure = match config.metric.as_str() {
            rate if RATES.contains(&rate) => Measure::Rate(rate.to_owned()),
            "attempts" => Measure::Count(Metric::Delivered),
            "decisions" => Measure::Decisions,
            "silent" => Measure::Silent,
            other if other.starts_with("signal:") => Measure::Signal(other["signal:".len()..].to_owned()),
            other => Measure::Count(count_metric(other).ok_or_else(|| {
                format!(
                    "metric `{other}` is none of {}, complaints, bounced, hard_bounces, blocks, deferred, signals, attempts, signal:<name>, decisions, silent",
                    RATES.join(", ")
                )
            })?),
        };
        let scope =
            Scope::parse(&config.scope).ok_or_else(|| format!("scope `{}` is not a reputation scope", config.scope))?;
        let fields: Vec<&str> = scope.as_str().split(',').collect();
        for field in config.matchers.keys() {
            if !fields.contains(&field.as_str()) {
                return Err(format!("matcher `{field}` is not a field of scope `{}`", scope.as_str()));
            }
        }
        let window_minutes = minutes(&config.window, "window")?;
        if window_minutes == 0 || window_minutes > MAX_WINDOW_MINUTES {
            return Err(format!("window `{}` must be 1m to 24h", config.window));
        }
        if let Measure::Signal(name) = &measure
            && !crate::reputation::SignalMatcher::names().any(|known| known == name)
        {
            let known: Vec<&str> = crate::reputation::SignalMatcher::names().collect();
            return Err(format!("signal `{name}` is none of {}", known.join(", ")));
        }
        if measure == Measure::Silent && window_minutes * 2 > MAX_WINDOW_MINUTES {
            return Err(format!(
                "window `{}` of a `silent` rule must be at most 12h (it looks back twice as far)",
                config.window
            ));
        }
        if measure == Measure::Decisions && !fields.iter().any(|f| *f == "egress_source" || *f == "provider") {
            return Err(format!(
                "`decisions` are counted per egress source and provider; scope `{}` has neither",
                scope.as_str()
            ));
        }
        if matches!(measure, Measure::Rate(_)) && !(0.0..=1.0).contains(&config.threshold) {
            return Err(format!("threshold {} of a rate must be a fraction (0.003 is 0.3 %)", config.threshold));
        }
        Ok(Self {
            measure,
            metric: config.metric.clone(),
            scope,
            matchers: config.matchers.into_iter().collect(),
            window_minutes,
            threshold: config.threshold,
            bound: config.bound,
            min_volume: config.min_volume,
            for_minutes: minutes(&config.for_duration, "for")?,
            keep_firing_minutes: minutes(&config.keep_firing_for, "keep_firing_for")?,
            severity: config.severity,
            labels: config.labels,
            summary: config.summary,
            name: config.name,
        })
    }
}

impl Severity {
    /// The configuration's and the labels' spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl AlertRule {
    /// How often, in minutes of the events' clock, the rule is judged.
    fn cadence_minutes(&self) -> u32 {
        (self.window_minutes / 96).max(1)
    }

    /// The window its scope values are read over: a `silent` rule looks at the window before
    /// the one it judges too.
    fn looked_at(&self) -> u32 {
        let minutes = if self.measure == Measure::Silent { self.window_minutes * 2 } else { self.window_minutes };
        minutes.min(MAX_WINDOW_MINUTES)
    }
}

/// The rules file's alert part.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertFile {
    #[serde(default)]
    alert: Vec<AlertRuleConfig>,
}

const DEFAULT_ALERTS: &str = include_str!("../data/rules/alerts.toml");

/// Compiles the `[[alert]]` rules of `text` (the bundled set when it is `None`).
///
/// # Errors
/// A TOML error (with its line) or the first invalid rule, by name.
pub fn compile_rules(name: &str, text: Option<&str>) -> Result<Vec<AlertRule>, String> {
    let file: AlertFile = toml::from_str(text.unwrap_or(DEFAULT_ALERTS)).map_err(|e| format!("{name}: {e}"))?;
    let mut seen = std::collections::BTreeSet::new();
    file.alert
        .into_iter()
        .map(|config| {
            if !seen.insert(config.name.clone()) {
                return Err(format!("{name}: two alert rules are named `{}`", config.name));
            }
            let rule = config.name.clone();
            AlertRule::compile(config).map_err(|e| format!("{name}: alert rule `{rule}`: {e}"))
        })
        .collect()
}

/// The bundled alert rules (`processor/data/rules/alerts.toml`).
#[must_use]
pub fn bundled() -> Vec<AlertRule> {
    compile_rules("builtin:alerts", None).expect("the bundled alert rules are valid")
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

/// One (rule, scope value) that is not inactive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// Stable per (rule, scope value): receivers group and deduplicate on it.
    pub fingerprint: String,
    pub rule: String,
    pub state: AlertState,
    pub severity: Severity,
    /// `alertname`, `severity`, the scope's fields and the rule's labels.
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    /// When the condition started holding.
    pub active_since: DateTime<Utc>,
    /// When it fired (absent while pending).
    pub fired_at: Option<DateTime<Utc>>,
    /// When it resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The condition last held at this minute.
    pub last_true: DateTime<Utc>,
    /// The measured value at the last evaluation that held (a rate as a fraction).
    pub value: f64,
    /// The rate's 95 % bounds and its denominator, for rates.
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub of: u64,
    /// The most frequent failure classes and signals in the window, most first.
    pub top: Vec<(String, u64)>,
}

/// A firing or a resolve, to notify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertNotice {
    /// `<fingerprint>:<fired_at>:firing|resolved`: the same notice has the same id.
    pub id: String,
    pub alert: Alert,
}

/// The alerting part of the derived state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertingState {
    /// By fingerprint.
    alerts: BTreeMap<String, Alert>,
    history: VecDeque<AlertNotice>,
    /// The last minute evaluated.
    evaluated: Option<u32>,
    /// Decisions applied per (egress source, provider) and minute, for `decisions` rules.
    decisions: BTreeMap<(String, String), Vec<u32>>,
    /// The events' clock: the latest `ingested_at` folded.
    now: Option<DateTime<Utc>>,
    /// Notices not yet taken by the notifier ([`Self::take_notices`]); not snapshotted (the
    /// history is).
    #[serde(skip)]
    unsent: Vec<AlertNotice>,
    /// Per (scope, window, cadence), the window's follower and the minute it was last
    /// followed at; per rule, what held at its last judgement. Together they let a minute
    /// re-measure only the scope values whose windows changed. Not snapshotted: a rule without
    /// them is judged on every scope value once, with the same outcome.
    #[serde(skip)]
    followers: BTreeMap<(Scope, u32, u32), (WindowFollower, Option<u32>)>,
    #[serde(skip)]
    judged: BTreeMap<String, Judged>,
}

/// What a rule held at its last judgement.
#[derive(Debug, Clone)]
struct Judged {
    rule: AlertRule,
    minute: u32,
    held: Held,
}

/// The scope values a rule's condition holds for, by series: fingerprint, fields, measurement.
type Held = BTreeMap<SeriesId, (String, Vec<(String, String)>, Measured)>;

/// A window followed this minute: when it was followed before, and the series that changed in
/// it with their totals (`None` when the follower could not tell).
type FollowedThisMinute = (Option<u32>, Option<Vec<(SeriesId, Totals)>>);

fn minute_start(minute: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(minute) * 60, 0).unwrap_or_default()
}

impl AlertingState {
    /// Notes a decision applied by the rules that act, for `decisions` rules.
    pub fn on_decision(&mut self, at: DateTime<Utc>, egress_source: Option<&str>, provider: Option<&str>) {
        let key = (egress_source.unwrap_or("").to_owned(), provider.unwrap_or("").to_owned());
        self.decisions.entry(key).or_default().push(minute_of(at));
    }

    /// Moves the events' clock to `at` (it never goes back) and evaluates every rule for each
    /// whole minute before it not yet evaluated; new firings and resolves are kept for
    /// [`Self::take_notices`] and in the history.
    pub fn tick(&mut self, rules: &[AlertRule], store: &ReputationStore, at: DateTime<Utc>) {
        let now = self.now.map_or(at, |n| n.max(at));
        self.now = Some(now);
        let minute = minute_of(now);
        let Some(done) = minute.checked_sub(1) else { return };
        let from = match self.evaluated {
            Some(last) if last >= done => return,
            // After a gap (no events for a while), only the last two minutes are judged: the
            // windows saw nothing new in between.
            Some(last) => (last + 1).max(done.saturating_sub(1)),
            None => done,
        };
        let mut out = std::mem::take(&mut self.unsent);
        self.forget_unloaded(rules, minute_start(done), &mut out);
        for m in from..=done {
            self.evaluate(rules, store, m, &mut out);
        }
        if out.len() > MAX_UNSENT {
            let dropped = out.len() - MAX_UNSENT;
            out.drain(..dropped);
            // Said once per process: a replay of a long log would say it every minute.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(dropped, "alert notices not taken by a notifier were dropped (oldest first)");
            }
        }
        self.unsent = out;
        self.evaluated = Some(done);
        // Decisions older than the longest window cannot count any more.
        let oldest = done.saturating_sub(MAX_WINDOW_MINUTES);
        self.decisions.retain(|_, minutes| {
            minutes.retain(|m| *m >= oldest);
            !minutes.is_empty()
        });
    }

    /// Alerts of rules that are no longer loaded (removed or renamed on a reload) are never
    /// judged again: a firing one is resolved (told once), the others dropped.
    fn forget_unloaded(&mut self, rules: &[AlertRule], at: DateTime<Utc>, out: &mut Vec<AlertNotice>) {
        let gone: Vec<String> = self
            .alerts
            .iter()
            .filter(|(_, a)| !rules.iter().any(|r| r.name == a.rule))
            .map(|(f, _)| f.clone())
            .collect();
        for fingerprint in gone {
            if let Some(mut alert) = self.alerts.remove(&fingerprint)
                && alert.state == AlertState::Firing
            {
                alert.state = AlertState::Resolved;
                alert.resolved_at = Some(at);
                notify(&mut self.history, out, &alert, "resolved");
            }
        }
    }

    fn evaluate(&mut self, rules: &[AlertRule], store: &ReputationStore, minute: u32, out: &mut Vec<AlertNotice>) {
        let as_of = minute_start(minute + 1) - TimeDelta::milliseconds(1);
        let at = minute_start(minute);
        self.judged.retain(|name, _| rules.iter().any(|r| r.name == *name));
        self.followers.retain(|(scope, window, cadence), _| {
            rules.iter().any(|r| {
                r.scope == *scope
                    && r.cadence_minutes() == *cadence
                    && (r.looked_at() == *window || (r.measure == Measure::Silent && r.window_minutes == *window))
            })
        });
        // Each window is followed once a minute, for every rule judged on it, with the totals
        // of what changed in it.
        let mut followed = BTreeMap::new();
        for rule in rules {
            // Long windows move slowly: a rule is judged every 1/96 of its window (a 24 h
            // complaint rate every 15 minutes, anything up to 1 h every minute), which keeps the
            // fold's cost per minute of events bounded by the short windows.
            if !minute.is_multiple_of(rule.cadence_minutes()) {
                continue;
            }
            let held = self.judge(rule, store, minute, as_of, &mut followed);
            // In the fingerprints' order, which does not depend on how the store numbers series.
            let mut holding: Holding = held
                .values()
                .map(|(fingerprint, values, m)| (fingerprint.clone(), (values.clone(), m.clone())))
                .collect();
            if rule.measure == Measure::Silent {
                self.silent_holding(rule, store, as_of, &mut holding);
            }
            self.advance(rule, &holding, at, out);
            self.judged.insert(rule.name.clone(), Judged { rule: rule.clone(), minute, held });
        }
    }

    /// The scope values `rule`'s condition holds for this minute. Only the values whose windows
    /// changed since its last judgement are measured again (the others would measure the
    /// same); every value when that cannot be told.
    fn judge(
        &mut self,
        rule: &AlertRule,
        store: &ReputationStore,
        minute: u32,
        as_of: DateTime<Utc>,
        followed: &mut BTreeMap<(Scope, u32, u32), FollowedThisMinute>,
    ) -> Held {
        let looked_at = rule.looked_at();
        // A `silent` rule also reads the recent window of each value.
        let windows: &[u32] =
            if rule.measure == Measure::Silent { &[looked_at, rule.window_minutes] } else { &[looked_at] };
        let key = |window: u32| (rule.scope, window, rule.cadence_minutes());
        for &window in windows {
            followed.entry(key(window)).or_insert_with(|| {
                let (follower, last) = self
                    .followers
                    .entry(key(window))
                    .or_insert_with(|| (WindowFollower::new(rule.scope, window), None));
                let changed = match store.follow(follower, as_of) {
                    Followed::Everything => None,
                    Followed::Changed(changed) => Some(changed),
                };
                (last.replace(minute), changed)
            });
        }
        let previous = self.judged.remove(&rule.name).filter(|judged| {
            judged.rule == *rule
                && windows
                    .iter()
                    .all(|w| matches!(&followed[&key(*w)], (Some(last), Some(_)) if *last == judged.minute))
        });
        let Some(previous) = previous else {
            let everything = store.window_totals(rule.scope, looked_at, as_of);
            return self.measure_changed(rule, store, minute, as_of, Held::new(), &everything);
        };
        let (_, Some(changed)) = &followed[&key(looked_at)] else { unreachable!("checked above") };
        // The series whose other window changed (a `silent` rule's recent one), or whose count of
        // decisions may have, read over the rule's own window.
        let mut more: Vec<SeriesId> = Vec::new();
        if let [_, recent] = windows
            && let (_, Some(ids)) = &followed[&key(*recent)]
        {
            more.extend(ids.iter().map(|(id, _)| *id));
        }
        if rule.measure == Measure::Decisions {
            self.decided_series(rule, store, previous.minute, &mut more);
        }
        more.sort_unstable();
        more.dedup();
        more.retain(|id| changed.binary_search_by_key(id, |(c, _)| *c).is_err());
        let more: Vec<(SeriesId, Totals)> =
            more.into_iter().map(|id| (id, store.series_totals(id, looked_at, as_of))).collect();
        let held = self.measure_changed(rule, store, minute, as_of, previous.held, changed);
        self.measure_changed(rule, store, minute, as_of, held, &more)
    }

    /// `held` with the series of `candidates` (and their totals over the rule's window)
    /// measured again.
    fn measure_changed(
        &self,
        rule: &AlertRule,
        store: &ReputationStore,
        minute: u32,
        as_of: DateTime<Utc>,
        mut held: Held,
        candidates: &[(SeriesId, Totals)],
    ) -> Held {
        for (id, totals) in candidates {
            if !rule.matchers.iter().all(|(k, v)| store.series_value(*id, k) == Some(v.as_str())) {
                continue;
            }
            match (!totals.is_empty()).then(|| self.measure(rule, store, *id, totals, minute, as_of)).flatten() {
                Some(measured) => match held.get_mut(id) {
                    Some(entry) => entry.2 = measured,
                    None => {
                        let values: Vec<(String, String)> =
                            store.series_values(*id).values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                        held.insert(*id, (fingerprint(&rule.name, &values), values, measured));
                    }
                },
                None => {
                    held.remove(id);
                }
            }
        }
        held
    }

    /// The series a `decisions` rule counts a decision for in its window now or at its last
    /// judgement: their counts may have changed with no change in traffic.
    fn decided_series(&self, rule: &AlertRule, store: &ReputationStore, last_judged: u32, ids: &mut Vec<SeriesId>) {
        let first = last_judged.saturating_sub(rule.window_minutes - 1);
        for ((source, provider), minutes) in &self.decisions {
            if !minutes.iter().any(|m| *m >= first) {
                continue;
            }
            let values = rule
                .scope
                .fields()
                .iter()
                .map(|field| (*field, if *field == "provider" { provider.clone() } else { source.clone() }))
                .collect();
            ids.extend(store.series_id(&ScopeValues { scope: rule.scope, values }));
        }
    }

    /// `silent` judged as the docs say: only while some other value of the scope is sending
    /// (a gap in every log, or a restart, is not every source going silent at once), and an
    /// alert already pending or firing keeps holding while its source stays silent, even once
    /// its old traffic has left the window it was judged on.
    fn silent_holding(&self, rule: &AlertRule, store: &ReputationStore, as_of: DateTime<Utc>, holding: &mut Holding) {
        let sending = store.any_attempts(rule.scope, rule.window_minutes, as_of);
        if !sending {
            holding.clear();
            return;
        }
        let fields: Vec<&str> = rule.scope.as_str().split(',').collect();
        let prefix = format!("{}\u{1}", rule.name);
        for (fingerprint, alert) in self.alerts.range(prefix.clone()..format!("{}\u{2}", rule.name)) {
            if holding.contains_key(fingerprint) || alert.state == AlertState::Resolved {
                continue;
            }
            let values: Vec<(String, String)> =
                fields.iter().filter_map(|f| alert.labels.get(*f).map(|v| ((*f).to_owned(), v.clone()))).collect();
            let (Some(first), second) = (values.first(), values.get(1)) else { continue };
            let recent =
                store.totals(rule.scope, &first.1, second.map(|(_, v)| v.as_str()), rule.window_minutes, as_of);
            if recent.attempts() == 0 {
                let measured = Measured { value: 0.0, lower: None, upper: None, of: alert.of, top: Vec::new() };
                holding.insert(fingerprint.clone(), (values, measured));
            }
        }
    }

    /// The measurement when the rule's condition holds for the series, whose totals over the
    /// rule's window are `totals`.
    fn measure(
        &self,
        rule: &AlertRule,
        store: &ReputationStore,
        id: SeriesId,
        totals: &Totals,
        minute: u32,
        as_of: DateTime<Utc>,
    ) -> Option<Measured> {
        // Labels are read only for a series that holds.
        let top = || {
            let row = store.series_row(id, rule.looked_at(), as_of);
            let mut top: Vec<(String, u64)> = row.labels.into_iter().map(|((_, name), n)| (name, n)).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(5);
            top
        };
        let judged = |volume: u64| volume >= rule.min_volume.max(1);
        // A count of the window's events, judged on its attempts.
        let counted = |count: u64| {
            (judged(totals.attempts()) && count as f64 >= rule.threshold).then(|| Measured {
                value: count as f64,
                lower: None,
                upper: None,
                of: totals.attempts(),
                top: top(),
            })
        };
        match &rule.measure {
            Measure::Rate(name) => {
                let rates = Rates::of(totals);
                let rate: Rate = match name.as_str() {
                    "complaint_rate" => rates.complaint,
                    "bounce_rate" => rates.bounce,
                    "hard_bounce_rate" => rates.hard_bounce,
                    "block_rate" => rates.block,
                    "deferral_rate" => rates.deferral,
                    _ => rates.signal,
                }?;
                let side = match rule.bound {
                    Bound::Lower => rate.lower,
                    Bound::Value => rate.value,
                    Bound::Upper => rate.upper,
                };
                (judged(rate.of) && side >= rule.threshold).then(|| Measured {
                    value: rate.value,
                    lower: Some(rate.lower),
                    upper: Some(rate.upper),
                    of: rate.of,
                    top: top(),
                })
            }
            Measure::Count(metric) => {
                let count = if rule.metric == "attempts" { totals.attempts() } else { totals.get(*metric) };
                counted(count)
            }
            Measure::Signal(name) => {
                counted(store.series_label(id, LabelKind::Signal, name, rule.window_minutes, as_of))
            }
            Measure::Decisions => {
                let source = store.series_value(id, "egress_source");
                let provider = store.series_value(id, "provider");
                let first = minute.saturating_sub(rule.window_minutes - 1);
                let count: usize = self
                    .decisions
                    .iter()
                    .filter(|((s, p), _)| source.is_none_or(|x| x == s) && provider.is_none_or(|x| x == p))
                    .map(|(_, minutes)| minutes.iter().filter(|m| (first..=minute).contains(*m)).count())
                    .sum();
                (count as f64 >= rule.threshold.max(1.0)).then(|| Measured {
                    value: count as f64,
                    lower: None,
                    upper: None,
                    of: totals.attempts(),
                    top: Vec::new(),
                })
            }
            Measure::Silent => {
                // The totals cover two windows; silent when the last one saw no attempt.
                let recent = store.series_totals(id, rule.window_minutes, as_of);
                let before = totals.attempts();
                (recent.attempts() == 0 && judged(before)).then(|| Measured {
                    value: 0.0,
                    lower: None,
                    upper: None,
                    of: before,
                    top: Vec::new(),
                })
            }
        }
    }

    /// Moves each (rule, scope value) of `rule` one minute on.
    fn advance(&mut self, rule: &AlertRule, holding: &Holding, at: DateTime<Utc>, out: &mut Vec<AlertNotice>) {
        for (fingerprint, (values, measured)) in holding {
            if !self.alerts.contains_key(fingerprint) && self.alerts.len() >= MAX_ALERTS {
                tracing::warn!(rule = %rule.name, "alert table full; new alerts are not tracked until some resolve");
                continue;
            }
            let alert =
                self.alerts.entry(fingerprint.clone()).or_insert_with(|| new_alert(rule, fingerprint, values, at));
            if alert.state == AlertState::Resolved {
                *alert = new_alert(rule, fingerprint, values, at);
            }
            alert.last_true = at;
            alert.value = measured.value;
            alert.lower = measured.lower;
            alert.upper = measured.upper;
            alert.of = measured.of;
            alert.top.clone_from(&measured.top);
            alert.summary = summary(rule, values, measured);
            if alert.state == AlertState::Pending && at >= alert.active_since + minutes_delta(rule.for_minutes) {
                alert.state = AlertState::Firing;
                alert.fired_at = Some(at);
                notify(&mut self.history, out, alert, "firing");
            }
        }
        let keep = minutes_delta(rule.keep_firing_minutes);
        let mut gone = Vec::new();
        for (fingerprint, alert) in self.alerts.range_mut(format!("{}\u{1}", rule.name)..format!("{}\u{2}", rule.name))
        {
            if holding.contains_key(fingerprint) {
                continue;
            }
            match alert.state {
                AlertState::Pending => gone.push(fingerprint.clone()),
                AlertState::Firing if at > alert.last_true + keep => {
                    alert.state = AlertState::Resolved;
                    alert.resolved_at = Some(at);
                    notify(&mut self.history, out, alert, "resolved");
                    gone.push(fingerprint.clone());
                }
                _ => {}
            }
        }
        for fingerprint in gone {
            self.alerts.remove(&fingerprint);
        }
    }

    /// Forgets what makes judging incremental, as a restore does.
    #[cfg(test)]
    fn forget_judgements(&mut self) {
        self.judged.clear();
        self.followers.clear();
    }

    /// The notices decided since the last call, in order.
    pub fn take_notices(&mut self) -> Vec<AlertNotice> {
        std::mem::take(&mut self.unsent)
    }

    /// Alerts now, by state (pending and firing), most recent first.
    #[must_use]
    pub fn alerts(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.alerts.values().cloned().collect();
        alerts.sort_by(|a, b| b.active_since.cmp(&a.active_since).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
        alerts
    }

    /// How many alerts are in each state and severity now.
    #[must_use]
    pub fn tally(&self) -> BTreeMap<(AlertState, Severity), usize> {
        let mut tally = BTreeMap::new();
        for alert in self.alerts.values() {
            *tally.entry((alert.state, alert.severity)).or_default() += 1;
        }
        tally
    }

    /// The last notices, newest first.
    #[must_use]
    pub fn history(&self) -> Vec<AlertNotice> {
        self.history.iter().rev().cloned().collect()
    }

    pub fn digest_into(&self, hasher: &mut blake3::Hasher) {
        if let Ok(bytes) = postcard::to_stdvec(&(
            &self.alerts.keys().collect::<Vec<_>>(),
            &self.history.iter().map(|n| &n.id).collect::<Vec<_>>(),
        )) {
            hasher.update(&bytes);
        }
    }
}

/// The scope values a rule holds for this minute, by fingerprint: their fields and measurement.
type Holding = BTreeMap<String, (Vec<(String, String)>, Measured)>;

#[derive(Debug, Clone, PartialEq)]
struct Measured {
    value: f64,
    lower: Option<f64>,
    upper: Option<f64>,
    of: u64,
    top: Vec<(String, u64)>,
}

fn minutes_delta(minutes: u32) -> TimeDelta {
    TimeDelta::minutes(i64::from(minutes))
}

/// `<rule>\u{1}<field>=<value>,...`: rules sort apart, so one rule's alerts are a range.
fn fingerprint(rule: &str, values: &[(String, String)]) -> String {
    let fields: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{rule}\u{1}{}", fields.join(","))
}

fn new_alert(rule: &AlertRule, fingerprint: &str, values: &[(String, String)], at: DateTime<Utc>) -> Alert {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.as_str().to_owned());
    for (field, value) in values {
        labels.insert(field.clone(), value.clone());
    }
    Alert {
        fingerprint: fingerprint.to_owned(),
        rule: rule.name.clone(),
        state: AlertState::Pending,
        severity: rule.severity,
        labels,
        summary: String::new(),
        active_since: at,
        fired_at: None,
        resolved_at: None,
        last_true: at,
        value: 0.0,
        lower: None,
        upper: None,
        of: 0,
        top: Vec::new(),
    }
}

fn notify(history: &mut VecDeque<AlertNotice>, out: &mut Vec<AlertNotice>, alert: &Alert, what: &str) {
    let fired = alert.fired_at.map(|t| t.timestamp()).unwrap_or_default();
    let notice =
        AlertNotice { id: format!("{}:{fired}:{what}", alert.fingerprint.replace('\u{1}', "/")), alert: alert.clone() };
    if history.len() >= MAX_HISTORY {
        history.pop_front();
    }
    history.push_back(notice.clone());
    out.push(notice);
}

fn summary(rule: &AlertRule, values: &[(String, String)], m: &Measured) -> String {
    let scope: Vec<String> = values.iter().map(|(_, v)| v.clone()).collect();
    let is_rate = matches!(rule.measure, Measure::Rate(_));
    let show = |x: f64| if is_rate { format!("{:.2} %", x * 100.0) } else { format!("{x}") };
    let template = rule.summary.clone().unwrap_or_else(|| {
        if is_rate {
            format!(
                "{} {{value}} (95 % {{lower}} to {{upper}}) of {{of}} for {{scope}}, threshold {{threshold}}",
                rule.metric
            )
        } else {
            format!("{} {{value}} for {{scope}}, threshold {{threshold}}", rule.metric)
        }
    });
    template
        .replace("{scope}", &scope.join(" x "))
        .replace("{value}", &show(m.value))
        .replace("{lower}", &m.lower.map(show).unwrap_or_default())
        .replace("{upper}", &m.upper.map(show).unwrap_or_default())
        .replace("{of}", &m.of.to_string())
        .replace("{threshold}", &show(rule.threshold))
}

#[cfg(test)]
mod tests {
    use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

    use super::*;

    /// Minute 0 of the tests: 2026-01-01T00:00Z.
    const START: i64 = 1_767_225_600;

    fn at(minute: i64, second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(START + minute * 60 + second, 0).unwrap()
    }

    fn event(
        kind: EventKind,
        class: Option<&str>,
        source: &str,
        provider: &str,
        minute: i64,
        n: usize,
    ) -> DeliveryEvent {
        let when = at(minute, (n % 60) as i64);
        let mut e = DeliveryEvent::new(format!("{minute}-{n}"), SourceKind::Kumomta, kind, when, when);
        e.egress_source = Some(source.into());
        e.provider = Some(provider.into());
        e.bounce_class = class.map(BounceClass::from_label);
        e
    }

    /// Folds `events` in order, ticking the alert state as the fold does; returns the notices.
    fn fold(
        state: &mut AlertingState,
        store: &mut ReputationStore,
        rules: &[AlertRule],
        events: &[DeliveryEvent],
    ) -> Vec<AlertNotice> {
        for e in events {
            store.record(e, None);
            state.tick(rules, store, e.ingested_at);
        }
        state.take_notices()
    }

    /// An hour of traffic for one pair at minute `minute`: `attempts` attempts of which
    /// `blocks` spam blocks.
    fn minute_of_traffic(
        source: &str,
        provider: &str,
        minute: i64,
        attempts: usize,
        blocks: usize,
    ) -> Vec<DeliveryEvent> {
        (0..attempts)
            .map(|n| {
                if n < blocks {
                    event(EventKind::Bounced, Some("SpamBlock"), source, provider, minute, n)
                } else {
                    event(EventKind::Delivered, None, source, provider, minute, n)
                }
            })
            .collect()
    }

    fn block_rule() -> Vec<AlertRule> {
        bundled().into_iter().filter(|r| r.name == "block-rate").collect()
    }

    #[test]
    fn the_bundled_rules_compile_and_bad_rules_say_why() {
        assert!(bundled().len() >= 8);
        let bad = "[[alert]]\nname = \"x\"\nmetric = \"spam\"\nwindow = \"1h\"\nthreshold = 1\n";
        assert!(compile_rules("f.toml", Some(bad)).unwrap_err().contains("alert rule `x`: metric `spam`"));
        let bad = "[[alert]]\nname = \"x\"\nmetric = \"block_rate\"\nwindow = \"1h\"\nthreshold = 5\n";
        assert!(compile_rules("f.toml", Some(bad)).unwrap_err().contains("fraction"));
        let bad = "[[alert]]\nname = \"x\"\nmetric = \"blocks\"\nwindow = \"2d\"\nthreshold = 5\n";
        assert!(compile_rules("f.toml", Some(bad)).unwrap_err().contains("1m to 24h"));
        let typo = "[[alert]]\nname = \"x\"\nmetric = \"blocks\"\nwindow = \"1h\"\nthreshold = 5\nseverty = \"info\"\n";
        let error = compile_rules("f.toml", Some(typo)).unwrap_err();
        assert!(error.contains("severty") && error.contains("line 6"), "{error}");
    }

    #[test]
    fn twelve_percent_blocks_over_three_hundred_attempts_fire_within_a_minute_and_small_pairs_stay_quiet() {
        let rules = block_rule();
        let (mut state, mut store) = (AlertingState::default(), ReputationStore::new());
        let mut events = Vec::new();
        // An hour: 5 attempts a minute, 12 % of them blocks on the bad pair (300 attempts, 36
        // blocks); a healthy pair with 1 %; a small pair with 40 % of 60 attempts.
        for minute in 0..60 {
            // 3 blocks every 5 minutes: 36 of 300.
            events.extend(minute_of_traffic("ip-1", "yahoo", minute, 5, usize::from(minute % 5 < 3)));
            events.extend(minute_of_traffic("ip-2", "google", minute, 5, usize::from(minute % 20 == 0)));
            events.extend(minute_of_traffic("ip-3", "yahoo", minute, 1, usize::from(minute % 5 < 2)));
        }
        let notices = fold(&mut state, &mut store, &rules, &events);
        let firing: Vec<_> = notices.iter().filter(|n| n.alert.state == AlertState::Firing).collect();
        assert_eq!(firing.len(), 1, "{:#?}", notices);
        let alert = &firing[0].alert;
        assert_eq!(alert.labels.get("egress_source").map(String::as_str), Some("ip-1"));
        assert_eq!(alert.labels.get("provider").map(String::as_str), Some("yahoo"));
        assert_eq!(alert.labels.get("alertname").map(String::as_str), Some("block-rate"));
        assert!(alert.lower.unwrap() >= 0.05 && alert.of >= 200, "{alert:?}");
        assert_eq!(alert.top.first().map(|(name, _)| name.as_str()), Some("SpamBlock"));
        // Within a minute of the event time at which the condition first held.
        let fired = alert.fired_at.unwrap();
        let held = (1..=60).find(|m| {
            let totals = store.totals(
                Scope::EgressSourceProvider,
                "ip-1",
                Some("yahoo"),
                60,
                at(*m, 0) - TimeDelta::milliseconds(1),
            );
            Rates::of(&totals).block.is_some_and(|r| r.of >= 200 && r.lower >= 0.05)
        });
        assert!(held.is_some_and(|m| fired <= at(m, 0) + TimeDelta::minutes(1)), "fired {fired}, held from {held:?}");
    }

    #[test]
    fn for_durations_hold_back_and_one_resolve_follows_keep_firing_for() {
        let text = r#"
[[alert]]
name = "blocks"
metric = "blocks"
window = "5m"
threshold = 3
for = "3m"
keep_firing_for = "2m"
"#;
        let rules = compile_rules("t", Some(text)).unwrap();
        let (mut state, mut store) = (AlertingState::default(), ReputationStore::new());
        // Minutes 0..10: a block a minute (3 in any 5-minute window from minute 2); then
        // deliveries only.
        let mut events = Vec::new();
        for minute in 0..10 {
            events.extend(minute_of_traffic("ip-1", "google", minute, 2, 1));
        }
        let notices = fold(&mut state, &mut store, &rules, &events);
        let fired: Vec<_> = notices.iter().map(|n| (n.alert.state, n.alert.fired_at)).collect();
        // Holding from minute 2 (blocks at 0, 1, 2), firing 3 minutes later, at minute 5.
        assert_eq!(fired, [(AlertState::Firing, Some(at(5, 0)))]);
        assert_eq!(state.alerts()[0].active_since, at(2, 0));
        let mut healthy = Vec::new();
        for minute in 10..30 {
            healthy.extend(minute_of_traffic("ip-1", "google", minute, 2, 0));
        }
        let notices = fold(&mut state, &mut store, &rules, &healthy);
        let states: Vec<_> = notices.iter().map(|n| n.alert.state).collect();
        assert_eq!(states, [AlertState::Resolved], "exactly one resolve");
        // The window last held 3 blocks at minute 11 (blocks at 7, 8, 9 in (6, 11]); resolved
        // more than keep_firing_for (2 minutes) later.
        assert_eq!(notices[0].alert.resolved_at, Some(at(14, 0)));
        assert!(state.alerts().is_empty());
        assert_eq!(state.history().len(), 2);
    }

    #[test]
    fn a_pending_alert_that_stops_holding_is_dropped_without_a_notice() {
        let text = "[[alert]]\nname = \"b\"\nmetric = \"blocks\"\nwindow = \"2m\"\nthreshold = 2\nfor = \"10m\"\n";
        let rules = compile_rules("t", Some(text)).unwrap();
        let (mut state, mut store) = (AlertingState::default(), ReputationStore::new());
        let mut events = minute_of_traffic("ip-1", "google", 0, 3, 2);
        for minute in 1..8 {
            events.extend(minute_of_traffic("ip-1", "google", minute, 3, 0));
        }
        assert!(fold(&mut state, &mut store, &rules, &events).is_empty());
        assert!(state.alerts().is_empty());
    }

    #[test]
    fn a_source_that_goes_silent_fires_once() {
        let rules: Vec<AlertRule> = bundled().into_iter().filter(|r| r.name == "source-silent").collect();
        let (mut state, mut store) = (AlertingState::default(), ReputationStore::new());
        let mut events = Vec::new();
        for minute in 0..40 {
            events.extend(minute_of_traffic("ip-2", "google", minute, 5, 0));
            if minute < 20 {
                events.extend(minute_of_traffic("ip-1", "google", minute, 5, 0));
            }
        }
        let notices = fold(&mut state, &mut store, &rules, &events);
        let silent: Vec<_> = notices.iter().map(|n| (n.alert.labels["egress_source"].clone(), n.alert.state)).collect();
        assert_eq!(silent, [("ip-1".to_owned(), AlertState::Firing)]);
        // Its old traffic leaves every window, and it still has not sent: it keeps firing.
        let mut later = Vec::new();
        for minute in 40..120 {
            later.extend(minute_of_traffic("ip-2", "google", minute, 5, 0));
        }
        assert!(fold(&mut state, &mut store, &rules, &later).is_empty(), "no resolve while ip-1 is silent");
        assert_eq!(state.alerts().len(), 1);
        // It sends again: resolved once.
        let back = minute_of_traffic("ip-1", "google", 120, 5, 0)
            .into_iter()
            .chain(minute_of_traffic("ip-2", "google", 121, 5, 0));
        let notices = fold(&mut state, &mut store, &rules, &back.collect::<Vec<_>>());
        assert_eq!(notices.iter().map(|n| n.alert.state).collect::<Vec<_>>(), [AlertState::Resolved]);
    }

    /// Judging only what changed decides what judging everything decides, minute by minute:
    /// bursts, late events, gaps long and short, decisions, sources going silent and coming
    /// back, eviction and renumbered names, rules with a cadence over a minute and matchers.
    #[test]
    fn judging_what_changed_decides_what_judging_everything_decides() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let extra = "[[alert]]\nname = \"blocks-4h\"\nmetric = \"blocks\"\nwindow = \"4h\"\nthreshold = 30\n\
            [[alert]]\nname = \"ip-1-deferrals\"\nmetric = \"deferral_rate\"\nwindow = \"10m\"\nthreshold = 0.2\n\
            min_volume = 5\nmatchers = { egress_source = \"ip-1\" }\n\
            [[alert]]\nname = \"provider-silent\"\nmetric = \"silent\"\nscope = \"provider\"\nwindow = \"5m\"\n\
            threshold = 0\nmin_volume = 3\n\
            [[alert]]\nname = \"decided\"\nmetric = \"decisions\"\nscope = \"provider\"\nwindow = \"20m\"\nthreshold = 1\n";
        let mut rules = bundled();
        rules.extend(compile_rules("t", Some(extra)).unwrap());
        let mut rng = StdRng::seed_from_u64(18);
        let (mut incremental, mut everything, mut store) =
            (AlertingState::default(), AlertingState::default(), ReputationStore::new());
        let sources = ["ip-1", "ip-2", "ip-3", "ip-4"];
        let providers = ["google", "yahoo", "microsoft"];
        let mut minute = 0i64;
        let (mut events, mut fired) = (0usize, 0usize);
        while minute < 30 * 60 {
            // Mostly a minute on; now and then a gap of a few minutes or of hours.
            minute += match rng.random_range(0..100) {
                0 => rng.random_range(60..300),
                1..=5 => rng.random_range(2..10),
                _ => 1,
            };
            // A source and a provider that stop for a while.
            let quiet_source = (minute / 90 % 5) as usize;
            let quiet_provider = (minute / 200 % 4) as usize;
            for n in 0..rng.random_range(0..25) {
                let (s, p) = (rng.random_range(0..sources.len()), rng.random_range(0..providers.len()));
                if s == quiet_source || p == quiet_provider {
                    continue;
                }
                let (kind, class, signal) = match rng.random_range(0..20) {
                    0..=2 => (EventKind::Bounced, Some("SpamBlock"), None),
                    3 => (EventKind::Complaint, None, None),
                    4..=6 => (EventKind::Deferred, Some("TransientFailure"), Some("yahoo_tss04")),
                    _ => (EventKind::Delivered, None, None),
                };
                let mut e = event(kind, class, sources[s], providers[p], minute, n);
                e.campaign = Some(if minute < 150 { format!("once-{events}") } else { "weekly".into() });
                if rng.random_range(0..10) == 0 {
                    e.occurred_at -= TimeDelta::minutes(rng.random_range(1..120));
                }
                store.record(&e, signal);
                if rng.random_range(0..40) == 0 {
                    for state in [&mut incremental, &mut everything] {
                        state.on_decision(e.ingested_at, e.egress_source.as_deref(), e.provider.as_deref());
                    }
                }
                incremental.tick(&rules, &store, e.ingested_at);
                everything.forget_judgements();
                everything.tick(&rules, &store, e.ingested_at);
                assert_eq!(incremental.alerts(), everything.alerts(), "at minute {minute}, event {n}");
                events += 1;
                if events % 97 == 0 {
                    store.evict();
                }
            }
            let notices = incremental.take_notices();
            assert_eq!(notices, everything.take_notices(), "at minute {minute}");
            fired += notices.len();
        }
        assert!(fired > 20, "the stream fires and resolves alerts: {fired}");
        assert_eq!(incremental.history(), everything.history());
    }

    #[test]
    fn a_gap_in_every_log_is_not_every_source_going_silent() {
        let rules: Vec<AlertRule> = bundled().into_iter().filter(|r| r.name == "source-silent").collect();
        let (mut state, mut store) = (AlertingState::default(), ReputationStore::new());
        let mut events = Vec::new();
        for minute in 0..20 {
            events.extend(minute_of_traffic("ip-1", "google", minute, 5, 0));
            events.extend(minute_of_traffic("ip-2", "google", minute, 5, 0));
        }
        // Nothing for 20 minutes (Vigil down, or every MTA), then one event.
        events.extend(minute_of_traffic("ip-1", "google", 41, 1, 0));
        assert!(fold(&mut state, &mut store, &rules, &events).is_empty());
        assert!(state.alerts().is_empty());
    }

    #[test]
    fn alerts_of_a_rule_no_longer_loaded_resolve_once() {
        let rules = block_rule();
        let (mut state, mut store) = (AlertingState::default(), ReputationStore::new());
        let mut events = Vec::new();
        for minute in 0..60 {
            events.extend(minute_of_traffic("ip-1", "yahoo", minute, 5, 2));
        }
        assert_eq!(fold(&mut state, &mut store, &rules, &events).len(), 1);
        let later = minute_of_traffic("ip-1", "yahoo", 61, 5, 2);
        let notices = fold(&mut state, &mut store, &[], &later);
        assert_eq!(notices.iter().map(|n| n.alert.state).collect::<Vec<_>>(), [AlertState::Resolved]);
        assert!(state.alerts().is_empty());
    }

    #[test]
    fn rules_that_could_never_fire_are_refused() {
        let rule = |metric: &str, scope: &str, window: &str| {
            format!(
                "[[alert]]\nname = \"x\"\nmetric = \"{metric}\"\nscope = \"{scope}\"\nwindow = \"{window}\"\nthreshold = 1\n"
            )
        };
        let error = compile_rules("f", Some(&rule("signal:yahoo_tss4", "provider", "1h"))).unwrap_err();
        assert!(error.contains("signal `yahoo_tss4`") && error.contains("yahoo_tss04"), "{error}");
        assert!(compile_rules("f", Some(&rule("silent", "egress_source", "13h"))).unwrap_err().contains("12h"));
        assert!(compile_rules("f", Some(&rule("decisions", "tenant", "1h"))).unwrap_err().contains("neither"));
        assert!(compile_rules("f", Some(&rule("signal:yahoo_tss04", "provider", "1h"))).is_ok());
    }
}
