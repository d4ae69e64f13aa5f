//! `vigil ingest` against a real Kafka-protocol broker (tansu, started here on a loopback port
//! with sqlite storage, as DESIGN §10 describes; `scripts/test` installs it).
//!
//! Lines appended to a KumoMTA log directory, a Postfix maillog and a PowerMTA accounting file
//! must arrive in `vigil.events` once each, keyed by egress source (else recipient domain):
//! 1. in normal operation, exactly once;
//! 2. with the broker stopped for 30 s while lines keep coming, and restarted: the file tails,
//!    which send straight to the broker while it acknowledges, spill to the on-disk buffer, and
//!    nothing is lost;
//! 3. with ingest killed (SIGKILL) mid-stream and restarted: nothing lost, and every extra copy
//!    is the same event (same `event_id`, key and fields; only `ingested_at`, when the line was
//!    read again, may differ), so dedupe by `event_id` restores exactly once — which the test
//!    applies and checks.

#![allow(clippy::unwrap_used)]

mod common;

use common::broker::{Broker, Running};
use common::{free_port, wait_until};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};

const PARTITIONS: i32 = 3;

/// A running `vigil ingest`.
struct Ingest {
    process: Running,
    base: String,
}

impl Ingest {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["ingest", "--config"])
            .arg(config)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting vigil ingest");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("vigil ingest listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from vigil ingest: {line:?}"))
            .to_owned();
        Self { process: Running(child), base }
    }

    /// A counter or gauge from `/metrics`, summed over its labels.
    fn metric(&self, name: &str) -> f64 {
        let body = reqwest::blocking::get(format!("{}/metrics", self.base)).unwrap().text().unwrap();
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn kill9(self) {
        self.process.stop();
    }
}

/// The three sources' files, and lines appended to them in the formats' own shapes.
struct Files {
    kumomta: PathBuf,
    postfix: PathBuf,
    powermta: PathBuf,
    template: Value,
}

impl Files {
    fn new(dir: &Path) -> Self {
        let kumomta_dir = dir.join("kumomta");
        std::fs::create_dir_all(&kumomta_dir).unwrap();
        let powermta = dir.join("acct.csv");
        std::fs::write(
            &powermta,
            "type,timeLogged,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMTA,bounceCat,srcType,srcMTA,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool\n",
        )
        .unwrap();
        let template = common::example_records()
            .iter()
            .map(|r| serde_json::from_str::<Value>(r).unwrap())
            .find(|r| r["type"] == "Delivery")
            .unwrap();
        Self { kumomta: kumomta_dir.join("20261125-000000"), postfix: dir.join("maillog"), powermta, template }
    }

    /// Appends records `from..to` of each format.
    fn append(&self, range: std::ops::Range<u32>) {
        let mut kumomta = String::new();
        let mut postfix = String::new();
        let mut powermta = String::new();
        for i in range {
            let domain = format!("dom{}.example", i % 7);
            let mut record = self.template.clone();
            record["id"] = json!(format!("{i:032x}"));
            record["recipient"] = json!(format!("k{i}@{domain}"));
            record["egress_source"] = if i % 4 == 0 { Value::Null } else { json!(format!("ip-{}", i % 3)) };
            record["timestamp"] = json!(1_764_028_800 + i);
            kumomta.push_str(&record.to_string());
            kumomta.push('\n');
            postfix.push_str(&format!(
                "Nov 25 10:{:02}:{:02} mx postfix/smtp[100]: {i:010X}: to=<p{i}@{domain}>, relay=mx.{domain}[192.0.2.{}]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as Q{i})\n",
                (i / 60) % 60,
                i % 60,
                i % 250
            ));
            powermta.push_str(&format!(
                "d,2026-11-25 10:00:00,sender@example.com,m{i}@{domain},,delivered,2.0.0,250 OK,,,,,,192.0.2.{},198.51.100.1,,1234,vmta{},job-{i},env-{i},{domain},pool\n",
                i % 5,
                i % 5
            ));
        }
        for (path, text) in [(&self.kumomta, kumomta), (&self.postfix, postfix), (&self.powermta, powermta)] {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            file.write_all(text.as_bytes()).unwrap();
        }
    }

    /// What the topic must hold: event id -> key, from `vigil parse` on the files as they are.
    fn expected(&self) -> BTreeMap<String, String> {
        [("kumomta", &self.kumomta), ("postfix", &self.postfix), ("powermta", &self.powermta)]
            .into_iter()
            .flat_map(|(format, path)| expected_events(format, path))
            .collect()
    }
}

