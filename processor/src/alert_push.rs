//! Alert notices out: a durable outbox, silences, and one pusher per receiver (Slack, PagerDuty,
//! Microsoft Teams, a signed webhook, Prometheus Alertmanager).
//!
//! # Contract
//! - Every notice the fold decides ([`crate::alerting::AlertNotice`], a firing or a resolve) is
//!   written to `state/alerts.redb` once, by its id, before anything is sent; a notice decided
//!   again after a crash (the fold replays from its snapshot) finds its id and is not written
//!   twice.
//! - Each receiver has its own cursor in the same file, advanced once the receiver took a
//!   notice (or refused it for good: a 4xx other than 408 and 429, logged and counted): a
//!   restart resumes there, and a crash between a send and its cursor re-sends that one notice,
//!   with the same deduplication key (PagerDuty's `dedup_key`, the webhook's
//!   `X-Vigil-Notification-Id`, Alertmanager's labels). A receiver that is down is retried with
//!   backoff and jitter and holds back only itself.
//! - Routing: a receiver takes the notices whose labels equal its `matchers` (all of them), and
//!   groups and times them with [`crate::alert_dispatch`] under its own policy; its cursor moves
//!   only past notices it has told (or muted), so a restart during a group wait loses nothing.
//! - Silences live in the same file ([`AlertOutbox::silences`]); every pusher reads them before
//!   it tells a group.
//! - Alertmanager keeps an alert only until its `endsAt`: an Alertmanager receiver repeats every
//!   [`ALERTMANAGER_RESEND`] by default, with `endsAt` a few intervals ahead, and sends a resolve
//!   with the time it resolved.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vigil_log::backoff::Backoff;

use crate::alert_dispatch::{Dispatcher, GroupPolicy, Notification, Silence};
use crate::alerting::{Alert, AlertNotice, AlertState, Severity};

const NOTICES: TableDefinition<u64, &str> = TableDefinition::new("notices");
const BY_ID: TableDefinition<&str, u64> = TableDefinition::new("notice_ids");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
const SILENCES: TableDefinition<&str, &str> = TableDefinition::new("silences");

/// Silences kept at most; expired ones are dropped when a new one is added.
pub const MAX_SILENCES: usize = 1_000;

/// How often firing alerts are sent to Alertmanager again.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// The alert outbox could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AlertOutboxError {
    #[error("alert outbox storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("alert outbox directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("alert outbox record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("{MAX_SILENCES} silences are in force; expire some first")]
    TooManySilences,
}

macro_rules! storage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for AlertOutboxError {
            fn from(error: $error) -> Self {
                Self::Storage(error.into())
            }
        }
    )*};
}
storage_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// The durable notice log. Cheap to clone.
#[derive(Clone)]
pub struct AlertOutbox {
    db: Arc<Database>,
    recorded: Arc<Notify>,
    /// A fault for the tests: writes refused as a full disk would refuse them.
    #[cfg(test)]
    refuse_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for AlertOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertOutbox").finish_non_exhaustive()
    }
}

