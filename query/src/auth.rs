//! Bearer tokens with roles for `/api/v1`, and who may put events in.
//!
//! - `viewer` reads (GET, HEAD); `operator` also changes things (every other method: the
//!   silences and manual actions to come); `admin` also reaches `/api/v1/admin/`, and may
//!   ingest. `ingest` may only put events in (an MTA's log hook): it reads nothing.
//! - Ingest routes (the KumoMTA log hook, `/publish_log_v1`, and every later receiver) are
//!   guarded by [`IngestGuard`]: a client in the trusted hosts, or a bearer token with the
//!   `ingest` or `admin` role, or the TSA token kumod already holds. A forged record steers
//!   the MTA (a fake `550 5.1.1` suppresses a real recipient, a fake `[TSS04]` suspends an
//!   IP), so with no ingest credential configured the listener must be on loopback
//!   ([`IngestGuard::check_listener`]), exactly as for an open API.
//! - With no tokens configured the API is open, and the server refuses to listen beyond
//!   loopback ([`Tokens::check_listener`]), so only local clients reach it.
//! - `/healthz`, `/metrics`, ingest and the TSA endpoints are outside `/api/v1` and keep their
//!   own rules (the TSA token and trusted hosts of [`crate::actions`]). A request a role token
//!   admits passes the TSA guard on the action API too ([`Admitted`]).
//! - Tokens are kept as SHA-256 digests and looked up by digest, so neither the stored set
//!   nor the lookup's timing reveals a token; a single token (the TSA one) is compared by
//!   digest in constant time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Puts events in; reads nothing.
    Ingest,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether a token with this role may do what `needed` allows. The API roles nest
    /// (viewer < operator < admin); ingest stands apart, and only admin includes it.
    #[must_use]
    pub fn admits(self, needed: Self) -> bool {
        match (self, needed) {
            (Self::Admin, _) => true,
            (Self::Ingest, needed) => needed == Self::Ingest,
            (_, Self::Ingest) => false,
            (role, needed) => role >= needed,
        }
    }

    /// The role a request needs.
    fn needed(method: &Method, path: &str) -> Self {
        if path.starts_with("/api/v1/admin/") {
            Self::Admin
        } else if matches!(*method, Method::GET | Method::HEAD) {
            Self::Viewer
        } else {
            Self::Operator
        }
    }
}

/// One configured token: `[[api.tokens]] name, token, role` (or `--api-tokens FILE` with
/// `[[tokens]]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for the logs.
    pub name: String,
    pub token: String,
    pub role: Role,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Marks a request a role token admitted.
#[derive(Debug, Clone, Copy)]
pub struct Admitted(pub Role);

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: Arc<HashMap<[u8; 32], (String, Role)>>,
}

/// Why tokens cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("API token {0:?} is shorter than 16 characters; use a long random string")]
    TooShort(String),
    #[error("API tokens {0:?} and {1:?} are the same token")]
    Duplicate(String, String),
    #[error(
        "no API tokens are configured, so the API is open and may only listen on loopback, not {0}; configure \
         tokens (vigil run --api-tokens FILE, or [[api.tokens]] in the configuration) or listen on 127.0.0.1"
    )]
    OpenBeyondLoopback(SocketAddr),
    #[error(
        "nothing guards ingest, so anyone who reaches {0} could forge events that suppress recipients and \
         suspend IPs; configure a token with the ingest role ([[api.tokens]] role = \"ingest\", or in the \
         --api-tokens file), the TSA token (--api-token) or the MTA hosts (--trusted-hosts, [api] trusted_hosts), \
         or listen on 127.0.0.1"
    )]
    IngestOpenBeyondLoopback(SocketAddr),
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// # Errors
    /// When a token is short or two are the same.
    pub fn new(tokens: &[TokenConfig]) -> Result<Self, TokensError> {
        let mut by_digest = HashMap::new();
        for t in tokens {
            if t.token.chars().count() < 16 {
                return Err(TokensError::TooShort(t.name.clone()));
            }
            if let Some((other, _)) = by_digest.insert(digest(&t.token), (t.name.clone(), t.role)) {
                return Err(TokensError::Duplicate(other, t.name.clone()));
            }
        }
        Ok(Self { by_digest: Arc::new(by_digest) })
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Refuses an open API beyond loopback, and says at start which way the API is guarded.
    ///
    /// # Errors
    /// [`TokensError::OpenBeyondLoopback`].
    pub fn check_listener(&self, bound: SocketAddr) -> Result<(), TokensError> {
        if !self.is_empty() {
            tracing::info!(tokens = self.by_digest.len(), "the API needs a bearer token with a role");
            return Ok(());
        }
        if !bound.ip().is_loopback() {
            return Err(TokensError::OpenBeyondLoopback(bound));
        }
        tracing::info!(%bound, "no API tokens configured: the API is open, to local clients only (loopback)");
        Ok(())
    }

    /// Whether `presented` is a token whose role admits `needed`; its holder's name if so.
    fn admits(&self, presented: &str, needed: Role) -> Option<&str> {
        let (name, role) = self.by_digest.get(&digest(presented))?;
        role.admits(needed).then_some(name.as_str())
    }

    fn has_role(&self, wanted: Role) -> bool {
        self.by_digest.values().any(|(_, role)| *role == wanted)
    }
}

