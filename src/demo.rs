//! `vigil run --demo`: realistic synthetic KumoMTA traffic through the real normaliser and log.
//!
//! Four egress sources send to five providers. On an empty log the last hour is back-filled so
//! the dashboards have data at once; then traffic flows live. Yahoo starts deferring one IP
//! (`ip-3`) with TSS04 complaints-based deferrals, growing over ten minutes, which is the
//! pattern an analyst should spot in `/api/v1/reputation`.

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use vigil_log::EventLog;

const SOURCES: [(&str, &str); 4] =
    [("ip-1", "10.0.0.1"), ("ip-2", "10.0.0.2"), ("ip-3", "10.0.0.3"), ("ip-4", "10.0.0.4")];
/// (recipient domain, MX site as KumoMTA factors it, MX host, provider weight).
/// (recipient domain, KumoMTA site's MX part, the MX host, weight). The last three are
/// companies' own domains: two hosted by Microsoft 365 and Google Workspace (their MX says
/// so, and Vigil counts them under `microsoft` and `google`), one on its own server (`other`).
const DESTINATIONS: [(&str, &str, &str, u32); 8] = [
    ("gmail.com", "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com", "gmail-smtp-in.l.google.com", 40),
    ("outlook.com", "outlook-com.olc.protection.outlook.com", "outlook-com.olc.protection.outlook.com", 20),
    ("hotmail.com", "hotmail-com.olc.protection.outlook.com", "hotmail-com.olc.protection.outlook.com", 8),
    ("yahoo.com", "(mta5|mta6|mta7).am0.yahoodns.net", "mta5.am0.yahoodns.net", 18),
    ("icloud.com", "mx0(1|2).mail.icloud.com", "mx01.mail.icloud.com", 8),
    (
        "northwind.example",
        "northwind-example.mail.protection.outlook.com",
        "northwind-example.mail.protection.outlook.com",
        4,
    ),
    ("contoso-labs.example", "(alt1|alt2)?.aspmx.l.google.com", "aspmx.l.google.com", 4),
    ("example-corp.com", "mx.example-corp.com", "mx.example-corp.com", 6),
];
const TENANTS: [(&str, &str); 3] = [("acme", "newsletter"), ("acme", "receipts"), ("globex", "spring-sale")];
const NODE: &str = "557f3ad4-2c8c-11ee-976e-782d7e12e173";
/// Messages per second of live traffic.
const RATE: u32 = 40;

/// Feeds traffic until `shutdown`.
pub async fn run(log: EventLog, shutdown: CancellationToken) {
    let started = Utc::now();
    if log.head() == 0 {
        append(&log, backfill(started)).await;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        append(&log, batch(Utc::now(), started, RATE as usize)).await;
    }
}

async fn append(log: &EventLog, records: Vec<String>) {
    let log = log.clone();
    let stored = tokio::task::spawn_blocking(move || {
        vigil_ingest::kumomta::append_records(
            &log,
            "demo",
            records.iter().enumerate().map(|(i, r)| (format!("demo {i}"), r.as_bytes())),
        )
    })
    .await;
    match stored {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "demo traffic not stored"),
        Err(error) => tracing::warn!(%error, "demo task failed"),
    }
}

/// The hour before `started`, at twice the live rate, so the dashboards have data at once.
fn backfill(started: DateTime<Utc>) -> Vec<String> {
    (0..3600).step_by(10).flat_map(|ago| batch(started - TimeDelta::seconds(ago), started, RATE as usize * 2)).collect()
}

