//! What DNS says, answered by the role that owns the lookups (`vigil run`):
//! - `GET /api/v1/providers?domain=`: the mailbox provider a recipient domain is counted
//!   under, and how that was decided (the provider data file's domains, else the domain's MX
//!   from DNS against the file's MX suffixes);
//! - `GET /api/v1/blocklists`: what the DNS block lists say of our sending IPs and domains;
//! - `GET /api/v1/domains`: our sending domains' SPF, DKIM, DMARC, MTA-STS and TLS-RPT.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use vigil_schemas::api::blocklists::BlocklistsResponse;
use vigil_schemas::api::domains::DomainsResponse;
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
/// The sending domains' last checks.
pub type Domains = Arc<dyn Fn() -> DomainsResponse + Send + Sync>;

pub const BLOCKLISTS_PATH: &str = "/api/v1/blocklists";
pub const DOMAINS_PATH: &str = "/api/v1/domains";

pub fn blocklists_router(report: Blocklists) -> Router {
    report_router(BLOCKLISTS_PATH, report)
}

pub fn domains_router(report: Domains) -> Router {
    report_router(DOMAINS_PATH, report)
}

/// `GET path` answering what `report` says now.
fn report_router<T: serde::Serialize + Send + 'static>(path: &str, report: Arc<dyn Fn() -> T + Send + Sync>) -> Router {
    Router::new().route(path, get(move || std::future::ready(Json(report()))))
}
