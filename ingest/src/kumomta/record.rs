//! Vigil's own mirror of KumoMTA's `JsonLogRecord` (`crates/kumo-log-types`), written from the
//! documented schema rather than depending on KumoMTA's workspace crates.
//!
//! Lenient where KumoMTA varies across versions (fields added since 2023 default, `recipient`
//! is a string or an array, `event_time` is optional), strict where an event would be
//! meaningless without it (`type`, `id`, `recipient`, a time). Unknown keys are ignored.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Strings are borrowed from the input where it holds them unescaped (most do), which spares
/// an allocation per field per record on the hot path.
#[derive(Debug, Deserialize)]
pub(crate) struct KumoRecord<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub sender: Cow<'a, str>,
    pub recipient: OneOrMany,
    #[serde(default, borrow)]
    pub queue: Cow<'a, str>,
    #[serde(default, borrow)]
    pub site: Cow<'a, str>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub response: Option<Response>,
    #[serde(default)]
    pub peer_address: Option<ResolvedAddress>,
    /// Unix seconds. Required unless `event_time` is present.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// RFC 3339 with nanoseconds, since 2025.10.06.
    #[serde(default)]
    pub event_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub num_attempts: Option<u32>,
    #[serde(default)]
    pub bounce_classification: Option<String>,
    #[serde(default)]
    pub egress_pool: Option<String>,
    #[serde(default)]
    pub egress_source: Option<String>,
    #[serde(default)]
    pub source_address: Option<SourceAddress>,
    #[serde(default)]
    pub feedback_report: Option<FeedbackReport>,
    /// Only the meta keys Vigil uses are read; the rest are skipped without allocating.
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub nodeid: Option<String>,
}

/// `recipient` is one string, or an array for multi-recipient batches (since 2025.12.02).
#[derive(Debug)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

// By hand rather than `#[serde(untagged)]`, which buffers every value before trying the
// variants: this field is in every record, and the buffering was a tenth of the parse time.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(value.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(value))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut many = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                while let Some(one) = seq.next_element()? {
                    many.push(one);
                }
                Ok(OneOrMany::Many(many))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Response {
    pub code: u16,
    #[serde(default)]
    pub enhanced_code: Option<EnhancedCode>,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub command: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResolvedAddress {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub addr: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SourceAddress {
    pub address: String,
}

/// Message meta (`meta=` of the logger): tenant and campaign when the policy sets them. Values
/// that are not strings are ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Meta {
    #[serde(default, deserialize_with = "string_or_none")]
    pub tenant: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub campaign: Option<String>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    })
}

/// The part of KumoMTA's ARF report (`feedback_report`, `kumo-log-types/src/rfc5965.rs`) the
/// event uses. A `Feedback` record is the *reception of the report*: its `recipient` is the
/// feedback-loop mailbox and its `peer_address` the reporting host; the person who complained
/// is in the report.
#[derive(Debug, Deserialize)]
pub(crate) struct FeedbackReport {
    #[serde(default)]
    pub feedback_type: Option<String>,
    /// Names the feedback loop's software (`Yahoo!-Mail-Feedback/2.0`, `Microsoft JMRP`).
    #[serde(default)]
    pub user_agent: Option<String>,
    /// When the original message reached the reporter: RFC 3339, or null when kumod could
    /// not parse the report's `Arrival-Date`.
    #[serde(default)]
    pub arrival_date: Option<String>,
    #[serde(default)]
    pub reporting_mta: Option<ReportingMta>,
    /// `Original-Rcpt-To`, bare addresses (the key is spelt so by KumoMTA).
    #[serde(default)]
    pub original_rcpto_to: Vec<String>,
    /// The decoded `X-KumoRef` header of the returned message: the recipient and the meta
    /// names listed in kumod's `trace_headers.include_meta_names`.
    #[serde(default)]
    pub supplemental_trace: Option<SupplementalTrace>,
    /// The returned message or its headers, for its `To:` when nothing else names the
    /// complainer.
    #[serde(default)]
    pub original_message: Option<String>,
}

/// `Reporting-MTA: dns; <name>`.
#[derive(Debug, Deserialize)]
pub(crate) struct ReportingMta {
    #[serde(default)]
    pub name: Option<String>,
}

/// `X-KumoRef`'s payload. Meta names the policy chose to carry; unset ones arrive as `null`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SupplementalTrace {
    #[serde(default)]
    pub recipient: Option<OneOrMany>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub tenant: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub campaign: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub egress_source: Option<String>,
    #[serde(default, deserialize_with = "string_or_none")]
    pub egress_pool: Option<String>,
}
