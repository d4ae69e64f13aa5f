//! Postfix lines through a real rsyslog into the syslog receivers (issue 31): rsyslog forwards
//! with omfwd in its default template (`RSYSLOG_TraditionalForwardFormat`, RFC 3164 with its
//! `<PRI>`), once over UDP and once over TCP, and every line becomes an event on both paths,
//! none a dead letter. Before the shared syslog header parser, the `<PRI>` made each one a
//! "not a syslog line" dead letter.
//!
//! rsyslogd comes from `VIGIL_RSYSLOGD` or `/usr/sbin/rsyslogd` (Debian's `rsyslog`, which
//! `scripts/test` installs); `logger` is util-linux's, part of every Debian system.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vigil_ingest::lines::{Format, LineSettings};
use vigil_ingest::syslog::SyslogIngest;
use vigil_log::EventLog;

/// Lines fed through rsyslog per `logger` format; two formats (RFC 5424 and RFC 3164 into
/// rsyslog).
const LINES_PER_RUN: usize = 100;
/// Lines in flight at once (see the test).
const CHUNK_LINES: usize = 10;

fn rsyslogd() -> PathBuf {
    let path = std::env::var_os("VIGIL_RSYSLOGD").map_or_else(|| PathBuf::from("/usr/sbin/rsyslogd"), PathBuf::from);
    assert!(
        path.is_file(),
        "rsyslogd not found at {} (set VIGIL_RSYSLOGD): scripts/test installs it (Debian's rsyslog package)",
        path.display()
    );
    path
}

