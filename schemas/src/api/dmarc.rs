//! `GET /api/v1/dmarc`: what DMARC aggregate reports say about mail sent as your domains.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a DMARC answer can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DmarcDimension {
    /// The header From domain the rows are about.
    SendingDomain,
    /// The IP that sent the mail, as the receiver saw it.
    SourceIp,
    /// The organisation that sent the report (`google.com`, `Outlook.com`, ...).
    Reporter,
    /// What the receiver did: `none`, `quarantine`, `reject`.
    Disposition,
}

impl DmarcDimension {
    pub const ALL: [Self; 4] = [Self::SendingDomain, Self::SourceIp, Self::Reporter, Self::Disposition];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendingDomain => "sending_domain",
            Self::SourceIp => "source_ip",
            Self::Reporter => "reporter",
            Self::Disposition => "disposition",
        }
    }

    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// One group of the answer. Counts are messages (a report row stands for `count` messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DmarcRow {
    /// The group's value for each asked dimension (null when the reports lack it).
    #[serde(flatten)]
    pub dimensions: BTreeMap<String, Option<String>>,
    pub messages: u64,
    /// DMARC passed: DKIM or SPF passed in alignment.
    pub dmarc_pass: u64,
    pub dmarc_fail: u64,
    /// DKIM passed in alignment.
    pub dkim_pass: u64,
    /// SPF passed in alignment.
    pub spf_pass: u64,
    pub quarantined: u64,
    pub rejected: u64,
    /// With `group_by` including `source_ip`: whether the IP sent any of the mail Vigil saw
    /// (an egress source it knows). `false` answers "who else is sending as us".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_source: Option<bool>,
}

/// The body of `GET /api/v1/dmarc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
pub struct DmarcResponse {
    pub rows: Vec<DmarcRow>,
}
