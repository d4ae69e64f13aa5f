//! Naming and listing of warehouse files, shared by the writer and the reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::WarehouseError;

/// A committed (or orphaned) warehouse file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFile {
    pub path: PathBuf,
    pub date: NaiveDate,
    /// First log offset the file's batch covers.
    pub start: u64,
    /// One past the last log offset the batch covers.
    pub end: u64,
}

/// The warehouse's tables: each a directory of part files named the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `events/`: the enriched events.
    Events,
    /// `hourly/`: event counts per hour x egress source x pool x provider x kind x bounce class
    /// x internal, written with each batch's events (the embedded rollup).
    Hourly,
}

impl Table {
    pub const ALL: [Self; 2] = [Self::Events, Self::Hourly];

    /// The table's directory under the warehouse directory.
    #[must_use]
    pub fn dir(self, root: &Path) -> PathBuf {
        root.join(match self {
            Self::Events => "events",
            Self::Hourly => "hourly",
        })
    }
}

/// Where a batch's file of `table` for `date` goes.
#[must_use]
pub fn part_path(root: &Path, table: Table, date: NaiveDate, start: u64, end: u64) -> PathBuf {
    table.dir(root).join(format!("date={date}")).join(format!("part-{start:020}-{end:020}.parquet"))
}

fn parse_part(path: &Path, date: NaiveDate) -> Option<PartFile> {
    let name = path.file_name()?.to_str()?;
    let range = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (start, end) = range.split_once('-')?;
    Some(PartFile { path: path.to_owned(), date, start: start.parse().ok()?, end: end.parse().ok()? })
}

/// Every part file of `table`, by date then offset. Files that do not follow the naming scheme
/// are ignored (and warned about), never read.
///
/// # Errors
/// When a directory cannot be read.
pub fn list_parts(root: &Path, table: Table) -> Result<Vec<PartFile>, WarehouseError> {
    let dir = table.dir(root);
    let mut parts = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(parts),
        Err(e) => return Err(WarehouseError::io(&dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(WarehouseError::io(&dir))?;
        let name = entry.file_name();
        let Some(date) = name.to_str().and_then(|n| n.strip_prefix("date=")).and_then(|d| d.parse().ok()) else {
            continue;
        };
        let day_dir = entry.path();
        for file in std::fs::read_dir(&day_dir).map_err(WarehouseError::io(&day_dir))? {
            let path = file.map_err(WarehouseError::io(&day_dir))?.path();
            match parse_part(&path, date) {
                Some(part) => parts.push(part),
                None => tracing::warn!(file = %path.display(), "ignoring a file that is not a warehouse part"),
            }
        }
    }
    parts.sort_by_key(|p| (p.date, p.start, p.end));
    Ok(parts)
}

/// Splits parts into the live set and the superseded ones: a part is superseded when another
/// part of the same day covers its whole offset range (compaction wrote the merged file and
/// has not deleted its inputs yet). Readers use only the live set, so a merged file and its
/// inputs are never counted together. Returns `(live, [(superseded, the live part covering it)])`.
#[must_use]
pub fn split_superseded(parts: Vec<PartFile>) -> (Vec<PartFile>, Vec<(PartFile, PartFile)>) {
    let covering = |part: &PartFile| {
        parts
            .iter()
            .filter(|other| {
                other.date == part.date
                    && other.start <= part.start
                    && part.end <= other.end
                    && (other.start, other.end) != (part.start, part.end)
            })
            .max_by_key(|other| other.end - other.start)
            .cloned()
    };
    let mut live = Vec::new();
    let mut superseded = Vec::new();
    for part in &parts {
        match covering(part) {
            Some(cover) => superseded.push((part.clone(), cover)),
            None => live.push(part.clone()),
        }
    }
    (live, superseded)
}

/// The log offsets live parts cover on each day, as merged `[start, end)` intervals: two tables
/// hold the same batches exactly when these are equal (their files may be cut differently,
/// as compaction merges each table's files by its own sizes).
#[must_use]
pub fn coverage(parts: &[PartFile]) -> BTreeMap<NaiveDate, Vec<(u64, u64)>> {
    let mut by_day: BTreeMap<NaiveDate, Vec<(u64, u64)>> = BTreeMap::new();
    for part in parts {
        by_day.entry(part.date).or_default().push((part.start, part.end));
    }
    for intervals in by_day.values_mut() {
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(start, end) in intervals.iter() {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        *intervals = merged;
    }
    by_day
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let path = part_path(Path::new("/w"), Table::Events, date, 7, 42);
        assert_eq!(path, Path::new("/w/events/date=2026-11-25/part-00000000000000000007-00000000000000000042.parquet"));
        assert_eq!(parse_part(&path, date), Some(PartFile { path: path.clone(), date, start: 7, end: 42 }));
    }

    #[test]
    fn merged_parts_supersede_their_inputs_on_the_same_day_only() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let part =
            |d, start, end| PartFile { path: PathBuf::from(format!("{d}-{start}-{end}")), date: day(d), start, end };
        let parts = vec![part(1, 0, 2), part(1, 2, 5), part(1, 0, 5), part(2, 2, 5), part(1, 5, 6)];
        let (live, superseded) = split_superseded(parts);
        assert_eq!(live, vec![part(1, 0, 5), part(2, 2, 5), part(1, 5, 6)]);
        assert_eq!(
            superseded.iter().map(|(p, c)| (p.clone(), c.clone())).collect::<Vec<_>>(),
            vec![(part(1, 0, 2), part(1, 0, 5)), (part(1, 2, 5), part(1, 0, 5))]
        );
    }
}
