//! The warehouse: enriched events as Parquet files in the data directory, queried with
//! DataFusion (the embedded backend); and the ClickHouse backend's schema (its sink and
//! reader are to come, over the same API queries).
//!
//! # Contract
//! - In: batches of enriched events that cover a log offset range `[start, end)`, written by
//!   the processor ([`ParquetWriter::write_batch`]).
//! - Out: answers to the typed API queries of [`vigil_schemas::api`] ([`Reader::summary`]).
//! - Guarantee: a batch is visible only as whole files (written to `tmp/`, fsync'd, renamed).
//!   File names carry the offset range they cover, so the writer's owner can make the set of
//!   files exactly match what it committed: after a crash, [`ParquetWriter::recover`] deletes
//!   files at or past the committed offset, and a replay writes them again. No event is counted
//!   twice and none is lost as long as the consumer offset is committed after `write_batch`.
//!
//! # Layout
//! - `events/date=YYYY-MM-DD/part-<start>-<end>.parquet`: one file per batch and day of
//!   `occurred_at`, offsets zero-padded to 20 digits so name order is offset order.
//! - [`schema`]: the Arrow schema of an enriched event and the conversion to record batches.
//! - [`writer`], [`reader`]: the two sides.
//! - [`clickhouse`]: the ClickHouse backend's settings and schema migrations
//!   (`schemas/clickhouse/`, applied by `vigil migrate`).

pub mod clickhouse;
pub mod files;
pub mod reader;
pub mod schema;
pub mod writer;

pub use reader::Reader;
pub use writer::ParquetWriter;

/// The outcome columns of a summary, in response order, and the event kind each counts; one
/// list for both backends, so their answers have the same shape.
pub(crate) const OUTCOMES: [(&str, &str); 5] = [
    ("delivered", "delivered"),
    ("deferred", "deferred"),
    ("bounced", "bounced"),
    ("expired", "expired"),
    ("complaints", "complaint"),
];

/// Errors of the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// File system trouble; retrying may help (disk full, permissions).
    #[error("warehouse I/O at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// Arrow or Parquet encoding failed: a bug.
    #[error("warehouse encoding: {0}")]
    Encode(#[from] datafusion::arrow::error::ArrowError),
    #[error("warehouse parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Query planning or execution failed.
    #[error("warehouse query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
}

impl WarehouseError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.display().to_string(), source }
    }
}