impl AlertOutbox {
    /// Opens (or creates) `dir/alerts.redb`.
    ///
    /// # Errors
    /// When the directory or the file cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, AlertOutboxError> {
        std::fs::create_dir_all(dir)?;
        // redb's default page cache (1 GiB) grows with what is written; an outbox is small
        // and read near its cursors.
        let db = Database::builder()
            .set_cache_size(crate::actuation::push::OUTBOX_CACHE_BYTES)
            .create(dir.join("alerts.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(NOTICES)?;
        tx.open_table(BY_ID)?;
        tx.open_table(CURSORS)?;
        tx.open_table(SILENCES)?;
        tx.commit()?;
        Ok(Self {
            db: Arc::new(db),
            recorded: Arc::new(Notify::new()),
            #[cfg(test)]
            refuse_writes: Arc::default(),
        })
    }

    /// Records the notices not recorded yet; returns how many were new. Notices decided more
    /// than [`KEEP_NOTICES`] before the newest recorded are dropped in the same transaction,
    /// so the file stays bounded.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn record(&self, notices: &[AlertNotice]) -> Result<usize, AlertOutboxError> {
        if notices.is_empty() {
            return Ok(0);
        }
        #[cfg(test)]
        if self.refuse_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("no space left on device (a test's fault)").into());
        }
        let tx = self.db.begin_write()?;
        let mut fresh = 0;
        {
            let mut log = tx.open_table(NOTICES)?;
            let mut ids = tx.open_table(BY_ID)?;
            let mut next = log.last()?.map_or(0, |(k, _)| k.value() + 1);
            for notice in notices {
                if ids.get(notice.id.as_str())?.is_some() {
                    continue;
                }
                log.insert(next, serde_json::to_string(notice)?.as_str())?;
                ids.insert(notice.id.as_str(), next)?;
                next += 1;
                fresh += 1;
            }
            if let Some(newest) = notices.iter().filter_map(decided_at).max() {
                prune(&mut log, &mut ids, newest - KEEP_NOTICES)?;
            }
        }
        tx.commit()?;
        if fresh > 0 {
            self.recorded.notify_waiters();
        }
        Ok(fresh)
    }

    /// Up to `limit` notices from sequence number `from`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, AlertNotice)>, AlertOutboxError> {
        let tx = self.db.begin_read()?;
        let log = tx.open_table(NOTICES)?;
        let mut out = Vec::new();
        for row in log.range(from..)?.take(limit) {
            let (seq, json) = row?;
            out.push((seq.value(), serde_json::from_str(json.value())?));
        }
        Ok(out)
    }

    /// A receiver's cursor: the next notice it has not taken.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn cursor(&self, receiver: &str) -> Result<u64, AlertOutboxError> {
        Ok(self.stored_cursor(receiver)?.unwrap_or(0))
    }

    /// A receiver's stored cursor, `None` for a receiver never run before.
    fn stored_cursor(&self, receiver: &str) -> Result<Option<u64>, AlertOutboxError> {
        let tx = self.db.begin_read()?;
        let cursors = tx.open_table(CURSORS)?;
        Ok(cursors.get(receiver)?.map(|v| v.value()))
    }

    /// The sequence number the next recorded notice gets.
    fn next_seq(&self) -> Result<u64, AlertOutboxError> {
        let tx = self.db.begin_read()?;
        let log = tx.open_table(NOTICES)?;
        Ok(log.last()?.map_or(0, |(k, _)| k.value() + 1))
    }

    /// Where a receiver starts: its cursor, or, for a receiver never run before, the end of
    /// the outbox (it is not told the history; `true` says so).
    fn start(&self, receiver: &str) -> Result<(u64, bool), AlertOutboxError> {
        match self.stored_cursor(receiver)? {
            Some(cursor) => Ok((cursor, false)),
            None => Ok((self.next_seq()?, true)),
        }
    }

    /// Moves a receiver's cursor to `next`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn advance(&self, receiver: &str, next: u64) -> Result<(), AlertOutboxError> {
        let tx = self.db.begin_write()?;
        tx.open_table(CURSORS)?.insert(receiver, next)?;
        tx.commit()?;
        Ok(())
    }

    /// Every silence kept (in force, future or expired less than a day ago).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn silences(&self) -> Result<Vec<Silence>, AlertOutboxError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SILENCES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, json) = row?;
            out.push(serde_json::from_str(json.value())?);
        }
        Ok(out)
    }

    /// Adds (or replaces, by id) a silence; silences expired more than a day ago are dropped.
    ///
    /// # Errors
    /// When the file cannot be written, or [`MAX_SILENCES`] are kept already.
    pub fn put_silence(&self, silence: &Silence, now: DateTime<Utc>) -> Result<(), AlertOutboxError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SILENCES)?;
            let mut stale = Vec::new();
            for row in table.iter()? {
                let (id, json) = row?;
                let kept: Silence = serde_json::from_str(json.value())?;
                if kept.ends_at + chrono::TimeDelta::days(1) < now {
                    stale.push(id.value().to_owned());
                }
            }
            for id in stale {
                table.remove(id.as_str())?;
            }
            if table.get(silence.id.as_str())?.is_none() && table.len()? >= MAX_SILENCES as u64 {
                return Err(AlertOutboxError::TooManySilences);
            }
            table.insert(silence.id.as_str(), serde_json::to_string(silence)?.as_str())?;
        }
        tx.commit()?;
        self.recorded.notify_waiters();
        Ok(())
    }

    /// Removes a silence; whether it was there.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn delete_silence(&self, id: &str) -> Result<bool, AlertOutboxError> {
        let tx = self.db.begin_write()?;
        let removed = tx.open_table(SILENCES)?.remove(id)?.is_some();
        tx.commit()?;
        self.recorded.notify_waiters();
        Ok(removed)
    }
}

