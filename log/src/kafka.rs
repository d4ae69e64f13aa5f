//! The Kafka binding of the log of record (DESIGN.md §5): what every role that reads or writes
//! `vigil.*` topics shares, so ingest and the processor stand on this crate and never on each
//! other.
//!
//! - [`KafkaConfig`]: the `[kafka]` section of the configuration file (brokers, topics,
//!   partitions, any librdkafka property);
//! - [`producer_config`]: the settings of every Vigil producer (idempotent, `acks=all`, no local
//!   expiry), which configuration cannot override;
//! - [`ensure_topics`]: topic creation that waits for the broker;
//! - [`LoggingContext`]: the client context that routes librdkafka's own log lines and client
//!   errors into `tracing`, for clients that need nothing else;
//! - [`event_key`] and [`event_headers`]: how an event is keyed and labelled on `vigil.events`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// The `[kafka]` section of the configuration file, one shape for every role: each reads the
/// keys it needs (ingest: the events and dead-letter topics, compression, spill; the
/// processor: the group and the enriched and decisions topics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Where ingest ships events (key: egress source, else recipient domain) and the processor
    /// reads them. `topic` is accepted as an older name.
    #[serde(default = "default_events_topic", alias = "topic")]
    pub events_topic: String,
    /// Where ingest ships dead letters (key: source).
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Where the processor's enrich stage writes (same partition number as the input).
    #[serde(default = "default_enriched_topic")]
    pub enriched_topic: String,
    /// Where every decision of the rules that act is published, keyed by its action.
    #[serde(default = "default_decisions_topic")]
    pub decisions_topic: String,
    /// The consumer group the processor instances share.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Partitions of the topics when Vigil creates them (they are left alone if they exist).
    /// `vigil.enriched` needs at least as many as `vigil.events` (records keep their
    /// partition number).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// `zstd`, `lz4`, `snappy`, `gzip` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Any other librdkafka property, for every client (`security.protocol`, `sasl.*`,
    /// `session.timeout.ms`, ...). The delivery guarantees (`enable.idempotence`, `acks`)
    /// cannot be overridden.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Ingest's file tails send straight to the broker; when it has acknowledged nothing for
    /// this long, they spill to the on-disk buffer instead.
    #[serde(default = "default_spill_after_ms")]
    pub spill_after_ms: u64,
}

impl KafkaConfig {
    /// The settings with the defaults, for `brokers`.
    #[must_use]
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            events_topic: default_events_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            enriched_topic: default_enriched_topic(),
            decisions_topic: default_decisions_topic(),
            group_id: default_group(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            compression: default_compression(),
            properties: BTreeMap::new(),
            spill_after_ms: default_spill_after_ms(),
        }
    }

    /// A client of the brokers with the user's properties: the base of every client.
    #[must_use]
    pub fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client.set("bootstrap.servers", &self.brokers);
        client
    }

    /// A consumer in `group` that commits only what the caller says is done, from the
    /// earliest offset when the group has none.
    #[must_use]
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut client = self.client();
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        client
    }
}

fn default_events_topic() -> String {
    "vigil.events".into()
}
fn default_dead_letter_topic() -> String {
    "vigil.deadletter".into()
}
fn default_enriched_topic() -> String {
    "vigil.enriched".into()
}
fn default_decisions_topic() -> String {
    "vigil.decisions".into()
}
fn default_group() -> String {
    "vigil-processor".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}
fn default_spill_after_ms() -> u64 {
    5_000
}
fn default_compression() -> String {
    "zstd".into()
}

/// The producer settings every Vigil producer uses; the bare-producer benchmark uses them
/// too, so the two are compared like for like.
#[must_use]
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = config.client();
    client
        .set("client.id", "vigil-ingest")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &config.compression)
        // No local expiry: while the broker is away, librdkafka keeps retrying and the
        // buffer absorbs new input, instead of messages failing after a deadline.
        .set("message.timeout.ms", "0")
        .set_if_absent("linger.ms", "5")
        .set_if_absent("queue.buffering.max.messages", "200000");
    client
}

trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

/// The record key of DESIGN §5: the egress source, else the recipient domain (events of one
/// sending IP stay in order on one partition).
#[must_use]
pub fn event_key<'a>(egress_source: Option<&'a str>, recipient_domain: Option<&'a str>) -> &'a str {
    egress_source.filter(|s| !s.is_empty()).or(recipient_domain).unwrap_or("")
}

/// The headers of an event's record: schema version, source and `event_id` (for dedupe).
#[must_use]
pub fn event_headers(schema_version: &str, source: &str, event_id: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: "vigil-schema-version", value: Some(schema_version) })
        .insert(Header { key: "vigil-source", value: Some(source) })
        .insert(Header { key: "vigil-event-id", value: Some(event_id) })
}

/// Creates `topics` with `partitions` if they are missing (existing ones are left alone);
/// while the broker cannot be reached or has not created them yet, retries with backoff
/// until `shutdown`.
///
/// # Errors
/// When the client configuration is invalid.
pub async fn ensure_topics(
    client: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    replication_factor: i32,
    shutdown: &CancellationToken,
) -> Result<(), KafkaError> {
    let admin: AdminClient<LoggingContext> = client.create_with_context(LoggingContext)?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication_factor))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match admin.create_topics(&new, &options).await {
            Ok(results) => {
                let mut pending = false;
                for result in results {
                    match result {
                        Ok(topic) => tracing::info!(topic, "Kafka topic created"),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => {
                            tracing::warn!(topic, %code, "Kafka topic not created yet; retrying");
                            pending = true;
                        }
                    }
                }
                if !pending {
                    // Dropping an admin client joins its polling thread, which can take a
                    // poll interval (100 ms): not on the start-up path.
                    tokio::task::spawn_blocking(move || drop(admin));
                    return Ok(());
                }
            }
            Err(error) => tracing::warn!(%error, "Kafka broker unreachable; retrying topic set-up"),
        }
        backoff.wait(shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// The context of Vigil's Kafka clients that need nothing but logging (topic set-up, dead
/// letters, the processor's consumers and producer); contexts that do more (delivery reports,
/// rebalance hooks) delegate their logging to [`log_librdkafka`] and [`log_client_error`].
#[derive(Debug, Clone, Copy)]
pub struct LoggingContext;

impl rdkafka::consumer::ConsumerContext for LoggingContext {}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

/// librdkafka's own log lines, through `tracing`. A broker that cannot be reached is expected
/// (ingest buffers meanwhile), so its connection failures are warnings, not errors.
pub fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// A client error: a broker that cannot be reached is a warning (the roles wait or buffer),
/// anything else an error.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    let transport = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    );
    if transport {
        tracing::warn!(target: "librdkafka", %error, "Kafka broker unreachable; buffering: {reason}");
    } else {
        tracing::error!(target: "librdkafka", %error, "Kafka client error: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_egress_source_else_the_recipient_domain() {
        assert_eq!(event_key(Some("ip-1"), Some("gmail.com")), "ip-1");
        assert_eq!(event_key(None, Some("gmail.com")), "gmail.com");
        assert_eq!(event_key(Some(""), Some("gmail.com")), "gmail.com");
        assert_eq!(event_key(None, None), "");
    }

    #[test]
    fn delivery_guarantees_cannot_be_configured_away() {
        let config: KafkaConfig = toml_config(
            "brokers = \"127.0.0.1:9092\"\n[properties]\n\"enable.idempotence\" = \"false\"\nacks = \"1\"\n",
        );
        let client = producer_config(&config);
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("compression.type"), Some("zstd"));
        assert_eq!(config.events_topic, "vigil.events");
    }

    fn toml_config(text: &str) -> KafkaConfig {
        toml::from_str(text).unwrap()
    }
}
