//! Relay webhooks, bounce mail and DMARC reports through `vigil run` end to end: configured
//! from the file, verified, stored, counted in the summary and in reputation, and DMARC
//! answered with the sender's own IPs told from strangers'.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;

use common::{Vigil, eventually};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

const MAILGUN_KEY: &str = "key-0123456789";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vigil.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[relays.mailgun]
signing_key = "{MAILGUN_KEY}"
# The report below is from 2024; the deliveries are dated to match it.
max_age_seconds = 3153600000

[relays.postmark]
basic_auth = {{ username = "postmark", password = "s3cret" }}
"#
        ),
    )
    .unwrap();
    path
}

fn testdata(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(path)).unwrap()
}

/// A Mailgun `delivered` event from `ip` at `at` (epoch seconds), signed with the test key.
fn mailgun_delivery(id: &str, ip: &str, at: u64) -> String {
    let token = format!("token-{id}-0123456789abcdef0123456789abcdef0123456789");
    let timestamp = at.to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(MAILGUN_KEY.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "event": "delivered", "id": id, "timestamp": at, "recipient": "alice@gmail.com",
            "envelope": {"sending-ip": ip, "sender": "news@example.com"},
            "delivery-status": {"code": 250, "message": "OK"},
            "user-variables": {"tenant": "acme", "campaign": "spring"},
        }
    })
    .to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn zip(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    writer.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
    writer.write_all(bytes).unwrap();
    writer.finish().unwrap().into_inner()
}

#[tokio::test]
async fn relays_mail_and_dmarc_reports_are_stored_counted_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let vigil = Vigil::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]).await;
    let http = reqwest::Client::new();

    // Mailgun: a delivery from one of the report's source IPs, sent twice; a forged one.
    let report_end = 1_711_843_200;
    let delivery = mailgun_delivery("d1", "100.24.188.149", report_end - 3600);
    for _ in 0..2 {
        let (status, body) = vigil.post("/ingest/mailgun", delivery.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    let forged = delivery.replace(&delivery[delivery.find("\"signature\":\"").unwrap() + 13..][..4], "0000");
    let (status, body) = vigil.post("/ingest/mailgun", forged).await;
    assert_eq!(status, 401, "{body}");

    // Postmark: a hard bounce, with its Basic credentials; without them, refused.
    let bounce = testdata("relays/postmark/anymail_bounce_hard.json");
    let refused = http.post(vigil.url("/ingest/postmark")).body(bounce.clone()).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let stored = http
        .post(vigil.url("/ingest/postmark"))
        .basic_auth("postmark", Some("s3cret"))
        .body(bounce)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);

    // A bounce email uploaded.
    let (status, body) = vigil.post("/ingest/dsn", testdata("mail/dsn_postfix_real_bbox_fr.eml")).await;
    assert_eq!((status, body["events"].clone()), (200, json!(1)), "{body}");
    let (status, body) = vigil.post("/ingest/dsn", b"not an email at all".to_vec()).await;
    assert_eq!(status, 422, "{body}");

    // The DMARC report as XML, gzip and zip: one report, stored once.
    let xml = testdata("dmarc/parsedmarc_outlook_com_aggregate.xml");
    let (status, body) = vigil.post("/ingest/dmarc", xml.clone()).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["events"].as_u64().unwrap();
    assert!(rows >= 1);
    for packed in [gzip(&xml), zip("report.xml", &xml)] {
        let (status, body) = vigil.post("/ingest/dmarc", packed).await;
        assert_eq!((status, body["duplicates"].as_u64()), (200, Some(rows)), "{body}");
    }
    // Malformed XML: the line and the reason, and a dead letter.
    let broken = String::from_utf8(xml).unwrap().replacen("</source_ip>", "</sourceip>", 1);
    let (status, body) = vigil.post("/ingest/dmarc", broken).await;
    assert_eq!(status, 422, "{body}");
    let reason = body["errors"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("line 24"), "{reason}");
    let (_, letters) = vigil.get("/api/v1/deadletters").await;
    assert_eq!(letters["total"], json!(2), "the bad email and the bad report: {letters}");

    // Counted like MTA events: by provider, by tenant, and in reputation.
    // The report's period and the relay's events are in 2024; the DSN is dated 2025.
    let range = "from=2024-03-01T00:00:00Z&to=2025-03-01T00:00:00Z";
    eventually("relay events in the summary", std::time::Duration::from_secs(30), || async {
        let (_, body) = vigil.get(&format!("/api/v1/summary?group_by=tenant&{range}")).await;
        body["rows"].as_array().is_some_and(|rows| rows.iter().any(|r| r["tenant"] == "acme" && r["delivered"] == 1))
    })
    .await;
    let (_, body) = vigil.get(&format!("/api/v1/reputation?scope=provider&{range}")).await;
    let gmail = body["rows"].as_array().unwrap().iter().find(|r| r["provider"] == "google");
    assert_eq!(gmail.map(|r| r["delivered"].clone()), Some(json!(1)), "the relay delivery counts for Gmail: {body}");

    // DMARC by source IP: the IP that sent the Mailgun delivery is ours, the others are not.
    let (status, body) = vigil.get(&format!("/api/v1/dmarc?group_by=source_ip&{range}")).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    let ours = rows.iter().find(|r| r["source_ip"] == "100.24.188.149").unwrap();
    assert_eq!(ours["known_source"], json!(true), "{body}");
    assert!(ours["messages"].as_u64().unwrap() >= 1);
    assert_eq!(
        ours["dmarc_pass"].as_u64().unwrap() + ours["dmarc_fail"].as_u64().unwrap(),
        ours["messages"].as_u64().unwrap()
    );
    let (status, body) = vigil.get("/api/v1/dmarc?group_by=ip&from=2024-03-01T00:00:00Z").await;
    assert_eq!(status, 400, "{body}");
    let _: Value = body;
    vigil.terminate();
}
