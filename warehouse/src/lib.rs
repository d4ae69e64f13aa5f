//! The warehouse: enriched events as Parquet files in the data directory, queried with
//! DataFusion (the embedded backend), or in ClickHouse (the fleet backend), answering the same
//! primitive queries identically.
//!
//! # Contract
//! - In: batches of enriched events that cover a log offset range `[start, end)`, written by
//!   the processor ([`ParquetWriter::write_batch`], [`clickhouse::ClickHouseWriter::write_batch`]).
//! - Out: answers to the two primitive queries of [`query`] (counts by groups and time
//!   buckets, and a page of events), which every API endpoint is composed from; [`Store`]
//!   is either backend.
//! - Guarantee: a batch is visible only as whole files (written to `tmp/`, fsync'd, renamed).
//!   File names carry the offset range they cover, so the writer's owner can make the set of
//!   files exactly match what it committed: after a crash, [`ParquetWriter::recover`] deletes
//!   files at or past the committed offset, and a replay writes them again. No event is counted
//!   twice and none is lost as long as the consumer offset is committed after `write_batch`.
//!
//! # Layout
//! - `events/date=YYYY-MM-DD/part-<start>-<end>.parquet`: one file per batch and day of
//!   `occurred_at`, offsets zero-padded to 20 digits so name order is offset order.
//! - `hourly/date=YYYY-MM-DD/part-<start>-<end>.parquet`: the same batch's counts per hour x
//!   egress source x pool x provider x kind x bounce class x internal, the embedded rollup;
//!   counts over whole hours read it where it covers the same batches as `events/`.
//! - [`schema`]: the Arrow schema of an enriched event and the conversion to record batches.
//! - [`writer`], [`reader`]: the two sides.
//! - [`query`]: the primitive queries and [`Store`].
//! - [`clickhouse`]: the ClickHouse backend: settings, schema migrations
//!   (`schemas/clickhouse/`, applied by `vigil migrate`), sink and reader, and the writer of the
//!   `decisions` table that the processor's decision pusher drives.

pub mod clickhouse;
pub mod files;
pub mod metrics;
pub mod query;
pub mod reader;
pub mod schema;
pub mod synthetic;
pub mod writer;

pub use query::Store;
pub use reader::Reader;
pub use writer::ParquetWriter;

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
    /// ClickHouse refused or could not be reached.
    #[error(transparent)]
    ClickHouse(#[from] clickhouse::ClickHouseError),
}

impl WarehouseError {
    /// The dependency that is down when a retry later can fix the failure (ClickHouse cannot
    /// be reached or timed out); `None` for a failure of the request or of Vigil.
    #[must_use]
    pub fn unavailable(&self) -> Option<&'static str> {
        use ::clickhouse::error::Error;
        match self {
            Self::ClickHouse(clickhouse::ClickHouseError::Server {
                source: Error::Network(_) | Error::TimedOut,
                ..
            }) => Some("clickhouse"),
            _ => None,
        }
    }

    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.display().to_string(), source }
    }
}
