//! A seeded generator of realistic delivery events for the processor's tests and benchmarks:
//! mostly deliveries, with deferrals (some carrying provider signals), hard and block
//! bounces, complaints, unsubscribes, opens and clicks, our own MTA's internal records, and
//! events arriving out of order or late. Same seed, same events.

#![allow(dead_code, clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

/// Recipient domains over the bundled provider map (the last ones map to `other`).
pub const DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "aol.com",
    "icloud.com",
    "comcast.net",
    "gmx.de",
    "web.de",
    "orange.fr",
    "example.org",
    "corp.example",
];

/// (code, enhanced, text, kind) of the failures generated.
const FAILURES: &[(u16, &str, &str, EventKind)] = &[
    (
        421,
        "4.7.0",
        "[TSS04] Messages from 10.0.0.1 temporarily deferred due to unexpected volume or user complaints",
        EventKind::Deferred,
    ),
    (
        421,
        "4.7.28",
        "Our system has detected an unusual rate of unsolicited mail originating from your IP address",
        EventKind::Deferred,
    ),
    (451, "4.3.0", "Temporary local problem, please try again later", EventKind::Deferred),
    (450, "4.2.1", "The user you are trying to contact is receiving mail too quickly", EventKind::Deferred),
    (550, "5.1.1", "The email account that you tried to reach does not exist", EventKind::Bounced),
    (554, "5.7.1", "Service unavailable; Client host [10.0.0.1] blocked using zen.spamhaus.org", EventKind::Bounced),
    (550, "5.7.1", "Unfortunately, messages from [10.0.0.1] weren't sent. (S3140)", EventKind::Bounced),
    (552, "5.2.2", "Mailbox full", EventKind::Bounced),
];

/// Options of a generated stream.
#[derive(Debug, Clone)]
pub struct Mix {
    pub seed: u64,
    pub sources: usize,
    pub tenants: usize,
    pub campaigns: usize,
    pub start: DateTime<Utc>,
    /// The events' ingest times spread evenly over this many minutes.
    pub minutes: i64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            seed: 7,
            sources: 8,
            tenants: 3,
            campaigns: 20,
            start: DateTime::from_timestamp(1_764_000_000, 0).unwrap(),
            minutes: 36 * 60,
        }
    }
}

/// `count` events of the mix, in ingest order.
pub fn events(mix: &Mix, count: usize) -> Vec<DeliveryEvent> {
    let mut rng = StdRng::seed_from_u64(mix.seed);
    let step_ms = (mix.minutes * 60_000) as f64 / count.max(1) as f64;
    (0..count)
        .map(|i| {
            let ingested = mix.start + Duration::milliseconds((i as f64 * step_ms) as i64);
            let roll: f64 = rng.random();
            let (kind, failure) = if roll < 0.80 {
                (EventKind::Delivered, None)
            } else if roll < 0.92 {
                let f = &FAILURES[rng.random_range(0..FAILURES.len())];
                (f.3, Some(f))
            } else if roll < 0.93 {
                (EventKind::Complaint, None)
            } else if roll < 0.94 {
                (EventKind::Unsubscribe, None)
            } else if roll < 0.97 {
                (EventKind::Open, None)
            } else if roll < 0.98 {
                (EventKind::Click, None)
            } else if roll < 0.99 {
                (EventKind::Expired, None)
            } else {
                (EventKind::Reception, None)
            };
            // Most events are a little behind their ingest; some minutes late; a few from a
            // sender whose clock runs ahead; a few more than a day late.
            let lag = match rng.random_range(0..100) {
                0 => Duration::minutes(rng.random_range(5..90)),
                1 => -Duration::minutes(3),
                2 => Duration::hours(rng.random_range(25..30)),
                _ => Duration::seconds(rng.random_range(0..90)),
            };
            let mut e =
                DeliveryEvent::new(format!("ev-{}-{i}", mix.seed), SourceKind::Kumomta, kind, ingested - lag, ingested);
            let source = rng.random_range(0..mix.sources);
            e.egress_source = Some(format!("ip-{source}"));
            e.egress_pool = Some(format!("pool-{}", source % 3));
            e.sending_ip = Some(format!("10.0.{}.{}", source / 250, source % 250));
            e.tenant = Some(format!("tenant-{}", rng.random_range(0..mix.tenants)));
            e.campaign = Some(format!("campaign-{}", rng.random_range(0..mix.campaigns)));
            e.sender_domain = Some(format!("news{}.example.com", source % 4));
            let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
            e.recipient = Some(format!("user{}@{domain}", rng.random_range(0..5000)));
            e.recipient_domain = Some(domain.to_owned());
            e.internal = rng.random_range(0..100) == 0 && matches!(kind, EventKind::Bounced | EventKind::Deferred);
            if let Some((code, enhanced, text, _)) = failure {
                e.smtp_code = Some(*code);
                e.enhanced_status = Some((*enhanced).to_owned());
                // Real replies carry the IP and a transaction id, so nearly every failure
                // line is new to the classifier's cache.
                let ip = e.sending_ip.as_deref().unwrap_or_default();
                e.response_text =
                    Some(format!("{} [{ip}] {:016x} - gsmtp", text.replace("10.0.0.1", ip), rng.random::<u64>()));
            }
            e
        })
        .collect()
}
