//! Decisions over TLS: an https webhook and an https kumod stand-in whose certificate comes
//! from a test CA, trusted through `--ca-file` or through `SSL_CERT_FILE`; without the CA the
//! certificate is refused, the decision is marked failed with the reason, and it is not
//! retried.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Vigil, deferral, eventually};
use serde_json::Value;

/// (method, path) of every request the https target answered.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

struct TestCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost.
fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Vigil test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone(), ca.der().clone()], key)
        .unwrap();
    TestCa { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// An https server on loopback answering every request as kumod's admin API would, recording
/// what it was asked; returns its base URL.
async fn https_target(tls: Arc<rustls::ServerConfig>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorded = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |method: axum::http::Method, uri: axum::http::Uri| {
        let recorded = Arc::clone(&recorded);
        async move {
            recorded.lock().unwrap().push((method.to_string(), uri.path().to_owned()));
            axum::Json(serde_json::json!({ "id": "kumod-tls-1" }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

/// One Yahoo `[TSS04]` deferral: the shipped rules suspend ip-1's Yahoo path at once.
async fn trigger_a_suspension(vigil: &Vigil) {
    let record = deferral(
        "ip-1",
        "a@yahoo.com",
        "(mta5|mta6|mta7).am0.yahoodns.net",
        421,
        (4, 7, 0),
        "[TSS04] Messages from 10.0.0.1 temporarily deferred due to user complaints",
        chrono::Utc::now(),
        "tls-1",
    );
    assert_eq!(vigil.post("/ingest/kumomta", record).await.0, 200);
}

fn saw(seen: &Seen, method: &str, path: &str) -> bool {
    seen.lock().unwrap().iter().any(|(m, p)| m == method && p == path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_https_targets_whose_ca_is_configured_or_in_ssl_cert_file() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let ca_file = ca_file.to_str().unwrap();

    // The CA file setting: kumod's admin API and the webhook, both over https.
    let (target, seen) = https_target(Arc::clone(&ca.server)).await;
    let hook = format!("{target}/hook");
    let vigil = Vigil::start(
        &dir.path().join("a"),
        &["--ca-file", ca_file, "--kumod-url", &target, "--webhook-url", &hook, "--webhook-secret", "s3cret"],
    )
    .await;
    trigger_a_suspension(&vigil).await;
    eventually("the suspension at kumod and the decision at the webhook", Duration::from_secs(30), || async {
        saw(&seen, "POST", "/api/admin/suspend-ready-q/v1") && saw(&seen, "POST", "/hook")
    })
    .await;
    vigil.terminate();

    // SSL_CERT_FILE, as OpenSSL-based tools honour it: the same without --ca-file.
    let (target, seen) = https_target(Arc::clone(&ca.server)).await;
    let hook = format!("{target}/hook");
    let vigil = Vigil::start_with_env(
        "127.0.0.1:0",
        &dir.path().join("b"),
        &["--webhook-url", &hook, "--webhook-secret", "s3cret"],
        &[("SSL_CERT_FILE", ca_file)],
    )
    .await;
    trigger_a_suspension(&vigil).await;
    eventually("the decision at the webhook", Duration::from_secs(30), || async { saw(&seen, "POST", "/hook") }).await;
    vigil.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_the_decision_with_the_reason_and_is_not_retried() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let (target, seen) = https_target(Arc::clone(&ca.server)).await;
    let hook = format!("{target}/hook");
    // The platform's roots only: the test CA is unknown.
    let vigil = Vigil::start(
        &dir.path().join("data"),
        &["--kumod-url", &target, "--webhook-url", &hook, "--webhook-secret", "s3cret"],
    )
    .await;
    trigger_a_suspension(&vigil).await;
    let failures = |decisions: &Value| -> Vec<Value> {
        decisions["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d.get("failed_deliveries"))
            .flat_map(|f| f.as_array().unwrap().clone())
            .collect()
    };
    let failed_pushers = || async {
        let (status, decisions) = vigil.get("/api/v1/decisions?status=applied").await;
        assert_eq!(status, 200);
        failures(&decisions)
    };
    eventually("both pushers mark the suspension failed", Duration::from_secs(30), || async {
        let found = failed_pushers().await;
        let pushers: std::collections::BTreeSet<&str> = found.iter().filter_map(|f| f["pusher"].as_str()).collect();
        pushers.contains("kumod") && pushers.contains("webhook:default")
    })
    .await;
    let found = failed_pushers().await;
    for failure in &found {
        let answer = failure["answer"].as_str().unwrap();
        assert!(answer.to_lowercase().contains("certificate"), "the reason names the certificate: {answer}");
    }
    assert!(seen.lock().unwrap().is_empty(), "no request got through the handshake");
    // Given up, not retried: the metric counts permanent failures, and no temporary ones.
    let (_, metrics) = vigil.get_text("/metrics").await;
    let temporary =
        metrics.lines().filter(|l| l.starts_with("vigil_push_failures_total{") && l.contains("temporary")).count();
    assert!(metrics.contains("kind=\"permanent\""), "{metrics}");
    assert_eq!(temporary, 0, "{metrics}");
    vigil.terminate();
}