#[cfg(test)]
impl AlertOutbox {
    /// Makes [`Self::record`] fail (or work again), as a full disk would.
    pub(crate) fn refuse_writes(&self, refuse: bool) {
        self.refuse_writes.store(refuse, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long notices are kept after they were decided: receivers down longer than this miss
/// them (a rebuild never decides again what is older than an hour, so their ids can go too).
pub const KEEP_NOTICES: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// When a notice was decided: its resolve, or its firing.
fn decided_at(notice: &AlertNotice) -> Option<DateTime<Utc>> {
    notice.alert.resolved_at.or(notice.alert.fired_at)
}

/// Drops the oldest notices, and their ids, decided before `before`. Notices are recorded
/// about in the order they were decided, so this stops at the first one that is not older.
/// The newest is always kept: sequence numbers go on from it, and receivers' cursors with them.
fn prune(
    log: &mut redb::Table<'_, u64, &'static str>,
    ids: &mut redb::Table<'_, &'static str, u64>,
    before: DateTime<Utc>,
) -> Result<(), AlertOutboxError> {
    let Some(newest) = log.last()?.map(|(seq, _)| seq.value()) else { return Ok(()) };
    let mut old = Vec::new();
    for row in log.range(..newest)? {
        let (seq, json) = row?;
        let notice: AlertNotice = serde_json::from_str(json.value())?;
        if decided_at(&notice).is_none_or(|at| at >= before) {
            break;
        }
        old.push((seq.value(), notice.id));
    }
    for (seq, id) in old {
        log.remove(seq)?;
        ids.remove(id.as_str())?;
    }
    Ok(())
}

/// Logs a firing or a resolve (at info level, target `alert`), for every role and receiver-less
/// setup.
pub fn log_notice(notice: &AlertNotice) {
    let alert = &notice.alert;
    tracing::info!(target: "alert", rule = %alert.rule, state = ?alert.state, labels = ?alert.labels, summary = %alert.summary, "alert {}", if alert.state == AlertState::Resolved { "resolved" } else { "firing" });
}

/// What kind of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    Slack,
    Pagerduty,
    Teams,
    Webhook,
    Alertmanager,
}

/// One `[[alerting.receivers]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Names its cursor; keep it stable.
    pub name: String,
    pub kind: ReceiverKind,
    /// Slack's incoming webhook URL, Teams' workflow URL, the webhook's URL, Alertmanager's base
    /// URL (`http://alertmanager:9093`); PagerDuty's events endpoint by default.
    pub url: Option<String>,
    /// PagerDuty: the integration's routing key.
    pub routing_key: Option<String>,
    /// Webhook: the HMAC secret.
    pub secret: Option<String>,
    /// Only notices whose labels equal these (`severity = "critical"`).
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// A link put in the messages (the dashboard, a runbook).
    pub link: Option<String>,
    /// Labels whose values make one notification (`["alertname"]` by default).
    pub group_by: Option<Vec<String>>,
    /// `30s` by default (`0s` for Alertmanager, which groups itself).
    pub group_wait: Option<String>,
    /// `5m` by default (`0s` for Alertmanager).
    pub group_interval: Option<String>,
    /// `4h` by default (`1m` for Alertmanager, which forgets alerts past their `endsAt`).
    pub repeat_interval: Option<String>,
}

impl std::fmt::Debug for ReceiverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("matchers", &self.matchers)
            .finish_non_exhaustive()
    }
}

/// Checks every receiver ([`ReceiverConfig::check`]) and that no two share a name: they would
/// share a cursor, each moving it past notices the other has not told.
///
/// # Errors
/// The first receiver that is not usable, in words.
pub fn check_receivers(receivers: &[ReceiverConfig]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for receiver in receivers {
        receiver.check()?;
        if !names.insert(&receiver.name) {
            return Err(format!("[[alerting.receivers]]: two receivers are named `{}`", receiver.name));
        }
    }
    Ok(())
}

/// PagerDuty's Events API v2.
pub const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com/v2/enqueue";

/// `30s`, `5m`, `4h`, `1d` (humantime's syntax, as the other durations of the configuration).
fn duration(text: &str, what: &str) -> Result<chrono::TimeDelta, String> {
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| format!("{what} `{text}`: {e}"))?;
    chrono::TimeDelta::from_std(parsed).map_err(|_| format!("{what} `{text}` is too long"))
}

