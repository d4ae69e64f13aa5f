//! Types of the query API (`/api/v1`), shared by the server, the warehouse backends that
//! answer it, and clients.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
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
    /// The sender's domain (column `sender_domain`), as reputation's `sending_domain` scope.
    SendingDomain,
}

impl Dimension {
    pub const ALL: [Self; 9] = [
        Self::EgressSource,
        Self::EgressPool,
        Self::Provider,
        Self::RecipientDomain,
        Self::Tenant,
        Self::Campaign,
        Self::BounceClass,
        Self::Kind,
        Self::SendingDomain,
    ];

    /// The API name.
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
            Self::SendingDomain => "sending_domain",
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
    /// Only events whose dimension equals the value.
    pub filters: Vec<(Dimension, String)>,
}

/// One group of a summary. `attempts = delivered + deferred + bounced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
pub struct SummaryResponse {
    pub rows: Vec<SummaryRow>,
}

/// One event as `GET /api/v1/events` lists it: who, what, where and the receiver's words.
/// Absent fields are null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventRecord {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub kind: String,
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    pub sender: Option<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
    pub provider: Option<String>,
    pub bounce_class: Option<String>,
    pub smtp_code: Option<u16>,
    pub enhanced_status: Option<String>,
    pub response_text: Option<String>,
}

impl EventRecord {
    /// The text columns after `kind`, in field order: what both warehouse backends select.
    pub const TEXT_COLUMNS: [&'static str; 9] = [
        "recipient",
        "message_id",
        "sender",
        "tenant",
        "campaign",
        "egress_pool",
        "egress_source",
        "provider",
        "bounce_class",
    ];
}

/// The body of `GET /api/v1/state`, and what `vigil replay` prints: where the processor's
/// derived state stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateResponse {
    /// The next log offset the state will apply: it reflects every event before it.
    pub offset: u64,
    /// `vigil replay` prints the same digest for the same log up to `offset`.
    pub digest: String,
    /// The rules' state and the actions in force; `vigil replay` prints it too.
    pub actions_digest: String,
    pub scopes: usize,
    pub suppressions: usize,
    pub too_late: u64,
}
