//! The processor: classifies, maps and counts what the log of record holds, and writes the
//! enriched events to the warehouse.
//!
//! # Contract
//! - In: [`vigil_schemas::DeliveryEvent`]s from the [`vigil_log::EventLog`], from the
//!   consumer offset `warehouse` onwards.
//! - Out: enriched events (provider, bounce class, the rule that decided) in the Parquet
//!   warehouse; [`state::DerivedState`]: exact sliding-window reputation per scope
//!   ([`reputation`]), the suppression list ([`suppression`]) and the state of the rules that
//!   act, whose decisions ([`actuation::Decision`]) the fold returns.
//! - Guarantees:
//!   - Every event is written to the warehouse exactly once: files are written, then the
//!     consumer offset is committed; on restart, files past the committed offset are removed
//!     and the batch is processed again.
//!   - Derived state is a fold over the log in log order, on the events' own clock (never the
//!     wall clock), applied after the batch is committed. It is snapshotted with the offset it
//!     reflects; at start the snapshot is loaded and the log after it replayed, so a restart
//!     and a replay from offset 0 give the same digest ([`state::DerivedState::digest`]).
//!     Once retention has deleted the log's oldest events, a replay starts from the latest
//!     snapshot instead, which retention never passes ([`retention`]).
//!   - Events our own MTA generated ("KumoMTA internal:", administrative bounces, expiries)
//!     are stored but neither counted in reputation nor suppress anyone.
//!
//! # Layout
//! - [`classify`]: the compiled bounce classifier (KumoMTA rule files, then fallbacks).
//! - [`providers`]: the provider map (domains and MX suffixes, `data/providers.toml`).
//! - [`enrich`]: the pure per-event step combining the two.
//! - [`reputation`]: window counts, rates, score, provider signals.
//! - [`suppression`]: hard bounces, complaints and unsubscribes by recipient.
//! - [`suppression_push`]: new suppressions pushed to listmonk, Mautic or a signed webhook,
//!   from a durable cursor in the log.
//! - [`complaints`]: each complaint tied to the stream that sent the mail complained about
//!   (the report's trace, else a bounded join to the latest delivery to the complainer).
//! - [`shaping`]: KumoMTA traffic-shaping automation rules, loaded from `shaping.toml` files.
//! - [`actuation`]: rules that act (automation, rate rules, warm-up) folded into decisions,
//!   and the pushers that deliver them.
//! - [`alerting`]: alert rules over the reputation view, a state machine per (rule, scope
//!   value) folded on the events' clock; [`alert_dispatch`] groups, silences and times the
//!   notifications (a pure core); [`alert_push`] keeps them in a durable outbox and delivers
//!   them to Slack, PagerDuty, Teams, a signed webhook or Alertmanager.
//! - [`state`]: the fold of both, its digest and snapshots.
//! - [`pipeline`]: the async loop from the log to the warehouse and the state.
//! - [`erasure`]: one person's address rewritten everywhere (log, warehouse, state,
//!   ClickHouse), between two batches of the pipeline or with `vigil run` stopped.
//! - [`retention`]: what `vigil run` deletes from the log, its dead letters and the
//!   warehouse, and the bound it never passes.
//! - [`stream`]: the same on Kafka (`vigil process`): enrich in a consumer group, fold
//!   every partition.
//! - [`clickhouse_feed`]: the tasks that feed ClickHouse, from the embedded log or from
//!   `vigil.enriched`, through the warehouse's writer.
//! - [`metrics`]: batch latency and the pushers' backlogs, for `/metrics`.
//! - [`view`]: the read model; the API and every other reader use nothing else of this crate.

pub mod actuation;
pub mod alert_dispatch;
pub mod alert_push;
pub mod alerting;
pub mod classify;
pub mod clickhouse_feed;
pub mod complaints;
pub mod enrich;
pub mod erasure;
pub mod metrics;
pub mod pipeline;
pub mod providers;
pub mod reputation;
pub mod retention;
pub mod shaping;
pub mod state;
pub mod stream;
pub mod suppression;
pub mod suppression_push;
pub mod view;

pub use classify::{Classification, Classifier, ClassifierBuilder};
pub use enrich::Enricher;
pub use pipeline::{Pipeline, PipelineConfig, SharedState};
pub use providers::ProviderMap;
pub use state::DerivedState;
