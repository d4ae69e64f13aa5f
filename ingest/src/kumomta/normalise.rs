//! KumoMTA log record -> canonical [`DeliveryEvent`]s (one per recipient).

use chrono::{DateTime, Utc};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

use super::record::KumoRecord;

pub use vigil_schemas::event::KUMOMTA_INTERNAL_PREFIX;

/// Why a record could not be normalised. The message is what the dead letter and the HTTP error
/// say, so it names the field or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum NormaliseError {
    #[error("invalid KumoMTA log record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown KumoMTA record type `{0}`")]
    UnknownType(String),
    #[error("record has neither `timestamp` nor `event_time`")]
    MissingTime,
    #[error("`timestamp` {0} is out of range")]
    BadTimestamp(i64),
    #[error("record has no recipient")]
    NoRecipient,
}

/// Maps KumoMTA's `RecordType` to the canonical kind.
fn kind_of(record_type: &str) -> Result<EventKind, NormaliseError> {
    Ok(match record_type {
        "Reception" => EventKind::Reception,
        "Delivery" => EventKind::Delivered,
        "Bounce" | "OOB" | "AdminBounce" => EventKind::Bounced,
        "TransientFailure" => EventKind::Deferred,
        "Expiration" => EventKind::Expired,
        "Feedback" => EventKind::Complaint,
        "Rejection" => EventKind::Rejected,
        "AdminRebind" | "DeferredInjectionRebind" => EventKind::Rebound,
        "Delayed" => EventKind::Delayed,
        "XferOut" | "XferIn" => EventKind::Transferred,
        other => return Err(NormaliseError::UnknownType(other.to_owned())),
    })
}

