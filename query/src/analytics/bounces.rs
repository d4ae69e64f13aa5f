//! `GET /api/v1/bounces`: deferrals and bounces by class over a range, with the latest
//! responses of each class as samples, so an analyst reads the receivers' own words beside the
//! counts.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_schemas::api::{Dimension, EventRecord};
use vigil_warehouse::Store;
use vigil_warehouse::query::{CountQuery, EventFilter, Field, SearchQuery};

use super::{DimensionFilters, Range, equals};
use crate::ApiError;

/// Most samples per class.
pub const MAX_SAMPLES: usize = 10;

const FAILURES: [&str; 2] = ["deferred", "bounced"];

/// One bounce class over the range.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ClassRow {
    /// Null for failures no rule classified.
    bounce_class: Option<String>,
    deferred: u64,
    bounced: u64,
    /// The classifier rules that decided this class, most failures first.
    rules: Vec<RuleRow>,
    /// The class's latest failures, newest first.
    samples: Vec<EventRecord>,
}

/// The failures one classifier rule put in a class.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RuleRow {
    /// Null for failures stored without the rule that classified them.
    rule: Option<String>,
    deferred: u64,
    bounced: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BouncesResponse {
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    /// Most failures first.
    classes: Vec<ClassRow>,
}

/// # Errors
/// When the warehouse cannot be read.
pub async fn bounces(
    store: &Store,
    range: Range,
    filters: &[(Dimension, String)],
    samples: usize,
) -> Result<BouncesResponse, ApiError> {
    let filter = EventFilter {
        from: Some(range.from),
        to: Some(range.to),
        kinds: FAILURES.to_vec(),
        equals: equals(filters),
        ..EventFilter::default()
    };
    let counts = store
        .counts(&CountQuery {
            filter: filter.clone(),
            group_by: vec![Field::BounceClass, Field::Kind],
            step_minutes: None,
            weighted: false,
        })
        .await?;
    let mut classes: BTreeMap<Option<String>, [u64; 2]> = BTreeMap::new();
    for row in counts {
        let Some(slot) = FAILURES.iter().position(|k| row.values[1].as_deref() == Some(*k)) else { continue };
        classes.entry(row.values[0].clone()).or_default()[slot] += row.count;
    }
    // Which rule decided: read from the raw events (the rollups do not keep the rule).
    let by_rule = store
        .counts(&CountQuery {
            filter: filter.clone(),
            group_by: vec![Field::BounceClass, Field::ClassifierRule, Field::Kind],
            step_minutes: None,
            weighted: false,
        })
        .await?;
    let mut rules: BTreeMap<Option<String>, BTreeMap<Option<String>, [u64; 2]>> = BTreeMap::new();
    for row in by_rule {
        let Some(slot) = FAILURES.iter().position(|k| row.values[2].as_deref() == Some(*k)) else { continue };
        rules.entry(row.values[0].clone()).or_default().entry(row.values[1].clone()).or_default()[slot] += row.count;
    }
    let mut rows = Vec::with_capacity(classes.len());
    for (class, [deferred, bounced]) in classes {
        let samples = if samples == 0 {
            Vec::new()
        } else {
            let mut filter = filter.clone();
            match &class {
                Some(name) => filter.equals.push((Field::BounceClass, name.clone())),
                None => filter.absent.push(Field::BounceClass),
            }
            store.search(&SearchQuery { filter, before: None, limit: samples }).await?
        };
        let mut decided: Vec<RuleRow> = rules
            .remove(&class)
            .unwrap_or_default()
            .into_iter()
            .map(|(rule, [deferred, bounced])| RuleRow { rule, deferred, bounced })
            .collect();
        decided.sort_by_key(|r| std::cmp::Reverse(r.deferred + r.bounced));
        rows.push(ClassRow { bounce_class: class, deferred, bounced, rules: decided, samples });
    }
    // Stable: classes came sorted by name, so ties keep name order.
    rows.sort_by_key(|r| std::cmp::Reverse(r.deferred + r.bounced));
    Ok(BouncesResponse { from: range.from, to: range.to, classes: rows })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct BouncesParams {
    /// Start of the range (RFC 3339, inclusive).
    #[schemars(required)]
    #[schemars(extend("format" = "date-time"))]
    from: Option<String>,
    /// End of the range (RFC 3339, exclusive); default now.
    #[schemars(extend("format" = "date-time"))]
    to: Option<String>,
    /// Latest failures shown per class (default 3).
    #[schemars(range(max = 10))]
    samples: Option<usize>,
}

pub(crate) async fn handler(
    State(store): State<Store>,
    Query(params): Query<BouncesParams>,
    Query(filters): Query<DimensionFilters>,
) -> Result<Json<BouncesResponse>, ApiError> {
    let range = Range::parse(params.from.as_deref(), params.to.as_deref())?;
    let samples = params.samples.unwrap_or(3);
    if samples > MAX_SAMPLES {
        return Err(ApiError::BadRequest(format!("`samples` must be 0 to {MAX_SAMPLES}")));
    }
    Ok(Json(bounces(&store, range, &filters.parse()?, samples).await?))
}
