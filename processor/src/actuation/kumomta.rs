//! Decisions in the shapes KumoMTA's side of TSA reads: the subscription frames, the
//! shaping overlay, `suspended.json` and `bounced.json` (KUMOMTA.md §3.1-3.2). Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::decision::{ActionKind, Decision, Status};

pub use vigil_schemas::tsa::{ReadyQSuspension, SchedQBounce, SchedQSuspension, SubscriptionItem, Suspensions};

/// TSA's `rule_hash` of a frame: the action key without Vigil's selector suffix (after a
/// tab: egress paths contain `|`).
fn rule_hash(decision: &Decision) -> String {
    let key = decision.action_key.split('\t').next().unwrap_or_default();
    match decision.action {
        // TSA sends only the hash part for ready queues; the site is its own field.
        ActionKind::SuspendReadyQueue => key.rsplit_once('-').map_or(key, |(_, hash)| hash).to_owned(),
        _ => key.to_owned(),
    }
}

/// The frame an applied decision is announced with; `None` for shadow, ending and
/// config decisions (config reaches kumod through the overlay).
#[must_use]
pub fn frame(decision: &Decision) -> Option<SubscriptionItem> {
    if decision.status != Status::Applied {
        return None;
    }
    let target = &decision.target;
    Some(match decision.action {
        ActionKind::SuspendReadyQueue => SubscriptionItem::ReadyQSuspension(ReadyQSuspension {
            rule_hash: rule_hash(decision),
            site_name: target.site.clone()?,
            reason: decision.reason.clone(),
            source: target.egress_source.clone()?,
            expires: decision.expires,
        }),
        ActionKind::SuspendScheduled => SubscriptionItem::SchedQSuspension(SchedQSuspension {
            rule_hash: rule_hash(decision),
            tenant: target.tenant.clone()?,
            domain: target.domain.clone()?,
            campaign: target.campaign.clone(),
            reason: decision.reason.clone(),
            expires: decision.expires,
        }),
        ActionKind::Bounce => SubscriptionItem::SchedQBounce(SchedQBounce {
            rule_hash: rule_hash(decision),
            domain: target.domain.clone()?,
            tenant: target.tenant.clone(),
            campaign: target.campaign.clone(),
            reason: decision.reason.clone(),
            expires: decision.expires,
        }),
        ActionKind::SetConfig => return None,
    })
}

/// The frames of every action in force, in the order the daemon replays them on connect:
/// ready-queue suspensions, then scheduled-queue suspensions, then bounces, each by expiry.
pub fn replay_frames<'a>(in_force: impl Iterator<Item = &'a Decision>) -> Vec<SubscriptionItem> {
    let (suspensions, bounces) = split(in_force);
    let mut frames: Vec<SubscriptionItem> =
        suspensions.ready_q.into_iter().map(SubscriptionItem::ReadyQSuspension).collect();
    frames.extend(suspensions.sched_q.into_iter().map(SubscriptionItem::SchedQSuspension));
    frames.extend(bounces.into_iter().map(SubscriptionItem::SchedQBounce));
    frames
}

/// `suspended.json` and `bounced.json` of the actions in force, sorted as TSA sorts them.
pub fn split<'a>(in_force: impl Iterator<Item = &'a Decision>) -> (Suspensions, Vec<SchedQBounce>) {
    let mut suspensions = Suspensions::default();
    let mut bounces = Vec::new();
    for item in in_force.filter_map(frame) {
        match item {
            SubscriptionItem::ReadyQSuspension(s) => suspensions.ready_q.push(s),
            SubscriptionItem::SchedQSuspension(s) => suspensions.sched_q.push(s),
            SubscriptionItem::SchedQBounce(b) => bounces.push(b),
        }
    }
    suspensions.ready_q.sort_by(|a, b| (a.expires, &a.source, &a.site_name).cmp(&(b.expires, &b.source, &b.site_name)));
    suspensions.sched_q.sort_by(|a, b| {
        (a.expires, &a.tenant, &a.domain, &a.campaign).cmp(&(b.expires, &b.tenant, &b.domain, &b.campaign))
    });
    bounces.sort_by(|a, b| {
        (a.expires, &a.tenant, &a.domain, &a.campaign).cmp(&(b.expires, &b.tenant, &b.domain, &b.campaign))
    });
    (suspensions, bounces)
}

fn quoted(key: &str) -> String {
    toml::Value::String(key.to_owned()).to_string()
}

/// The shaping overlay (`GET /get_config_v1/shaping.toml`) of the config overrides in force:
/// by recipient domain, then egress source. As tsa-daemon builds it: overrides are taken in
/// order of expiry (then domain, source, setting), so a domain's `mx_rollup` is that of its
/// override that expires first, and for one setting of one path the one that lasts longest
/// wins; the header counts every override in force, before that collapsing.
pub fn overlay<'a>(in_force: impl Iterator<Item = &'a Decision>) -> String {
    // domain -> (mx_rollup, source -> setting -> decision)
    type Sources<'a> = BTreeMap<&'a str, BTreeMap<&'a str, &'a Decision>>;
    let mut overrides: Vec<(&Decision, &str, &str, &str)> = in_force
        .filter(|d| d.status == Status::Applied && d.action == ActionKind::SetConfig && d.value.is_some())
        .filter_map(|d| {
            Some((d, d.target.domain.as_deref()?, d.target.egress_source.as_deref()?, d.setting.as_deref()?))
        })
        .collect();
    overrides.sort_by(|a, b| (a.0.expires, a.1, a.2, a.3).cmp(&(b.0.expires, b.1, b.2, b.3)));
    let entries = overrides.len();
    let mut domains: BTreeMap<&str, (bool, Sources<'a>)> = BTreeMap::new();
    for (decision, domain, source, setting) in overrides {
        let (_, sources) = domains.entry(domain).or_insert((decision.mx_rollup, BTreeMap::new()));
        // Later in the order means it lasts at least as long.
        sources.entry(source).or_default().insert(setting, decision);
    }
    let mut out = format!("# Generated by Vigil (TSA-compatible)\n# Number of entries: {entries}\n");
    for (domain, (mx_rollup, sources)) in &domains {
        let _ = write!(out, "\n[{}]\nmx_rollup = {mx_rollup}\n", quoted(domain));
        for (source, settings) in sources {
            let _ = write!(out, "\n[{}.sources.{}]\n", quoted(domain), quoted(source));
            for (setting, decision) in settings {
                let value = decision.value.as_ref().map(super::decision::SettingValue::to_toml).unwrap_or_default();
                let _ = write!(
                    out,
                    "# reason: {}\n# expires: {}\n{} = {value}\n",
                    decision.reason.replace('\n', " "),
                    decision.expires.to_rfc3339(),
                    quoted(setting)
                );
            }
        }
    }
    out
}
