//! The async edge of actuation: the durable decision log and outbox, and the pushers that
//! deliver decisions to kumod's admin API and to signed webhooks.
//!
//! - Every decision is recorded once, by `decision_id`, in a redb file beside the state
//!   snapshot: the embedded `vigil.decisions`. Replays that decide again record nothing new.
//! - Each pusher keeps its own cursor in the same file and advances it after a delivery
//!   succeeded (or was given up, said in the log): a restart resumes where it stopped, so a
//!   decision is delivered once, and a crash between a delivery and its cursor write
//!   re-sends at most that one (webhook receivers dedupe by `decision_id`).
//! - A decision whose action expired before it could be delivered is skipped, never
//!   applied late; shadow decisions are never delivered.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::decision::{ActionKind, Decision, Status};

const DECISIONS: TableDefinition<u64, &str> = TableDefinition::new("decisions");
const BY_ID: TableDefinition<&str, u64> = TableDefinition::new("decision_ids");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// action key -> the id kumod gave the suspension or bounce, to lift it early.
const KUMOD_IDS: TableDefinition<&str, &str> = TableDefinition::new("kumod_ids");

/// The outbox could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store failed (disk full, I/O error, corruption).
    #[error("decision outbox storage: {0}")]
    Storage(#[from] redb::Error),
    /// Its directory cannot be created.
    #[error("decision outbox directory: {0}")]
    Io(#[from] std::io::Error),
    /// A stored decision does not decode: a bug or a newer writer.
    #[error("decision outbox record: {0}")]
    Record(#[from] serde_json::Error),
}

/// redb's per-operation errors, all kept as the store's error with their source.
macro_rules! storage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for OutboxError {
            fn from(error: $error) -> Self {
                Self::Storage(error.into())
            }
        }
    )*};
}
storage_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// The durable decision log. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    /// Woken when decisions are recorded.
    recorded: Arc<Notify>,
    /// Applied and ended decisions as they are recorded, for the TSA subscription.
    live: broadcast::Sender<Decision>,
    /// The pushers started in this process: the backlogs reported are theirs (a cursor of a
    /// pusher since removed from the configuration stays in the file, unreported).
    running: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) `dir/decisions.redb`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("decisions.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(DECISIONS)?;
        tx.open_table(BY_ID)?;
        tx.open_table(CURSORS)?;
        tx.open_table(KUMOD_IDS)?;
        tx.commit()?;
        Ok(Self {
            db: Arc::new(db),
            recorded: Arc::new(Notify::new()),
            live: broadcast::channel(4096).0,
            running: Arc::default(),
        })
    }

    /// Records the decisions not recorded yet; returns how many were new.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn record(&self, decisions: &[Decision]) -> Result<usize, OutboxError> {
        if decisions.is_empty() {
            return Ok(0);
        }
        let mut fresh = Vec::new();
        let tx = self.db.begin_write()?;
        {
            let mut log = tx.open_table(DECISIONS)?;
            let mut ids = tx.open_table(BY_ID)?;
            let mut next = log.last()?.map_or(0, |(k, _)| k.value() + 1);
            for decision in decisions {
                if ids.get(decision.decision_id.as_str())?.is_some() {
                    continue;
                }
                let json = serde_json::to_string(decision)?;
                log.insert(next, json.as_str())?;
                ids.insert(decision.decision_id.as_str(), next)?;
                next += 1;
                fresh.push(decision);
            }
        }
        tx.commit()?;
        for decision in &fresh {
            // Nobody listening is fine: the log has it.
            let _ = self.live.send((*decision).clone());
        }
        if !fresh.is_empty() {
            self.recorded.notify_waiters();
        }
        Ok(fresh.len())
    }

    /// Decisions as they are recorded (TSA subscribers).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Decision> {
        self.live.subscribe()
    }

    /// Up to `limit` decisions from sequence number `from`, with their numbers.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, Decision)>, OutboxError> {
        let tx = self.db.begin_read()?;
        let log = tx.open_table(DECISIONS)?;
        let mut out = Vec::new();
        for row in log.range(from..)?.take(limit) {
            let (seq, json) = row?;
            out.push((seq.value(), serde_json::from_str(json.value())?));
        }
        Ok(out)
    }

    /// The newest `limit` decisions matching `keep`, newest first.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn newest(&self, limit: usize, keep: impl Fn(&Decision) -> bool) -> Result<Vec<Decision>, OutboxError> {
        let tx = self.db.begin_read()?;
        let log = tx.open_table(DECISIONS)?;
        let mut out = Vec::new();
        for row in log.iter()?.rev() {
            let (_, json) = row?;
            let decision: Decision = serde_json::from_str(json.value())?;
            if keep(&decision) {
                out.push(decision);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The backlog of each pusher running in this process: decisions recorded and not yet
    /// passed by its cursor, and when the oldest of them was decided (none when caught up).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn backlogs(&self) -> Result<Vec<Backlog>, OutboxError> {
        let tx = self.db.begin_read()?;
        let log = tx.open_table(DECISIONS)?;
        let next = log.last()?.map_or(0, |(k, _)| k.value() + 1);
        let cursors = tx.open_table(CURSORS)?;
        let mut out = Vec::new();
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for row in cursors.iter()? {
            let (name, cursor) = row?;
            if !running.contains(name.value()) {
                continue;
            }
            let cursor = cursor.value();
            let oldest = match log.get(cursor)? {
                Some(json) => Some(serde_json::from_str::<Decision>(json.value())?.at),
                None => None,
            };
            out.push(Backlog { pusher: name.value().to_owned(), depth: next.saturating_sub(cursor), oldest });
        }
        Ok(out)
    }

    fn ensure_cursor(&self, name: &str) -> Result<(), OutboxError> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned());
        let tx = self.db.begin_write()?;
        {
            let mut cursors = tx.open_table(CURSORS)?;
            if cursors.get(name)?.is_none() {
                cursors.insert(name, 0)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn cursor(&self, name: &str) -> Result<u64, OutboxError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CURSORS)?;
        Ok(table.get(name)?.map_or(0, |v| v.value()))
    }

    fn set_cursor(&self, name: &str, next: u64, kumod_id: Option<(&str, Option<&str>)>) -> Result<(), OutboxError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(CURSORS)?.insert(name, next)?;
            if let Some((key, id)) = kumod_id {
                let mut ids = tx.open_table(KUMOD_IDS)?;
                match id {
                    Some(id) => ids.insert(key, id)?,
                    None => ids.remove(key)?,
                };
            }
        }
        tx.commit().map_err(OutboxError::from)
    }

    fn kumod_id(&self, key: &str) -> Result<Option<String>, OutboxError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(KUMOD_IDS)?;
        Ok(table.get(key)?.map(|v| v.value().to_owned()))
    }
}

