//! Vigil's canonical types: what every stage agrees on.
//!
//! # Contract
//! - [`DeliveryEvent`] is one (message, recipient, outcome) as seen by a source. Every input
//!   (KumoMTA, Postfix, relays, DSN mail, ...) is normalised to it by `ingest`; the processor
//!   fills `provider`, `bounce_class` and `classifier_rule`; the warehouse stores it.
//! - The schema is versioned by [`SCHEMA_VERSION`]. New fields are optional (`Option` or
//!   defaulted), no field is ever reused for another meaning, and the JSON Schema checked in at
//!   `schemas/json/delivery_event.schema.json` is generated from these types (a test fails when
//!   the two drift; regenerate with `VIGIL_BLESS=1 cargo test -p vigil-schemas`).
//!
//! # Layout
//! - [`event`]: `DeliveryEvent`, `EventKind`, `SourceKind`.
//! - [`bounce_class`]: `BounceClass`, the 29 KumoMTA labels plus user-defined ones.
//! - [`api`]: request and response types of the query API (`/api/v1`) and the log hook, one
//!   module per endpoint.
//! - [`tsa`]: the wire types of KumoMTA's traffic-shaping surface.
//! - [`deadletter`]: `DeadLetter`, input that could not be normalised, with the reason.

pub mod api;
pub mod bounce_class;
pub mod deadletter;
pub mod event;
pub mod tsa;

pub use bounce_class::BounceClass;
pub use deadletter::DeadLetter;
pub use event::{Attribution, DeliveryEvent, EventKind, OperatorAction, SourceKind};

/// Version of the canonical event written into every [`DeliveryEvent::schema_version`].
///
/// Bump it when a field is added; readers accept every version up to their own.
/// Version 2 added the complaint fields (`report_recipient`, `feedback_loop`,
/// `original_sent_at`, `attribution`); version 3 the DMARC row fields (`message_count`,
/// `dmarc_disposition`, `dmarc_dkim`, `dmarc_spf`, `report_id`); version 4 `operator` (what a
/// person did: events of kind `action_lifted`).
pub const SCHEMA_VERSION: u16 = 4;

/// The JSON Schema of [`DeliveryEvent`], as checked in under `schemas/json/`.
#[must_use]
pub fn delivery_event_json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(DeliveryEvent)).expect("a generated JSON Schema is always serialisable")
}
