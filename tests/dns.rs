//! MX lookups of recipient domains against a real DNS server on loopback (Debian's `dnsmasq`,
//! which `scripts/test` installs): custom domains hosted by Google Workspace and Microsoft 365
//! are counted under `google` and `microsoft`; a server that never answers stalls neither
//! ingest nor the fold; block listings and delistings are events; sending domains' SPF, DKIM
//! and DMARC are read as receivers read them.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Vigil, eventually};
use serde_json::{Value, json};

/// `$VIGIL_DNSMASQ`, else Debian's `/usr/sbin/dnsmasq`.
fn dnsmasq_binary() -> PathBuf {
    let path = std::env::var("VIGIL_DNSMASQ").map_or_else(|_| PathBuf::from("/usr/sbin/dnsmasq"), PathBuf::from);
    assert!(path.is_file(), "{} not found: run ./scripts/test (it installs Debian's dnsmasq-base)", path.display());
    path
}

/// dnsmasq on a loopback port, answering for `.example` only, with `mx` records
/// (`domain,host,preference`); stopped when dropped.
struct Dns {
    child: Child,
    port: u16,
}

impl Dns {
    fn start(mx: &[&str]) -> Self {
        let records: Vec<String> = mx.iter().map(|record| format!("--mx-host={record}")).collect();
        Self::start_on(common::free_port(), &records)
    }

