//! Writing batches of enriched events as Parquet files, atomically per file: the events, and
//! beside them the batch's hourly rollup (`hourly/`, same offsets in the name), so both tables
//! always hold the same batches.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use vigil_schemas::DeliveryEvent;

use crate::WarehouseError;
use crate::files::{self, PartFile, Table, part_path};
use crate::schema::{event_schema, hourly_schema, to_hourly_batch, to_record_batch};

/// Compaction merges runs of at least this many consecutive files of one size tier.
const COMPACTION_RUN: usize = 8;
/// Files at or above this size are left alone by compaction.
const COMPACTION_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Merged-away files stay this long after the merged file appeared, so a query that listed them
/// just before can still read them (well past the API's request timeout).
const SUPERSEDED_GRACE: Duration = Duration::from_secs(120);

/// What one [`ParquetWriter::compact`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    /// Merged files written.
    pub merged: usize,
    /// Files they replaced (deleted later, after a grace period).
    pub inputs: usize,
    /// Superseded files deleted in this pass.
    pub deleted: usize,
}

/// Size tier of a file: 0 below 256 KiB, then one tier per factor of 8. Merging only files of
/// one tier rewrites each event about log8(total / 256 KiB) times, not once per merge.
fn size_tier(bytes: u64) -> u32 {
    let mut tier = 0;
    let mut bound = 256 * 1024;
    while bytes >= bound {
        tier += 1;
        bound *= 8;
    }
    tier
}

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
        for dir in [Table::Events.dir(root), Table::Hourly.dir(root), root.join("tmp")] {
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
        for table in Table::ALL {
            let (live, superseded) = files::split_superseded(files::list_parts(&self.root, table)?);
            // No reader runs yet, so merged-away inputs can go at once.
            for (part, _) in &superseded {
                std::fs::remove_file(&part.path).map_err(WarehouseError::io(&part.path))?;
            }
            for part in live {
                if part.end > committed_offset {
                    std::fs::remove_file(&part.path).map_err(WarehouseError::io(&part.path))?;
                    tracing::info!(file = %part.path.display(), committed_offset, "removed an uncommitted warehouse file");
                    removed += usize::from(table == Table::Events);
                }
            }
        }
        Ok(removed)
    }

    /// Deletes every day before `first_kept` from every table (retention): the day's
    /// directory goes whole, so a query over those days finds nothing instead of part of
    /// them. Returns the days deleted.
    ///
    /// # Errors
    /// When a directory cannot be listed or removed; the days already deleted stay deleted.
    pub fn drop_days_before(&self, first_kept: chrono::NaiveDate) -> Result<Vec<chrono::NaiveDate>, WarehouseError> {
        let mut dropped = std::collections::BTreeSet::new();
        for table in Table::ALL {
            let dir = table.dir(&self.root);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(WarehouseError::io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(WarehouseError::io(&dir))?;
                let date =
                    entry.file_name().to_str().and_then(|n| n.strip_prefix("date=")).and_then(|d| d.parse().ok());
                if let Some(date) = date.filter(|d: &chrono::NaiveDate| *d < first_kept) {
                    let day = entry.path();
                    std::fs::remove_dir_all(&day).map_err(WarehouseError::io(&day))?;
                    dropped.insert(date);
                }
            }
        }
        Ok(dropped.into_iter().collect())
    }

    /// Merges runs of small files into larger ones and deletes files merged away more than a
    /// grace period ago. Only committed files may be in the directory when this runs (call it
    /// after the consumer offset commit), so a merged file never mixes committed and
    /// uncommitted batches.
    ///
    /// # Errors
    /// On I/O or encoding failure; the files stay as they were, and superseded ones are ignored
    /// by readers and removed by [`Self::recover`].
    pub fn compact(&self) -> Result<CompactionReport, WarehouseError> {
        let mut report = CompactionReport::default();
        for table in Table::ALL {
            self.compact_table(table, &mut report)?;
        }
        Ok(report)
    }

    fn compact_table(&self, table: Table, report: &mut CompactionReport) -> Result<(), WarehouseError> {
        let (live, superseded) = files::split_superseded(files::list_parts(&self.root, table)?);
        let now = SystemTime::now();
        for (part, cover) in superseded {
            let merged_at = std::fs::metadata(&cover.path).and_then(|m| m.modified()).unwrap_or(now);
            if now.duration_since(merged_at).unwrap_or_default() >= SUPERSEDED_GRACE {
                std::fs::remove_file(&part.path).map_err(WarehouseError::io(&part.path))?;
                report.deleted += 1;
            }
        }
        let mut run: Vec<(PartFile, u32)> = Vec::new();
        let mut runs = Vec::new();
        for part in live {
            let size = std::fs::metadata(&part.path).map_err(WarehouseError::io(&part.path))?.len();
            let tier = (size < COMPACTION_MAX_BYTES).then(|| size_tier(size));
            let continues =
                run.last().is_some_and(|(last, last_tier)| last.date == part.date && Some(*last_tier) == tier);
            if !continues {
                runs.push(std::mem::take(&mut run));
            }
            if let Some(tier) = tier {
                run.push((part, tier));
            }
        }
        runs.push(run);
        for run in runs.into_iter().filter(|r| r.len() >= COMPACTION_RUN) {
            let parts: Vec<PartFile> = run.into_iter().map(|(p, _)| p).collect();
            self.merge(table, &parts)?;
            report.merged += 1;
            report.inputs += parts.len();
        }
        Ok(())
    }

    /// Writes one file covering the offset range of `parts` (consecutive files of one day).
    /// Rollup rows are concatenated, not summed again: readers sum them anyway.
    fn merge(&self, table: Table, parts: &[PartFile]) -> Result<(), WarehouseError> {
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("merge-{:?}-{:020}-{:020}-{}.parquet.tmp", table, first.start, last.end, first.date));
        let mut file = File::create(&tmp).map_err(WarehouseError::io(&tmp))?;
        let schema = match table {
            Table::Events => event_schema(),
            Table::Hourly => hourly_schema(),
        };
        let mut writer = ArrowWriter::try_new(&mut file, Arc::clone(&schema), Some(self.props.clone()))?;
        for part in parts {
            let input = File::open(&part.path).map_err(WarehouseError::io(&part.path))?;
            for batch in ParquetRecordBatchReaderBuilder::try_new(input)?.build()? {
                writer.write(&conform(&batch?, &schema)?)?;
            }
        }
        writer.close()?;
        file.sync_all().map_err(WarehouseError::io(&tmp))?;
        self.publish(&tmp, &part_path(&self.root, table, first.date, first.start, last.end))
    }

    /// Renames a finished temporary file into place, durably.
    fn publish(&self, tmp: &Path, target: &Path) -> Result<(), WarehouseError> {
        let dir = target.parent().expect("part paths have a parent");
        std::fs::create_dir_all(dir).map_err(WarehouseError::io(dir))?;
        std::fs::rename(tmp, target).map_err(WarehouseError::io(target))?;
        // The rename is durable only once the directory entry is.
        File::open(dir).and_then(|d| d.sync_all()).map_err(WarehouseError::io(dir))
    }

    /// Rewrites one person's rows (an erasure): in every events file with a row whose
    /// recipient `is_person`, every text column of those rows is passed through `rewrite`
    /// (which replaces each copy of the address), and the file is replaced atomically. Files
    /// merged away but not yet deleted are rewritten too. The hourly rollup holds no
    /// addresses; its counts stay, as the events do. Returns what was rewritten.
    ///
    /// # Errors
    /// On I/O or encoding failure; files already rewritten stay rewritten, and calling again
    /// finishes the job.
    pub fn erase(
        &self,
        is_person: &dyn Fn(&str) -> bool,
        rewrite: &dyn Fn(&str) -> String,
    ) -> Result<ErasedRows, WarehouseError> {
        use datafusion::arrow::array::{Array, AsArray, StringArray};
        use datafusion::arrow::datatypes::DataType;
        use datafusion::parquet::arrow::ProjectionMask;
        let mut erased = ErasedRows::default();
        let schema = event_schema();
        for part in files::list_parts(&self.root, Table::Events)? {
            let open = || File::open(&part.path).map_err(WarehouseError::io(&part.path));
            // Only the recipient column is read to find the files to rewrite.
            let builder = ParquetRecordBatchReaderBuilder::try_new(open()?)?;
            let mask = ProjectionMask::columns(builder.parquet_schema(), ["recipient"]);
            let mut holds_person = false;
            for batch in builder.with_projection(mask).build()? {
                let batch = batch?;
                if let Some(recipients) = batch.column_by_name("recipient").and_then(|c| c.as_string_opt::<i32>()) {
                    holds_person |= recipients.iter().flatten().any(is_person);
                }
                if holds_person {
                    break;
                }
            }
            if !holds_person {
                continue;
            }
            let tmp = self
                .root
                .join("tmp")
                .join(format!("erase-{:020}-{:020}-{}.parquet.tmp", part.start, part.end, part.date));
            let mut file = File::create(&tmp).map_err(WarehouseError::io(&tmp))?;
            let mut writer = ArrowWriter::try_new(&mut file, Arc::clone(&schema), Some(self.props.clone()))?;
            for batch in ParquetRecordBatchReaderBuilder::try_new(open()?)?.build()? {
                let batch = conform(&batch?, &schema)?;
                let Some(recipients) = batch.column_by_name("recipient").and_then(|c| c.as_string_opt::<i32>()) else {
                    writer.write(&batch)?;
                    continue;
                };
                let person: Vec<bool> = recipients.iter().map(|r| r.is_some_and(is_person)).collect();
                erased.rows += person.iter().filter(|p| **p).count() as u64;
                let columns = batch
                    .columns()
                    .iter()
                    .map(|column| match column.data_type() {
                        DataType::Utf8 => {
                            let text = column.as_string::<i32>();
                            let rewritten: StringArray = text
                                .iter()
                                .zip(&person)
                                .map(|(value, person)| match value {
                                    Some(value) if *person => Some(rewrite(value)),
                                    other => other.map(str::to_owned),
                                })
                                .collect();
                            Arc::new(rewritten) as Arc<dyn Array>
                        }
                        _ => Arc::clone(column),
                    })
                    .collect();
                writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns)?)?;
            }
            writer.close()?;
            file.sync_all().map_err(WarehouseError::io(&tmp))?;
            self.publish(&tmp, &part.path)?;
            erased.files += 1;
        }
        Ok(erased)
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
            // The rollup first: a reader uses it only where it covers what the events cover.
            for (table, batch) in
                [(Table::Hourly, to_hourly_batch(&day_events)?), (Table::Events, to_record_batch(&day_events)?)]
            {
                let tmp =
                    self.root.join("tmp").join(format!("part-{table:?}-{start:020}-{end:020}-{date}.parquet.tmp"));
                let mut file = File::create(&tmp).map_err(WarehouseError::io(&tmp))?;
                let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), Some(self.props.clone()))?;
                writer.write(&batch)?;
                writer.close()?;
                file.sync_all().map_err(WarehouseError::io(&tmp))?;
                self.publish(&tmp, &part_path(&self.root, table, date, start, end))?;
            }
            written += day_events.len();
        }
        Ok(written)
    }
}

