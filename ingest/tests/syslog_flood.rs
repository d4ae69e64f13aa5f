//! A syslog flood over UDP: every datagram the receiver took in is accounted for (an event, a
//! dead letter, or a counted drop), and the receiver keeps serving.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vigil_ingest::lines::Format;
use vigil_ingest::syslog::SyslogIngest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_received_datagram_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = vigil_log::EventLog::open(dir.path()).unwrap();
    let shutdown = CancellationToken::new();
    let (ingest, _normaliser) = SyslogIngest::start(
        Format::Postfix,
        &vigil_ingest::lines::LineSettings::default(),
        log.clone(),
        shutdown.clone(),
    );
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let stats = ingest.stats.clone();
    tokio::spawn(ingest.run_udp(socket, shutdown.clone()));

    let sent = 30_000;
    std::thread::spawn(move || {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for n in 0..sent {
            let line = if n % 1000 == 999 {
                "not a syslog line at all".to_owned()
            } else {
                format!("Jan  9 10:00:00 mx postfix/smtp[4]: Q{n:09}: to=<u{n}@gmail.com>, relay=x[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)")
            };
            let _ = sender.send_to(line.as_bytes(), addr);
        }
    })
    .join()
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = stats.received.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        let stored = log.head() + log.dead_letter_count().unwrap();
        if received > 0 && stored + dropped == received {
            assert!(received <= sent);
            break;
        }
        assert!(Instant::now() < deadline, "received {received}, stored {stored}, dropped {dropped}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
}
