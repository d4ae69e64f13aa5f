//! `vigil run`: every stage in one process on the embedded log and warehouse.
//!
//! Start-up order matters for the guarantees: the listener comes up first (answering 503 on
//! `/healthz` and accepting ingest, which only needs the log), then the processor recovers the
//! warehouse to its committed offset and its derived state (snapshot + the log after it),
//! then `/healthz` turns 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use vigil_log::EventLog;
use vigil_processor::actuation::RuleSet;
use vigil_processor::actuation::push::{Outbox, PushConfig, WebhookConfig};
use vigil_processor::alert_push::AlertOutbox;
use vigil_processor::state::FoldRules;
use vigil_processor::view::View;
use vigil_processor::{ClassifierBuilder, Enricher, Pipeline, PipelineConfig, ProviderMap};
use vigil_query::ApiState;
use vigil_query::auth::{IngestGuard, TokenConfig, Tokens, require_ingest};
use vigil_warehouse::clickhouse::ClickHouseReader;
use vigil_warehouse::{ParquetWriter, Reader, Store};

use crate::cli::RunArgs;

/// How long a request may take before the server answers 503 itself.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    vigil_log::tls::init(args.ca_file.as_deref()).context("the TLS trust store (--ca-file, [tls] ca_file)")?;
    let log_dir = args.data_dir.join("log");
    let warehouse_dir = args.data_dir.join("warehouse");
    let privacy = args.privacy.resolve()?;
    if !privacy.is_keep() && !args.suppression_targets.is_empty() {
        anyhow::bail!(
            "[[suppressions.push]] needs [privacy] recipients = \"keep\": a marketing app cannot suppress a pseudonym or a domain"
        );
    }
    tracing::info!(recipients = ?privacy, "recipient privacy");
    let shutdown = CancellationToken::new();
    let resolver = vigil_ingest::dns::resolver(&args.dns).context("[dns]")?;
    let mx = vigil_ingest::dns::start_mx(&args.dns, resolver.clone(), shutdown.clone());
    let blocklists = Arc::new(vigil_ingest::blocklist::Blocklists::new(&args.dns));
    let edge = vigil_ingest::dns::Edge { mx: Arc::clone(&mx), blocklists: Arc::clone(&blocklists) };
    let log = EventLog::open(&log_dir)
        .with_context(|| format!("opening the log in {}", log_dir.display()))?
        .with_privacy(privacy)
        .with_annotator(Arc::new(edge));
    vigil_ingest::blocklist::start(&blocklists, resolver.clone(), log.clone(), shutdown.clone());
    let domain_checks =
        vigil_ingest::domain_checks::start(&args.dns, Arc::clone(&blocklists), resolver, shutdown.clone());
    let writer = ParquetWriter::open(&warehouse_dir)?;

    let classifier = build_classifier(&args.bounce_rules)?;
    tracing::info!(patterns = classifier.rule_count(), "bounce classifier loaded");
    let enricher = Enricher::new(Arc::new(classifier), Arc::new(ProviderMap::bundled()));
    let config = PipelineConfig {
        state_dir: Some(vigil_processor::pipeline::state_dir(&args.data_dir)),
        snapshot_interval: Duration::from_secs(args.snapshot_seconds.max(1)),
        retention: Some(args.retention.clone()),
        ..PipelineConfig::default()
    };
    let state_dir = vigil_processor::pipeline::state_dir(&args.data_dir);
    let outbox = Outbox::open(&state_dir)?;
    let rules = load_rules(args.action_rules.as_deref())?;
    let alert_rules = load_alert_rules(args.alert_rules.as_deref())?;
    vigil_processor::alert_push::check_receivers(&args.alert_receivers).map_err(anyhow::Error::msg)?;
    let alert_outbox = AlertOutbox::open(&state_dir)?;
    let pipeline = Pipeline::new(log.clone(), writer, enricher.clone(), config)
        .with_rules(
            FoldRules::new(rules).with_complaint_join(args.complaint_join).with_alerts(alert_rules),
            Some(outbox.clone()),
        )
        .with_alert_outbox(alert_outbox.clone());

    let tokens = load_tokens(&args.tokens, args.api_tokens.as_deref())?;
    let ready = Arc::new(AtomicBool::new(false));
    let clickhouse = args.clickhouse_url.as_deref().map(|url| args.clickhouse.config(url));
    let (eraser, erasures) = vigil_processor::view::Eraser::new(log.clone(), clickhouse.clone());
    let pipeline = pipeline.with_erasures(erasures);
    let store = match &clickhouse {
        Some(config) => {
            let applied = vigil_warehouse::clickhouse::migrate(config)
                .await
                .with_context(|| format!("migrating the ClickHouse schema at {}", config.url))?;
            tracing::info!(url = %config.url, database = %config.database, applied = applied.len(), "analytics in ClickHouse");
            Store::ClickHouse(ClickHouseReader::new(config)?)
        }
        None => Store::Parquet(Reader::new(&warehouse_dir)),
    };
    let api = vigil_query::router(ApiState {
        store,
        view: View::new(pipeline.state()),
        log: log.clone(),
        ready: Arc::clone(&ready),
    });
    let tsa = vigil_query::tsa::TsaState {
        view: View::new(pipeline.state()),
        outbox: outbox.clone(),
        token: args.api_token.as_deref().map(vigil_query::auth::Secret::new),
        trusted_hosts: args.trusted_hosts.clone(),
        operator_log: Some(log.clone()),
    };
    let ingest_guard = IngestGuard::new(&tokens, args.api_token.as_deref(), &args.trusted_hosts);
    // One admission for every route that takes hook records: they share the limit.
    let admission = vigil_ingest::kumomta::Admission::new(args.max_ingest_in_flight);
    let receiver = || {
        vigil_ingest::kumomta::receiver(log.clone(), args.max_body_bytes, admission.clone())
            .route_layer(axum::middleware::from_fn_with_state(ingest_guard.clone(), require_ingest))
    };
    // Relays prove themselves with their own signatures and credentials, not ingest tokens.
    let relays = vigil_ingest::relay::http::router(&log, args.max_body_bytes, &admission, &args.relays)
        .map_err(anyhow::Error::msg)?;
    let uploads = vigil_ingest::upload::router(
        log.clone(),
        args.max_body_bytes,
        admission.clone(),
        vigil_ingest::mail::Verp::new(&args.sources.verp).map_err(anyhow::Error::msg)?,
    )
    .route_layer(axum::middleware::from_fn_with_state(ingest_guard.clone(), require_ingest));
    let app = api
        .merge(vigil_query::tsa::router(tsa.clone(), Some(receiver())))
        .merge(vigil_query::actions::router(tsa))
        .merge(vigil_query::alerts::router(vigil_query::alerts::AlertsState {
            view: View::new(pipeline.state()),
            outbox: Some(alert_outbox.clone()),
        }))
        .merge(vigil_query::recipients::router(vigil_query::recipients::RecipientsState {
            view: View::new(pipeline.state()),
            log: log.clone(),
            eraser,
        }))
        .merge(vigil_query::providers::router(explain_provider(mx)))
        .merge(vigil_query::providers::blocklists_router(Arc::new(move || blocklists.report())))
        .merge(vigil_query::providers::domains_router(Arc::new(move || domain_checks.report())))
        .merge(vigil_query::ui::router())
        .route(vigil_ingest::kumomta::PATH, receiver())
        .merge(relays)
        .merge(uploads)
        .merge(crate::metrics::router(log.clone(), Some(vigil_processor::pipeline::CONSUMER), Some(outbox.clone())))
        .layer(axum::middleware::from_fn_with_state(tokens.clone(), vigil_query::auth::require_role))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::map_response(vigil_query::error::retry_after_on_503))
        .layer(axum::middleware::from_fn(vigil_query::metrics::observe))
        .layer(
            // 5xx are logged where they arise (with the cause); a 503 from /healthz while
            // starting is expected, not an error.
            tower_http::trace::TraceLayer::new_for_http()
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    tokens.check_listener(bound)?;
    ingest_guard.check_listener(bound)?;
    // Scripts and tests read this line to find the port when --listen ends in :0.
    println!("vigil listening on http://{bound}");
    tracing::info!(%bound, data_dir = %args.data_dir.display(), "vigil run starting");

    let mut tasks = tokio::task::JoinSet::new();
    spawn_http(&mut tasks, listener, app, &shutdown);

    let reload = RulesReload {
        action_rules: args.action_rules.clone(),
        alert_rules: args.alert_rules.clone(),
        handle: pipeline.rules_handle(),
    };
    let view = View::new(pipeline.state());
    let pipeline = Arc::new(pipeline);
    let prepared = Arc::clone(&pipeline);
    let committed = tokio::task::spawn_blocking(move || prepared.prepare()).await??;
    let pipeline = Arc::into_inner(pipeline).expect("prepare has returned");
    tasks.spawn(pipeline.run(committed, shutdown.clone()).map_ok());
    let push = PushConfig {
        kumod_url: args.kumod_url.clone(),
        webhooks: match (&args.webhook_url, &args.webhook_secret) {
            (Some(url), Some(secret)) => {
                let flag = WebhookConfig { name: "default".into(), url: url.clone(), secret: secret.clone() };
                args.webhooks.iter().cloned().chain([flag]).collect()
            }
            _ => args.webhooks.clone(),
        },
    };
    for pusher in vigil_processor::actuation::push::spawn(&outbox, &push, &shutdown) {
        tasks.spawn(async move { pusher.await.context("decision pusher") });
    }
    if let Some(config) = &clickhouse {
        // Every decision into ClickHouse too, for the Grafana decisions dashboard.
        let pusher = vigil_processor::actuation::push::spawn_clickhouse(&outbox, config, &shutdown)?;
        tasks.spawn(async move { pusher.await.context("decision pusher (ClickHouse)") });
    }
    if let Some(config) = &clickhouse {
        let retention =
            vigil_processor::retention::clickhouse_loop(config.clone(), args.retention.clone(), shutdown.clone());
        tasks.spawn(retention.map_ok());
    }
    if let Some(config) = clickhouse {
        let sink = vigil_processor::clickhouse_feed::feed_from_log(
            log.clone(),
            enricher.clone(),
            config,
            vigil_processor::clickhouse_feed::FeedBatching::default(),
            shutdown.clone(),
        );
        tasks.spawn(sink.map_ok());
    }
    // The alerts firing now were told before a restart: each receiver only repeats them.
    let (firing, _) = view.alerts()?;
    for receiver in &args.alert_receivers {
        let push =
            vigil_processor::alert_push::run(receiver.clone(), alert_outbox.clone(), firing.clone(), shutdown.clone());
        tasks.spawn(push.map_ok());
    }
    for target in &args.suppression_targets {
        target.check().map_err(anyhow::Error::msg)?;
        let push =
            vigil_processor::suppression_push::run(target.clone(), log.clone(), enricher.clone(), shutdown.clone());
        tasks.spawn(push.map_ok());
    }
    ready.store(true, Ordering::Release);
    tracing::info!(committed, "processor ready");

    crate::sources::start(&args.sources, &log, None, &args.trusted_hosts, &mut tasks, &shutdown).await?;
    #[cfg(unix)]
    tasks.spawn(reload_on_sighup(args.bounce_rules.clone(), enricher, reload, shutdown.clone()));
    if args.demo {
        tracing::info!("demo traffic on: synthetic KumoMTA records for 4 egress sources and 5 providers");
        tasks.spawn(crate::demo::run(log.clone(), shutdown.clone()).map_ok());
    }

    supervise(tasks, shutdown).await
}

