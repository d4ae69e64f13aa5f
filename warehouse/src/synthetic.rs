//! A generated, realistic data set of enriched events, for the backend conformance suite and
//! the query benchmarks: the same seed gives the same events on every machine.
//!
//! The mix follows a bulk sender's: mostly deliveries, a tenth deferrals, a few percent
//! bounces, some expiries, complaints, opens and clicks, receptions (not outcomes), and
//! MTA-generated (`internal`) bounces; over five mailbox providers and unknown domains, eight
//! egress sources in three pools, five tenants, twenty campaigns, four sending domains; bounce
//! classes with the receivers' kind of wording, and some failures left unclassified. Times
//! spread evenly over `days` with jitter in milliseconds, so log order is not time order.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vigil_schemas::{BounceClass, DeliveryEvent, EventKind, SourceKind};

/// (provider, recipient domain, weight); `None` is a domain no provider map knows.
const PROVIDERS: [(Option<&str>, &str, u32); 6] = [
    (Some("gmail"), "gmail.com", 35),
    (Some("yahoo"), "yahoo.com", 20),
    (Some("microsoft"), "outlook.com", 20),
    (Some("apple"), "icloud.com", 10),
    (Some("comcast"), "comcast.net", 5),
    (None, "example.org", 10),
];

/// (kind, weight per mille).
const KINDS: [(EventKind, u32); 10] = [
    (EventKind::Delivered, 778),
    (EventKind::Deferred, 100),
    (EventKind::Bounced, 50),
    (EventKind::Reception, 40),
    (EventKind::Open, 15),
    (EventKind::Click, 4),
    (EventKind::Expired, 5),
    (EventKind::Complaint, 4),
    (EventKind::Unsubscribe, 2),
    (EventKind::DmarcReport, 2),
];

/// Who sends DMARC aggregate reports.
const REPORTERS: [&str; 3] = ["google.com", "Outlook.com", "Yahoo"];

/// (class, code, enhanced status, text) of failures.
const FAILURES: [(&str, u16, &str, &str); 8] = [
    ("InvalidRecipient", 550, "5.1.1", "The email account that you tried to reach does not exist"),
    ("BadDomain", 550, "5.1.2", "Host or domain name not found"),
    ("InactiveMailbox", 550, "5.2.1", "This mailbox is disabled"),
    ("QuotaIssues", 452, "4.2.2", "The email account that you tried to reach is over quota"),
    ("SpamBlock", 554, "5.7.1", "Message rejected due to local policy, listed at zen.spamhaus.org"),
    ("PolicyRelated", 421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints"),
    ("TransientFailure", 451, "4.3.0", "Temporary server error. Please try again later"),
    ("AuthenticationFailed", 550, "5.7.26", "Unauthenticated email from this domain is not accepted due to DMARC"),
];

fn pick<T: Copy>(rng: &mut StdRng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (item, weight) in items {
        if roll < *weight {
            return *item;
        }
        roll -= weight;
    }
    items[0].0
}

/// Events are made in chunks of this many, each from its own seed, so a data set of any size
/// streams through bounded memory.
pub const CHUNK: usize = 100_000;

/// `n` events from `start` over `days`, the same for the same `seed`.
#[must_use]
pub fn events(n: usize, start: DateTime<Utc>, days: u32, seed: u64) -> Vec<DeliveryEvent> {
    let mut all = Vec::with_capacity(n);
    generate(n, start, days, seed, |_, chunk| all.extend(chunk));
    all
}

/// The same events as [`events`], handed over a chunk at a time with the index of its first
/// event (its log offset, when the set is written as a log).
pub fn generate(n: usize, start: DateTime<Utc>, days: u32, seed: u64, mut each: impl FnMut(usize, Vec<DeliveryEvent>)) {
    for first in (0..n).step_by(CHUNK) {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(first as u64));
        each(first, (first..n.min(first + CHUNK)).map(|i| event(&mut rng, i, n, start, days)).collect());
    }
}

