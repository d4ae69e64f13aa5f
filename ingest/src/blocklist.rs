//! Block-list monitoring: every sending IP Vigil has seen (and those configured) against the
//! DNS block lists of `[dns] blocklists`, and every sending domain against `[dns]
//! domain_blocklists`, every `check_every_s`. A listing and a delisting each become an event in
//! the log (source `dns`, kind `blocklisted` / `delisted`, the zone in `source_node`, the
//! return code and the list's reason in `response_text`); `/api/v1/blocklists` answers the
//! state now.
//!
//! A list answers a query `<reversed IP>.<zone>` (or `<domain>.<zone>`) with an address in
//! 127.0.0.0/8 when it lists the target, and NXDOMAIN when it does not. Some answers mean the
//! list refused to answer, not a listing ([`verdict`]): Spamhaus answers 127.255.255.252 to
//! 127.255.255.255 to queries through public resolvers or over its free-use limit, and a
//! resolver that rewrites NXDOMAIN answers with an address outside 127.0.0.0/8. Each list has
//! its own terms of use (Spamhaus's free use is for low volumes through your own resolver,
//! not a public one): docs/dns.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;
use vigil_log::{AppendBatch, EventLog};
use vigil_schemas::api::blocklists::{BlocklistRow, BlocklistsResponse};
use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};

/// Targets kept at most, of each kind: what is seen beyond is not checked.
const MAX_TARGETS: usize = 1024;
/// Queries in flight at once.
pub(crate) const CONCURRENT: usize = 16;

/// What a list said of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Listed, with the return code.
    Listed(Ipv4Addr),
    Clear,
    /// The list refused to answer (the code says why; see the module docs): not a listing.
    Refused(Ipv4Addr),
    /// The query failed (timeout, SERVFAIL).
    Failed(String),
}

impl Verdict {
    fn state(&self) -> &'static str {
        match self {
            Self::Listed(_) => "listed",
            Self::Clear => "clear",
            Self::Refused(_) => "refused",
            Self::Failed(_) => "failed",
        }
    }
}

/// The verdict of a list's A records for a query (an empty answer is NXDOMAIN or no record).
#[must_use]
pub fn verdict(answer: &[Ipv4Addr]) -> Verdict {
    let refused = answer.iter().find(|a| {
        let [first, second, third, _] = a.octets();
        first != 127 || (second, third) == (255, 255)
    });
    match (refused, answer.first()) {
        (Some(code), _) => Verdict::Refused(*code),
        (None, Some(code)) => Verdict::Listed(*code),
        (None, None) => Verdict::Clear,
    }
}

/// The name to query for `target` in `zone`: an IPv4 address reversed, an IPv6 address as
/// reversed nibbles, a domain as it is.
#[must_use]
pub fn query_name(target: &str, zone: &str) -> String {
    match target.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        Ok(IpAddr::V6(ip)) => {
            let nibbles: Vec<String> =
                ip.octets().iter().rev().flat_map(|byte| [byte & 0xf, byte >> 4]).map(|n| format!("{n:x}")).collect();
            format!("{}.{zone}.", nibbles.join("."))
        }
        Err(_) => format!("{}.{zone}.", target.trim_end_matches('.')),
    }
}

/// One (target, zone) as last checked.
#[derive(Debug, Clone)]
struct Checked {
    verdict: Verdict,
    /// The list's TXT reason, when it lists the target.
    reason: Option<String>,
    /// Since when the verdict's state holds.
    since: DateTime<Utc>,
    at: DateTime<Utc>,
}

/// The targets and what the lists last said of them.
#[derive(Debug)]
pub struct Blocklists {
    ip_zones: Vec<String>,
    domain_zones: Vec<String>,
    check_every: Duration,
    ips: Mutex<BTreeSet<String>>,
    domains: Mutex<BTreeSet<String>>,
    checked: Mutex<BTreeMap<(String, String), Checked>>,
}

impl Blocklists {
    /// Notes a sending IP and domain of an event (bounded: see [`MAX_TARGETS`]).
    pub fn observe(&self, event: &DeliveryEvent) {
        let add = |set: &Mutex<BTreeSet<String>>, value: &str| {
            let value = value.to_ascii_lowercase();
            let mut set = set.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if set.len() < MAX_TARGETS && !set.contains(&value) {
                set.insert(value);
            }
        };
        if let Some(ip) = event.sending_ip.as_deref().filter(|ip| ip.parse::<IpAddr>().is_ok()) {
            add(&self.ips, ip);
        }
        if let Some(domain) = event.sender_domain.as_deref().filter(|d| d.contains('.')) {
            add(&self.domains, domain);
        }
    }

