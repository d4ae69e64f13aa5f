//! Against a real Dovecot (`dovecot-test-server`, unprivileged, loopback only): each test starts
//! its own server in a temporary directory and stops it when done. Skipped, with a message, only
//! when Dovecot cannot be installed (the script exits 77).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;
use vigil_ingest::imap::{AfterProcessing, ImapConfig, ImapSession, Position, Security};

const USER: &str = "bounces";
const PASSWORD: &str = "secret-Pa55\"word\\";
const SCRIPT_PASSWORD: &str = "secret";
const LIMIT: u64 = 4096;

/// A running Dovecot; stopped (its master killed) on drop.
struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    tls_port: u16,
    pid: u32,
}

impl Dovecot {
    fn start() -> Option<Self> {
        let dir = tempfile::Builder::new().prefix("vigil-dovecot-").tempdir().unwrap();
        let port = free_port();
        let tls_port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dovecot-test-server");
        let out = Command::new(script)
            .arg(dir.path())
            .arg(port.to_string())
            .arg(tls_port.to_string())
            .output()
            .expect("running dovecot-test-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(77) {
            eprintln!("SKIPPED: Dovecot is not installed and cannot be installed here: {stderr}");
            return None;
        }
        assert!(out.status.success(), "dovecot-test-server failed: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("dovecot-test-server ready"), "{stdout}");
        let pid = std::fs::read_to_string(dir.path().join("dovecot.pid")).unwrap().trim().parse().unwrap();
        Some(Self { dir, port, tls_port, pid })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn config(&self) -> ImapConfig {
        let mut config = ImapConfig::new("127.0.0.1", USER, SCRIPT_PASSWORD);
        config.port = Some(self.port);
        config.security = Security::Plain;
        config.max_message_bytes = LIMIT;
        config.timeout = Duration::from_secs(20);
        config
    }

    async fn admin(&self) -> async_imap::Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap().expect("greeting");
        client.login(USER, SCRIPT_PASSWORD).await.map_err(|(e, _)| e).unwrap()
    }

    async fn append(&self, mailbox: &str, raw: &[u8]) {
        let mut admin = self.admin().await;
        admin.append(mailbox, None, None, raw).await.unwrap();
        admin.logout().await.unwrap();
    }

    /// UID → flags of every message of `mailbox`, seen from a session of its own.
    async fn flags(&self, mailbox: &str) -> Vec<(u32, Vec<String>)> {
        use futures::TryStreamExt;
        let mut admin = self.admin().await;
        let selected = admin.examine(mailbox).await.unwrap();
        let mut flags = Vec::new();
        if selected.exists > 0 {
            let fetches: Vec<_> = admin.uid_fetch("1:*", "FLAGS").await.unwrap().try_collect().await.unwrap();
            for fetch in fetches {
                let names = fetch.flags().map(|f| format!("{f:?}")).collect();
                flags.push((fetch.uid.unwrap(), names));
            }
        }
        admin.logout().await.unwrap();
        flags.sort();
        flags
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // The master takes its children down with it.
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn message(id: &str, body_bytes: usize) -> Vec<u8> {
    let mut raw = format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: {USER}@example.com\r\nSubject: Undelivered Mail Returned to Sender {id}\r\nMessage-ID: <{id}@mx.example.net>\r\nDate: Mon, 07 Dec 2026 06:00:00 +0000\r\n\r\nThis is the mail system at host mx.example.net ({id}).\r\n"
    );
    while raw.len() < body_bytes {
        raw.push_str("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
    }
    raw.into_bytes()
}

fn has(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.contains(flag))
}

/// Every log record of the process, to check that async-imap's trace of the LOGIN command shows
/// the placeholder, never the password.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push(format!("{}", record.args()));
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(capture).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        capture
    })
}

