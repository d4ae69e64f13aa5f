//! Endpoints answered from the warehouse, whichever backend holds it (Parquet with DataFusion,
//! or ClickHouse).
//!
//! Each endpoint is one file: it parses and bounds its parameters, composes the warehouse's
//! two primitive queries ([`vigil_warehouse::query`]: counts by groups and time buckets, and a
//! page of events) and shapes the answer. The backends only ever see those primitives, so
//! every endpoint answers the same from both (`tests/conformance.rs`), and a new endpoint
//! (alerts, DMARC) is a new file here.
//!
//! Answers are assembled in Rust from unordered groups, so their order never depends on the
//! backend: groups sort by value with absent values first.

pub mod bounces;
pub mod dmarc;
pub mod events;
pub mod reputation;
pub mod summary;
pub mod timeseries;

use axum::Router;
use axum::routing::get;
use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use vigil_schemas::api::Dimension;
use vigil_warehouse::Store;
use vigil_warehouse::query::Field;

use crate::ApiError;
use crate::routes::parse_time;

/// The endpoints answered from the warehouse alone. `reputation` and `timeseries` are served
/// by [`crate::live::router`], which answers ranged requests from here.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/v1/summary", get(summary::handler))
        .route("/api/v1/bounces", get(bounces::handler))
        .route("/api/v1/events", get(events::handler))
        .route("/api/v1/dmarc", get(dmarc::handler))
        .with_state(store)
}

/// The longest time range a ranged endpoint accepts.
pub const MAX_RANGE_DAYS: i64 = 400;

/// A bounded, ordered time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Range {
    /// `from` is required; `to` defaults to now.
    ///
    /// # Errors
    /// A 400 naming the parameter when a time does not parse, `from` is not before `to`, or
    /// the range is longer than [`MAX_RANGE_DAYS`].
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, ApiError> {
        let from = parse_time("from", from)?
            .ok_or_else(|| ApiError::BadRequest("`from` is required: an RFC 3339 time".into()))?;
        let to = parse_time("to", to)?.unwrap_or_else(Utc::now);
        Self::new(Some(from), Some(to)).map(|r| r.expect("both bounds given"))
    }

    /// Checks optional bounds: ordered, and no longer than [`MAX_RANGE_DAYS`] when both are
    /// given.
    ///
    /// # Errors
    /// A 400 saying which rule the bounds break.
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<Option<Self>, ApiError> {
        let (Some(from), Some(to)) = (from, to) else { return Ok(None) };
        if from > to {
            return Err(ApiError::BadRequest(format!("`from` ({from}) is after `to` ({to})")));
        }
        if to - from > Duration::days(MAX_RANGE_DAYS) {
            return Err(ApiError::BadRequest(format!(
                "the range from `from` to `to` may span at most {MAX_RANGE_DAYS} days"
            )));
        }
        Ok(Some(Self { from, to }))
    }
}

/// One optional parameter per dimension: only events whose dimension equals the value. Shared
/// by every analytics endpoint (`?provider=gmail&egress_source=ip-1`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct DimensionFilters {
    egress_source: Option<String>,
    egress_pool: Option<String>,
    provider: Option<String>,
    recipient_domain: Option<String>,
    tenant: Option<String>,
    campaign: Option<String>,
    bounce_class: Option<String>,
    kind: Option<String>,
    sending_domain: Option<String>,
    /// Complaints attributed this way: `trace`, `joined` or `unattributed`.
    attribution: Option<String>,
}

impl DimensionFilters {
    /// The filters given, in [`Dimension::ALL`] order.
    ///
    /// # Errors
    /// A 400 when a filter is empty (absent values cannot be asked for by equality).
    pub fn parse(&self) -> Result<Vec<(Dimension, String)>, ApiError> {
        let given = [
            (Dimension::EgressSource, &self.egress_source),
            (Dimension::EgressPool, &self.egress_pool),
            (Dimension::Provider, &self.provider),
            (Dimension::RecipientDomain, &self.recipient_domain),
            (Dimension::Tenant, &self.tenant),
            (Dimension::Campaign, &self.campaign),
            (Dimension::BounceClass, &self.bounce_class),
            (Dimension::Kind, &self.kind),
            (Dimension::SendingDomain, &self.sending_domain),
            (Dimension::Attribution, &self.attribution),
        ];
        let mut filters = Vec::new();
        for (dimension, value) in given {
            let Some(value) = value else { continue };
            if value.is_empty() {
                return Err(ApiError::BadRequest(format!("`{}` must not be empty", dimension.as_str())));
            }
            filters.push((dimension, value.clone()));
        }
        Ok(filters)
    }
}

/// Parses a `group_by`: a comma list of distinct names, each one of `all` (by `name`).
///
/// # Errors
/// A 400 naming an unknown or repeated name, and listing the known ones.
pub fn parse_group_by<T: Copy + PartialEq>(
    text: Option<&str>,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Vec<T>, ApiError> {
    let mut chosen = Vec::new();
    for given in text.unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let found = all.iter().copied().find(|d| name(*d) == given).ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|d| name(*d)).collect();
            ApiError::BadRequest(format!("unknown dimension `{given}` in group_by; use any of {}", known.join(", ")))
        })?;
        if chosen.contains(&found) {
            return Err(ApiError::BadRequest(format!("dimension `{given}` appears twice in group_by")));
        }
        chosen.push(found);
    }
    Ok(chosen)
}

/// Dimension filters as warehouse conditions.
#[must_use]
pub fn equals(filters: &[(Dimension, String)]) -> Vec<(Field, String)> {
    filters.iter().map(|(d, v)| (Field::from(*d), v.clone())).collect()
}

/// A page size: `default` when absent, else 1 to `max`.
///
/// # Errors
/// A 400 giving the bounds.
pub fn page_size(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(ApiError::BadRequest(format!("`limit` must be 1 to {max}")));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_ordered_and_bounded() {
        assert!(Range::parse(None, None).unwrap_err().to_string().contains("`from` is required"));
        let range = Range::parse(Some("2026-11-01T00:00:00Z"), Some("2026-11-02T00:00:00Z")).unwrap();
        assert_eq!(range.to - range.from, Duration::days(1));
        let backwards = Range::parse(Some("2026-11-02T00:00:00Z"), Some("2026-11-01T00:00:00Z"));
        assert!(backwards.unwrap_err().to_string().contains("is after"));
        let long = Range::parse(Some("2020-01-01T00:00:00Z"), Some("2026-01-01T00:00:00Z"));
        assert!(long.unwrap_err().to_string().contains("400 days"));
        assert!(Range::new(None, Some(Utc::now())).unwrap().is_none());
    }

    #[test]
    fn empty_filters_are_refused() {
        let filters = DimensionFilters { provider: Some("gmail".into()), ..DimensionFilters::default() };
        assert_eq!(filters.parse().unwrap(), vec![(Dimension::Provider, "gmail".to_owned())]);
        let empty = DimensionFilters { tenant: Some(String::new()), ..DimensionFilters::default() };
        assert!(empty.parse().unwrap_err().to_string().contains("`tenant`"));
        assert_eq!(page_size(None, 100, 1000).unwrap(), 100);
        assert!(page_size(Some(0), 100, 1000).is_err() && page_size(Some(1001), 100, 1000).is_err());
    }
}