    /// The sending IPs watched (seen and configured).
    #[must_use]
    pub fn ips(&self) -> Vec<IpAddr> {
        let ips = self.ips.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ips.iter().filter_map(|ip| ip.parse().ok()).collect()
    }

    /// The sending domains watched (seen and configured).
    #[must_use]
    pub fn domains(&self) -> Vec<String> {
        self.domains.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }

    /// The state now, for `/api/v1/blocklists`.
    #[must_use]
    pub fn report(&self) -> BlocklistsResponse {
        let checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows: Vec<BlocklistRow> = checked
            .iter()
            .map(|((target, zone), checked)| BlocklistRow {
                target: target.clone(),
                zone: zone.clone(),
                state: checked.verdict.state().to_owned(),
                code: match &checked.verdict {
                    Verdict::Listed(code) | Verdict::Refused(code) => Some(code.to_string()),
                    _ => None,
                },
                reason: match &checked.verdict {
                    Verdict::Failed(reason) => Some(reason.clone()),
                    _ => checked.reason.clone(),
                },
                since: checked.since,
                checked_at: checked.at,
            })
            .collect();
        BlocklistsResponse {
            check_every_s: self.check_every.as_secs(),
            zones: self.ip_zones.clone(),
            domain_zones: self.domain_zones.clone(),
            listed: rows.iter().filter(|r| r.state == "listed").count(),
            rows,
        }
    }

    /// Sets `vigil_dns_blocklisted{zone}` from the last checks.
    fn publish_listed(&self) {
        let checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let gauge = &crate::metrics::ingest_metrics().blocklisted;
        for zone in self.ip_zones.iter().chain(&self.domain_zones) {
            let listed =
                checked.iter().filter(|((_, z), c)| z == zone && matches!(c.verdict, Verdict::Listed(_))).count();
            gauge.get_or_create(&crate::metrics::ZoneLabel { zone: zone.clone() }).set(listed as i64);
        }
    }

    /// Every (target, zone) to check now.
    fn work(&self) -> Vec<(String, String)> {
        let ips = self.ips.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let domains = self.domains.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let pairs = |targets: BTreeSet<String>, zones: &[String]| {
            targets.into_iter().flat_map(|t| zones.iter().map(move |z| (t.clone(), z.clone()))).collect::<Vec<_>>()
        };
        let mut work = pairs(ips, &self.ip_zones);
        work.extend(pairs(domains, &self.domain_zones));
        work
    }

    /// Records a check; returns the event a change of listing makes.
    fn record(&self, target: &str, zone: &str, verdict: Verdict, reason: Option<String>) -> Option<DeliveryEvent> {
        let at = Utc::now();
        let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (target.to_owned(), zone.to_owned());
        let before = checked.get(&key).map(|c| c.verdict.clone());
        let was_listed = matches!(before, Some(Verdict::Listed(_)));
        // A refusal or a failure says nothing: the listing state stays as it was.
        let kind = match (&verdict, was_listed) {
            (Verdict::Listed(_), false) => Some(EventKind::Blocklisted),
            (Verdict::Clear, true) => Some(EventKind::Delisted),
            _ => None,
        };
        let since = match checked.get(&key) {
            Some(previous) if previous.verdict.state() == verdict.state() => previous.since,
            _ => at,
        };
        let code = match &verdict {
            Verdict::Listed(code) => code.to_string(),
            _ => String::new(),
        };
        let keep = !matches!(verdict, Verdict::Refused(_) | Verdict::Failed(_)) || !was_listed;
        if keep {
            checked.insert(key, Checked { verdict, reason: reason.clone(), since, at });
        } else if let Some(previous) = checked.get_mut(&key) {
            previous.at = at;
        }
        kind.map(|kind| listing_event(kind, target, zone, &code, reason.as_deref(), at))
    }
}

