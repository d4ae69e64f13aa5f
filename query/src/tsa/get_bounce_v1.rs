//! `GET /get_bounce_v1/bounced.json`: the admin bounces in force
//! ([`vigil_schemas::tsa::SchedQBounce`]).

use axum::Json;
use axum::extract::State;
use vigil_processor::view::kumomta;
use vigil_schemas::tsa::SchedQBounce;

use super::{TsaState, in_force};
use crate::ApiError;

pub const PATH: &str = "/get_bounce_v1/bounced.json";

pub async fn handler(State(state): State<TsaState>) -> Result<Json<Vec<SchedQBounce>>, ApiError> {
    Ok(Json(kumomta::split(in_force(&state)?.iter()).1))
}
