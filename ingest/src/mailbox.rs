//! Bounce mailboxes: the mail a sender's return path and feedback-loop address receive, read
//! from IMAP ([`crate::imap`]) or a maildir, as events in the log.
//!
//! # Contract
//! - Each message becomes what it is: DSN, ARF or auto-reply events ([`crate::mail`]), or the
//!   rows of a DMARC aggregate report attached to it ([`crate::dmarc`]: zip, gzip or XML). A
//!   message that is none of these is dead-lettered with the reason, never dropped.
//! - Nothing is read twice across restarts: an IMAP mailbox's position is a checkpoint stored
//!   in the same log transaction as the events of the messages before it, and messages are
//!   marked (flagged, moved or deleted, as configured) only after; a maildir message is moved
//!   from `new/` to `cur/` (flagged seen) only after its events are durable, and its events'
//!   ids are hashed from its bytes, so a crash between the two re-reads it into duplicates
//!   the log drops.
//! - A mailbox that cannot be reached is retried with backoff and logged; it never stops the
//!   process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mail_parser::{MessageParser, MimeHeaders};
use tokio_util::sync::CancellationToken;
use vigil_log::backoff::Backoff;
use vigil_log::{AppendBatch, EventLog};
use vigil_schemas::{DeadLetter, DeliveryEvent};

use crate::imap::{ImapConfig, ImapSession, Position};
use crate::mail::Verp;

/// Messages read per log transaction.
const BATCH: usize = 50;

