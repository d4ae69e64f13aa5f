//! KumoMTA: its JSON log record, the HTTP log hook and the log-directory tail.

mod http;
mod normalise;
mod record;

pub use crate::tail::ZSTD_MAGIC;
pub use http::{IngestResponse, RecordError, router};
pub use normalise::{KUMOMTA_INTERNAL_PREFIX, NormaliseError, domain_of, normalise_record};

use chrono::Utc;
use vigil_log::{AppendBatch, AppendReceipt, EventLog, LogError};
use vigil_schemas::DeadLetter;

/// Normalises raw records (each with a location for its dead letter, should it be rejected)
/// and appends the result to the log in one durable batch. Blocking.
///
/// # Errors
/// When the log cannot append; then nothing was stored.
pub fn append_records<'a>(
    log: &EventLog,
    source: &str,
    records: impl IntoIterator<Item = (String, &'a [u8])>,
) -> Result<AppendReceipt, LogError> {
    let (batch, _) = batch_from_records(source, records);
    log.append(batch)
}

/// Normalises a sequence of raw records into one batch for the log: events for the good ones,
/// dead letters (with the reason and where the record was) for the rest. Returns the batch and,
/// per rejected record, its position in `records` and the reason.
pub(crate) fn batch_from_records<'a>(
    source: &str,
    records: impl IntoIterator<Item = (String, &'a [u8])>,
) -> (AppendBatch, Vec<(usize, String)>) {
    let ingested_at = Utc::now();
    let mut batch = AppendBatch::default();
    let mut rejected = Vec::new();
    for (position, (location, raw)) in records.into_iter().enumerate() {
        if let Err(reason) = push_record(&mut batch, source, location, raw, ingested_at) {
            rejected.push((position, reason));
        }
    }
    (batch, rejected)
}

/// Adds one raw record to `batch`: its events, or a dead letter with the reason (returned).
pub(crate) fn push_record(
    batch: &mut AppendBatch,
    source: &str,
    location: String,
    raw: &[u8],
    ingested_at: chrono::DateTime<Utc>,
) -> Result<(), String> {
    let outcome = std::str::from_utf8(raw)
        .map_err(|e| format!("record is not valid UTF-8: {e}"))
        .and_then(|text| normalise_record(text, ingested_at).map_err(|e| e.to_string()));
    match outcome {
        Ok(events) => {
            batch.events.extend(events);
            Ok(())
        }
        Err(reason) => {
            batch.dead_letters.push(DeadLetter::new(source, Some(location), reason.clone(), raw));
            Err(reason)
        }
    }
}