/// `count` messages at `at`; the Yahoo deferral of `ip-3` ramps up from `started`.
fn batch(at: DateTime<Utc>, started: DateTime<Utc>, count: usize) -> Vec<String> {
    let mut rng = rand::rng();
    let ramp = ((at - started).num_seconds().max(0) as f64 / 600.0).min(1.0);
    let mut records = Vec::with_capacity(count * 2);
    for _ in 0..count {
        let (source, ip) = *SOURCES.choose(&mut rng).expect("sources");
        let (domain, site, mx, _) =
            *DESTINATIONS.choose_weighted(&mut rng, |d| d.3).expect("destinations have weights");
        let (tenant, campaign) = *TENANTS.choose(&mut rng).expect("tenants");
        let message = Message {
            at,
            source,
            ip,
            domain,
            site,
            mx,
            tenant,
            campaign,
            id: format!("{:032x}", rng.random::<u128>()),
        };
        let roll: f64 = rng.random();
        let yahoo_block = domain == "yahoo.com" && source == "ip-3" && roll < 0.1 + 0.6 * ramp;
        if yahoo_block {
            records.push(message.record("TransientFailure", 421, Some((4, 7, 0)),
                &format!("[TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes")));
        } else if roll < 0.015 {
            records.push(message.record("Bounce", 550, Some((5, 1, 1)), &bounce_text(domain)));
        } else if roll < 0.05 {
            records.push(message.record(
                "TransientFailure",
                451,
                Some((4, 3, 0)),
                "Temporary server error. Please try again later",
            ));
            records.push(message.record("Delivery", 250, Some((2, 0, 0)), "OK queued"));
        } else {
            records.push(message.record("Delivery", 250, Some((2, 0, 0)), "OK queued"));
            if roll > 0.9985 {
                records.push(message.feedback());
            }
        }
    }
    records
}

fn bounce_text(domain: &str) -> String {
    match domain {
        "gmail.com" => "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser".into(),
        "yahoo.com" => "[PH01] Email not accepted for policy reasons. Please visit https://postmaster.yahooinc.com/error-codes".into(),
        "outlook.com" | "hotmail.com" => "Requested action not taken: mailbox unavailable (S2017062302)".into(),
        _ => "<user>: Recipient address rejected: User unknown in virtual mailbox table".into(),
    }
}

struct Message<'a> {
    at: DateTime<Utc>,
    source: &'a str,
    ip: &'a str,
    domain: &'a str,
    site: &'a str,
    mx: &'a str,
    tenant: &'a str,
    campaign: &'a str,
    id: String,
}