/// Normalises one KumoMTA JSON log record.
///
/// `raw` must be exactly one JSON object. Every event gets a stable `event_id` derived from the
/// record's identity (message id, type, recipient, time, attempt, response), so the same record
/// arriving twice (re-sent after a crash, or by both the log hook and the log files) gets the
/// same id.
///
/// # Errors
/// When the record is not valid JSON, lacks `type`, `id`, `recipient` or a time, or has a record
/// type KumoMTA does not define.
pub fn normalise_record(raw: &str, ingested_at: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, NormaliseError> {
    let record: KumoRecord = serde_json::from_str(raw)?;
    let kind = kind_of(&record.kind)?;
    let occurred_at = match (record.event_time, record.timestamp) {
        (Some(at), _) => at,
        (None, Some(secs)) => DateTime::from_timestamp(secs, 0).ok_or(NormaliseError::BadTimestamp(secs))?,
        (None, None) => return Err(NormaliseError::MissingTime),
    };
    let recipients = record.recipient.into_vec();
    if recipients.iter().all(|r| r.trim().is_empty()) {
        return Err(NormaliseError::NoRecipient);
    }
    // A complaint is about the person who complained, not the feedback mailbox the report
    // was addressed to: never suppress or count the mailbox.
    let trace = record.feedback_report.as_ref().and_then(|f| f.supplemental_trace.as_ref());
    let complaint = match (&kind, &record.feedback_report) {
        (EventKind::Complaint, report) => {
            let reporting_host = record.peer_address.as_ref().and_then(|p| p.name.as_deref());
            Some(complaint_of(reporting_host, &record.sender, &recipients, report.as_ref()))
        }
        _ => None,
    };
    let recipients = match (&kind, &record.feedback_report) {
        (EventKind::Complaint, Some(report)) => complainers(report),
        (EventKind::Complaint, None) => Vec::new(),
        _ => recipients,
    };
    // Unattributable (no complainer named): still one event, counted, without a recipient.
    let unnamed = recipients.is_empty();

    let response = record.response.as_ref();
    let content = response.map(|r| single_line(&r.content));
    let enhanced =
        response.and_then(|r| r.enhanced_code.as_ref()).map(|e| format!("{}.{}.{}", e.class, e.subject, e.detail));
    let internal = matches!(&*record.kind, "AdminBounce" | "Expiration")
        || content.as_deref().is_some_and(|c| c.starts_with(KUMOMTA_INTERNAL_PREFIX));
    // For inbound records `peer_address` is the client's EHLO name, not an MX; for a complaint
    // it is the reporting host, not where the complained-of mail went.
    let outbound = !matches!(kind, EventKind::Reception | EventKind::Rejected | EventKind::Complaint);
    let (queue_campaign, queue_tenant) = parse_queue(&record.queue);
    let site = Some(record.site.as_ref()).filter(|s| !s.is_empty() && *s != "localhost").map(str::to_owned);
    let egress_source = record
        .egress_source
        .clone()
        .or_else(|| site.as_deref().and_then(|s| s.split_once("->")).map(|(source, _)| source.to_owned()))
        .or_else(|| trace.and_then(|t| t.egress_source.clone()));
    let provider_class = if kind.is_bounce_classifiable() {
        match kind {
            EventKind::Complaint => record.feedback_report.as_ref().and_then(|f| f.feedback_type.clone()),
            _ => record.bounce_classification.clone(),
        }
    } else {
        None
    };

    let occurred_nanos = occurred_at.timestamp_nanos_opt().unwrap_or(occurred_at.timestamp());
    // Per record, not per recipient: the message's stream, as the record or its trace says.
    let tenant = record.meta.tenant.clone().or_else(|| trace.and_then(|t| t.tenant.clone())).or(queue_tenant);
    let campaign = record.meta.campaign.clone().or_else(|| trace.and_then(|t| t.campaign.clone())).or(queue_campaign);
    let egress_pool = record.egress_pool.clone().or_else(|| trace.and_then(|t| t.egress_pool.clone()));
    let mut events = Vec::with_capacity(recipients.len().max(1));
    let recipients = recipients.into_iter().filter(|r| !r.trim().is_empty()).map(Some).chain(unnamed.then_some(None));
    for recipient in recipients {
        let event_id = event_id(&[
            &record.kind,
            &record.id,
            recipient.as_deref().unwrap_or(""),
            &occurred_nanos.to_string(),
            &record.num_attempts.unwrap_or(0).to_string(),
            &response.map_or(0, |r| r.code).to_string(),
            content.as_deref().unwrap_or(""),
        ]);
        let mut event = DeliveryEvent::new(event_id, SourceKind::Kumomta, kind, occurred_at, ingested_at);
        event.source_node = record.nodeid.clone();
        event.source_type = Some(record.kind.to_string());
        event.message_id = Some(record.id.to_string());
        event.sender = Some(record.sender.to_string()).filter(|s| !s.is_empty());
        event.sender_domain = domain_of(&record.sender);
        event.recipient_domain = recipient.as_deref().and_then(domain_of);
        event.recipient = recipient;
        event.tenant = tenant.clone();
        event.campaign = campaign.clone();
        event.size_bytes = record.size;
        event.attempt = record.num_attempts;
        event.egress_pool = egress_pool.clone();
        event.egress_source = egress_source.clone();
        event.sending_ip = record.source_address.as_ref().map(|a| strip_port(&a.address));
        if outbound {
            let peer = record.peer_address.as_ref();
            event.mx_host = peer
                .and_then(|p| p.name.as_deref())
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .filter(|n| !n.is_empty());
            event.mx_ip = peer.and_then(|p| p.addr.clone());
        }
        event.site = site.clone();
        event.smtp_code = response.map(|r| r.code);
        event.enhanced_status = enhanced.clone();
        event.response_text = content.clone().filter(|c| !c.is_empty());
        event.smtp_command =
            response.and_then(|r| r.command.as_deref()).map(|c| c.trim_end_matches(['\r', '\n']).to_owned());
        event.internal = internal;
        event.provider_class = provider_class.clone();
        if let Some(complaint) = &complaint {
            event.report_recipient.clone_from(&complaint.report_recipient);
            event.feedback_loop = complaint.feedback_loop.map(str::to_owned);
            event.original_sent_at = complaint.original_sent_at;
            // The report named the stream; else the processor joins it to a delivery.
            event.attribution = event.egress_source.is_some().then_some(vigil_schemas::Attribution::Trace);
        }
        event.raw = Some(raw.to_owned());
        events.push(event);
    }
    Ok(events)
}

/// What a `Feedback` record says about the report itself, beside the complainer.
struct ComplaintReport {
    report_recipient: Option<String>,
    feedback_loop: Option<&'static str>,
    original_sent_at: Option<DateTime<Utc>>,
}

/// `reporting_host` is the client that delivered the report, `sender` its envelope sender,
/// `mailboxes` its envelope recipients (the feedback-loop mailbox).
fn complaint_of(
    reporting_host: Option<&str>,
    sender: &str,
    mailboxes: &[String],
    report: Option<&super::record::FeedbackReport>,
) -> ComplaintReport {
    let reporting_mta = report.and_then(|r| r.reporting_mta.as_ref()).and_then(|m| m.name.as_deref());
    let names = [reporting_mta, reporting_host, Some(sender)].into_iter().flatten();
    ComplaintReport {
        report_recipient: mailboxes.iter().map(|m| m.trim()).find(|m| !m.is_empty()).map(str::to_ascii_lowercase),
        feedback_loop: crate::feedback_loop::recognise(report.and_then(|r| r.user_agent.as_deref()), names),
        original_sent_at: report
            .and_then(|r| r.arrival_date.as_deref())
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| vigil_schemas::event::truncate_to_millis(at.with_timezone(&Utc))),
    }
}