/// What [`ParquetWriter::erase`] rewrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ErasedRows {
    /// Events files rewritten.
    pub files: u64,
    /// The person's rows in them.
    pub rows: u64,
}

/// `batch` in `schema`: a file written by an older Vigil lacks the columns added since (they
/// are all nullable) and gets them as nulls, so old and new files merge into one.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => Arc::clone(column),
            None => new_null_array(field.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use vigil_schemas::{EventKind, SourceKind};

    use super::*;
    use crate::Reader;
    use crate::query::{CountQuery, CountRow, EventFilter, Field};

    /// `(provider, kind, count)`, sorted.
    async fn by_provider_and_kind(reader: &Reader, query: &CountQuery) -> Vec<(String, String, u64)> {
        let mut rows: Vec<_> = reader
            .counts(query)
            .await
            .unwrap()
            .into_iter()
            .map(|CountRow { values, count, .. }| (values[0].clone().unwrap(), values[1].clone().unwrap(), count))
            .collect();
        rows.sort();
        rows
    }

    fn grouped() -> CountQuery {
        CountQuery { group_by: vec![Field::Provider, Field::Kind], ..CountQuery::default() }
    }

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
        assert_eq!(files::list_parts(dir.path(), Table::Events).unwrap().len(), 2, "one file per day");
        assert_eq!(files::list_parts(dir.path(), Table::Hourly).unwrap().len(), 2, "and its rollup");
        // A batch written but never committed (the process died before the offset commit).
        writer.write_batch(2, 3, &[(2, event(EventKind::Deferred, day, "yahoo"))]).unwrap();
        let reader = Reader::new(dir.path());
        assert_eq!(by_provider_and_kind(&reader, &grouped()).await.len(), 3);

        assert_eq!(writer.recover(2).unwrap(), 1);
        let google = |kind: &str| ("google".to_owned(), kind.to_owned(), 1);
        assert_eq!(by_provider_and_kind(&reader, &grouped()).await, vec![google("bounced"), google("delivered")]);
        // Time bounds prune by day and filter by event time.
        let from_day_one = CountQuery {
            filter: EventFilter { from: DateTime::from_timestamp(day, 0), ..EventFilter::default() },
            ..grouped()
        };
        assert_eq!(by_provider_and_kind(&reader, &from_day_one).await, vec![google("bounced")]);
    }

    #[tokio::test]
    async fn compaction_merges_small_files_without_changing_answers() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ParquetWriter::open(dir.path()).unwrap();
        for offset in 0..(COMPACTION_RUN as u64 + 3) {
            let kind = if offset % 3 == 0 { EventKind::Bounced } else { EventKind::Delivered };
            writer.write_batch(offset, offset + 1, &[(offset, event(kind, offset as i64, "google"))]).unwrap();
        }
        let reader = Reader::new(dir.path());
        let before = by_provider_and_kind(&reader, &grouped()).await;

        let report = writer.compact().unwrap();
        assert_eq!((report.merged, report.inputs, report.deleted), (2, 2 * (COMPACTION_RUN + 3), 0), "both tables");
        let (live, superseded) = files::split_superseded(files::list_parts(dir.path(), Table::Events).unwrap());
        assert_eq!((live.len(), superseded.len()), (1, COMPACTION_RUN + 3));
        assert_eq!(
            by_provider_and_kind(&reader, &grouped()).await,
            before,
            "inputs and merged file never counted together"
        );

        // A crash before the inputs were deleted: recovery removes them.
        assert_eq!(writer.recover(COMPACTION_RUN as u64 + 3).unwrap(), 0);
        assert_eq!(files::list_parts(dir.path(), Table::Events).unwrap().len(), 1);
        assert_eq!(files::list_parts(dir.path(), Table::Hourly).unwrap().len(), 1);
        assert_eq!(by_provider_and_kind(&reader, &grouped()).await, before);
        assert_eq!(writer.compact().unwrap(), CompactionReport::default(), "nothing left to merge");
    }

    /// Files written before schema version 2 lack the complaint columns (and the DMARC columns
    /// of version 3 and the operator column of version 4 after them): they are read, and merged
    /// with newer files, with those columns null.
    #[tokio::test]
    async fn files_of_an_older_schema_are_read_and_merged_with_nulls_for_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ParquetWriter::open(dir.path()).unwrap();
        for offset in 0..(COMPACTION_RUN as u64) {
            writer
                .write_batch(offset, offset + 1, &[(offset, event(EventKind::Delivered, offset as i64, "google"))])
                .unwrap();
        }
        // Rewrite the first file as version 1 wrote it: without the complaint columns (from
        // `report_recipient` on) and the DMARC columns after them.
        let first = files::list_parts(dir.path(), Table::Events).unwrap().remove(0);
        let batch = {
            let input = File::open(&first.path).unwrap();
            ParquetRecordBatchReaderBuilder::try_new(input).unwrap().build().unwrap().next().unwrap().unwrap()
        };
        let keep = batch.schema().index_of("report_recipient").unwrap();
        assert_eq!(batch.num_columns() - keep, 4 + 5 + 1, "four complaint columns, five DMARC columns, the operator");
        let old = batch.project(&(0..keep).collect::<Vec<_>>()).unwrap();
        let mut out = File::create(&first.path).unwrap();
        let mut old_writer = ArrowWriter::try_new(&mut out, old.schema(), None).unwrap();
        old_writer.write(&old).unwrap();
        old_writer.close().unwrap();

        let reader = Reader::new(dir.path());
        let search = crate::query::SearchQuery { filter: EventFilter::default(), before: None, limit: 100 };
        let before = reader.search(&search).await.unwrap();
        assert_eq!(before.len(), COMPACTION_RUN);
        assert!(before.iter().all(|r| r.attribution.is_none() && r.original_sent_at.is_none()));
        let report = writer.compact().unwrap();
        assert_eq!(report.merged, 2, "events and rollup merged, old file included");
        assert_eq!(reader.search(&search).await.unwrap(), before);
    }

    #[tokio::test]
    async fn days_before_the_retention_go_whole_from_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ParquetWriter::open(dir.path()).unwrap();
        let day = 86_400;
        let batch: Vec<_> = (0..3).map(|d| (d as u64, event(EventKind::Delivered, d * day, "google"))).collect();
        writer.write_batch(0, 3, &batch).unwrap();
        let second_day = DateTime::from_timestamp(day, 0).unwrap().date_naive();
        assert_eq!(
            writer.drop_days_before(second_day).unwrap(),
            [DateTime::from_timestamp(0, 0).unwrap().date_naive()]
        );
        for table in Table::ALL {
            let days: Vec<_> = files::list_parts(dir.path(), table).unwrap().into_iter().map(|p| p.date).collect();
            assert!(days.iter().all(|d| *d >= second_day) && days.len() == 2, "{table:?}: {days:?}");
        }
        let reader = Reader::new(dir.path());
        assert_eq!(by_provider_and_kind(&reader, &grouped()).await, vec![("google".into(), "delivered".into(), 2)]);
        assert!(writer.drop_days_before(second_day).unwrap().is_empty(), "nothing more to drop");
    }

    #[test]
    fn size_tiers_grow_by_eight() {
        assert_eq!(size_tier(0), 0);
        assert_eq!(size_tier(256 * 1024 - 1), 0);
        assert_eq!(size_tier(256 * 1024), 1);
        assert_eq!(size_tier(2 * 1024 * 1024), 2);
    }
}