/// A single secret compared in constant time: by its digest, so neither the length nor the
/// first differing byte shows in the timing.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    #[must_use]
    pub fn new(token: &str) -> Self {
        Self(digest(token))
    }

    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(&digest(presented)))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The token a request presents as `Authorization: Bearer <token>`.
pub(crate) fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Who may put events in: see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct IngestGuard {
    tokens: Tokens,
    tsa_token: Option<Secret>,
    trusted_hosts: Arc<[IpAddr]>,
}

impl IngestGuard {
    #[must_use]
    pub fn new(tokens: &Tokens, tsa_token: Option<&str>, trusted_hosts: &[IpAddr]) -> Self {
        Self {
            tokens: tokens.clone(),
            tsa_token: tsa_token.map(Secret::new),
            trusted_hosts: trusted_hosts.iter().map(IpAddr::to_canonical).collect(),
        }
    }

    /// No ingest credential configured (trusted hosts, a token with the `ingest` role, the TSA
    /// token): every client is admitted, and the listener must be on loopback. Admin tokens
    /// admit ingest when presented, but do not close it by themselves, so configuring the
    /// API's tokens does not silently turn away a local MTA's hook that sends none.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.tsa_token.is_none() && self.trusted_hosts.is_empty() && !self.tokens.has_role(Role::Ingest)
    }

    /// Refuses unguarded ingest beyond loopback, and says at start how ingest is guarded.
    ///
    /// # Errors
    /// [`TokensError::IngestOpenBeyondLoopback`].
    pub fn check_listener(&self, bound: SocketAddr) -> Result<(), TokensError> {
        if !self.is_open() {
            tracing::info!(
                trusted_hosts = self.trusted_hosts.len(),
                tsa_token = self.tsa_token.is_some(),
                "ingest needs a trusted client address or a bearer token with the ingest role"
            );
            return Ok(());
        }
        if !bound.ip().is_loopback() {
            return Err(TokensError::IngestOpenBeyondLoopback(bound));
        }
        tracing::info!(%bound, "no ingest credential configured: ingest is open, to local clients only (loopback)");
        Ok(())
    }

    /// Whether the request may ingest; why not when it may not.
    fn admit(&self, request: &Request) -> Result<(), String> {
        if self.is_open() {
            return Ok(());
        }
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical());
        if peer.is_some_and(|ip| self.trusted_hosts.contains(&ip)) {
            return Ok(());
        }
        let Some(presented) = bearer(request) else {
            return Err(match peer {
                Some(ip) => format!("{ip} is not a trusted host; send `Authorization: Bearer <ingest token>`"),
                None => "send `Authorization: Bearer <ingest token>`".to_owned(),
            });
        };
        if self.tsa_token.as_ref().is_some_and(|t| t.matches(presented)) {
            return Ok(());
        }
        match self.tokens.admits(presented, Role::Ingest) {
            Some(name) => {
                tracing::trace!(token = %name, "ingest admitted");
                Ok(())
            }
            None => Err("the bearer token may not ingest (it needs the ingest or admin role)".to_owned()),
        }
    }
}

/// The middleware of every ingest route: refuses with 401 what [`IngestGuard`] does not admit,
/// before the body is read, so nothing of a refused request reaches the log.
pub async fn require_ingest(State(guard): State<IngestGuard>, request: Request, next: Next) -> Response {
    match guard.admit(&request) {
        Ok(()) => next.run(request).await,
        Err(why) => {
            // Counted as 401s of the route in vigil_api_request_duration_seconds; not logged
            // above debug, so a flood of forgeries cannot flood the log.
            tracing::debug!(%why, "ingest refused");
            refuse(StatusCode::UNAUTHORIZED, why)
        }
    }
}

