//! Sending-domain checks: for every sending domain Vigil has seen (and those configured), every
//! `check_every_s`, what DNS publishes for it, read as the receivers read it:
//! - SPF (RFC 7208): one `v=spf1` record; the DNS lookups its evaluation needs, includes
//!   followed, against the limit of 10; a permissive `all`; whether our sending IPs are
//!   covered by its `ip4`/`ip6` terms;
//! - DKIM (RFC 6376): a key at each configured selector, not revoked, RSA at least 2048 bits;
//! - DMARC (RFC 7489): one `v=DMARC1` record, its policy and aggregate reports;
//! - MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): published or not.
//!
//! Each finding has a severity and a one-line fix; `/api/v1/domains` answers the last check.
//! The parsing and judging are pure ([`spf_terms`], [`dmarc_findings`], [`dkim_findings`]);
//! only [`start`] talks to DNS.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;
use vigil_schemas::api::domains::{DomainReport, DomainsResponse, Finding};

/// SPF's limit on DNS lookups (RFC 7208 §4.6.4).
const SPF_LOOKUP_LIMIT: usize = 10;
/// Records followed at most while counting (a loop of includes ends here).
const SPF_MAX_RECORDS: usize = 40;

fn finding(check: &str, severity: &str, message: impl Into<String>, fix: Option<&str>) -> Finding {
    Finding {
        check: check.to_owned(),
        severity: severity.to_owned(),
        message: message.into(),
        fix: fix.map(str::to_owned),
    }
}

/// One term of an SPF record, as far as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfTerm {
    /// `include:`, `redirect=`: another record to follow (one lookup each).
    Follow(String),
    /// `a`, `mx`, `ptr`, `exists`: one lookup each, not followed here.
    Lookup(String),
    /// `ip4:` / `ip6:` with its prefix length.
    Network(IpAddr, u8),
    /// `all` with its qualifier (`+`, `-`, `~`, `?`).
    All(char),
    /// Anything else that is not a known modifier.
    Unknown(String),
}

/// The terms of an SPF record (`v=spf1 ...`).
#[must_use]
pub fn spf_terms(record: &str) -> Vec<SpfTerm> {
    let mut terms = Vec::new();
    for raw in record.split_whitespace().skip(1) {
        let (qualifier, term) = match raw.chars().next() {
            Some(q @ ('+' | '-' | '~' | '?')) => (q, &raw[1..]),
            _ => ('+', raw),
        };
        let lower = term.to_ascii_lowercase();
        let (name, value) = match lower.split_once([':', '=']) {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (lower.split('/').next().unwrap_or_default().to_owned(), None),
        };
        terms.push(match (name.as_str(), value) {
            ("include" | "redirect", Some(domain)) => SpfTerm::Follow(domain),
            ("a" | "mx" | "ptr" | "exists", _) => SpfTerm::Lookup(name),
            ("ip4" | "ip6", Some(network)) => {
                let (address, length) = network.split_once('/').unwrap_or((network.as_str(), ""));
                match address.parse::<IpAddr>() {
                    Ok(ip) => {
                        let full = if ip.is_ipv4() { 32 } else { 128 };
                        SpfTerm::Network(ip, length.parse().unwrap_or(full).min(full))
                    }
                    Err(_) => SpfTerm::Unknown(raw.to_owned()),
                }
            }
            ("all", None) => SpfTerm::All(qualifier),
            ("exp", Some(_)) => continue,
            _ => SpfTerm::Unknown(raw.to_owned()),
        });
    }
    terms
}

/// Whether `ip` is in `network/length`.
#[must_use]
pub fn covers(network: IpAddr, length: u8, ip: IpAddr) -> bool {
    match (network, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// The `v=`-tagged records among a name's TXT strings.
fn tagged<'a>(txts: &'a [String], version: &str) -> Vec<&'a str> {
    txts.iter()
        .map(String::as_str)
        .filter(|t| t.trim_start().to_ascii_lowercase().starts_with(&version.to_ascii_lowercase()))
        .collect()
}

