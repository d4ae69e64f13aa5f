//! The query API: axum routes under `/api/v1` plus `/healthz`, answered from the warehouse and
//! the processor's derived state (reputation windows, suppressions).
//!
//! # Contract
//! - In: HTTP requests. Parameters are parsed into typed queries, composed from the
//!   warehouse's two primitives ([`vigil_warehouse::query`]); nothing a client sends is ever
//!   spliced into SQL (values are bound or typed literals).
//! - Out: JSON. Client mistakes get a 400 with a reason naming the parameter and the accepted
//!   values; server faults get an opaque 500 and are logged once here.
//! - `/healthz` answers 503 until the processor has recovered the warehouse and rebuilt its
//!   state, then 200.
//!
//! # Layout
//! - [`error`]: `ApiError` and its mapping to status codes.
//! - [`routes`]: the router, health and the dead letters (answered from the log).
//! - [`analytics`]: the endpoints answered from the warehouse, one file each, over either
//!   backend (Parquet with DataFusion, or ClickHouse).
//! - [`live`]: the handlers answered from the derived state; `reputation` and `timeseries`
//!   answer ranges (`from=`) from the warehouse.
//! - [`auth`]: bearer tokens with roles for `/api/v1`.
//! - [`openapi`]: the OpenAPI document, generated from the handlers' types.
//! - [`tsa`]: KumoMTA's traffic-shaping surface, one file per endpoint.
//! - [`actions`]: the decisions, throttles and warm-up API, and an operator's lift, written
//!   as an `action_lifted` event appended to the log of record (on `vigil run`).
//! - [`recipients`]: an operator taking a recipient off the suppression list (a
//!   `suppression_removed` event in the log, its audit record) and an admin erasing one
//!   person everywhere (on `vigil run`).
//! - [`providers`]: which provider a recipient domain is counted under, and why.
//! - [`alerts`]: the alerts now and their history, and silences.
//! - [`metrics`]: request latency by route and status.
//! - [`ui`]: the dashboards (`dashboards/web/`), embedded, at `/`.

pub mod actions;
pub mod alerts;
pub mod analytics;
pub mod auth;
pub mod error;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod providers;
pub mod recipients;
pub mod routes;
pub mod tsa;
pub mod ui;

pub use error::ApiError;
pub use routes::{ApiState, router};
