//! How every outbound connection of the process trusts a server: the HTTP pushers (kumod,
//! webhooks), the ClickHouse client and any later HTTPS client build their TLS from
//! [`client_config`], so one setting covers them all.
//!
//! - Trusted roots: the platform's (Debian's `/etc/ssl/certs`, through `rustls-native-certs`,
//!   which honours `SSL_CERT_FILE` and `SSL_CERT_DIR` as OpenSSL does), plus the certificates of
//!   the configured CA file (`[tls] ca_file`, `--ca-file`), for a private CA.
//! - rustls with the `aws-lc-rs` provider (reqwest's default): no system OpenSSL is needed
//!   for HTTPS. (Kafka's TLS is librdkafka's own, configured by its
//!   `ssl.*` properties.)
//! - Plain `http://` stays possible: clients are built `https_or_http`.
//!
//! [`init`] is called once at start with the configured CA file, so a bad file stops the role
//! with a clear error; [`client_config`] afterwards is infallible and shared.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the trust store cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the CA file {path}: {source}")]
    CaFile { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the CA file {0} holds no certificate")]
    EmptyCaFile(PathBuf),
    #[error("a certificate of the CA file {path} is not usable: {source}")]
    BadCertificate { path: PathBuf, source: rustls::Error },
    #[error("no trusted root certificates: the platform store is empty or unreadable and no CA file is configured")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
    #[error("the TLS trust store was already initialised")]
    AlreadyInitialised,
}

static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Builds the process's trust store from the platform roots and `ca_file`; call once at start.
///
/// # Errors
/// When the CA file is unreadable or holds no usable certificate, or no root is trusted at
/// all.
pub fn init(ca_file: Option<&Path>) -> Result<(), TlsError> {
    let config = build(ca_file)?;
    CONFIG.set(config).map_err(|_| TlsError::AlreadyInitialised)
}

/// The TLS client configuration every outbound connection uses: the one [`init`] built, else
/// the platform roots alone.
#[must_use]
pub fn client_config() -> Arc<rustls::ClientConfig> {
    Arc::clone(CONFIG.get_or_init(|| {
        build(None).unwrap_or_else(|error| {
            // Without roots every https target fails its handshake, each with a clear
            // "certificate" error where it is used; plain http still works.
            tracing::warn!(%error, "no TLS roots: https targets will be refused");
            Arc::new(with_roots(rustls::RootCertStore::empty()).expect("ring's defaults are valid"))
        })
    }))
}

/// A client configuration trusting the platform roots and `ca_file`.
///
/// # Errors
/// As [`init`].
pub fn build(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let platform = rustls_native_certs::load_native_certs();
    for error in &platform.errors {
        tracing::debug!(%error, "a platform root certificate could not be loaded");
    }
    // Unparsable platform roots are skipped, as every TLS client does.
    let (added, ignored) = roots.add_parsable_certificates(platform.certs);
    tracing::debug!(added, ignored, "platform root certificates");
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|source| TlsError::CaFile { path: path.to_owned(), source })?;
        if certs.is_empty() {
            return Err(TlsError::EmptyCaFile(path.to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|source| TlsError::BadCertificate { path: path.to_owned(), source })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(Arc::new(with_roots(roots)?))
}

fn with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    // aws-lc-rs: reqwest's own default, so every client of the process shares one provider.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether `error`, or an error it wraps, is a TLS verdict on the server (an untrusted or
/// invalid certificate, a failed handshake): retrying will not change it.
#[must_use]
pub fn is_tls_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error hides a wrapped error from `source()`; look inside it.
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| is_tls_refusal(inner))
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = build(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = build(Some(&empty)).unwrap_err().to_string();
        assert!(error.contains("holds no certificate"), "{error}");
    }

    #[test]
    fn a_rustls_error_is_found_behind_an_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::other(tls);
        assert!(is_tls_refusal(&io));
        assert!(!is_tls_refusal(&std::io::Error::other("connection refused")));
    }
}