/// The events of one file, as `vigil parse` prints them: event id -> the record key they must
/// have (egress source, else recipient domain).
fn expected_events(format: &str, path: &Path) -> BTreeMap<String, String> {
    let out = common::run_vigil(&["parse", "--from", format, path.to_str().unwrap()], b"");
    // The one bad KumoMTA line makes the exit code 1; the events are still printed.
    assert!(out.code == 0 || out.stderr.contains("line "), "vigil parse --from {format}: {}", out.stderr);
    out.json
        .iter()
        .map(|event| {
            let key = event["egress_source"]
                .as_str()
                .filter(|s| !s.is_empty())
                .or(event["recipient_domain"].as_str())
                .unwrap_or("");
            (event["event_id"].as_str().unwrap().to_owned(), key.to_owned())
        })
        .collect()
}

/// Everything read from `vigil.events`: event id -> copies of (key, payload).
#[derive(Default)]
struct Topic {
    copies: BTreeMap<String, Vec<(String, Vec<u8>)>>,
    messages: usize,
}

impl Topic {
    fn poll(&mut self, consumer: &BaseConsumer) {
        while let Some(message) = consumer.poll(Duration::from_millis(100)) {
            // The broker being restarted shows as transport errors; the consumer reconnects.
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    eprintln!("consumer: {error}");
                    return;
                }
            };
            let headers = message.headers().expect("every record has headers");
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).unwrap())
                    .unwrap_or_else(|| panic!("header {name} missing"))
            };
            assert_eq!(header("vigil-schema-version"), vigil_schemas::SCHEMA_VERSION.to_string());
            let payload = message.payload().unwrap().to_vec();
            let event: Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(header("vigil-source"), event["source"].as_str().unwrap());
            assert_eq!(header("vigil-event-id"), event["event_id"].as_str().unwrap());
            let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap();
            self.copies.entry(event["event_id"].as_str().unwrap().to_owned()).or_default().push((key, payload));
            self.messages += 1;
        }
    }

    /// Polls until every expected event is there (or panics after `timeout`).
    fn wait_for(&mut self, consumer: &BaseConsumer, expected: &BTreeMap<String, String>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll(consumer);
            if expected.keys().all(|id| self.copies.contains_key(id)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} events arrived within {timeout:?}",
                expected.keys().filter(|id| self.copies.contains_key(*id)).count(),
                expected.len()
            );
        }
    }

    /// Downstream dedupe by `event_id`, checked: every copy of an event is the same record,
    /// with the same key. A copy read again from the file (after a spill or a crash) was
    /// ingested again, so only its `ingested_at` may differ.
    fn deduplicated(&self) -> BTreeMap<String, String> {
        let record = |(key, payload): &(String, Vec<u8>)| {
            let mut event: Value = serde_json::from_slice(payload).unwrap();
            event.as_object_mut().unwrap().remove("ingested_at").expect("every event says when it was ingested");
            (key.clone(), event)
        };
        self.copies
            .iter()
            .map(|(id, copies)| {
                assert!(copies.windows(2).all(|w| record(&w[0]) == record(&w[1])), "copies of {id} differ");
                (id.clone(), copies[0].0.clone())
            })
            .collect()
    }

    fn duplicates(&self) -> usize {
        self.messages - self.copies.len()
    }
}

