//! `GET /api/v1/summary`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Dimension;

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