#[tokio::test]
async fn fetches_in_order_skips_the_large_one_and_never_reads_twice() {
    capture();
    let Some(server) = Dovecot::start() else { return };
    let small_a = message("a", 300);
    let big = message("big", 3 * LIMIT as usize);
    let small_b = message("b", 500);
    for raw in [&small_a, &big, &small_b] {
        server.append("INBOX", raw).await;
    }

    let mut session = ImapSession::connect(&server.config()).await.unwrap();
    let batch = session.fetch_new(None, 100).await.unwrap();
    let uids: Vec<u32> = batch.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 3]);
    assert_eq!(batch.messages[0].raw, small_a);
    assert_eq!(batch.messages[1].raw, small_b);
    assert_eq!(batch.skipped.len(), 1);
    assert_eq!(batch.skipped[0].0, 2);
    assert!(batch.skipped[0].1 > LIMIT, "{:?}", batch.skipped);
    assert_eq!(batch.position.last_uid, 3);
    assert_eq!(batch.position.uid_validity, session.uid_validity());

    // From the returned position: nothing.
    let again = session.fetch_new(Some(batch.position), 100).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.position, batch.position);

    // Reading set no flag (BODY.PEEK).
    assert!(server.flags("INBOX").await.iter().all(|(_, f)| !has(f, "Seen")));
    session.mark_processed(&batch.uids()).await.unwrap();
    let flags = server.flags("INBOX").await;
    assert_eq!(flags.len(), 3);
    for (uid, f) in &flags {
        assert!(has(f, "Seen") && has(f, "$VigilProcessed"), "uid {uid}: {f:?}");
    }
    session.logout().await.unwrap();

    // A restart from the stored checkpoint reads nothing twice, and reads what came since.
    let stored = batch.position.to_bytes();
    let small_c = message("c", 200);
    server.append("INBOX", &small_c).await;
    let mut session = ImapSession::connect(&server.config()).await.unwrap();
    let restored = Position::from_bytes(&stored).unwrap();
    let after_restart = session.fetch_new(Some(restored), 100).await.unwrap();
    assert_eq!(after_restart.messages.len(), 1);
    assert_eq!((after_restart.messages[0].uid, &after_restart.messages[0].raw), (4, &small_c));
    assert!(after_restart.skipped.is_empty());

    // The crash window: position stored, marking not done. A new session finishes it.
    drop(session);
    let mut session = ImapSession::connect(&server.config()).await.unwrap();
    assert_eq!(session.mark_processed_up_to(&after_restart.position).await.unwrap(), 1);
    assert!(has(&server.flags("INBOX").await[3].1, "$VigilProcessed"));
    assert_eq!(session.mark_processed_up_to(&after_restart.position).await.unwrap(), 0);

    // No position, or one of another UIDVALIDITY: only what is not flagged is read.
    let fresh = session.fetch_new(None, 100).await.unwrap();
    assert!(fresh.is_empty(), "{fresh:?}");
    assert_eq!(fresh.position.last_uid, 4, "starts past what is flagged");
    let small_d = message("d", 200);
    server.append("INBOX", &small_d).await;
    let stale = Position { uid_validity: session.uid_validity().wrapping_add(1), last_uid: 99 };
    let renumbered = session.fetch_new(Some(stale), 100).await.unwrap();
    assert_eq!(renumbered.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [5]);
    assert_eq!(renumbered.position, Position { uid_validity: session.uid_validity(), last_uid: 5 });

    // `max` bounds a batch; the rest comes next.
    for id in ["e", "f", "g"] {
        server.append("INBOX", &message(id, 100)).await;
    }
    let first = session.fetch_new(Some(renumbered.position), 2).await.unwrap();
    assert_eq!(first.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [6, 7]);
    let second = session.fetch_new(Some(first.position), 2).await.unwrap();
    assert_eq!(second.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [8]);

    let logs = capture().0.lock().unwrap().join("\n");
    assert!(logs.contains("LOGIN"), "async-imap's trace is captured");
    assert!(logs.contains("vigil-imap-password-placeholder"), "LOGIN is logged with the placeholder");
}

#[tokio::test]
async fn move_and_delete() {
    capture();
    let Some(server) = Dovecot::start() else { return };
    let mut admin = server.admin().await;
    admin.create("Processed").await.unwrap();
    admin.logout().await.unwrap();
    for id in ["m1", "m2", "m3"] {
        server.append("INBOX", &message(id, 200)).await;
    }

    let mut config = server.config();
    config.after = AfterProcessing::Move("Processed".to_owned());
    let mut session = ImapSession::connect(&config).await.unwrap();
    let batch = session.fetch_new(None, 2).await.unwrap();
    assert_eq!(batch.uids(), [1, 2]);
    session.mark_processed(&batch.uids()).await.unwrap();
    let inbox = server.flags("INBOX").await;
    assert_eq!(inbox.iter().map(|(uid, _)| *uid).collect::<Vec<_>>(), [3]);
    let moved = server.flags("Processed").await;
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(moved.iter().all(|(_, f)| has(f, "$VigilProcessed")), "{moved:?}");
    let rest = session.fetch_new(Some(batch.position), 10).await.unwrap();
    assert_eq!(rest.uids(), [3]);
    drop(session);

    // A destination that does not exist yet is created.
    config.after = AfterProcessing::Move("Vigil/Done".to_owned());
    let mut session = ImapSession::connect(&config).await.unwrap();
    session.mark_processed(&[3]).await.unwrap();
    assert_eq!(server.flags("Vigil/Done").await.len(), 1);
    assert!(server.flags("INBOX").await.is_empty());
    drop(session);

    config.after = AfterProcessing::Delete;
    server.append("INBOX", &message("d1", 200)).await;
    let mut session = ImapSession::connect(&config).await.unwrap();
    let batch = session.fetch_new(Some(rest.position), 10).await.unwrap();
    assert_eq!(batch.uids(), [4]);
    session.mark_processed(&batch.uids()).await.unwrap();
    assert!(server.flags("INBOX").await.is_empty());
}