/// Waits for SIGTERM / Ctrl-C, or for a component to stop (an error, or a bug: components
/// run until shutdown); then stops the rest and waits for them.
pub(crate) async fn supervise(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        Some(result) = tasks.join_next() => {
            shutdown.cancel();
            result??;
            anyhow::bail!("a component stopped unexpectedly");
        }
    }
    shutdown.cancel();
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// `/api/v1/providers`: the provider data file's answer for the domain, else its MX's.
fn explain_provider(mx: Arc<vigil_ingest::dns::MxCache>) -> vigil_query::providers::Explain {
    use vigil_schemas::api::providers::ProvidersResponse;
    let providers = ProviderMap::bundled();
    Arc::new(move |domain: &str| {
        let answer = mx.explain(domain);
        let by_domain = providers.lookup(Some(domain), None);
        let by_mx = answer.mx_host.as_deref().map(|host| providers.lookup(None, Some(host)));
        let (provider, decided_by) = match by_mx {
            _ if by_domain != "other" => (by_domain, "domain"),
            Some(provider) if provider != "other" => (provider, "mx"),
            _ => ("other", "none"),
        };
        ProvidersResponse {
            domain: domain.to_owned(),
            provider: provider.to_owned(),
            decided_by: decided_by.to_owned(),
            mx: answer,
        }
    })
}