/// The rsyslogd this test started, stopped when the test ends however it ends.
struct Rsyslogd(Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback UDP port free right now, for rsyslog's input.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something (rsyslogd) has bound `port`: binding it ourselves then fails.
fn wait_until_bound(port: u16, rsyslogd: &mut Rsyslogd, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        if let Some(status) = rsyslogd.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join("rsyslogd.err")).unwrap_or_default();
            panic!("rsyslogd exited with {status} before listening:\n{log}");
        }
        assert!(Instant::now() < deadline, "rsyslogd did not bind UDP port {port} in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_rsyslogd(dir: &Path, input_port: u16, udp_target: u16, tcp_target: u16) -> Rsyslogd {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    // No imklog/imuxsock: only the UDP input the test feeds. No template on the actions:
    // omfwd's default is what a real forwarding setup sends.
    let conf = format!(
        r#"$WorkDirectory {work}
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{input_port}" ruleset="forward")
ruleset(name="forward") {{
  action(type="omfwd" target="127.0.0.1" port="{udp_target}" protocol="udp")
  action(type="omfwd" target="127.0.0.1" port="{tcp_target}" protocol="tcp"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}}
"#,
        work = work.display()
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let errors = std::fs::File::create(dir.join("rsyslogd.err")).unwrap();
    let child = Command::new(rsyslogd())
        .arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(errors)
        .spawn()
        .expect("starting rsyslogd");
    Rsyslogd(child)
}

/// One Postfix delivery line per queue id, the message part as Postfix writes it.
fn postfix_message(run: usize, n: usize) -> String {
    format!(
        "RS{run}Q{n:06}: to=<user{n}@example.org>, relay=mx.example.org[192.0.2.9]:25, delay=1.1, delays=0.1/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X{n})"
    )
}

/// Feeds lines into rsyslog's UDP input with `logger` reading them from its standard input,
/// as `postfix/smtp[4242]`.
fn feed(input_port: u16, extra: &[&str], lines: &[String]) {
    assert!(lines.len() <= CHUNK_LINES);
    use std::io::Write as _;
    let mut logger = Command::new("logger")
        .args(["-n", "127.0.0.1", "-P", &input_port.to_string(), "-d", "-t", "postfix/smtp", "--id=4242"])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting logger (util-linux)");
    let mut stdin = logger.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(logger.wait().unwrap().success(), "logger failed");
}

struct Receiver {
    log: EventLog,
    stats: std::sync::Arc<vigil_ingest::syslog::SyslogStats>,
    _dir: tempfile::TempDir,
}

fn settings() -> LineSettings {
    // The program in the forwarded header maps the line to an egress source.
    toml::from_str(
        r#"
[[postfix_egress]]
service = "postfix/smtp"
egress_source = "through-rsyslog"
sending_ip = "192.0.2.25"
"#,
    )
    .unwrap()
}

async fn start_receiver(shutdown: &CancellationToken, tcp: bool) -> (Receiver, u16) {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let (ingest, _task) = SyslogIngest::start(Format::Postfix, &settings(), log.clone(), shutdown.clone());
    let stats = ingest.stats.clone();
    let port = if tcp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(ingest.run_tcp(listener, shutdown.clone()));
        port
    } else {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(ingest.run_udp(socket, shutdown.clone()));
        port
    };
    (Receiver { log, stats, _dir: dir }, port)
}

/// Waits until every receiver has received `expected` messages.
async fn wait_for_received(receivers: &[(&str, &Receiver)], expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, receiver) in receivers {
        loop {
            let received = receiver.stats.received.load(std::sync::atomic::Ordering::Relaxed);
            if received >= expected {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {received} of {expected} messages received");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Waits until `receiver` holds `expected` events; fails at once on a dead letter.
async fn wait_for_events(name: &str, receiver: &Receiver, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut changes = receiver.log.subscribe();
    loop {
        let letters = receiver.log.dead_letters(0, 5).unwrap();
        assert!(letters.is_empty(), "{name}: dead letters: {letters:#?}");
        if receiver.log.head() >= expected {
            break;
        }
        let received = receiver.stats.received.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            Instant::now() < deadline,
            "{name}: {} of {expected} lines counted ({received} received)",
            receiver.log.head()
        );
        // Woken by the next append, or re-checked after a short while for dead letters.
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_lines_forwarded_by_rsyslog_over_udp_and_tcp_are_all_counted() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (udp, udp_port) = start_receiver(&shutdown, false).await;
    let (tcp, tcp_port) = start_receiver(&shutdown, true).await;
    let input_port = free_udp_port();
    let mut rsyslogd = start_rsyslogd(dir.path(), input_port, udp_port, tcp_port);
    wait_until_bound(input_port, &mut rsyslogd, dir.path());

    // logger's default is RFC 5424 into rsyslog, `--rfc3164` the BSD format: rsyslog parses
    // either and forwards both in its traditional format. UDP has no backpressure and a busy
    // machine's socket buffers overflow under a burst: the lines go in chunks, each after the
    // last one has reached both receivers, so the test counts the parser, not the kernel.
    let mut sent = 0;
    for (run, extra) in [(1, None), (2, Some("--rfc3164"))] {
        for chunk in (0..LINES_PER_RUN).collect::<Vec<_>>().chunks(CHUNK_LINES) {
            let lines: Vec<String> = chunk.iter().map(|n| postfix_message(run, *n)).collect();
            tokio::task::spawn_blocking(move || feed(input_port, extra.as_slice(), &lines)).await.unwrap();
            sent += chunk.len() as u64;
            wait_for_received(&[("UDP", &udp), ("TCP", &tcp)], sent).await;
        }
    }

    let expected = (2 * LINES_PER_RUN) as u64;
    wait_for_events("UDP", &udp, expected).await;
    wait_for_events("TCP", &tcp, expected).await;

    for (name, receiver) in [("UDP", &udp), ("TCP", &tcp)] {
        assert_eq!(receiver.log.head(), expected, "{name}: no line counted twice");
        assert_eq!(receiver.log.dead_letter_count().unwrap(), 0, "{name}");
        let events = receiver.log.read(0, 1000).unwrap();
        let now = chrono::Utc::now();
        for (_, event) in &events {
            assert_eq!(event.kind, vigil_schemas::EventKind::Delivered, "{name}");
            // The program read from the forwarded header picked the egress.
            assert_eq!(
                (event.egress_source.as_deref(), event.sending_ip.as_deref()),
                (Some("through-rsyslog"), Some("192.0.2.25")),
                "{name}: {:?}",
                event.raw
            );
            // The RFC 3164 header's time, with the year inferred, is close to now (the
            // machine's zone is the test's only source of difference).
            let skew = (event.occurred_at - now).num_hours().abs();
            assert!(skew <= 24, "{name}: occurred_at {} is {skew} h from now", event.occurred_at);
            assert!(event.raw.as_deref().is_some_and(|raw| raw.starts_with('<')), "{name}: {:?}", event.raw);
        }
    }
    shutdown.cancel();
    drop(rsyslogd);
}
