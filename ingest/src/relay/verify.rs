//! Trusting nothing that cannot be verified: each relay's signature or credential, checked
//! before a body is read as events.
//!
//! | relay | what proves the request |
//! |---|---|
//! | SES (SNS) | RSA signature (SHA1 for `SignatureVersion` 1, SHA256 for 2) by the certificate at `SigningCertURL`, which must be on an SNS host; the topic on the allow-list |
//! | SendGrid | ECDSA P-256 / SHA-256 over the timestamp header and the raw body, with the configured public key |
//! | Mailgun | HMAC-SHA256 of timestamp and token with the signing key; a token is good for one body |
//! | Postal | RSA (SHA256, else the legacy SHA1 header) over the raw body, with the server's public key |
//! | Postmark, SparkPost, Brevo, Mailjet | HTTP Basic credentials or a bearer token (they sign nothing) |
//! | Elastic Email | a shared secret in the query string (`secret=`) |
//!
//! Signed timestamps older than the receiver's window are refused, so a captured request cannot
//! be replayed later. Every refusal says why, and nothing of the request is stored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{Provider, Tags};

/// One relay receiver's settings (`[relays.<provider>]`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Tenant and campaign keys in the relay's tags or metadata.
    #[serde(default, flatten)]
    pub tags: TagKeys,
    /// HTTP Basic credentials the relay sends (Postmark, SparkPost, Brevo, Mailjet: put them in
    /// the webhook URL, `https://user:password@host/ingest/postmark`).
    pub basic_auth: Option<BasicAuth>,
    /// A bearer token (SparkPost, Brevo), or Elastic Email's `secret` query parameter.
    pub token: Option<String>,
    /// SendGrid: the verification key shown in the Event Webhook settings (base64 DER).
    /// Postal: the server's public signing key (PEM, or base64 DER as Postal shows it).
    pub public_key: Option<String>,
    /// Mailgun: the HTTP webhook signing key.
    pub signing_key: Option<String>,
    /// SES: the SNS topics whose notifications are taken (their ARNs). Required: an SNS
    /// signature only proves that AWS sent the message, not that the topic is yours.
    #[serde(default)]
    pub topic_arns: Vec<String>,
    /// SES: a directory of SNS signing certificates (`SimpleNotificationService-<id>.pem`, as
    /// named in `SigningCertURL`); certificates found there are never fetched.
    pub certificate_dir: Option<PathBuf>,
    /// SES: fetch signing certificates not in `certificate_dir` from their SNS URL. Default true.
    #[serde(default = "yes")]
    pub fetch_certificates: bool,
    /// SES: confirm a new subscription by fetching its `SubscribeURL`. Default false: the URL
    /// is logged for an operator to open.
    #[serde(default)]
    pub confirm_subscriptions: bool,
    /// Signed timestamps older than this are refused (replays), in seconds. Default 900 (SNS:
    /// 3600, as its retries may run that long).
    pub max_age_seconds: Option<i64>,
}

fn yes() -> bool {
    true
}

/// `tenant_key` and `campaign_key`, flattened into the receiver's section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TagKeys {
    #[serde(default = "default_tenant_key")]
    pub tenant_key: String,
    #[serde(default = "default_campaign_key")]
    pub campaign_key: String,
}

impl Default for TagKeys {
    fn default() -> Self {
        let tags = Tags::default();
        Self { tenant_key: tags.tenant_key, campaign_key: tags.campaign_key }
    }
}

fn default_tenant_key() -> String {
    Tags::default().tenant_key
}

fn default_campaign_key() -> String {
    Tags::default().campaign_key
}

impl TagKeys {
    #[must_use]
    pub fn tags(&self) -> Tags {
        Tags { tenant_key: self.tenant_key.clone(), campaign_key: self.campaign_key.clone() }
    }
}

