//! `GET /api/v1/blocklists`: what the DNS block lists say of our sending IPs and domains now.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BlocklistsResponse {
    /// How often every target is checked.
    pub check_every_s: u64,
    /// The lists sending IPs are checked against.
    pub zones: Vec<String>,
    /// The lists sending domains are checked against.
    pub domain_zones: Vec<String>,
    /// Rows whose state is `listed`.
    pub listed: usize,
    pub rows: Vec<BlocklistRow>,
}

/// What one list said of one target at its last check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BlocklistRow {
    /// A sending IP or domain.
    pub target: String,
    /// The list's zone.
    pub zone: String,
    /// `listed`, `clear`, `refused` (the list would not answer: a public resolver, a usage
    /// limit; not a listing) or `failed` (no answer).
    pub state: String,
    /// The list's return code, when it listed or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The list's reason (its TXT record), or why the query failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when the state holds.
    pub since: DateTime<Utc>,
    pub checked_at: DateTime<Utc>,
}
