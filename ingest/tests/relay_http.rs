//! The relay receivers over HTTP, against a real log: signatures verified with the providers'
//! own test vectors (SendGrid, Mailgun) and with keys and certificates made here by `openssl`
//! (SNS versions 1 and 2, Postal); a tampered body refused with nothing stored; a repeated
//! delivery stored once; limits and back-pressure.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tower::ServiceExt;
use vigil_ingest::kumomta::Admission;
use vigil_ingest::relay::Provider;
use vigil_ingest::relay::http::{RelaysConfig, router};
use vigil_ingest::relay::verify::{BasicAuth, ReceiverConfig};
use vigil_log::EventLog;

fn testdata(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/relays").join(path)
}

/// The samples are years old: their signed timestamps are taken as fresh for these tests.
const FOREVER: i64 = 100 * 365 * 86_400;

struct Harness {
    _dir: tempfile::TempDir,
    log: EventLog,
    app: Router,
}

impl Harness {
    fn new(relays: RelaysConfig) -> Self {
        Self::with(relays, |log| log, Admission::new(8), 1 << 20)
    }

    fn with(
        relays: RelaysConfig,
        limit: impl FnOnce(EventLog) -> EventLog,
        admission: Admission,
        max_body: usize,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = limit(EventLog::open(dir.path()).unwrap());
        let app = router(&log, max_body, &admission, &relays).unwrap();
        Self { _dir: dir, log, app }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response.headers().contains_key(axum::http::header::RETRY_AFTER);
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let mut value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if retry_after {
            value["retry_after"] = json!(true);
        }
        (status, value)
    }

    fn events(&self) -> u64 {
        self.log.head()
    }
}

fn one(provider: Provider, config: ReceiverConfig) -> RelaysConfig {
    BTreeMap::from([(provider, config)])
}

fn post(path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).unwrap()
}

fn flip_a_byte(body: &[u8], needle: &[u8]) -> Vec<u8> {
    let at = body.windows(needle.len()).position(|w| w == needle).expect("needle in body");
    let mut changed = body.to_vec();
    changed[at] ^= 0x01;
    changed
}

// --- SendGrid: the signed vector from sendgrid-python's tests.

fn sendgrid_vector() -> (String, String, Vec<u8>) {
    let headers = std::fs::read_to_string(testdata("sendgrid/signed_headers.txt")).unwrap();
    let field =
        |prefix: &str| headers.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_owned()).unwrap();
    let signature = field("X-Twilio-Email-Event-Webhook-Signature:");
    let timestamp = field("X-Twilio-Email-Event-Webhook-Timestamp:");
    let key = field("PUBLIC_KEY=");
    let body = std::fs::read(testdata("sendgrid/signed_body.raw")).unwrap();
    (format!("{signature}\n{timestamp}"), key, body)
}

