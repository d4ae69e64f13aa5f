//! PowerMTA accounting CSV: columns mapped from the header line (PowerMTA lets each site choose
//! them; some writers prefix the header with `#`), records `d` (delivered), `b` (bounced), `t`
//! and `tq` (deferred), `f` (feedback loop), `rb` (remote bounce), `rs` (remote status).
//! `bounceCat` is kept verbatim as the event's `provider_class`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

use crate::kumomta::domain_of;
use crate::lines::{LineError, LineNormaliser, line_event_id, split_reply};

/// Column positions, from the header line.
#[derive(Debug, Default)]
pub struct PowermtaNormaliser {
    columns: Option<HashMap<String, usize>>,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%z") {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok().map(|n| Utc.from_utc_datetime(&n))
}

fn csv_fields(line: &str) -> Result<Vec<String>, LineError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(line.as_bytes());
    let record = reader
        .records()
        .next()
        .ok_or_else(|| LineError("empty CSV line".into()))?
        .map_err(|e| LineError(format!("not a CSV line: {e}")))?;
    Ok(record.iter().map(str::to_owned).collect())
}

impl LineNormaliser for PowermtaNormaliser {
    fn push_line(&mut self, line: &str, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, LineError> {
        // Records shipped over syslog arrive behind a header; the record is the message (the
        // event id then matches the same record read from the accounting file).
        let line = crate::syslog::header::parse(line, ingested_at, None).map_or(line, |header| header.message);
        let trimmed = line.trim_start_matches('#');
        let fields = csv_fields(trimmed)?;
        // A header line (the first, or a new one after rotation) sets the column map.
        if fields.first().is_some_and(|f| f == "type") {
            self.columns = Some(fields.iter().enumerate().map(|(i, name)| (name.clone(), i)).collect());
            return Ok(Vec::new());
        }
        if line.starts_with('#') {
            return Ok(Vec::new()); // a comment
        }
        let columns = self.columns.as_ref().ok_or_else(|| LineError("record before the header line".into()))?;
        let get =
            |name: &str| columns.get(name).and_then(|&i| fields.get(i)).map(|v| v.trim()).filter(|v| !v.is_empty());
        let record_type = get("type").ok_or_else(|| LineError("record without a type".into()))?;
        let kind = match record_type {
            "d" => EventKind::Delivered,
            "b" | "rb" => EventKind::Bounced,
            "t" | "tq" => EventKind::Deferred,
            "f" => EventKind::Complaint,
            "rs" => match get("dsnAction") {
                Some("delivered" | "relayed" | "expanded") => EventKind::Delivered,
                _ => EventKind::Deferred,
            },
            "r" => EventKind::Reception,
            other => return Err(LineError(format!("unknown PowerMTA record type `{other}`"))),
        };
        let recipient = get("rcpt").ok_or_else(|| LineError("record without rcpt".into()))?.to_owned();
        let at = get("timeLogged")
            .map(|t| parse_time(t).ok_or_else(|| LineError(format!("bad timeLogged `{t}`"))))
            .transpose()?
            .unwrap_or(ingested_at);
        let mut event = DeliveryEvent::new(
            line_event_id("powermta", line, &recipient),
            SourceKind::Powermta,
            kind,
            at,
            ingested_at,
        );
        event.source_type = Some(record_type.to_owned());
        event.sender = get("orig").map(str::to_owned);
        event.sender_domain = event.sender.as_deref().and_then(domain_of);
        event.recipient_domain = domain_of(&recipient);
        event.recipient = Some(recipient);
        event.size_bytes = get("dlvSize").and_then(|s| s.parse().ok());
        // The virtual MTA is PowerMTA's sending identity; its pool is the egress pool.
        event.egress_source = get("vmta").map(str::to_owned);
        event.egress_pool = get("vmtaPool").map(str::to_owned);
        event.sending_ip = get("dlvSourceIp").map(str::to_owned);
        event.mx_ip = get("dlvDestinationIp").map(str::to_owned);
        event.mx_host =
            get("dsnMta").or_else(|| get("dsnMTA")).map(|m| m.split(['(', ' ']).next().unwrap_or(m).to_owned());
        event.campaign = get("jobId").or_else(|| get("header_X-job")).map(str::to_owned);
        event.enhanced_status = get("dsnStatus").map(str::to_owned);
        if let Some(diag) = get("dsnDiag") {
            let diag = diag.strip_prefix("smtp;").unwrap_or(diag).trim();
            let (code, enhanced, reply) = split_reply(diag);
            event.smtp_code = code;
            event.enhanced_status = event.enhanced_status.or(enhanced);
            event.response_text = Some(reply);
        }
        event.provider_class = if kind == EventKind::Complaint {
            get("feedbackType").map(str::to_owned).or_else(|| Some("abuse".to_owned()))
        } else {
            get("bounceCat").map(str::to_owned)
        };
        event.raw = Some(line.to_owned());
        Ok(vec![event])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_driven_records() {
        let mut n = PowermtaNormaliser::default();
        let now = Utc::now();
        assert!(
            n.push_line("b,2026-03-11 10:01:00,a@b.example,c@d.example", now)
                .unwrap_err()
                .0
                .contains("before the header")
        );
        n.push_line("#type,timeLogged,orig,rcpt,dsnAction,dsnStatus,dsnDiag,bounceCat,vmta", now).unwrap();
        let events = n
            .push_line("b,2026-03-11 10:01:00,s@example.com,bad@invalid.com,failed,5.1.1,\"smtp;550 5.1.1 User unknown, sorry\",bad-mailbox,mta1", now)
            .unwrap();
        let e = &events[0];
        assert_eq!((e.kind, e.smtp_code, e.enhanced_status.as_deref()), (EventKind::Bounced, Some(550), Some("5.1.1")));
        assert_eq!(
            e.response_text.as_deref(),
            Some("550 5.1.1 User unknown, sorry"),
            "quoted commas stay in the field"
        );
        assert_eq!((e.provider_class.as_deref(), e.egress_source.as_deref()), (Some("bad-mailbox"), Some("mta1")));
        assert_eq!(e.occurred_at.to_rfc3339(), "2026-03-11T10:01:00+00:00");
        assert!(n.push_line("x,2026-03-11 10:01:00,a@b,c@d", now).unwrap_err().0.contains("`x`"));
    }
}
