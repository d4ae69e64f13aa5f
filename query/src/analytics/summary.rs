//! `GET /api/v1/summary`: outcome counts grouped by any dimensions over the events' own times.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use schemars::JsonSchema;
use serde::Deserialize;
use vigil_schemas::api::{Dimension, SummaryQuery, SummaryResponse, SummaryRow};
use vigil_warehouse::Store;
use vigil_warehouse::query::{CountQuery, EventFilter, Field};

use super::{DimensionFilters, Range, equals};
use crate::ApiError;
use crate::routes::parse_time;

/// The outcome columns of a summary, in response order, and the event kind each counts.
const OUTCOMES: [(&str, &str); 5] = [
    ("delivered", "delivered"),
    ("deferred", "deferred"),
    ("bounced", "bounced"),
    ("expired", "expired"),
    ("complaints", "complaint"),
];

/// Outcome counts grouped by the query's dimensions, sorted by them (absent values first).
///
/// # Errors
/// When the warehouse cannot be read.
pub async fn summary(store: &Store, query: &SummaryQuery) -> Result<SummaryResponse, ApiError> {
    let mut group_by: Vec<Field> = query.group_by.iter().map(|d| Field::from(*d)).collect();
    group_by.push(Field::Kind);
    let counts = store
        .counts(&CountQuery {
            filter: EventFilter {
                from: query.from,
                to: query.to,
                kinds: OUTCOMES.iter().map(|(_, kind)| *kind).collect(),
                equals: equals(&query.filters),
                ..EventFilter::default()
            },
            group_by,
            step_minutes: None,
            weighted: false,
        })
        .await?;
    let mut groups: BTreeMap<Vec<Option<String>>, [u64; OUTCOMES.len()]> = BTreeMap::new();
    for mut row in counts {
        let kind = row.values.pop().flatten();
        let Some(slot) = OUTCOMES.iter().position(|(_, k)| Some(*k) == kind.as_deref()) else { continue };
        groups.entry(row.values).or_default()[slot] += row.count;
    }
    let rows = groups
        .into_iter()
        .map(|(values, [delivered, deferred, bounced, expired, complaints])| SummaryRow {
            dimensions: query.group_by.iter().map(|d| d.as_str().to_owned()).zip(values).collect(),
            delivered,
            deferred,
            bounced,
            expired,
            complaints,
            attempts: delivered + deferred + bounced,
        })
        .collect();
    Ok(SummaryResponse { rows })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct SummaryParams {
    /// Comma-separated dimensions: egress_source, egress_pool, provider, recipient_domain,
    /// tenant, campaign, bounce_class, kind, sending_domain.
    group_by: Option<String>,
    /// Start of the range (RFC 3339, inclusive); default the beginning.
    #[schemars(extend("format" = "date-time"))]
    from: Option<String>,
    /// End of the range (RFC 3339, exclusive); default open.
    #[schemars(extend("format" = "date-time"))]
    to: Option<String>,
}

/// Parses `group_by`: a comma list of distinct dimension names.
pub(crate) fn parse_dimensions(text: Option<&str>) -> Result<Vec<Dimension>, ApiError> {
    super::parse_group_by(text, &Dimension::ALL, Dimension::as_str)
}

pub(crate) async fn handler(
    State(store): State<Store>,
    Query(params): Query<SummaryParams>,
    Query(filters): Query<DimensionFilters>,
) -> Result<Json<SummaryResponse>, ApiError> {
    let query = SummaryQuery {
        group_by: parse_dimensions(params.group_by.as_deref())?,
        from: parse_time("from", params.from.as_deref())?,
        to: parse_time("to", params.to.as_deref())?,
        filters: filters.parse()?,
    };
    // Open ends are allowed (the whole history); given bounds must be ordered and bounded.
    Range::new(query.from, query.to)?;
    Ok(Json(summary(&store, &query).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_parse_with_clear_errors() {
        assert_eq!(
            parse_dimensions(Some("egress_source, provider")).unwrap(),
            vec![Dimension::EgressSource, Dimension::Provider]
        );
        assert!(parse_dimensions(None).unwrap().is_empty());
        let err = parse_dimensions(Some("provider,ip")).unwrap_err().to_string();
        assert!(err.contains("`ip`") && err.contains("recipient_domain"), "{err}");
        assert!(parse_dimensions(Some("kind,kind")).unwrap_err().to_string().contains("twice"));
    }
}
