//! Writing batches of enriched events as Parquet files, atomically per file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use vigil_schemas::DeliveryEvent;

use crate::WarehouseError;
use crate::files::{self, part_path};
use crate::schema::{event_schema, to_record_batch};

/// Writes the warehouse's Parquet files. Single writer per directory.
#[derive(Debug)]
pub struct ParquetWriter {
    root: PathBuf,
    props: WriterProperties,
}

impl ParquetWriter {
    /// Opens the warehouse at `root`, creating it if needed.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: &Path) -> Result<Self, WarehouseError> {
        for dir in [files::events_dir(root), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(WarehouseError::io(&dir))?;
        }
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
        Ok(Self { root: root.to_owned(), props })
    }

    /// Makes the files on disk match a consumer that committed everything before
    /// `committed_offset`: files of batches at or past it (written before a crash, never
    /// committed) are deleted, and so is anything left in `tmp/`. Returns how many were removed.
    ///
    /// # Errors
    /// When a file cannot be listed or removed.
    pub fn recover(&self, committed_offset: u64) -> Result<usize, WarehouseError> {
        let tmp = self.root.join("tmp");
        std::fs::remove_dir_all(&tmp).map_err(WarehouseError::io(&tmp))?;
        std::fs::create_dir_all(&tmp).map_err(WarehouseError::io(&tmp))?;
        let mut removed = 0;
        for part in files::list_parts(&self.root)? {
            if part.end > committed_offset {
                std::fs::remove_file(&part.path).map_err(WarehouseError::io(&part.path))?;
                tracing::info!(file = %part.path.display(), committed_offset, "removed an uncommitted warehouse file");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes the events of log offsets `[start, end)` (each with its offset), one file per
    /// day of `occurred_at`. When this returns, the files are durable and visible.
    ///
    /// # Errors
    /// On I/O or encoding failure; files already renamed stay, and [`Self::recover`] removes
    /// them if the batch is never committed.
    pub fn write_batch(&self, start: u64, end: u64, events: &[(u64, DeliveryEvent)]) -> Result<usize, WarehouseError> {
        let mut by_day: BTreeMap<NaiveDate, Vec<(u64, &DeliveryEvent)>> = BTreeMap::new();
        for (offset, event) in events {
            by_day.entry(event.occurred_at.date_naive()).or_default().push((*offset, event));
        }
        let mut written = 0;
        for (date, day_events) in by_day {
            let batch = to_record_batch(&day_events)?;
            let tmp = self.root.join("tmp").join(format!("part-{start:020}-{end:020}-{date}.parquet.tmp"));
            let mut file = File::create(&tmp).map_err(WarehouseError::io(&tmp))?;
            let mut writer = ArrowWriter::try_new(&mut file, event_schema(), Some(self.props.clone()))?;
            writer.write(&batch)?;
            writer.close()?;
            file.sync_all().map_err(WarehouseError::io(&tmp))?;
            let target = part_path(&self.root, date, start, end);
            let dir = target.parent().expect("part paths have a parent");
            std::fs::create_dir_all(dir).map_err(WarehouseError::io(dir))?;
            std::fs::rename(&tmp, &target).map_err(WarehouseError::io(&target))?;
            // The rename is durable only once the directory entry is.
            File::open(dir).and_then(|d| d.sync_all()).map_err(WarehouseError::io(dir))?;
            written += day_events.len();
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use vigil_schemas::api::{Dimension, SummaryQuery};
    use vigil_schemas::{EventKind, SourceKind};

    use super::*;
    use crate::Reader;

    fn event(kind: EventKind, secs: i64, provider: &str) -> DeliveryEvent {
        let at = DateTime::from_timestamp(secs, 0).unwrap();
        let mut e = DeliveryEvent::new(format!("{kind:?}{secs}"), SourceKind::Kumomta, kind, at, at);
        e.provider = Some(provider.into());
        e
    }

    #[tokio::test]
    async fn uncommitted_batches_are_rolled_back_and_days_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ParquetWriter::open(dir.path()).unwrap();
        let day = 86_400;
        let first = vec![(0, event(EventKind::Delivered, 0, "google")), (1, event(EventKind::Bounced, day, "google"))];
        assert_eq!(writer.write_batch(0, 2, &first).unwrap(), 2);
        assert_eq!(files::list_parts(dir.path()).unwrap().len(), 2, "one file per day");
        // A batch written but never committed (the process died before the offset commit).
        writer.write_batch(2, 3, &[(2, event(EventKind::Deferred, day, "yahoo"))]).unwrap();
        let reader = Reader::new(dir.path());
        let query = SummaryQuery { group_by: vec![Dimension::Provider], ..SummaryQuery::default() };
        assert_eq!(reader.summary(&query).await.unwrap().rows.len(), 2);

        assert_eq!(writer.recover(2).unwrap(), 1);
        let rows = reader.summary(&query).await.unwrap().rows;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].delivered, rows[0].bounced, rows[0].attempts), (1, 1, 2));
        // Time bounds prune by day and filter by event time.
        let query = SummaryQuery { from: DateTime::from_timestamp(day, 0), ..query };
        let rows = reader.summary(&query).await.unwrap().rows;
        assert_eq!((rows[0].delivered, rows[0].bounced), (0, 1));
    }
}
