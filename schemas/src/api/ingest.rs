//! `POST /ingest/kumomta` and `POST /publish_log_v1`: KumoMTA's log hook and its TSA
//! publisher. The status says what the sender should do; the body says what was kept.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The JSON body of every answer from the receiver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct IngestResponse {
    /// Records normalised and durable in the log (including ones already there).
    pub accepted: usize,
    /// Events newly appended (a multi-recipient record gives several).
    pub events: usize,
    /// Events that were already in the log (a re-send) and were not counted again.
    pub duplicates: usize,
    /// Records rejected and kept as dead letters.
    pub dead_lettered: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RecordError>,
}

/// Why one record of a request was rejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct RecordError {
    /// Index in the array, or 0 for a single record.
    pub index: usize,
    pub reason: String,
}