/// Event `i` of `n`.
fn event(rng: &mut StdRng, i: usize, n: usize, start: DateTime<Utc>, days: u32) -> DeliveryEvent {
    let span_ms = i64::from(days) * 86_400_000;
    let providers: [(usize, u32); PROVIDERS.len()] = std::array::from_fn(|i| (i, PROVIDERS[i].2));
    let base = span_ms * i64::try_from(i).unwrap_or(0) / i64::try_from(n.max(1)).unwrap_or(1);
    let jitter = rng.random_range(-30_000..30_000);
    let occurred = start + Duration::milliseconds((base + jitter).clamp(0, span_ms - 1));
    let kind = pick(rng, &KINDS);
    let mut event = DeliveryEvent::new(format!("ev-{i:010}"), SourceKind::Kumomta, kind, occurred, occurred);
    let (provider, domain, _) = PROVIDERS[pick(rng, &providers)];
    let user = rng.random_range(0..200_000);
    event.provider = provider.map(str::to_owned);
    event.recipient = Some(format!("user{user}@{domain}"));
    event.recipient_domain = Some(domain.to_owned());
    let source = rng.random_range(1..=8);
    event.egress_source = Some(format!("ip-{source}"));
    event.sending_ip = Some(format!("192.0.2.{source}"));
    event.egress_pool = Some(["pool-a", "pool-b", "pool-c"][(source - 1) / 3].to_owned());
    let tenant = rng.random_range(0..6);
    // One sender in six sends without a tenant.
    event.tenant = (tenant > 0).then(|| format!("tenant-{tenant}"));
    event.campaign = Some(format!("campaign-{}", rng.random_range(1..=20)));
    let brand = rng.random_range(1..=4);
    event.sender = Some(format!("news@brand{brand}.example"));
    event.sender_domain = Some(format!("brand{brand}.example"));
    event.message_id = Some(format!("<m{}.{i}@brand{brand}.example>", i / 3));
    match kind {
        EventKind::Delivered => {
            event.smtp_code = Some(250);
            event.response_text = Some("2.0.0 OK".to_owned());
        }
        EventKind::Deferred | EventKind::Bounced | EventKind::Expired => {
            let (class, code, status, text) = FAILURES[rng.random_range(0..FAILURES.len())];
            // One failure in twenty matches no rule.
            event.bounce_class = (rng.random_range(0..20) > 0).then(|| BounceClass::from_label(class));
            let code = if kind == EventKind::Deferred { 400 + code % 100 } else { 500 + code % 100 };
            event.smtp_code = Some(code);
            event.enhanced_status = Some(status.to_owned());
            event.response_text = Some(format!("{code} {status} {text}"));
            // Our own MTA gives up on a few messages itself.
            event.internal = kind == EventKind::Bounced && rng.random_range(0..50) == 0;
        }
        EventKind::DmarcReport => {
            // A report row: many messages from one source IP, one in four not ours.
            event.recipient = None;
            event.recipient_domain = None;
            event.provider = None;
            event.egress_source = None;
            event.egress_pool = None;
            if rng.random_range(0..4) == 0 {
                event.sending_ip = Some(format!("203.0.113.{}", rng.random_range(1..=20)));
            }
            event.source = SourceKind::Dmarc;
            event.source_node = Some(REPORTERS[rng.random_range(0..REPORTERS.len())].to_owned());
            event.report_id = Some(format!("report-{}", i / 7));
            event.message_count = Some(rng.random_range(1..500));
            let aligned = |rng: &mut StdRng| if rng.random_range(0..10) < 8 { "pass" } else { "fail" };
            event.dmarc_dkim = Some(aligned(rng).to_owned());
            event.dmarc_spf = Some(aligned(rng).to_owned());
            event.dmarc_disposition =
                Some(["none", "none", "none", "quarantine", "reject"][rng.random_range(0..5)].to_owned());
        }
        _ => {}
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_events_with_a_realistic_mix() {
        let start = DateTime::from_timestamp(1_760_918_400, 0).unwrap();
        let a = events(20_000, start, 30, 7);
        assert_eq!(a, events(20_000, start, 30, 7));
        let share = |kind: EventKind| a.iter().filter(|e| e.kind == kind).count() as f64 / a.len() as f64;
        assert!((0.75..0.81).contains(&share(EventKind::Delivered)));
        assert!((0.08..0.12).contains(&share(EventKind::Deferred)));
        assert!(a.iter().all(|e| e.occurred_at >= start && e.occurred_at < start + Duration::days(30)));
        assert!(a.iter().any(|e| e.internal) && a.iter().any(|e| e.tenant.is_none()));
    }
}