fn consumer(port: u16, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "vigil-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

#[test]
fn files_in_three_formats_reach_the_topic_once_each_across_broker_and_ingest_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let port = free_port();
    let mut broker = Broker::start(&broker_dir, port);

    let files = Files::new(dir.path());
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
listen = "127.0.0.1:0"

[sources]
kumomta_logs = ["{kumomta}"]
postfix_logs = ["{postfix}"]
powermta_accounting = ["{powermta}"]
tail_interval_ms = 50

[kafka]
brokers = "127.0.0.1:{port}"
partitions = {PARTITIONS}
spill_after_ms = 2000
"#,
            data = dir.path().join("data").display(),
            kumomta = files.kumomta.parent().unwrap().display(),
            postfix = files.postfix.display(),
            powermta = files.powermta.display(),
        ),
    )
    .unwrap();
    let mut ingest = Ingest::start(&config);

    // 1. Normal operation: exactly once, right keys, and a bad line goes to the dead letters.
    files.append(0..300);
    std::fs::OpenOptions::new().append(true).open(&files.kumomta).unwrap().write_all(b"{not json\n").unwrap();
    let expected = files.expected();
    assert_eq!(expected.len(), 900);
    let events = consumer(port, "vigil.events");
    let mut topic = Topic::default();
    topic.wait_for(&events, &expected, Duration::from_secs(120));
    assert_eq!(topic.duplicates(), 0, "normal operation delivers each event once");
    assert_eq!(topic.deduplicated(), expected, "every event, with its key, and nothing else");
    let dead_letters = consumer(port, "vigil.deadletter");
    wait_until("the bad line in vigil.deadletter", Duration::from_secs(60), || {
        dead_letters.poll(Duration::from_millis(100)).is_some_and(|m| {
            let m = m.unwrap();
            let letter: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            m.key() == Some(b"kumomta-file".as_slice()) && letter["raw"].as_str().unwrap_or("").contains("{not json")
        })
    });

    wait_until("the shipping metrics to count it all", Duration::from_secs(30), || {
        ingest.metric("vigil_ingest_shipped_events_total") >= 900.0
            && ingest.metric("vigil_ingest_shipped_dead_letters_total") >= 1.0
    });

    // So far the tails sent straight to the broker: nothing went through the on-disk buffer.
    assert_eq!(ingest.metric("vigil_ingest_ship_spills_total"), 0.0);

    // 2. The broker goes away for 30 s while lines keep coming. The tails' sends go
    //    unacknowledged, so after `spill_after_ms` they spill: the new lines are read again
    //    from the acknowledged checkpoints into the on-disk buffer.
    broker.stop();
    let stopped = Instant::now();
    files.append(300..600);
    wait_until("ingest to buffer the new lines on disk", Duration::from_secs(60), || {
        ingest.metric("vigil_ingest_ship_spills_total") >= 1.0
            && ingest.metric("vigil_ingest_buffer_depth_events") >= 900.0
    });
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    broker = Broker::start(&broker_dir, port);
    let expected = files.expected();
    assert_eq!(expected.len(), 1800);
    topic.wait_for(&events, &expected, Duration::from_secs(180));
    assert_eq!(topic.deduplicated(), expected, "nothing lost across the broker restart");
    let after_broker_restart = topic.duplicates();

    // 3. Ingest is killed mid-stream and restarted.
    files.append(600..3600);
    wait_until("part of the new lines to be shipped", Duration::from_secs(120), || {
        topic.poll(&events);
        topic.copies.len() > 1800
    });
    ingest.kill9();
    let shipped_before_kill = topic.copies.len();
    ingest = Ingest::start(&config);
    let expected = files.expected();
    assert_eq!(expected.len(), 10_800);
    topic.wait_for(&events, &expected, Duration::from_secs(300));
    assert!(shipped_before_kill < expected.len(), "the kill came mid-stream");
    assert_eq!(topic.deduplicated(), expected, "nothing lost, and dedupe by event_id leaves each event once");
    eprintln!(
        "kafka_ingest: {} records in the topic for {} events; {} duplicates after the broker restart, {} after the ingest kill",
        topic.messages,
        expected.len(),
        after_broker_restart,
        topic.duplicates() - after_broker_restart
    );
    drop(ingest);
    drop(broker);
}

#[test]
fn a_full_buffer_pauses_tails_and_answers_503_until_the_broker_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let port = free_port(); // nothing listens there yet
    let files = Files::new(dir.path());
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
listen = "127.0.0.1:0"

[sources]
kumomta_logs = ["{kumomta}"]
tail_interval_ms = 50

[kafka]
brokers = "127.0.0.1:{port}"
partitions = {PARTITIONS}

[buffer]
max_events = 100
"#,
            data = dir.path().join("data").display(),
            kumomta = files.kumomta.parent().unwrap().display(),
        ),
    )
    .unwrap();
    let ingest = Ingest::start(&config);

    // The tail fills the buffer to its limit and pauses. One append may overshoot the limit by
    // a tail batch (8 MiB of input, about 5 000 of these records), so the file holds several.
    files.append(0..20_000);
    wait_until("the buffer to fill", Duration::from_secs(60), || ingest.metric("vigil_ingest_events_total") >= 100.0);
    let record = files.template.to_string();
    let http = reqwest::blocking::Client::new();
    let response = http.post(format!("{}/ingest/kumomta", ingest.base)).body(record).send().unwrap();
    assert_eq!(response.status(), 503, "a full buffer refuses the hook");
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.text().unwrap().contains("buffer full"));
    let buffered = ingest.metric("vigil_ingest_events_total");
    assert!(buffered < 20_000.0, "the tail paused at the limit ({buffered} events taken)");

    // The broker comes: the buffer drains, the tail resumes, every line arrives.
    let _broker = Broker::start_with(&broker_dir, port, "memory://tansu/");
    let expected = expected_events("kumomta", &files.kumomta);
    assert_eq!(expected.len(), 20_000);
    let events = consumer(port, "vigil.events");
    let mut topic = Topic::default();
    topic.wait_for(&events, &expected, Duration::from_secs(120));
    assert_eq!(topic.deduplicated(), expected);
    assert_eq!(topic.duplicates(), 0);
}
