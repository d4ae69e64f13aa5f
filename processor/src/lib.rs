//! The processor: classifies, maps and counts what the log of record holds, and writes the
//! enriched events to the warehouse.
//!
//! # Contract
//! - In: [`vigil_schemas::DeliveryEvent`]s from the [`vigil_log::EventLog`], from the
//!   consumer offset `warehouse` onwards.
//! - Out: enriched events (provider, bounce class, the rule that decided) in the Parquet
//!   warehouse; live sliding-window counts per egress source, provider and egress source x
//!   provider ([`windows::WindowStore`]).
//! - Guarantee: every event is written to the warehouse exactly once: files are written, then
//!   the consumer offset is committed; on restart, files past the committed offset are removed
//!   and the batch is processed again. Window state is a fold over the log, rebuilt from it at
//!   start. Events our own MTA generated ("KumoMTA internal:", administrative bounces,
//!   expiries) are stored but excluded from reputation counts.
//!
//! # Layout
//! - [`classify`]: the compiled bounce classifier (KumoMTA rule files, then fallbacks).
//! - [`providers`]: the provider map (domains and MX suffixes, `data/providers.toml`).
//! - [`enrich`]: the pure per-event step combining the two.
//! - [`windows`]: sliding-window counts per scope.
//! - [`pipeline`]: the async loop from the log to the warehouse.

pub mod classify;
pub mod enrich;
pub mod pipeline;
pub mod providers;
pub mod windows;

pub use classify::{Classification, Classifier, ClassifierBuilder};
pub use enrich::Enricher;
pub use pipeline::{Pipeline, PipelineConfig, SharedWindows};
pub use providers::ProviderMap;