/// The rules that act: the file given, else the bundled set.
pub(crate) fn load_rules(file: Option<&std::path::Path>) -> anyhow::Result<RuleSet> {
    let providers = ProviderMap::bundled();
    let rules = match file {
        Some(path) => RuleSet::load(path, &providers)?,
        None => RuleSet::bundled(&providers),
    };
    tracing::info!(
        source = rules.source,
        automation = rules.shaping.rules().len(),
        rate = rules.rate.len(),
        warmup = rules.warmup.len(),
        "action rules loaded"
    );
    Ok(rules)
}

/// The bounce classifier: the user's rule files first, then the bundled ones.
pub(crate) fn build_classifier(rules: &[std::path::PathBuf]) -> anyhow::Result<vigil_processor::Classifier> {
    let mut builder = ClassifierBuilder::new();
    for file in rules {
        builder.add_file(file)?;
    }
    Ok(builder.with_bundled_rules().build()?)
}

/// The alert rules: the file given, else the bundled set.
pub(crate) fn load_alert_rules(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<vigil_processor::alerting::AlertRule>> {
    let rules = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            vigil_processor::alerting::compile_rules(&path.display().to_string(), Some(&text))
                .map_err(anyhow::Error::msg)?
        }
        None => vigil_processor::alerting::bundled(),
    };
    tracing::info!(rules = rules.len(), file = ?file, "alert rules loaded");
    Ok(rules)
}

