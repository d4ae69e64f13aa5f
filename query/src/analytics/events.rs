//! `GET /api/v1/events`: find events by recipient, message id, time range, kind, bounce class,
//! provider, egress source (any dimension), newest first, a page at a time.
//!
//! The cursor is the position of the page's last event, `<epoch ms>:<event id>`: the next
//! page holds what comes strictly after it in the order (time, then event id, descending),
//! so pages neither repeat nor skip events, even while new events arrive.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_schemas::api::EventRecord;
use vigil_warehouse::Store;
use vigil_warehouse::query::{EventFilter, Field, SearchQuery};

use super::{DimensionFilters, Range, equals, page_size};
use crate::ApiError;
use crate::routes::parse_time;

pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub filters: Vec<(vigil_schemas::api::Dimension, String)>,
    pub after: Option<(DateTime<Utc>, String)>,
    pub limit: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventsPage {
    rows: Vec<EventRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// # Errors
/// When the warehouse cannot be read.
pub async fn events(store: &Store, query: &EventsQuery) -> Result<EventsPage, ApiError> {
    let mut filter =
        EventFilter { from: query.from, to: query.to, equals: equals(&query.filters), ..EventFilter::default() };
    filter.equals.extend(query.recipient.iter().map(|r| (Field::Recipient, r.clone())));
    filter.equals.extend(query.message_id.iter().map(|m| (Field::MessageId, m.clone())));
    // One more than the page says whether there is a next page.
    let mut rows = store.search(&SearchQuery { filter, before: query.after.clone(), limit: query.limit + 1 }).await?;
    let more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let next = more.then(|| rows.last().map(|r| format!("{}:{}", r.occurred_at.timestamp_millis(), r.event_id)));
    Ok(EventsPage { rows, next: next.flatten() })
}

fn parse_cursor(text: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let bad = || ApiError::BadRequest("`cursor` must be the `next` value of a previous page".into());
    let (millis, event_id) = text.split_once(':').ok_or_else(bad)?;
    let at = millis.parse().ok().and_then(DateTime::from_timestamp_millis).ok_or_else(bad)?;
    if event_id.is_empty() {
        return Err(bad());
    }
    Ok((at, event_id.to_owned()))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct EventsParams {
    /// The recipient's address, exactly.
    recipient: Option<String>,
    /// The message id, exactly (with its angle brackets when it has them).
    message_id: Option<String>,
    /// Start of the range (RFC 3339, inclusive).
    #[schemars(extend("format" = "date-time"))]
    from: Option<String>,
    /// End of the range (RFC 3339, exclusive).
    #[schemars(extend("format" = "date-time"))]
    to: Option<String>,
    /// The previous page's `next`.
    cursor: Option<String>,
    /// Events per page (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<usize>,
}

pub(crate) async fn handler(
    State(store): State<Store>,
    Query(params): Query<EventsParams>,
    Query(filters): Query<DimensionFilters>,
) -> Result<Json<EventsPage>, ApiError> {
    let non_empty = |name: &str, value: Option<String>| match value {
        Some(v) if v.is_empty() => Err(ApiError::BadRequest(format!("`{name}` must not be empty"))),
        other => Ok(other),
    };
    let query = EventsQuery {
        recipient: non_empty("recipient", params.recipient)?,
        message_id: non_empty("message_id", params.message_id)?,
        from: parse_time("from", params.from.as_deref())?,
        to: parse_time("to", params.to.as_deref())?,
        filters: filters.parse()?,
        after: params.cursor.as_deref().map(parse_cursor).transpose()?,
        limit: page_size(params.limit, 100, MAX_PAGE)?,
    };
    Range::new(query.from, query.to)?;
    Ok(Json(events(&store, &query).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let (at, id) = parse_cursor("1764028800000:a:b").unwrap();
        assert_eq!((at.timestamp_millis(), id.as_str()), (1_764_028_800_000, "a:b"));
        for bad in ["", "x:y", "123", "123:"] {
            assert!(parse_cursor(bad).unwrap_err().to_string().contains("`cursor`"), "{bad}");
        }
    }
}
