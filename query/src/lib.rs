//! The query API: axum routes under `/api/v1` plus `/healthz`, answered from the warehouse and
//! the processor's derived state (reputation windows, suppressions).
//!
//! # Contract
//! - In: HTTP requests. Parameters are parsed into the typed query model of
//!   [`vigil_schemas::api`]; nothing a client sends is ever spliced into SQL.
//! - Out: JSON. Client mistakes get a 400 with a reason naming the parameter and the accepted
//!   values; server faults get an opaque 500 and are logged once here.
//! - `/healthz` answers 503 until the processor has recovered the warehouse and rebuilt its
//!   state, then 200.
//!
//! # Layout
//! - [`error`]: `ApiError` and its mapping to status codes.
//! - [`routes`]: the router, and the handlers answered from the warehouse and the log.
//! - [`live`]: the handlers answered from the derived state.
//! - [`actions`]: KumoMTA's TSA endpoints and the decisions, throttles and warm-up API.

pub mod actions;
pub mod error;
pub mod live;
pub mod routes;

pub use error::ApiError;
pub use routes::{ApiState, router};