/// `tag=value` pairs of a DMARC, DKIM, MTA-STS or TLS-RPT record, tags in lower case.
fn tags(record: &str) -> BTreeMap<String, String> {
    record
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(tag, value)| (tag.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

/// What the DMARC record (`_dmarc.<domain>`'s TXT) says.
#[must_use]
pub fn dmarc_findings(txts: &[String]) -> Vec<Finding> {
    let records = tagged(txts, "v=DMARC1");
    let fix_none =
        "publish _dmarc TXT \"v=DMARC1; p=none; rua=mailto:dmarc@<domain>\", then move to quarantine and reject";
    match records.as_slice() {
        [] => vec![finding(
            "dmarc",
            "error",
            "no DMARC record: Gmail and Yahoo require one of bulk senders",
            Some(fix_none),
        )],
        [record] => {
            let tags = tags(record);
            let mut out = Vec::new();
            match tags.get("p").map(|p| p.to_ascii_lowercase()).as_deref() {
                Some("reject") => out.push(finding("dmarc", "ok", "p=reject", None)),
                Some("quarantine") => out.push(finding(
                    "dmarc",
                    "ok",
                    "p=quarantine",
                    Some("move to p=reject once reports show only your own mail failing"),
                )),
                Some("none") => out.push(finding(
                    "dmarc",
                    "warning",
                    "p=none: receivers only monitor, spoofed mail is delivered",
                    Some("move to p=quarantine, then p=reject, once the aggregate reports show your mail aligned"),
                )),
                other => out.push(finding(
                    "dmarc",
                    "error",
                    format!("invalid policy p={}", other.unwrap_or("(missing)")),
                    Some("set p=none, quarantine or reject"),
                )),
            }
            if !tags.contains_key("rua") {
                out.push(finding(
                    "dmarc",
                    "warning",
                    "no rua: nobody receives the aggregate reports",
                    Some("add rua=mailto:<address> (Vigil reads them: POST /ingest/dmarc)"),
                ));
            }
            out
        }
        _ => vec![finding(
            "dmarc",
            "error",
            format!("{} DMARC records: receivers ignore them all", records.len()),
            Some("keep one v=DMARC1 record"),
        )],
    }
}

/// What the key at `<selector>._domainkey.<domain>` says.
#[must_use]
pub fn dkim_findings(selector: &str, txts: &[String]) -> Vec<Finding> {
    let missing = format!("publish the public key of selector {selector} at {selector}._domainkey.<domain>");
    let Some(record) = txts.iter().find(|t| t.contains("p=")) else {
        return vec![finding("dkim", "error", format!("selector {selector}: no key published"), Some(&missing))];
    };
    let tags = tags(record);
    let key = tags.get("p").map(|p| p.split_whitespace().collect::<String>()).unwrap_or_default();
    if key.is_empty() {
        return vec![finding("dkim", "error", format!("selector {selector}: key revoked (empty p=)"), Some(&missing))];
    }
    if tags.get("k").is_some_and(|k| k.eq_ignore_ascii_case("ed25519")) {
        return vec![finding("dkim", "ok", format!("selector {selector}: Ed25519 key"), None)];
    }
    use base64::Engine as _;
    use x509_parser::prelude::FromDer as _;
    let bits = base64::engine::general_purpose::STANDARD.decode(&key).ok().and_then(|der| {
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).ok()?;
        match info.parsed().ok()? {
            x509_parser::public_key::PublicKey::RSA(rsa) => Some(rsa.key_size()),
            _ => None,
        }
    });
    match bits {
        None => vec![finding(
            "dkim",
            "error",
            format!("selector {selector}: the key does not decode"),
            Some("publish p= as the base64 of the public key (SubjectPublicKeyInfo)"),
        )],
        Some(bits) if bits < 2048 => vec![finding(
            "dkim",
            "warning",
            format!("selector {selector}: RSA key of {bits} bits"),
            Some("rotate to a 2048-bit RSA key under a new selector"),
        )],
        Some(bits) => vec![finding("dkim", "ok", format!("selector {selector}: RSA key of {bits} bits"), None)],
    }
}

/// What the SPF tree says: `records` is every record reached (the domain's first), with the
/// lookups counted across all of them, and `ips` our sending IPs.
#[must_use]
pub fn spf_findings(records: &[Vec<SpfTerm>], lookups: usize, missing: &[String], ips: &[IpAddr]) -> Vec<Finding> {
    let Some(top) = records.first() else {
        return vec![finding(
            "spf",
            "error",
            "no SPF record",
            Some("publish TXT \"v=spf1 ip4:<your sending IPs> -all\" (or your relay's include)"),
        )];
    };
    let mut out = Vec::new();
    if lookups > SPF_LOOKUP_LIMIT {
        out.push(finding(
            "spf",
            "error",
            format!("SPF needs {lookups} DNS lookups; the limit is {SPF_LOOKUP_LIMIT}: receivers fail it (permerror)"),
            Some("replace includes with the ip4/ip6 ranges they hold (flatten), or drop unused ones"),
        ));
    }
    for domain in missing {
        out.push(finding(
            "spf",
            "error",
            format!("include:{domain} has no SPF record (permerror)"),
            Some("remove the include or fix the included domain"),
        ));
    }
    for term in records.iter().flatten() {
        if let SpfTerm::Unknown(raw) = term {
            out.push(finding(
                "spf",
                "error",
                format!("unknown term `{raw}` (permerror)"),
                Some("remove or correct it"),
            ));
        }
    }
    match top.iter().find_map(|t| if let SpfTerm::All(q) = t { Some(*q) } else { None }) {
        Some('+') => out.push(finding(
            "spf",
            "error",
            "+all: anyone may send as the domain",
            Some("end the record with -all or ~all"),
        )),
        Some('?') | None if !top.iter().any(|t| matches!(t, SpfTerm::Follow(_))) => out.push(finding(
            "spf",
            "warning",
            "no -all or ~all: mail from anywhere is neutral",
            Some("end the record with -all (or ~all while you check)"),
        )),
        _ => {}
    }
    let networks: Vec<(IpAddr, u8)> = records
        .iter()
        .flatten()
        .filter_map(|t| if let SpfTerm::Network(ip, length) = t { Some((*ip, *length)) } else { None })
        .collect();
    let looked_up = records.iter().flatten().any(|t| matches!(t, SpfTerm::Lookup(_)));
    for ip in ips {
        if !networks.iter().any(|(network, length)| covers(*network, *length, *ip)) {
            let (severity, message) = if looked_up {
                (
                    "warning",
                    format!("{ip} is in no ip4/ip6 term (a, mx or exists terms may cover it; not resolved here)"),
                )
            } else {
                ("error", format!("{ip} sends for the domain but SPF does not allow it"))
            };
            out.push(finding("spf", severity, message, Some("add ip4:/ip6: for it, or the include of its relay")));
        }
    }
    if out.is_empty() {
        out.push(finding("spf", "ok", format!("{lookups} DNS lookups of {SPF_LOOKUP_LIMIT}"), None));
    }
    out
}

/// The domains checked and their last reports.
#[derive(Debug)]
pub struct DomainChecks {
    selectors: Vec<String>,
    check_every: Duration,
    reports: Mutex<BTreeMap<String, DomainReport>>,
}

impl DomainChecks {
    /// The state now, for `/api/v1/domains`.
    #[must_use]
    pub fn report(&self) -> DomainsResponse {
        DomainsResponse {
            check_every_s: self.check_every.as_secs(),
            dkim_selectors: self.selectors.clone(),
            domains: self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect(),
        }
    }
}

impl DomainChecks {
    fn keep(&self, reports: Vec<DomainReport>) {
        let mut kept = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.extend(reports.into_iter().map(|report| (report.domain.clone(), report)));
    }
}

/// Every TXT string of `name` (each record's strings joined), empty when there is none.
async fn txt(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    match resolver.txt_lookup(name).await {
        Ok(answer) => Ok(answer
            .iter()
            .map(|record| record.txt_data().iter().map(|part| String::from_utf8_lossy(part)).collect::<String>())
            .collect()),
        Err(error) if error.is_no_records_found() || error.is_nx_domain() => Ok(Vec::new()),
        Err(error) => Err(error.to_string()),
    }
}

/// The SPF tree of `domain`: its records, the lookups they need, and includes without a record.
async fn spf_tree(resolver: &TokioResolver, domain: &str) -> Result<(Vec<Vec<SpfTerm>>, usize, Vec<String>), String> {
    let (mut records, mut lookups, mut missing) = (Vec::new(), 0, Vec::new());
    let mut queue = vec![domain.to_owned()];
    while let Some(next) = queue.pop() {
        if records.len() >= SPF_MAX_RECORDS {
            break;
        }
        let txts = txt(resolver, &format!("{next}.")).await?;
        let Some(record) = tagged(&txts, "v=spf1").first().copied() else {
            if next != domain {
                missing.push(next);
            }
            continue;
        };
        let terms = spf_terms(record);
        for term in &terms {
            match term {
                SpfTerm::Follow(target) => {
                    lookups += 1;
                    queue.push(target.clone());
                }
                SpfTerm::Lookup(_) => lookups += 1,
                _ => {}
            }
        }
        records.push(terms);
    }
    Ok((records, lookups, missing))
}

/// Every finding for `domain`.
async fn check(resolver: &TokioResolver, domain: &str, selectors: &[String], ips: &[IpAddr]) -> Vec<Finding> {
    let failed =
        |check: &str, error: String| vec![finding(check, "error", format!("DNS lookup failed: {error}"), None)];
    let mut out = match spf_tree(resolver, domain).await {
        Ok((records, lookups, missing)) => spf_findings(&records, lookups, &missing, ips),
        Err(error) => failed("spf", error),
    };
    for selector in selectors {
        out.extend(match txt(resolver, &format!("{selector}._domainkey.{domain}.")).await {
            Ok(txts) => dkim_findings(selector, &txts),
            Err(error) => failed("dkim", error),
        });
    }
    out.extend(match txt(resolver, &format!("_dmarc.{domain}.")).await {
        Ok(txts) => dmarc_findings(&txts),
        Err(error) => failed("dmarc", error),
    });
    for (check, name, version, fix) in [
        (
            "mta_sts",
            format!("_mta-sts.{domain}."),
            "v=STSv1",
            "publish _mta-sts TXT and a policy at https://mta-sts.<domain>/.well-known/mta-sts.txt",
        ),
        (
            "tls_rpt",
            format!("_smtp._tls.{domain}."),
            "v=TLSRPTv1",
            "publish _smtp._tls TXT \"v=TLSRPTv1; rua=mailto:<address>\"",
        ),
    ] {
        out.push(match txt(resolver, &name).await {
            Ok(txts) if !tagged(&txts, version).is_empty() => finding(check, "ok", "published", None),
            Ok(_) => finding(check, "warning", "not published", Some(fix)),
            Err(error) => finding(check, "error", format!("DNS lookup failed: {error}"), None),
        });
    }
    out
}

/// The worst severity of `findings`.
fn worst(findings: &[Finding]) -> &'static str {
    ["error", "warning"].into_iter().find(|s| findings.iter().any(|f| f.severity == *s)).unwrap_or("ok")
}

