//! Input that could not be normalised: kept with the reason, never dropped silently.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many bytes of a rejected input a dead letter keeps. Larger inputs are cut, and
/// `raw_len` says how long they were, so one giant line cannot exhaust memory or disk.
pub const DEAD_LETTER_MAX_RAW_BYTES: usize = 64 * 1024;

/// A record that could not be turned into events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetter {
    /// The input it came from, e.g. `kumomta-http` or `kumomta-file`.
    pub source: String,
    /// Where in that input: a file name and byte offset, or a batch index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Why it was rejected, in words an operator can act on.
    pub reason: String,
    pub received_at: DateTime<Utc>,
    /// The input, lossily decoded as UTF-8 and cut to [`DEAD_LETTER_MAX_RAW_BYTES`].
    pub raw: String,
    /// Length of the input in bytes before cutting.
    pub raw_len: u64,
}

impl DeadLetter {
    /// A dead letter for `raw`, keeping at most [`DEAD_LETTER_MAX_RAW_BYTES`] of it.
    #[must_use]
    pub fn new(source: &str, location: Option<String>, reason: String, raw: &[u8]) -> Self {
        let kept = &raw[..raw.len().min(DEAD_LETTER_MAX_RAW_BYTES)];
        Self {
            source: source.to_owned(),
            location,
            reason,
            received_at: crate::event::truncate_to_millis(Utc::now()),
            raw: String::from_utf8_lossy(kept).into_owned(),
            raw_len: raw.len() as u64,
        }
    }
}
