//! The canonical delivery event (DESIGN.md §4).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::BounceClass;

/// What happened to one message for one recipient.
///
/// Disposition (`kind`) and classification (`bounce_class`) are separate: a 5xx can be transient
/// for some MTAs, and the event keeps what the source said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Our MTA accepted the message for delivery.
    Reception,
    /// The receiving MTA accepted the message.
    Delivered,
    /// Transient failure; the MTA will retry.
    Deferred,
    /// Permanent failure; no further attempts.
    Bounced,
    /// The message outlived its queue lifetime.
    Expired,
    /// Our own MTA refused the message at reception.
    Rejected,
    /// Suppressed by a relay; never attempted.
    Dropped,
    /// A recipient reported the message as spam (ARF / feedback loop).
    Complaint,
    Unsubscribe,
    Open,
    Click,
    AutoReply,
    DmarcReport,
    /// Moved to another queue by an operator or the MTA itself (KumoMTA AdminRebind,
    /// DeferredInjectionRebind); not an outcome.
    Rebound,
    /// Moved into the scheduled queue without a failure record (KumoMTA Delayed).
    Delayed,
    /// Handed to or received from another node of the same MTA cluster (KumoMTA XferOut/XferIn).
    Transferred,
    /// An operator took an action in force back before it expired (source `operator`; what and
    /// why in [`DeliveryEvent::operator`]). In the log so that a replay lifts it again.
    ActionLifted,
    /// An operator took a recipient off the suppression list (source `operator`; the recipient
    /// in [`DeliveryEvent::recipient`], who and why in [`DeliveryEvent::operator`], whose
    /// `action_key` is `suppression`). The audit record of the removal, and in the log so that
    /// a replay removes it again.
    SuppressionRemoved,
    /// A DNS block list lists one of our sending IPs (`sending_ip`) or domains
    /// (`sender_domain`): source `dns`, the list's zone in `source_node`, its return code and
    /// reason in `response_text`.
    Blocklisted,
    /// A block list no longer lists it (same fields as [`EventKind::Blocklisted`]).
    Delisted,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 20] = [
        Self::Reception,
        Self::Delivered,
        Self::Deferred,
        Self::Bounced,
        Self::Expired,
        Self::Rejected,
        Self::Dropped,
        Self::Complaint,
        Self::Unsubscribe,
        Self::Open,
        Self::Click,
        Self::AutoReply,
        Self::DmarcReport,
        Self::Rebound,
        Self::Delayed,
        Self::Transferred,
        Self::ActionLifted,
        Self::SuppressionRemoved,
        Self::Blocklisted,
        Self::Delisted,
    ];

    /// The snake_case name used in JSON, Parquet and the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reception => "reception",
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
            Self::Dropped => "dropped",
            Self::Complaint => "complaint",
            Self::Unsubscribe => "unsubscribe",
            Self::Open => "open",
            Self::Click => "click",
            Self::AutoReply => "auto_reply",
            Self::DmarcReport => "dmarc_report",
            Self::Rebound => "rebound",
            Self::Delayed => "delayed",
            Self::Transferred => "transferred",
            Self::ActionLifted => "action_lifted",
            Self::SuppressionRemoved => "suppression_removed",
            Self::Blocklisted => "blocklisted",
            Self::Delisted => "delisted",
        }
    }

    /// Parses the snake_case name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// True for kinds that carry a remote (or local) failure response worth classifying.
    #[must_use]
    pub fn is_bounce_classifiable(self) -> bool {
        matches!(self, Self::Deferred | Self::Bounced | Self::Expired | Self::Rejected | Self::Complaint)
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Kumomta,
    Postfix,
    Powermta,
    Exim,
    Ses,
    Sendgrid,
    Mailgun,
    Postmark,
    Sparkpost,
    Brevo,
    Mailjet,
    Postal,
    Elasticemail,
    Dsn,
    Arf,
    Dmarc,
    /// A person, through the API or the dashboards.
    Operator,
    /// Vigil's own DNS checks (block lists).
    Dns,
}

impl SourceKind {
    /// The snake_case name used in JSON and the log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kumomta => "kumomta",
            Self::Postfix => "postfix",
            Self::Powermta => "powermta",
            Self::Exim => "exim",
            Self::Ses => "ses",
            Self::Sendgrid => "sendgrid",
            Self::Mailgun => "mailgun",
            Self::Postmark => "postmark",
            Self::Sparkpost => "sparkpost",
            Self::Brevo => "brevo",
            Self::Mailjet => "mailjet",
            Self::Postal => "postal",
            Self::Elasticemail => "elasticemail",
            Self::Dsn => "dsn",
            Self::Dns => "dns",
            Self::Arf => "arf",
            Self::Dmarc => "dmarc",
            Self::Operator => "operator",
        }
    }
}

/// Prefix of responses kumod generates itself (KUMOMTA.md §1.2); they say nothing about how a
/// receiver sees us.
pub const KUMOMTA_INTERNAL_PREFIX: &str = "KumoMTA internal:";