fn refuse(status: StatusCode, why: String) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": why }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// The middleware: checks `/api/v1` requests against the tokens (when there are any).
pub async fn require_role(State(tokens): State<Tokens>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if tokens.is_empty() || !path.starts_with("/api/v1/") {
        return next.run(request).await;
    }
    let needed = Role::needed(request.method(), path);
    let Some(presented) = bearer(&request) else {
        return refuse(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer <token>`".into());
    };
    let Some((name, role)) = tokens.by_digest.get(&digest(presented)) else {
        return refuse(StatusCode::UNAUTHORIZED, "the bearer token is not one of the configured tokens".into());
    };
    if !role.admits(needed) {
        tracing::debug!(token = %name, role = role.as_str(), needed = needed.as_str(), "request refused");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("this needs the {} role; the token has {}", needed.as_str(), role.as_str()),
        );
    }
    request.extensions_mut().insert(Admitted(*role));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn token(name: &str, role: Role) -> TokenConfig {
        TokenConfig { name: name.into(), token: format!("{name}-0123456789abcdef"), role }
    }

    async fn status(tokens: &Tokens, method: Method, path: &str, bearer: Option<&str>) -> StatusCode {
        let app = Router::new()
            .route("/api/v1/summary", get(|| async { "ok" }).post(|| async { "ok" }))
            .route("/api/v1/admin/tokens", get(|| async { "ok" }))
            .route("/healthz", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(tokens.clone(), require_role));
        let mut request = Request::builder().method(method).uri(path);
        if let Some(bearer) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn roles_admit_what_they_include() {
        let tokens =
            Tokens::new(&[token("grafana", Role::Viewer), token("oncall", Role::Operator), token("root", Role::Admin)])
                .unwrap();
        let (viewer, operator, admin) =
            ("grafana-0123456789abcdef", "oncall-0123456789abcdef", "root-0123456789abcdef");
        assert_eq!(status(&tokens, Method::GET, "/api/v1/summary", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&tokens, Method::GET, "/api/v1/summary", Some("nope")).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&tokens, Method::GET, "/api/v1/summary", Some(viewer)).await, StatusCode::OK);
        assert_eq!(status(&tokens, Method::POST, "/api/v1/summary", Some(viewer)).await, StatusCode::FORBIDDEN);
        assert_eq!(status(&tokens, Method::POST, "/api/v1/summary", Some(operator)).await, StatusCode::OK);
        assert_eq!(status(&tokens, Method::GET, "/api/v1/admin/tokens", Some(operator)).await, StatusCode::FORBIDDEN);
        assert_eq!(status(&tokens, Method::GET, "/api/v1/admin/tokens", Some(admin)).await, StatusCode::OK);
        assert_eq!(status(&tokens, Method::GET, "/healthz", None).await, StatusCode::OK, "health stays open");
        let open = Tokens::default();
        assert_eq!(status(&open, Method::POST, "/api/v1/summary", None).await, StatusCode::OK);
    }

    #[test]
    fn ingest_stands_apart_from_the_reading_roles_and_only_admin_includes_it() {
        assert!(Role::Ingest.admits(Role::Ingest));
        assert!(!Role::Ingest.admits(Role::Viewer), "an MTA's token reads nothing");
        assert!(!Role::Viewer.admits(Role::Ingest) && !Role::Operator.admits(Role::Ingest));
        assert!(Role::Admin.admits(Role::Ingest) && Role::Admin.admits(Role::Admin));
        assert!(Role::Operator.admits(Role::Viewer) && !Role::Viewer.admits(Role::Operator));
    }

    #[test]
    fn ingest_is_open_only_without_an_ingest_credential_and_then_only_on_loopback() {
        let api_only = Tokens::new(&[token("grafana", Role::Viewer), token("root", Role::Admin)]).unwrap();
        let open = IngestGuard::new(&api_only, None, &[]);
        assert!(open.is_open(), "API tokens alone do not close ingest");
        assert!(open.check_listener("127.0.0.1:8008".parse().unwrap()).is_ok());
        let error = open.check_listener("0.0.0.0:8008".parse().unwrap()).unwrap_err().to_string();
        assert!(error.contains("nothing guards ingest") && error.contains("ingest"), "{error}");
        let hook = Tokens::new(&[token("kumod", Role::Ingest)]).unwrap();
        for guarded in [
            IngestGuard::new(&hook, None, &[]),
            IngestGuard::new(&api_only, Some("tsa-token"), &[]),
            IngestGuard::new(&api_only, None, &["10.0.0.5".parse().unwrap()]),
        ] {
            assert!(!guarded.is_open());
            assert!(guarded.check_listener("0.0.0.0:8008".parse().unwrap()).is_ok());
        }
    }

    #[test]
    fn a_secret_matches_only_itself() {
        let secret = Secret::new("tsa-token-0123456789");
        assert!(secret.matches("tsa-token-0123456789"));
        assert!(!secret.matches("tsa-token-012345678") && !secret.matches(""));
        assert!(!format!("{secret:?}").contains("tsa"), "never printed");
    }

    #[test]
    fn weak_or_repeated_tokens_and_open_public_listeners_are_refused() {
        let short = TokenConfig { name: "x".into(), token: "short".into(), role: Role::Viewer };
        assert!(Tokens::new(&[short]).unwrap_err().to_string().contains("shorter than 16"));
        let same =
            Tokens::new(&[token("a", Role::Viewer), TokenConfig { name: "b".into(), ..token("a", Role::Admin) }]);
        assert!(same.unwrap_err().to_string().contains("same token"));
        let open = Tokens::default();
        assert!(open.check_listener("127.0.0.1:8008".parse().unwrap()).is_ok());
        let error = open.check_listener("0.0.0.0:8008".parse().unwrap()).unwrap_err().to_string();
        assert!(error.contains("only listen on loopback") && error.contains("0.0.0.0:8008"), "{error}");
        let guarded = Tokens::new(&[token("a", Role::Viewer)]).unwrap();
        assert!(guarded.check_listener("0.0.0.0:8008".parse().unwrap()).is_ok());
    }
}
