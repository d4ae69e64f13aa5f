//! Suppressions out: each newly suppressed recipient (a hard bounce, a complaint, an
//! unsubscribe) pushed to the marketing app that mails it, so the app stops.
//!
//! # Contract
//! - Targets (`[[suppressions.push]]`): **listmonk** (the subscriber looked up by email, then
//!   blocklisted: `GET /api/subscribers?query=...`, `PUT /api/subscribers/blocklist`), **Mautic**
//!   (the contact looked up by email, then Do Not Contact on the email channel with reason
//!   "unsubscribed" or "bounced": `GET /api/contacts?where...`, `POST
//!   /api/contacts/{id}/dnc/email/add`) and a **generic webhook** (JSON, HMAC-signed like the
//!   decision webhooks: `X-Vigil-Timestamp`, `X-Vigil-Signature: sha256=...`).
//! - Incremental from a durable cursor: each target reads the log from its own committed
//!   offset (consumer `suppressions:<name>`), enriches events as the processor does, and
//!   commits past a batch once every suppression in it was delivered or given up. A restart
//!   resumes there; a crash re-sends at most one batch (the apps' calls are idempotent).
//! - Retries: a transport failure, a 5xx or a 429 is retried with backoff, holding the cursor;
//!   another 4xx is permanent for that recipient (logged, counted in `vigil_push_failures`),
//!   and never holds back the others. A recipient unknown to the app is done: there is no one
//!   to suppress.
//! - The same recipient suppressed again soon after (a second bounce) is not pushed again
//!   while it is among the last [`RECENT`] pushed.

use std::num::NonZeroUsize;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use vigil_log::EventLog;
use vigil_log::backoff::Backoff;
use vigil_schemas::DeliveryEvent;

use crate::Enricher;
use crate::suppression::{Reason, suppresses};

/// Recipients remembered as pushed, per target.
pub const RECENT: usize = 100_000;
/// Events read from the log per batch.
const BATCH: usize = 512;

/// What kind of app a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Listmonk,
    Mautic,
    Webhook,
}

/// One `[[suppressions.push]]` target.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionTarget {
    /// Names the target's cursor and its metrics; keep it stable.
    pub name: String,
    pub kind: TargetKind,
    /// The app's base URL (`https://lists.example.com`), or the webhook's URL.
    pub url: String,
    /// listmonk: the API user; Mautic: the user (Basic auth must be enabled in Mautic).
    pub username: Option<String>,
    /// listmonk: the API user's token.
    pub token: Option<String>,
    /// Mautic: the user's password.
    pub password: Option<String>,
    /// Webhook: the HMAC secret.
    pub secret: Option<String>,
    /// Which reasons to push; default all (hard_bounce, complaint, unsubscribe).
    #[serde(default = "all_reasons")]
    pub reasons: Vec<Reason>,
}

fn all_reasons() -> Vec<Reason> {
    vec![Reason::HardBounce, Reason::Complaint, Reason::Unsubscribe]
}

impl std::fmt::Debug for SuppressionTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuppressionTarget")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("reasons", &self.reasons)
            .finish_non_exhaustive()
    }
}

impl SuppressionTarget {
    /// Checks that the target has the credentials its kind needs.
    ///
    /// # Errors
    /// What is missing, for the configuration's author.
    pub fn check(&self) -> Result<(), String> {
        let missing =
            |what: &str| Err(format!("[[suppressions.push]] {}: a {:?} target needs `{what}`", self.name, self.kind));
        match self.kind {
            TargetKind::Listmonk if self.username.is_none() => missing("username"),
            TargetKind::Listmonk if self.token.is_none() => missing("token"),
            TargetKind::Mautic if self.username.is_none() => missing("username"),
            TargetKind::Mautic if self.password.is_none() => missing("password"),
            TargetKind::Webhook if self.secret.is_none() => missing("secret"),
            _ if !self.url.starts_with("http://") && !self.url.starts_with("https://") => {
                Err(format!("[[suppressions.push]] {}: `url` must be http(s)", self.name))
            }
            _ => Ok(()),
        }
    }

    fn consumer(&self) -> String {
        format!("suppressions:{}", self.name)
    }
}

/// One suppression to push.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Suppressed {
    recipient: String,
    reason: Reason,
    class: Option<String>,
    event: String,
    source: &'static str,
}

impl Suppressed {
    fn of(event: &DeliveryEvent) -> Option<Self> {
        let (reason, class) = suppresses(event)?;
        let recipient = event.recipient.as_deref()?.trim().to_ascii_lowercase();
        (!recipient.is_empty()).then(|| Self {
            recipient,
            reason,
            class,
            event: event.event_id.clone(),
            source: event.source.as_str(),
        })
    }

