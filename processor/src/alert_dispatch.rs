//! Which alert notices go out together, and when: grouping, group wait, group interval, repeat
//! interval and silences, as Prometheus Alertmanager does them, in a pure core each receiver's
//! pusher drives with its own clock.
//!
//! # Contract
//! - Notices are grouped by the values of the receiver's `group_by` labels (`alertname` by
//!   default): fifty scopes of one rule firing in the same minute are one notification.
//! - A new group is told after `group_wait` (more alerts of the group arrive meanwhile); later
//!   changes (a new firing alert, a resolve) after `group_interval` since the group was last
//!   told; a group with nothing new but alerts still firing is told again after
//!   `repeat_interval`. A notification carries every firing alert of the group and the alerts
//!   resolved since the last one; each resolve is told once, then the alert leaves the group.
//! - A silence in force mutes the alerts whose labels it matches: they are not told while it
//!   lasts, and are told at the group's next turn once it expires if they still fire. A
//!   resolve of an alert that was told firing is always told, so no receiver keeps a stale
//!   page open.
//! - Each notification has an id that depends only on what it says (the group, its alerts and
//!   their states, and for a repeat its ordinal), so a notification sent again after a crash
//!   carries the same id: receivers deduplicate on it.
//! - The core never reads a clock: every call takes `now`, so tests drive it minute by minute.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::alerting::{Alert, AlertNotice, AlertState};

/// Alertmanager's defaults, which teams already know.
pub const DEFAULT_GROUP_WAIT: TimeDelta = TimeDelta::seconds(30);
pub const DEFAULT_GROUP_INTERVAL: TimeDelta = TimeDelta::minutes(5);
pub const DEFAULT_REPEAT_INTERVAL: TimeDelta = TimeDelta::hours(4);

/// How a receiver groups and times its notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Labels whose values make a group; empty puts every alert in one group.
    pub group_by: Vec<String>,
    pub group_wait: TimeDelta,
    pub group_interval: TimeDelta,
    pub repeat_interval: TimeDelta,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        Self {
            group_by: vec!["alertname".into()],
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
        }
    }
}

/// A silence: the alerts whose labels equal all of `matchers` are not told between `starts_at`
/// and `ends_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Silence {
    pub id: String,
    pub matchers: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub comment: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
}

impl Silence {
    /// An id for a new silence, from what it is and when it was made.
    #[must_use]
    pub fn new_id(
        created_at: DateTime<Utc>,
        matchers: &BTreeMap<String, String>,
        author: &str,
        comment: &str,
    ) -> String {
        let text = format!("{created_at:?}\n{matchers:?}\n{author}\n{comment}");
        blake3::hash(text.as_bytes()).to_hex()[..16].to_owned()
    }