impl ReceiverConfig {
    /// Checks that the receiver has what its kind needs.
    ///
    /// # Errors
    /// What is missing, for the configuration's author.
    pub fn check(&self) -> Result<(), String> {
        let missing = |what: &str| {
            Err(format!("[[alerting.receivers]] {}: a {:?} receiver needs `{what}`", self.name, self.kind))
        };
        self.policy()?;
        match self.kind {
            ReceiverKind::Pagerduty if self.routing_key.is_none() => missing("routing_key"),
            ReceiverKind::Webhook if self.secret.is_none() => missing("secret"),
            ReceiverKind::Pagerduty => Ok(()),
            _ if self.url.is_none() => missing("url"),
            _ => Ok(()),
        }
    }

    /// The receiver's grouping and timing.
    ///
    /// # Errors
    /// A duration that does not parse, naming the receiver.
    pub fn policy(&self) -> Result<GroupPolicy, String> {
        let defaults = if self.kind == ReceiverKind::Alertmanager {
            GroupPolicy {
                group_by: vec!["alertname".into()],
                group_wait: chrono::TimeDelta::zero(),
                group_interval: chrono::TimeDelta::zero(),
                repeat_interval: chrono::TimeDelta::from_std(ALERTMANAGER_RESEND).unwrap_or_default(),
            }
        } else {
            GroupPolicy::default()
        };
        let parse = |text: &Option<String>, what: &str, default| match text {
            Some(text) => duration(text, what).map_err(|e| format!("[[alerting.receivers]] {}: {e}", self.name)),
            None => Ok(default),
        };
        Ok(GroupPolicy {
            group_by: self.group_by.clone().unwrap_or(defaults.group_by),
            group_wait: parse(&self.group_wait, "group_wait", defaults.group_wait)?,
            group_interval: parse(&self.group_interval, "group_interval", defaults.group_interval)?,
            repeat_interval: parse(&self.repeat_interval, "repeat_interval", defaults.repeat_interval)?,
        })
    }

    fn routes(&self, alert: &Alert) -> bool {
        self.matchers.iter().all(|(k, v)| alert.labels.get(k) == Some(v))
    }

    /// The pusher's name in metrics and its cursor's key: `alerts:<name>`.
    #[must_use]
    pub fn cursor_name(&self) -> String {
        format!("alerts:{}", self.name)
    }
}

fn title(notification: &Notification) -> String {
    let (what, n) = if notification.status == AlertState::Firing {
        ("FIRING", notification.firing.len())
    } else {
        ("RESOLVED", notification.resolved.len())
    };
    let group: Vec<&str> = notification.group_labels.values().map(String::as_str).collect();
    format!("[{what}:{n}] {}", group.join(" "))
}

fn severity_of(notification: &Notification) -> Severity {
    notification.firing.iter().chain(&notification.resolved).map(|a| a.severity).max().unwrap_or(Severity::Info)
}

/// One line per alert, firing first: its state, summary and top responses.
fn lines(notification: &Notification, at_most: usize) -> Vec<String> {
    let mut lines: Vec<String> = notification
        .firing
        .iter()
        .chain(&notification.resolved)
        .take(at_most)
        .map(|alert| {
            let state = if alert.state == AlertState::Resolved { "resolved" } else { "firing" };
            let top: Vec<String> = alert.top.iter().take(3).map(|(name, n)| format!("{name} ({n})")).collect();
            let top = if top.is_empty() { String::new() } else { format!("; top: {}", top.join(", ")) };
            format!("[{state}] {}{top}", alert.summary)
        })
        .collect();
    let total = notification.firing.len() + notification.resolved.len();
    if total > at_most {
        lines.push(format!("and {} more", total - at_most));
    }
    lines
}

fn details(alert: &Alert) -> Vec<(String, String)> {
    let mut facts: Vec<(String, String)> = alert
        .labels
        .iter()
        .filter(|(k, _)| *k != "alertname" && *k != "severity")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    facts.push(("since".into(), alert.active_since.to_rfc3339()));
    if !alert.top.is_empty() {
        let top: Vec<String> = alert.top.iter().map(|(name, n)| format!("{name} ({n})")).collect();
        facts.push(("top".into(), top.join(", ")));
    }
    facts
}

/// How many alerts a chat message lists before "and N more".
const LISTED: usize = 20;