/// One pusher's place in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub pusher: String,
    /// Decisions recorded and not yet passed.
    pub depth: u64,
    /// When the oldest of them was decided.
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where decisions are pushed (`[actuation]` in the config).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// kumod's HTTP listener, e.g. `http://127.0.0.1:8000`: suspensions and bounces are
    /// pushed to its admin API, and config epochs bumped when the overlay changes. Leave it
    /// out when kumod subscribes to Vigil's TSA endpoints instead (not both: kumod would
    /// apply each action twice).
    #[serde(default)]
    pub kumod_url: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// A generic webhook: every applied, lifted and expired decision, HMAC-signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    /// The HMAC-SHA256 key. The signature is over `"{timestamp}.{body}"`, sent as
    /// `X-Vigil-Signature: sha256=<hex>` with `X-Vigil-Timestamp`.
    pub secret: String,
}

/// The signature header value of a webhook body.
#[must_use]
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Why one delivery failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("publishing to Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

enum Pusher {
    Kumod {
        base: String,
    },
    Webhook(WebhookConfig),
    /// Every decision, as the record of `vigil.decisions` (Kafka mode).
    Topic {
        producer: rdkafka::producer::FutureProducer,
        topic: String,
    },
}

impl Pusher {
    /// Whether the decision is for this target: MTAs get what is in force, the topic gets
    /// everything.
    fn wants(&self, decision: &Decision) -> Option<&'static str> {
        match self {
            Self::Topic { .. } => None,
            _ if decision.status == Status::Shadow => Some("shadow"),
            _ if decision.status == Status::Applied && decision.expires <= Utc::now() => {
                Some("expired before delivery")
            }
            _ => None,
        }
    }
}