/// Who complained: `Original-Rcpt-To`, else the recipient of the `X-KumoRef` trace, else the
/// `To:` of the returned message. Empty when the report names nobody (redacted reports).
fn complainers(report: &super::record::FeedbackReport) -> Vec<String> {
    let clean = |address: &str| {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>').trim();
        address.contains('@').then(|| address.to_ascii_lowercase())
    };
    let named: Vec<String> = report.original_rcpto_to.iter().filter_map(|a| clean(a)).collect();
    if !named.is_empty() {
        return named;
    }
    if let Some(recipient) = report.supplemental_trace.as_ref().and_then(|t| t.recipient.as_ref()) {
        let traced: Vec<String> = match recipient {
            super::record::OneOrMany::One(one) => clean(one).into_iter().collect(),
            super::record::OneOrMany::Many(many) => many.iter().filter_map(|a| clean(a)).collect(),
        };
        if !traced.is_empty() {
            return traced;
        }
    }
    let to = report.original_message.as_deref().and_then(|message| {
        message
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .find_map(|line| line.strip_prefix("To:").or_else(|| line.strip_prefix("to:")))
            .map(|value| value.rsplit_once('<').map_or(value, |(_, angle)| angle))
            .and_then(clean)
    });
    to.into_iter().collect()
}

