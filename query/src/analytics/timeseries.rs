//! `GET /api/v1/timeseries?from=...`: one reputation metric per time bucket and scope over any
//! range the warehouse holds. Without `from` the endpoint answers the last 24 h from the live
//! state instead (see [`crate::live`]); both answers have the same shape.
//!
//! Counted as the live fold counts (`vigil_processor::view::outcome`): events
//! the MTA generated itself are left out, and a scope's series needs the scope's values.
//! Provider signals are matched on the fly by the fold and not stored, so `signals` is live
//! only.

use std::collections::BTreeMap;

use chrono::DateTime;
use vigil_processor::view::{Metric, Scope, outcome};
use vigil_schemas::EventKind;
use vigil_schemas::api::Dimension;
use vigil_warehouse::Store;
use vigil_warehouse::query::{CountQuery, EventFilter, Field};

use super::{Range, equals};
use crate::ApiError;
use crate::live::{Point, Series, TimeseriesResponse};

/// Most points a series may have.
pub const MAX_POINTS: i64 = 1440;

/// What a warehouse time series asks.
#[derive(Debug, Clone)]
pub struct TimeseriesQuery {
    /// `attempts` (delivered + deferred + bounced) or one metric.
    pub metric: Option<Metric>,
    pub scope: Scope,
    pub step_minutes: u32,
    pub range: Range,
    pub filters: Vec<(Dimension, String)>,
    /// Most series returned, first by key.
    pub limit: usize,
}

/// The event kinds a metric counts.
fn kinds_of(metric: Option<Metric>) -> Vec<&'static str> {
    let kinds: &[EventKind] = match metric {
        None => &[EventKind::Delivered, EventKind::Deferred, EventKind::Bounced],
        Some(Metric::Delivered) => &[EventKind::Delivered],
        Some(Metric::Deferred) => &[EventKind::Deferred],
        Some(Metric::Bounced | Metric::HardBounces) => &[EventKind::Bounced],
        Some(Metric::Blocks | Metric::Signals) => &[EventKind::Deferred, EventKind::Bounced],
        Some(Metric::Expired) => &[EventKind::Expired],
        Some(Metric::Complaints) => &[EventKind::Complaint],
        Some(Metric::Unsubscribes) => &[EventKind::Unsubscribe],
        Some(Metric::Opens) => &[EventKind::Open],
        Some(Metric::Clicks) => &[EventKind::Click],
    };
    kinds.iter().map(|k| k.as_str()).collect()
}

/// The scope's fields as warehouse fields.
pub(crate) fn scope_fields(scope: Scope) -> Vec<Field> {
    scope
        .fields()
        .iter()
        .map(|name| Field::from(Dimension::parse(name).expect("scope fields are dimensions")))
        .collect()
}

/// # Errors
/// A 400 for `signals` (live only); else only when the warehouse cannot be read.
pub async fn timeseries(store: &Store, query: &TimeseriesQuery) -> Result<TimeseriesResponse, ApiError> {
    if query.metric == Some(Metric::Signals) {
        return Err(ApiError::BadRequest(
            "provider signals are counted live only: leave out `from` for the last 24 h".into(),
        ));
    }
    let step_ms = i64::from(query.step_minutes) * 60_000;
    let first = query.range.from.timestamp_millis().div_euclid(step_ms) * step_ms;
    let end = query.range.to.timestamp_millis();
    if (end - first) / step_ms > MAX_POINTS {
        return Err(ApiError::BadRequest(format!("`step` must give at most {MAX_POINTS} points over the range")));
    }
    let fields = scope_fields(query.scope);
    let needs_class = matches!(query.metric, Some(Metric::HardBounces | Metric::Blocks));
    let mut group_by = fields.clone();
    group_by.push(Field::Kind);
    if needs_class {
        group_by.push(Field::BounceClass);
    }
    let counts = store
        .counts(&CountQuery {
            filter: EventFilter {
                from: Some(query.range.from),
                to: Some(query.range.to),
                kinds: kinds_of(query.metric),
                equals: equals(&query.filters),
                present: fields.clone(),
                external_only: true,
                ..EventFilter::default()
            },
            group_by,
            step_minutes: Some(query.step_minutes),
            weighted: false,
        })
        .await?;
    let points = usize::try_from((end - first + step_ms - 1) / step_ms).unwrap_or(0);
    let mut series: BTreeMap<Vec<String>, Vec<u64>> = BTreeMap::new();
    for row in counts {
        let kind = row.values[fields.len()].as_deref().and_then(EventKind::parse);
        let class = if needs_class { row.values[fields.len() + 1].as_deref() } else { None };
        let Some((counters, _)) = kind.and_then(|k| outcome(k, class)) else { continue };
        let per_event = match query.metric {
            None => [Metric::Delivered, Metric::Deferred, Metric::Bounced].iter().map(|&m| counters.get(m)).sum(),
            Some(metric) => counters.get(metric),
        };
        let Some(bucket) = row.bucket else { continue };
        let slot = usize::try_from((bucket.timestamp_millis() - first) / step_ms).unwrap_or(usize::MAX);
        let key: Vec<String> = row.values[..fields.len()].iter().map(|v| v.clone().unwrap_or_default()).collect();
        let values = series.entry(key).or_insert_with(|| vec![0; points]);
        if let Some(value) = values.get_mut(slot) {
            *value += u64::from(per_event) * row.count;
        }
    }
    series.retain(|_, values| values.iter().any(|&v| v > 0));
    let truncated = series.len() > query.limit;
    let at = |slot: usize| {
        DateTime::from_timestamp_millis(first + i64::try_from(slot).unwrap_or(0) * step_ms).unwrap_or_default()
    };
    let series = series
        .into_iter()
        .take(query.limit)
        .map(|(key, values)| Series {
            key: query.scope.fields().iter().copied().zip(key).collect(),
            total: values.iter().sum(),
            points: values.into_iter().enumerate().map(|(slot, value)| Point { at: at(slot), value }).collect(),
        })
        .collect();
    Ok(TimeseriesResponse {
        metric: query.metric.map_or("attempts", Metric::as_str).to_owned(),
        group_by: query.scope.as_str(),
        step_seconds: query.step_minutes * 60,
        from: DateTime::from_timestamp_millis(first).unwrap_or_default(),
        to: query.range.to,
        truncated,
        series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_reads_the_kinds_it_counts() {
        for metric in Metric::ALL {
            for kind in kinds_of(Some(metric)) {
                let kind = EventKind::parse(kind).unwrap();
                let counted = ["Uncategorized", "InvalidRecipient", "SpamBlock"]
                    .iter()
                    .any(|class| outcome(kind, Some(class)).is_some_and(|(c, _)| c.get(metric) > 0));
                assert!(counted || metric == Metric::Signals, "{metric:?} reads {kind:?} but never counts it");
            }
        }
    }
}
