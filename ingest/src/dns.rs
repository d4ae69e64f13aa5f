//! DNS at the edge: the MX of recipient domains, so events that name no MX (relay webhooks,
//! DSNs, Postfix lines without a relay) are mapped to the provider that really hosts the
//! domain (a company on Google Workspace or Microsoft 365 is `google` or `microsoft`, not
//! `other`).
//!
//! The answer is written into the event (`mx_host`) by the log before it is stored
//! ([`vigil_log::Annotator`]), so the fold stays a pure function of the log: a replay reads
//! the MX the first pass had. Nothing on the append path waits for DNS: [`MxCache`] answers
//! from memory, and a domain it does not know is queued for a background task (a bounded
//! queue; what does not fit is looked up the next time the domain comes by), whose answer
//! serves the domain's later events. So a resolver that times out or answers SERVFAIL slows
//! nothing; the domain's events keep no MX until it answers.
//!
//! Answers are kept for their TTL (at least a minute, at most a day), a domain without MX
//! records (NXDOMAIN, or no MX) for an hour, and a failed lookup is tried again after five
//! minutes. The cache holds at most `max_domains` domains, the least recently used going first.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use lru::LruCache;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vigil_schemas::api::providers::MxAnswer;

/// A domain without MX records is asked again after this long.
const NEGATIVE_TTL: Duration = Duration::from_secs(3600);
/// A lookup that failed (timeout, SERVFAIL) is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// Answers are kept at least this long, whatever their TTL ...
const MIN_TTL: Duration = Duration::from_secs(60);
/// ... and at most this long.
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Domains waiting for a lookup; beyond, a domain is looked up the next time it comes by.
const QUEUE: usize = 1024;
/// Lookups in flight at once.
const CONCURRENT: usize = 16;

/// `[dns]` of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Every lookup (MX, block lists) at all. Default true.
    pub enabled: bool,
    /// Look up the MX of recipient domains whose events name none. Default true.
    pub mx_lookup: bool,
    /// Name servers (`"IP:port"`, UDP then TCP); empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// How long one query may take before it is a failure. Default 2000 ms.
    pub timeout_ms: u64,
    /// Domains kept in memory at most. Default 100 000 (about 10 MB).
    pub max_domains: usize,
    /// The block lists sending IPs are checked against (zones).
    pub blocklists: Vec<String>,
    /// The block lists sending domains are checked against.
    pub domain_blocklists: Vec<String>,
    /// Sending IPs always checked, besides those the events carry.
    pub ips: Vec<std::net::IpAddr>,
    /// Sending domains always checked, besides those the events carry.
    pub sending_domains: Vec<String>,
    /// How often every target is checked against every list, and every sending domain's
    /// SPF, DKIM and DMARC. Default 1800 s.
    pub check_every_s: u64,
    /// DKIM selectors looked up on every sending domain. Default none (no DKIM check).
    pub dkim_selectors: Vec<String>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            mx_lookup: true,
            servers: Vec::new(),
            timeout_ms: 2000,
            max_domains: 100_000,
            // Lists that answer anonymous queries within their free-use terms (docs/dns.md);
            // Barracuda's needs the resolver's address registered first.
            blocklists: ["zen.spamhaus.org", "bl.spamcop.net", "bl.mailspike.net", "psbl.surriel.com"]
                .map(String::from)
                .to_vec(),
            domain_blocklists: vec!["dbl.spamhaus.org".into()],
            ips: Vec::new(),
            sending_domains: Vec::new(),
            check_every_s: 1800,
            dkim_selectors: Vec::new(),
        }
    }
}

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("reading the system's DNS configuration (set [dns] servers instead): {0}")]
    System(#[from] hickory_resolver::ResolveError),
}