/// How a complaint was tied to the mail stream that sent the message complained about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The report itself says (KumoMTA's `X-KumoRef` trace meta, a relay's event fields).
    Trace,
    /// Joined to the most recent delivery to the complainer within the configured horizon.
    Joined,
    /// Neither: counted for its provider, but for no egress source.
    Unattributed,
}

impl Attribution {
    /// The snake_case name used in JSON, Parquet, ClickHouse and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Joined => "joined",
            Self::Unattributed => "unattributed",
        }
    }
}

/// An operator's action on the rules' actions, as the log keeps it (see
/// [`EventKind::ActionLifted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorAction {
    /// The action it is about: a decision's `action_key`.
    pub action_key: String,
    /// Who, as they named themselves.
    pub author: String,
    /// Why, in their words.
    pub reason: String,
}

/// One (message, recipient, outcome), normalised from any source.
///
/// Field groups follow DESIGN.md §4. Everything past identity, time and kind is optional
/// because sources differ in what they know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryEvent {
    /// Version of this schema the event was written with.
    pub schema_version: u16,

    // identity
    /// Stable id: a hash of the source's own identity fields, so re-delivery of the same input
    /// gives the same id and duplicates can be removed.
    pub event_id: String,
    pub source: SourceKind,
    /// The node that reported the event (KumoMTA `nodeid`, a host name, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// The source's own record type, verbatim (KumoMTA `type`, e.g. `AdminBounce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,

    // time
    /// When it happened, by the source's clock (UTC, millisecond precision).
    pub occurred_at: DateTime<Utc>,
    /// When Vigil normalised it (UTC, millisecond precision).
    pub ingested_at: DateTime<Utc>,

    pub kind: EventKind,

    // message
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Lower-cased domain of the recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,

    // route
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_pool: Option<String>,
    /// The sending IP's name in the MTA (KumoMTA egress source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_ip: Option<String>,
    /// Host name of the receiving MX, without a trailing dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_ip: Option<String>,
    /// KumoMTA ready-queue name: `{egress_source}->{mx_site}@{protocol}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Mailbox provider (google, microsoft, yahoo, apple, ..., other); filled by the processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,

    // response
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
    /// RFC 3463 enhanced status code, `class.subject.detail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced_status: Option<String>,
    /// The response text on a single line, without code or enhanced code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_text: Option<String>,
    /// The SMTP command the response answered, without the trailing CRLF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_command: Option<String>,
    /// The response was generated by our own MTA (e.g. "KumoMTA internal: ...", an administrative
    /// bounce, an expiry), not by the receiver. Such events are excluded from reputation.
    #[serde(default)]
    pub internal: bool,

    // classification
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_class: Option<BounceClass>,
    /// What the source itself said about the failure, verbatim (KumoMTA
    /// `bounce_classification`, a relay's bounce type, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_class: Option<String>,
    /// Which rule decided `bounce_class`, so an analyst can see why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_rule: Option<String>,

    // complaint (schema version 2): for a complaint, `recipient` is the person who complained
    /// The mailbox a feedback report was addressed to (your feedback-loop address). Never the
    /// recipient, so never suppressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_recipient: Option<String>,
    /// The feedback loop that sent the report (`yahoo_cfl`, `microsoft_jmrp`, `aol`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_loop: Option<String>,
    /// When the message complained about was sent (the report's `Arrival-Date`, else the
    /// joined delivery's time). `occurred_at` is when the report arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_sent_at: Option<DateTime<Utc>>,
    /// How a complaint's egress source, pool, campaign and tenant were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,

    // DMARC (schema version 3): a `dmarc_report` event is one row of an aggregate report;
    // `sending_ip` is the row's source IP, `sender_domain` its header From domain, `source_node`
    // the reporting organisation and `occurred_at` the end of the report's period.
    /// How many messages the event stands for (a DMARC row's count); absent means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_count: Option<u64>,
    /// What the DMARC evaluator did with them: `none`, `quarantine`, `reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_disposition: Option<String>,
    /// The DMARC DKIM verdict: `pass` (passed and aligned) or `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_dkim: Option<String>,
    /// The DMARC SPF verdict: `pass` (passed and aligned) or `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_spf: Option<String>,
    /// The id of the report the event came from (a DMARC aggregate report's `report_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,

    // operator actions (schema version 4)
    /// What an operator did and why (events from source `operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorAction>,

    /// The source record as received, so any event can be normalised again.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "raw_record::deserialize")]
    #[schemars(with = "Option<String>")]
    pub raw: Option<String>,
}

