//! Relay webhooks through `vigil run`, per core, beside the KumoMTA log hook on the same number
//! of events in the same run (issue 17).
//!
//! - Anchor, the log hook: `POST /ingest/kumomta` with arrays of 100 KumoMTA records (a
//!   batching `log_hooks:new` policy), until every record is stored.
//! - Webhooks: `POST /ingest/sendgrid` with arrays of 100 SendGrid events, each request signed
//!   with an ECDSA P-256 key made for the run (so every request is verified, as in production),
//!   until every event is stored.
//!
//! - MX lookups (issue 22): the same SendGrid traffic to 1 000 company domains, with `[dns]`
//!   looking up their MX from Debian's `dnsmasq` on loopback, the cache warmed first (one
//!   event per domain, until every lookup has answered); anchor, the same traffic with DNS off.
//!
//! `vigil run` is pinned to one core (`taskset -c 0`) and the clients to the other, so the
//! rate is per core. Each side runs twice, alternating, on a fresh data directory; the better
//! run of each is kept. Not a criterion bench: one end-to-end run per side is the measurement.
//! `cargo test --all-targets` runs it without `--bench`: then it only checks the paths work.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

mod common;

use common::Vigil;

const EVENTS: usize = 100_000;
const SMOKE_EVENTS: usize = 400;
const PER_REQUEST: usize = 100;
const CONNECTIONS: usize = 4;
/// Company domains of the MX side.
const DOMAINS: usize = 1000;

/// dnsmasq on a loopback port with an MX for each company domain; stopped when dropped.
struct Dns(std::process::Child, u16);

