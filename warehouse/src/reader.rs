//! Answering the API's typed queries from the Parquet files with DataFusion.
//!
//! Queries are built with DataFusion's DataFrame API from the typed query model, never from
//! client-supplied SQL: dimensions are an enum, times are typed literals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::prelude::{Expr, ParquetReadOptions, SessionContext, col, lit, when};
use datafusion::scalar::ScalarValue;
use vigil_schemas::api::{SummaryQuery, SummaryResponse, SummaryRow};

use crate::files::{PartFile, list_parts, split_superseded};
use crate::schema::event_schema;
use crate::{OUTCOMES, WarehouseError};

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

    /// Part files that can hold events in `[from, to)`.
    fn parts_for(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<PartFile>, WarehouseError> {
        let (mut parts, _) = split_superseded(list_parts(&self.root)?);
        parts.retain(|p| from.is_none_or(|f| p.date >= f.date_naive()) && to.is_none_or(|t| p.date <= t.date_naive()));
        Ok(parts)
    }

    /// Outcome counts grouped by the query's dimensions, sorted by them.
    ///
    /// # Errors
    /// When the files cannot be listed or read.
    pub async fn summary(&self, query: &SummaryQuery) -> Result<SummaryResponse, WarehouseError> {
        let parts = self.parts_for(query.from, query.to)?;
        if parts.is_empty() {
            return Ok(SummaryResponse::default());
        }
        let paths: Vec<String> = parts.iter().map(|p| p.path.display().to_string()).collect();
        let schema = event_schema();
        let mut df = self.ctx.read_parquet(paths, ParquetReadOptions::default().schema(&schema)).await?;
        // Only outcomes have a column; receptions, rebinds and the like would be all-zero rows.
        let outcome_kinds: Vec<Expr> = OUTCOMES.iter().map(|(_, kind)| lit(*kind)).collect();
        df = df.filter(col("kind").in_list(outcome_kinds, false))?;
        if let Some(from) = query.from {
            df = df.filter(col("occurred_at").gt_eq(millis(from)))?;
        }
        if let Some(to) = query.to {
            df = df.filter(col("occurred_at").lt(millis(to)))?;
        }
        let group: Vec<Expr> = query.group_by.iter().map(|d| col(d.as_str())).collect();
        let mut aggregates = Vec::with_capacity(OUTCOMES.len());
        for (name, kind) in OUTCOMES {
            aggregates.push(sum(when(col("kind").eq(lit(kind)), lit(1_i64)).otherwise(lit(0_i64))?).alias(name));
        }
        df = df.aggregate(group.clone(), aggregates)?;
        if !group.is_empty() {
            df = df.sort(group.iter().map(|g| g.clone().sort(true, true)).collect())?;
        }
        let batches = df.collect().await?;
        let names: Vec<&str> = query.group_by.iter().map(|d| d.as_str()).collect();
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(summary_rows(batch, &names)?);
        }
        // An aggregate without groups over zero matching rows still yields one row of nulls.
        rows.retain(|r| r.delivered + r.deferred + r.bounced + r.expired + r.complaints > 0);
        Ok(SummaryResponse { rows })
    }
}

fn summary_rows(batch: &RecordBatch, dimensions: &[&str]) -> Result<Vec<SummaryRow>, WarehouseError> {
    let dims = dimensions
        .iter()
        .map(|name| Ok((*name, cast(batch.column_by_name(name).expect("grouped column"), &DataType::Utf8)?)))
        .collect::<Result<Vec<_>, WarehouseError>>()?;
    let counts = OUTCOMES
        .iter()
        .map(|(name, _)| Ok(cast(batch.column_by_name(name).expect("aggregate column"), &DataType::Int64)?))
        .collect::<Result<Vec<_>, WarehouseError>>()?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let dimensions: BTreeMap<String, Option<String>> = dims
            .iter()
            .map(|(name, array)| {
                let strings = array.as_string::<i32>();
                ((*name).to_owned(), strings.is_valid(i).then(|| strings.value(i).to_owned()))
            })
            .collect();
        let count = |k: usize| {
            let array = counts[k].as_primitive::<Int64Type>();
            if array.is_valid(i) { u64::try_from(array.value(i)).unwrap_or(0) } else { 0 }
        };
        let (delivered, deferred, bounced) = (count(0), count(1), count(2));
        rows.push(SummaryRow {
            dimensions,
            delivered,
            deferred,
            bounced,
            expired: count(3),
            complaints: count(4),
            attempts: delivered + deferred + bounced,
        });
    }
    Ok(rows)
}