    fn comment(&self) -> String {
        let class = self.class.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
        format!("Vigil: {}{class} reported by {}, event {}", self.reason.as_str(), self.source, self.event)
    }
}

/// How one delivery ended.
#[derive(Debug)]
enum Failure {
    /// Worth retrying: the app or the network is unwell.
    Temporary(String),
    /// Retrying will not help (a 4xx): the recipient is given up.
    Permanent(String),
}

fn from_transport(error: &reqwest::Error) -> Failure {
    Failure::Temporary(error.to_string())
}

async fn check_status(response: reqwest::Response, what: &str) -> Result<reqwest::Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
    let said = format!("{what}: {status} {body}");
    if status.is_server_error() || status.as_u16() == 429 {
        Err(Failure::Temporary(said))
    } else {
        Err(Failure::Permanent(said))
    }
}

/// `base` with the query parameters, encoded.
fn with_query(base: &str, parameters: &[(&str, &str)]) -> Result<reqwest::Url, Failure> {
    reqwest::Url::parse_with_params(base, parameters).map_err(|e| Failure::Permanent(format!("{base}: {e}")))
}

/// A string literal in listmonk's subscriber query (SQL): quotes doubled.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

async fn push_listmonk(client: &reqwest::Client, target: &SuppressionTarget, s: &Suppressed) -> Result<(), Failure> {
    let base = target.url.trim_end_matches('/');
    let auth = format!("token {}:{}", target.username.as_deref().unwrap_or(""), target.token.as_deref().unwrap_or(""));
    let query = format!("subscribers.email = {}", sql_literal(&s.recipient));
    let url = with_query(&format!("{base}/api/subscribers"), &[("query", query.as_str()), ("per_page", "all")])?;
    let found = client.get(url).header("authorization", &auth).send().await.map_err(|e| from_transport(&e))?;
    let found: Value = check_status(found, "listmonk subscriber lookup")
        .await?
        .json()
        .await
        .map_err(|e| Failure::Permanent(format!("listmonk subscriber lookup: {e}")))?;
    let ids: Vec<Value> = found["data"]["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|s| s.get("id").cloned()).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        tracing::debug!(target = %target.name, "not a listmonk subscriber; nothing to blocklist");
        return Ok(());
    }
    let blocked = client
        .put(format!("{base}/api/subscribers/blocklist"))
        .header("authorization", &auth)
        .json(&json!({ "ids": ids }))
        .send()
        .await
        .map_err(|e| from_transport(&e))?;
    check_status(blocked, "listmonk blocklist").await.map(|_| ())
}

async fn push_mautic(client: &reqwest::Client, target: &SuppressionTarget, s: &Suppressed) -> Result<(), Failure> {
    let base = target.url.trim_end_matches('/');
    let (user, password) = (target.username.as_deref().unwrap_or(""), target.password.as_deref());
    // An exact match: `search=email:...` is a prefix LIKE, where `_` and `%` are wildcards.
    let url = with_query(
        &format!("{base}/api/contacts"),
        &[
            ("where[0][col]", "email"),
            ("where[0][expr]", "eq"),
            ("where[0][val]", s.recipient.as_str()),
            ("minimal", "true"),
        ],
    )?;
    let found = client.get(url).basic_auth(user, password).send().await.map_err(|e| from_transport(&e))?;
    let found: Value = check_status(found, "Mautic contact lookup")
        .await?
        .json()
        .await
        .map_err(|e| Failure::Permanent(format!("Mautic contact lookup: {e}")))?;
    // `contacts` is an object keyed by id, or `[]` when there is none.
    let ids: Vec<String> = found["contacts"].as_object().map(|c| c.keys().cloned().collect()).unwrap_or_default();
    // Mautic's Do Not Contact reasons: 1 unsubscribed, 2 bounced.
    let reason = if s.reason == Reason::HardBounce { 2 } else { 1 };
    for id in ids {
        let added = client
            .post(format!("{base}/api/contacts/{id}/dnc/email/add"))
            .basic_auth(user, password)
            .json(&json!({ "reason": reason, "comments": s.comment() }))
            .send()
            .await
            .map_err(|e| from_transport(&e))?;
        check_status(added, "Mautic Do Not Contact").await?;
    }
    Ok(())
}

