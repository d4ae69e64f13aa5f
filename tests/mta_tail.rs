//! Tailing Postfix, Exim and PowerMTA logs in `vigil run`, across restarts.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;

use common::Vigil;
use serde_json::json;

fn append(path: &Path, lines: &[&str]) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn row(provider: &str, delivered: u64, deferred: u64, bounced: u64) -> serde_json::Value {
    json!({"provider": provider, "delivered": delivered, "deferred": deferred, "bounced": bounced,
           "expired": 0, "complaints": 0, "attempts": delivered + deferred + bounced})
}

#[tokio::test]
async fn three_formats_are_tailed_and_a_restart_neither_loses_nor_repeats() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let postfix = logs.path().join("maillog");
    let exim = logs.path().join("mainlog");
    let pmta = logs.path().join("acct.csv");
    append(
        &postfix,
        &[
            "Jan  9 10:00:01 mx postfix/qmgr[2]: AAAAA11111: from=<alice@example.net>, size=100, nrcpt=1 (queue active)",
            "Jan  9 10:00:02 mx postfix/smtp[4]: AAAAA11111: to=<y@yahoo.com>, relay=mta5.am0.yahoodns.net[67.195.1.1]:25, delay=1, delays=0/0/0/1, dsn=4.7.0, status=deferred (host mta5.am0.yahoodns.net[67.195.1.1] said: 421 4.7.0 [TSS04] Messages temporarily deferred (in reply to MAIL FROM command))",
        ],
    );
    append(
        &exim,
        &[
            "2026-01-09 10:00:00 1abcde-000000-AB => a@gmail.com R=dnslookup T=remote_smtp H=gmail-smtp-in.l.google.com [142.250.1.1] C=\"250 OK\"",
        ],
    );
    append(
        &pmta,
        &[
            "#type,timeLogged,orig,rcpt,dsnAction,dsnStatus,dsnDiag,bounceCat,vmta",
            "b,2026-01-09 10:01:00,s@example.com,gone@outlook.com,failed,5.1.1,smtp;550 5.1.1 User unknown,bad-mailbox,mta1",
        ],
    );
    let args = [
        "--postfix-log",
        postfix.to_str().unwrap(),
        "--exim-log",
        exim.to_str().unwrap(),
        "--powermta-acct",
        pmta.to_str().unwrap(),
        "--tail-interval-ms",
        "50",
    ];
    let vigil = Vigil::start(data.path(), &args).await;
    let first = json!([row("google", 1, 0, 0), row("microsoft", 0, 0, 1), row("yahoo", 0, 1, 0)]);
    vigil.wait_for_summary("group_by=provider", &first).await;
    vigil.kill9();

    // Written while Vigil was down; the PowerMTA record comes after the header it needs.
    append(
        &postfix,
        &[
            "Jan  9 10:05:02 mx postfix/smtp[4]: AAAAA11111: to=<y@yahoo.com>, relay=mta5.am0.yahoodns.net[67.195.1.1]:25, delay=300, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)",
        ],
    );
    append(&pmta, &["d,2026-01-09 10:02:00,s@example.com,ok@outlook.com,delivered,2.0.0,250 OK,,mta1"]);
    let vigil = Vigil::start(data.path(), &args).await;
    let second = json!([row("google", 1, 0, 0), row("microsoft", 1, 0, 1), row("yahoo", 1, 1, 0)]);
    vigil.wait_for_summary("group_by=provider", &second).await;
    let (_, dead) = vigil.get("/api/v1/deadletters").await;
    assert_eq!(dead["total"], 0, "{dead:#}");
    let sources = vigil.summary("group_by=egress_source").await;
    assert!(sources.as_array().unwrap().iter().any(|r| r["egress_source"] == "mta1"), "{sources:#}");
}

/// Copy-truncate rotation of a tailed directory: the rotated copy is read (it may hold lines
/// the tail had not reached), its already-read lines are recognised by their event ids, and
/// the truncated file is read again from its start even after it has regrown past the old
/// offset.
#[tokio::test]
async fn copy_truncate_rotation_loses_nothing_and_counts_nothing_twice() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("maillog");
    let line = |n: usize, domain: &str| {
        format!(
            "Jan  9 10:00:{n:02} mx postfix/smtp[4]: Q{n:09}: to=<u{n}@{domain}>, relay=mx.{domain}[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X{n})"
        )
    };
    append(&log, &[&line(1, "gmail.com"), &line(2, "gmail.com")]);
    let args = ["--postfix-log", logs.path().to_str().unwrap(), "--tail-interval-ms", "50"];
    let vigil = Vigil::start(data.path(), &args).await;
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 2, 0, 0)])).await;

    // One more line lands, then logrotate copies and truncates before the tail reads it; the
    // new file grows past the old offset before the next scan.
    append(&log, &[&line(3, "gmail.com")]);
    std::fs::copy(&log, logs.path().join("maillog.1")).unwrap();
    let longer: Vec<String> = (4..10).map(|n| line(n, "yahoo.com")).collect();
    let refs: Vec<&str> = longer.iter().map(String::as_str).collect();
    std::fs::write(&log, refs.join("\n") + "\n").unwrap();
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 3, 0, 0), row("yahoo", 6, 0, 0)])).await;
}

/// A line still being written is left until its newline arrives, then counted once; a tailed
/// file deleted and created again is read afresh; the tail never stops.
#[tokio::test]
async fn partial_lines_and_deleted_files() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("mainlog");
    let line = |n: usize| {
        format!(
            "2026-01-09 10:00:{n:02} 1abcde-0000{n:02}-AB => u{n}@gmail.com R=dnslookup T=remote_smtp H=mx [192.0.2.1] C=\"250 OK\""
        )
    };
    let first = line(1);
    let second = line(2);
    std::fs::write(&log, format!("{first}\n{}", &second[..40])).unwrap();
    let args = ["--exim-log", log.to_str().unwrap(), "--tail-interval-ms", "50"];
    let vigil = Vigil::start(data.path(), &args).await;
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 1, 0, 0)])).await;

    append(&log, &[&second[40..]]);
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 2, 0, 0)])).await;

    // Deleted (the tail logs the error and keeps trying), then created with new lines.
    std::fs::remove_file(&log).unwrap();
    let (third, fourth) = (line(3), line(4));
    append(&log, &[&third, &fourth]);
    vigil.wait_for_summary("group_by=provider", &json!([row("google", 4, 0, 0)])).await;
    let (_, dead) = vigil.get("/api/v1/deadletters").await;
    assert_eq!(dead["total"], 0, "{dead:#}");
}