impl Dns {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let binary = std::env::var("VIGIL_DNSMASQ").unwrap_or_else(|_| "/usr/sbin/dnsmasq".into());
        let child = Command::new(&binary)
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll"])
            .args([
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--user=root",
                "--local=/example/",
            ])
            .arg(format!("--port={port}"))
            .args(
                (0..DOMAINS)
                    .map(|i| format!("--mx-host=corp{i}.example,corp{i}-example.mail.protection.outlook.com,10")),
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (apt-get install dnsmasq-base)"));
        Self(child, port)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vigil run` on one core, when `taskset` is there; `dns` turns its lookups on.
fn start(data: &Path, config: &Path, dns: bool) -> Vigil {
    let pinned = Command::new("taskset").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut command = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", env!("CARGO_BIN_EXE_vigil")]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
    };
    command
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .arg("--max-ingest-in-flight")
        .arg("64")
        .env("VIGIL_DNS", if dns { "true" } else { "false" });
    common::start(command)
}

fn kumomta_bodies(events: usize) -> Vec<(Vec<(String, String)>, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kumomta/examples.jsonl");
    let examples: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
    let records: Vec<String> =
        (0..events).map(|n| examples[n % 4].replacen("\"id\":\"", &format!("\"id\":\"{n:08}"), 1)).collect();
    records.chunks(PER_REQUEST).map(|chunk| (Vec::new(), format!("[{}]", chunk.join(",")))).collect()
}

/// SendGrid batches of `PER_REQUEST` events (a realistic mix) to `recipient(n)`, each signed;
/// event ids from `first`.
fn sendgrid_bodies(
    events: usize,
    first: usize,
    key: &EcdsaKeyPair,
    recipient: impl Fn(usize) -> String,
) -> Vec<(Vec<(String, String)>, String)> {
    let rng = SystemRandom::new();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    (first..first + events)
        .collect::<Vec<_>>()
        .chunks(PER_REQUEST)
        .map(|chunk| {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .map(|&n| {
                    let (event, extra) = match n % 10 {
                        0 => ("deferred", serde_json::json!({"response": "421 4.7.0 try again later", "attempt": "2"})),
                        1 => ("bounce", serde_json::json!({"reason": "550 5.1.1 The email account does not exist", "status": "5.1.1", "type": "bounce"})),
                        2 => ("open", serde_json::json!({"useragent": "Mozilla/5.0", "ip": "198.51.100.7"})),
                        _ => ("delivered", serde_json::json!({"response": "250 2.0.0 OK"})),
                    };
                    let mut item = serde_json::json!({
                        "email": recipient(n), "timestamp": 1_765_000_000 + n, "event": event,
                        "sg_event_id": format!("ev-{n:010}"), "sg_message_id": format!("msg{n}.filter0001"),
                        "smtp-id": format!("<msg{n}@ismtpd>"), "ip": "167.89.17.173", "category": "newsletter",
                        "tenant": "acme",
                    });
                    item.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
                    item
                })
                .collect();
            let body = serde_json::to_string(&items).unwrap();
            let signed = [timestamp.as_bytes(), body.as_bytes()].concat();
            let signature = BASE64.encode(key.sign(&rng, &signed).unwrap().as_ref());
            let headers = vec![
                ("x-twilio-email-event-webhook-signature".to_owned(), signature),
                ("x-twilio-email-event-webhook-timestamp".to_owned(), timestamp.clone()),
            ];
            (headers, body)
        })
        .collect()
}

/// Posts every body over `CONNECTIONS` connections; events per second until all are stored.
async fn post_all(base: &str, path: &str, bodies: &[(Vec<(String, String)>, String)], events: usize) -> f64 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..CONNECTIONS {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        let mine: Vec<_> = bodies.iter().skip(lane).step_by(CONNECTIONS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut stored = 0;
            for (headers, body) in mine {
                loop {
                    let mut request = client.post(&url).body(body.clone());
                    for (name, value) in &headers {
                        request = request.header(name, value);
                    }
                    let response = request.send().await.unwrap();
                    if response.status() == 503 {
                        continue;
                    }
                    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                    let answer: serde_json::Value = response.json().await.unwrap();
                    stored += answer["events"].as_u64().unwrap() + answer["duplicates"].as_u64().unwrap();
                    break;
                }
            }
            stored
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(stored as usize, events, "every event stored");
    events as f64 / elapsed
}

/// Posts one event per company domain and waits until every MX lookup has answered.
async fn warm(vigil: &Vigil, warmup: &[(Vec<(String, String)>, String)]) {
    post_all(&vigil.base, "/ingest/sendgrid", warmup, DOMAINS).await;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", vigil.base)).await.unwrap().text().await.unwrap();
        let resolved: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("vigil_dns_mx_lookups_total{outcome=\"resolved\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if resolved >= DOMAINS as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "MX lookups answered: {resolved} of {DOMAINS}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The company domains' events count under the provider their MX names.
async fn assert_counted_under_microsoft(vigil: &Vigil) {
    let url = format!("{}/api/v1/providers?domain=corp7.example", vigil.base);
    let answer: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(answer["provider"], "microsoft", "{answer}");
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let events = if measure { EVENTS } else { SMOKE_EVENTS };
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let public = BASE64.encode(key.public_key().as_der().unwrap().as_ref());
    let dns = Dns::start();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[relays.sendgrid]\npublic_key = \"{public}\"\n[dns]\nservers = [\"127.0.0.1:{}\"]\nblocklists = []\ndomain_blocklists = []\n",
            dns.1
        ),
    )
    .unwrap();
    let hook = kumomta_bodies(events);
    let webhooks = sendgrid_bodies(events, 0, &key, |n| format!("user{n}@gmail.com"));
    let company = |n: usize| format!("user{n}@corp{}.example", n % DOMAINS);
    let warmup = sendgrid_bodies(DOMAINS, events, &key, company);
    let companies = sendgrid_bodies(events, 0, &key, company);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut best = std::collections::BTreeMap::<&str, f64>::new();
    for round in 0..if measure { 2 } else { 1 } {
        for (side, path, bodies, lookups) in [
            ("hook", "/ingest/kumomta", &hook, false),
            ("sendgrid", "/ingest/sendgrid", &webhooks, false),
            ("companies", "/ingest/sendgrid", &companies, false),
            ("companies_mx", "/ingest/sendgrid", &companies, true),
        ] {
            let vigil = start(&dir.path().join(format!("{side}-{round}")), &config, lookups);
            if lookups {
                runtime.block_on(warm(&vigil, &warmup));
            }
            let rate = runtime.block_on(post_all(&vigil.base, path, bodies, events));
            if lookups {
                runtime.block_on(assert_counted_under_microsoft(&vigil));
            }
            drop(vigil);
            let kept = best.entry(side).or_default();
            *kept = kept.max(rate);
        }
    }
    let (hook_rate, webhook_rate) = (best["hook"], best["sendgrid"]);
    if !measure {
        println!("webhooks: the paths work ({events} events each); run `scripts/bench` to measure");
        return;
    }
    let result = serde_json::json!({
        "events": events,
        "per_request": PER_REQUEST,
        "connections": CONNECTIONS,
        "hook_per_s": hook_rate,
        "sendgrid_per_s": webhook_rate,
        "ratio": webhook_rate / hook_rate,
        "domains": DOMAINS,
        "companies_per_s": best["companies"],
        "companies_mx_per_s": best["companies_mx"],
        "mx_ratio": best["companies_mx"] / best["companies"],
        "commit": std::env::var("VIGIL_BENCH_COMMIT").unwrap_or_default(),
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
    });
    println!("webhooks: {result}");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::fs::write(Path::new(&target).join("webhooks.json"), result.to_string()).unwrap();
}