// Secrets are never printed.
impl std::fmt::Debug for ReceiverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| v.as_ref().map(|_| "<set>");
        f.debug_struct("ReceiverConfig")
            .field("tags", &self.tags)
            .field("basic_auth", &self.basic_auth.as_ref().map(|b| &b.username))
            .field("token", &set(&self.token))
            .field("public_key", &set(&self.public_key))
            .field("signing_key", &set(&self.signing_key))
            .field("topic_arns", &self.topic_arns)
            .field("certificate_dir", &self.certificate_dir)
            .field("fetch_certificates", &self.fetch_certificates)
            .field("confirm_subscriptions", &self.confirm_subscriptions)
            .field("max_age_seconds", &self.max_age_seconds)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").field("username", &self.username).field("password", &"<set>").finish()
    }
}

/// Why a request was refused (401): said to the caller and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse(reason: impl Into<String>) -> Refusal {
    Refusal(reason.into())
}

/// What a verified SNS request asks besides events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnsControl {
    /// A subscription to confirm: the URL to fetch.
    Subscribe { topic: String, url: String },
    /// The topic was unsubscribed.
    Unsubscribed { topic: String },
}

/// Mailgun tokens remembered, at most: with the replay window, a token cannot come back once
/// forgotten without its timestamp being stale.
const MAILGUN_TOKENS: usize = 100_000;
/// SNS certificates kept, at most (AWS rotates a handful).
const SNS_CERTIFICATES: usize = 64;

/// A receiver's verifier: its configuration and what it caches (SNS certificates, Mailgun
/// tokens).
pub struct Verifier {
    provider: Provider,
    config: ReceiverConfig,
    /// SendGrid's or Postal's key, decoded once.
    public_key: Option<Vec<u8>>,
    sns_keys: Mutex<HashMap<String, Vec<u8>>>,
    mailgun_tokens: Mutex<lru::LruCache<String, [u8; 32]>>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("provider", &self.provider).field("config", &self.config).finish()
    }
}

