//! `GET /api/v1/events`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