/// What is known of a domain's MX.
#[derive(Debug, Clone)]
enum Entry {
    /// Queued or being looked up.
    Pending { since: Instant },
    /// The preferred MX host (`None`: the domain has no MX records), until `until`.
    Resolved { mx: Option<Arc<str>>, at: DateTime<Utc>, until: Instant },
    /// The lookup failed; tried again after `until`.
    Failed { reason: Arc<str>, at: DateTime<Utc>, until: Instant },
}

/// Recipient domains' MX, answered from memory; see the module documentation.
#[derive(Debug)]
pub struct MxCache {
    entries: Mutex<LruCache<String, Entry>>,
    queue: mpsc::Sender<String>,
    /// Whether lookups run at all.
    enabled: bool,
}

impl MxCache {
    /// The cached MX of `domain`, queueing a lookup when none is known (or the known one has
    /// expired). Never waits.
    pub fn mx(&self, domain: &str) -> Option<Arc<str>> {
        if !self.enabled {
            return None;
        }
        // Entries are kept in lower case; events normally carry their domain so already.
        let lowered;
        let domain = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = domain.to_ascii_lowercase();
            lowered.as_str()
        } else {
            domain
        };
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (known, due) = match entries.get(domain) {
            Some(Entry::Resolved { mx, until, .. }) => (mx.clone(), *until <= now),
            Some(Entry::Failed { until, .. }) => (None, *until <= now),
            // A lookup lost with its queue (shutdown) is asked again after a while.
            Some(Entry::Pending { since }) => (None, now.duration_since(*since) > RETRY_AFTER),
            None => (None, true),
        };
        if due {
            let domain = domain.to_owned();
            // A full queue: the domain is asked again the next time it comes by.
            if self.queue.try_send(domain.clone()).is_ok() {
                if known.is_none() {
                    entries.put(domain, Entry::Pending { since: now });
                } else if let Some(Entry::Resolved { until, .. }) = entries.get_mut(&domain) {
                    // Keep answering with the expired MX while it is asked again.
                    *until = now + RETRY_AFTER;
                }
            } else {
                crate::metrics::ingest_metrics().dns_lookups.get_or_create(&outcome("dropped")).inc();
            }
        }
        known
    }

    /// What is known of `domain`, for people: queues a lookup as [`Self::mx`] does.
    #[must_use]
    pub fn explain(&self, domain: &str) -> MxAnswer {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let answer = |state: &str| MxAnswer { state: state.to_owned(), mx_host: None, resolved_at: None, reason: None };
        if !self.enabled {
            return answer("off");
        }
        self.mx(&domain);
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries.peek(&domain) {
            Some(Entry::Resolved { mx: Some(mx), at, .. }) => {
                MxAnswer { mx_host: Some(mx.to_string()), resolved_at: Some(*at), ..answer("resolved") }
            }
            Some(Entry::Resolved { mx: None, at, .. }) => MxAnswer { resolved_at: Some(*at), ..answer("no_mx") },
            Some(Entry::Failed { reason, at, .. }) => {
                MxAnswer { resolved_at: Some(*at), reason: Some(reason.to_string()), ..answer("failed") }
            }
            Some(Entry::Pending { .. }) | None => answer("pending"),
        }
    }

    fn store(&self, domain: String, entry: Entry) {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).put(domain, entry);
    }
}

fn outcome(outcome: &'static str) -> crate::metrics::OutcomeLabel {
    crate::metrics::OutcomeLabel { outcome }
}

