//! The async edge of actuation: the durable decision log and outbox, and the pushers that
//! deliver decisions to kumod's admin API and to signed webhooks, and record every decision in
//! `vigil.decisions` (Kafka) or ClickHouse's `decisions` table.
//!
//! - Every decision is recorded once, by `decision_id`, in a redb file beside the state
//!   snapshot: the embedded `vigil.decisions`. Replays that decide again record nothing new.
//! - Each pusher keeps its own cursor in the same file and advances it after a delivery
//!   succeeded (or was given up, said in the log): a restart resumes where it stopped, so a
//!   decision is delivered once, and a crash between a delivery and its cursor write
//!   re-sends at most that one (webhook receivers dedupe by `decision_id`).
//! - A decision whose action expired before it could be delivered is skipped, never
//!   applied late; shadow decisions are never delivered.
//! - Two pushers keep the record of every decision, in order, shadow and expired ones
//!   included: the Kafka topic `vigil.decisions` and ClickHouse's `decisions` table (for
//!   dashboards).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use vigil_log::backoff::Backoff;

use super::decision::{ActionKind, Decision, Status};
use crate::metrics;

/// redb's page cache for an outbox (decisions, alerts), instead of its 1 GiB default.
pub(crate) const OUTBOX_CACHE_BYTES: usize = 8 << 20;

