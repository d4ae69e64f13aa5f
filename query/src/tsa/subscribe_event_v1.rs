//! `GET /subscribe_event_v1`: the websocket kumod subscribes to. On connect it replays the
//! suspensions and bounces in force, then streams each new one as it is decided, as JSON
//! frames ([`vigil_schemas::tsa::SubscriptionItem`]). A reader too slow for the stream is
//! closed, so kumod reconnects and gets the replay instead of a gap.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chrono::Utc;
use vigil_processor::view::kumomta::{self, SubscriptionItem};

use super::{TsaState, in_force};

pub const PATH: &str = "/subscribe_event_v1";

pub async fn handler(State(state): State<TsaState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| stream_frames(state, socket))
}

async fn send(socket: &mut WebSocket, item: &SubscriptionItem) -> bool {
    let text = serde_json::to_string(item).expect("frames serialise");
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn stream_frames(state: TsaState, mut socket: WebSocket) {
    // Subscribe before reading what is in force: an action decided in between is then sent
    // twice (kumod applies a repeat idempotently), never missed.
    let mut live = state.outbox.subscribe();
    let Ok(current) = in_force(&state) else { return };
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
