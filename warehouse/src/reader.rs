//! Answering the primitive queries ([`crate::query`]) from the Parquet files with DataFusion.
//!
//! Plans are built with DataFusion's DataFrame API from the typed query, never from
//! client-supplied SQL: fields are an enum, values and times are typed literals.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast as cast_array;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::dataframe::DataFrame;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::{Expr, ParquetReadOptions, SessionContext, cast, col, lit};
use datafusion::scalar::ScalarValue;
use vigil_schemas::api::EventRecord;

use crate::WarehouseError;
use crate::files::{self, PartFile, Table, list_parts, split_superseded};
use crate::query::{
    CountQuery, CountRow, EventFilter, HOURLY_FIELDS, SearchQuery, event_record, present, split_for_rollup,
};
use crate::schema::{event_schema, hourly_schema};

/// Reads the warehouse. Cheap to clone; safe to use while the writer writes (it only ever
/// sees whole files).
#[derive(Clone)]
pub struct Reader {
    root: PathBuf,
    ctx: SessionContext,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("root", &self.root).finish_non_exhaustive()
    }
}

fn millis(at: DateTime<Utc>) -> Expr {
    lit(ScalarValue::TimestampMillisecond(Some(at.timestamp_millis()), Some("UTC".into())))
}

impl Reader {
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned(), ctx: SessionContext::new() }
    }

    /// Live part files of `table` that can hold events in `[from, to)`.
    fn parts_for(
        &self,
        table: Table,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<PartFile>, WarehouseError> {
        let (mut parts, _) = split_superseded(list_parts(&self.root, table)?);
        parts.retain(|p| from.is_none_or(|f| p.date >= f.date_naive()) && to.is_none_or(|t| p.date <= t.date_naive()));
        Ok(parts)
    }

    /// Reads the parts of `table` that can hold the filter's events, with the filter applied.
    async fn filtered(&self, table: Table, filter: &EventFilter) -> Result<Option<DataFrame>, WarehouseError> {
        let parts = self.parts_for(table, filter.from, filter.to)?;
        if parts.is_empty() {
            return Ok(None);
        }
        let paths: Vec<String> = parts.iter().map(|p| p.path.display().to_string()).collect();
        let (schema, time) = match table {
            Table::Events => (event_schema(), "occurred_at"),
            Table::Hourly => (hourly_schema(), "hour"),
        };
        let mut df = self.ctx.read_parquet(paths, ParquetReadOptions::default().schema(&schema)).await?;
        if let Some(from) = filter.from {
            df = df.filter(col(time).gt_eq(millis(from)))?;
        }
        if let Some(to) = filter.to {
            df = df.filter(col(time).lt(millis(to)))?;
        }
        if !filter.kinds.is_empty() {
            df = df.filter(col("kind").in_list(filter.kinds.iter().map(|k| lit(*k)).collect(), false))?;
        }
        for (field, value) in &filter.equals {
            df = df.filter(col(field.column()).eq(lit(value.as_str())))?;
        }
        for field in &filter.present {
            df = df.filter(col(field.column()).is_not_null().and(col(field.column()).not_eq(lit(""))))?;
        }
        for field in &filter.absent {
            df = df.filter(col(field.column()).is_null().or(col(field.column()).eq(lit(""))))?;
        }
        if filter.external_only {
            df = df.filter(col("internal").eq(lit(false)))?;
        }
        Ok(Some(df))
    }

    /// Event counts by the query's groups.
    ///
    /// # Errors
    /// When the files cannot be listed or read.
    pub async fn counts(&self, query: &CountQuery) -> Result<Vec<CountRow>, WarehouseError> {
        let mut rows = Vec::new();
        for (table, filter) in self.plan(query)? {
            self.counts_in(table, &filter, query, &mut rows).await?;
        }
        Ok(rows)
    }

    /// Where a count is read from: the hourly rollup for the whole hours of the range when it
    /// keeps every field the query touches, its step is whole hours, and the rollup covers the
    /// same batches as the events there; the events for the rest (the partial hours at either
    /// end, or everything). A group may then come in several rows; callers sum them.
    fn plan(&self, query: &CountQuery) -> Result<Vec<(Table, EventFilter)>, WarehouseError> {
        let filter = &query.filter;
        let whole = vec![(Table::Events, filter.clone())];
        let kept = query.group_by.iter().copied().chain(filter.fields()).all(|f| HOURLY_FIELDS.contains(&f));
        if !kept || query.weighted || query.step_minutes.is_some_and(|s| s % 60 != 0) {
            return Ok(whole);
        }
        let Some((inner, edges)) = split_for_rollup(filter, 3_600_000) else { return Ok(whole) };
        let covers =
            |table| -> Result<_, WarehouseError> { Ok(files::coverage(&self.parts_for(table, inner.from, inner.to)?)) };
        if covers(Table::Hourly)? != covers(Table::Events)? {
            // Batches written before the rollup existed: the events alone answer.
            return Ok(whole);
        }
        let mut plan = vec![(Table::Hourly, inner)];
        plan.extend(edges.into_iter().map(|edge| (Table::Events, edge)));
        Ok(plan)
    }

    /// Appends the counts of one table to `rows`.
    async fn counts_in(
        &self,
        table: Table,
        filter: &EventFilter,
        query: &CountQuery,
        rows: &mut Vec<CountRow>,
    ) -> Result<(), WarehouseError> {
        let Some(df) = self.filtered(table, filter).await? else { return Ok(()) };
        let (time, counted) = match table {
            Table::Events if query.weighted => ("occurred_at", sum(coalesce(vec![col("message_count"), lit(1_u64)]))),
            Table::Events => ("occurred_at", count(lit(1_i64))),
            Table::Hourly => ("hour", sum(col("events"))),
        };
        let mut group: Vec<Expr> = query.group_by.iter().map(|f| col(f.column())).collect();
        if let Some(step) = query.step_minutes {
            let width = i64::from(step) * 60_000;
            let ms = cast(col(time), DataType::Int64);
            // Floor division for times after 1970; events before the epoch are not a concern.
            group.push(((ms / lit(width)) * lit(width)).alias("bucket"));
        }
        let batches = df.aggregate(group, vec![counted.alias("n")])?.collect().await?;
        for batch in &batches {
            let values = query
                .group_by
                .iter()
                .map(|f| Ok(cast_array(batch.column_by_name(f.column()).expect("grouped column"), &DataType::Utf8)?))
                .collect::<Result<Vec<_>, WarehouseError>>()?;
            let counts = cast_array(batch.column_by_name("n").expect("count column"), &DataType::Int64)?;
            let counts = counts.as_primitive::<Int64Type>();
            let buckets = batch.column_by_name("bucket").map(|b| cast_array(b, &DataType::Int64)).transpose()?;
            // An aggregate without groups over no rows still yields one row, counting zero.
            for i in (0..batch.num_rows()).filter(|&i| counts.value(i) > 0) {
                rows.push(CountRow {
                    bucket: buckets
                        .as_ref()
                        .and_then(|b| DateTime::from_timestamp_millis(b.as_primitive::<Int64Type>().value(i))),
                    values: values.iter().map(|v| text_at(v, i)).collect(),
                    count: u64::try_from(counts.value(i)).unwrap_or(0),
                });
            }
        }
        Ok(())
    }

    /// A page of matching events, newest first.
    ///
    /// # Errors
    /// When the files cannot be listed or read.
    pub async fn search(&self, query: &SearchQuery) -> Result<Vec<EventRecord>, WarehouseError> {
        let Some(mut df) = self.filtered(Table::Events, &query.filter).await? else { return Ok(Vec::new()) };
        if let Some((at, event_id)) = &query.before {
            let earlier = col("occurred_at").lt(millis(*at));
            let tie = col("occurred_at").eq(millis(*at)).and(col("event_id").lt(lit(event_id.as_str())));
            df = df.filter(earlier.or(tie))?;
        }
        let mut columns = vec![col("event_id"), col("occurred_at"), col("kind")];
        columns.extend(EventRecord::TEXT_COLUMNS.iter().map(|c| col(*c)));
        columns.extend([col("smtp_code"), col("enhanced_status"), col("response_text"), col("original_sent_at")]);
        let batches = df
            .select(columns)?
            .sort(vec![col("occurred_at").sort(false, false), col("event_id").sort(false, false)])?
            .limit(0, Some(query.limit))?
            .collect()
            .await?;
        let mut records = Vec::new();
        for batch in &batches {
            let column = |name: &str| batch.column_by_name(name).expect("selected column");
            let text = |name: &str| cast_array(column(name), &DataType::Utf8);
            let ids = text("event_id")?;
            let kinds = text("kind")?;
            let times = cast_array(column("occurred_at"), &DataType::Int64)?;
            let codes = cast_array(column("smtp_code"), &DataType::Int64)?;
            let sent = cast_array(column("original_sent_at"), &DataType::Int64)?;
            let sent = sent.as_primitive::<Int64Type>();
            let others = EventRecord::TEXT_COLUMNS.iter().map(|c| text(c)).collect::<Result<Vec<_>, _>>()?;
            let (status, response) = (text("enhanced_status")?, text("response_text")?);
            for i in 0..batch.num_rows() {
                let codes = codes.as_primitive::<Int64Type>();
                let mut record = event_record(
                    text_at(&ids, i).unwrap_or_default(),
                    DateTime::from_timestamp_millis(times.as_primitive::<Int64Type>().value(i)).unwrap_or_default(),
                    text_at(&kinds, i).unwrap_or_default(),
                    std::array::from_fn(|k| text_at(&others[k], i)),
                    codes.is_valid(i).then(|| u16::try_from(codes.value(i)).unwrap_or(0)),
                    text_at(&status, i),
                    text_at(&response, i),
                );
                record.original_sent_at =
                    sent.is_valid(i).then(|| DateTime::from_timestamp_millis(sent.value(i))).flatten();
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// The text at row `i` of a Utf8 array, `None` when null or empty.
fn text_at(array: &ArrayRef, i: usize) -> Option<String> {
    let strings = array.as_string::<i32>();
    present(strings.is_valid(i).then(|| strings.value(i)))
}
