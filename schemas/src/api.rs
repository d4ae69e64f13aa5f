//! Types of the query API (`/api/v1`), shared by the server, the warehouse backends that
//! answer it, and clients.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A dimension a summary can be grouped by. Each is a column of the enriched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    EgressSource,
    EgressPool,
    Provider,
    RecipientDomain,
    Tenant,
    Campaign,
    BounceClass,
    Kind,
}

impl Dimension {
    pub const ALL: [Self; 8] = [
        Self::EgressSource,
        Self::EgressPool,
        Self::Provider,
        Self::RecipientDomain,
        Self::Tenant,
        Self::Campaign,
        Self::BounceClass,
        Self::Kind,
    ];

    /// The API name, which is also the warehouse column name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EgressSource => "egress_source",
            Self::EgressPool => "egress_pool",
            Self::Provider => "provider",
            Self::RecipientDomain => "recipient_domain",
            Self::Tenant => "tenant",
            Self::Campaign => "campaign",
            Self::BounceClass => "bounce_class",
            Self::Kind => "kind",
        }
    }

    /// Parses one API name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// `GET /api/v1/summary`: outcome counts grouped by dimensions over the events' own times.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SummaryQuery {
    /// Distinct dimensions, in the order asked.
    pub group_by: Vec<Dimension>,
    /// Inclusive lower bound on `occurred_at`; none means from the beginning.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `occurred_at`; none means up to now and beyond.
    pub to: Option<DateTime<Utc>>,
}

/// One group of a summary. `attempts = delivered + deferred + bounced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The group's value for each asked dimension (null when the events lack it).
    #[serde(flatten)]
    pub dimensions: BTreeMap<String, Option<String>>,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub expired: u64,
    pub complaints: u64,
    pub attempts: u64,
}

/// The body of `GET /api/v1/summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SummaryResponse {
    pub rows: Vec<SummaryRow>,
}