impl DeliveryEvent {
    /// An event with identity, time and kind set and everything else empty.
    #[must_use]
    pub fn new(
        event_id: String,
        source: SourceKind,
        kind: EventKind,
        occurred_at: DateTime<Utc>,
        ingested_at: DateTime<Utc>,
    ) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            event_id,
            source,
            source_node: None,
            source_type: None,
            occurred_at: truncate_to_millis(occurred_at),
            ingested_at: truncate_to_millis(ingested_at),
            kind,
            message_id: None,
            queue_id: None,
            sender: None,
            sender_domain: None,
            recipient: None,
            recipient_domain: None,
            tenant: None,
            campaign: None,
            size_bytes: None,
            attempt: None,
            egress_pool: None,
            egress_source: None,
            sending_ip: None,
            mx_host: None,
            mx_ip: None,
            site: None,
            provider: None,
            smtp_code: None,
            enhanced_status: None,
            response_text: None,
            smtp_command: None,
            internal: false,
            bounce_class: None,
            provider_class: None,
            classifier_rule: None,
            report_recipient: None,
            feedback_loop: None,
            original_sent_at: None,
            attribution: None,
            message_count: None,
            dmarc_disposition: None,
            dmarc_dkim: None,
            dmarc_spf: None,
            report_id: None,
            operator: None,
            raw: None,
        }
    }

    /// The response as one SMTP line, `code enhanced text`, which is what KumoMTA's bounce
    /// classifier matches against (`Response::to_single_line`).
    #[must_use]
    pub fn response_line(&self) -> Option<String> {
        let mut line = String::new();
        self.write_response_line(&mut line).then_some(line)
    }

    /// Appends [`Self::response_line`] to `out` (for callers reusing a buffer); false, with
    /// nothing written, when there is no SMTP code.
    pub fn write_response_line(&self, out: &mut String) -> bool {
        use std::fmt::Write as _;
        let Some(code) = self.smtp_code else { return false };
        let text = self.response_text.as_deref().unwrap_or("");
        let _ = match &self.enhanced_status {
            Some(enhanced) => write!(out, "{code} {enhanced} {text}"),
            None => write!(out, "{code} {text}"),
        };
        true
    }
}

/// Events carry millisecond precision (DESIGN.md §4); sources may give nanoseconds.
#[must_use]
pub fn truncate_to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(at)
}

/// Decoding events without their source record.
///
/// The raw record is often the largest part of an event (a KumoMTA record is about 1 KB of
/// escaped JSON) and most consumers never read it: the processor classifies and counts from
/// the normalised fields. Unescaping and copying it was a third of the cost of reading the
/// log, so [`without_raw`] lets a consumer skip it: serde still has to walk the string to find
/// its end, but it neither unescapes nor allocates.
pub mod raw_record {
    use std::cell::Cell;

    use serde::de::IgnoredAny;
    use serde::{Deserialize, Deserializer};

    thread_local! {
        static SKIP: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `decode` with events' `raw` decoded as `None` on this thread.
    pub fn without_raw<T>(decode: impl FnOnce() -> T) -> T {
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                SKIP.with(|skip| skip.set(self.0));
            }
        }
        let _restore = Restore(SKIP.with(|skip| skip.replace(true)));
        decode()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        if SKIP.with(Cell::get) {
            IgnoredAny::deserialize(deserializer)?;
            Ok(None)
        } else {
            Option::<String>::deserialize(deserializer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_serde() {
        for kind in EventKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    /// The log decodes events cheaply by cutting the raw record off the end
    /// (`vigil_log`'s `decode_without_raw`): `raw` must stay the last field.
    #[test]
    fn raw_is_serialised_last() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut event = DeliveryEvent::new("id".into(), SourceKind::Kumomta, EventKind::Bounced, at, at);
        event.raw = Some("{}".into());
        event.classifier_rule = Some("rule".into());
        event.bounce_class = Some(crate::BounceClass::SpamBlock);
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.ends_with(r#","raw":"{}"}"#), "{json}");
    }

    #[test]
    fn raw_is_skipped_only_inside_without_raw() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut event = DeliveryEvent::new("id".into(), SourceKind::Kumomta, EventKind::Delivered, at, at);
        event.raw = Some(r#"{"type":"Delivery","note":"a \"quoted\" word"}"#.into());
        event.recipient = Some("a@b.example".into());
        let json = serde_json::to_vec(&event).unwrap();
        let lean: DeliveryEvent = raw_record::without_raw(|| serde_json::from_slice(&json).unwrap());
        assert_eq!(lean.raw, None);
        assert_eq!(lean.recipient, event.recipient, "the rest is read");
        let full: DeliveryEvent = serde_json::from_slice(&json).unwrap();
        assert_eq!(full, event, "outside, raw is read again");
    }

    #[test]
    fn response_line_joins_code_enhanced_and_text() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let mut event = DeliveryEvent::new("id".into(), SourceKind::Kumomta, EventKind::Bounced, at, at);
        assert_eq!(event.occurred_at.timestamp_subsec_nanos(), 123_000_000);
        assert_eq!(event.response_line(), None);
        event.smtp_code = Some(550);
        event.enhanced_status = Some("5.1.1".into());
        event.response_text = Some("no such user".into());
        assert_eq!(event.response_line().unwrap(), "550 5.1.1 no such user");
    }
}
