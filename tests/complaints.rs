//! A spam complaint suppresses the person who complained, never the feedback mailbox the
//! report was addressed to, counts for the complainer's provider and, through the report's
//! trace or the latest delivery to the complainer, for the egress source that sent the mail
//! (issue 32).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Vigil, eventually};
use serde_json::{Value, json};

/// kumod's `Feedback` record for Yahoo's report about `complainer`, whose X-KumoRef trace
/// carries the egress source (kumod's `include_meta_names` with an `egress_source` meta).
fn yahoo_complaint(id: &str, complainer: &str, egress_source: Option<&str>, at: i64) -> Value {
    json!({
        "type": "Feedback", "id": id,
        "sender": "fbl-reports@yahoo.com", "recipient": "fbl@fbl.sender-example.com",
        "queue": "fbl.sender-example.com", "site": "", "size": 2911,
        "response": {"code": 250, "enhanced_code": null, "content": "", "command": null},
        "peer_address": {"name": "mta1.feedback.yahoo.com", "addr": "98.136.0.1"},
        "timestamp": at, "num_attempts": 0,
        "bounce_classification": "Uncategorized", "egress_pool": null, "egress_source": null,
        "source_address": null, "meta": {}, "headers": {},
        "feedback_report": {
            "feedback_type": "abuse", "user_agent": "Yahoo!-Mail-Feedback/2.0", "version": "1",
            "original_rcpto_to": [complainer],
            "supplemental_trace": {"recipient": complainer, "egress_source": egress_source}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_suppresses_the_complainer_and_counts_for_their_provider() {
    let data = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(data.path(), &[]).await;
    // As kumod writes it on receiving Yahoo's ARF report (log_arf): the record's recipient is
    // the feedback mailbox and its peer the reporting host.
    let record =
        yahoo_complaint("5f0a3c1e2b7d11f1a4c250ebf67f93bd", "alice@yahoo.com", None, chrono::Utc::now().timestamp());
    assert_eq!(vigil.post("/ingest/kumomta", record.to_string()).await.0, 200);
    eventually("the complainer suppressed", Duration::from_secs(30), || async {
        let (_, page) = vigil.get("/api/v1/suppressions?recipient=alice@yahoo.com").await;
        page["rows"].as_array().is_some_and(|rows| rows.iter().any(|r| r["reason"] == "complaint"))
    })
    .await;
    let (_, mailbox) = vigil.get("/api/v1/suppressions?recipient=fbl@fbl.sender-example.com").await;
    assert_eq!(mailbox["rows"], json!([]), "the feedback mailbox is never suppressed");
    let rows = vigil.summary("group_by=provider").await;
    let yahoo: Vec<&Value> = rows.as_array().unwrap().iter().filter(|r| r["provider"] == "yahoo").collect();
    assert_eq!(yahoo.len(), 1, "{rows}");
    assert_eq!(yahoo[0]["complaints"], 1, "{rows}");
    vigil.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_rate_rule_throttles_the_source_the_complaints_are_traced_to() {
    let data = tempfile::tempdir().unwrap();
    let rules = data.path().join("rules.toml");
    // Yahoo's published ceiling: 0.3 % of delivered mail over a day.
    std::fs::write(
        &rules,
        "[[rate]]\nname = \"yahoo-complaints\"\nmetric = \"complaints\"\nscope = \"egress_source,provider\"\n\
         window = \"24h\"\nthreshold = 0.003\nmin_volume = 500\nrecover_below = 0.001\nhealthy_for = \"1h\"\n\
         action = \"throttle\"\nsetting = \"max_message_rate\"\nbaseline = \"1000/h\"\nreduce_to = 50\nfloor = \"10/h\"\n\
         step_up = 25\nlift_after = \"6h\"\nmax_duration = \"24h\"\n",
    )
    .unwrap();
    let vigil = Vigil::start(&data.path().join("data"), &["--action-rules", rules.to_str().unwrap()]).await;
    let now = chrono::Utc::now().timestamp();
    let then = now - 120;
    let delivery = |n: usize, at: i64, source: &str| {
        json!({
            "type": "Delivery", "id": format!("d{n}"), "sender": "news@shop.example",
            "recipient": format!("r{n}@yahoo.com"), "queue": "yahoo.com",
            "site": format!("{source}->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client"), "size": 1024, "num_attempts": 0,
            "response": {"code": 250, "enhanced_code": {"class": 2, "subject": 0, "detail": 0}, "content": "ok", "command": "."},
            "peer_address": {"name": "mta5.am0.yahoodns.net", "addr": "67.195.204.72"},
            "timestamp": at, "egress_pool": "pool-1", "egress_source": source,
            "bounce_classification": "Uncategorized", "meta": {}, "headers": {}
        })
    };
    let deliveries: Vec<Value> = (0..1000).map(|n| delivery(n, then, "ip-1")).collect();
    assert_eq!(vigil.post("/ingest/kumomta", Value::Array(deliveries).to_string()).await.0, 200);
    // Four complaints traced to ip-1 (0.4 % of 1 000 delivered), one about someone Vigil saw
    // no delivery to (unattributed).
    let mut complaints: Vec<Value> =
        (0..4).map(|n| yahoo_complaint(&format!("c{n}"), &format!("r{n}@yahoo.com"), Some("ip-1"), then)).collect();
    complaints.push(yahoo_complaint("c-untraced", "stranger@yahoo.com", None, then));
    assert_eq!(vigil.post("/ingest/kumomta", Value::Array(complaints).to_string()).await.0, 200);
    // Rate rules judge each minute once the clock (the newest ingestion time) has left it:
    // keep a trickle of traffic going until the wall clock turns the minute, from another
    // source so that it does not dilute ip-1's rate.
    let trickle = std::sync::atomic::AtomicUsize::new(1000);
    eventually("the complaint rule throttles ip-1 at Yahoo", Duration::from_secs(90), || async {
        let n = trickle.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(vigil.post("/ingest/kumomta", delivery(n, now, "ip-2").to_string()).await.0, 200);
        let (_, decisions) = vigil.get("/api/v1/decisions?status=applied&rule=yahoo-complaints").await;
        decisions["decisions"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["target"]["egress_source"] == "ip-1" && d["action_key"] == "rate:yahoo-complaints:ip-1:yahoo"
            })
        })
    })
    .await;
    // All five count for Yahoo, attributed or not.
    let rows = vigil.summary("group_by=provider").await;
    let yahoo = rows.as_array().unwrap().iter().find(|r| r["provider"] == "yahoo").unwrap();
    assert_eq!(yahoo["complaints"], 5, "{rows}");
    vigil.terminate();
}

fn delivery_to(id: &str, recipient: &str, source: &str, at: i64) -> Value {
    json!({
        "type": "Delivery", "id": id, "sender": "news@shop.example", "recipient": recipient,
        "queue": "spring:acme@yahoo.com",
        "site": format!("{source}->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client"), "size": 1024, "num_attempts": 0,
        "response": {"code": 250, "enhanced_code": {"class": 2, "subject": 0, "detail": 0}, "content": "ok", "command": "."},
        "peer_address": {"name": "mta5.am0.yahoodns.net", "addr": "67.195.204.72"},
        "timestamp": at, "egress_pool": "pool-1", "egress_source": source,
        "source_address": {"address": "192.0.2.1:41000"},
        "bounce_classification": "Uncategorized", "meta": {}, "headers": {}
    })
}

/// The complaint as the real kumod writes it by default: its trace has no egress source
/// (kumod cannot carry one), so Vigil joins it to the latest delivery to the complainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_today_about_mail_sent_three_days_ago_is_joined_to_its_delivery_and_counts_today() {
    let data = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(data.path(), &[]).await;
    let now = chrono::Utc::now();
    let sent = now - chrono::TimeDelta::days(3);
    // alice got mail from ip-1 three days ago and from ip-2 a week before that (the older
    // one must not win); nobody ever sent to carol.
    let deliveries = json!([
        delivery_to("d-old", "alice@yahoo.com", "ip-2", (sent - chrono::TimeDelta::days(7)).timestamp()),
        delivery_to("d-alice", "Alice@Yahoo.com", "ip-1", sent.timestamp()),
    ]);
    assert_eq!(vigil.post("/ingest/kumomta", deliveries.to_string()).await.0, 200);
    let mut alice = yahoo_complaint("c-alice", "alice@yahoo.com", None, now.timestamp());
    alice["feedback_report"]["arrival_date"] = json!(sent.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let mut carol = yahoo_complaint("c-carol", "carol@aol.com", None, now.timestamp());
    carol["peer_address"]["name"] = json!("mta2.feedback.aol.com");
    assert_eq!(vigil.post("/ingest/kumomta", json!([alice, carol]).to_string()).await.0, 200);

    let today =
        now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let by_source = format!("group_by=provider,egress_source&kind=complaint&from={}", today.replace('+', "%2B"));
    // AOL is Yahoo's platform: the provider map counts aol.com as yahoo.
    let expected = json!([
        {"provider": "yahoo", "egress_source": null, "complaints": 1},
        {"provider": "yahoo", "egress_source": "ip-1", "complaints": 1},
    ]);
    eventually("both complaints in today's window, alice's for ip-1", Duration::from_secs(30), || async {
        let rows = vigil.summary(&by_source).await;
        let seen: Vec<Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"provider": r["provider"], "egress_source": r["egress_source"], "complaints": r["complaints"]}))
            .collect();
        Value::Array(seen) == expected
    })
    .await;

    let (_, page) = vigil.get("/api/v1/events?kind=complaint").await;
    let rows = page["rows"].as_array().unwrap();
    let alice = rows.iter().find(|r| r["recipient"] == "alice@yahoo.com").unwrap();
    assert_eq!(alice["attribution"], "joined", "{alice}");
    assert_eq!(alice["egress_source"], "ip-1", "{alice}");
    assert_eq!((&alice["campaign"], &alice["tenant"]), (&json!("spring"), &json!("acme")), "{alice}");
    assert_eq!(alice["report_recipient"], "fbl@fbl.sender-example.com", "{alice}");
    assert_eq!(alice["feedback_loop"], "yahoo_cfl", "{alice}");
    let original = chrono::DateTime::parse_from_rfc3339(alice["original_sent_at"].as_str().unwrap()).unwrap();
    assert_eq!(original.timestamp(), sent.timestamp(), "{alice}");
    let occurred = chrono::DateTime::parse_from_rfc3339(alice["occurred_at"].as_str().unwrap()).unwrap();
    assert_eq!(occurred.timestamp(), now.timestamp(), "dated when the report arrived");
    let carol = rows.iter().find(|r| r["recipient"] == "carol@aol.com").unwrap();
    assert_eq!((&carol["attribution"], &carol["provider"]), (&json!("unattributed"), &json!("yahoo")), "{carol}");
    assert_eq!(carol["feedback_loop"], "aol", "{carol}");
    let (_, unattributed) =
        vigil.get("/api/v1/summary?kind=complaint&attribution=unattributed&group_by=provider").await;
    let rows = unattributed["rows"].as_array().unwrap();
    assert_eq!(
        (rows.len(), &rows[0]["provider"], &rows[0]["complaints"]),
        (1, &json!("yahoo"), &json!(1)),
        "{unattributed}"
    );

    let (_, metrics) = vigil.get_text("/metrics").await;
    for (attribution, count) in [("trace", 0), ("joined", 1), ("unattributed", 1)] {
        let line = format!("vigil_complaints_total{{attribution=\"{attribution}\"}} {count}");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let (_, suppressed) = vigil.get("/api/v1/suppressions?recipient=alice@yahoo.com").await;
    assert_eq!(suppressed["rows"][0]["reason"], "complaint", "{suppressed}");
    vigil.terminate();
}