/// The events of one message from a bounce mailbox: a DMARC report's rows when it carries
/// one, else its bounce, complaint or auto-reply events.
///
/// # Errors
/// Why the message is none of those, for its dead letter.
pub fn events_of_message(raw: &[u8], verp: &Verp, now: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, String> {
    if let Some(report) = dmarc_attachment(raw) {
        return report.map(|report| crate::dmarc::events(&report, now)).map_err(|e| format!("DMARC report: {e}"));
    }
    crate::mail::events(raw, verp, now).map_err(|e| e.to_string())
}

/// The DMARC aggregate report a message carries as an attachment (or as its body), if it
/// carries one: an `application/zip`, `application/gzip` or XML part whose content decodes as
/// one. Reporters name the file `receiver!domain!begin!end.xml.gz` (RFC 7489 §7.2.1.1).
fn dmarc_attachment(raw: &[u8]) -> Option<Result<crate::dmarc::AggregateReport, crate::dmarc::DmarcError>> {
    let message = MessageParser::default().parse(raw)?;
    let mut first_error = None;
    for part in message.parts.iter() {
        let Some(content_type) = part.content_type() else { continue };
        let (kind, sub) =
            (content_type.ctype().to_ascii_lowercase(), content_type.subtype().unwrap_or("").to_ascii_lowercase());
        let name = part.attachment_name().unwrap_or("").to_ascii_lowercase();
        let archive = matches!(sub.as_str(), "zip" | "gzip" | "x-gzip" | "x-zip-compressed" | "xml")
            && matches!(kind.as_str(), "application" | "text");
        let named =
            name.ends_with(".xml") || name.ends_with(".xml.gz") || name.ends_with(".zip") || name.ends_with(".gz");
        if !(archive || (named && kind == "application")) {
            continue;
        }
        match crate::dmarc::decode(part.contents()) {
            Ok(report) => return Some(Ok(report)),
            Err(error) => first_error = first_error.or(Some(error)),
        }
    }
    // An XML-looking attachment that does not decode is a broken report, not a bounce.
    first_error.map(Err)
}

fn batch_of(source: &str, messages: &[(String, Vec<u8>)], verp: &Verp) -> AppendBatch {
    let now = Utc::now();
    let mut batch = AppendBatch::default();
    for (location, raw) in messages {
        match events_of_message(raw, verp, now) {
            Ok(events) => batch.events.extend(events),
            Err(reason) => batch.dead_letters.push(DeadLetter::new(source, Some(location.clone()), reason, raw)),
        }
    }
    batch
}

async fn append(log: &EventLog, batch: AppendBatch) -> Result<vigil_log::AppendReceipt, vigil_log::LogError> {
    log.append_async(&batch).await
}

/// Reads an IMAP mailbox until `shutdown`: new mail as it comes (IDLE, else polling), its
/// position checkpointed with its events under `imap:<user>@<host>/<mailbox>`.
pub async fn run_imap(config: ImapConfig, log: EventLog, verp: Verp, shutdown: CancellationToken) {
    let key = format!("imap:{}@{}/{}", config.username, config.host, config.mailbox);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = read_imap(&config, &key, &log, &verp) => outcome,
        };
        let error = match outcome {
            Ok(never) => match never {},
            Err(error) => error,
        };
        let delay = backoff.next_delay();
        tracing::warn!(mailbox = %key, %error, retry_in = ?delay, "bounce mailbox unavailable; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life: returns only with the error that ended it.
async fn read_imap(
    config: &ImapConfig,
    key: &str,
    log: &EventLog,
    verp: &Verp,
) -> Result<std::convert::Infallible, String> {
    let mut session = ImapSession::connect(config).await.map_err(|e| e.to_string())?;
    let stored = {
        let (log, key) = (log.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || log.checkpoint(&key)).await.expect("checkpoint task")
    }
    .map_err(|e| e.to_string())?;
    let mut position = stored.as_deref().and_then(|b| Position::from_bytes(b).ok());
    if let Some(done) = &position {
        // A crash between storing the position and marking: mark what it covers.
        session.mark_processed_up_to(done).await.map_err(|e| e.to_string())?;
    }
    tracing::info!(mailbox = key, idle = session.uses_idle(), "bounce mailbox connected");
    loop {
        let fetched = session.fetch_new(position, BATCH).await.map_err(|e| e.to_string())?;
        if fetched.is_empty() {
            session = session.wait_for_mail(Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
            continue;
        }
        let messages: Vec<(String, Vec<u8>)> =
            fetched.messages.iter().map(|m| (format!("{key} uid {}", m.uid), m.raw.clone())).collect();
        let mut batch = batch_of("imap", &messages, verp);
        for (uid, size) in &fetched.skipped {
            let reason = format!("message of {size} bytes exceeds max_message_bytes; left in the mailbox unread");
            batch.dead_letters.push(DeadLetter::new("imap", Some(format!("{key} uid {uid}")), reason, b""));
        }
        batch.checkpoints.push((key.to_owned(), fetched.position.to_bytes()));
        let receipt = append(log, batch).await.map_err(|e| format!("appending to the log: {e}"))?;
        tracing::debug!(mailbox = key, messages = messages.len(), events = receipt.appended, "bounce mail read");
        session.mark_processed(&fetched.uids()).await.map_err(|e| e.to_string())?;
        position = Some(fetched.position);
    }
}

/// Reads a maildir's `new/` until `shutdown`, every `interval`: each message's events are
/// appended, then the message moves to `cur/` flagged seen.
pub async fn run_maildir(dir: PathBuf, log: EventLog, verp: Verp, interval: Duration, shutdown: CancellationToken) {
    loop {
        let (scan_dir, scan_log, scan_verp) = (dir.clone(), log.clone(), verp.clone());
        let scanned = tokio::task::spawn_blocking(move || scan_maildir(&scan_dir, &scan_log, &scan_verp)).await;
        match scanned {
            Ok(Ok(0)) => {}
            Ok(Ok(read)) => tracing::debug!(maildir = %dir.display(), read, "bounce mail read"),
            Ok(Err(error)) => tracing::warn!(maildir = %dir.display(), %error, "maildir scan failed; retrying"),
            Err(join) => tracing::error!(maildir = %dir.display(), error = %join, "maildir scan panicked"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass over `new/`; returns how many messages were taken.
///
/// # Errors
/// When the directory cannot be read or the log cannot append (nothing was moved then).
pub fn scan_maildir(dir: &Path, log: &EventLog, verp: &Verp) -> Result<usize, String> {
    let new = dir.join("new");
    let cur = dir.join("cur");
    std::fs::create_dir_all(&cur).map_err(|e| format!("{}: {e}", cur.display()))?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&new)
        .map_err(|e| format!("{}: {e}", new.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut taken = 0;
    for chunk in names.chunks(BATCH) {
        let mut messages = Vec::new();
        let mut too_large = Vec::new();
        for path in chunk {
            let location = path.display().to_string();
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if size > crate::dsn::MAX_EMAIL_BYTES as u64 {
                // Not read into memory: dead-lettered by name and size, and moved on.
                let reason = format!("message of {size} bytes exceeds {} bytes", crate::dsn::MAX_EMAIL_BYTES);
                too_large.push(DeadLetter::new("maildir", Some(location.clone()), reason, b""));
                messages.push((location, Vec::new()));
                continue;
            }
            match std::fs::read(path) {
                Ok(raw) => messages.push((location, raw)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable maildir message; left in new/")
                }
            }
        }
        let readable: Vec<(String, Vec<u8>)> = messages.iter().filter(|(_, raw)| !raw.is_empty()).cloned().collect();
        let mut batch = batch_of("maildir", &readable, verp);
        batch.dead_letters.extend(too_large);
        log.append(&batch).map_err(|e| format!("appending to the log: {e}"))?;
        for (path, _) in &messages {
            let path = Path::new(path);
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Maildir's info suffix: version 2, flag Seen.
            let target = cur.join(if name.contains(":2,") { name } else { format!("{name}:2,S") });
            std::fs::rename(path, &target).map_err(|e| format!("moving {} to cur/: {e}", path.display()))?;
            taken += 1;
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maildir_is_read_once_and_what_is_not_mail_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("bounces");
        std::fs::create_dir_all(maildir.join("new")).unwrap();
        let dsn = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/mail/dsn_postfix_real_bbox_fr.eml"))
            .unwrap();
        std::fs::write(maildir.join("new/1.host"), &dsn).unwrap();
        std::fs::write(maildir.join("new/2.host"), b"From: a@b.c\r\nSubject: hi\r\n\r\nhello\r\n").unwrap();
        let log = EventLog::open(&dir.path().join("log")).unwrap();
        let verp = Verp::default();
        assert_eq!(scan_maildir(&maildir, &log, &verp).unwrap(), 2);
        assert_eq!(log.head(), 1, "one bounce");
        assert_eq!(log.dead_letter_count().unwrap(), 1, "the letter, kept with its reason");
        assert!(maildir.join("cur/1.host:2,S").exists() && maildir.join("cur/2.host:2,S").exists());
        assert_eq!(scan_maildir(&maildir, &log, &verp).unwrap(), 0, "nothing read twice");
        // The same bounce delivered again (a copy in new/): the log keeps it once.
        std::fs::write(maildir.join("new/3.host"), &dsn).unwrap();
        assert_eq!(scan_maildir(&maildir, &log, &verp).unwrap(), 1);
        assert_eq!(log.head(), 1);
    }
}
