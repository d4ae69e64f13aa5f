//! KumoMTA: its JSON log record, the HTTP log hook and the log-directory tail.

mod http;
mod normalise;
mod record;

pub use crate::tail::ZSTD_MAGIC;
pub use http::{Admission, IngestResponse, MAX_WAIT, PATH, RecordError, receiver, router};
pub(crate) use http::{admit, append, error};
pub use normalise::{KUMOMTA_INTERNAL_PREFIX, NormaliseError, domain_of, normalise_record};

use chrono::Utc;
use vigil_log::{AppendBatch, AppendReceipt, EventLog, LogError};

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
    log.append(&batch)
}

/// Normalises a sequence of raw records into one batch for the log: events for the good ones,
/// dead letters (with the reason and where the record was) for the rest. Returns the batch and,
/// per rejected record, its position in `records` and the reason.
pub(crate) fn batch_from_records<'a>(
    source: &str,
    records: impl IntoIterator<Item = (String, &'a [u8])>,
) -> (AppendBatch, Vec<(usize, String)>) {
    let ingested_at = Utc::now();
    let mut normaliser = crate::lines::Format::Kumomta.normaliser();
    let mut batch = AppendBatch::default();
    let mut rejected = Vec::new();
    for (position, (location, raw)) in records.into_iter().enumerate() {
        if let Err(reason) =
            crate::lines::push_into_batch(&mut batch, normaliser.as_mut(), source, location, raw, ingested_at)
        {
            rejected.push((position, reason));
        }
    }
    (batch, rejected)
}
