//! `GET /api/v1/reputation?from=...`: every scope's counts, rates and score over any range the
//! warehouse holds. Without `from` the endpoint answers a recent window from the live state
//! (see [`crate::live`]); rows have the same shape.
//!
//! Counted as the live fold counts (`outcome`), from the events' kinds and bounce classes.
//! Provider signals are matched on the fly by the fold and not stored, so the warehouse rows
//! carry no signals and their score has no signal penalty.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use vigil_processor::view::{MIN_ATTEMPTS, Scope, ScopeValues, Totals, WindowRow, outcome};
use vigil_schemas::EventKind;
use vigil_schemas::api::Dimension;
use vigil_warehouse::Store;
use vigil_warehouse::query::{CountQuery, EventFilter, Field};

use super::timeseries::scope_fields;
use super::{Range, equals};
use crate::ApiError;
use crate::live::ReputationRow;

/// The kinds reputation counts.
const COUNTED: [EventKind; 8] = [
    EventKind::Delivered,
    EventKind::Deferred,
    EventKind::Bounced,
    EventKind::Expired,
    EventKind::Complaint,
    EventKind::Unsubscribe,
    EventKind::Open,
    EventKind::Click,
];

/// The body of a ranged reputation answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RangeReputation {
    scope: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Attempts under which a row has no score.
    min_attempts: u64,
    rows: Vec<ReputationRow>,
}

/// # Errors
/// When the warehouse cannot be read.
pub async fn reputation(
    store: &Store,
    scope: Scope,
    range: Range,
    filters: &[(Dimension, String)],
) -> Result<RangeReputation, ApiError> {
    let fields = scope_fields(scope);
    let mut group_by = fields.clone();
    group_by.extend([Field::Kind, Field::BounceClass]);
    let counts = store
        .counts(&CountQuery {
            filter: EventFilter {
                from: Some(range.from),
                to: Some(range.to),
                kinds: COUNTED.iter().map(|k| k.as_str()).collect(),
                equals: equals(filters),
                present: fields.clone(),
                external_only: true,
                ..EventFilter::default()
            },
            group_by,
            step_minutes: None,
            weighted: false,
        })
        .await?;
    let mut rows: BTreeMap<Vec<String>, WindowRow> = BTreeMap::new();
    for row in counts {
        let kind = row.values[fields.len()].as_deref().and_then(EventKind::parse);
        let class = row.values[fields.len() + 1].as_deref();
        let Some((counters, label)) = kind.and_then(|k| outcome(k, class)) else { continue };
        let key: Vec<String> = row.values[..fields.len()].iter().map(|v| v.clone().unwrap_or_default()).collect();
        let window = rows.entry(key.clone()).or_insert_with(|| WindowRow {
            key: ScopeValues { scope, values: scope.fields().iter().copied().zip(key).collect() },
            totals: Totals::default(),
            labels: BTreeMap::new(),
        });
        window.totals.add_times(&counters, row.count);
        if let Some(label) = label {
            *window.labels.entry((label.kind, label.name.to_owned())).or_default() += row.count;
        }
    }
    Ok(RangeReputation {
        scope: scope.as_str(),
        from: range.from,
        to: range.to,
        min_attempts: MIN_ATTEMPTS,
        rows: rows.into_values().map(ReputationRow::of).collect(),
    })
}