/// The resolver `settings` describe: its name servers, or the system's.
fn build_resolver(settings: &DnsSettings) -> Result<TokioResolver, DnsError> {
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let mut group = NameServerConfigGroup::new();
        for server in &settings.servers {
            group.push(NameServerConfig::new(*server, Protocol::Udp));
            group.push(NameServerConfig::new(*server, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), group),
            TokioConnectionProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = Duration::from_millis(settings.timeout_ms.max(1));
    options.attempts = 1;
    // This module keeps its own answers; the resolver's cache only spares repeated queries.
    options.cache_size = 1024;
    Ok(builder.build())
}

/// The resolver of `settings` (its name servers, or the system's); none when lookups are off.
///
/// # Errors
/// When no name server is given and the system's configuration cannot be read.
pub fn resolver(settings: &DnsSettings) -> Result<Option<Arc<TokioResolver>>, DnsError> {
    if !settings.enabled {
        return Ok(None);
    }
    build_resolver(settings).map(|r| Some(Arc::new(r)))
}

/// The MX cache, and the task that fills it through `resolver` until `shutdown` (none when
/// there is no resolver or `mx_lookup` is off: the cache then knows nothing).
#[must_use]
pub fn start_mx(
    settings: &DnsSettings,
    resolver: Option<Arc<TokioResolver>>,
    shutdown: CancellationToken,
) -> Arc<MxCache> {
    let (queue, mut requests) = mpsc::channel::<String>(QUEUE);
    let capacity = NonZeroUsize::new(settings.max_domains).unwrap_or(NonZeroUsize::MIN);
    let resolver = resolver.filter(|_| settings.mx_lookup);
    let cache = Arc::new(MxCache { entries: Mutex::new(LruCache::new(capacity)), queue, enabled: resolver.is_some() });
    let Some(resolver) = resolver else { return cache };
    let filled = Arc::clone(&cache);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
        loop {
            let domain = tokio::select! {
                () = shutdown.cancelled() => return,
                domain = requests.recv() => match domain { Some(domain) => domain, None => return },
            };
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
            let (resolver, cache) = (Arc::clone(&resolver), Arc::clone(&filled));
            tokio::spawn(async move {
                let entry = look_up(&resolver, &domain).await;
                cache.store(domain, entry);
                drop(slot);
            });
        }
    });
    cache
}

/// What the log asks of DNS for each event it appends: the MX cache's answer, and the block
/// lists' note of the sending IP and domain.
#[derive(Debug)]
pub struct Edge {
    pub mx: Arc<MxCache>,
    pub blocklists: Arc<crate::blocklist::Blocklists>,
}

impl vigil_log::Annotator for Edge {
    fn mx_host(&self, domain: &str) -> Option<Arc<str>> {
        self.mx.mx(domain)
    }

    fn observe(&self, event: &vigil_schemas::DeliveryEvent) {
        self.blocklists.observe(event);
    }
}

/// One MX lookup, as a cache entry.
async fn look_up(resolver: &TokioResolver, domain: &str) -> Entry {
    let (at, now) = (Utc::now(), Instant::now());
    let metrics = crate::metrics::ingest_metrics();
    // Fully qualified: no search domain of the host is tried.
    match resolver.mx_lookup(format!("{domain}.")).await {
        Ok(lookup) => {
            let mx = lookup
                .iter()
                .min_by_key(|mx| (mx.preference(), mx.exchange().to_ascii()))
                .map(|mx| mx.exchange().to_ascii().trim_end_matches('.').to_ascii_lowercase())
                .filter(|host| !host.is_empty());
            let ttl = lookup.valid_until().saturating_duration_since(now).clamp(MIN_TTL, MAX_TTL);
            metrics.dns_lookups.get_or_create(&outcome(if mx.is_some() { "resolved" } else { "no_mx" })).inc();
            Entry::Resolved { mx: mx.map(Arc::from), at, until: now + ttl }
        }
        Err(error) if error.is_no_records_found() || error.is_nx_domain() => {
            metrics.dns_lookups.get_or_create(&outcome("no_mx")).inc();
            Entry::Resolved { mx: None, at, until: now + NEGATIVE_TTL }
        }
        Err(error) => {
            metrics.dns_lookups.get_or_create(&outcome("failed")).inc();
            tracing::debug!(domain, %error, "MX lookup failed; tried again later");
            Entry::Failed { reason: Arc::from(error.to_string()), at, until: now + RETRY_AFTER }
        }
    }
}
