//! `GET /api/v1/dmarc`: DMARC aggregate report rows summed by sending domain, source IP,
//! reporter or disposition, in messages; source IPs that sent none of the mail Vigil saw are
//! marked (`known_source: false`): someone else sending as your domain.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Query, State};
use chrono::Duration;
use schemars::JsonSchema;
use serde::Deserialize;
use vigil_schemas::api::dmarc::{DmarcDimension, DmarcResponse, DmarcRow};
use vigil_warehouse::Store;
use vigil_warehouse::query::{CountQuery, EventFilter, Field};

use super::Range;
use crate::ApiError;

fn field(dimension: DmarcDimension) -> Field {
    match dimension {
        DmarcDimension::SendingDomain => Field::SenderDomain,
        DmarcDimension::SourceIp => Field::SendingIp,
        DmarcDimension::Reporter => Field::SourceNode,
        DmarcDimension::Disposition => Field::DmarcDisposition,
    }
}

/// The event kinds that say an IP sent our mail.
const SENT: [&str; 5] = ["delivered", "deferred", "bounced", "expired", "reception"];
/// How far around the reports' range to look for mail our sources sent: reports cover whole
/// days, and arrive after them.
const KNOWN_MARGIN_DAYS: i64 = 2;

/// The rows of DMARC reports whose period ended in `range`, grouped by `group_by`.
///
/// # Errors
/// When the warehouse cannot be read.
pub async fn dmarc(store: &Store, range: Range, group_by: &[DmarcDimension]) -> Result<DmarcResponse, ApiError> {
    let mut fields: Vec<Field> = group_by.iter().map(|d| field(*d)).collect();
    let verdicts = [Field::DmarcDkim, Field::DmarcSpf, Field::DmarcDisposition];
    let extra: Vec<Field> = verdicts.iter().copied().filter(|f| !fields.contains(f)).collect();
    fields.extend(&extra);
    let counts = store
        .counts(&CountQuery {
            filter: EventFilter {
                from: Some(range.from),
                to: Some(range.to),
                kinds: vec!["dmarc_report"],
                ..EventFilter::default()
            },
            group_by: fields.clone(),
            step_minutes: None,
            weighted: true,
        })
        .await?;
    let position = |f: Field| fields.iter().position(|g| *g == f).expect("grouped");
    let (dkim, spf, disposition) =
        (position(Field::DmarcDkim), position(Field::DmarcSpf), position(Field::DmarcDisposition));
    let mut groups: BTreeMap<Vec<Option<String>>, DmarcRow> = BTreeMap::new();
    for row in counts {
        let key: Vec<Option<String>> = row.values[..group_by.len()].to_vec();
        let entry = groups.entry(key.clone()).or_insert_with(|| DmarcRow {
            dimensions: group_by.iter().map(|d| d.as_str().to_owned()).zip(key).collect(),
            messages: 0,
            dmarc_pass: 0,
            dmarc_fail: 0,
            dkim_pass: 0,
            spf_pass: 0,
            quarantined: 0,
            rejected: 0,
            known_source: None,
        });
        let is = |k: usize, value: &str| row.values[k].as_deref() == Some(value);
        entry.messages += row.count;
        if is(dkim, "pass") {
            entry.dkim_pass += row.count;
        }
        if is(spf, "pass") {
            entry.spf_pass += row.count;
        }
        if is(dkim, "pass") || is(spf, "pass") {
            entry.dmarc_pass += row.count;
        } else {
            entry.dmarc_fail += row.count;
        }
        if is(disposition, "quarantine") {
            entry.quarantined += row.count;
        }
        if is(disposition, "reject") {
            entry.rejected += row.count;
        }
    }
    if let Some(ip) = group_by.iter().position(|d| *d == DmarcDimension::SourceIp) {
        let known = known_ips(store, range).await?;
        for (key, row) in &mut groups {
            row.known_source = Some(key[ip].as_ref().is_some_and(|address| known.contains(address)));
        }
    }
    Ok(DmarcResponse { rows: groups.into_values().collect() })
}

/// The sending IPs of the mail Vigil saw around `range`.
async fn known_ips(store: &Store, range: Range) -> Result<BTreeSet<String>, ApiError> {
    let margin = Duration::days(KNOWN_MARGIN_DAYS);
    let counts = store
        .counts(&CountQuery {
            filter: EventFilter {
                from: Some(range.from - margin),
                to: Some(range.to + margin),
                kinds: SENT.to_vec(),
                present: vec![Field::SendingIp],
                ..EventFilter::default()
            },
            group_by: vec![Field::SendingIp],
            step_minutes: None,
            weighted: false,
        })
        .await?;
    Ok(counts.into_iter().filter_map(|row| row.values.into_iter().next().flatten()).collect())
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct DmarcParams {
    /// Comma-separated: sending_domain, source_ip, reporter, disposition.
    group_by: Option<String>,
    /// Start of the range of report periods' ends (RFC 3339, inclusive). Required.
    #[schemars(extend("format" = "date-time"))]
    from: Option<String>,
    /// End of the range (RFC 3339, exclusive); default now.
    #[schemars(extend("format" = "date-time"))]
    to: Option<String>,
}

fn parse_group_by(text: Option<&str>) -> Result<Vec<DmarcDimension>, ApiError> {
    super::parse_group_by(text, &DmarcDimension::ALL, DmarcDimension::as_str)
}

pub(crate) async fn handler(
    State(store): State<Store>,
    Query(params): Query<DmarcParams>,
) -> Result<Json<DmarcResponse>, ApiError> {
    let group_by = parse_group_by(params.group_by.as_deref())?;
    let range = Range::parse(params.from.as_deref(), params.to.as_deref())?;
    Ok(Json(dmarc(&store, range, &group_by).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_parse_with_clear_errors() {
        assert_eq!(
            parse_group_by(Some("sending_domain,source_ip")).unwrap(),
            vec![DmarcDimension::SendingDomain, DmarcDimension::SourceIp]
        );
        assert!(parse_group_by(Some("provider")).unwrap_err().to_string().contains("source_ip"));
        assert!(parse_group_by(Some("reporter,reporter")).unwrap_err().to_string().contains("twice"));
    }
}