impl Verifier {
    /// Checks that the configuration can verify `provider`'s requests.
    ///
    /// # Errors
    /// What is missing or malformed, in words for the configuration's author.
    pub fn new(provider: Provider, config: ReceiverConfig) -> Result<Self, String> {
        let name = provider.as_str();
        let public_key = match provider {
            Provider::Sendgrid => {
                let key = config
                    .public_key
                    .as_deref()
                    .ok_or("[relays.sendgrid] needs `public_key` (the Event Webhook's verification key)")?;
                Some(ec_point(key).map_err(|e| format!("[relays.sendgrid] public_key: {e}"))?)
            }
            Provider::Postal => {
                let key = config
                    .public_key
                    .as_deref()
                    .ok_or("[relays.postal] needs `public_key` (the server's signing key)")?;
                Some(rsa_key_from_text(key).map_err(|e| format!("[relays.postal] public_key: {e}"))?)
            }
            _ => None,
        };
        match provider {
            Provider::Ses if config.topic_arns.is_empty() => {
                return Err("[relays.ses] needs `topic_arns`: the SNS topics to take notifications from".into());
            }
            Provider::Mailgun if config.signing_key.as_deref().is_none_or(str::is_empty) => {
                return Err("[relays.mailgun] needs `signing_key` (the HTTP webhook signing key)".into());
            }
            Provider::Postmark | Provider::Sparkpost | Provider::Brevo | Provider::Mailjet
                if config.basic_auth.is_none() && config.token.is_none() =>
            {
                return Err(format!(
                    "[relays.{name}] needs `basic_auth` or `token`: {name} signs nothing, so a credential is all that tells its requests from forgeries"
                ));
            }
            Provider::Elasticemail if config.token.is_none() => {
                return Err(
                    "[relays.elasticemail] needs `token`, sent by Elastic Email as the `secret` query parameter".into(),
                );
            }
            _ => {}
        }
        let http = (provider == Provider::Ses && (config.fetch_certificates || config.confirm_subscriptions))
            .then(|| reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build())
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            provider,
            config,
            public_key,
            sns_keys: Mutex::new(HashMap::new()),
            mailgun_tokens: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAILGUN_TOKENS).expect("non-zero"),
            )),
            http,
        })
    }

    #[must_use]
    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    fn max_age(&self) -> chrono::TimeDelta {
        let default = if self.provider == Provider::Ses { 3600 } else { 900 };
        chrono::TimeDelta::seconds(self.config.max_age_seconds.unwrap_or(default))
    }

    fn fresh(&self, signed_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refusal> {
        let age = now - signed_at;
        if age > self.max_age() {
            return Err(refuse(format!(
                "the signed timestamp {signed_at} is {} s old, past the {} s window (a replay?)",
                age.num_seconds(),
                self.max_age().num_seconds()
            )));
        }
        // A clock a little ahead is tolerated; far ahead is not a real request.
        if -age > self.max_age() {
            return Err(refuse(format!("the signed timestamp {signed_at} is in the future")));
        }
        Ok(())
    }

    /// Verifies one request; for SNS, also says whether it is a subscription message.
    ///
    /// # Errors
    /// The reason the request is not trusted.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<SnsControl>, Refusal> {
        match self.provider {
            Provider::Ses => self.verify_sns(headers, body, now).await,
            Provider::Sendgrid => self.verify_sendgrid(headers, body, now).map(|()| None),
            Provider::Mailgun => self.verify_mailgun(body, now).map(|()| None),
            Provider::Postal => self.verify_postal(headers, body).map(|()| None),
            Provider::Elasticemail => {
                let expected = self.config.token.as_deref().unwrap_or_default();
                let given = query
                    .map(|q| {
                        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "secret").map(|(_, v)| v.into_owned())
                    })
                    .unwrap_or_default();
                match given {
                    Some(secret) if equal(secret.as_bytes(), expected.as_bytes()) => Ok(None),
                    Some(_) => Err(refuse("the `secret` query parameter is wrong")),
                    None => Err(refuse("no `secret` query parameter")),
                }
            }
            Provider::Postmark | Provider::Sparkpost | Provider::Brevo | Provider::Mailjet => {
                self.verify_credential(headers).map(|()| None)
            }
        }
    }

    fn verify_credential(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Err(refuse("no Authorization header: put the configured credentials in the webhook URL"));
        };
        if let Some(token) = authorization.strip_prefix("Bearer ").map(str::trim)
            && let Some(expected) = &self.config.token
        {
            return if equal(token.as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(refuse("the bearer token is wrong"))
            };
        }
        // SparkPost can be set to send the token itself as the header value.
        if let Some(expected) = &self.config.token
            && !authorization.starts_with("Basic ")
        {
            return if equal(authorization.trim().as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(refuse("the token in Authorization is wrong"))
            };
        }
        if let (Some(encoded), Some(expected)) = (authorization.strip_prefix("Basic "), &self.config.basic_auth) {
            let decoded = BASE64.decode(encoded.trim()).map_err(|_| refuse("Basic credentials are not base64"))?;
            let wanted = format!("{}:{}", expected.username, expected.password);
            return if equal(&decoded, wanted.as_bytes()) { Ok(()) } else { Err(refuse("wrong Basic credentials")) };
        }
        Err(refuse("the Authorization header is not a configured kind of credential"))
    }

    fn verify_sendgrid(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Result<(), Refusal> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header("x-twilio-email-event-webhook-signature").ok_or_else(|| {
            refuse("no X-Twilio-Email-Event-Webhook-Signature header: turn on the signed Event Webhook")
        })?;
        let timestamp = header("x-twilio-email-event-webhook-timestamp")
            .ok_or_else(|| refuse("no X-Twilio-Email-Event-Webhook-Timestamp header"))?;
        let signature = BASE64.decode(signature.trim()).map_err(|_| refuse("the signature is not base64"))?;
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        let key = self.public_key.as_deref().expect("checked in new");
        check(&signature::ECDSA_P256_SHA256_ASN1, key, &signed, &signature, "the SendGrid signature")?;
        let seconds: i64 = timestamp.trim().parse().map_err(|_| refuse("the timestamp header is not a number"))?;
        self.fresh(DateTime::from_timestamp(seconds, 0).ok_or_else(|| refuse("the timestamp is out of range"))?, now)
    }

    fn verify_mailgun(&self, body: &[u8], now: DateTime<Utc>) -> Result<(), Refusal> {
        let value: Value =
            serde_json::from_slice(body).map_err(|_| refuse("the body is not JSON, so it carries no signature"))?;
        let block = value.get("signature").ok_or_else(|| refuse("no `signature` block"))?;
        let field = |name: &str| {
            block.get(name).and_then(Value::as_str).ok_or_else(|| refuse(format!("no `signature.{name}`")))
        };
        let (timestamp, token, signature) = (field("timestamp")?, field("token")?, field("signature")?);
        let tag = hex_decode(signature).ok_or_else(|| refuse("`signature.signature` is not hex"))?;
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            self.config.signing_key.as_deref().unwrap_or_default().as_bytes(),
        );
        aws_lc_rs::hmac::verify(&key, format!("{timestamp}{token}").as_bytes(), &tag)
            .map_err(|_| refuse("the Mailgun signature does not match the signing key"))?;
        let seconds: i64 = timestamp.trim().parse().map_err(|_| refuse("`signature.timestamp` is not a number"))?;
        self.fresh(DateTime::from_timestamp(seconds, 0).ok_or_else(|| refuse("the timestamp is out of range"))?, now)?;
        // A token signs one delivery: the same body again is the relay retrying (stored once by
        // its event id); another body under it is a forgery built from a captured signature.
        let digest = *blake3::hash(body).as_bytes();
        let mut tokens = self.mailgun_tokens.lock().expect("not poisoned");
        match tokens.get(token) {
            Some(seen) if *seen != digest => Err(refuse("this signature token was already used for another body")),
            Some(_) => Ok(()),
            None => {
                tokens.put(token.to_owned(), digest);
                Ok(())
            }
        }
    }

    fn verify_postal(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let key = self.public_key.as_deref().expect("checked in new");
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (signature, algorithm): (_, &dyn VerificationAlgorithm) =
            match (header("x-postal-signature-256"), header("x-postal-signature")) {
                (Some(sha256), _) => (sha256, &signature::RSA_PKCS1_2048_8192_SHA256),
                (None, Some(sha1)) => (sha1, &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY),
                (None, None) => return Err(refuse("no X-Postal-Signature-256 or X-Postal-Signature header")),
            };
        let signature = BASE64.decode(signature.trim()).map_err(|_| refuse("the signature is not base64"))?;
        check(algorithm, key, body, &signature, "the Postal signature")
    }

    async fn verify_sns(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<SnsControl>, Refusal> {
        let message: Value =
            serde_json::from_slice(body).map_err(|_| refuse("the body is not an SNS message (not JSON)"))?;
        let field = |name: &str| message.get(name).and_then(Value::as_str);
        let kind = field("Type").ok_or_else(|| refuse("not an SNS message: no `Type`"))?;
        if let Some(header) = headers.get("x-amz-sns-message-type").and_then(|v| v.to_str().ok())
            && header != kind
        {
            return Err(refuse(format!("x-amz-sns-message-type says {header} but the message is a {kind}")));
        }
        let topic = field("TopicArn").ok_or_else(|| refuse("no `TopicArn`"))?;
        if !self.config.topic_arns.iter().any(|t| t == topic) {
            return Err(refuse(format!("topic {topic} is not in [relays.ses] topic_arns")));
        }
        let names: &[&str] = match kind {
            "Notification" => &["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                &["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
            }
            other => return Err(refuse(format!("unknown SNS message type {other}"))),
        };
        // Each present field as `name\nvalue\n`, in this order; an absent Subject is left out.
        let mut signed = String::new();
        for name in names {
            match field(name) {
                Some(value) => {
                    signed.push_str(name);
                    signed.push('\n');
                    signed.push_str(value);
                    signed.push('\n');
                }
                None if *name == "Subject" => {}
                None => return Err(refuse(format!("no `{name}` in the SNS {kind}"))),
            }
        }
        let algorithm: &dyn VerificationAlgorithm = match field("SignatureVersion") {
            Some("1") => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            Some("2") => &signature::RSA_PKCS1_2048_8192_SHA256,
            other => return Err(refuse(format!("unknown SNS SignatureVersion {other:?}"))),
        };
        let signature = BASE64
            .decode(field("Signature").ok_or_else(|| refuse("no `Signature`"))?)
            .map_err(|_| refuse("`Signature` is not base64"))?;
        let url = field("SigningCertURL").ok_or_else(|| refuse("no `SigningCertURL`"))?;
        let key = self.sns_key(url).await?;
        check(algorithm, &key, signed.as_bytes(), &signature, "the SNS signature")?;
        let timestamp =
            field("Timestamp").and_then(super::from_rfc3339).ok_or_else(|| refuse("`Timestamp` is not a time"))?;
        self.fresh(timestamp, now)?;
        Ok(match kind {
            "SubscriptionConfirmation" => {
                let url = field("SubscribeURL").unwrap_or_default();
                sns_url(url, false).map_err(|e| refuse(format!("SubscribeURL: {e}")))?;
                Some(SnsControl::Subscribe { topic: topic.to_owned(), url: url.to_owned() })
            }
            "UnsubscribeConfirmation" => Some(SnsControl::Unsubscribed { topic: topic.to_owned() }),
            _ => None,
        })
    }

    /// The RSA key of an SNS signing certificate: from `certificate_dir`, the cache, or its URL.
    async fn sns_key(&self, url: &str) -> Result<Vec<u8>, Refusal> {
        let file = sns_url(url, true).map_err(|e| refuse(format!("SigningCertURL: {e}")))?;
        if let Some(key) = self.sns_keys.lock().expect("not poisoned").get(url) {
            return Ok(key.clone());
        }
        let pinned = self.config.certificate_dir.as_ref().map(|dir| dir.join(&file)).filter(|p| p.exists());
        let pem = match pinned {
            Some(path) => std::fs::read(&path).map_err(|e| refuse(format!("reading {}: {e}", path.display())))?,
            None => {
                let Some(http) = self.http.as_ref().filter(|_| self.config.fetch_certificates) else {
                    return Err(refuse(format!("certificate {file} is not in certificate_dir and fetching is off")));
                };
                let response = http.get(url).send().await.map_err(|e| refuse(format!("fetching {url}: {e}")))?;
                if !response.status().is_success() {
                    return Err(refuse(format!("fetching {url}: {}", response.status())));
                }
                response.bytes().await.map_err(|e| refuse(format!("fetching {url}: {e}")))?.to_vec()
            }
        };
        let key = rsa_key_from_certificate(&pem).map_err(|e| refuse(format!("certificate {file}: {e}")))?;
        let mut keys = self.sns_keys.lock().expect("not poisoned");
        if keys.len() >= SNS_CERTIFICATES {
            keys.clear();
        }
        keys.insert(url.to_owned(), key.clone());
        Ok(key)
    }

    /// Confirms an SNS subscription by fetching its URL, when configured; logs it otherwise.
    pub async fn confirm(&self, topic: &str, url: &str) {
        match (&self.http, self.config.confirm_subscriptions) {
            (Some(http), true) => match http.get(url).send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(topic, "SNS subscription confirmed");
                }
                Ok(response) => {
                    tracing::warn!(topic, status = %response.status(), url, "SNS subscription confirmation refused; open the URL to confirm")
                }
                Err(error) => {
                    tracing::warn!(topic, %error, url, "SNS subscription confirmation failed; open the URL to confirm")
                }
            },
            _ => tracing::warn!(
                topic,
                url,
                "SNS asks to confirm a subscription: open this URL (or set confirm_subscriptions = true)"
            ),
        }
    }
}

