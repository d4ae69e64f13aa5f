//! The two primitive queries every API endpoint is built from, and the backend that answers
//! them.
//!
//! Endpoints (in `vigil-query`) are compositions: a summary is a [`CountQuery`] grouped by the
//! asked dimensions and the event kind, a time series the same with a time step, reputation
//! the same grouped by scope and bounce class, bounce classes add the response text. Each
//! backend renders these two shapes only (ClickHouse SQL in [`crate::clickhouse::reader`],
//! DataFusion plans in [`crate::reader`]), so a new endpoint is one file in `vigil-query` and
//! both backends answer it the same way.
//!
//! Absent text is `None` on both sides: ClickHouse stores it as `''` and Parquet as null (or,
//! from a normaliser that kept an empty string, `""`); both backends treat `''` as absent.

use chrono::{DateTime, Utc};
use vigil_schemas::api::{Dimension, EventRecord};

use crate::WarehouseError;
use crate::clickhouse::ClickHouseReader;
use crate::reader::Reader;

/// A text column that can be grouped or filtered on. The name is the column in both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    EgressSource,
    EgressPool,
    Provider,
    RecipientDomain,
    Tenant,
    Campaign,
    BounceClass,
    /// The classifier rule that decided the bounce class.
    ClassifierRule,
    Kind,
    SenderDomain,
    Recipient,
    MessageId,
    ResponseText,
    Attribution,
    SendingIp,
    /// Who reported the event (a DMARC report's organisation).
    SourceNode,
    DmarcDisposition,
    DmarcDkim,
    DmarcSpf,
    ReportId,
}

impl Field {
    /// The column name, in Parquet and in ClickHouse.
    #[must_use]
    pub fn column(self) -> &'static str {
        match self {
            Self::EgressSource => "egress_source",
            Self::EgressPool => "egress_pool",
            Self::Provider => "provider",
            Self::RecipientDomain => "recipient_domain",
            Self::Tenant => "tenant",
            Self::Campaign => "campaign",
            Self::BounceClass => "bounce_class",
            Self::ClassifierRule => "classifier_rule",
            Self::Kind => "kind",
            Self::SenderDomain => "sender_domain",
            Self::Recipient => "recipient",
            Self::MessageId => "message_id",
            Self::ResponseText => "response_text",
            Self::Attribution => "attribution",
            Self::SendingIp => "sending_ip",
            Self::SourceNode => "source_node",
            Self::DmarcDisposition => "dmarc_disposition",
            Self::DmarcDkim => "dmarc_dkim",
            Self::DmarcSpf => "dmarc_spf",
            Self::ReportId => "report_id",
        }
    }
}

impl From<Dimension> for Field {
    fn from(dimension: Dimension) -> Self {
        match dimension {
            Dimension::EgressSource => Self::EgressSource,
            Dimension::EgressPool => Self::EgressPool,
            Dimension::Provider => Self::Provider,
            Dimension::RecipientDomain => Self::RecipientDomain,
            Dimension::Tenant => Self::Tenant,
            Dimension::Campaign => Self::Campaign,
            Dimension::BounceClass => Self::BounceClass,
            Dimension::Kind => Self::Kind,
            Dimension::SendingDomain => Self::SenderDomain,
            Dimension::Attribution => Self::Attribution,
        }
    }
}

/// Which events a query reads. Every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    /// Inclusive lower bound on `occurred_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `occurred_at`.
    pub to: Option<DateTime<Utc>>,
    /// The event is one of these kinds (API names); empty means any kind.
    pub kinds: Vec<&'static str>,
    /// The field equals the (non-empty) value.
    pub equals: Vec<(Field, String)>,
    /// The field is present (not absent, not empty).
    pub present: Vec<Field>,
    /// The field is absent (or empty).
    pub absent: Vec<Field>,
    /// Leave out events the MTA generated itself (`internal`), as reputation does.
    pub external_only: bool,
}

impl EventFilter {
    /// Every field the filter looks at, the time aside.
    pub(crate) fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.equals
            .iter()
            .map(|(f, _)| *f)
            .chain(self.present.iter().copied())
            .chain(self.absent.iter().copied())
            .chain(
                // The kind list is a condition on `kind`.
                (!self.kinds.is_empty()).then_some(Field::Kind),
            )
    }
}

