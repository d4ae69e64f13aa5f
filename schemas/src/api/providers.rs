//! `GET /api/v1/providers?domain=`: which mailbox provider a recipient domain is counted
//! under, and how that was decided.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The query.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvidersParams {
    /// A recipient domain, e.g. `acme.example`.
    pub domain: String,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ProvidersResponse {
    /// The domain, in lower case.
    pub domain: String,
    /// The provider its events without an MX of their own are counted under now.
    pub provider: String,
    /// `domain` (the provider data file lists the domain or a suffix of it), `mx` (the
    /// domain's MX host matches a provider's MX suffix) or `none` (neither: `other`).
    pub decided_by: String,
    /// What DNS says of the domain's MX.
    pub mx: MxAnswer,
}

/// What is known of a domain's MX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MxAnswer {
    /// `resolved` (with `mx_host`), `no_mx` (the domain publishes none), `pending` (being
    /// looked up: ask again), `failed` (with `reason`; tried again later) or `off`
    /// (`[dns] mx_lookup = false`).
    pub state: String,
    /// The preferred MX host, without the trailing dot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    /// When DNS answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
