//! `GET /get_config_v1/shaping.toml`: the shaping overlay of the config overrides in force,
//! which kumod merges over its own `shaping.toml`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use vigil_processor::view::kumomta;

use super::{TsaState, in_force};
use crate::ApiError;

pub const PATH: &str = "/get_config_v1/shaping.toml";

pub async fn handler(State(state): State<TsaState>) -> Result<Response, ApiError> {
    let text = kumomta::overlay(in_force(&state)?.iter());
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}