fn check(
    algorithm: &'static dyn VerificationAlgorithm,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
    what: &str,
) -> Result<(), Refusal> {
    UnparsedPublicKey::new(algorithm, key)
        .verify(message, signature)
        .map_err(|_| refuse(format!("{what} does not verify")))
}

/// An SNS URL (https, an `sns.<region>.amazonaws.com[.cn]` host); for a certificate, also the
/// `/SimpleNotificationService-<id>.pem` path, whose file name is returned.
fn sns_url(url: &str, certificate: bool) -> Result<String, String> {
    let rest = url.strip_prefix("https://").ok_or("not https")?;
    let (host, path) = rest.split_once('/').ok_or("no path")?;
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| h.strip_suffix(".amazonaws.com").or_else(|| h.strip_suffix(".amazonaws.com.cn")))
        .ok_or_else(|| format!("{host} is not an SNS host"))?;
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!("{host} is not an SNS host"));
    }
    if !certificate {
        return Ok(String::new());
    }
    let id = path
        .strip_prefix("SimpleNotificationService-")
        .and_then(|p| p.strip_suffix(".pem"))
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| format!("/{path} is not an SNS certificate"))?;
    Ok(format!("SimpleNotificationService-{id}.pem"))
}

/// The RSA public key (PKCS#1 DER) of a PEM certificate.
fn rsa_key_from_certificate(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let certificate = pem.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(certificate.public_key().subject_public_key.data.to_vec())
}

