//! KumoMTA's traffic-shaping automation (TSA), as `tsa-daemon` applies it, on the events'
//! clock.
//!
//! For each delivery attempt the automation rules of the shaping files are matched against
//! the response line in TSA's order (`default`, providers, sites, domains); every matching
//! rule counts (all fire, none stops the search). An `Immediate` rule triggers at once; a
//! `Threshold` rule when `N` matching responses for the same egress path (`record.site`)
//! fall within the rule's `duration` — TSA's window, which is not the `/hr` of `"N/hr"` (see
//! docs/actuation.md). A trigger puts the rule's actions in force until the response's
//! timestamp plus `duration`; a later trigger extends them.
//!
//! Where Vigil differs from `tsa-daemon`, on purpose:
//! - "Now" is the event's `ingested_at`, not the wall clock, so a replay decides the same.
//! - Provider `MXSuffix` / `HostName` matches are checked against the MX host the attempt
//!   used (`mx_host`), not a fresh MX lookup; a rollup destination (`mx_rollup`, the
//!   default) covers the domains seen going to the same site as the named domain.
//! - A repeat trigger that extends an action by less than a tenth of its duration (at
//!   least a minute) is not announced again; the action's expiry is what was announced.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use vigil_schemas::{DeliveryEvent, EventKind};

use super::active::ActiveActions;
use super::decision::{ActionKind, Decision, Evidence, SettingValue, Status, Target};
use crate::shaping::{Action, AutomationRule, ConfigValue, ProviderMatch, RuleScope, ShapingRules};

/// KumoMTA's egress source when a record names none.
const UNSPECIFIED_SOURCE: &str = "unspecified";

/// Threshold counts and learnt sites. Pure: no clock, no I/O.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TsaState {
    /// Timestamps (ms) of matching responses per rule hash and egress path, sorted.
    history: BTreeMap<String, BTreeMap<String, Vec<i64>>>,
    /// The MX site each domain named by a rollup destination was last seen going to.
    sites: BTreeMap<String, String>,
    /// Scratch space for rule candidates and the response line, kept to avoid allocations
    /// per event.
    #[serde(skip)]
    candidates: Vec<usize>,
    #[serde(skip)]
    line: String,
}

/// What of an event the rules look at.
struct Attempt<'a> {
    domain: &'a str,
    source: &'a str,
    /// `record.site`: `source->mx-site@smtp_client`.
    path: &'a str,
    /// The MX site name (`path` without the source and the `@smtp_client`).
    site_name: &'a str,
    mx_host: Option<&'a str>,
    line: &'a str,
    internal: bool,
}

impl<'a> Attempt<'a> {
    /// `line` is the event's response line.
    fn of(event: &'a DeliveryEvent, line: &'a str) -> Option<Self> {
        // The records kumod publishes to TSA by default: attempts and their endings, not
        // receptions, rebinds, delays or transfers.
        if !matches!(event.kind, EventKind::Delivered | EventKind::Deferred | EventKind::Bounced | EventKind::Expired) {
            return None;
        }
        let domain = event.recipient_domain.as_deref()?;
        let source = event.egress_source.as_deref().unwrap_or(UNSPECIFIED_SOURCE);
        let path = event.site.as_deref().unwrap_or("");
        let site_name = path
            .strip_prefix(source)
            .and_then(|rest| rest.strip_prefix("->"))
            .unwrap_or(path)
            .trim_end_matches("@smtp_client");
        Some(Self {
            domain,
            source,
            path,
            site_name,
            mx_host: event.mx_host.as_deref(),
            line,
            // As tsa-daemon: only a response KumoMTA generated itself ("KumoMTA internal:
            // ..."); its administrative bounces and expiries are matched like any other.
            internal: match event.source {
                vigil_schemas::SourceKind::Kumomta => event
                    .response_text
                    .as_deref()
                    .is_some_and(|text| text.starts_with(vigil_schemas::event::KUMOMTA_INTERNAL_PREFIX)),
                _ => event.internal,
            },
        })
    }
}

fn provider_matches(matchers: &[ProviderMatch], attempt: &Attempt<'_>) -> bool {
    matchers.iter().any(|m| match m {
        ProviderMatch::DomainSuffix(suffix) => attempt.domain.ends_with(suffix.as_str()),
        // The MX used, else the site KumoMTA resolved (`(mta5|mta6).am0.yahoodns.net`).
        ProviderMatch::MxSuffix(suffix) => {
            let suffix = suffix.trim_end_matches('.');
            attempt.mx_host.map_or(attempt.site_name, |host| host.trim_end_matches('.')).ends_with(suffix)
        }
        ProviderMatch::HostName(name) => {
            attempt.mx_host.is_some_and(|host| host.trim_end_matches('.').eq_ignore_ascii_case(name))
        }
    })
}

impl TsaState {
    fn destination_matches(&self, name: &str, mx_rollup: bool, attempt: &Attempt<'_>) -> bool {
        name == attempt.domain
            || (mx_rollup
                && !attempt.site_name.is_empty()
                && self.sites.get(name).is_some_and(|s| s == attempt.site_name))
    }