    /// On `port`, with these dnsmasq record options (`--host-record=...`, `--txt-record=...`).
    fn start_on(port: u16, records: &[String]) -> Self {
        let mut command = Command::new(dnsmasq_binary());
        command.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
            // Authoritative for .example: an unknown name there is NXDOMAIN, not a refusal.
            "--local=/example/",
            &format!("--port={port}"),
        ]);
        command.args(records);
        let child = command.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("starting dnsmasq");
        Self { child, port }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vigil run` resolving through `server`, with `more` keys in `[dns]`.
async fn vigil_with_dns(dir: &Path, server: &str, timeout_ms: u64, more: &str) -> Vigil {
    let config = dir.join("vigil.toml");
    std::fs::write(&config, format!("[dns]\nservers = [\"{server}\"]\ntimeout_ms = {timeout_ms}\n{more}")).unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let args = ["--config", config.to_str().unwrap()];
    Vigil::start_with_env(&listen, &dir.join("data"), &args, &[("VIGIL_DNS", "true")]).await
}

/// A KumoMTA bounce to `recipient` that names no MX (no site, no peer), as a relay's or a
/// DSN's event would.
fn bounce(id: &str, recipient: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    json!({
        "type": "Bounce", "id": id, "sender": "news@shop.example", "recipient": recipient,
        "queue": "campaign:tenant@domain", "site": "", "size": 2048,
        "response": {"code": 550, "enhanced_code": {"class": 5, "subject": 1, "detail": 1},
                     "content": "5.1.1 user unknown", "command": "."},
        "egress_pool": "pool-1", "egress_source": "ip-1", "timestamp": now, "created": now - 5,
        "num_attempts": 1, "bounce_classification": "Uncategorized", "meta": {}, "headers": {},
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    })
    .to_string()
}

async fn provider(vigil: &Vigil, domain: &str) -> Value {
    let (status, body) = vigil.get(&format!("/api/v1/providers?domain={domain}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The provider once DNS has answered (or failed) for `domain`.
async fn settled(vigil: &Vigil, domain: &str) -> Value {
    eventually(&format!("DNS to answer for {domain}"), Duration::from_secs(30), || async {
        provider(vigil, domain).await["mx"]["state"] != "pending"
    })
    .await;
    provider(vigil, domain).await
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_domains_are_counted_under_the_provider_their_mx_names() {
    let dns = Dns::start(&[
        "acme-corp.example,acme-corp-example.mail.protection.outlook.com,10",
        "startup.example,alt1.aspmx.l.google.com,5",
        "startup.example,aspmx.l.google.com,1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let vigil = vigil_with_dns(dir.path(), &format!("127.0.0.1:{}", dns.port), 2000, "").await;

    let acme = settled(&vigil, "Acme-Corp.example.").await;
    assert_eq!(acme["domain"], "acme-corp.example");
    assert_eq!((acme["provider"].as_str(), acme["decided_by"].as_str()), (Some("microsoft"), Some("mx")), "{acme}");
    assert_eq!(acme["mx"]["mx_host"], "acme-corp-example.mail.protection.outlook.com", "{acme}");
    let startup = settled(&vigil, "startup.example").await;
    assert_eq!(startup["provider"], "google", "{startup}");
    assert_eq!(startup["mx"]["mx_host"], "aspmx.l.google.com", "the most preferred MX: {startup}");
    let nothing = settled(&vigil, "no-mail.example").await;
    assert_eq!(
        (nothing["mx"]["state"].as_str(), nothing["provider"].as_str()),
        (Some("no_mx"), Some("other")),
        "{nothing}"
    );
    let gmail = provider(&vigil, "gmail.com").await;
    assert_eq!((gmail["provider"].as_str(), gmail["decided_by"].as_str()), (Some("google"), Some("domain")), "{gmail}");
    let (status, body) = vigil.get("/api/v1/providers?domain=not%20a%20domain").await;
    assert_eq!(status, 400, "{body}");

    // Events that name no MX now carry the one DNS gave, and count under its provider.
    let records =
        [bounce("a1", "jo@acme-corp.example"), bounce("s1", "al@startup.example"), bounce("n1", "x@no-mail.example")];
    let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", records.join(","))).await;
    assert_eq!(status, 200, "{body}");
    vigil
        .wait_for_summary(
            "group_by=provider",
            &json!([
                {"provider": "google", "delivered": 0, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 1},
                {"provider": "microsoft", "delivered": 0, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 1},
                {"provider": "other", "delivered": 0, "deferred": 0, "bounced": 1, "expired": 0, "complaints": 0, "attempts": 1},
            ]),
        )
        .await;
    let (_, events) = vigil.get("/api/v1/events?recipient=jo@acme-corp.example").await;
    assert_eq!(events["rows"][0]["provider"], "microsoft", "{events}");
    let (_, metrics) = vigil.get_text("/metrics").await;
    assert!(metrics.contains("vigil_dns_mx_lookups_total{outcome=\"resolved\"}"), "{metrics}");
    vigil.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_server_that_never_answers_stalls_neither_ingest_nor_the_fold() {
    // A UDP socket nobody reads: every query times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vigil = vigil_with_dns(dir.path(), &silent.local_addr().unwrap().to_string(), 300, "").await;
    let records: Vec<String> = (0..50).map(|i| bounce(&format!("b{i}"), &format!("u{i}@domain-{i}.example"))).collect();
    let (status, body) = vigil.post("/ingest/kumomta", format!("[{}]", records.join(","))).await;
    assert_eq!(status, 200, "{body}");
    vigil
        .wait_for_summary(
            "group_by=provider",
            &json!([{"provider": "other", "delivered": 0, "deferred": 0, "bounced": 50, "expired": 0, "complaints": 0, "attempts": 50}]),
        )
        .await;
    let failed = settled(&vigil, "domain-7.example").await;
    assert_eq!(failed["mx"]["state"], "failed", "{failed}");
    assert!(failed["mx"]["reason"].is_string(), "{failed}");
    vigil.terminate();
}

/// The rows of `/api/v1/blocklists` as `(target, zone) -> row`.
async fn blocklist_rows(vigil: &Vigil) -> std::collections::BTreeMap<(String, String), Value> {
    let (status, body) = vigil.get("/api/v1/blocklists").await;
    assert_eq!(status, 200, "{body}");
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            ((row["target"].as_str().unwrap().to_owned(), row["zone"].as_str().unwrap().to_owned()), row.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_and_delistings_become_events_and_a_refusal_is_no_listing() {
    let listed = [
        "--host-record=10.2.0.192.bl.example,127.0.0.2".to_owned(),
        "--txt-record=10.2.0.192.bl.example,Listed for sending spam".to_owned(),
        // Spamhaus's answer to a query through a public resolver: not a listing.
        "--host-record=10.2.0.192.strict.example,127.255.255.254".to_owned(),
        "--host-record=shop.example.dbl.example,127.0.1.2".to_owned(),
    ];
    let port = common::free_port();
    let dns = Dns::start_on(port, &listed);
    let dir = tempfile::tempdir().unwrap();
    let more = "mx_lookup = false\nblocklists = [\"bl.example\", \"strict.example\"]\ndomain_blocklists = [\"dbl.example\"]\n\
                ips = [\"192.0.2.10\", \"192.0.2.11\"]\nsending_domains = [\"shop.example\"]\ncheck_every_s = 1\n";
    let vigil = vigil_with_dns(dir.path(), &format!("127.0.0.1:{port}"), 2000, more).await;
    eventually("both listings", Duration::from_secs(30), || async {
        vigil.get("/api/v1/blocklists").await.1["listed"] == 2
    })
    .await;
    let rows = blocklist_rows(&vigil).await;
    let row = |target: &str, zone: &str| rows[&(target.to_owned(), zone.to_owned())].clone();
    let listing = row("192.0.2.10", "bl.example");
    assert_eq!((listing["state"].as_str(), listing["code"].as_str()), (Some("listed"), Some("127.0.0.2")), "{listing}");
    assert_eq!(listing["reason"], "Listed for sending spam", "{listing}");
    assert_eq!(row("shop.example", "dbl.example")["state"], "listed");
    let refusal = row("192.0.2.10", "strict.example");
    assert_eq!(
        (refusal["state"].as_str(), refusal["code"].as_str()),
        (Some("refused"), Some("127.255.255.254")),
        "{refusal}"
    );
    assert_eq!(row("192.0.2.11", "bl.example")["state"], "clear");
    eventually("the listings in the warehouse", Duration::from_secs(30), || async {
        vigil.get("/api/v1/events?kind=blocklisted").await.1["rows"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let (_, events) = vigil.get("/api/v1/events?kind=blocklisted").await;
    let texts: Vec<&str> =
        events["rows"].as_array().unwrap().iter().map(|e| e["response_text"].as_str().unwrap()).collect();
    assert!(texts.contains(&"bl.example lists 192.0.2.10: 127.0.0.2 Listed for sending spam"), "{texts:?}");

    // The list drops the IP: a delisting, once.
    drop(dns);
    let _dns = Dns::start_on(port, &listed[2..]);
    eventually("the delisting", Duration::from_secs(30), || async {
        vigil.get("/api/v1/events?kind=delisted").await.1["rows"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    let rows = blocklist_rows(&vigil).await;
    assert_eq!(rows[&("192.0.2.10".to_owned(), "bl.example".to_owned())]["state"], "clear");
    assert_eq!(vigil.get("/api/v1/blocklists").await.1["listed"], 1, "the domain stays listed");
    vigil.terminate();
}

/// A 2048-bit RSA public key (SubjectPublicKeyInfo, base64), made for this test with openssl.
const RSA_2048: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnee7cq8ymUWxIaT9PU3W371ED91b8tS8+clmdA85kK4g9wPeDY8qc2wuX9cmfRQMn+sdsuDV1bU5p7QBHzJ3y9nV9Wrbicz2+kSq0a6pMnoLLkvQjDZrttUT3YB89F5OhF7TvFXV/K7Da0+qjOmF/qW+fvi7EFko4Q2BQYj32PJwix2qLVoaqfy/obrXH8dpDLBZpdW7mgzs7x2Gk2/Lu3oyRu511n/M0Q3XrVmvp5QyOH/UmBov0x2dMI0KlUP8keaeHv8FHuoiwQOMOtuXlg7OqwbYGCmIFqW4GsXtR3DB1F+qWo3uVsVlZVZFkxKtXsOpztTBYYsrWBToedjNTQIDAQAB";

#[tokio::test(flavor = "multi_thread")]
async fn sending_domains_spf_dkim_and_dmarc_are_checked_with_a_fix_each() {
    let mut records: Vec<String> = Vec::new();
    // shop.example: 11 includes (the limit is 10), no DKIM key at s1, DMARC p=none.
    let includes: Vec<String> = (1..=11).map(|i| format!("include:s{i}.example")).collect();
    records.push(format!("--txt-record=shop.example,v=spf1 {} -all", includes.join(" ")));
    records.extend((1..=11).map(|i| format!("--txt-record=s{i}.example,v=spf1 -all")));
    records.push("--txt-record=_dmarc.shop.example,v=DMARC1; p=none".into());
    // good.example: all set; the key in strings of at most 255 bytes, as DNS requires.
    records.push("--txt-record=good.example,v=spf1 ip4:192.0.2.0/24 -all".into());
    let key: Vec<&str> = RSA_2048.as_bytes().chunks(200).map(|c| std::str::from_utf8(c).unwrap()).collect();
    records.push(format!("--txt-record=s1._domainkey.good.example,v=DKIM1; k=rsa; p={}", key.join(",")));
    records.push("--txt-record=_dmarc.good.example,v=DMARC1; p=reject; rua=mailto:dmarc@good.example".into());
    records.push("--txt-record=_mta-sts.good.example,v=STSv1; id=20261201".into());
    records.push("--txt-record=_smtp._tls.good.example,v=TLSRPTv1; rua=mailto:tls@good.example".into());
    let port = common::free_port();
    let _dns = Dns::start_on(port, &records);
    let dir = tempfile::tempdir().unwrap();
    let more = "mx_lookup = false\nblocklists = []\ndomain_blocklists = []\nips = [\"192.0.2.10\"]\n\
                sending_domains = [\"shop.example\", \"good.example\"]\ndkim_selectors = [\"s1\"]\ncheck_every_s = 1\n";
    let vigil = vigil_with_dns(dir.path(), &format!("127.0.0.1:{port}"), 2000, more).await;
    eventually("both domains checked", Duration::from_secs(30), || async {
        vigil.get("/api/v1/domains").await.1["domains"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    let (_, body) = vigil.get("/api/v1/domains").await;
    let report =
        |domain: &str| body["domains"].as_array().unwrap().iter().find(|d| d["domain"] == domain).unwrap().clone();
    let has =
        |report: &Value, check: &str, severity: &str, text: &str| {
            report["findings"].as_array().unwrap().iter().any(|f| {
                f["check"] == check && f["severity"] == severity && f["message"].as_str().unwrap().contains(text)
            })
        };
    let shop = report("shop.example");
    assert_eq!(shop["severity"], "error", "{shop}");
    assert!(has(&shop, "spf", "error", "11 DNS lookups"), "{shop}");
    assert!(has(&shop, "spf", "error", "192.0.2.10 sends for the domain but SPF does not allow it"), "{shop}");
    assert!(has(&shop, "dkim", "error", "selector s1: no key published"), "{shop}");
    assert!(has(&shop, "dmarc", "warning", "p=none"), "{shop}");
    assert!(
        shop["findings"].as_array().unwrap().iter().filter(|f| f["severity"] != "ok").all(|f| f["fix"].is_string()),
        "{shop}"
    );
    let good = report("good.example");
    assert_eq!(good["severity"], "ok", "{good}");
    assert!(has(&good, "spf", "ok", "0 DNS lookups"), "{good}");
    assert!(has(&good, "dkim", "ok", "RSA key of 2048 bits"), "{good}");
    assert!(has(&good, "dmarc", "ok", "p=reject"), "{good}");
    assert!(has(&good, "mta_sts", "ok", "published") && has(&good, "tls_rpt", "ok", "published"), "{good}");
    vigil.terminate();
}