#[tokio::test]
async fn sendgrid_signed_events_verify_and_a_changed_byte_stores_nothing() {
    let (headers, key, body) = sendgrid_vector();
    let (signature, timestamp) = headers.split_once('\n').unwrap();
    let config = ReceiverConfig { public_key: Some(key), max_age_seconds: Some(FOREVER), ..ReceiverConfig::default() };
    let harness = Harness::new(one(Provider::Sendgrid, config));
    let signed = |body: Vec<u8>| {
        post(
            "/ingest/sendgrid",
            &[
                ("x-twilio-email-event-webhook-signature", signature),
                ("x-twilio-email-event-webhook-timestamp", timestamp),
            ],
            body,
        )
    };

    let (status, answer) = harness.send(signed(flip_a_byte(&body, b"hello@world"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("does not verify"), "{answer}");
    assert_eq!(harness.events(), 0, "nothing stored from a tampered body");

    // The same delivery three times: stored once.
    for attempt in 0..3 {
        let (status, answer) = harness.send(signed(body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["duplicates"], json!(if attempt == 0 { 0 } else { 1 }), "{answer}");
    }
    assert_eq!(harness.events(), 1);

    // Unsigned, and signed too long ago (the default window).
    let (status, _) = harness.send(post("/ingest/sendgrid", &[], body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let config = ReceiverConfig { public_key: Some(sendgrid_vector().1), ..ReceiverConfig::default() };
    let strict = Harness::new(one(Provider::Sendgrid, config));
    let (status, answer) = strict.send(signed(body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer["error"].as_str().unwrap().contains("replay"), "{answer}");
}

// --- Mailgun: Anymail's samples, signed with its test key.

const MAILGUN_KEY: &str = "TEST_WEBHOOK_SIGNING_KEY";

#[tokio::test]
async fn mailgun_signatures_verify_and_a_token_signs_one_body() {
    let config = ReceiverConfig {
        signing_key: Some(MAILGUN_KEY.into()),
        max_age_seconds: Some(FOREVER),
        ..ReceiverConfig::default()
    };
    let harness = Harness::new(one(Provider::Mailgun, config));
    let body = std::fs::read(testdata("mailgun/anymail_failed_permanent.json")).unwrap();
    let json = [("content-type", "application/json")];

    let signature: Value = serde_json::from_slice::<Value>(&body).unwrap()["signature"]["signature"].clone();
    let forged = flip_a_byte(&body, &signature.as_str().unwrap().as_bytes()[..8]);
    let (status, _) = harness.send(post("/ingest/mailgun", &json, forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(harness.events(), 0);

    for _ in 0..3 {
        let (status, answer) = harness.send(post("/ingest/mailgun", &json, body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(harness.events(), 1, "one event however often Mailgun retries");

    // Mailgun signs the timestamp and token, not the body: a body changed under a captured
    // signature is caught by the token having signed another body already.
    let (status, answer) =
        harness.send(post("/ingest/mailgun", &json, flip_a_byte(&body, b"invalid@example.com"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer["error"].as_str().unwrap().contains("already used"), "{answer}");
    assert_eq!(harness.events(), 1);
}

// --- SNS: a certificate and key made here, versions 1 (SHA1) and 2 (SHA256).

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// A self-signed RSA certificate `cert.pem` with its key `key.pem` in `dir`.
fn certificate(dir: &Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sns.amazonaws.com",
        ],
        dir,
    );
}

fn sign(dir: &Path, digest: &str, message: &[u8]) -> String {
    std::fs::write(dir.join("message"), message).unwrap();
    BASE64.encode(openssl(&["dgst", digest, "-sign", "key.pem", "message"], dir))
}

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";
const CERT_URL: &str = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem";

fn sns_notification(dir: &Path, version: &str, message: &str) -> Value {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let message_id = format!("msg-{version}-{}", message.len());
    let string_to_sign = format!(
        "Message\n{message}\nMessageId\n{message_id}\nTimestamp\n{timestamp}\nTopicArn\n{TOPIC}\nType\nNotification\n"
    );
    let digest = if version == "1" { "-sha1" } else { "-sha256" };
    json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": timestamp,
        "SignatureVersion": version,
        "Signature": sign(dir, digest, string_to_sign.as_bytes()),
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    })
}

#[tokio::test]
async fn sns_notifications_verify_with_versions_1_and_2_and_nothing_else_gets_in() {
    let keys = tempfile::tempdir().unwrap();
    certificate(keys.path());
    let pinned = keys.path().join("pinned");
    std::fs::create_dir(&pinned).unwrap();
    std::fs::copy(keys.path().join("cert.pem"), pinned.join("SimpleNotificationService-0123456789abcdef.pem")).unwrap();
    let config = ReceiverConfig {
        topic_arns: vec![TOPIC.into()],
        certificate_dir: Some(pinned),
        fetch_certificates: false,
        ..ReceiverConfig::default()
    };
    let harness = Harness::new(one(Provider::Ses, config));
    let bounce = std::fs::read_to_string(testdata("amazon_ses/notif_bounce_without_dsn.json")).unwrap();
    let headers = [("x-amz-sns-message-type", "Notification"), ("content-type", "text/plain; charset=UTF-8")];

    for version in ["1", "2"] {
        let notification = sns_notification(keys.path(), version, &bounce);
        let (status, answer) = harness.send(post("/ingest/ses", &headers, notification.to_string())).await;
        assert_eq!(status, StatusCode::OK, "version {version}: {answer}");
        assert_eq!(answer["accepted"], json!(2), "two bounced recipients, never the destination list: {answer}");
    }
    assert_eq!(harness.events(), 2, "the same SES bounce twice, by two notifications: stored once");

    // A changed message, a topic not allowed, a certificate not on an SNS host.
    let mut tampered = sns_notification(keys.path(), "2", &bounce);
    tampered["Message"] = json!(bounce.replace("jane@example.com", "jane@example.org"));
    let mut other_topic = sns_notification(keys.path(), "2", &bounce);
    other_topic["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:theirs");
    let mut elsewhere = sns_notification(keys.path(), "2", &bounce);
    elsewhere["SigningCertURL"] = json!("https://attacker.example/SimpleNotificationService-0123456789abcdef.pem");
    for (what, request, reason) in [
        ("tampered", tampered, "does not verify"),
        ("topic", other_topic, "not in [relays.ses] topic_arns"),
        ("certificate host", elsewhere, "not an SNS host"),
    ] {
        let (status, answer) = harness.send(post("/ingest/ses", &headers, request.to_string())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{what}: {answer}");
    }
    assert_eq!(harness.events(), 2);

    // A subscription confirmation: verified, answered, nothing stored (the URL is logged).
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let subscribe = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=abc";
    let message = "You have chosen to subscribe";
    let string_to_sign = format!(
        "Message\n{message}\nMessageId\nsub-1\nSubscribeURL\n{subscribe}\nTimestamp\n{timestamp}\nToken\nabc\nTopicArn\n{TOPIC}\nType\nSubscriptionConfirmation\n"
    );
    let confirmation = json!({
        "Type": "SubscriptionConfirmation", "MessageId": "sub-1", "Token": "abc", "TopicArn": TOPIC,
        "Message": message, "SubscribeURL": subscribe, "Timestamp": timestamp, "SignatureVersion": "2",
        "Signature": sign(keys.path(), "-sha256", string_to_sign.as_bytes()), "SigningCertURL": CERT_URL,
    });
    let headers = [("x-amz-sns-message-type", "SubscriptionConfirmation")];
    let (status, answer) = harness.send(post("/ingest/ses", &headers, confirmation.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(harness.events(), 2);
}

// --- Postal: RSA over the body, with a key made here.

#[tokio::test]
async fn postal_signatures_verify_over_the_raw_body() {
    let keys = tempfile::tempdir().unwrap();
    certificate(keys.path());
    let public = String::from_utf8(openssl(&["pkey", "-in", "key.pem", "-pubout"], keys.path())).unwrap();
    let config = ReceiverConfig { public_key: Some(public), ..ReceiverConfig::default() };
    let harness = Harness::new(one(Provider::Postal, config));
    let body = std::fs::read(testdata("postal/anymail_message_delivery_failed.json")).unwrap();
    let signature = sign(keys.path(), "-sha256", &body);
    let headers = [("x-postal-signature-256", signature.as_str())];
    let (status, answer) = harness.send(post("/ingest/postal", &headers, flip_a_byte(&body, b"failed@"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(harness.events(), 0);
    let (status, answer) = harness.send(post("/ingest/postal", &headers, body.clone())).await;
    assert_eq!((status, answer["events"].clone()), (StatusCode::OK, json!(1)), "{answer}");
    // Postal's legacy SHA1 header alone.
    let legacy = sign(keys.path(), "-sha1", &body);
    let (status, answer) = harness.send(post("/ingest/postal", &[("x-postal-signature", &legacy)], body)).await;
    assert_eq!((status, answer["duplicates"].clone()), (StatusCode::OK, json!(1)), "{answer}");
}

// --- Credentials, limits, back-pressure.

fn postmark() -> RelaysConfig {
    let auth = BasicAuth { username: "postmark".into(), password: "s3cret".into() };
    one(Provider::Postmark, ReceiverConfig { basic_auth: Some(auth), ..ReceiverConfig::default() })
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn credentials_are_checked_and_bodies_are_bounded() {
    let harness = Harness::with(postmark(), |log| log, Admission::new(8), 4096);
    let body = std::fs::read(testdata("postmark/anymail_bounce_hard.json")).unwrap();
    let good = basic("postmark", "s3cret");
    let bad = basic("postmark", "guess");
    let (status, _) = harness.send(post("/ingest/postmark", &[("authorization", &bad)], body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = harness.send(post("/ingest/postmark", &[], body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(harness.events(), 0);
    let (status, answer) = harness.send(post("/ingest/postmark", &[("authorization", &good)], body)).await;
    assert_eq!((status, answer["events"].clone()), (StatusCode::OK, json!(1)), "{answer}");
    let (status, _) = harness.send(post("/ingest/postmark", &[("authorization", &good)], vec![b' '; 5000])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Verified but not Postmark's format: 400, dead-lettered, not lost.
    let (status, answer) = harness.send(post("/ingest/postmark", &[("authorization", &good)], "[1,2]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(harness.log.dead_letter_count().unwrap(), 1);
}

#[tokio::test]
async fn a_flood_while_the_log_is_full_is_refused_with_retry_after() {
    // Room for one event; nothing consumes it, so the second delivery finds the log full.
    let harness = Harness::with(
        postmark(),
        |log| log.with_limit("nobody", "nobody-dead-letters", 1),
        Admission::with_wait(2, Duration::from_millis(300)),
        1 << 20,
    );
    let good = basic("postmark", "s3cret");
    let record = |id: u32| {
        let mut value: Value =
            serde_json::from_slice(&std::fs::read(testdata("postmark/anymail_bounce_hard.json")).unwrap()).unwrap();
        value["ID"] = json!(id);
        value.to_string()
    };
    let (status, _) = harness.send(post("/ingest/postmark", &[("authorization", &good)], record(1))).await;
    assert_eq!(status, StatusCode::OK);
    let flood: Vec<_> =
        (2..40).map(|id| harness.send(post("/ingest/postmark", &[("authorization", &good)], record(id)))).collect();
    let answers = futures::future::join_all(flood).await;
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(answer["retry_after"], json!(true), "{answer}");
    }
    assert_eq!(harness.events(), 1, "nothing half-stored");
}