const DECISIONS: TableDefinition<u64, &str> = TableDefinition::new("decisions");
const BY_ID: TableDefinition<&str, u64> = TableDefinition::new("decision_ids");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// action key -> the id kumod gave the suspension or bounce, to lift it early.
const KUMOD_IDS: TableDefinition<&str, &str> = TableDefinition::new("kumod_ids");
/// (pusher, seq) of decisions settled past the pusher's cursor (the cursor waits at the oldest
/// decision still being retried).
const SETTLED: TableDefinition<(&str, u64), ()> = TableDefinition::new("settled");
/// decision id -> the deliveries given up, as JSON `[FailedDelivery]`.
const FAILURES: TableDefinition<&str, &str> = TableDefinition::new("failures");

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
    /// A fault for the tests: writes refused as a full disk would refuse them.
    #[cfg(test)]
    refuse_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Outbox {
    /// Makes [`Self::record`] fail (or work again), as a full disk would.
    pub(crate) fn refuse_writes(&self, refuse: bool) {
        self.refuse_writes.store(refuse, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Outbox {
    /// Opens (or creates) `dir/decisions.redb`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir)?;
        // redb's default page cache (1 GiB) grows with what is written; an outbox is small
        // and read near its cursors.
        let db = Database::builder().set_cache_size(OUTBOX_CACHE_BYTES).create(dir.join("decisions.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(DECISIONS)?;
        tx.open_table(BY_ID)?;
        tx.open_table(CURSORS)?;
        tx.open_table(KUMOD_IDS)?;
        tx.open_table(SETTLED)?;
        tx.open_table(FAILURES)?;
        tx.commit()?;
        Ok(Self {
            db: Arc::new(db),
            recorded: Arc::new(Notify::new()),
            live: broadcast::channel(4096).0,
            running: Arc::default(),
            #[cfg(test)]
            refuse_writes: Arc::default(),
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
        #[cfg(test)]
        if self.refuse_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("no space left on device (a test's fault)").into());
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

    /// Tells live subscribers about actions in force whose expiry moved quietly (see
    /// [`super::ActiveActions`]): sent as they stand, recorded nowhere.
    pub fn announce(&self, extended: Vec<Decision>) {
        for decision in extended {
            // Nobody listening is fine: the table in force has it.
            let _ = self.live.send(decision);
        }
    }

    /// Decisions as they are recorded, and quiet extensions as they happen (TSA subscribers).
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

    /// The decisions at or past `from` that `name` has settled (delivered, skipped, failed,
    /// superseded) while an older one was still being retried.
    fn settled(&self, name: &str, from: u64) -> Result<std::collections::BTreeSet<u64>, OutboxError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SETTLED)?;
        let mut out = std::collections::BTreeSet::new();
        for row in table.range((name, from)..=(name, u64::MAX))? {
            out.insert(row?.0.value().1);
        }
        Ok(out)
    }

    /// Records what `name` settled and moves its cursor to `cursor` (the oldest decision not
    /// settled), in one transaction: the kumod ids given or forgotten, the failures, and the
    /// settled decisions past the cursor (those before it are dropped: the cursor covers them).
    fn settle(
        &self,
        name: &str,
        cursor: u64,
        settled: &[(u64, KumodIdChange, Option<FailedDelivery>)],
    ) -> Result<(), OutboxError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(CURSORS)?.insert(name, cursor)?;
            let mut ahead = tx.open_table(SETTLED)?;
            let passed: Vec<u64> = ahead
                .range((name, 0)..(name, cursor))?
                .map(|row| row.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for seq in passed {
                ahead.remove((name, seq))?;
            }
            let mut ids = tx.open_table(KUMOD_IDS)?;
            let mut failures = tx.open_table(FAILURES)?;
            let log = tx.open_table(DECISIONS)?;
            for (seq, change, failure) in settled {
                if *seq >= cursor {
                    ahead.insert((name, *seq), ())?;
                }
                if let Some((key, id)) = change {
                    match id {
                        Some(id) => ids.insert(key.as_str(), id.as_str())?,
                        None => ids.remove(key.as_str())?,
                    };
                }
                if let Some(failure) = failure
                    && let Some(json) = log.get(*seq)?
                {
                    let decision: Decision = serde_json::from_str(json.value())?;
                    let mut all: Vec<FailedDelivery> = match failures.get(decision.decision_id.as_str())? {
                        Some(json) => serde_json::from_str(json.value())?,
                        None => Vec::new(),
                    };
                    all.push(failure.clone());
                    failures.insert(decision.decision_id.as_str(), serde_json::to_string(&all)?.as_str())?;
                }
            }
        }
        tx.commit().map_err(OutboxError::from)
    }

    /// Deletes decisions made before `before` that every pusher has passed (retention,
    /// `[retention] decisions`), with their ids and given-up deliveries; at most `max` per
    /// call, oldest first. The newest decision is always kept: sequence numbers go on from it,
    /// and pushers' cursors with them. Returns how many were deleted.
    ///
    /// A decision deleted here and decided again (a rebuild of the state from a log older
    /// than the snapshot) would be recorded again; its action has long expired by then, and
    /// pushers skip expired actions, so nothing is applied twice.
    ///
    /// # Errors
    /// When the file cannot be read or written; then nothing was deleted.
    pub fn delete_before(&self, before: DateTime<Utc>, max: usize) -> Result<u64, OutboxError> {
        let tx = self.db.begin_write()?;
        let deleted;
        {
            let mut log = tx.open_table(DECISIONS)?;
            let Some(newest) = log.last()?.map(|(k, _)| k.value()) else { return Ok(0) };
            let cursors = tx.open_table(CURSORS)?;
            let mut passed = newest;
            for row in cursors.iter()? {
                passed = passed.min(row?.1.value());
            }
            let mut old = Vec::new();
            for row in log.range(..passed)?.take(max) {
                let (seq, json) = row?;
                let decision: Decision = serde_json::from_str(json.value())?;
                // Decisions are recorded in about the order they are made.
                if decision.at >= before {
                    break;
                }
                old.push((seq.value(), decision.decision_id));
            }
            let mut ids = tx.open_table(BY_ID)?;
            let mut failures = tx.open_table(FAILURES)?;
            for (seq, id) in &old {
                log.remove(seq)?;
                ids.remove(id.as_str())?;
                failures.remove(id.as_str())?;
            }
            deleted = old.len() as u64;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// The deliveries given up for each of `decision_ids` that has any.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn failures<'a>(
        &self,
        decision_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<std::collections::HashMap<String, Vec<FailedDelivery>>, OutboxError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(FAILURES)?;
        let mut out = std::collections::HashMap::new();
        for id in decision_ids {
            if let Some(json) = table.get(id)? {
                out.insert(id.to_owned(), serde_json::from_str(json.value())?);
            }
        }
        Ok(out)
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

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("publishing to Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("inserting into ClickHouse: {0}")]
    ClickHouse(#[from] vigil_warehouse::clickhouse::ClickHouseError),
    #[error("request failed: {}", chain(.0))]
    Http(#[from] reqwest::Error),
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

/// An error with its causes, `a: b: c`: reqwest's own message hides the certificate verdict or
/// the refused connection behind "error sending request".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

impl DeliveryError {
    /// An answer that will be the same on every retry: a 4xx other than 408 (timeout) and 429
    /// (slow down), an invalid URL, a certificate the target's server cannot prove. The
    /// decision is marked failed and the queue moves on. Everything else (5xx, connection
    /// refused, a timeout, the broker) is temporary and retried.
    fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => (400..500).contains(status) && !matches!(status, 408 | 429),
            Self::Http(error) => error.is_builder() || vigil_log::tls::is_tls_refusal(error),
            Self::Kafka(_) | Self::ClickHouse(_) => false,
        }
    }
}

/// A delivery given up: the decision, the pusher and the answer, for `/api/v1/decisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FailedDelivery {
    /// The pusher (`kumod`, `webhook:<name>`).
    pub pusher: String,
    /// What the target answered, or why it could not be reached.
    pub answer: String,
    pub at: chrono::DateTime<Utc>,
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
    /// Every decision, as a row of ClickHouse's `decisions` table.
    ClickHouse(vigil_warehouse::clickhouse::DecisionWriter),
}

impl Pusher {
    /// Whether the decision is for this target: MTAs get what is in force, the topic gets
    /// everything.
    fn wants(&self, decision: &Decision) -> Option<&'static str> {
        match self {
            Self::Topic { .. } | Self::ClickHouse(_) => None,
            _ if decision.status == Status::Shadow => Some("shadow"),
            _ if decision.status == Status::Applied && decision.expires <= Utc::now() => {
                Some("expired before delivery")
            }
            _ => None,
        }
    }

    /// The topic is the record of every decision, in order: nothing is superseded or skipped
    /// there, so a failure holds it back. An MTA only needs what is in force per scope.
    fn in_order(&self) -> bool {
        matches!(self, Self::Topic { .. } | Self::ClickHouse(_))
    }

    async fn deliver(
        &self,
        client: &reqwest::Client,
        outbox: &Outbox,
        decision: &Decision,
    ) -> Result<KumodIdChange, DeliveryError> {
        match self {
            Self::Kumod { base } => push_kumod(client, base, outbox, decision).await,
            Self::Webhook(hook) => push_webhook(client, hook, decision).await.map(|()| None),
            Self::Topic { producer, topic } => publish(producer, topic, decision).await.map(|()| None),
            Self::ClickHouse(writer) => Ok(writer.insert(&[decision_row(decision)]).await.map(|()| None)?),
        }
    }
}

/// The HTTP client of every pusher: TLS from the process's trust store ([`vigil_log::tls`]),
/// and a timeout well under the loop's pace.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_backend_preconfigured((*vigil_log::tls::client_config()).clone())
        .build()
        .expect("a client from a valid TLS configuration builds")
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
    let name = format!("topic:{topic}");
    let pusher = Pusher::Topic { producer, topic: topic.to_owned() };
    let (outbox, shutdown) = (outbox.clone(), shutdown.clone());
    Ok(tokio::spawn(async move { run(name, pusher, outbox, http_client(), shutdown).await }))
}

/// Starts the task that inserts every recorded decision into ClickHouse's `decisions` table, in
/// record order, advancing its cursor (`clickhouse`) after each insert.
///
/// # Errors
/// When `config` names an invalid database.
pub fn spawn_clickhouse(
    outbox: &Outbox,
    config: &vigil_warehouse::clickhouse::ClickHouseConfig,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, vigil_warehouse::clickhouse::ClickHouseError> {
    let pusher = Pusher::ClickHouse(vigil_warehouse::clickhouse::DecisionWriter::new(config)?);
    let (outbox, shutdown) = (outbox.clone(), shutdown.clone());
    Ok(tokio::spawn(async move { run("clickhouse".into(), pusher, outbox, http_client(), shutdown).await }))
}

/// A decision as a row of ClickHouse's `decisions` table.
fn decision_row(decision: &Decision) -> vigil_warehouse::clickhouse::DecisionRow {
    let millis = vigil_warehouse::clickhouse::epoch_millis;
    let name = |value: serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    let target = &decision.target;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    vigil_warehouse::clickhouse::DecisionRow {
        at_ms: millis(decision.at),
        decision_id: decision.decision_id.clone(),
        status: name(serde_json::to_value(decision.status).unwrap_or_default()),
        action: name(serde_json::to_value(decision.action).unwrap_or_default()),
        rule: decision.rule.clone(),
        egress_source: text(&target.egress_source),
        provider: text(&target.provider),
        domain: text(&target.domain),
        tenant: text(&target.tenant),
        campaign: text(&target.campaign),
        site: text(&target.site),
        setting: text(&decision.setting),
        value: decision.value.as_ref().map(super::SettingValue::to_toml).unwrap_or_default(),
        expires_ms: millis(decision.expires),
        reason: decision.reason.clone(),
        action_key: decision.action_key.clone(),
        evidence_response: text(&decision.evidence.response),
        evidence_count: decision.evidence.count.unwrap_or(0),
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
    let client = http_client();
    pushers
        .into_iter()
        .map(|(name, pusher)| {
            let (outbox, client, shutdown) = (outbox.clone(), client.clone(), shutdown.clone());
            tokio::spawn(async move { run(name, pusher, outbox, client, shutdown).await })
        })
        .collect()
}

/// A decision whose delivery failed for a temporary reason, waiting for its retry.
struct Pending {
    seq: u64,
    decision: Decision,
    backoff: Backoff,
    due: tokio::time::Instant,
}

/// What one attempt came to.
enum Attempt {
    /// Delivered, or nothing to deliver (shadow, expired): settled.
    Settled(KumodIdChange),
    /// Given up with the answer: settled, and recorded as failed.
    Failed(String),
    /// To be retried.
    Retry(DeliveryError),
}

/// One pusher's loop. Decisions are read from the outbox in record order and each is tried
/// once as it comes; one that fails for a temporary reason waits for its own retry
/// (jittered backoff) while the decisions after it go on, so a target refusing one decision
/// never holds back the others. A later decision for the same action supersedes one still
/// waiting (an MTA needs what is in force, not the history). The cursor stays at the oldest
/// decision not settled, and decisions settled past it are recorded, so a restart retries
/// exactly the pending ones and sends nothing twice.
async fn run(name: String, pusher: Pusher, outbox: Outbox, client: reqwest::Client, shutdown: CancellationToken) {
    // A cursor from the start, so the pusher's backlog is reported before its first delivery.
    if let Err(error) = outbox.ensure_cursor(&name) {
        tracing::error!(%error, pusher = name, "cannot create the outbox cursor");
    }
    let mut read_from = outbox.cursor(&name).unwrap_or_else(|error| {
        tracing::error!(%error, pusher = name, "cannot read the outbox cursor; starting from the beginning");
        0
    });
    let mut settled_ahead = outbox.settled(&name, read_from).unwrap_or_else(|error| {
        tracing::error!(%error, pusher = name, "cannot read the settled decisions; they may be re-sent");
        std::collections::BTreeSet::new()
    });
    let mut pending: std::collections::HashMap<String, Pending> = std::collections::HashMap::new();
    let mut ledger = Ledger {
        settled: Vec::new(),
        stored_cursor: read_from,
        store_failures: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
    };
    loop {
        let recorded = outbox.recorded.notified();
        let batch = if pusher.in_order() && !pending.is_empty() {
            Vec::new()
        } else {
            outbox.read(read_from, 256).unwrap_or_else(|error| {
                tracing::error!(%error, pusher = name, "cannot read the decision log");
                Vec::new()
            })
        };
        let full = batch.len() == 256;
        for (seq, decision) in batch {
            read_from = seq + 1;
            if settled_ahead.remove(&seq) {
                continue;
            }
            if !pusher.in_order()
                && let Some(older) = pending.remove(&decision.action_key)
            {
                tracing::info!(
                    pusher = name,
                    superseded = older.decision.decision_id,
                    by = decision.decision_id,
                    "an undelivered decision is superseded by a later one for the same action"
                );
                ledger.settled.push((older.seq, None, None));
            }
            let attempt = attempt(&pusher, &client, &outbox, &decision, &name).await;
            settle_or_wait(attempt, &name, seq, decision, None, &mut pending, &mut ledger.settled);
            // At once: the next decision may need what this one left (kumod's id to lift).
            ledger.flush(&outbox, &name, &pending, read_from, &shutdown).await;
            if pusher.in_order() && !pending.is_empty() {
                // A record of every decision in order: nothing after the one waiting is tried
                // before it (the rest of the batch is read again once it is delivered).
                break;
            }
        }
        let now = tokio::time::Instant::now();
        let mut due: Vec<String> = pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
        due.sort_by_key(|key| pending[key].seq);
        for key in due {
            let Some(waiting) = pending.remove(&key) else { continue };
            let attempt = attempt(&pusher, &client, &outbox, &waiting.decision, &name).await;
            settle_or_wait(
                attempt,
                &name,
                waiting.seq,
                waiting.decision,
                Some(waiting.backoff),
                &mut pending,
                &mut ledger.settled,
            );
            ledger.flush(&outbox, &name, &pending, read_from, &shutdown).await;
        }
        // Past decisions settled before a restart, which needed no delivery now.
        ledger.flush(&outbox, &name, &pending, read_from, &shutdown).await;
        metrics::refresh_pending(&name, pending.len());
        if full {
            continue;
        }
        let next_retry = pending.values().map(|p| p.due).min();
        let idle = tokio::time::Instant::now() + Duration::from_secs(5);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = recorded => {}
            () = tokio::time::sleep_until(next_retry.map_or(idle, |due| due.min(idle))) => {}
        }
    }
}

/// What a pusher has settled and not yet recorded, and where its recorded cursor stands.
struct Ledger {
    settled: Vec<(u64, KumodIdChange, Option<FailedDelivery>)>,
    stored_cursor: u64,
    store_failures: Backoff,
}

impl Ledger {
    /// Records what was just settled, and moves the cursor to the oldest decision still
    /// pending (or past everything read).
    async fn flush(
        &mut self,
        outbox: &Outbox,
        name: &str,
        pending: &std::collections::HashMap<String, Pending>,
        read_from: u64,
        shutdown: &CancellationToken,
    ) {
        let cursor = pending.values().map(|p| p.seq).min().unwrap_or(read_from).min(read_from);
        if self.settled.is_empty() && cursor == self.stored_cursor {
            return;
        }
        match outbox.settle(name, cursor, &self.settled) {
            Ok(()) => {
                self.stored_cursor = cursor;
                self.store_failures.reset();
            }
            Err(error) => {
                // Not settled on disk: a restart re-sends these, which receivers dedupe.
                tracing::error!(%error, pusher = name, "cannot record the deliveries in the outbox");
                self.store_failures.wait(shutdown).await;
            }
        }
        self.settled.clear();
    }
}

async fn attempt(
    pusher: &Pusher,
    client: &reqwest::Client,
    outbox: &Outbox,
    decision: &Decision,
    name: &str,
) -> Attempt {
    if let Some(why) = pusher.wants(decision) {
        tracing::debug!(pusher = name, decision = decision.decision_id, why, "not delivered");
        return Attempt::Settled(None);
    }
    match pusher.deliver(client, outbox, decision).await {
        Ok(change) => {
            tracing::debug!(pusher = name, decision = decision.decision_id, "decision delivered");
            Attempt::Settled(change)
        }
        Err(error) if error.is_permanent() => Attempt::Failed(error.to_string()),
        Err(error) => Attempt::Retry(error),
    }
}

fn settle_or_wait(
    attempt: Attempt,
    name: &str,
    seq: u64,
    decision: Decision,
    backoff: Option<Backoff>,
    pending: &mut std::collections::HashMap<String, Pending>,
    settled: &mut Vec<(u64, KumodIdChange, Option<FailedDelivery>)>,
) {
    match attempt {
        Attempt::Settled(change) => settled.push((seq, change, None)),
        Attempt::Failed(answer) => {
            tracing::warn!(pusher = name, decision = decision.decision_id, %answer, "delivery refused for good; the decision is marked failed");
            metrics::delivery_failed(name, true);
            let failure = FailedDelivery { pusher: name.to_owned(), answer, at: Utc::now() };
            settled.push((seq, None, Some(failure)));
        }
        Attempt::Retry(error) => {
            let mut backoff =
                backoff.unwrap_or_else(|| Backoff::new(Duration::from_millis(200), Duration::from_secs(30)));
            let wait = backoff.next_delay();
            tracing::warn!(%error, pusher = name, decision = decision.decision_id, retry_in = ?wait, "delivery failed; retrying");
            metrics::delivery_failed(name, false);
            let key = decision.action_key.clone();
            pending.insert(key, Pending { seq, decision, backoff, due: tokio::time::Instant::now() + wait });
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

/// A ready-queue suspension of `ip-1` by a rate rule, for the tests.
#[cfg(test)]
pub(crate) fn test_suspension(status: Status, expires_in: chrono::TimeDelta) -> Decision {
    let now = Utc::now();
    Decision {
        decision_id: String::new(),
        status,
        at: now,
        action: ActionKind::SuspendReadyQueue,
        target: super::decision::Target {
            egress_source: Some("ip-1".into()),
            site: Some("ip-1->mx.example.com@smtp_client".into()),
            ..super::decision::Target::default()
        },
        setting: None,
        value: None,
        mx_rollup: false,
        expires: now + expires_in,
        reason: "rate rule r: test".into(),
        rule: "r".into(),
        action_key: "rate:r:ip-1:".into(),
        evidence: super::decision::Evidence::default(),
    }
    .with_id()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::TimeDelta;

    use super::*;

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

    use super::test_suspension as suspension;

    #[test]
    fn retention_deletes_old_decisions_every_pusher_passed_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let now = Utc::now();
        let made = |days: i64, key: &str| {
            let decision = suspension(Status::Applied, TimeDelta::hours(1));
            Decision { at: now - TimeDelta::days(days), action_key: key.into(), ..decision }.with_id()
        };
        let decisions = [made(100, "a"), made(95, "b"), made(1, "c")];
        assert_eq!(outbox.record(&decisions).unwrap(), 3);
        outbox.ensure_cursor("kumod").unwrap();
        outbox.settle("kumod", 1, &[]).unwrap();
        let cutoff = now - TimeDelta::days(90);
        assert_eq!(outbox.delete_before(cutoff, 100).unwrap(), 1, "the second waits for the pusher");
        outbox.settle("kumod", 3, &[]).unwrap();
        assert_eq!(outbox.delete_before(cutoff, 100).unwrap(), 1);
        assert_eq!(outbox.delete_before(cutoff, 100).unwrap(), 0, "the recent one stays");
        let kept = outbox.read(0, 10).unwrap();
        assert_eq!(kept.iter().map(|(seq, d)| (*seq, d.action_key.as_str())).collect::<Vec<_>>(), vec![(2, "c")]);
        assert_eq!(outbox.record(std::slice::from_ref(&decisions[2])).unwrap(), 0, "its id is still known");

        // Everything old and nobody pushing: the newest stays, so numbers go on from it.
        let idle = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(idle.path()).unwrap();
        outbox.record(&[made(100, "a"), made(99, "b")]).unwrap();
        assert_eq!(outbox.delete_before(cutoff, 100).unwrap(), 1);
        outbox.record(&[made(0, "d")]).unwrap();
        assert_eq!(outbox.read(0, 10).unwrap().iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1, 2]);
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

    /// A webhook target that answers each delivery with `answer(decision id, attempt number)`
    /// and records (decision id, status answered).
    type Answered = Arc<Mutex<Vec<(String, u16)>>>;

    async fn scripted_webhook(
        answer: impl Fn(&str, usize) -> u16 + Clone + Send + Sync + 'static,
    ) -> (WebhookConfig, Answered) {
        let answered: Answered = Arc::default();
        let seen = Arc::clone(&answered);
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let (seen, answer) = (Arc::clone(&seen), answer.clone());
            async move {
                let id = headers.get("x-vigil-decision-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let mut seen = seen.lock().unwrap();
                let attempt = seen.iter().filter(|(d, _)| *d == id).count();
                let status = answer(&id, attempt);
                seen.push((id, status));
                (axum::http::StatusCode::from_u16(status).unwrap(), "scripted answer")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (WebhookConfig { name: "ops".into(), url, secret: "s".into() }, answered)
    }

    /// The ClickHouse record keeps every decision in order: a refused insert is retried before
    /// anything after it is tried, even for the same action (a stand-in for ClickHouse's HTTP
    /// interface refuses the first two inserts, then stores).
    #[tokio::test]
    async fn the_clickhouse_record_keeps_every_decision_in_order_through_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        // (status answered, request body) of every insert.
        type Inserts = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;
        let stored: Inserts = Arc::default();
        let seen = Arc::clone(&stored);
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let mut seen = seen.lock().unwrap();
                let status = if seen.len() < 2 { 503 } else { 200 };
                seen.push((status, body.to_vec()));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        // An action and its end: both for the same action key, both must be recorded.
        let applied = suspension(Status::Applied, TimeDelta::hours(1));
        let lifted = applied.ended(Status::Lifted, Utc::now(), "by hand".into());
        let other = for_source("ip-2");
        outbox.record(&[applied.clone(), lifted.clone(), other.clone()]).unwrap();
        let shutdown = CancellationToken::new();
        let config = vigil_warehouse::clickhouse::ClickHouseConfig {
            url,
            database: "vigil".into(),
            user: "default".into(),
            password: String::new(),
        };
        let task = spawn_clickhouse(&outbox, &config, &shutdown).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stored.lock().unwrap().iter().filter(|(s, _)| *s == 200).count() < 3 {
            assert!(std::time::Instant::now() < deadline, "three inserts stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let stored = stored.lock().unwrap().clone();
        let holds = |body: &[u8], id: &str| body.windows(id.len()).any(|w| w == id.as_bytes());
        // Refused twice, the first decision is retried before the second is tried.
        let order: Vec<(u16, &str)> = stored
            .iter()
            .map(|(status, body)| {
                let which = [&applied, &lifted, &other].iter().find(|d| holds(body, &d.decision_id)).map_or("?", |d| {
                    if d.decision_id == applied.decision_id {
                        "applied"
                    } else if d.decision_id == lifted.decision_id {
                        "lifted"
                    } else {
                        "other"
                    }
                });
                (*status, which)
            })
            .collect();
        assert_eq!(order, [(503, "applied"), (503, "applied"), (200, "applied"), (200, "lifted"), (200, "other")]);
        assert_eq!(outbox.cursor("clickhouse").unwrap(), 3);
    }

    fn for_source(source: &str) -> Decision {
        let mut decision = suspension(Status::Applied, TimeDelta::hours(1));
        decision.target.egress_source = Some(source.into());
        decision.action_key = format!("rate:r:{source}:");
        decision.reason = format!("for {source}");
        decision.with_id()
    }

    async fn wait_for(what: &str, answered: &Answered, done: impl Fn(&[(String, u16)]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done(&answered.lock().unwrap()) {
            assert!(std::time::Instant::now() < deadline, "{what}: {:?}", answered.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_refused_decision_is_marked_failed_and_the_others_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let refused = for_source("ip-refused");
        let others = [for_source("ip-2"), for_source("ip-3")];
        let refused_id = refused.decision_id.clone();
        let target_refuses = refused_id.clone();
        let (hook, answered) = scripted_webhook(move |id, _| if id == target_refuses { 400 } else { 200 }).await;
        outbox.record(&[refused.clone(), others[0].clone(), others[1].clone()]).unwrap();
        let shutdown = CancellationToken::new();
        let tasks = spawn(&outbox, &PushConfig { kumod_url: None, webhooks: vec![hook] }, &shutdown);
        wait_for("both other decisions delivered", &answered, |seen| {
            others.iter().all(|d| seen.iter().any(|(id, status)| *id == d.decision_id && *status == 200))
        })
        .await;
        let failures = outbox.failures([refused_id.as_str()]).unwrap();
        let failed = &failures[&refused_id];
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].pusher, "webhook:ops");
        assert!(failed[0].answer.contains("400") && failed[0].answer.contains("scripted answer"), "{failed:?}");
        // The refused decision was tried once, never again: a 400 will not change on retry.
        let attempts = answered.lock().unwrap().iter().filter(|(id, _)| *id == refused_id).count();
        assert_eq!(attempts, 1);
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(outbox.cursor("webhook:ops").unwrap(), 3, "everything settled");
    }

    #[tokio::test]
    async fn a_temporary_failure_is_retried_once_it_clears_without_holding_back_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        // Every decision's first attempt is answered 503, its second 200.
        let (hook, answered) = scripted_webhook(|_, attempt| if attempt == 0 { 503 } else { 200 }).await;
        let decisions = [for_source("ip-1"), for_source("ip-2")];
        outbox.record(&decisions).unwrap();
        let shutdown = CancellationToken::new();
        let tasks = spawn(&outbox, &PushConfig { kumod_url: None, webhooks: vec![hook] }, &shutdown);
        wait_for("both delivered after their 503", &answered, |seen| {
            seen.iter().filter(|(_, s)| *s == 200).count() == 2
        })
        .await;
        // Both were first tried before either was retried: the first 503 held nothing back.
        let order: Vec<u16> = answered.lock().unwrap().iter().map(|(_, s)| *s).collect();
        assert_eq!(order, [503, 503, 200, 200]);
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(outbox.failures(decisions.iter().map(|d| d.decision_id.as_str())).unwrap().is_empty());
        assert_eq!(outbox.cursor("webhook:ops").unwrap(), 2);
    }

    #[tokio::test]
    async fn a_later_decision_for_the_same_action_supersedes_one_waiting_for_its_retry() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let (hook, answered) = scripted_webhook(|_, attempt| if attempt == 0 { 503 } else { 200 }).await;
        let applied = for_source("ip-1");
        let shutdown = CancellationToken::new();
        let tasks = spawn(&outbox, &PushConfig { kumod_url: None, webhooks: vec![hook] }, &shutdown);
        outbox.record(std::slice::from_ref(&applied)).unwrap();
        wait_for("the first attempt", &answered, |seen| seen.len() == 1).await;
        let lifted = applied.ended(Status::Lifted, Utc::now(), "recovered".into());
        outbox.record(std::slice::from_ref(&lifted)).unwrap();
        wait_for("the lift delivered", &answered, |seen| {
            seen.iter().any(|(id, s)| *id == lifted.decision_id && *s == 200)
        })
        .await;
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        let tried: Vec<String> = answered.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(tried.iter().filter(|id| **id == applied.decision_id).count(), 1, "never retried: {tried:?}");
        assert_eq!(outbox.cursor("webhook:ops").unwrap(), 2);
    }

    #[tokio::test]
    async fn a_restart_retries_what_was_pending_and_resends_nothing_settled() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        // ip-1 is refused for now (503) and ip-2 delivered: the cursor waits at ip-1.
        let (hook, answered) = scripted_webhook(|_, _| 200).await;
        let decisions = [for_source("ip-1"), for_source("ip-2")];
        outbox.record(&decisions).unwrap();
        outbox.ensure_cursor("webhook:ops").unwrap();
        outbox.settle("webhook:ops", 0, &[(1, None, None)]).unwrap();
        let shutdown = CancellationToken::new();
        let tasks = spawn(&outbox, &PushConfig { kumod_url: None, webhooks: vec![hook] }, &shutdown);
        wait_for("ip-1 delivered", &answered, |seen| seen.iter().any(|(id, _)| *id == decisions[0].decision_id)).await;
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        let tried: Vec<String> = answered.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(tried, [decisions[0].decision_id.clone()], "ip-2 was settled before the restart");
        assert_eq!(outbox.cursor("webhook:ops").unwrap(), 2);
        assert!(outbox.settled("webhook:ops", 0).unwrap().is_empty(), "nothing left past the cursor");
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
