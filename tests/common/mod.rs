//! Starting the real `vigil` binary for end-to-end tests, and waiting on conditions.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod broker;
pub mod clickhouse;

/// Every call a recording HTTP server received: (method, path, JSON body or null).
pub type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>;

/// An HTTP server standing in for kumod's admin API: records every call and answers
/// `{"id": "kumod-id-N"}`, as kumod does for suspensions and bounces.
pub async fn recording_kumod() -> (String, Calls) {
    async fn record(
        axum::extract::State(calls): axum::extract::State<Calls>,
        method: axum::http::Method,
        uri: axum::http::Uri,
        body: String,
    ) -> axum::Json<Value> {
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut calls = calls.lock().unwrap();
        calls.push((method.to_string(), uri.path().to_owned(), body));
        axum::Json(serde_json::json!({ "id": format!("kumod-id-{}", calls.len()) }))
    }
    let calls: Calls = Calls::default();
    let app = axum::Router::new().fallback(record).with_state(std::sync::Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// A running `vigil run`, killed with SIGKILL when dropped.
pub struct Vigil {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Vigil {
    /// Starts `vigil run` on `data_dir` on a free loopback port and waits until `/healthz`
    /// answers 200.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", data_dir, extra).await
    }

    /// As [`Vigil::start`], listening on `listen`; a wildcard address is reached over loopback.
    pub async fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(listen, data_dir, extra, &[]).await
    }

    /// As [`Vigil::start_on`], with these environment variables set for `vigil`.
    pub async fn start_with_env(listen: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            // Tests talk to loopback only: no DNS lookups through the host's resolver, unless a
            // test points [dns] at its own server (and sets this variable itself).
            .env("VIGIL_DNS", "false")
            .envs(env.iter().copied())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting vigil");
        let stdout = child.stdout.take().unwrap();
        // The first stdout line names the bound address.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let base = line
            .trim()
            .strip_prefix("vigil listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from vigil: {line:?}"))
            // Tests talk to loopback only, whatever address the listener is bound to.
            .replace("//0.0.0.0:", "//127.0.0.1:");
        let vigil = Self { child, base, data_dir: data_dir.to_owned(), http: reqwest::Client::new() };
        let url = vigil.url("/healthz");
        let http = vigil.http.clone();
        eventually("vigil to become ready", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        vigil
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then waits for a clean exit: shutdown hooks (the state snapshot) run.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "vigil exited with {status} after SIGTERM");
    }

    /// SIGKILL: no shutdown hook runs, as in a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.post_as(path, body, None).await
    }

    /// `POST` with `Authorization: Bearer <bearer>` when given.
    pub async fn post_as(&self, path: &str, body: impl Into<reqwest::Body>, bearer: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).header("content-type", "application/json").body(body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, None).await
    }

    /// `GET` with `Authorization: Bearer <bearer>` when given.
    pub async fn get_as(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /api/v1/summary?...` rows; panics on a non-200.
    pub async fn summary(&self, query: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/summary?{query}")).await;
        assert_eq!(status, 200, "{body}");
        body["rows"].clone()
    }

    /// Waits until the summary for `query` equals `expected`, then keeps it for a final check.
    pub async fn wait_for_summary(&self, query: &str, expected: &Value) {
        let mut last = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            last = self.summary(query).await;
            if &last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("summary?{query} never became\n{expected:#}\nlast seen:\n{last:#}");
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state (`/api/v1/state`, read with `bearer` when given) once the processor has folded
/// everything the log holds. Call it when no traffic flows: once caught up, the state stays put.
pub async fn settled_state(vigil: &Vigil, bearer: Option<&str>) -> Value {
    eventually("the processor to catch up with the log", Duration::from_secs(60), || async {
        let (_, metrics) = vigil.get_text("/metrics").await;
        let head = metrics
            .lines()
            .find_map(|l| l.strip_prefix("vigil_log_head_offset "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (_, state) = vigil.get_as("/api/v1/state", bearer).await;
        head.is_some() && state["offset"].as_u64() == head
    })
    .await;
    vigil.get_as("/api/v1/state", bearer).await.1
}

/// Polls `condition` every 50 ms until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Polls `condition` (every 50 ms) until it holds; panics after `timeout`. For tests whose
/// conditions are blocking calls; async tests use [`eventually`].
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The KumoMTA example records of `testdata/kumomta/examples.jsonl`, one string each.
pub fn example_records() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/kumomta/examples.jsonl");
    std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
}

/// What a one-shot `vigil` command printed.
pub struct Output {
    pub code: i32,
    /// stdout, one JSON value per line.
    pub json: Vec<Value>,
    pub stderr: String,
}

/// Runs `vigil <args>` with `stdin` (written from a thread, so large inputs cannot deadlock).
pub fn run_vigil<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting vigil");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Output {
        code: out.status.code().unwrap(),
        json: String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A KumoMTA `TransientFailure` record.
#[allow(clippy::too_many_arguments)]
pub fn deferral(
    source: &str,
    recipient: &str,
    mx_site: &str,
    code: u16,
    enhanced: (u8, u8, u8),
    text: &str,
    at: chrono::DateTime<chrono::Utc>,
    id: &str,
) -> String {
    serde_json::json!({
        "type": "TransientFailure",
        "id": id,
        "sender": "news@shop.example",
        "recipient": recipient,
        "queue": format!("spring:acme@{}", recipient.split('@').nth(1).unwrap()),
        "site": format!("{source}->{mx_site}@smtp_client"),
        "size": 2048,
        "response": {
            "code": code,
            "enhanced_code": {"class": enhanced.0, "subject": enhanced.1, "detail": enhanced.2},
            "content": text,
            "command": "."
        },
        "egress_pool": "pool-1",
        "egress_source": source,
        "timestamp": at.timestamp(),
        "created": at.timestamp() - 5,
        "num_attempts": 1,
        "bounce_classification": "Uncategorized",
        "meta": {},
        "headers": {},
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173"
    })
    .to_string()
}