    /// The rules that match, in TSA's order.
    fn matching<'r>(
        &self,
        rules: &'r ShapingRules,
        attempt: &Attempt<'_>,
        candidates: &mut Vec<usize>,
    ) -> Vec<&'r AutomationRule> {
        let scope_order = |rule: &AutomationRule| match &rule.scope {
            RuleScope::Default => 0,
            RuleScope::Provider { .. } => 1,
            RuleScope::Destination { mx_rollup: true, .. } => 2,
            RuleScope::Destination { mx_rollup: false, .. } => 3,
        };
        rules.candidates(attempt.line, candidates);
        let mut matched: Vec<&AutomationRule> = candidates
            .iter()
            .map(|&i| &rules.rules()[i])
            .filter(|rule| match &rule.scope {
                RuleScope::Default => true,
                RuleScope::Provider { name, .. } => provider_matches(rules.provider_matchers(name), attempt),
                RuleScope::Destination { name, mx_rollup } => self.destination_matches(name, *mx_rollup, attempt),
            })
            .filter(|rule| rule.matches(attempt.line, attempt.internal))
            .collect();
        matched.sort_by_key(|rule| scope_order(rule));
        matched
    }

    /// Counts a matching response and returns how many fall in the rule's window.
    fn count(&mut self, rule: &AutomationRule, path: &str, at: i64, now: i64) -> u64 {
        let window = i64::try_from(rule.duration.as_millis()).unwrap_or(i64::MAX);
        // Look up before inserting: a repeat allocates nothing.
        let by_path = match self.history.get_mut(&rule.hash) {
            Some(by_path) => by_path,
            None => self.history.entry(rule.hash.clone()).or_default(),
        };
        let series = match by_path.get_mut(path) {
            Some(series) => series,
            None => by_path.entry(path.to_owned()).or_default(),
        };
        let at_index = series.partition_point(|&t| t <= at);
        series.insert(at_index, at);
        // Keep what a window ending now or a little later can still reach.
        let oldest_kept = now.saturating_sub(window);
        let drop = series.partition_point(|&t| t < oldest_kept);
        series.drain(..drop);
        series.len() as u64
    }

    /// Frees counts no window can reach any more.
    pub fn evict(&mut self, rules: &ShapingRules, now: DateTime<Utc>) {
        let windows: BTreeMap<&str, i64> = rules
            .rules()
            .iter()
            .map(|r| (r.hash.as_str(), i64::try_from(r.duration.as_millis()).unwrap_or(i64::MAX)))
            .collect();
        let now = now.timestamp_millis();
        self.history.retain(|hash, by_path| match windows.get(hash.as_str()) {
            Some(window) => {
                by_path.retain(|_, series| {
                    let drop = series.partition_point(|&t| t < now.saturating_sub(*window));
                    series.drain(..drop);
                    !series.is_empty()
                });
                !by_path.is_empty()
            }
            None => false,
        });
    }

    /// Applies the automation rules to one event: the decisions it causes go to `out`.
    pub fn on_event(
        &mut self,
        rules: &ShapingRules,
        event: &DeliveryEvent,
        active: &mut ActiveActions,
        out: &mut Vec<Decision>,
    ) {
        if rules.rules().is_empty() {
            return;
        }
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        if event.write_response_line(&mut line) {
            self.apply_rules(rules, event, &line, active, out);
        }
        self.line = line;
    }

    fn apply_rules(
        &mut self,
        rules: &ShapingRules,
        event: &DeliveryEvent,
        line: &str,
        active: &mut ActiveActions,
        out: &mut Vec<Decision>,
    ) {
        let Some(attempt) = Attempt::of(event, line) else { return };
        if rules.is_rollup_domain(attempt.domain) && !attempt.site_name.is_empty() {
            self.sites.insert(attempt.domain.to_owned(), attempt.site_name.to_owned());
        }
        let now = event.ingested_at;
        let mut candidates = std::mem::take(&mut self.candidates);
        let matched = self.matching(rules, &attempt, &mut candidates);
        self.candidates = candidates;
        for rule in matched {
            let Ok(duration) = TimeDelta::from_std(rule.duration) else { continue };
            let expires = event.occurred_at + duration;
            if expires <= now {
                // TSA ignores a response whose effect would already be over.
                continue;
            }
            let count = match rule.trigger {
                crate::shaping::Trigger::Immediate => None,
                crate::shaping::Trigger::Threshold { count: limit, .. } => {
                    let seen =
                        self.count(rule, attempt.path, event.occurred_at.timestamp_millis(), now.timestamp_millis());
                    if seen < limit {
                        continue;
                    }
                    Some(seen)
                }
            };
            let min_extension = (duration / 10).max(TimeDelta::minutes(1));
            let status = if rule.shadow { Status::Shadow } else { Status::Applied };
            for (index, action) in rule.actions.iter().enumerate() {
                let Some(key) = action_key(rule.action_hash_at(index), action, &attempt, event) else { continue };
                // Most repeats of a triggered rule change nothing: find out before building one.
                if active.is_covered(&key, status, expires) {
                    continue;
                }
                let decision = decide(rule, action, key, &attempt, event, expires, count);
                if let Some(said) = active.upsert(decision, min_extension) {
                    out.push(said);
                }
            }
        }
    }
}