#[tokio::test]
async fn idle_wakes_when_mail_arrives_and_polling_finds_it() {
    capture();
    let Some(server) = Dovecot::start() else { return };
    let mut session = ImapSession::connect(&server.config()).await.unwrap();
    assert!(session.uses_idle(), "Dovecot offers IDLE");
    let start = session.fetch_new(None, 10).await.unwrap();
    assert!(start.is_empty());

    let port = server.port;
    let appender = tokio::spawn(async move {
        // Let the IDLE start first; if it had not, the next fetch finds the mail all the same.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap();
        let mut admin = client.login(USER, SCRIPT_PASSWORD).await.map_err(|(e, _)| e).unwrap();
        admin.append("INBOX", None, None, message("idle", 200)).await.unwrap();
        admin.logout().await.unwrap();
    });
    // An hour's wait: returning within the test's bound can only be the server's EXISTS.
    let session = tokio::time::timeout(Duration::from_secs(120), session.wait_for_mail(Duration::from_secs(3600)))
        .await
        .expect("IDLE did not wake on new mail");
    let mut session = session.unwrap();
    appender.await.unwrap();
    let woke = session.fetch_new(Some(start.position), 10).await.unwrap();
    assert_eq!(woke.uids(), [1]);
    session.mark_processed(&woke.uids()).await.unwrap();

    // Without IDLE: a poll (sleep, NOOP) and the next fetch finds what came meanwhile.
    let mut config = server.config();
    config.idle = false;
    config.poll_interval = Duration::from_millis(200);
    let polling = ImapSession::connect(&config).await.unwrap();
    assert!(!polling.uses_idle());
    server.append("INBOX", &message("poll", 200)).await;
    let mut polling = polling.wait_for_mail(Duration::from_secs(60)).await.unwrap();
    assert_eq!(polling.fetch_new(Some(woke.position), 10).await.unwrap().uids(), [2]);

    // An IDLE with nothing arriving ends at its timeout, and the session is still usable.
    let session = session.wait_for_mail(Duration::from_millis(300)).await.unwrap();
    let mut session = session.wait_for_mail(Duration::from_millis(300)).await.unwrap();
    let nothing = session.fetch_new(Some(Position { last_uid: 2, ..woke.position }), 10).await.unwrap();
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn tls_and_starttls_with_the_test_ca() {
    capture();
    let Some(server) = Dovecot::start() else { return };
    server.append("INBOX", &message("tls", 200)).await;

    let mut tls = server.config();
    tls.security = Security::Tls;
    tls.port = Some(server.tls_port);
    tls.extra_ca_pem = Some(server.ca());
    let mut session = ImapSession::connect(&tls).await.unwrap();
    assert_eq!(session.fetch_new(None, 10).await.unwrap().uids(), [1]);
    session.logout().await.unwrap();

    let mut starttls = server.config();
    starttls.host = "localhost".to_owned();
    starttls.security = Security::StartTls;
    starttls.extra_ca_pem = Some(server.ca());
    let mut session = ImapSession::connect(&starttls).await.unwrap();
    assert_eq!(session.fetch_new(None, 10).await.unwrap().uids(), [1]);

    // Without the test CA the server is not trusted.
    tls.extra_ca_pem = None;
    let error = ImapSession::connect(&tls).await.unwrap_err();
    assert!(error.to_string().contains("TLS handshake"), "{error}");

    // A wrong password is a login error, which names the user but not the password.
    let mut wrong = server.config();
    wrong.password = PASSWORD.to_owned();
    let error = ImapSession::connect(&wrong).await.unwrap_err().to_string();
    assert!(error.contains("logging in as bounces"), "{error}");
    assert!(!error.contains(PASSWORD), "{error}");
    let logs = capture().0.lock().unwrap().join("\n");
    assert!(!logs.contains(PASSWORD), "the password reached a log record");
}

// --- The bounce-mailbox source end to end: mail appended to Dovecot becomes events in the log.

fn testdata(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(path)).unwrap()
}