/// The HTTP request a notification becomes for `receiver`: URL, extra headers, JSON body.
#[must_use]
pub fn request(
    receiver: &ReceiverConfig,
    notification: &Notification,
    now: DateTime<Utc>,
) -> (String, Vec<(String, String)>, Value) {
    let url = receiver.url.clone().unwrap_or_default();
    let link = receiver.link.clone();
    let text = lines(notification, LISTED).join("\n");
    match receiver.kind {
        ReceiverKind::Slack => {
            let mut blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": title(notification).chars().take(150).collect::<String>()}}),
                json!({"type": "section", "text": {"type": "mrkdwn", "text": text.chars().take(3000).collect::<String>()}}),
            ];
            if let Some(first) = notification.firing.first().or(notification.resolved.first()) {
                let fields: Vec<Value> = details(first)
                    .into_iter()
                    .take(10)
                    .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")}))
                    .collect();
                blocks.push(json!({"type": "section", "fields": fields}));
            }
            if let Some(link) = &link {
                blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{link}|Open in Vigil>")}]}));
            }
            (url, Vec::new(), json!({"text": title(notification), "blocks": blocks}))
        }
        ReceiverKind::Pagerduty => {
            let key = receiver.routing_key.clone().unwrap_or_default();
            let url = receiver.url.clone().unwrap_or_else(|| PAGERDUTY_EVENTS.to_owned());
            // One incident per group, as Alertmanager's PagerDuty integration does.
            let dedup = blake3::hash(notification.group_key.as_bytes()).to_hex()[..32].to_owned();
            let body = if notification.status == AlertState::Resolved {
                json!({"routing_key": key, "event_action": "resolve", "dedup_key": dedup})
            } else {
                let severity = match severity_of(notification) {
                    Severity::Critical => "critical",
                    Severity::Warning => "warning",
                    Severity::Info => "info",
                };
                let first = notification.firing.first();
                let mut custom: serde_json::Map<String, Value> =
                    first.map(details).unwrap_or_default().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                custom.insert("alerts".into(), json!(lines(notification, LISTED)));
                let mut event = json!({
                    "routing_key": key,
                    "event_action": "trigger",
                    "dedup_key": dedup,
                    "payload": {
                        "summary": format!("{}: {}", title(notification), first.map(|a| a.summary.as_str()).unwrap_or("")).chars().take(1024).collect::<String>(),
                        "source": "vigil",
                        "severity": severity,
                        "timestamp": first.and_then(|a| a.fired_at).unwrap_or(now).to_rfc3339(),
                        "custom_details": custom,
                    },
                });
                // Optional fields are left out rather than sent as null.
                for (field, value) in [
                    ("component", first.and_then(|a| a.labels.get("egress_source")).cloned()),
                    ("group", first.and_then(|a| a.labels.get("provider")).cloned()),
                    ("class", first.map(|a| a.rule.clone())),
                ] {
                    if let Some(value) = value {
                        event["payload"][field] = Value::String(value);
                    }
                }
                if let Some(link) = link {
                    event["links"] = json!([{"href": link, "text": "Open in Vigil"}]);
                }
                event
            };
            (url, Vec::new(), body)
        }
        ReceiverKind::Teams => {
            let facts: Vec<Value> = notification
                .firing
                .first()
                .or(notification.resolved.first())
                .map(details)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| json!({"title": k, "value": v}))
                .collect();
            let mut content = json!({
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": title(notification), "weight": "Bolder", "size": "Medium", "wrap": true},
                    {"type": "TextBlock", "text": text, "wrap": true},
                    {"type": "FactSet", "facts": facts},
                ],
            });
            if let Some(link) = link {
                content["actions"] = json!([{"type": "Action.OpenUrl", "title": "Open in Vigil", "url": link}]);
            }
            let body = json!({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": content}]});
            (url, Vec::new(), body)
        }
        ReceiverKind::Webhook => {
            let body = serde_json::to_value(notification).unwrap_or_default();
            (url, vec![("x-vigil-notification-id".to_owned(), notification.id.clone())], body)
        }
        ReceiverKind::Alertmanager => {
            let url = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            let alerts: Vec<Value> = notification
                .firing
                .iter()
                .chain(&notification.resolved)
                .map(|a| alertmanager_alert(a, link.as_deref(), now))
                .collect();
            (url, Vec::new(), Value::Array(alerts))
        }
    }
}