/// The key an action of a rule is kept under, as TSA keys it (`<egress path>-<hash>`, plus the
/// selectors of scheduled-queue actions after tabs), or `None` when it cannot apply (a tenant
/// action for a message without a tenant, as TSA logs and skips).
fn action_key(action_hash: &str, action: &Action, attempt: &Attempt<'_>, event: &DeliveryEvent) -> Option<String> {
    let (path, domain) = (attempt.path, attempt.domain);
    let campaign = |wanted: bool| if wanted { event.campaign.as_deref().unwrap_or("") } else { "" };
    Some(match action {
        Action::Suspend | Action::SetConfig { .. } | Action::SetDomainConfig { .. } => format!("{path}-{action_hash}"),
        Action::SuspendTenant | Action::SuspendCampaign => {
            let tenant = event.tenant.as_deref()?;
            format!("{path}-{action_hash}\t{domain}\t{tenant}\t{}", campaign(matches!(action, Action::SuspendCampaign)))
        }
        // A plain bounce keeps the queue's tenant when it has one, as tsa-daemon does.
        Action::Bounce => format!("{path}-{action_hash}\t{domain}\t{}\t", event.tenant.as_deref().unwrap_or("")),
        Action::BounceTenant | Action::BounceCampaign => {
            let tenant = event.tenant.as_deref()?;
            format!("{path}-{action_hash}\t{domain}\t{tenant}\t{}", campaign(matches!(action, Action::BounceCampaign)))
        }
    })
}

/// The decision one action of a triggered rule makes, under `key` (from [`action_key`]).
fn decide(
    rule: &AutomationRule,
    action: &Action,
    key: String,
    attempt: &Attempt<'_>,
    event: &DeliveryEvent,
    expires: DateTime<Utc>,
    count: Option<u64>,
) -> Decision {
    let pattern = rule.pattern_text();
    let domain = attempt.domain.to_owned();
    let tenant = event.tenant.clone();
    let campaign = event.campaign.clone();
    let mut target = Target {
        egress_source: Some(attempt.source.to_owned()),
        provider: event.provider.clone(),
        domain: Some(domain.clone()),
        ..Target::default()
    };
    let (kind, reason, setting, value, mx_rollup) = match action {
        Action::Suspend => {
            target.site = Some(attempt.path.to_owned());
            (ActionKind::SuspendReadyQueue, format!("automation rule: {pattern}"), None, None, false)
        }
        Action::SuspendTenant | Action::SuspendCampaign => {
            let tenant = tenant.unwrap_or_default();
            let campaign = campaign.filter(|_| matches!(action, Action::SuspendCampaign));
            let mut reason = format!("automation rule: {pattern} tenant={tenant} domain={domain}");
            if let Some(campaign) = &campaign {
                reason.push_str(&format!(" campaign={campaign}"));
            }
            target.tenant = Some(tenant);
            target.campaign = campaign;
            (ActionKind::SuspendScheduled, reason, None, None, false)
        }
        Action::Bounce | Action::BounceTenant | Action::BounceCampaign => {
            // A plain bounce keeps the queue's tenant too (tsa-daemon), only not its campaign.
            let campaign = campaign.filter(|_| matches!(action, Action::BounceCampaign));
            let mut reason = format!("automation rule: {pattern} domain={domain}");
            if let Some(tenant) = &tenant {
                reason.push_str(&format!(" tenant={tenant}"));
            }
            if let Some(campaign) = &campaign {
                reason.push_str(&format!(" campaign={campaign}"));
            }
            target.tenant = tenant;
            target.campaign = campaign;
            (ActionKind::Bounce, reason, None, None, false)
        }
        Action::SetConfig { name, value } | Action::SetDomainConfig { name, value } => {
            let rollup = matches!(action, Action::SetConfig { .. }) && rule.rolls_up();
            (
                ActionKind::SetConfig,
                format!("automation rule: {pattern}"),
                Some(name.clone()),
                Some(setting_value(value)),
                rollup,
            )
        }
    };
    Decision {
        decision_id: String::new(),
        status: if rule.shadow { Status::Shadow } else { Status::Applied },
        at: event.occurred_at,
        action: kind,
        target,
        setting,
        value,
        mx_rollup,
        expires,
        reason,
        rule: rule.origin.clone(),
        action_key: key,
        evidence: Evidence {
            event_id: Some(event.event_id.clone()),
            response: Some(attempt.line.to_owned()),
            count,
            window_seconds: Some(rule.duration.as_secs()),
            metrics: BTreeMap::new(),
        },
    }
    .with_id()
}

fn setting_value(value: &ConfigValue) -> SettingValue {
    match value {
        ConfigValue::Integer(v) => SettingValue::Integer(*v),
        ConfigValue::Float(v) => SettingValue::Float(*v),
        ConfigValue::Bool(v) => SettingValue::Bool(*v),
        ConfigValue::Text(v) => SettingValue::Text(v.clone()),
    }
}