/// A DMARC aggregate report as Google mails one: the XML gzipped, as a base64 attachment.
fn dmarc_mail() -> Vec<u8> {
    use base64::Engine as _;
    use std::io::Write as _;
    let xml = testdata("dmarc/parsedmarc_outlook_com_aggregate.xml");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&xml).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let lines: Vec<&str> = encoded.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!(
        "From: noreply-dmarc-support@google.com\r\nTo: dmarc@example.com\r\nSubject: Report domain: example.com Submitter: protection.outlook.com\r\nMessage-ID: <dmarc-1@google.com>\r\nDate: Mon, 07 Dec 2026 06:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThis is an aggregate report.\r\n--b1\r\nContent-Type: application/gzip; name=\"protection.outlook.com!example.com!1711756800!1711843200.xml.gz\"\r\nContent-Disposition: attachment; filename=\"protection.outlook.com!example.com!1711756800!1711843200.xml.gz\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

async fn wait_for_head(log: &vigil_log::EventLog, at_least: u64) {
    let mut head = log.subscribe();
    tokio::time::timeout(Duration::from_secs(60), head.wait_for(|h| *h >= at_least))
        .await
        .unwrap_or_else(|_| panic!("the log did not reach {at_least} events (at {})", log.head()))
        .unwrap();
}

#[tokio::test]
async fn bounce_complaint_and_dmarc_mail_become_events_and_a_restart_reads_nothing_twice() {
    use vigil_schemas::EventKind;
    let Some(dovecot) = Dovecot::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = vigil_log::EventLog::open(dir.path()).unwrap();
    let mut config = dovecot.config();
    config.max_message_bytes = 1 << 20;
    config.idle = true;
    dovecot.append("INBOX", &testdata("mail/rfc3464_appendix_example_user_unknown.eml")).await;
    dovecot.append("INBOX", &testdata("mail/rfc5965_B2_extended_abuse_report.eml")).await;
    dovecot.append("INBOX", &dmarc_mail()).await;
    dovecot.append("INBOX", b"From: someone@example.org\r\nSubject: hello\r\n\r\nJust a letter.\r\n").await;

    let verp = vigil_ingest::mail::Verp::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let source = tokio::spawn(vigil_ingest::mailbox::run_imap(config.clone(), log.clone(), verp.clone(), stop.clone()));
    // 3 recipients of the DSN, 1 complaint, the report's rows.
    // All four were there before the source started: one fetch, one transaction.
    wait_for_head(&log, 5).await;
    let events: Vec<_> = log.read(0, 100).unwrap().into_iter().map(|(_, e)| e).collect();
    let count = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!((count(EventKind::Bounced), count(EventKind::Deferred)), (2, 1), "{events:#?}");
    assert_eq!(count(EventKind::Complaint), 1);
    let rows: Vec<_> = events.iter().filter(|e| e.kind == EventKind::DmarcReport).collect();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.report_id.is_some() && r.message_count.is_some() && r.sending_ip.is_some()));
    assert!(log.dead_letters(0, 10).unwrap()[0].1.reason.contains("no recipient"), "the letter is dead-lettered");
    let flags = dovecot.flags("INBOX").await;
    assert!(flags.iter().all(|(_, f)| has(f, "VigilProcessed")), "every message marked: {flags:?}");

    // Stopped and started again: only the new mail is read.
    stop.cancel();
    source.await.unwrap();
    let before = log.head();
    let stop = tokio_util::sync::CancellationToken::new();
    let source = tokio::spawn(vigil_ingest::mailbox::run_imap(config, log.clone(), verp, stop.clone()));
    dovecot.append("INBOX", &testdata("mail/dsn_postfix_real_bbox_fr.eml")).await;
    wait_for_head(&log, before + 1).await;
    let after: Vec<_> = log.read(before, 100).unwrap();
    assert_eq!(after.len(), 1, "one new bounce, nothing read twice: {after:#?}");
    assert_eq!(after[0].1.recipient.as_deref(), Some("recipient@domain.com"));
    stop.cancel();
    source.await.unwrap();
    assert_eq!(log.head(), before + 1);
}