/// Count events grouped by fields and, with a step, by time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CountQuery {
    pub filter: EventFilter,
    pub group_by: Vec<Field>,
    /// Bucket width in minutes; buckets start at multiples of it since the Unix epoch.
    pub step_minutes: Option<u32>,
    /// Count the messages events stand for (`message_count`, one when absent) instead of
    /// events: a DMARC row is many messages. Read from the events themselves, never a rollup.
    pub weighted: bool,
}

/// One group of a [`CountQuery`]. Backends return groups in no particular order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CountRow {
    /// Start of the bucket, when the query has a step.
    pub bucket: Option<DateTime<Utc>>,
    /// The group's value of each `group_by` field, in order.
    pub values: Vec<Option<String>>,
    pub count: u64,
}

/// A page of events, newest first (`occurred_at` then `event_id`, both descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub filter: EventFilter,
    /// Only events strictly before this position: the last event of the previous page.
    pub before: Option<(DateTime<Utc>, String)>,
    pub limit: usize,
}

/// Where the analytics live: the embedded Parquet files or ClickHouse. Both answer every
/// query identically (`tests/conformance.rs`).
#[derive(Debug, Clone)]
pub enum Store {
    Parquet(Reader),
    ClickHouse(ClickHouseReader),
}

impl Store {
    /// The backend's name, for logs and the API's answers.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Parquet(_) => "parquet",
            Self::ClickHouse(_) => "clickhouse",
        }
    }

    /// # Errors
    /// When the backend cannot be read.
    pub async fn counts(&self, query: &CountQuery) -> Result<Vec<CountRow>, WarehouseError> {
        match self {
            Self::Parquet(reader) => reader.counts(query).await,
            Self::ClickHouse(reader) => Ok(reader.counts(query).await?),
        }
    }

    /// # Errors
    /// When the backend cannot be read.
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<EventRecord>, WarehouseError> {
        match self {
            Self::Parquet(reader) => reader.search(query).await,
            Self::ClickHouse(reader) => Ok(reader.search(query).await?),
        }
    }
}

/// Splits a filter's range for a rollup of `grain_ms`: the whole grains inside the range (for
/// the rollup) and the partial grains at either end (for the events), or `None` when no whole
/// grain fits. Open ends stay open.
pub(crate) fn split_for_rollup(filter: &EventFilter, grain_ms: i64) -> Option<(EventFilter, Vec<EventFilter>)> {
    let at = DateTime::from_timestamp_millis;
    let inner_from =
        filter.from.and_then(|f| at((f.timestamp_millis() + grain_ms - 1).div_euclid(grain_ms) * grain_ms));
    let inner_to = filter.to.and_then(|t| at(t.timestamp_millis().div_euclid(grain_ms) * grain_ms));
    if let (Some(from), Some(to)) = (inner_from, inner_to)
        && from >= to
    {
        return None;
    }
    let mut edges = Vec::new();
    if filter.from != inner_from {
        edges.push(EventFilter { to: inner_from, ..filter.clone() });
    }
    if filter.to != inner_to {
        edges.push(EventFilter { from: inner_to, ..filter.clone() });
    }
    Some((EventFilter { from: inner_from, to: inner_to, ..filter.clone() }, edges))
}

/// The fields both hourly rollups keep (and `internal`).
pub(crate) const HOURLY_FIELDS: [Field; 5] =
    [Field::EgressSource, Field::EgressPool, Field::Provider, Field::Kind, Field::BounceClass];

/// An [`EventRecord`] from what both backends select: `text` in
/// [`EventRecord::TEXT_COLUMNS`] order.
pub(crate) fn event_record(
    event_id: String,
    occurred_at: DateTime<Utc>,
    kind: String,
    text: [Option<String>; EventRecord::TEXT_COLUMNS.len()],
    smtp_code: Option<u16>,
    enhanced_status: Option<String>,
    response_text: Option<String>,
) -> EventRecord {
    let [
        recipient,
        message_id,
        sender,
        tenant,
        campaign,
        egress_pool,
        egress_source,
        provider,
        bounce_class,
        report_recipient,
        feedback_loop,
        attribution,
        classifier_rule,
    ] = text;
    EventRecord {
        event_id,
        occurred_at,
        kind,
        recipient,
        message_id,
        sender,
        tenant,
        campaign,
        egress_pool,
        egress_source,
        provider,
        bounce_class,
        smtp_code,
        enhanced_status,
        response_text,
        report_recipient,
        feedback_loop,
        attribution,
        classifier_rule,
        original_sent_at: None,
    }
}

/// `''` is absent.
pub(crate) fn present(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}
