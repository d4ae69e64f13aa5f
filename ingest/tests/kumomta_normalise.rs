//! The KumoMTA normaliser against KumoMTA's own example records (golden file) and edge cases.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use vigil_ingest::kumomta::normalise_record;
use vigil_schemas::EventKind;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn ingested_at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Every example record normalises, and the events equal the golden file (regenerate with
/// `VIGIL_BLESS=1 cargo test -p vigil-ingest`).
#[test]
fn examples_match_the_golden_events() {
    let input = std::fs::read_to_string(repo_file("testdata/kumomta/examples.jsonl")).unwrap();
    let mut actual = String::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        for mut event in normalise_record(line, ingested_at()).unwrap() {
            event.raw = None; // the input itself; kept out of the golden file for readability
            actual.push_str(&serde_json::to_string(&event).unwrap());
            actual.push('\n');
        }
    }
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kumomta_examples.jsonl");
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&golden, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(actual == expected, "normalised events differ from {}:\n{actual}", golden.display());
    assert_eq!(actual.lines().count(), 5);
}

#[test]
fn examples_fill_kind_domain_source_codes_and_class() {
    let input = std::fs::read_to_string(repo_file("testdata/kumomta/examples.jsonl")).unwrap();
    let events: Vec<_> = input.lines().flat_map(|l| normalise_record(l, ingested_at()).unwrap()).collect();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(kinds, [Reception, Delivered, Deferred, Bounced, Bounced]);
    assert_eq!(events[2].egress_source.as_deref(), Some("unspecified"), "from the site name when the field is absent");
    assert_eq!(events[3].egress_source.as_deref(), Some("ip-10-0-0-1"));
    assert_eq!(events[3].recipient_domain.as_deref(), Some("gmail.com"));
    assert_eq!((events[3].smtp_code, events[3].enhanced_status.as_deref()), (Some(550), Some("5.1.1")));
    assert_eq!(events[3].provider_class.as_deref(), Some("InvalidRecipient"));
    assert_eq!(events[3].smtp_command.as_deref(), Some("RCPT TO:<nosuchuser@gmail.com>"), "CRLF trimmed");
    assert_eq!(events[3].occurred_at.to_rfc3339(), "2025-09-12T11:08:10.120+00:00", "event_time wins, ms precision");
    assert_eq!(events[3].sending_ip.as_deref(), Some("10.0.0.1"));
    assert!(events[4].internal, "an AdminBounce is our own MTA's doing");
    assert!(!events[3].internal);
    assert_eq!(events[0].mx_host, None, "a Reception's peer is the client, not an MX");
    assert_eq!(events[1].mx_host.as_deref(), Some("gmail-smtp-in.l.google.com"));
}

const BOUNCE: &str = r#"{"type":"Bounce","id":"abc","sender":"s@example.net","recipient":["a@Gmail.com","b@yahoo.com"],"queue":"gmail.com","site":"ip1->x.google.com@smtp_client","size":1,"response":{"code":550,"enhanced_code":{"class":5,"subject":1,"detail":1},"content":"no such user","command":null},"timestamp":1757675290,"egress_source":"ip1","brand_new_field":{"x":1}}"#;

#[test]
fn multi_recipient_records_give_one_event_each_with_distinct_stable_ids() {
    let events = normalise_record(BOUNCE, ingested_at()).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].recipient_domain.as_deref(), Some("gmail.com"));
    assert_eq!(events[1].recipient_domain.as_deref(), Some("yahoo.com"));
    assert_ne!(events[0].event_id, events[1].event_id);
    // The same record, serialised differently and ingested later, gets the same ids.
    let reformatted =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(BOUNCE).unwrap()).unwrap();
    let again = normalise_record(&reformatted, Utc::now()).unwrap();
    assert_eq!(again[0].event_id, events[0].event_id);
    assert_eq!(again[1].event_id, events[1].event_id);
}

#[test]
fn internal_responses_are_marked() {
    let record = BOUNCE
        .replace("\"Bounce\"", "\"TransientFailure\"")
        .replace("no such user", "KumoMTA internal: scheduled queue is suspended: maintenance");
    let events = normalise_record(&record, ingested_at()).unwrap();
    assert!(events.iter().all(|e| e.internal && e.kind == EventKind::Deferred));
}

#[test]
fn bad_records_say_what_is_wrong() {
    let cases = [
        (r#"{"id":"x","recipient":"a@b","timestamp":1}"#, "missing field `type`"),
        (r#"{"type":"Delivery","recipient":"a@b","timestamp":1}"#, "missing field `id`"),
        (r#"{"type":"Delivery","id":"x","timestamp":1}"#, "missing field `recipient`"),
        (r#"{"type":"Delivery","id":"x","recipient":"a@b"}"#, "neither `timestamp` nor `event_time`"),
        (r#"{"type":"Teleport","id":"x","recipient":"a@b","timestamp":1}"#, "unknown KumoMTA record type `Teleport`"),
        (r#"{"type":"Delivery","id":"x","recipient":[],"timestamp":1}"#, "no recipient"),
        (r#"{"type":"Delivery""#, "invalid KumoMTA log record"),
    ];
    for (input, expected) in cases {
        let err = normalise_record(input, ingested_at()).unwrap_err().to_string();
        assert!(err.contains(expected), "{input}: {err}");
    }
}