/// Starts the task that publishes every recorded decision to `topic`, keyed by its action,
/// in record order, advancing its cursor once the broker acknowledged.
///
/// # Errors
/// When the producer cannot be created from `client`.
pub fn spawn_topic(
    outbox: &Outbox,
    client: &rdkafka::ClientConfig,
    topic: &str,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, rdkafka::error::KafkaError> {
    let producer = client.create()?;
    let pusher = Pusher::Topic { producer, topic: topic.to_owned() };
    let client = reqwest::Client::new();
    let (outbox, shutdown) = (outbox.clone(), shutdown.clone());
    Ok(tokio::spawn(
        async move { run(format!("topic:{}", pusher_topic(&pusher)), pusher, outbox, client, shutdown).await },
    ))
}

fn pusher_topic(pusher: &Pusher) -> String {
    match pusher {
        Pusher::Topic { topic, .. } => topic.clone(),
        _ => String::new(),
    }
}

/// Starts one task per configured target; they run until `shutdown`.
#[must_use]
pub fn spawn(outbox: &Outbox, config: &PushConfig, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut pushers: Vec<(String, Pusher)> = Vec::new();
    if let Some(url) = &config.kumod_url {
        pushers.push(("kumod".into(), Pusher::Kumod { base: url.trim_end_matches('/').to_owned() }));
    }
    for hook in &config.webhooks {
        pushers.push((format!("webhook:{}", hook.name), Pusher::Webhook(hook.clone())));
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client builds");
    pushers
        .into_iter()
        .map(|(name, pusher)| {
            let (outbox, client, shutdown) = (outbox.clone(), client.clone(), shutdown.clone());
            tokio::spawn(async move { run(name, pusher, outbox, client, shutdown).await })
        })
        .collect()
}

async fn run(name: String, pusher: Pusher, outbox: Outbox, client: reqwest::Client, shutdown: CancellationToken) {
    // A cursor from the start, so the pusher's backlog is reported before its first delivery.
    if let Err(error) = outbox.ensure_cursor(&name) {
        tracing::error!(%error, pusher = name, "cannot create the outbox cursor");
    }
    loop {
        let recorded = outbox.recorded.notified();
        let cursor = match outbox.cursor(&name) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, pusher = name, "cannot read the outbox cursor");
                0
            }
        };
        let batch = outbox.read(cursor, 256).unwrap_or_else(|error| {
            tracing::error!(%error, pusher = name, "cannot read the decision log");
            Vec::new()
        });
        if batch.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = recorded => continue,
                () = tokio::time::sleep(Duration::from_secs(5)) => continue,
            }
        }
        for (seq, decision) in batch {
            let mut backoff = Duration::from_millis(200);
            let kumod_id = loop {
                if let Some(why) = pusher.wants(&decision) {
                    tracing::debug!(pusher = name, decision = decision.decision_id, why, "not delivered");
                    break None;
                }
                let result = match &pusher {
                    Pusher::Kumod { base } => push_kumod(&client, base, &outbox, &decision).await,
                    Pusher::Webhook(hook) => push_webhook(&client, hook, &decision).await.map(|()| None),
                    Pusher::Topic { producer, topic } => publish(producer, topic, &decision).await.map(|()| None),
                };
                match result {
                    Ok(id) => {
                        tracing::debug!(pusher = name, seq, decision = decision.decision_id, "decision delivered");
                        break id;
                    }
                    Err(error) => {
                        tracing::warn!(%error, pusher = name, decision = decision.decision_id, "delivery failed; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            };
            if let Err(error) =
                outbox.set_cursor(&name, seq + 1, kumod_id.as_ref().map(|(k, id)| (k.as_str(), id.as_deref())))
            {
                tracing::error!(%error, pusher = name, "cannot advance the outbox cursor");
            }
        }
    }
}

type KumodIdChange = Option<(String, Option<String>)>;

async fn post(
    client: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> Result<serde_json::Value, DeliveryError> {
    let response = client.post(&url).json(body).send().await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        return Err(DeliveryError::Status { url, status: status.as_u16(), body: text });
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// One decision to kumod: the admin call, and the suspension id to remember or forget.
async fn push_kumod(
    client: &reqwest::Client,
    base: &str,
    outbox: &Outbox,
    decision: &Decision,
) -> Result<KumodIdChange, DeliveryError> {
    let target = &decision.target;
    let reason = format!("{} (vigil decision {})", decision.reason, decision.decision_id);
    let path = match decision.action {
        ActionKind::SuspendReadyQueue => "/api/admin/suspend-ready-q/v1",
        ActionKind::SuspendScheduled => "/api/admin/suspend/v1",
        ActionKind::Bounce => "/api/admin/bounce/v1",
        ActionKind::SetConfig => {
            // The overlay changed: make kumod read it now rather than at its next poll.
            post(client, format!("{base}/api/admin/bump-config-epoch"), &serde_json::Value::Null).await?;
            return Ok(None);
        }
    };
    let key = decision.action_key.clone();
    match decision.status {
        Status::Applied => {
            let body = match decision.action {
                ActionKind::SuspendReadyQueue => serde_json::json!({
                    "name": target.site, "reason": reason, "expires": decision.expires,
                }),
                // Never without a domain: kumod bounces *every* queue when no selector is given.
                _ if target.domain.is_none() => return Ok(None),
                _ => serde_json::json!({
                    "domain": target.domain, "tenant": target.tenant, "campaign": target.campaign,
                    "reason": reason, "expires": decision.expires,
                }),
            };
            let answer = post(client, format!("{base}{path}"), &body).await?;
            let id = answer.get("id").and_then(serde_json::Value::as_str).map(str::to_owned);
            Ok(Some((key, id)))
        }
        Status::Lifted => {
            let Ok(Some(id)) = outbox.kumod_id(&key) else { return Ok(None) };
            let response = client.delete(format!("{base}{path}")).json(&serde_json::json!({ "id": id })).send().await?;
            // 404: it had already expired or was removed by hand; either way it is gone.
            if !response.status().is_success() && response.status() != reqwest::StatusCode::NOT_FOUND {
                return Err(DeliveryError::Status {
                    url: format!("{base}{path}"),
                    status: response.status().as_u16(),
                    body: response.text().await.unwrap_or_default(),
                });
            }
            Ok(Some((key, None)))
        }
        Status::Expired => Ok(Some((key, None))),
        Status::Shadow => Ok(None),
    }
}

async fn push_webhook(
    client: &reqwest::Client,
    hook: &WebhookConfig,
    decision: &Decision,
) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(decision).expect("a decision serialises");
    let timestamp = Utc::now().timestamp();
    let response = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-vigil-timestamp", timestamp.to_string())
        .header("x-vigil-signature", sign(&hook.secret, timestamp, &body))
        .header("x-vigil-decision-id", &decision.decision_id)
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(DeliveryError::Status {
            url: hook.url.clone(),
            status: response.status().as_u16(),
            body: response.text().await.unwrap_or_default(),
        });
    }
    Ok(())
}

async fn publish(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    decision: &Decision,
) -> Result<(), DeliveryError> {
    let payload = serde_json::to_vec(decision).expect("a decision serialises");
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "vigil-decision-id", value: Some(decision.decision_id.as_str()) });
    let record =
        rdkafka::producer::FutureRecord::to(topic).key(&decision.action_key).payload(&payload).headers(headers);
    producer.send(record, Duration::from_secs(30)).await.map_err(|(error, _)| DeliveryError::Kafka(error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::TimeDelta;

    use super::*;
    use crate::actuation::decision::{Evidence, Target};

    type Calls = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

    async fn recording_kumod() -> (String, Calls) {
        let calls: Calls = Arc::default();
        let seen = Arc::clone(&calls);
        let app =
            axum::Router::new().fallback(move |method: axum::http::Method, uri: axum::http::Uri, body: String| {
                let seen = Arc::clone(&seen);
                async move {
                    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    seen.lock().unwrap().push((method.to_string(), uri.path().to_owned(), body));
                    axum::Json(serde_json::json!({"id": "kumod-7"}))
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn suspension(status: Status, expires_in: TimeDelta) -> Decision {
        let now = Utc::now();
        Decision {
            decision_id: String::new(),
            status,
            at: now,
            action: ActionKind::SuspendReadyQueue,
            target: Target {
                egress_source: Some("ip-1".into()),
                site: Some("ip-1->mx.example.com@smtp_client".into()),
                ..Target::default()
            },
            setting: None,
            value: None,
            mx_rollup: false,
            expires: now + expires_in,
            reason: "rate rule r: test".into(),
            rule: "r".into(),
            action_key: "rate:r:ip-1:".into(),
            evidence: Evidence::default(),
        }
        .with_id()
    }

    #[tokio::test]
    async fn a_lift_deletes_the_suspension_by_the_id_kumod_gave_and_old_ones_are_not_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let (url, calls) = recording_kumod().await;
        let applied = suspension(Status::Applied, TimeDelta::hours(1));
        let expired_before_delivery =
            Decision { action_key: "other".into(), ..suspension(Status::Applied, TimeDelta::seconds(-1)) }.with_id();
        let lifted = applied.ended(Status::Lifted, Utc::now(), "recovered".into());
        assert_eq!(outbox.record(&[expired_before_delivery, applied.clone(), lifted]).unwrap(), 3);
        assert_eq!(outbox.record(std::slice::from_ref(&applied)).unwrap(), 0, "recorded once by id");

        let shutdown = CancellationToken::new();
        let config = PushConfig { kumod_url: Some(url), webhooks: Vec::new() };
        let tasks = spawn(&outbox, &config, &shutdown);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while calls.lock().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", calls.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "the expired one is skipped: {calls:?}");
        assert_eq!((calls[0].0.as_str(), calls[0].1.as_str()), ("POST", "/api/admin/suspend-ready-q/v1"));
        assert_eq!(calls[0].2["name"], "ip-1->mx.example.com@smtp_client");
        assert_eq!((calls[1].0.as_str(), calls[1].1.as_str()), ("DELETE", "/api/admin/suspend-ready-q/v1"));
        assert_eq!(calls[1].2, serde_json::json!({"id": "kumod-7"}));
        assert_eq!(outbox.cursor("kumod").unwrap(), 3, "the cursor is past all three");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The MAC of the concatenated string, computed in one piece, as a receiver would.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1700000000.{\"decision_id\":\"x\"}");
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sign("Jefe", 1_700_000_000, b"{\"decision_id\":\"x\"}"), format!("sha256={expected}"));
        assert_ne!(sign("Jefe", 1_700_000_001, b"{}"), sign("Jefe", 1_700_000_000, b"{}"), "the timestamp is signed");
    }
}