/// The records a real kumod wrote (testdata/kumomta/kumod/, see PROVENANCE.md there): the
/// delivery to alice@yahoo.com from ip-1, then Yahoo's report about it, addressed to the
/// feedback mailbox, whose X-KumoRef trace has tenant and campaign but no egress source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kumod_feedback_record_is_joined_to_its_delivery() {
    let data = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(data.path(), &[]).await;
    let fixture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kumomta/kumod/feedback-yahoo.jsonl"),
    )
    .unwrap();
    let records: Vec<Value> = fixture.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        records.iter().map(|r| r["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["Reception", "Delivery", "Feedback"]
    );
    assert_eq!(vigil.post("/ingest/kumomta", Value::Array(records).to_string()).await.0, 200);

    eventually("the complaint in the events", Duration::from_secs(30), || async {
        let (_, page) = vigil.get("/api/v1/events?kind=complaint").await;
        page["rows"].as_array().is_some_and(|rows| rows.len() == 1)
    })
    .await;
    let (_, page) = vigil.get("/api/v1/events?kind=complaint").await;
    let complaint = &page["rows"][0];
    for (field, expected) in [
        ("recipient", json!("alice@yahoo.com")),
        ("report_recipient", json!("fbl@fbl.sender.example")),
        ("provider", json!("yahoo")),
        ("feedback_loop", json!("yahoo_cfl")),
        ("attribution", json!("joined")),
        ("egress_source", json!("ip-1")),
        ("egress_pool", json!("pool-1")),
        ("tenant", json!("acme")),
        ("campaign", json!("spring-sale")),
    ] {
        assert_eq!(complaint[field], expected, "{field} in {complaint}");
    }
    assert!(complaint["original_sent_at"].is_string(), "{complaint}");
    let (_, alice) = vigil.get("/api/v1/suppressions?recipient=alice@yahoo.com").await;
    assert_eq!(alice["rows"][0]["reason"], "complaint", "{alice}");
    let (_, mailbox) = vigil.get("/api/v1/suppressions?recipient=fbl@fbl.sender.example").await;
    assert_eq!(mailbox["rows"], json!([]), "{mailbox}");
    let rows = vigil.summary("group_by=egress_source,provider&kind=complaint").await;
    assert_eq!(rows[0]["egress_source"], "ip-1", "{rows}");
    assert_eq!(rows[0]["complaints"], 1, "{rows}");
    vigil.terminate();
}