/// A stable 128-bit id (hex) over the identity fields, separated so that field boundaries
/// cannot be confused.
fn event_id(parts: &[&str]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"kumomta");
    for part in parts {
        hasher.update(&[0]);
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// KumoMTA says `content` is already one line; older versions and other writers may not.
fn single_line(text: &str) -> String {
    if text.contains(['\r', '\n']) {
        text.split(['\r', '\n']).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
    } else {
        text.to_owned()
    }
}

/// Lower-cased domain of an address, without angle brackets.
#[must_use]
pub fn domain_of(address: &str) -> Option<String> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// `ip:port`, `[v6]:port` or a bare address -> the address.
fn strip_port(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match address.rsplit_once(':') {
        // A single colon is ip:port; more are a bare IPv6 address.
        Some((ip, _)) if !ip.contains(':') => ip.to_owned(),
        _ => address.to_owned(),
    }
}

/// Scheduled queue name `[campaign:][tenant@]domain[!routing_domain]` -> (campaign, tenant).
fn parse_queue(queue: &str) -> (Option<String>, Option<String>) {
    let queue = queue.split('!').next().unwrap_or(queue);
    let Some((prefix, _domain)) = queue.rsplit_once('@') else {
        return (None, None);
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    match prefix.split_once(':') {
        Some((campaign, tenant)) => (non_empty(campaign), non_empty(tenant)),
        None => (None, non_empty(prefix)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Feedback` record as kumod writes it for an ARF report: addressed to the feedback
    /// mailbox, from the reporting host, with `report` as its `feedback_report`.
    fn feedback(report: serde_json::Value, reporter: &str) -> String {
        serde_json::json!({
            "type": "Feedback", "id": "5f0a3c1e2b7d11f1a4c250ebf67f93bd",
            "sender": "fbl-reports@reporter.example", "recipient": "fbl@fbl.sender.example",
            "queue": "fbl.sender.example", "site": "", "size": 2911,
            "response": {"code": 250, "enhanced_code": null, "content": "", "command": null},
            "peer_address": {"name": reporter, "addr": "198.51.100.25"},
            "timestamp": 1_796_479_392, "num_attempts": 0, "bounce_classification": "Uncategorized",
            "egress_pool": null, "egress_source": null, "source_address": null,
            "feedback_report": report, "meta": {}, "headers": {}
        })
        .to_string()
    }

    #[test]
    fn a_complaint_is_about_the_complainer_never_the_feedback_mailbox() {
        let at = Utc::now();
        // Yahoo's CFL: Original-Rcpt-To, and the X-KumoRef trace with tenant and campaign.
        let yahoo = feedback(
            serde_json::json!({
                "feedback_type": "abuse", "user_agent": "Yahoo!-Mail-Feedback/2.0", "version": "1",
                "arrival_date": "2026-12-02T13:59:58Z", "original_rcpto_to": ["alice@yahoo.com"],
                "supplemental_trace": {"recipient": "alice@yahoo.com", "tenant": "acme", "campaign": "spring", "egress_source": "ip-1"}
            }),
            "mta1.feedback.yahoo.com",
        );
        let events = normalise_record(&yahoo, at).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, EventKind::Complaint);
        assert_eq!(e.recipient.as_deref(), Some("alice@yahoo.com"));
        assert_eq!(e.recipient_domain.as_deref(), Some("yahoo.com"));
        assert_eq!((e.tenant.as_deref(), e.campaign.as_deref()), (Some("acme"), Some("spring")));
        assert_eq!(e.egress_source.as_deref(), Some("ip-1"), "the trace's meta names the stream");
        assert_eq!(e.mx_host, None, "the reporting host is not an MX");
        assert_eq!(e.occurred_at.timestamp(), 1_796_479_392, "when the report arrived, not the original send");
        assert_eq!(e.original_sent_at.map(|t| t.to_rfc3339()).as_deref(), Some("2026-12-02T13:59:58+00:00"));
        assert_eq!(e.report_recipient.as_deref(), Some("fbl@fbl.sender.example"), "kept, as its own field");
        assert_eq!(e.feedback_loop.as_deref(), Some("yahoo_cfl"));
        assert_eq!(e.attribution, Some(vigil_schemas::Attribution::Trace));

        // Microsoft's JMRP redacts Original-Rcpt-To; the trace still names the recipient.
        let jmrp = feedback(
            serde_json::json!({"feedback_type": "abuse", "user_agent": "Microsoft JMRP", "version": "1",
                               "supplemental_trace": {"recipient": "bob@outlook.com", "tenant": null}}),
            "mail.outlook.com",
        );
        let bob = &normalise_record(&jmrp, at).unwrap()[0];
        assert_eq!(bob.recipient.as_deref(), Some("bob@outlook.com"));
        assert_eq!(bob.feedback_loop.as_deref(), Some("microsoft_jmrp"));
        assert_eq!((bob.attribution, bob.original_sent_at), (None, None), "left to the processor's join");

        // AOL (Yahoo's platform): only the returned headers name the complainer.
        let aol = feedback(
            serde_json::json!({"feedback_type": "abuse", "user_agent": "Yahoo!-Mail-Feedback/2.0", "version": "1",
                               "original_message": "From: news@shop.example\nTo: Carol <Carol@AOL.com>\nSubject: Sale\n\nbody"}),
            "mta2.feedback.aol.com",
        );
        let carol = normalise_record(&aol, at).unwrap();
        assert_eq!(carol[0].recipient.as_deref(), Some("carol@aol.com"));
        assert_eq!(carol[0].feedback_loop.as_deref(), Some("aol"));

        // A report that names nobody: still one complaint, with no recipient (never the mailbox).
        let redacted = feedback(
            serde_json::json!({"feedback_type": "abuse", "user_agent": "x", "version": "1", "original_rcpto_to": ["redacted"]}),
            "fbl.example.net",
        );
        let events = normalise_record(&redacted, at).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].recipient, None);
    }

    #[test]
    fn every_kumomta_record_type_has_a_kind() {
        let expected = [
            ("Reception", EventKind::Reception),
            ("Delivery", EventKind::Delivered),
            ("Bounce", EventKind::Bounced),
            ("TransientFailure", EventKind::Deferred),
            ("Expiration", EventKind::Expired),
            ("AdminBounce", EventKind::Bounced),
            ("OOB", EventKind::Bounced),
            ("Feedback", EventKind::Complaint),
            ("Rejection", EventKind::Rejected),
            ("AdminRebind", EventKind::Rebound),
            ("DeferredInjectionRebind", EventKind::Rebound),
            ("Delayed", EventKind::Delayed),
            ("XferOut", EventKind::Transferred),
            ("XferIn", EventKind::Transferred),
        ];
        for (record_type, kind) in expected {
            let raw = format!(r#"{{"type":"{record_type}","id":"m","recipient":"a@b.example","timestamp":1}}"#);
            let events = normalise_record(&raw, Utc::now()).unwrap();
            assert_eq!(events[0].kind, kind, "{record_type}");
            assert_eq!(events[0].source_type.as_deref(), Some(record_type));
        }
        // `Any` exists only in logging configuration and is never emitted.
        assert!(matches!(kind_of("Any"), Err(NormaliseError::UnknownType(_))));
    }

    #[test]
    fn queue_names_give_campaign_and_tenant() {
        let own = |(c, t): (Option<String>, Option<String>)| (c, t);
        assert_eq!(own(parse_queue("campaign:tenant@domain")), (Some("campaign".into()), Some("tenant".into())));
        assert_eq!(own(parse_queue("acme@gmail.com!relay.example")), (None, Some("acme".into())));
        assert_eq!(own(parse_queue("spring:@gmail.com")), (Some("spring".into()), None));
        assert_eq!(own(parse_queue("gmail.com")), (None, None));
    }

    #[test]
    fn ports_are_stripped_from_v4_and_v6() {
        assert_eq!(strip_port("10.0.0.1:53210"), "10.0.0.1");
        assert_eq!(strip_port("[2001:db8::1]:25"), "2001:db8::1");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn domains_are_lower_cased_and_unbracketed() {
        assert_eq!(domain_of("<User@Gmail.COM>").as_deref(), Some("gmail.com"));
        assert_eq!(domain_of("nobody"), None);
    }
}
