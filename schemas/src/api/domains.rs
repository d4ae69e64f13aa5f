//! `GET /api/v1/domains`: how our sending domains are set up (SPF, DKIM, DMARC, MTA-STS,
//! TLS-RPT), as findings with a severity and a one-line fix.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DomainsResponse {
    /// How often every domain is checked.
    pub check_every_s: u64,
    /// The DKIM selectors looked up on every domain (`[dns] dkim_selectors`).
    pub dkim_selectors: Vec<String>,
    pub domains: Vec<DomainReport>,
}

/// One sending domain at its last check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DomainReport {
    pub domain: String,
    pub checked_at: DateTime<Utc>,
    /// The worst severity among the findings.
    pub severity: String,
    pub findings: Vec<Finding>,
}

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Finding {
    /// `spf`, `dkim`, `dmarc`, `mta_sts` or `tls_rpt`.
    pub check: String,
    /// `error` (mail fails or is at risk now), `warning` (weaker than it should be) or `ok`.
    pub severity: String,
    pub message: String,
    /// What to change, in one line; absent when nothing needs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}
