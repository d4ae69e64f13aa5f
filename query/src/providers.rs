//! What DNS says, answered by the role that owns the lookups (`vigil run`):
//! - `GET /api/v1/providers?domain=`: the mailbox provider a recipient domain is counted
//!   under, and how that was decided (the provider data file's domains, else the domain's MX
//!   from DNS against the file's MX suffixes);
//! - `GET /api/v1/blocklists`: what the DNS block lists say of our sending IPs and domains.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use vigil_schemas::api::blocklists::BlocklistsResponse;
use vigil_schemas::api::providers::{ProvidersParams, ProvidersResponse};

use crate::ApiError;

/// Answers for one domain (in lower case, without a trailing dot).
pub type Explain = Arc<dyn Fn(&str) -> ProvidersResponse + Send + Sync>;

pub const PATH: &str = "/api/v1/providers";

pub fn router(explain: Explain) -> Router {
    Router::new().route(PATH, get(providers)).with_state(explain)
}

async fn providers(
    State(explain): State<Explain>,
    params: Result<Query<ProvidersParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ProvidersResponse>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let domain = params.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let plausible = domain.contains('.')
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !plausible {
        return Err(ApiError::BadRequest(format!("`{}` is not a domain name (e.g. acme.example)", params.domain)));
    }
    Ok(Json(explain(&domain)))
}

/// The block lists' state now.
pub type Blocklists = Arc<dyn Fn() -> BlocklistsResponse + Send + Sync>;

pub const BLOCKLISTS_PATH: &str = "/api/v1/blocklists";

pub fn blocklists_router(report: Blocklists) -> Router {
    Router::new().route(BLOCKLISTS_PATH, get(blocklists)).with_state(report)
}

async fn blocklists(State(report): State<Blocklists>) -> Json<BlocklistsResponse> {
    Json(report())
}