async fn push_webhook(client: &reqwest::Client, target: &SuppressionTarget, s: &Suppressed) -> Result<(), Failure> {
    let body = serde_json::to_vec(&json!({
        "recipient": s.recipient,
        "reason": s.reason.as_str(),
        "class": s.class,
        "source": s.source,
        "event_id": s.event,
    }))
    .expect("JSON serialises");
    let timestamp = Utc::now().timestamp();
    let signature = crate::actuation::push::sign(target.secret.as_deref().unwrap_or(""), timestamp, &body);
    let response = client
        .post(&target.url)
        .header("content-type", "application/json")
        .header("x-vigil-timestamp", timestamp.to_string())
        .header("x-vigil-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| from_transport(&e))?;
    check_status(response, "suppression webhook").await.map(|_| ())
}

async fn push(client: &reqwest::Client, target: &SuppressionTarget, s: &Suppressed) -> Result<(), Failure> {
    match target.kind {
        TargetKind::Listmonk => push_listmonk(client, target, s).await,
        TargetKind::Mautic => push_mautic(client, target, s).await,
        TargetKind::Webhook => push_webhook(client, target, s).await,
    }
}

/// Pushes `target`'s suppressions from the log until `shutdown`.
pub async fn run(target: SuppressionTarget, log: EventLog, enricher: Enricher, shutdown: CancellationToken) {
    let client = crate::actuation::push::http_client();
    let consumer = target.consumer();
    let label = crate::metrics::PusherLabel { pusher: consumer.clone() };
    let metrics = crate::metrics::processor_metrics();
    let mut recent: lru::LruCache<String, ()> = lru::LruCache::new(NonZeroUsize::new(RECENT).expect("non-zero"));
    let mut head = log.subscribe();
    let blocking = |log: &EventLog, consumer: &str| {
        let (log, consumer) = (log.clone(), consumer.to_owned());
        tokio::task::spawn_blocking(move || log.committed_offset(&consumer))
    };
    let mut cursor = match blocking(&log, &consumer).await.expect("cursor task") {
        Ok(cursor) => cursor,
        Err(error) => {
            tracing::error!(target = %target.name, %error, "the suppression pusher cannot read its cursor; not pushing");
            return;
        }
    };
    tracing::info!(target = %target.name, kind = ?target.kind, cursor, "pushing suppressions");
    loop {
        let read = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || log.read_without_raw(cursor, BATCH)).await.expect("read task")
        };
        let events = match read {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(target = %target.name, %error, "reading the log for suppressions failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let Some(last) = events.last().map(|(offset, _)| *offset) else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = head.changed() => continue,
            }
        };
        for (_, mut event) in events {
            enricher.enrich(&mut event);
            let Some(suppressed) = Suppressed::of(&event).filter(|s| target.reasons.contains(&s.reason)) else {
                continue;
            };
            if recent.put(suppressed.recipient.clone(), ()).is_some() {
                continue;
            }
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
            loop {
                match push(&client, &target, &suppressed).await {
                    Ok(()) => {
                        metrics.suppressions_pushed.get_or_create(&label).inc();
                        break;
                    }
                    Err(Failure::Permanent(why)) => {
                        let labels = crate::metrics::FailureLabels { pusher: consumer.clone(), kind: "permanent" };
                        metrics.push_failures.get_or_create(&labels).inc();
                        tracing::warn!(target = %target.name, reason = suppressed.reason.as_str(), %why, "suppression refused; given up for this recipient");
                        break;
                    }
                    Err(Failure::Temporary(why)) => {
                        let labels = crate::metrics::FailureLabels { pusher: consumer.clone(), kind: "temporary" };
                        metrics.push_failures.get_or_create(&labels).inc();
                        let delay = backoff.next_delay();
                        tracing::warn!(target = %target.name, %why, retry_in = ?delay, "suppression push failed; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        cursor = last + 1;
        let (log_c, consumer_c) = (log.clone(), consumer.clone());
        let committed = tokio::task::spawn_blocking(move || log_c.commit_offset(&consumer_c, cursor)).await;
        if let Ok(Err(error)) = committed {
            tracing::warn!(target = %target.name, %error, "storing the suppression cursor failed; a restart re-sends this batch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listmonk_queries_quote_the_address() {
        assert_eq!(sql_literal("o'brien@example.com"), "'o''brien@example.com'");
    }

    #[test]
    fn targets_need_their_credentials() {
        let target = |kind| SuppressionTarget {
            name: "t".into(),
            kind,
            url: "https://app.example".into(),
            username: None,
            token: None,
            password: None,
            secret: None,
            reasons: all_reasons(),
        };
        assert!(target(TargetKind::Listmonk).check().unwrap_err().contains("username"));
        assert!(target(TargetKind::Webhook).check().unwrap_err().contains("secret"));
        let ok = SuppressionTarget { secret: Some("s".into()), ..target(TargetKind::Webhook) };
        assert!(ok.check().is_ok());
    }
}