    /// Whether it mutes an alert with `labels` at `now`.
    #[must_use]
    pub fn mutes(&self, labels: &BTreeMap<String, String>, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at && self.matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One message to a receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Notification {
    /// Stable for the same content: the receivers' deduplication key.
    pub id: String,
    /// `alertname=block-rate,...`: the group, stable while it lives (PagerDuty's `dedup_key`).
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    /// `firing` while any alert of the group fires, else `resolved`.
    pub status: AlertState,
    /// Every alert of the group firing now (not silenced).
    pub firing: Vec<Alert>,
    /// Alerts resolved since the group was last told.
    pub resolved: Vec<Alert>,
}

#[derive(Debug, Clone, Default)]
struct Group {
    labels: BTreeMap<String, String>,
    /// The latest notice per alert fingerprint.
    alerts: BTreeMap<String, Alert>,
    /// What each alert was last told as.
    told: BTreeMap<String, AlertState>,
    created: Option<DateTime<Utc>>,
    last_told: Option<DateTime<Utc>>,
    /// The oldest outbox sequence number whose notice is not told yet.
    oldest_untold: Option<u64>,
}

/// The groups of one receiver.
#[derive(Debug, Clone, Default)]
pub struct Dispatcher {
    policy: GroupPolicy,
    groups: BTreeMap<String, Group>,
}

impl Dispatcher {
    #[must_use]
    pub fn new(policy: GroupPolicy) -> Self {
        Self { policy, groups: BTreeMap::new() }
    }

    fn group_of(&self, alert: &Alert) -> (String, BTreeMap<String, String>) {
        let labels: BTreeMap<String, String> = self
            .policy
            .group_by
            .iter()
            .filter_map(|name| alert.labels.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        let key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        (key.join(","), labels)
    }

    /// Takes a notice read from the outbox at sequence number `seq`.
    pub fn offer(&mut self, seq: u64, notice: &AlertNotice, now: DateTime<Utc>) {
        let (key, labels) = self.group_of(&notice.alert);
        let group = self.groups.entry(key).or_insert_with(|| Group { labels, created: Some(now), ..Group::default() });
        // A resolve for an alert that the group never told firing (it fired and resolved while
        // silenced, or before a restart's seed) still goes out once: the receiver may have it.
        group.alerts.insert(notice.alert.fingerprint.clone(), notice.alert.clone());
        if notice.alert.state == AlertState::Firing {
            // Read from past the receiver's cursor: it has not been told, whatever a seed said;
            // a seeded group then waits only its group wait, not a whole interval.
            if group.told.remove(&notice.alert.fingerprint).is_some() {
                group.last_told = None;
            }
        }
        group.oldest_untold = Some(group.oldest_untold.map_or(seq, |s| s.min(seq)));
    }

    /// After a restart: alerts firing now, already told before it (the receiver's cursor was
    /// past them), so only a repeat tells them again.
    pub fn seed(&mut self, firing: &[Alert], now: DateTime<Utc>) {
        for alert in firing.iter().filter(|a| a.state == AlertState::Firing) {
            let (key, labels) = self.group_of(alert);
            let group = self.groups.entry(key).or_insert_with(|| Group {
                labels,
                created: Some(now),
                last_told: Some(now),
                ..Group::default()
            });
            group.alerts.insert(alert.fingerprint.clone(), alert.clone());
            group.told.insert(alert.fingerprint.clone(), AlertState::Firing);
        }
    }

    /// The alerts of `group` that would be told at `now`: firing and not muted, and resolves of
    /// alerts told firing (or never told at all while not muted).
    fn tellable(group: &Group, now: DateTime<Utc>, silences: &[Silence]) -> (Vec<Alert>, Vec<Alert>, bool) {
        let muted = |alert: &Alert| silences.iter().any(|s| s.mutes(&alert.labels, now));
        let mut firing = Vec::new();
        let mut resolved = Vec::new();
        let mut changed = false;
        for (fingerprint, alert) in &group.alerts {
            let told = group.told.get(fingerprint).copied();
            match alert.state {
                AlertState::Firing if !muted(alert) => {
                    changed |= told != Some(AlertState::Firing);
                    firing.push(alert.clone());
                }
                AlertState::Resolved if told == Some(AlertState::Firing) || (told.is_none() && !muted(alert)) => {
                    changed = true;
                    resolved.push(alert.clone());
                }
                _ => {}
            }
        }
        (firing, resolved, changed)
    }

    /// When the group is next due, if it has anything to tell.
    fn due_at(&self, group: &Group, now: DateTime<Utc>, silences: &[Silence]) -> Option<DateTime<Utc>> {
        let (firing, _, changed) = Self::tellable(group, now, silences);
        match group.last_told {
            None if changed => Some(group.created.unwrap_or(now) + self.policy.group_wait),
            None => None,
            Some(last) if changed => Some(last + self.policy.group_interval),
            Some(last) if !firing.is_empty() => Some(last + self.policy.repeat_interval),
            Some(_) => None,
        }
    }

    /// The earliest time a group is due (to sleep until), if any.
    #[must_use]
    pub fn next_due(&self, now: DateTime<Utc>, silences: &[Silence]) -> Option<DateTime<Utc>> {
        self.groups.values().filter_map(|g| self.due_at(g, now, silences)).min()
    }

    /// The notifications due at `now`; the groups are marked told.
    pub fn due(&mut self, now: DateTime<Utc>, silences: &[Silence]) -> Vec<Notification> {
        let mut out = Vec::new();
        let keys: Vec<String> = self.groups.keys().cloned().collect();
        for key in keys {
            let Some(group) = self.groups.get(&key) else { continue };
            let due = self.due_at(group, now, silences);
            let group = self.groups.get_mut(&key).expect("group present");
            if due.is_none_or(|at| at > now) {
                if !Self::tellable(group, now, silences).2 {
                    // Nothing new to tell (all muted, or only a repeat ahead): its notices are
                    // as told as they will be, so the durable cursor may pass them.
                    group.oldest_untold = None;
                }
                continue;
            }
            let (firing, resolved, changed) = Self::tellable(group, now, silences);
            // A repeat is named by when it was due, so one after a restart is not taken for an
            // earlier one; a change by its content alone, so a re-send after a crash is.
            let repeat_of = if changed { None } else { due.map(|at| at.timestamp()) };
            let status = if firing.is_empty() { AlertState::Resolved } else { AlertState::Firing };
            out.push(Notification {
                id: notification_id(&key, &firing, &resolved, repeat_of),
                group_key: key.clone(),
                group_labels: group.labels.clone(),
                status,
                firing: firing.clone(),
                resolved: resolved.clone(),
            });
            for alert in &firing {
                group.told.insert(alert.fingerprint.clone(), AlertState::Firing);
            }
            for alert in &resolved {
                group.alerts.remove(&alert.fingerprint);
                group.told.remove(&alert.fingerprint);
            }
            // A resolve nobody was told about in time (muted all along) leaves quietly.
            group.alerts.retain(|_, a| a.state != AlertState::Resolved);
            group.last_told = Some(now);
            group.oldest_untold = None;
            if group.alerts.is_empty() {
                self.groups.remove(&key);
            }
        }
        out
    }

    /// The oldest outbox sequence number offered but not told yet: the receiver's durable
    /// cursor may move up to it and no further.
    #[must_use]
    pub fn oldest_untold(&self) -> Option<u64> {
        self.groups.values().filter_map(|g| g.oldest_untold).min()
    }

    /// Groups held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

fn notification_id(key: &str, firing: &[Alert], resolved: &[Alert], repeat_of: Option<i64>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(key.as_bytes());
    for (what, alerts) in [("firing", firing), ("resolved", resolved)] {
        for alert in alerts {
            let fired = alert.fired_at.map(|t| t.timestamp()).unwrap_or_default();
            hasher.update(format!("\n{what}\t{}\t{fired}", alert.fingerprint).as_bytes());
        }
    }
    if let Some(due) = repeat_of {
        hasher.update(format!("\nrepeat\t{due}").as_bytes());
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerting::Severity;

    pub(crate) fn t(minute: i64, second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + minute * 60 + second, 0).unwrap()
    }

    pub(crate) fn alert(rule: &str, source: &str, state: AlertState, fired: DateTime<Utc>) -> Alert {
        let labels: BTreeMap<String, String> =
            [("alertname", rule), ("severity", "warning"), ("egress_source", source), ("provider", "yahoo")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        Alert {
            fingerprint: format!("{rule}\u{1}egress_source={source},provider=yahoo"),
            rule: rule.into(),
            state,
            severity: Severity::Warning,
            labels,
            summary: format!("{rule} on {source}"),
            active_since: fired,
            fired_at: Some(fired),
            resolved_at: (state == AlertState::Resolved).then_some(fired + TimeDelta::minutes(30)),
            last_true: fired,
            value: 0.1,
            lower: Some(0.08),
            upper: Some(0.12),
            of: 300,
            top: vec![("SpamBlock".into(), 36)],
        }
    }

    /// A silence of the alerts whose labels equal `matchers`, from `starts` to `ends`.
    fn silence(matchers: &[(&str, &str)], starts: DateTime<Utc>, ends: DateTime<Utc>) -> Silence {
        Silence {
            id: "s".into(),
            matchers: matchers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            starts_at: starts,
            ends_at: ends,
            comment: String::new(),
            author: String::new(),
            created_at: starts,
        }
    }

    pub(crate) fn notice(alert: Alert) -> AlertNotice {
        AlertNotice { id: format!("{}:{:?}", alert.fingerprint, alert.state), alert }
    }

    #[test]
    fn fifty_scopes_firing_together_are_one_notification_after_the_group_wait() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        for n in 0..50 {
            d.offer(
                n,
                &notice(alert("block-rate", &format!("ip-{n}"), AlertState::Firing, t(0, 0))),
                t(0, n as i64 % 20),
            );
        }
        assert!(d.due(t(0, 29), &[]).is_empty(), "the group waits 30 s from its first alert");
        assert_eq!(d.oldest_untold(), Some(0));
        let sent = d.due(t(0, 30), &[]);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].firing.len(), 50);
        assert_eq!(sent[0].group_labels.get("alertname").map(String::as_str), Some("block-rate"));
        assert_eq!(d.oldest_untold(), None);
        assert!(d.due(t(3, 0), &[]).is_empty(), "nothing new, no repeat yet");
    }

    #[test]
    fn changes_wait_for_the_group_interval_and_repeats_for_the_repeat_interval() {
        let policy = GroupPolicy { repeat_interval: TimeDelta::hours(1), ..GroupPolicy::default() };
        let mut d = Dispatcher::new(policy);
        d.offer(0, &notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))), t(0, 0));
        let first = d.due(t(0, 30), &[]);
        assert_eq!(first.len(), 1);
        d.offer(1, &notice(alert("block-rate", "ip-2", AlertState::Firing, t(1, 0))), t(1, 0));
        assert!(d.due(t(5, 29), &[]).is_empty(), "the group interval runs from the last notification");
        assert_eq!(d.next_due(t(1, 0), &[]), Some(t(5, 30)));
        let second = d.due(t(5, 30), &[]);
        assert_eq!(second[0].firing.len(), 2);
        assert_ne!(first[0].id, second[0].id);
        assert!(d.due(t(65, 29), &[]).is_empty());
        let repeat = d.due(t(65, 30), &[]);
        assert_eq!(repeat.len(), 1, "an hour later the firing group is told again");
        assert_eq!(repeat[0].firing.len(), 2);
        assert_ne!(repeat[0].id, second[0].id, "a repeat is a new notification");
        let again = d.due(t(125, 30), &[]);
        assert_ne!(again[0].id, repeat[0].id);
    }

    #[test]
    fn exactly_one_resolve_and_the_group_is_gone() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        d.offer(0, &notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))), t(0, 0));
        d.due(t(1, 0), &[]);
        d.offer(1, &notice(alert("block-rate", "ip-1", AlertState::Resolved, t(0, 0))), t(10, 0));
        let sent = d.due(t(10, 0), &[]);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].status, sent[0].firing.len(), sent[0].resolved.len()), (AlertState::Resolved, 0, 1));
        assert!(d.is_empty());
        assert!(d.due(t(600, 0), &[]).is_empty(), "one resolve, never again");
    }

    #[test]
    fn a_silence_mutes_then_expires_and_the_alert_is_told() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        let silences = [silence(&[("egress_source", "ip-1")], t(0, 0), t(60, 0))];
        d.offer(0, &notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))), t(0, 0));
        d.offer(1, &notice(alert("block-rate", "ip-2", AlertState::Firing, t(0, 0))), t(0, 0));
        let sent = d.due(t(1, 0), &silences);
        let told: Vec<_> = sent[0].firing.iter().map(|a| a.labels["egress_source"].clone()).collect();
        assert_eq!(told, ["ip-2"], "ip-1 is silenced");
        for minute in 2..60 {
            assert!(d.due(t(minute, 0), &silences).is_empty(), "still silenced at minute {minute}");
        }
        let sent = d.due(t(60, 0), &silences);
        let told: Vec<_> = sent[0].firing.iter().map(|a| a.labels["egress_source"].clone()).collect();
        assert_eq!(told, ["ip-1", "ip-2"], "told once the silence expires");
    }

    #[test]
    fn a_resolve_of_an_alert_told_firing_is_told_even_when_silenced_since() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        d.offer(0, &notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))), t(0, 0));
        d.due(t(1, 0), &[]);
        let silence = silence(&[], t(2, 0), t(600, 0));
        d.offer(1, &notice(alert("block-rate", "ip-1", AlertState::Resolved, t(0, 0))), t(20, 0));
        assert_eq!(d.due(t(20, 0), std::slice::from_ref(&silence))[0].resolved.len(), 1);
    }

    #[test]
    fn a_muted_notice_in_a_group_already_told_does_not_hold_the_cursor() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        d.offer(0, &notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))), t(0, 0));
        d.due(t(1, 0), &[]);
        let silence = silence(&[("egress_source", "ip-2")], t(0, 0), t(600, 0));
        d.offer(1, &notice(alert("block-rate", "ip-2", AlertState::Firing, t(2, 0))), t(2, 0));
        assert!(d.due(t(3, 0), std::slice::from_ref(&silence)).is_empty());
        assert_eq!(d.oldest_untold(), None, "nothing to tell until the silence ends or a repeat");
    }

    #[test]
    fn ids_are_stable_across_a_restart() {
        let run = || {
            let mut d = Dispatcher::new(GroupPolicy::default());
            d.offer(7, &notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))), t(3, 0));
            d.due(t(9, 0), &[]).remove(0).id
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_seeded_alert_whose_notice_is_past_the_cursor_is_told() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        let firing = alert("block-rate", "ip-1", AlertState::Firing, t(0, 0));
        d.seed(std::slice::from_ref(&firing), t(10, 0));
        d.offer(3, &notice(firing), t(10, 0));
        assert_eq!(d.due(t(11, 0), &[]).len(), 1);
    }

    #[test]
    fn a_seeded_group_repeats_but_does_not_tell_again_at_once() {
        let mut d = Dispatcher::new(GroupPolicy::default());
        d.seed(&[alert("block-rate", "ip-1", AlertState::Firing, t(0, 0))], t(10, 0));
        assert!(d.due(t(11, 0), &[]).is_empty());
        assert_eq!(d.due(t(250, 0), &[]).len(), 1);
    }
}