impl Message<'_> {
    fn base(&self, kind: &str) -> Value {
        json!({
            "type": kind,
            "id": self.id,
            "sender": format!("bounces@{}.example.net", self.tenant),
            "recipient": format!("user{}@{}", &self.id[..6], self.domain),
            "queue": format!("{}:{}@{}", self.campaign, self.tenant, self.domain),
            "site": format!("{}->{}@smtp_client", self.source, self.site),
            "size": 24_576,
            "timestamp": self.at.timestamp(),
            "event_time": self.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "created": self.at.timestamp() - 2,
            "num_attempts": 1,
            "bounce_classification": "Uncategorized",
            "egress_pool": "pool-a",
            "egress_source": self.source,
            "source_address": { "address": format!("{}:41000", self.ip) },
            "meta": { "tenant": self.tenant, "campaign": self.campaign },
            "headers": {},
            "nodeid": NODE,
        })
    }

    fn record(&self, kind: &str, code: u16, enhanced: Option<(u8, u16, u16)>, content: &str) -> String {
        let mut record = self.base(kind);
        record["response"] = json!({
            "code": code,
            "enhanced_code": enhanced.map(|(class, subject, detail)| json!({"class": class, "subject": subject, "detail": detail})),
            "content": content,
            "command": ".\r\n",
        });
        record["peer_address"] = json!({ "name": self.mx, "addr": "192.0.2.25" });
        record.to_string()
    }

    /// A complaint as kumod logs an ARF report: addressed to the feedback mailbox, from the
    /// provider's reporting host, naming the complainer and the `X-KumoRef` trace (tenant and
    /// campaign; kumod cannot carry the egress source, which Vigil joins from the delivery).
    fn feedback(&self) -> String {
        let mut record = self.base("Feedback");
        let complainer = record["recipient"].clone();
        record["recipient"] = json!(format!("fbl@fbl.{}.example.net", self.tenant));
        record["sender"] = json!(format!("feedback@{}", self.domain));
        record["queue"] = json!(format!("fbl.{}.example.net", self.tenant));
        record["site"] = json!("");
        record["egress_pool"] = Value::Null;
        record["egress_source"] = Value::Null;
        record["source_address"] = Value::Null;
        record["num_attempts"] = json!(0);
        record["response"] = json!({ "code": 250, "enhanced_code": null, "content": "", "command": null });
        record["peer_address"] = json!({ "name": format!("feedback.{}", self.domain), "addr": "192.0.2.80" });
        let user_agent = match self.domain {
            "outlook.com" | "hotmail.com" => "Microsoft JMRP",
            _ => "Yahoo!-Mail-Feedback/2.0",
        };
        record["feedback_report"] = json!({
            "feedback_type": "abuse", "user_agent": user_agent, "version": "1",
            "arrival_date": self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "original_rcpto_to": [complainer],
            "supplemental_trace": { "recipient": complainer, "tenant": self.tenant, "campaign": self.campaign },
        });
        // A complaint arrives later than the delivery it reports.
        record["timestamp"] = json!(self.at.timestamp() + 1);
        record["event_time"] =
            json!((self.at + TimeDelta::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        record.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(log: &EventLog, records: &[String]) {
        vigil_ingest::kumomta::append_records(
            log,
            "demo",
            records.iter().enumerate().map(|(i, r)| (format!("demo {i}"), r.as_bytes())),
        )
        .unwrap();
    }

    /// The demo's company domains count under the provider that hosts their mail, as the MX
    /// in KumoMTA's records says.
    #[test]
    fn company_domains_count_under_the_provider_their_mx_names() {
        let enricher = vigil_processor::Enricher::bundled();
        let mut seen = std::collections::BTreeMap::new();
        for record in batch(Utc::now(), Utc::now(), 2000) {
            for mut event in vigil_ingest::kumomta::normalise_record(&record, Utc::now()).unwrap() {
                enricher.enrich(&mut event);
                if let (Some(domain), Some(provider)) = (event.recipient_domain.clone(), event.provider.clone()) {
                    seen.insert(domain, provider);
                }
            }
        }
        assert_eq!(seen.get("northwind.example").map(String::as_str), Some("microsoft"), "{seen:?}");
        assert_eq!(seen.get("contoso-labs.example").map(String::as_str), Some("google"), "{seen:?}");
        assert_eq!(seen.get("example-corp.com").map(String::as_str), Some("other"), "{seen:?}");
    }

    /// The demo's traffic as `vigil run --demo` stores it (the back-filled hour in one batch,
    /// then a batch a second) until the log holds 100 000 events: the log's directory on
    /// disk, raw records included, takes under 300 bytes an event (about 2 100 as plain JSON).
    #[test]
    fn the_demo_log_takes_under_300_bytes_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("log")).unwrap();
        let started = Utc::now();
        store(&log, &backfill(started));
        let mut second = 0;
        while log.head() < 100_000 {
            second += 1;
            store(&log, &batch(started + TimeDelta::seconds(second), started, RATE as usize));
        }
        let events = log.head();
        drop(log);
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir.path().join("log")).unwrap() {
            let meta = entry.unwrap().metadata().unwrap();
            // Whichever is larger: the file's length or the blocks it holds.
            bytes += meta.len().max(std::os::unix::fs::MetadataExt::blocks(&meta) * 512);
        }
        let per_event = bytes as f64 / events as f64;
        println!("demo log: {events} events, {bytes} bytes, {per_event:.0} bytes an event");
        assert!(per_event < 300.0, "{per_event:.0} bytes an event ({bytes} bytes for {events} events)");
    }
}
