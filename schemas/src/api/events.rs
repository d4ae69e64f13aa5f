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
    /// For a complaint: the feedback mailbox the report came to.
    #[serde(default)]
    pub report_recipient: Option<String>,
    /// For a complaint: the feedback loop that sent it (`yahoo_cfl`, `microsoft_jmrp`, ...).
    #[serde(default)]
    pub feedback_loop: Option<String>,
    /// For a complaint: `trace`, `joined` or `unattributed` (how its egress source was found).
    #[serde(default)]
    pub attribution: Option<String>,
    /// For a complaint: when the message complained about was sent (`occurred_at` is when
    /// the report arrived).
    #[serde(default)]
    pub original_sent_at: Option<DateTime<Utc>>,
    /// The classifier rule that decided `bounce_class` (`internal` for the MTA's own replies).
    #[serde(default)]
    pub classifier_rule: Option<String>,
}

impl EventRecord {
    /// The text columns after `kind`, in field order (the complaint ones after the response):
    /// what both warehouse backends select.
    pub const TEXT_COLUMNS: [&'static str; 13] = [
        "recipient",
        "message_id",
        "sender",
        "tenant",
        "campaign",
        "egress_pool",
        "egress_source",
        "provider",
        "bounce_class",
        "report_recipient",
        "feedback_loop",
        "attribution",
        "classifier_rule",
    ];
}
