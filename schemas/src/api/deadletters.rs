//! `GET /api/v1/deadletters`: input that could not be normalised, with the reason.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::DeadLetter;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeadLetterParams {
    /// First dead letter (sequence number).
    pub from: Option<u64>,
    /// Rows per page (default 100).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterRow {
    pub seq: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterResponse {
    pub total: u64,
    pub rows: Vec<DeadLetterRow>,
}
