//! KumoMTA's traffic-shaping (TSA) surface, so kumod's `shaping:setup_with_automation` can point
//! at Vigil unchanged: one file per endpoint, as `tsa-daemon` serves them (KUMOMTA.md §3.2).
//!
//! - [`publish_log_v1`]: `POST /publish_log_v1`, kumod's log records in (the log hook's
//!   receiver, served where the role ingests);
//! - [`get_config_v1`]: `GET /get_config_v1/shaping.toml`, the overlay of the config
//!   overrides in force;
//! - [`get_suspension_v1`]: `GET /get_suspension_v1/suspended.json`;
//! - [`get_bounce_v1`]: `GET /get_bounce_v1/bounced.json`;
//! - [`subscribe_event_v1`]: `GET /subscribe_event_v1`, the websocket that replays the
//!   suspensions and bounces in force on connect, then streams new ones;
//! - [`status`]: `GET /tsa/status`, open to probes.
//!
//! "In force" is by the wall clock here: kumod acts now. The frames are
//! [`vigil_schemas::tsa`]; what a decision becomes on this surface is
//! `vigil_processor::view::kumomta`.
//!
//! Access: with a token or trusted hosts configured, every endpoint but `/tsa/status` needs
//! the client to be a trusted host or to send `Authorization: Bearer <token>`; with neither,
//! they are open, and `vigil run` listens on loopback unless told otherwise. A request a role
//! token admitted ([`crate::auth`]) passes too. The decisions API ([`crate::actions`]) is
//! guarded the same way.

pub mod get_bounce_v1;
pub mod get_config_v1;
pub mod get_suspension_v1;
pub mod publish_log_v1;
pub mod status;
pub mod subscribe_event_v1;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use chrono::Utc;
use vigil_processor::view::{Decision, Outbox, View};

use crate::ApiError;

/// What the TSA endpoints and the decisions API read, and who may.
#[derive(Clone)]
pub struct TsaState {
    pub view: View,
    pub outbox: Outbox,
    pub token: Option<crate::auth::Secret>,
    pub trusted_hosts: Vec<std::net::IpAddr>,
    /// The log an operator's lift is written to (`vigil run`); without it (`vigil process`,
    /// whose log is Kafka) `POST /api/v1/actions/lift` is not served.
    pub operator_log: Option<vigil_log::EventLog>,
}

impl std::fmt::Debug for TsaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsaState").field("token", &self.token).finish_non_exhaustive()
    }
}

/// The TSA routes. `publish_log` is the log hook's receiver (`vigil_ingest::kumomta::receiver`)
/// where the role takes records in; without it `/publish_log_v1` is not served.
pub fn router(state: TsaState, publish_log: Option<MethodRouter>) -> Router {
    let guarded = Router::new()
        .route(get_config_v1::PATH, get(get_config_v1::handler))
        .route(get_suspension_v1::PATH, get(get_suspension_v1::handler))
        .route(get_bounce_v1::PATH, get(get_bounce_v1::handler))
        .route(subscribe_event_v1::PATH, get(subscribe_event_v1::handler))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    let open = Router::new().route(status::PATH, get(status::handler)).merge(guarded);
    match publish_log {
        Some(receiver) => open.route(publish_log_v1::PATH, receiver),
        None => open,
    }
}

/// Admits trusted hosts, the token, and requests a role token admitted; refuses the rest.
pub(crate) async fn require_token(State(state): State<TsaState>, request: Request, next: Next) -> Response {
    let admitted = request.extensions().get::<crate::auth::Admitted>().is_some();
    if admitted || (state.token.is_none() && state.trusted_hosts.is_empty()) {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let trusted = peer.is_some_and(|ip| state.trusted_hosts.contains(&ip.to_canonical()));
    let token_ok = crate::auth::bearer(&request)
        .is_some_and(|presented| state.token.as_ref().is_some_and(|t| t.matches(presented)));
    if trusted || token_ok {
        return next.run(request).await;
    }
    let why = match (&state.token, peer) {
        (Some(_), _) => "a valid bearer token is required".to_owned(),
        (None, Some(ip)) => format!("{ip} is not a trusted host"),
        (None, None) => "the client address is unknown and no token is configured".to_owned(),
    };
    (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": why }))).into_response()
}

/// The actions in force now.
pub(crate) fn in_force(state: &TsaState) -> Result<Vec<Decision>, ApiError> {
    Ok(state.view.in_force(Utc::now())?)
}