/// The event of a listing or delisting.
fn listing_event(
    kind: EventKind,
    target: &str,
    zone: &str,
    code: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> DeliveryEvent {
    let mut hasher = blake3::Hasher::new();
    for part in ["blocklist", kind.as_str(), target, zone, &at.to_rfc3339()] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let id = hasher.finalize().to_hex()[..32].to_owned();
    let mut event = DeliveryEvent::new(id, SourceKind::Dns, kind, at, at);
    event.source_node = Some(zone.to_owned());
    if target.parse::<IpAddr>().is_ok() {
        event.sending_ip = Some(target.to_owned());
    } else {
        event.sender_domain = Some(target.to_owned());
    }
    event.response_text = Some(match (kind, reason) {
        (EventKind::Delisted, _) => format!("{zone} no longer lists {target}"),
        (_, Some(reason)) => format!("{zone} lists {target}: {code} {reason}"),
        (_, None) => format!("{zone} lists {target}: {code}"),
    });
    event
}

impl Blocklists {
    /// The lists and fixed targets of `settings`; [`start`] checks them.
    #[must_use]
    pub fn new(settings: &crate::dns::DnsSettings) -> Self {
        Self {
            ip_zones: settings.blocklists.clone(),
            domain_zones: settings.domain_blocklists.clone(),
            check_every: Duration::from_secs(settings.check_every_s.max(1)),
            ips: Mutex::new(settings.ips.iter().map(ToString::to_string).collect()),
            domains: Mutex::new(settings.sending_domains.iter().map(|d| d.to_ascii_lowercase()).collect()),
            checked: Mutex::default(),
        }
    }
}

/// Checks `blocklists` every `check_every` through `resolver` until `shutdown`, appending
/// listings and delistings to `log`. Nothing runs without a resolver or without lists.
pub fn start(
    blocklists: &Arc<Blocklists>,
    resolver: Option<Arc<TokioResolver>>,
    log: EventLog,
    shutdown: CancellationToken,
) {
    let Some(resolver) = resolver.filter(|_| !(blocklists.ip_zones.is_empty() && blocklists.domain_zones.is_empty()))
    else {
        return;
    };
    let checker = Arc::clone(blocklists);
    tokio::spawn(async move {
        loop {
            let mut events = Vec::new();
            // Queries in parallel, so a resolver that times out does not stretch a pass past
            // the interval; answers are recorded in the order of the work list.
            let answers: Vec<_> = futures::stream::iter(checker.work())
                .map(|(target, zone)| {
                    let resolver = &resolver;
                    async move {
                        let (verdict, reason) = ask(resolver, &query_name(&target, &zone)).await;
                        (target, zone, verdict, reason)
                    }
                })
                .buffered(CONCURRENT)
                .collect()
                .await;
            for (target, zone, verdict, reason) in answers {
                events.extend(checker.record(&target, &zone, verdict, reason));
            }
            checker.publish_listed();
            if !events.is_empty() {
                let batch = AppendBatch { events, ..AppendBatch::default() };
                if let Err(error) = log.append_async(&batch).await {
                    tracing::error!(%error, "block-list changes could not be written to the log");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(checker.check_every) => {}
            }
        }
    });
}

/// What a list says of the name: its verdict, and its reason when it lists it.
async fn ask(resolver: &TokioResolver, name: &str) -> (Verdict, Option<String>) {
    match resolver.ipv4_lookup(name).await {
        Ok(answer) => {
            let verdict = verdict(&answer.iter().map(|a| a.0).collect::<Vec<_>>());
            let reason = match verdict {
                Verdict::Listed(_) => txt(resolver, name).await,
                _ => None,
            };
            (verdict, reason)
        }
        Err(error) if error.is_no_records_found() || error.is_nx_domain() => (Verdict::Clear, None),
        Err(error) => (Verdict::Failed(error.to_string()), None),
    }
}

/// The list's reason for a listing (its TXT record), if it gives one.
async fn txt(resolver: &TokioResolver, name: &str) -> Option<String> {
    let answer = resolver.txt_lookup(name).await.ok()?;
    let text: Vec<String> = answer.iter().map(ToString::to_string).collect();
    (!text.is_empty()).then(|| text.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_that_mean_refused_are_not_listings() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(verdict(&[]), Verdict::Clear);
        assert_eq!(verdict(&[ip("127.0.0.2")]), Verdict::Listed(ip("127.0.0.2")));
        assert_eq!(verdict(&[ip("127.255.255.254")]), Verdict::Refused(ip("127.255.255.254")));
        assert_eq!(verdict(&[ip("127.0.0.4"), ip("127.255.255.255")]), Verdict::Refused(ip("127.255.255.255")));
        assert_eq!(
            verdict(&[ip("198.51.100.7")]),
            Verdict::Refused(ip("198.51.100.7")),
            "a resolver rewriting NXDOMAIN"
        );
    }

    #[test]
    fn names_are_reversed_addresses_or_domains_in_the_zone() {
        assert_eq!(query_name("192.0.2.10", "zen.spamhaus.org"), "10.2.0.192.zen.spamhaus.org.");
        assert_eq!(query_name("shop.example.", "dbl.spamhaus.org"), "shop.example.dbl.spamhaus.org.");
        assert!(query_name("2001:db8::1", "bl.example").starts_with("1.0.0.0.0.0.0.0."));
        assert!(query_name("2001:db8::1", "bl.example").ends_with(".8.b.d.0.1.0.0.2.bl.example."));
    }
}
