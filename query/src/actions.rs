//! What the rules decided: KumoMTA's TSA endpoints (so kumod's `setup_with_automation` can
//! point at Vigil unchanged) and `/api/v1/decisions`, `/api/v1/throttles`, `/api/v1/warmup`.
//!
//! The TSA surface answers as `tsa-daemon` does (KUMOMTA.md §3.2): the shaping overlay of the
//! config overrides in force, `suspended.json`, `bounced.json`, and the websocket that replays
//! the suspensions and bounces in force on connect, then streams new ones. "In force" is by
//! the wall clock here: kumod acts now.
//!
//! Access: with a token or trusted hosts configured, every endpoint but `/tsa/status` needs
//! the client to be a trusted host or to send `Authorization: Bearer <token>`; with neither,
//! they are open, and `vigil run` listens on loopback unless told otherwise. A request a role
//! token admitted ([`crate::auth`]) passes too.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use vigil_processor::view::kumomta::{self, SubscriptionItem};
use vigil_processor::view::{Decision, Outbox, Status, View};

use crate::ApiError;

/// What the action endpoints read.
#[derive(Clone)]
pub struct ActionsState {
    pub view: View,
    pub outbox: Outbox,
    /// Bearer token required by the TSA endpoints and the action API, when set.
    pub token: Option<String>,
    /// Client addresses allowed without the token (kumod's hosts, as TSA's
    /// `trusted_hosts`). Empty, and no token: open (keep the listener on loopback).
    pub trusted_hosts: Vec<std::net::IpAddr>,
}

impl std::fmt::Debug for ActionsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionsState")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The TSA-compatible endpoints and the decisions API.
pub fn router(actions: ActionsState) -> Router {
    let guarded = Router::new()
        .route("/get_config_v1/shaping.toml", get(overlay))
        .route("/get_suspension_v1/suspended.json", get(suspended))
        .route("/get_bounce_v1/bounced.json", get(bounced))
        .route("/subscribe_event_v1", get(subscribe))
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/throttles", get(throttles))
        .route("/api/v1/warmup", get(warmup))
        .route_layer(axum::middleware::from_fn_with_state(actions.clone(), require_token))
        .with_state(actions);
    // kumod and load balancers probe this without credentials, as with tsa-daemon.
    Router::new().route("/tsa/status", get(|| async { "TSA Daemon OK" })).merge(guarded)
}

async fn require_token(State(actions): State<ActionsState>, request: Request, next: Next) -> Response {
    let admitted = request.extensions().get::<crate::auth::Admitted>().is_some();
    if admitted || (actions.token.is_none() && actions.trusted_hosts.is_empty()) {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let trusted = peer.is_some_and(|ip| actions.trusted_hosts.contains(&ip.to_canonical()));
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token_ok = actions.token.as_deref().is_some_and(|t| presented == Some(t));
    if trusted || token_ok {
        return next.run(request).await;
    }
    let why = match (&actions.token, peer) {
        (Some(_), _) => "a valid bearer token is required".to_owned(),
        (None, Some(ip)) => format!("{ip} is not a trusted host"),
        (None, None) => "the client address is unknown and no token is configured".to_owned(),
    };
    (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": why }))).into_response()
}

fn in_force(actions: &ActionsState) -> Result<Vec<Decision>, ApiError> {
    Ok(actions.view.in_force(Utc::now())?)
}

async fn overlay(State(actions): State<ActionsState>) -> Result<Response, ApiError> {
    let text = kumomta::overlay(in_force(&actions)?.iter());
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

async fn suspended(State(actions): State<ActionsState>) -> Result<Json<kumomta::Suspensions>, ApiError> {
    Ok(Json(kumomta::split(in_force(&actions)?.iter()).0))
}

async fn bounced(State(actions): State<ActionsState>) -> Result<Json<Vec<kumomta::SchedQBounce>>, ApiError> {
    Ok(Json(kumomta::split(in_force(&actions)?.iter()).1))
}

async fn subscribe(State(actions): State<ActionsState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| stream_frames(actions, socket))
}

async fn send(socket: &mut WebSocket, item: &SubscriptionItem) -> bool {
    let text = serde_json::to_string(item).expect("frames serialise");
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn stream_frames(actions: ActionsState, mut socket: WebSocket) {
    // Subscribe before reading what is in force: an action decided in between is then sent
    // twice (kumod applies a repeat idempotently), never missed.
    let mut live = actions.outbox.subscribe();
    let Ok(current) = in_force(&actions) else { return };
    for item in kumomta::replay_frames(current.iter()) {
        if !send(&mut socket, &item).await {
            return;
        }
    }
    loop {
        tokio::select! {
            decision = live.recv() => match decision {
                Ok(decision) => {
                    if let Some(item) = kumomta::frame(&decision)
                        && decision.expires > Utc::now()
                        && !send(&mut socket, &item).await
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // Too slow a reader: close, so kumod reconnects and gets the replay.
                    tracing::warn!(missed, "TSA subscriber lagged; closing so it resubscribes");
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionsParams {
    limit: Option<usize>,
    status: Option<String>,
    rule: Option<String>,
    egress_source: Option<String>,
    provider: Option<String>,
    domain: Option<String>,
}

const MAX_DECISIONS: usize = 1000;

async fn decisions(
    State(actions): State<ActionsState>,
    params: Result<Query<DecisionsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_DECISIONS {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_DECISIONS}")));
    }
    let status = match params.status.as_deref() {
        None => None,
        Some(text) => {
            Some(serde_json::from_value::<Status>(serde_json::Value::String(text.to_owned())).map_err(|_| {
                ApiError::BadRequest(format!("unknown status `{text}`; use applied, shadow, lifted or expired"))
            })?)
        }
    };
    let outbox = actions.outbox.clone();
    let found = tokio::task::spawn_blocking(move || {
        outbox.newest(limit, |d| {
            status.is_none_or(|s| d.status == s)
                && params.rule.as_deref().is_none_or(|r| d.rule == r)
                && params.egress_source.as_deref().is_none_or(|s| d.target.egress_source.as_deref() == Some(s))
                && params.provider.as_deref().is_none_or(|p| d.target.provider.as_deref() == Some(p))
                && params.domain.as_deref().is_none_or(|p| d.target.domain.as_deref() == Some(p))
        })
    })
    .await?
    .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "decisions": found })))
}

async fn throttles(State(actions): State<ActionsState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({ "as_of": Utc::now(), "active": in_force(&actions)? })))
}

async fn warmup(State(actions): State<ActionsState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({ "plans": actions.view.warmup()? })))
}
