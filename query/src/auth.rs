//! Bearer tokens with roles for `/api/v1`.
//!
//! - `viewer` reads (GET, HEAD); `operator` also changes things (every other method: the
//!   silences and manual actions to come); `admin` also reaches `/api/v1/admin/`.
//! - With no tokens configured the API is open, and the server refuses to listen beyond
//!   loopback ([`Tokens::check_listener`]), so only local clients reach it.
//! - `/healthz`, `/metrics`, ingest and the TSA endpoints are outside `/api/v1` and keep their
//!   own rules (the TSA token and trusted hosts of [`crate::actions`]). A request a role token
//!   admits passes the TSA guard on the action API too ([`Admitted`]).
//! - Tokens are kept as SHA-256 digests and looked up by digest, so neither the stored set
//!   nor the lookup's timing reveals a token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
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
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return refuse(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer <token>`".into());
    };
    let Some((name, role)) = tokens.by_digest.get(&digest(presented)) else {
        return refuse(StatusCode::UNAUTHORIZED, "the bearer token is not one of the configured tokens".into());
    };
    if *role < needed {
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
