//! Postfix over syslog: RFC 3164 and RFC 5424 lines by UDP and TCP (newline-delimited and
//! octet-counted), correlated across sockets by queue id.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use common::{Vigil, free_port};
use serde_json::json;

#[tokio::test]
async fn udp_and_tcp_syslog_feed_the_summary() {
    let data = tempfile::tempdir().unwrap();
    let (udp, tcp) = (free_port(), free_port());
    let (udp_addr, tcp_addr) = (format!("127.0.0.1:{udp}"), format!("127.0.0.1:{tcp}"));
    let vigil = Vigil::start(data.path(), &["--syslog-udp", &udp_addr, "--syslog-tcp", &tcp_addr]).await;

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // The sender comes by UDP, the deliveries by TCP: correlation spans sockets.
    socket.send_to(b"<22>1 2026-01-09T10:00:01Z mx postfix/qmgr 2 - - AAAAA11111: from=<alice@example.net>, size=100, nrcpt=2 (queue active)", &udp_addr).unwrap();
    socket.send_to(&[0xff, 0xfe, b'x'], &udp_addr).unwrap();
    let mut stream = std::net::TcpStream::connect(&tcp_addr).unwrap();
    stream.write_all(b"Jan  9 10:00:02 mx postfix/smtp[4]: AAAAA11111: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 OK)\n").unwrap();
    let framed = "<22>1 2026-01-09T10:00:03Z mx postfix/smtp 4 - - AAAAA11111: to=<b@yahoo.com>, relay=mta5.am0.yahoodns.net[67.195.1.1]:25, delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host mta5.am0.yahoodns.net[67.195.1.1] said: 554 5.1.1 user unknown (in reply to RCPT TO command))";
    stream.write_all(format!("{} {framed}", framed.len()).as_bytes()).unwrap();
    stream.flush().unwrap();

    let row = |p: &str, d: u64, b: u64| json!({"provider": p, "delivered": d, "deferred": 0, "bounced": b, "expired": 0, "complaints": 0, "attempts": d + b});
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 1, 0), row("yahoo", 0, 1)])).await;
    common::eventually("the bad datagram as a dead letter", std::time::Duration::from_secs(10), || async {
        let (_, dead) = vigil.get("/api/v1/deadletters").await;
        dead["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("UTF-8") && r["source"] == "postfix-syslog")
    })
    .await;
}