/// The key inside a SubjectPublicKeyInfo (PEM `PUBLIC KEY` or base64 DER).
fn spki_key(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let der = if text.starts_with("-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
        pem.contents
    } else {
        let compact: String = text.split_whitespace().collect();
        BASE64.decode(compact).map_err(|_| "neither PEM nor base64 DER".to_owned())?
    };
    let (_, spki) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der_owned(&der).map_err(|e| format!("not a public key: {e}"))?;
    Ok(spki)
}

/// SendGrid's key: an uncompressed P-256 point.
fn ec_point(text: &str) -> Result<Vec<u8>, String> {
    let key = spki_key(text)?;
    if key.len() != 65 || key[0] != 4 {
        return Err("not an uncompressed P-256 key".into());
    }
    Ok(key)
}

/// Postal's key: RSA, as PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`) or base64 DER.
fn rsa_key_from_text(text: &str) -> Result<Vec<u8>, String> {
    if text.contains("BEGIN RSA PUBLIC KEY") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.trim().as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
        return Ok(pem.contents);
    }
    spki_key(text)
}

trait FromDerOwned {
    fn from_der_owned(der: &[u8]) -> Result<((), Vec<u8>), String>;
}

impl FromDerOwned for x509_parser::x509::SubjectPublicKeyInfo<'_> {
    fn from_der_owned(der: &[u8]) -> Result<((), Vec<u8>), String> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).map_err(|e| e.to_string())?;
        Ok(((), spki.subject_public_key.data.to_vec()))
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Compares secrets in time independent of where they differ.
fn equal(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_serve_signing_certificates() {
        let good = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem";
        assert_eq!(sns_url(good, true).unwrap(), "SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem");
        assert!(sns_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-ab12.pem", true).is_ok());
        for bad in [
            "http://sns.us-west-2.amazonaws.com/SimpleNotificationService-ab.pem",
            "https://sns.us-west-2.amazonaws.com.evil.com/SimpleNotificationService-ab.pem",
            "https://evil.com/sns.us-west-2.amazonaws.com/SimpleNotificationService-ab.pem",
            "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-../x.pem",
            "https://s3.amazonaws.com/SimpleNotificationService-ab.pem",
        ] {
            assert!(sns_url(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn receivers_without_a_credential_are_refused_at_start() {
        for provider in [
            Provider::Ses,
            Provider::Sendgrid,
            Provider::Mailgun,
            Provider::Postmark,
            Provider::Postal,
            Provider::Elasticemail,
        ] {
            let error = Verifier::new(provider, ReceiverConfig::default()).unwrap_err();
            assert!(error.contains(&format!("[relays.{}]", provider.as_str())), "{error}");
        }
    }
}
