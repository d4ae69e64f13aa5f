//! `GET /tsa/status`: kumod and load balancers probe it without credentials, as with
//! `tsa-daemon`, which answers the same text.

pub const PATH: &str = "/tsa/status";

pub async fn handler() -> &'static str {
    "TSA Daemon OK"
}
