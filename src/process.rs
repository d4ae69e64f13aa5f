//! `vigil process --config FILE`: the processor on Kafka. Enriches `vigil.events` into
//! `vigil.enriched` in a consumer group shared with the other instances, folds all of
//! `vigil.enriched` into the derived state, and serves the API answered from that state.
//! See `processor/src/stream.rs` for the guarantees.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use vigil_processor::actuation::push::{Outbox, PushConfig, WebhookConfig};
use vigil_processor::state::FoldRules;
use vigil_processor::stream::{Folder, StreamConfig, ensure_stream_topics, run_enrich};
use vigil_processor::{DerivedState, Enricher, ProviderMap};

use crate::cli::ProcessArgs;
use crate::run::MapOk;

/// The configuration file (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessConfig {
    /// Where the derived state's snapshot (with its position in `vigil.enriched`) lives.
    data_dir: PathBuf,
    /// The API (`/api/v1/reputation`, `timeseries`, `suppressions`, `state`), `/metrics` and
    /// `/healthz`.
    listen: SocketAddr,
    /// Extra bounce-classifier rule files, as `vigil run --rules`.
    #[serde(default)]
    rules: Vec<PathBuf>,
    /// The rules that act, and where their decisions go.
    #[serde(default)]
    actuation: ActuationConfig,
    /// Seconds between snapshots of the derived state.
    #[serde(default = "default_snapshot_seconds")]
    snapshot_seconds: u64,
    /// `[api]`: bearer tokens with roles.
    #[serde(default)]
    api: ApiConfig,
    /// `[clickhouse]`: insert `vigil.enriched` into this ClickHouse (consumer group
    /// `<group_id>-clickhouse`, shared by the instances) and answer the analytics API from it.
    #[serde(default)]
    clickhouse: Option<vigil_warehouse::clickhouse::ClickHouseConfig>,
    kafka: StreamConfig,
}

/// `[api]`: `[[api.tokens]] name, token, role` (viewer, operator, admin). Without tokens the
/// API is open and `listen` must be on loopback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiConfig {
    #[serde(default)]
    tokens: Vec<vigil_query::auth::TokenConfig>,
}

/// `[actuation]`: every instance folds everything and so decides; give push targets to one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActuationConfig {
    /// The action rules file; default: the bundled set.
    #[serde(default)]
    rules: Option<PathBuf>,
    /// Bearer token for the TSA endpoints and the actions API.
    #[serde(default)]
    api_token: Option<String>,
    /// Client addresses allowed there without the token (kumod's hosts).
    #[serde(default)]
    trusted_hosts: Vec<std::net::IpAddr>,
    /// kumod's HTTP listener, to push suspensions and bounces to (see `vigil run --kumod-url`).
    #[serde(default)]
    kumod_url: Option<String>,
    /// Signed webhooks: `[[actuation.webhooks]] name, url, secret`.
    #[serde(default)]
    webhooks: Vec<WebhookConfig>,
}

fn default_snapshot_seconds() -> u64 {
    60
}

pub fn process(args: &ProcessArgs) -> anyhow::Result<()> {
    crate::run::run_with_config(&args.config, serve)
}

async fn serve(config: ProcessConfig) -> anyhow::Result<()> {
    let classifier = crate::run::build_classifier(&config.rules)?;
    let enricher = Enricher::new(Arc::new(classifier), Arc::new(ProviderMap::bundled()));
    let state = Arc::new(RwLock::new(DerivedState::new()));
    let state_dir = config.data_dir.join("state");
    let outbox = Outbox::open(&state_dir)?;
    let rules = crate::run::load_rules(config.actuation.rules.as_deref())?;
    let ready = Arc::new(AtomicBool::new(false));
    let tokens = vigil_query::auth::Tokens::new(&config.api.tokens).context("in [api] tokens")?;

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
    let app = vigil_query::live::router(Arc::clone(&state), store)
        .merge(analytics)
        .merge(vigil_query::actions::router(vigil_query::actions::ActionsState {
            state: Arc::clone(&state),
            outbox: outbox.clone(),
            token: config.actuation.api_token.clone(),
            trusted_hosts: config.actuation.trusted_hosts.clone(),
        }))
        .merge(crate::metrics::process_router())
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn_with_state(tokens.clone(), vigil_query::auth::require_role))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::run::REQUEST_TIMEOUT,
        ));
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    tokens.check_listener(bound)?;
    // Scripts and tests read this line to find the port when `listen` ends in :0.
    println!("vigil process listening on http://{bound}");

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    crate::run::spawn_http(&mut tasks, listener, app, &shutdown);
    let folder = tokio::task::block_in_place(|| {
        Folder::new(config.kafka.clone(), Arc::clone(&state), state_dir, Duration::from_secs(config.snapshot_seconds))
    })
    .with_rules(FoldRules::new(rules), Some(outbox.clone()));
    ready.store(true, Ordering::Release);
    tracing::info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, "vigil process starting");
    ensure_stream_topics(&config.kafka, &shutdown).await?;
    let publisher = vigil_processor::actuation::push::spawn_topic(
        &outbox,
        &config.kafka.producer(),
        &config.kafka.decisions_topic,
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
        let kafka = config.kafka.clone();
        tasks.spawn(async move { run_enrich(kafka, enricher, stop).await.context("enrich stage") });
    }
    if let Some(clickhouse) = config.clickhouse.clone() {
        let sink = vigil_processor::sink::run_kafka_clickhouse_sink(
            config.kafka.clone(),
            clickhouse,
            vigil_processor::sink::SinkBatching::default(),
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
        let config: ProcessConfig = toml::from_str(include_str!("../examples/process.toml")).unwrap();
        assert_eq!(config.kafka.events_topic, "vigil.events");
        assert_eq!(config.kafka.enriched_topic, "vigil.enriched");
        assert_eq!(config.kafka.group_id, "vigil-processor");
        assert_eq!(config.kafka.decisions_topic, "vigil.decisions");
        assert!(config.actuation.kumod_url.is_none() && config.actuation.webhooks.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "data_dir = \"x\"\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"b:9092\"\ngroup = \"typo\"\n";
        let error = toml::from_str::<ProcessConfig>(text).unwrap_err().to_string();
        assert!(error.contains("group"), "{error}");
    }
}
