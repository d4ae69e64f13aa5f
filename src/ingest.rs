//! `vigil ingest --config FILE`: only ingest, shipping to Kafka. The sources are the ones of
//! `vigil run`. File tails send straight to the broker and checkpoint once it acknowledged
//! ([`vigil_ingest::direct`]); the HTTP hook and syslog, which cannot read their input again,
//! append to an on-disk buffer (the embedded log, bounded) that the Kafka forwarder drains, and
//! so do file tails while the broker is away. Nothing is lost or dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use vigil_ingest::direct::DirectShipper;
use vigil_ingest::kafka::{BUFFER_CONSUMER, BUFFER_DEAD_LETTER_CURSOR, Forwarder, KafkaConfig};
use vigil_log::EventLog;

use crate::cli::IngestArgs;
use crate::sources::SourcesConfig;

/// The configuration file (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestConfig {
    /// Where the buffer and the sources' checkpoints live.
    data_dir: PathBuf,
    /// The HTTP listener for the KumoMTA log hook, `/metrics` and `/healthz`; none without it.
    listen: Option<SocketAddr>,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_max_in_flight")]
    max_ingest_in_flight: usize,
    #[serde(default)]
    sources: SourcesConfig,
    kafka: KafkaConfig,
    #[serde(default)]
    buffer: BufferConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BufferConfig {
    /// Events kept on disk while the broker has not acknowledged them; beyond this, tails
    /// pause and the HTTP hook answers 503.
    max_events: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self { max_events: 1_000_000 }
    }
}

fn default_max_body_bytes() -> usize {
    crate::cli::DEFAULT_MAX_BODY_BYTES
}
fn default_max_in_flight() -> usize {
    crate::cli::DEFAULT_MAX_INGEST_IN_FLIGHT
}

pub fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    crate::run::run_with_config(&args.config, serve)
}

async fn serve(config: IngestConfig) -> anyhow::Result<()> {
    let buffer_dir = config.data_dir.join("buffer");
    let log = EventLog::open(&buffer_dir)
        .with_context(|| format!("opening the buffer in {}", buffer_dir.display()))?
        .with_limit(BUFFER_CONSUMER, BUFFER_DEAD_LETTER_CURSOR, config.buffer.max_events);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(listen) = config.listen {
        let app = vigil_ingest::kumomta::router(log.clone(), config.max_body_bytes, config.max_ingest_in_flight)
            .merge(crate::metrics::router(log.clone(), None))
            .route("/healthz", get(|| async { "ok\n" }));
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let bound = listener.local_addr()?;
        if !bound.ip().is_loopback() {
            tracing::warn!(%bound, "listening beyond loopback without authentication: put it behind a firewall");
        }
        // Scripts and tests read this line to find the port when `listen` ends in :0.
        println!("vigil ingest listening on http://{bound}");
        crate::run::spawn_http(&mut tasks, listener, app, &shutdown);
    }
    tracing::info!(
        brokers = %config.kafka.brokers,
        topic = %config.kafka.topic,
        buffer = config.buffer.max_events,
        "vigil ingest starting"
    );
    let direct = Arc::new(DirectShipper::new(log.clone(), config.kafka.clone()).context("Kafka producer")?);
    let forwarder = Forwarder::new(log.clone(), config.kafka, direct.topics_ready());
    {
        let stop = shutdown.clone();
        tasks.spawn(async move { forwarder.run(stop).await.context("Kafka forwarder") });
        let (direct, stop) = (Arc::clone(&direct), shutdown.clone());
        tasks.spawn(async move { direct.run(stop).await.context("Kafka direct path") });
    }
    // With the broker up, tails go direct from their first batch.
    direct.wait_ready().await;
    crate::sources::start(&config.sources, &log, Some(&direct), &mut tasks, &shutdown).await?;

    crate::run::supervise(tasks, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let text = include_str!("../examples/ingest.toml");
        let config: IngestConfig = toml::from_str(text).expect("examples/ingest.toml is valid");
        assert_eq!(config.kafka.topic, "vigil.events");
        assert_eq!(config.buffer.max_events, 1_000_000);
        assert_eq!(config.sources.kumomta_logs, [PathBuf::from("/var/log/kumomta")]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "data_dir = \"/tmp/x\"\n[kafka]\nbrokers = \"b:9092\"\ntopics = \"typo\"\n";
        let error = toml::from_str::<IngestConfig>(text).unwrap_err().to_string();
        assert!(error.contains("topics"), "{error}");
    }
}
