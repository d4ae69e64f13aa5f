//! `vigil process` against a real Kafka-protocol broker (tansu): two instances in one consumer
//! group, one killed with SIGKILL mid-stream and restarted, end with the same derived state
//! (digest) and the same reputation answers as a single instance over the same input. Every
//! instance must have folded exactly the 3 000 distinct events: the records the killed
//! instance enriched but had not committed are enriched again, and 150 events arrive twice
//! (as ingest re-sends after its own crash); all those copies must be dropped. With
//! `[clickhouse]`, the instances also share inserting `vigil.enriched` into a real ClickHouse:
//! each event lands there once, kill or no kill, and the analytics API answers as the single
//! instance's does.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::DateTime;
use common::broker::{Broker, Running};
use common::{eventually, free_port};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

const PARTITIONS: i32 = 4;
const EVENTS: usize = 3000;
/// Events re-sent, as ingest does after its own crash.
const RESENT: usize = 150;

/// A running `vigil process`.
struct Process {
    running: Running,
    base: String,
}

impl Process {
    /// With `extra` configuration (top-level tables, e.g. `[actuation]`) appended.
    fn start_with(dir: &Path, port: u16, group: &str, enriched: &str, extra: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("process.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\nlisten = \"127.0.0.1:0\"\n[processor]\nsnapshot_seconds = 1\n\
                 [kafka]\nbrokers = \"127.0.0.1:{port}\"\ngroup_id = \"{group}\"\nenriched_topic = \"{enriched}\"\n\
                 partitions = {PARTITIONS}\n\
                 [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n{extra}",
                data = dir.to_str().unwrap(),
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["process", "--config"])
            .arg(&config)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting vigil process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("vigil process listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from vigil process: {line:?}"))
            .to_owned();
        Self { running: Running(child), base }
    }

    async fn get(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// A counter of `/metrics`.
    async fn counter(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base)).await.unwrap().text().await.unwrap();
        let prefix = format!("{name}_total ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    }

    async fn events_applied(&self) -> u64 {
        self.get("/api/v1/state").await["offset"].as_u64().unwrap()
    }

    async fn wait_for_all(&self, what: &str) {
        eventually(what, Duration::from_secs(120), || async { self.events_applied().await == EVENTS as u64 }).await;
    }
}

/// The input: several sources and providers, deferrals with provider signals, hard bounces,
/// complaints.
fn event(i: usize) -> DeliveryEvent {
    let at = DateTime::from_timestamp(1_764_000_000 + i as i64, 0).unwrap();
    let kind = match i % 20 {
        0..=2 => EventKind::Deferred,
        3 => EventKind::Bounced,
        4 => EventKind::Complaint,
        _ => EventKind::Delivered,
    };
    let mut e = DeliveryEvent::new(format!("event-{i}"), SourceKind::Kumomta, kind, at, at);
    let domain = ["gmail.com", "yahoo.com", "outlook.com", "example.org"][i % 4];
    e.egress_source = Some(format!("ip-{}", i % 7));
    e.egress_pool = Some(format!("pool-{}", i % 2));
    e.tenant = Some(format!("tenant-{}", i % 3));
    e.recipient = Some(format!("user{i}@{domain}"));
    e.recipient_domain = Some(domain.into());
    match kind {
        EventKind::Deferred => {
            e.smtp_code = Some(421);
            e.enhanced_status = Some("4.7.0".into());
            e.response_text = Some("[TSS04] Messages from 10.0.0.1 temporarily deferred".into());
        }
        EventKind::Bounced => {
            e.smtp_code = Some(550);
            e.enhanced_status = Some("5.1.1".into());
            e.response_text = Some("user unknown".into());
        }
        _ => {}
    }
    e
}

