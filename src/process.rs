//! `vigil process --config FILE`: the processor on Kafka. Enriches `vigil.events` into
//! `vigil.enriched` in a consumer group shared with the other instances, folds all of
//! `vigil.enriched` into the derived state, and serves the API answered from that state.
//! See `processor/src/stream.rs` for the guarantees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use vigil_processor::actuation::push::{Outbox, PushConfig};
use vigil_processor::state::FoldRules;
use vigil_processor::stream::{Folder, ensure_stream_topics, run_enrich};
use vigil_processor::{DerivedState, Enricher, ProviderMap};

use crate::cli::ProcessArgs;
use crate::config::{Config, Role};
use crate::run::MapOk;

pub fn process(args: &ProcessArgs) -> anyhow::Result<()> {
    crate::run::run_with_config(&args.config, Role::Process, serve)
}

/// Where `vigil process` listens when the file does not say.
const DEFAULT_LISTEN: &str = "127.0.0.1:8009";

async fn serve(config: Config) -> anyhow::Result<()> {
    let kafka = config.kafka(Role::Process)?.clone();
    let listen: SocketAddr = match config.listen {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse()?,
    };
    let classifier = crate::run::build_classifier(&config.classifier.bounce_rules)?;
    let enricher = Enricher::new(Arc::new(classifier), Arc::new(ProviderMap::bundled()));
    let state = Arc::new(RwLock::new(DerivedState::new()));
    let state_dir = config.data_dir.join("state");
    let outbox = Outbox::open(&state_dir)?;
    let rules = crate::run::load_rules(config.actuation.rules.as_deref())?;
    let ready = Arc::new(AtomicBool::new(false));
    let tokens = crate::run::load_tokens(&config.api.tokens, config.api.tokens_file.as_deref())?;

    let healthz = {
        let ready = Arc::clone(&ready);
        move || async move {
            if ready.load(Ordering::Acquire) {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
    };
    let store = match &config.clickhouse {
        Some(clickhouse) => {
            vigil_warehouse::clickhouse::migrate(clickhouse)
                .await
                .with_context(|| format!("migrating the ClickHouse schema at {}", clickhouse.url))?;
            Some(vigil_warehouse::Store::ClickHouse(vigil_warehouse::clickhouse::ClickHouseReader::new(clickhouse)?))
        }
        None => None,
    };
    let analytics = store.clone().map(vigil_query::analytics::router).unwrap_or_default();
    let tsa = vigil_query::tsa::TsaState {
        view: vigil_processor::view::View::new(Arc::clone(&state)),
        outbox: outbox.clone(),
        token: config.actuation.api_token.as_deref().map(vigil_query::auth::Secret::new),
        trusted_hosts: config.api.trusted_hosts.clone(),
        operator_log: None,
    };
    let app = vigil_query::live::router(vigil_processor::view::View::new(Arc::clone(&state)), store)
        .merge(analytics)
        .merge(vigil_query::tsa::router(tsa.clone(), None))
        .merge(vigil_query::actions::router(tsa))
        .merge(vigil_query::alerts::router(vigil_query::alerts::AlertsState {
            view: vigil_processor::view::View::new(Arc::clone(&state)),
            outbox: None,
        }))
        .merge(crate::metrics::process_router(outbox.clone()))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn_with_state(tokens.clone(), vigil_query::auth::require_role))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::run::REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::map_response(vigil_query::error::retry_after_on_503))
        .layer(axum::middleware::from_fn(vigil_query::metrics::observe));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;
    tokens.check_listener(bound)?;
    // Scripts and tests read this line to find the port when `listen` ends in :0.
    println!("vigil process listening on http://{bound}");

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    crate::run::spawn_http(&mut tasks, listener, app, &shutdown);
    let folder = tokio::task::block_in_place(|| {
        Folder::new(
            kafka.clone(),
            Arc::clone(&state),
            state_dir,
            Duration::from_secs(config.processor.snapshot_seconds),
        )
    })
    .with_rules(
        FoldRules::new(rules)
            .with_complaint_join(config.processor.complaint_join)
            .with_alerts(crate::run::load_alert_rules(config.alerting.rules.as_deref())?),
        Some(outbox.clone()),
    );
    ready.store(true, Ordering::Release);
    tracing::info!(brokers = %kafka.brokers, group = %kafka.group_id, "vigil process starting");
    ensure_stream_topics(&kafka, &shutdown).await?;
    let publisher = vigil_processor::actuation::push::spawn_topic(
        &outbox,
        &vigil_processor::stream::producer(&kafka),
        &kafka.decisions_topic,
        &shutdown,
    )?;
    tasks.spawn(async move { publisher.await.context("decision publisher") });
    let push =
        PushConfig { kumod_url: config.actuation.kumod_url.clone(), webhooks: config.actuation.webhooks.clone() };
    for pusher in vigil_processor::actuation::push::spawn(&outbox, &push, &shutdown) {
        tasks.spawn(async move { pusher.await.context("decision pusher") });
    }

    {
        let stop = shutdown.clone();
        tasks.spawn(async move { folder.run(stop).await.context("fold stage") });
    }
    {
        let stop = shutdown.clone();
        let kafka = kafka.clone();
        let join = config.processor.complaint_join;
        tasks.spawn(async move { run_enrich(kafka, enricher, join, stop).await.context("enrich stage") });
    }
    if let Some(clickhouse) = config.clickhouse.clone() {
        let retention =
            vigil_processor::retention::clickhouse_loop(clickhouse.clone(), config.retention.clone(), shutdown.clone());
        tasks.spawn(retention.map_ok());
        let sink = vigil_processor::clickhouse_feed::feed_from_kafka(
            kafka.clone(),
            clickhouse,
            vigil_processor::clickhouse_feed::FeedBatching::default(),
            shutdown.clone(),
        );
        tasks.spawn(sink.map_ok());
    }
    crate::run::supervise(tasks, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let config = Config::parse(include_str!("../examples/process.toml")).unwrap();
        let kafka = config.kafka(Role::Process).unwrap();
        assert_eq!(kafka.events_topic, "vigil.events");
        assert_eq!(kafka.enriched_topic, "vigil.enriched");
        assert_eq!(kafka.group_id, "vigil-processor");
        assert_eq!(kafka.decisions_topic, "vigil.decisions");
        assert!(config.actuation.kumod_url.is_none() && config.actuation.webhooks.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "data_dir = \"x\"\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"b:9092\"\ngroup = \"typo\"\n";
        let error = Config::parse(text).unwrap_err().to_string();
        assert!(error.contains("group"), "{error}");
    }
}
