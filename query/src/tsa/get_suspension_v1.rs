//! `GET /get_suspension_v1/suspended.json`: the ready-queue and scheduled-queue suspensions in
//! force ([`vigil_schemas::tsa::Suspensions`]).

use axum::Json;
use axum::extract::State;
use vigil_processor::view::kumomta;
use vigil_schemas::tsa::Suspensions;

use super::{TsaState, in_force};
use crate::ApiError;

pub const PATH: &str = "/get_suspension_v1/suspended.json";

pub async fn handler(State(state): State<TsaState>) -> Result<Json<Suspensions>, ApiError> {
    Ok(Json(kumomta::split(in_force(&state)?.iter()).0))
}