async fn produce(producer: &FutureProducer, events: impl Iterator<Item = usize>) {
    let mut deliveries = Vec::new();
    for i in events {
        let e = event(i);
        let body = serde_json::to_vec(&e).unwrap();
        let key = e.egress_source.clone().unwrap();
        let record = FutureRecord::to("vigil.events").key(&key).payload(&body);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_killed_agree_with_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start_with(dir.path(), port, "memory://tansu/");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", format!("127.0.0.1:{port}")).create().unwrap();
    let topics: Vec<NewTopic<'_>> = ["vigil.events", "vigil.enriched", "vigil.enriched.single"]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
        result.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("enable.idempotence", "true")
        .create()
        .unwrap();

    let clickhouse = tokio::task::block_in_place(common::clickhouse::ClickHouse::start);
    let with_clickhouse =
        |database: &str| format!("[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\n", clickhouse.url);
    let two = with_clickhouse("two");
    // Two instances in one group; the first half of the input arrives while they run.
    let a = Process::start_with(&dir.path().join("a"), port, "group-two", "vigil.enriched", &two);
    let b = Process::start_with(&dir.path().join("b"), port, "group-two", "vigil.enriched", &two);
    for chunk in (0..EVENTS / 2).step_by(100) {
        produce(&producer, chunk..chunk + 100).await;
    }
    eventually("the first half to be folded", Duration::from_secs(120), || async {
        a.events_applied().await == EVENTS as u64 / 2 && b.events_applied().await == EVENTS as u64 / 2
    })
    .await;
    // One instance dies (SIGKILL) with the rest of the input and re-sent copies arriving, and
    // comes back.
    produce(&producer, EVENTS / 2..EVENTS / 2 + 100).await;
    a.running.stop();
    produce(&producer, 0..RESENT).await;
    for chunk in (EVENTS / 2 + 100..EVENTS).step_by(100) {
        produce(&producer, chunk..chunk + 100).await;
    }
    let a = Process::start_with(&dir.path().join("a"), port, "group-two", "vigil.enriched", &two);
    b.wait_for_all("the surviving instance to fold every event once").await;
    a.wait_for_all("the restarted instance to fold every event once").await;

    // One instance over the same input, in its own group and topic.
    let single = Process::start_with(
        &dir.path().join("single"),
        port,
        "group-one",
        "vigil.enriched.single",
        &with_clickhouse("one"),
    );
    single.wait_for_all("the single instance to fold every event once").await;

    let (two, one) = (b.get("/api/v1/state").await, single.get("/api/v1/state").await);
    assert_eq!(two["digest"], one["digest"], "{two} vs {one}");
    assert!(one["suppressions"].as_u64().unwrap() > 100, "{one}");
    let as_of = "2025-11-24T17:00:00Z";
    for query in [
        format!("/api/v1/reputation?scope=egress_source,provider&window=24h&as_of={as_of}"),
        format!("/api/v1/reputation?scope=provider&window=1h&as_of={as_of}"),
        format!("/api/v1/reputation?scope=tenant&window=24h&as_of={as_of}"),
    ] {
        let expected = single.get(&query).await;
        assert!(!expected["rows"].as_array().unwrap().is_empty(), "{query}: {expected}");
        assert_eq!(b.get(&query).await, expected, "{query}");
    }
    // The survivor ran throughout: it folded each event once and dropped every re-sent copy.
    assert_eq!(b.counter("vigil_processor_folded_events").await, EVENTS as u64);
    assert!(b.counter("vigil_processor_copies_by_event_id_events").await >= RESENT as u64);
    assert_eq!(b.counter("vigil_processor_undecodable_records").await, 0);
    let yahoo = single.get(&format!("/api/v1/reputation?scope=provider&window=24h&as_of={as_of}")).await;
    let row = yahoo["rows"].as_array().unwrap().iter().find(|r| r["provider"] == "yahoo").unwrap().clone();
    assert!(row["signals_by_name"]["yahoo_tss04"].as_u64().unwrap() > 0, "{row}");

    // ClickHouse holds each event once in both databases, and answers alike.
    let count = |database: &str| {
        tokio::task::block_in_place(|| {
            clickhouse.query(&format!("SELECT count(), uniqExact(event_id) FROM {database}.events"))
        })
    };
    for database in ["two", "one"] {
        eventually("the sinks to insert every event", Duration::from_secs(60), || async {
            count(database) == format!("{EVENTS}\t{EVENTS}\n")
        })
        .await;
    }
    let range = "from=2025-11-24T00:00:00Z&to=2025-11-26T00:00:00Z";
    for query in [
        format!("/api/v1/summary?group_by=egress_source,provider,kind&{range}"),
        format!("/api/v1/reputation?scope=tenant&{range}"),
        format!("/api/v1/bounces?{range}"),
    ] {
        let expected = single.get(&query).await;
        assert!(expected.to_string().len() > 200, "{query}: {expected}");
        assert_eq!(b.get(&query).await, expected, "{query}");
    }
    b.running.stop();
    single.running.stop();
    a.running.stop();
    tokio::task::block_in_place(|| drop(clickhouse));
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_on_kafka_reach_kumod_and_the_decisions_topic() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start_with(dir.path(), port, "memory://tansu/");
    let (kumod, calls) = common::recording_kumod().await;
    let process = Process::start_with(
        &dir.path().join("p"),
        port,
        "group-actuation",
        "vigil.enriched",
        &format!("[actuation]\nkumod_url = \"{kumod}\"\n"),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // A Yahoo TSS04 deferral happening now: the shipped Yahoo rule suspends the path at once.
    let now = chrono::Utc::now();
    let mut e = DeliveryEvent::new("tss04-now".into(), SourceKind::Kumomta, EventKind::Deferred, now, now);
    e.egress_source = Some("ip-9".into());
    e.recipient = Some("u@yahoo.com".into());
    e.recipient_domain = Some("yahoo.com".into());
    e.site = Some("ip-9->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client".into());
    e.smtp_code = Some(421);
    e.enhanced_status = Some("4.7.0".into());
    e.response_text = Some("[TSS04] Messages from 10.0.0.9 temporarily deferred".into());
    let body = serde_json::to_vec(&e).unwrap();
    eventually("the events topic to accept the event", Duration::from_secs(60), || async {
        producer.send(FutureRecord::to("vigil.events").key("ip-9").payload(&body), Duration::from_secs(5)).await.is_ok()
    })
    .await;

    eventually("kumod to get the suspension", Duration::from_secs(60), || {
        let calls = std::sync::Arc::clone(&calls);
        async move { calls.lock().unwrap().iter().any(|(_, path, _)| path == "/api/admin/suspend-ready-q/v1") }
    })
    .await;
    let call = calls.lock().unwrap().iter().find(|(_, p, _)| p == "/api/admin/suspend-ready-q/v1").unwrap().clone();
    assert_eq!(call.2["name"], "ip-9->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client");
    let suspended = process.get("/get_suspension_v1/suspended.json").await;
    assert_eq!(suspended["ready_q"][0]["source"], "ip-9");

    // Every decision is also a record of vigil.decisions, keyed by its action.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "decisions-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["vigil.decisions"]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.unwrap().unwrap();
    let decision: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(message.key(), Some(decision["action_key"].as_str().unwrap().as_bytes()));
    let header = message.headers().unwrap().iter().find(|h| h.key == "vigil-decision-id").unwrap();
    assert_eq!(header.value, Some(decision["decision_id"].as_str().unwrap().as_bytes()));
    assert_eq!(decision["target"]["egress_source"], "ip-9");
    process.running.stop();
}

/// Relay webhooks into `vigil ingest`, through the broker, counted by `vigil process` like MTA
/// events.
#[tokio::test(flavor = "multi_thread")]
async fn relay_webhooks_through_ingest_count_in_reputation() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start_with(dir.path(), port, "memory://tansu/");
    let ingest_dir = dir.path().join("ingest");
    std::fs::create_dir_all(&ingest_dir).unwrap();
    let config = ingest_dir.join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"127.0.0.1:{port}\"\npartitions = {PARTITIONS}\n\
             [relays.postmark]\nbasic_auth = {{ username = \"postmark\", password = \"s3cret\" }}\n",
            data = ingest_dir.to_str().unwrap(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["ingest", "--config"])
        .arg(&config)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting vigil ingest");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ingest = Running(child);
    let base = line.trim().strip_prefix("vigil ingest listening on ").unwrap().to_owned();
    let process = Process::start_with(&dir.path().join("p"), port, "group-relays", "vigil.enriched", "");

    // A Postmark delivery and a hard bounce to Gmail addresses, happening now.
    let now = chrono::Utc::now().to_rfc3339();
    let fixture = |name: &str| -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/relays/postmark").join(name);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let mut delivery = fixture("anymail_delivery.json");
    delivery["Recipient"] = "alice@gmail.com".into();
    delivery["DeliveredAt"] = now.clone().into();
    let mut bounce = fixture("anymail_bounce_hard.json");
    bounce["Email"] = "bob@gmail.com".into();
    bounce["BouncedAt"] = now.into();
    let http = reqwest::Client::new();
    for body in [delivery, bounce] {
        let response = http
            .post(format!("{base}/ingest/postmark"))
            .basic_auth("postmark", Some("s3cret"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    eventually("vigil process to count the relay's events", Duration::from_secs(120), || async {
        let body = process.get("/api/v1/reputation?scope=provider").await;
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["provider"] == "google" && r["delivered"] == 1 && r["bounced"] == 1 && r["hard_bounces"] == 1)
    })
    .await;
    let suppressed = process.get("/api/v1/suppressions").await;
    assert!(suppressed.to_string().contains("bob@gmail.com"), "{suppressed}");
    ingest.stop();
    process.running.stop();
}
