//! `vigil ingest --config FILE`: only ingest, shipping to Kafka. The sources are the ones of
//! `vigil run`. File tails send straight to the broker and checkpoint once it acknowledged
//! ([`vigil_ingest::direct`]); the HTTP hook and syslog, which cannot read their input again,
//! append to an on-disk buffer (the embedded log, bounded) that the Kafka forwarder drains, and
//! so do file tails while the broker is away. Nothing is lost or dropped.

use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use vigil_ingest::direct::DirectShipper;
use vigil_ingest::forward::{BUFFER_CONSUMER, BUFFER_DEAD_LETTER_CURSOR, Forwarder};
use vigil_log::EventLog;
use vigil_query::auth::{IngestGuard, require_ingest};

use crate::cli::IngestArgs;
use crate::config::{Config, Role};

pub fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    crate::run::run_with_config(&args.config, Role::Ingest, serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let kafka = config.kafka(Role::Ingest)?.clone();
    if config.privacy.recipients != crate::config::RecipientMode::Keep {
        // File tails ship straight to the broker, past the buffer that would rewrite them.
        anyhow::bail!("[privacy] recipients other than \"keep\" are applied by vigil run only so far");
    }
    let buffer_dir = config.data_dir.join("buffer");
    let log = EventLog::open(&buffer_dir)
        .with_context(|| format!("opening the buffer in {}", buffer_dir.display()))?
        .with_limit(BUFFER_CONSUMER, BUFFER_DEAD_LETTER_CURSOR, config.buffer.max_events);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(listen) = config.listen {
        // This role reads no [actuation], so no TSA token: ingest tokens and trusted hosts.
        let tokens = crate::run::load_tokens(&config.api.tokens, config.api.tokens_file.as_deref())?;
        let guard = IngestGuard::new(&tokens, None, &config.api.trusted_hosts);
        let admission = vigil_ingest::kumomta::Admission::new(config.api.max_ingest_in_flight);
        let receiver = || {
            vigil_ingest::kumomta::receiver(log.clone(), config.api.max_body_bytes, admission.clone())
                .route_layer(axum::middleware::from_fn_with_state(guard.clone(), require_ingest))
        };
        let relays = vigil_ingest::relay::http::router(&log, config.api.max_body_bytes, &admission, &config.relays)
            .map_err(anyhow::Error::msg)?;
        let uploads = vigil_ingest::upload::router(
            log.clone(),
            config.api.max_body_bytes,
            admission.clone(),
            vigil_ingest::mail::Verp::new(&config.sources.verp).map_err(anyhow::Error::msg)?,
        )
        .route_layer(axum::middleware::from_fn_with_state(guard.clone(), require_ingest));
        let app = axum::Router::new()
            .route(vigil_ingest::kumomta::PATH, receiver())
            .merge(relays)
            .merge(uploads)
            // kumod's TSA publisher, pointed at the ingest role: the same receiver.
            .route(vigil_query::tsa::publish_log_v1::PATH, receiver())
            .merge(crate::metrics::router(log.clone(), None, None))
            .route("/healthz", get(|| async { "ok\n" }))
            .layer(axum::middleware::map_response(vigil_query::error::retry_after_on_503))
            .layer(axum::middleware::from_fn(vigil_query::metrics::observe));
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let bound = listener.local_addr()?;
        guard.check_listener(bound)?;
        // Scripts and tests read this line to find the port when `listen` ends in :0.
        println!("vigil ingest listening on http://{bound}");
        crate::run::spawn_http(&mut tasks, listener, app, &shutdown);
    }
    tracing::info!(
        brokers = %kafka.brokers,
        topic = %kafka.events_topic,
        buffer = config.buffer.max_events,
        "vigil ingest starting"
    );
    let direct = Arc::new(DirectShipper::new(log.clone(), kafka.clone()).context("Kafka producer")?);
    let forwarder = Forwarder::new(log.clone(), kafka, direct.topics_ready());
    {
        let stop = shutdown.clone();
        tasks.spawn(async move { forwarder.run(stop).await.context("Kafka forwarder") });
        let (direct, stop) = (Arc::clone(&direct), shutdown.clone());
        tasks.spawn(async move { direct.run(stop).await.context("Kafka direct path") });
    }
    // With the broker up, tails go direct from their first batch.
    direct.wait_ready().await;
    crate::sources::start(&config.sources, &log, Some(&direct), &config.api.trusted_hosts, &mut tasks, &shutdown)
        .await?;

    crate::run::supervise(tasks, shutdown).await
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let text = include_str!("../examples/ingest.toml");
        let config = Config::parse(text).expect("examples/ingest.toml is valid");
        assert_eq!(config.kafka(Role::Ingest).unwrap().events_topic, "vigil.events");
        assert_eq!(config.buffer.max_events, 1_000_000);
        assert_eq!(config.sources.kumomta_logs, [PathBuf::from("/var/log/kumomta")]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "data_dir = \"/tmp/x\"\n[kafka]\nbrokers = \"b:9092\"\ntopics = \"typo\"\n";
        let error = Config::parse(text).unwrap_err().to_string();
        assert!(error.contains("topics"), "{error}");
    }
}
