//! Suppressions pushed to listmonk, Mautic and a signed webhook from `vigil run`: recording
//! servers check each request against the apps' documented API (method, path, auth, body
//! shape), and a restart pushes nothing twice.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use common::{Vigil, eventually};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// What a recording server saw: one line per accepted call, one per refused call.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn call(&self, line: String) {
        self.calls.lock().unwrap().push(line);
    }

    fn refuse(&self, why: String) -> (StatusCode, String) {
        self.refused.lock().unwrap().push(why.clone());
        (StatusCode::BAD_REQUEST, why)
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}

fn query(raw: Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// listmonk: `GET /api/subscribers?query=subscribers.email = '<email>'` then `PUT
/// /api/subscribers/blocklist {"ids": [...]}`, with `Authorization: token user:token`.
fn listmonk(seen: Seen) -> Router {
    const AUTH: &str = "token vigil:listmonk-token";
    async fn lookup(State(seen): State<Seen>, headers: HeaderMap, RawQuery(raw): RawQuery) -> (StatusCode, String) {
        if header(&headers, "authorization") != AUTH {
            return seen.refuse(format!("listmonk lookup without the API token: {headers:?}"));
        }
        let query = query(raw);
        let Some(email) =
            query.get("query").and_then(|q| q.strip_prefix("subscribers.email = '")).and_then(|q| q.strip_suffix('\''))
        else {
            return seen.refuse(format!("listmonk lookup query: {query:?}"));
        };
        seen.call(format!("lookup {email}"));
        // Subscriber 7 is every address but the unknown one.
        let results = if email.starts_with("unknown") { json!([]) } else { json!([{"id": 7, "email": email}]) };
        (StatusCode::OK, json!({"data": {"results": results, "total": 1, "per_page": 20, "page": 1}}).to_string())
    }
    async fn blocklist(State(seen): State<Seen>, headers: HeaderMap, body: String) -> (StatusCode, String) {
        let body: Value = serde_json::from_str(&body).unwrap_or_default();
        if header(&headers, "authorization") != AUTH || body != json!({"ids": [7]}) {
            return seen.refuse(format!("listmonk blocklist: {body}"));
        }
        seen.call("blocklist 7".into());
        (StatusCode::OK, json!({"data": true}).to_string())
    }
    Router::new()
        .route("/api/subscribers", get(lookup))
        .route("/api/subscribers/blocklist", put(blocklist))
        .with_state(seen)
}

/// Mautic: `GET /api/contacts?where[0][col]=email&where[0][expr]=eq&where[0][val]=<email>`
/// then `POST /api/contacts/{id}/dnc/email/add {"reason": 1|2, "comments"}`, Basic auth.
fn mautic(seen: Seen) -> Router {
    fn basic_ok(headers: &HeaderMap) -> bool {
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("vigil:mautic-password");
        header(headers, "authorization") == format!("Basic {expected}")
    }
    async fn lookup(State(seen): State<Seen>, headers: HeaderMap, RawQuery(raw): RawQuery) -> (StatusCode, String) {
        let query = query(raw);
        let exact = query.get("where[0][col]").map(String::as_str) == Some("email")
            && query.get("where[0][expr]").map(String::as_str) == Some("eq");
        let Some(email) = query.get("where[0][val]").filter(|_| exact && basic_ok(&headers)) else {
            return seen.refuse(format!("Mautic lookup: {query:?}"));
        };
        seen.call(format!("lookup {email}"));
        (StatusCode::OK, json!({"total": 1, "contacts": {"12": {"id": 12, "fields": {}}}}).to_string())
    }
    async fn dnc(
        State(seen): State<Seen>,
        Path((id, channel)): Path<(String, String)>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        let body: Value = serde_json::from_str(&body).unwrap_or_default();
        let reason = body["reason"].as_u64();
        if !basic_ok(&headers)
            || id != "12"
            || channel != "email"
            || !matches!(reason, Some(1 | 2))
            || !body["comments"].is_string()
        {
            return seen.refuse(format!("Mautic DNC {id}/{channel}: {body}"));
        }
        seen.call(format!("dnc {id} reason {}", reason.unwrap()));
        (StatusCode::OK, json!({"contact": {"id": 12}}).to_string())
    }
    Router::new()
        .route("/api/contacts", get(lookup))
        .route("/api/contacts/{id}/dnc/{channel}/add", post(dnc))
        .with_state(seen)
}

/// A webhook receiver checking Vigil's signature.
fn webhook(seen: Seen) -> Router {
    async fn receive(State(seen): State<Seen>, headers: HeaderMap, body: String) -> (StatusCode, String) {
        let timestamp = header(&headers, "x-vigil-timestamp");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        if header(&headers, "x-vigil-signature") != format!("sha256={expected}") {
            return seen.refuse("webhook signature".into());
        }
        let body: Value = serde_json::from_str(&body).unwrap();
        seen.call(format!("{} {}", body["reason"].as_str().unwrap(), body["recipient"].as_str().unwrap()));
        (StatusCode::OK, String::new())
    }
    Router::new().route("/suppressions", post(receive)).with_state(seen)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn testdata(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/relays").join(path)).unwrap()
}

async fn postmark(vigil: &Vigil, body: Vec<u8>) {
    let response = reqwest::Client::new()
        .post(vigil.url("/ingest/postmark"))
        .basic_auth("postmark", Some("s3cret"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn new_suppressions_reach_listmonk_mautic_and_a_webhook_once() {
    let (listmonk_seen, mautic_seen, hook_seen) = (Seen::default(), Seen::default(), Seen::default());
    let listmonk_url = serve(listmonk(listmonk_seen.clone())).await;
    let mautic_url = serve(mautic(mautic_seen.clone())).await;
    let hook_url = serve(webhook(hook_seen.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[relays.postmark]
basic_auth = {{ username = "postmark", password = "s3cret" }}

[[suppressions.push]]
name = "newsletter"
kind = "listmonk"
url = "{listmonk_url}"
username = "vigil"
token = "listmonk-token"

[[suppressions.push]]
name = "crm"
kind = "mautic"
url = "{mautic_url}/"
username = "vigil"
password = "mautic-password"

[[suppressions.push]]
name = "hook"
kind = "webhook"
url = "{hook_url}/suppressions"
secret = "hook-secret"
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let vigil = Vigil::start(&data, &args).await;

    // A hard bounce, a complaint, an unsubscribe, a delivery (suppresses no one).
    postmark(&vigil, testdata("postmark/anymail_bounce_hard.json")).await;
    postmark(&vigil, testdata("postmark/anymail_spam_complaint.json")).await;
    postmark(&vigil, testdata("postmark/anymail_subscription_change_unsubscribe.json")).await;
    postmark(&vigil, testdata("postmark/anymail_delivery.json")).await;
    let expected_hook =
        ["hard_bounce bounce@example.com", "complaint spam@example.com", "unsubscribe john@example.com"];
    eventually("every target to hear all three", Duration::from_secs(30), || async {
        hook_seen.calls().len() == 3 && listmonk_seen.calls().len() == 6 && mautic_seen.calls().len() == 6
    })
    .await;
    assert_eq!(hook_seen.calls(), expected_hook);
    assert_eq!(
        listmonk_seen.calls(),
        [
            "lookup bounce@example.com",
            "blocklist 7",
            "lookup spam@example.com",
            "blocklist 7",
            "lookup john@example.com",
            "blocklist 7"
        ]
    );
    // Mautic's reasons: 2 bounced, 1 unsubscribed (a complaint too).
    assert_eq!(
        mautic_seen.calls(),
        [
            "lookup bounce@example.com",
            "dnc 12 reason 2",
            "lookup spam@example.com",
            "dnc 12 reason 1",
            "lookup john@example.com",
            "dnc 12 reason 1"
        ]
    );

    // Restarted: nothing is pushed again; the next suppression is.
    vigil.terminate();
    let vigil = Vigil::start(&data, &args).await;
    let mut next: Value =
        serde_json::from_slice(&testdata("postmark/anymail_subscription_change_unsubscribe.json")).unwrap();
    next["Recipient"] = json!("jane@example.com");
    postmark(&vigil, next.to_string().into_bytes()).await;
    eventually("the new unsubscribe", Duration::from_secs(30), || async { hook_seen.calls().len() >= 4 }).await;
    eventually("listmonk and Mautic too", Duration::from_secs(30), || async {
        listmonk_seen.calls().len() >= 8 && mautic_seen.calls().len() >= 8
    })
    .await;
    assert_eq!(hook_seen.calls()[3..], ["unsubscribe jane@example.com"]);
    assert_eq!(listmonk_seen.calls().len(), 8);
    for seen in [&listmonk_seen, &mautic_seen, &hook_seen] {
        assert!(seen.refused().is_empty(), "every request matched the app's API: {:?}", seen.refused());
    }
    vigil.terminate();
}
