//! The wire types of the query API (`/api/v1`) and of the log hook, one module per endpoint,
//! shared by the server, the warehouse backends that answer it, and clients. Their JSON
//! Schemas are derived from the types (`schemars`), and the OpenAPI document
//! (`/api/v1/openapi.json`) is built from them.
//!
//! Endpoints whose answers carry the processor's own values (reputation rows with their
//! rates and score, suppressions, decisions, warm-up progress) still declare those types in
//! the API crate, next to the handlers, until the values move here too.

pub mod blocklists;
pub mod deadletters;
pub mod dmarc;
pub mod domains;
pub mod events;
pub mod ingest;
pub mod providers;
pub mod state;
pub mod summary;

use serde::{Deserialize, Serialize};

pub use events::EventRecord;
pub use state::StateResponse;
pub use summary::{SummaryQuery, SummaryResponse, SummaryRow};

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
    /// How a complaint was attributed (`trace`, `joined`, `unattributed`); absent for others.
    Attribution,
}

impl Dimension {
    pub const ALL: [Self; 10] = [
        Self::EgressSource,
        Self::EgressPool,
        Self::Provider,
        Self::RecipientDomain,
        Self::Tenant,
        Self::Campaign,
        Self::BounceClass,
        Self::Kind,
        Self::SendingDomain,
        Self::Attribution,
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
            Self::Attribution => "attribution",
        }
    }

    /// Parses one API name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }
}