/// Where reloaded rules go: the files given and the pipeline's handle.
struct RulesReload {
    action_rules: Option<std::path::PathBuf>,
    alert_rules: Option<std::path::PathBuf>,
    handle: Arc<arc_swap::ArcSwap<FoldRules>>,
}

/// `kill -HUP` rebuilds the classifier from the rule files, and the action and alert rules from
/// their files, and swaps them in; a file that no longer loads keeps the running rules and says
/// why.
#[cfg(unix)]
async fn reload_on_sighup(
    rules: Vec<std::path::PathBuf>,
    enricher: Enricher,
    reload: RulesReload,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = hangup.recv() => {}
        }
        let files = rules.clone();
        match tokio::task::spawn_blocking(move || build_classifier(&files)).await? {
            Ok(classifier) => {
                tracing::info!(patterns = classifier.rule_count(), "bounce classifier reloaded");
                enricher.replace_classifier(Arc::new(classifier));
            }
            Err(error) => tracing::error!(%error, "rule reload failed; the running classifier stays"),
        }
        let handle = &reload.handle;
        if let Some(file) = reload.action_rules.clone() {
            match tokio::task::spawn_blocking(move || load_rules(Some(&file))).await? {
                Ok(rules) => {
                    let running = handle.load();
                    let fold = FoldRules::new(rules).with_complaint_join(running.complaint_join);
                    handle.store(Arc::new(FoldRules { alerts: Arc::clone(&running.alerts), ..fold }));
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "action rules reload failed; the running rules stay")
                }
            }
        }
        if let Some(file) = reload.alert_rules.clone() {
            match tokio::task::spawn_blocking(move || load_alert_rules(Some(&file))).await? {
                Ok(alerts) => {
                    let fold = FoldRules::clone(&handle.load()).with_alerts(alerts);
                    handle.store(Arc::new(fold));
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "alert rules reload failed; the running rules stay")
                }
            }
        }
    }
}

/// The API's role tokens: those written in the configuration and those of a tokens file.
pub(crate) fn load_tokens(inline: &[TokenConfig], file: Option<&std::path::Path>) -> anyhow::Result<Tokens> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TokensFile {
        tokens: Vec<TokenConfig>,
    }
    let mut tokens = inline.to_vec();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed: TokensFile = toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        tokens.extend(parsed.tokens);
    }
    Tokens::new(&tokens).context("in the API tokens ([api] tokens, tokens_file)")
}

/// Serves `app` on `listener` as one of `tasks`, until `shutdown`.
pub(crate) fn spawn_http(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: &CancellationToken,
) {
    let stop = shutdown.clone();
    tasks.spawn(async move {
        // The peer address is for the TSA endpoints' trusted hosts.
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("HTTP server")
    });
}

/// Reads and parses a role's TOML configuration, naming the file in every error, then runs
/// the role on a multi-threaded runtime.
pub(crate) fn run_with_config<F>(
    path: &std::path::Path,
    role: crate::config::Role,
    serve: impl FnOnce(crate::config::Config) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = crate::config::Config::read(path)?.with_environment(|v| std::env::var(v).ok())?;
    config.note_ignored(role);
    config.tls.init()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(config))
}

/// Lets `()`-returning tasks share a `JoinSet` with fallible ones.
pub(crate) trait MapOk: std::future::Future<Output = ()> + Sized {
    fn map_ok(self) -> impl std::future::Future<Output = anyhow::Result<()>> {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: std::future::Future<Output = ()>> MapOk for F {}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