/// Checks the sending domains `blocklists` watches (those seen and configured) every
/// `check_every_s` through `resolver` until `shutdown`. Nothing runs without a resolver.
#[must_use]
pub fn start(
    settings: &crate::dns::DnsSettings,
    watched: Arc<crate::blocklist::Blocklists>,
    resolver: Option<Arc<TokioResolver>>,
    shutdown: CancellationToken,
) -> Arc<DomainChecks> {
    let checks = Arc::new(DomainChecks {
        selectors: settings.dkim_selectors.clone(),
        check_every: Duration::from_secs(settings.check_every_s.max(1)),
        reports: Mutex::default(),
    });
    let Some(resolver) = resolver else { return checks };
    let checker = Arc::clone(&checks);
    tokio::spawn(async move {
        loop {
            let ips = watched.ips();
            // Domains in parallel, as the block lists' queries.
            let reports: Vec<DomainReport> = futures::stream::iter(watched.domains())
                .map(|domain| {
                    let (resolver, selectors, ips) = (&resolver, &checker.selectors, &ips);
                    async move {
                        let findings = check(resolver, &domain, selectors, ips).await;
                        let severity = worst(&findings).to_owned();
                        DomainReport { domain, checked_at: Utc::now(), severity, findings }
                    }
                })
                .buffer_unordered(crate::blocklist::CONCURRENT)
                .collect()
                .await;
            checker.keep(reports);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(checker.check_every) => {}
            }
        }
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_terms_lookups_and_coverage() {
        let terms = spf_terms(
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 include:_spf.relay.example a mx:other.example ~all exp=x.example",
        );
        assert_eq!(terms.iter().filter(|t| matches!(t, SpfTerm::Lookup(_))).count(), 2);
        assert!(terms.contains(&SpfTerm::Follow("_spf.relay.example".into())));
        assert!(terms.contains(&SpfTerm::All('~')));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(covers(ip("192.0.2.0"), 24, ip("192.0.2.77")) && !covers(ip("192.0.2.0"), 24, ip("192.0.3.1")));
        assert!(covers(ip("2001:db8::"), 32, ip("2001:db8:1::5")) && !covers(ip("2001:db8::"), 32, ip("192.0.2.1")));
        assert!(covers(ip("198.51.100.9"), 32, ip("198.51.100.9")) && covers(ip("0.0.0.0"), 0, ip("203.0.113.1")));

        let records = vec![terms];
        let found = spf_findings(&records, 11, &[], &[ip("192.0.2.5")]);
        assert!(found.iter().any(|f| f.severity == "error" && f.message.contains("11 DNS lookups")), "{found:?}");
        let open = spf_findings(&[spf_terms("v=spf1 ip4:192.0.2.5 +all")], 0, &[], &[ip("203.0.113.1")]);
        assert!(open.iter().any(|f| f.message.contains("+all")));
        assert!(open.iter().any(|f| f.severity == "error" && f.message.contains("203.0.113.1")), "{open:?}");
        assert_eq!(spf_findings(&[], 0, &[], &[])[0].message, "no SPF record");
    }

    #[test]
    fn dmarc_policies_and_reports() {
        let one = |text: &str| dmarc_findings(&[text.to_owned()]);
        assert_eq!(one("v=DMARC1; p=reject; rua=mailto:d@example.com")[0].severity, "ok");
        let none = one("v=DMARC1; p=none");
        assert!(none.iter().any(|f| f.severity == "warning" && f.message.starts_with("p=none")));
        assert!(none.iter().any(|f| f.message.starts_with("no rua")));
        assert_eq!(dmarc_findings(&[])[0].severity, "error");
        assert_eq!(dmarc_findings(&["v=DMARC1; p=none".into(), "v=DMARC1; p=reject".into()])[0].severity, "error");
    }

    #[test]
    fn dkim_keys_missing_revoked_and_sized() {
        assert!(dkim_findings("s1", &[])[0].message.contains("no key"));
        assert!(dkim_findings("s1", &["v=DKIM1; k=rsa; p=".into()])[0].message.contains("revoked"));
        assert_eq!(
            dkim_findings("s1", &["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()])[0]
                .severity,
            "ok"
        );
        assert_eq!(dkim_findings("s1", &["v=DKIM1; p=bm90IGEga2V5".into()])[0].severity, "error");
    }
}