/// One alert as Alertmanager's `POST /api/v2/alerts` takes it. A firing alert ends a few
/// re-send intervals ahead (it is re-sent before); a resolved one when it resolved.
fn alertmanager_alert(alert: &Alert, link: Option<&str>, now: DateTime<Utc>) -> Value {
    let starts = alert.fired_at.unwrap_or(alert.active_since);
    let ends = alert
        .resolved_at
        .unwrap_or_else(|| now + chrono::TimeDelta::from_std(ALERTMANAGER_RESEND * 4).unwrap_or_default());
    let mut value = json!({
        "labels": alert.labels,
        "annotations": {"summary": alert.summary, "description": details(alert).iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n")},
        "startsAt": starts.to_rfc3339(),
        "endsAt": ends.to_rfc3339(),
    });
    if let Some(link) = link {
        value["generatorURL"] = json!(link);
    }
    value
}

/// How one send ended.
enum Failure {
    Temporary(String),
    Permanent(String),
}

async fn send(client: &reqwest::Client, receiver: &ReceiverConfig, notification: &Notification) -> Result<(), Failure> {
    let (url, headers, body) = request(receiver, notification, Utc::now());
    let body = serde_json::to_vec(&body).expect("JSON serialises");
    let mut post = client.post(&url).header("content-type", "application/json");
    for (name, value) in headers {
        post = post.header(name, value);
    }
    if receiver.kind == ReceiverKind::Webhook {
        let timestamp = Utc::now().timestamp();
        let signature = crate::actuation::push::sign(receiver.secret.as_deref().unwrap_or(""), timestamp, &body);
        post = post.header("x-vigil-timestamp", timestamp.to_string()).header("x-vigil-signature", signature);
    }
    let response = post.body(body).send().await.map_err(|e| Failure::Temporary(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let said =
        format!("{url}: {status} {}", response.text().await.unwrap_or_default().chars().take(300).collect::<String>());
    if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
        Err(Failure::Temporary(said))
    } else {
        Err(Failure::Permanent(said))
    }
}

/// Notices read from the outbox at a time.
const READ_BATCH: usize = 256;

/// Delivers the outbox's notices to `receiver` from its cursor until `shutdown`: grouped and
/// timed by the receiver's policy, muted by the silences in force, retried with backoff and
/// jitter. `firing` gives the alerts firing at start (told before a restart; only repeated).
pub async fn run(receiver: ReceiverConfig, outbox: AlertOutbox, firing: Vec<Alert>, shutdown: CancellationToken) {
    let client = crate::actuation::push::http_client();
    let name = receiver.cursor_name();
    let label = crate::metrics::PusherLabel { pusher: name.clone() };
    let metrics = crate::metrics::processor_metrics();
    let _ = metrics.alerts_sent.get_or_create(&label);
    let policy = match receiver.policy() {
        Ok(policy) => policy,
        Err(error) => {
            tracing::error!(%error, "alert receiver not started");
            return;
        }
    };
    let mut dispatcher = Dispatcher::new(policy);
    let (mut next_read, new_receiver) = {
        let (o, n) = (outbox.clone(), name.clone());
        match tokio::task::spawn_blocking(move || o.start(&n)).await {
            Ok(Ok(start)) => start,
            _ => {
                tracing::error!(receiver = %receiver.name, "the alert outbox cannot be read; receiver not started");
                return;
            }
        }
    };
    if new_receiver {
        // Stored at once: from now on this receiver is not new, whatever happens next.
        let (o, n, at) = (outbox.clone(), name.clone(), next_read);
        if !matches!(tokio::task::spawn_blocking(move || o.advance(&n, at)).await, Ok(Ok(()))) {
            tracing::error!(receiver = %receiver.name, "the alert outbox cannot be written; receiver not started");
            return;
        }
    }
    let firing: Vec<Alert> = firing.into_iter().filter(|a| receiver.routes(a)).collect();
    if new_receiver {
        // A receiver added to the configuration hears about what fires now, not the history.
        for alert in firing {
            let notice = AlertNotice { id: format!("{}:now", alert.fingerprint), alert };
            dispatcher.offer(next_read, &notice, Utc::now());
        }
    } else {
        // The alerts firing now were told before a restart: only repeated.
        dispatcher.seed(&firing, Utc::now());
    }
    let mut stored_cursor = next_read;
    loop {
        let wake = outbox.recorded.notified();
        let o = outbox.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, AlertOutboxError>((o.read(next_read, READ_BATCH)?, o.silences()?))
        })
        .await
        .expect("read task");
        let (fresh, silences) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(receiver = %receiver.name, %error, "the alert outbox cannot be read; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Alertmanager forgets an alert not re-sent before its `endsAt` and would report it
        // resolved: it is sent every alert, and its own silences mute them there.
        let silences = if receiver.kind == ReceiverKind::Alertmanager { Vec::new() } else { silences };
        let now = Utc::now();
        let read_all = fresh.len() < READ_BATCH;
        for (seq, notice) in &fresh {
            if receiver.routes(&notice.alert) {
                dispatcher.offer(*seq, notice, now);
            }
            next_read = seq + 1;
        }
        for notification in dispatcher.due(now, &silences) {
            match deliver(&client, &receiver, &notification, &name, &shutdown).await {
                Delivered::Taken => metrics.alerts_sent.get_or_create(&label).inc(),
                // Counted in the failures, not as sent: a receiver that refuses everything
                // must show as failing.
                Delivered::Refused => 0,
                Delivered::ShutDown => return,
            };
        }
        // The cursor passes every notice told (or muted); one a group still holds stays ahead.
        let cursor = dispatcher.oldest_untold().unwrap_or(next_read).min(next_read);
        if cursor != stored_cursor {
            let (o, n) = (outbox.clone(), name.clone());
            match tokio::task::spawn_blocking(move || o.advance(&n, cursor)).await {
                Ok(Ok(())) => stored_cursor = cursor,
                _ => {
                    tracing::warn!(receiver = %receiver.name, "storing the alert cursor failed; a restart tells one group again")
                }
            }
        }
        if !read_all {
            continue;
        }
        let sleep = dispatcher
            .next_due(Utc::now(), &silences)
            .map_or(Duration::from_secs(60), |at| (at - Utc::now()).to_std().unwrap_or_default())
            // Silences end on their own: look again at least every minute.
            .min(Duration::from_secs(60));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// How a notification's delivery ended.
enum Delivered {
    Taken,
    /// Refused for good (a 4xx other than 408 and 429): logged and counted, not retried.
    Refused,
    ShutDown,
}

/// Sends one notification until it is taken or refused for good, or Vigil stops.
async fn deliver(
    client: &reqwest::Client,
    receiver: &ReceiverConfig,
    notification: &Notification,
    name: &str,
    shutdown: &CancellationToken,
) -> Delivered {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        match send(client, receiver, notification).await {
            Ok(()) => {
                tracing::info!(receiver = %receiver.name, notification = %notification.id, group = %notification.group_key, status = ?notification.status, "alert notification sent");
                return Delivered::Taken;
            }
            Err(Failure::Permanent(why)) => {
                crate::metrics::delivery_failed(name, true);
                tracing::warn!(receiver = %receiver.name, notification = %notification.id, %why, "alert notification refused; given up");
                return Delivered::Refused;
            }
            Err(Failure::Temporary(why)) => {
                crate::metrics::delivery_failed(name, false);
                let delay = backoff.next_delay();
                tracing::warn!(receiver = %receiver.name, %why, retry_in = ?delay, "alert notification not delivered; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Delivered::ShutDown,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert_dispatch::tests::{alert, notice, t};

    #[test]
    fn notices_older_than_a_week_before_the_newest_are_dropped_with_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = AlertOutbox::open(dir.path()).unwrap();
        let old = notice(alert("block-rate", "ip-1", AlertState::Firing, t(0, 0)));
        let recent = notice(alert("block-rate", "ip-2", AlertState::Firing, t(6 * 24 * 60, 0)));
        assert_eq!(outbox.record(&[old.clone(), recent.clone()]).unwrap(), 2);
        // Six days on, both are kept.
        assert_eq!(outbox.read(0, 10).unwrap().len(), 2);
        let week_later = notice(alert("block-rate", "ip-3", AlertState::Firing, t(7 * 24 * 60 + 1, 0)));
        assert_eq!(outbox.record(std::slice::from_ref(&week_later)).unwrap(), 1);
        let kept: Vec<String> = outbox.read(0, 10).unwrap().into_iter().map(|(_, n)| n.id).collect();
        assert_eq!(kept, [recent.id.clone(), week_later.id.clone()], "the week-old notice is gone");
        // Sequence numbers go on from where they were, and what is kept stays recorded once.
        assert_eq!(outbox.record(&[recent, week_later]).unwrap(), 0);
        assert_eq!(outbox.read(2, 10).unwrap().len(), 1);
    }
}
