//! The IMAP side of a bounce-mailbox source: reads bounce, FBL (ARF) and DMARC report mail from
//! one IMAP mailbox, hands each message's raw RFC 5322 bytes to the caller and marks it
//! processed.
//!
//! # Contract
//!
//! - [`ImapSession::connect`] opens the connection ([`Security::Tls`], [`Security::StartTls`] or,
//!   on loopback only, [`Security::Plain`]), logs in and selects [`ImapConfig::mailbox`].
//! - [`ImapSession::fetch_new`] returns, in UID order, up to `max` messages whose UID is above the
//!   [`Position`] the caller passes, each as [`Fetched`] (uid, raw bytes), plus the messages it
//!   skipped because they are larger than [`ImapConfig::max_message_bytes`] (uid, size), plus the
//!   new [`Position`] past all of them. Bodies are read with `BODY.PEEK[]`, so reading sets no
//!   flag.
//! - The caller stores that [`Position`] ([`Position::to_bytes`], an opaque checkpoint) durably
//!   *together with* the events it made from the messages, and then calls
//!   [`ImapSession::mark_processed`]. A restart passes the stored position back, so nothing is read
//!   twice, whether or not the marking happened. After a restart,
//!   [`ImapSession::mark_processed_up_to`] finishes a marking that a crash cut short.
//! - Marking ([`AfterProcessing`]) always sets the keyword `$VigilProcessed` first (where the
//!   mailbox allows keywords), then `\Seen` ([`AfterProcessing::Flag`]), or moves the message
//!   ([`AfterProcessing::Move`]: `UID MOVE`, else `UID COPY` + `\Deleted` + expunge), or deletes it
//!   ([`AfterProcessing::Delete`]).
//! - When the mailbox's UIDVALIDITY differs from the position's (the mailbox was recreated or
//!   renumbered, so its UIDs mean nothing any more), or there is no position, reading starts over
//!   from the messages *not* flagged `$VigilProcessed`: with marking, nothing is read twice. Every
//!   search skips messages with that keyword, so another reader of the same mailbox that marks
//!   them is not undone either. (A message read but not yet marked when UIDVALIDITY changes is read
//!   again: no client can tell it apart.)
//! - [`ImapSession::wait_for_mail`] waits with IDLE (RFC 2177) when the server offers it and
//!   [`ImapConfig::idle`] is set, renewing it every 25 minutes (servers may drop an IDLE after 30),
//!   else sleeps [`ImapConfig::poll_interval`]; it returns when new mail may be there or the
//!   timeout passed. To cancel it, drop its future (the connection goes with it).
//! - Any error leaves the connection in an unknown state: drop the session and connect again
//!   (with the stored position). Each network step is bounded by [`ImapConfig::timeout`].
//! - The password is never logged: [`ImapConfig`]'s `Debug` redacts it, and it never passes
//!   through async-imap, which trace-logs every command it sends (see `Wire` below).
//!
//! Names of mailboxes are sent as given: a non-ASCII name must be given in IMAP's modified UTF-7.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_imap::imap_proto::{MailboxDatum, Response, Status};
use async_imap::types::{Flag, UnsolicitedResponse};
use async_imap::{Client, Session};
use futures::{Stream, StreamExt};

use rustls::pki_types::ServerName;
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The keyword set on every processed message. `$` because keywords starting with it are the
/// convention for client-defined keywords that users do not set by hand (RFC 5788).
pub const PROCESSED_KEYWORD: &str = "$VigilProcessed";

/// How long one IDLE lasts before it is renewed: RFC 2177 asks clients to re-issue IDLE at
/// least every 29 minutes, as servers may log an idle client out after 30.
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

/// The largest [`ImapConfig::max_message_bytes`]: async-imap buffers a whole response and
/// refuses one over 512 MiB; no bounce or report comes near this.
pub const MAX_MESSAGE_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (IMAPS, port 993 by default). The default.
    #[default]
    Tls,
    /// Plain IMAP upgraded with STARTTLS before logging in (port 143 by default); refused if
    /// the server does not upgrade, never downgraded to plain.
    StartTls,
    /// No TLS at all: the password and the mail cross the network in clear. Only sensible on
    /// loopback (a local Dovecot, a test server); a warning is logged for any other host.
    Plain,
}

/// What marks a message processed once the caller has stored its events.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterProcessing {
    /// Leave it in the mailbox, flagged `\Seen` and `$VigilProcessed`. The default: nothing is
    /// lost, and an operator sees what was read.
    #[default]
    Flag,
    /// Move it to this mailbox (created when missing), flagged `$VigilProcessed`.
    Move(String),
    /// Delete it (flag `\Deleted`, expunge).
    Delete,
}

/// One bounce mailbox. Configuration keys are the field names, except
/// `poll_interval_seconds` and `timeout_seconds`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Server name (checked against its certificate) or address.
    pub host: String,
    /// Default 993 for [`Security::Tls`], 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: Security,
    pub username: String,
    /// Never logged; see the `Debug` implementation.
    pub password: String,
    /// The mailbox read. Default `INBOX`.
    #[serde(default = "default_mailbox")]
    pub mailbox: String,
    #[serde(default)]
    pub after: AfterProcessing,
    /// How long [`ImapSession::wait_for_mail`] sleeps without IDLE. Default 60 s.
    #[serde(default = "default_poll_interval", rename = "poll_interval_seconds", deserialize_with = "seconds")]
    pub poll_interval: Duration,
    /// Use IDLE when the server offers it. Default true.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Messages larger than this are not read but reported as skipped. Default 25 MiB (DMARC
    /// aggregate reports are compressed; bounces and ARF reports are far smaller).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// The bound on each network step (connect and log in, one command, one fetched message).
    /// Default 60 s.
    #[serde(default = "default_timeout", rename = "timeout_seconds", deserialize_with = "seconds")]
    pub timeout: Duration,
    /// A PEM file of CA certificates trusted besides the platform's (a private CA, a test
    /// server's self-signed CA).
    #[serde(default)]
    pub extra_ca_pem: Option<PathBuf>,
}

fn default_mailbox() -> String {
    "INBOX".to_owned()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_max_message_bytes() -> u64 {
    25 * 1024 * 1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_secs)
}

impl ImapConfig {
    /// A configuration with every default: TLS on port 993, `INBOX`, flagging.
    #[must_use]
    pub fn new(host: impl Into<String>, username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            security: Security::default(),
            username: username.into(),
            password: password.into(),
            mailbox: default_mailbox(),
            after: AfterProcessing::default(),
            poll_interval: default_poll_interval(),
            idle: true,
            max_message_bytes: default_max_message_bytes(),
            timeout: default_timeout(),
            extra_ca_pem: None,
        }
    }

    /// The port connected to: the configured one, else the default for [`Self::security`].
    #[must_use]
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Tls => 993,
            Security::StartTls | Security::Plain => 143,
        })
    }

    /// Checks what can be checked without the server.
    ///
    /// # Errors
    /// [`ImapError::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), ImapError> {
        let bad = |what: &str| Err(ImapError::Config(what.to_owned()));
        if self.host.is_empty() {
            return bad("host is empty");
        }
        if self.mailbox.is_empty() {
            return bad("mailbox is empty");
        }
        if let AfterProcessing::Move(to) = &self.after {
            if to.is_empty() {
                return bad("after: the mailbox to move to is empty");
            }
            if same_mailbox(to, &self.mailbox) {
                return bad("after: the mailbox to move to is the mailbox read");
            }
        }
        // CR or LF would end the LOGIN command early; the placeholder would be replaced in the
        // user name instead of the password (see `Wire`).
        if self.password.contains(['\r', '\n', '\0']) {
            return bad("password contains a line break or NUL");
        }
        if self.username.contains(PASSWORD_PLACEHOLDER) {
            return bad("username contains the password placeholder");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
            return bad("max_message_bytes must be between 1 and 268435456 (256 MiB)");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval_seconds must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("timeout_seconds must be at least 1");
        }
        Ok(())
    }
}

/// By hand, so that the password never reaches a log line.
impl fmt::Debug for ImapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapConfig")
            .field("host", &self.host)
            .field("port", &self.effective_port())
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("mailbox", &self.mailbox)
            .field("after", &self.after)
            .field("poll_interval", &self.poll_interval)
            .field("idle", &self.idle)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("timeout", &self.timeout)
            .field("extra_ca_pem", &self.extra_ca_pem)
            .finish()
    }
}

/// `INBOX` is case-insensitive (RFC 3501 5.1); other names are compared as given.
fn same_mailbox(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}

/// Where reading stands in one mailbox: every message with a UID up to `last_uid` under this
/// `uid_validity` has been handed out. The caller stores it as an opaque checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub uid_validity: u32,
    pub last_uid: u32,
}

const POSITION_VERSION: u8 = 1;

impl Position {
    /// The checkpoint's bytes: a version byte, then both numbers big-endian (9 bytes).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(9);
        bytes.push(POSITION_VERSION);
        bytes.extend_from_slice(&self.uid_validity.to_be_bytes());
        bytes.extend_from_slice(&self.last_uid.to_be_bytes());
        bytes
    }

    /// Reads what [`Self::to_bytes`] wrote.
    ///
    /// # Errors
    /// When `bytes` is not a checkpoint of this version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PositionError> {
        match bytes {
            [POSITION_VERSION, v0, v1, v2, v3, l0, l1, l2, l3] => Ok(Self {
                uid_validity: u32::from_be_bytes([*v0, *v1, *v2, *v3]),
                last_uid: u32::from_be_bytes([*l0, *l1, *l2, *l3]),
            }),
            [version, ..] if *version != POSITION_VERSION => Err(PositionError::Version(*version)),
            _ => Err(PositionError::Length(bytes.len())),
        }
    }
}

/// Why stored bytes are not a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("an IMAP position is 9 bytes, not {0}")]
    Length(usize),
    #[error("unknown IMAP position version {0}")]
    Version(u8),
}

/// One message read: its UID and its raw RFC 5322 bytes, as stored on the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    pub uid: u32,
    pub raw: Vec<u8>,
}

/// The bytes are left out: a message can be megabytes.
impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched").field("uid", &self.uid).field("bytes", &self.raw.len()).finish()
    }
}

/// What one [`ImapSession::fetch_new`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Messages read, in UID order.
    pub messages: Vec<Fetched>,
    /// Messages not read because they are larger than [`ImapConfig::max_message_bytes`]:
    /// (uid, size in bytes), in UID order. They are past [`Self::position`] too, and are marked
    /// like the others when the caller passes their UIDs to [`ImapSession::mark_processed`].
    pub skipped: Vec<(u32, u64)>,
    /// Past every message of this batch (and any that vanished while it was read).
    pub position: Position,
}

impl Batch {
    /// The UIDs of every message read or skipped, for [`ImapSession::mark_processed`].
    #[must_use]
    pub fn uids(&self) -> Vec<u32> {
        let mut uids: Vec<u32> =
            self.messages.iter().map(|m| m.uid).chain(self.skipped.iter().map(|(uid, _)| *uid)).collect();
        uids.sort_unstable();
        uids
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.skipped.is_empty()
    }
}

/// Why the mailbox cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP configuration: {0}")]
    Config(String),
    #[error("connecting to {host}:{port}: {source}")]
    Connect { host: String, port: u16, source: io::Error },
    #[error("TLS trust for the mailbox: {0}")]
    Tls(#[from] vigil_log::tls::TlsError),
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS handshake with {host}: {source}")]
    Handshake { host: String, source: io::Error },
    #[error("unexpected IMAP greeting: {0}")]
    Greeting(String),
    #[error("the server refused STARTTLS: {0}")]
    StartTls(async_imap::error::Error),
    #[error("logging in as {username}: {source}")]
    Login { username: String, source: async_imap::error::Error },
    #[error("selecting mailbox {mailbox}: {source}")]
    Select { mailbox: String, source: async_imap::error::Error },
    #[error("the server sent no UIDVALIDITY for mailbox {0}")]
    NoUidValidity(String),
    #[error("mailbox {0} does not allow the keyword {PROCESSED_KEYWORD}, which `after = \"flag\"` needs")]
    KeywordsNotPermitted(String),
    #[error("IMAP {what}: {source}")]
    Command { what: &'static str, source: async_imap::error::Error },
    #[error("IMAP {what}: no answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("the server closed the connection: {0}")]
    Closed(String),
}

/// The session: one logged-in connection with [`ImapConfig::mailbox`] selected.
#[derive(Debug)]
pub struct ImapSession {
    session: Session<Wire>,
    config: ImapConfig,
    uid_validity: u32,
    /// UIDNEXT at SELECT: every message present then has a lower UID.
    uid_next: Option<u32>,
    can_idle: bool,
    can_move: bool,
    can_uid_expunge: bool,
    /// Whether the mailbox takes `$VigilProcessed` (its PERMANENTFLAGS).
    keywords: bool,
    /// An untagged EXISTS or RECENT came since the last `fetch_new`: mail may be waiting.
    mail_hint: bool,
}

impl ImapSession {
    /// Connects, logs in and selects the mailbox, all within [`ImapConfig::timeout`].
    ///
    /// # Errors
    /// A bad configuration or CA file, the network, TLS, a refused login, a mailbox that cannot
    /// be selected (or, for [`AfterProcessing::Flag`], takes no keywords).
    pub async fn connect(config: &ImapConfig) -> Result<Self, ImapError> {
        config.validate()?;
        let limit = config.timeout;
        tokio::time::timeout(limit, Self::open(config.clone()))
            .await
            .unwrap_or(Err(ImapError::Timeout { what: "connect and login", after: limit }))
    }

    async fn open(config: ImapConfig) -> Result<Self, ImapError> {
        let port = config.effective_port();
        let tls = match config.security {
            Security::Plain => {
                if !is_loopback(&config.host) {
                    tracing::warn!(host = %config.host, "IMAP without TLS to a host that is not loopback: the password crosses the network in clear");
                }
                None
            }
            Security::Tls | Security::StartTls => Some(tls_config(config.extra_ca_pem.as_deref())?),
        };
        let tcp = TcpStream::connect((config.host.as_str(), port)).await.map_err(|source| ImapError::Connect {
            host: config.host.clone(),
            port,
            source,
        })?;
        // IMAP is request/response with small commands: Nagle only adds latency.
        tcp.set_nodelay(true).ok();

        let mut client = match (config.security, tls) {
            (Security::Tls, Some(tls)) => {
                let mut client = Client::new(Wire::new(handshake(&config.host, tls, tcp).await?));
                read_greeting(&mut client).await?;
                client
            }
            (Security::StartTls, Some(tls)) => {
                let mut client = Client::new(Wire::new(Conn::Plain(tcp)));
                read_greeting(&mut client).await?;
                client.run_command_and_check_ok("STARTTLS", None).await.map_err(ImapError::StartTls)?;
                // Whatever the server sent after its OK is dropped with the client's buffer,
                // never read as if it had come over TLS.
                let Conn::Plain(tcp) = client.into_inner().conn else {
                    return Err(ImapError::Config("STARTTLS on a TLS connection".to_owned()));
                };
                // No greeting after STARTTLS (RFC 3501 6.2.1).
                Client::new(Wire::new(handshake(&config.host, tls, tcp).await?))
            }
            _ => {
                let mut client = Client::new(Wire::new(Conn::Plain(tcp)));
                read_greeting(&mut client).await?;
                client
            }
        };

        client.get_mut().arm_password(&config.password);
        let mut session = client
            .login(&config.username, PASSWORD_PLACEHOLDER)
            .await
            .map_err(|(source, _)| ImapError::Login { username: config.username.clone(), source })?;
        session.get_mut().disarm_password();

        let capabilities =
            session.capabilities().await.map_err(|source| ImapError::Command { what: "CAPABILITY", source })?;
        let can_idle = capabilities.has_str("IDLE");
        let can_move = capabilities.has_str("MOVE");
        let can_uid_expunge = capabilities.has_str("UIDPLUS");

        let mailbox = session
            .select(&config.mailbox)
            .await
            .map_err(|source| ImapError::Select { mailbox: config.mailbox.clone(), source })?;
        let uid_validity = mailbox.uid_validity.ok_or_else(|| ImapError::NoUidValidity(config.mailbox.clone()))?;
        // No PERMANENTFLAGS at all means every flag is permanent (RFC 3501 7.1); `\*` means
        // new keywords may be created.
        let keywords = mailbox.permanent_flags.is_empty()
            || mailbox.permanent_flags.iter().any(|flag| {
                matches!(flag, Flag::MayCreate) || matches!(flag, Flag::Custom(k) if k == PROCESSED_KEYWORD)
            });
        if !keywords && config.after == AfterProcessing::Flag {
            return Err(ImapError::KeywordsNotPermitted(config.mailbox.clone()));
        }
        let mut this = Self {
            session,
            uid_validity,
            uid_next: mailbox.uid_next,
            can_idle,
            can_move,
            can_uid_expunge,
            keywords,
            mail_hint: false,
            config,
        };
        if let AfterProcessing::Move(to) = &this.config.after {
            let to = to.clone();
            this.ensure_mailbox(&to).await?;
        }
        tracing::debug!(
            host = %this.config.host, mailbox = %this.config.mailbox, uid_validity, can_idle, can_move,
            "IMAP mailbox selected"
        );
        Ok(this)
    }

    /// Creates `name` when LIST does not find it.
    async fn ensure_mailbox(&mut self, name: &str) -> Result<(), ImapError> {
        let limit = self.config.timeout;
        let pattern = quote(name);
        let names = timed(limit, "LIST", self.session.list(Some(""), Some(&pattern))).await?;
        let found = collect(limit, "LIST", names).await?;
        if found.is_empty() {
            timed(limit, "CREATE", self.session.create(name)).await?;
            tracing::info!(mailbox = name, "created the IMAP mailbox processed messages move to");
        }
        Ok(())
    }

    /// The selected mailbox's UIDVALIDITY.
    #[must_use]
    pub fn uid_validity(&self) -> u32 {
        self.uid_validity
    }

    /// Whether [`Self::wait_for_mail`] uses IDLE (the server offers it and the configuration
    /// allows it) rather than polling.
    #[must_use]
    pub fn uses_idle(&self) -> bool {
        self.config.idle && self.can_idle
    }

    /// The messages after `position` (all not yet flagged `$VigilProcessed` without one), at most
    /// `max` of them (read and skipped together), in UID order; see the module doc.
    ///
    /// # Errors
    /// The network or the server; the session is then unusable.
    pub async fn fetch_new(&mut self, position: Option<Position>, max: usize) -> Result<Batch, ImapError> {
        let limit = self.config.timeout;
        // A session's view of the mailbox is only brought up to date by some commands; NOOP is
        // the one meant for it (RFC 3501 6.1.2). Without it Dovecot's UID SEARCH does not see
        // mail delivered since the session's last sync.
        timed(limit, "NOOP", self.session.noop()).await?;
        self.drain_unsolicited();
        self.mail_hint = false;
        let (after, restarted) = match position {
            Some(p) if p.uid_validity == self.uid_validity => (p.last_uid, false),
            Some(p) => {
                tracing::warn!(
                    mailbox = %self.config.mailbox, stored = p.uid_validity, now = self.uid_validity,
                    "IMAP UIDVALIDITY changed: reading again every message not flagged {PROCESSED_KEYWORD}"
                );
                (0, true)
            }
            None => (0, true),
        };
        let empty = |last_uid| Batch {
            messages: Vec::new(),
            skipped: Vec::new(),
            position: Position { uid_validity: self.uid_validity, last_uid },
        };
        if after == u32::MAX || max == 0 {
            return Ok(empty(after));
        }

        // `n:*` also matches the highest UID when it is below n (RFC 3501 6.4.8), hence the
        // filter. The keyword excludes what this or another reader already marked.
        let query = format!("UID {}:* NOT KEYWORD {PROCESSED_KEYWORD}", after + 1);
        let found = timed(limit, "UID SEARCH", self.session.uid_search(&query)).await?;
        let mut uids: Vec<u32> = found.into_iter().filter(|uid| *uid > after).collect();
        uids.sort_unstable();
        let complete = uids.len() <= max;
        uids.truncate(max);

        let mut last_uid = uids.last().copied().unwrap_or(after);
        if restarted && complete {
            // Everything below UIDNEXT (at SELECT) that was not found is marked already: start
            // past it, so a later search need not look at it again.
            if let Some(next) = self.uid_next {
                last_uid = last_uid.max(next.saturating_sub(1));
            }
        }
        if uids.is_empty() {
            return Ok(empty(last_uid));
        }

        // Sizes first, so that a large message is never transferred.
        let set = uid_set(&uids);
        let fetches = timed(limit, "UID FETCH RFC822.SIZE", self.session.uid_fetch(&set, "(UID RFC822.SIZE)")).await?;
        let sizes: HashMap<u32, u64> = collect(limit, "UID FETCH RFC822.SIZE", fetches)
            .await?
            .iter()
            .filter_map(|f| Some((f.uid?, u64::from(f.size?))))
            .collect();
        let max_bytes = self.config.max_message_bytes;
        let mut skipped = Vec::new();
        let mut wanted = Vec::new();
        for uid in &uids {
            match sizes.get(uid) {
                Some(&size) if size > max_bytes => skipped.push((*uid, size)),
                Some(_) => wanted.push(*uid),
                // Expunged by someone else between SEARCH and FETCH: gone, and past.
                None => tracing::debug!(uid, "IMAP message vanished before it was read"),
            }
        }

        let mut messages = Vec::with_capacity(wanted.len());
        if !wanted.is_empty() {
            // A partial fetch one byte past the limit: a server whose RFC822.SIZE is wrong
            // still cannot make us hold more than the limit.
            let query = format!("(UID BODY.PEEK[]<0.{}>)", max_bytes + 1);
            let fetches = timed(limit, "UID FETCH BODY", self.session.uid_fetch(uid_set(&wanted), &query)).await?;
            let mut bodies: HashMap<u32, Vec<u8>> = HashMap::with_capacity(wanted.len());
            let mut fetches = std::pin::pin!(fetches);
            loop {
                let next = tokio::time::timeout(limit, fetches.next())
                    .await
                    .map_err(|_| ImapError::Timeout { what: "UID FETCH BODY", after: limit })?;
                let Some(fetch) = next else { break };
                let fetch = fetch.map_err(|source| ImapError::Command { what: "UID FETCH BODY", source })?;
                if let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) {
                    bodies.insert(uid, body.to_vec());
                }
            }
            for uid in wanted {
                match bodies.remove(&uid) {
                    Some(raw) if raw.len() as u64 > max_bytes => {
                        skipped.push((uid, sizes.get(&uid).copied().unwrap_or(0).max(raw.len() as u64)));
                    }
                    Some(raw) => messages.push(Fetched { uid, raw }),
                    None => tracing::warn!(uid, "IMAP message vanished or came without a body: passed over"),
                }
            }
        }
        skipped.sort_unstable();
        Ok(Batch { messages, skipped, position: Position { uid_validity: self.uid_validity, last_uid } })
    }

    /// Marks `uids` processed as [`ImapConfig::after`] says. UIDs no longer in the mailbox are
    /// ignored by the server.
    ///
    /// # Errors
    /// The network or the server; the session is then unusable.
    pub async fn mark_processed(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        if uids.is_empty() {
            return Ok(());
        }
        let set = uid_set(&uids);
        let limit = self.config.timeout;
        match self.config.after.clone() {
            AfterProcessing::Flag => {
                self.store(&set, &format!("+FLAGS.SILENT (\\Seen {PROCESSED_KEYWORD})")).await?;
            }
            AfterProcessing::Move(to) => {
                // The keyword first: a move cut short still leaves the message marked, and it
                // travels with the message.
                if self.keywords {
                    self.store(&set, &format!("+FLAGS.SILENT ({PROCESSED_KEYWORD})")).await?;
                }
                if self.can_move {
                    timed(limit, "UID MOVE", self.session.uid_mv(&set, &to)).await?;
                } else {
                    timed(limit, "UID COPY", self.session.uid_copy(&set, &to)).await?;
                    self.store(&set, "+FLAGS.SILENT (\\Deleted)").await?;
                    self.expunge(&set).await?;
                }
            }
            AfterProcessing::Delete => {
                if self.keywords {
                    self.store(&set, &format!("+FLAGS.SILENT ({PROCESSED_KEYWORD})")).await?;
                }
                self.store(&set, "+FLAGS.SILENT (\\Deleted)").await?;
                self.expunge(&set).await?;
            }
        }
        Ok(())
    }

    /// After a restart: marks every message up to `position` that is still unmarked (a crash
    /// between storing the position and [`Self::mark_processed`]). Returns how many it marked;
    /// nothing when UIDVALIDITY changed (those UIDs mean nothing now).
    ///
    /// # Errors
    /// As [`Self::mark_processed`].
    pub async fn mark_processed_up_to(&mut self, position: &Position) -> Result<usize, ImapError> {
        if position.uid_validity != self.uid_validity || position.last_uid == 0 {
            return Ok(0);
        }
        // With Move or Delete a message that is still here is unfinished even when it carries
        // the keyword (set first).
        let query = match self.config.after {
            AfterProcessing::Flag => format!("UID 1:{} NOT KEYWORD {PROCESSED_KEYWORD}", position.last_uid),
            AfterProcessing::Move(_) | AfterProcessing::Delete => format!("UID 1:{}", position.last_uid),
        };
        let found = timed(self.config.timeout, "UID SEARCH", self.session.uid_search(&query)).await?;
        let uids: Vec<u32> = found.into_iter().filter(|uid| *uid <= position.last_uid).collect();
        self.mark_processed(&uids).await?;
        Ok(uids.len())
    }

    async fn store(&mut self, set: &str, what: &str) -> Result<(), ImapError> {
        let limit = self.config.timeout;
        let responses = timed(limit, "UID STORE", self.session.uid_store(set, what)).await?;
        collect(limit, "UID STORE", responses).await.map(drop)
    }

    async fn expunge(&mut self, set: &str) -> Result<(), ImapError> {
        let limit = self.config.timeout;
        if self.can_uid_expunge {
            let responses = timed(limit, "UID EXPUNGE", self.session.uid_expunge(set)).await?;
            collect(limit, "UID EXPUNGE", responses).await.map(drop)
        } else {
            // Without UIDPLUS, EXPUNGE removes every \Deleted message of the mailbox, also ones
            // someone else flagged: the only way left.
            let responses = timed(limit, "EXPUNGE", self.session.expunge()).await?;
            collect(limit, "EXPUNGE", responses).await.map(drop)
        }
    }

    /// Waits until new mail may be there or `timeout` passed: IDLE when [`Self::uses_idle`]
    /// (renewed every 25 minutes), else a sleep of `min(poll_interval, timeout)`.
    /// Returns at once when the server already announced new mail.
    ///
    /// # Errors
    /// The network or the server; the session is lost with `self`.
    pub async fn wait_for_mail(mut self, timeout: Duration) -> Result<Self, ImapError> {
        self.drain_unsolicited();
        if self.mail_hint {
            return Ok(self);
        }
        let limit = self.config.timeout;
        if !self.uses_idle() {
            // The NOOP that starts the next `fetch_new` brings in what arrived meanwhile.
            tokio::time::sleep(self.config.poll_interval.min(timeout)).await;
            return Ok(self);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(self);
            }
            let (session, woken) = idle_once(self.session, left.min(IDLE_RENEW), limit).await?;
            self.session = session;
            self.drain_unsolicited();
            if woken || self.mail_hint {
                return Ok(self);
            }
        }
    }

    /// Logs out politely.
    ///
    /// # Errors
    /// The network or the server.
    pub async fn logout(mut self) -> Result<(), ImapError> {
        timed(self.config.timeout, "LOGOUT", self.session.logout()).await
    }

    fn drain_unsolicited(&mut self) {
        while let Ok(response) = self.session.unsolicited_responses.try_recv() {
            if matches!(response, UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)) {
                self.mail_hint = true;
            }
        }
    }
}

/// One IDLE of at most `span`: whether it ended because mail arrived.
async fn idle_once(
    session: Session<Wire>,
    span: Duration,
    limit: Duration,
) -> Result<(Session<Wire>, bool), ImapError> {
    // EXISTS sent before the server's `+` goes to the unsolicited channel, not to the wait.
    let unsolicited = session.unsolicited_responses.clone();
    let mut handle = session.idle();
    timed(limit, "IDLE", handle.init()).await?;
    let mut woken = std::iter::from_fn(|| unsolicited.try_recv().ok())
        .any(|r| matches!(r, UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)));
    let end = Instant::now() + span;
    while !woken {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // `_stop` must live: dropping it ends the wait. async-imap's own timeout restarts on
        // every keepalive (`* OK Still here`), so the outer one bounds the span.
        let (wait, _stop) = handle.wait_with_timeout(left);
        match tokio::time::timeout(left, wait).await {
            Err(_) => break,
            Ok(Err(source)) => return Err(ImapError::Command { what: "IDLE", source }),
            Ok(Ok(async_imap::extensions::idle::IdleResponse::NewData(data))) => match data.parsed() {
                Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => woken = true,
                Response::Data { status: Status::Bye, outcome } => {
                    return Err(ImapError::Closed(outcome.information.as_deref().unwrap_or("BYE").to_owned()));
                }
                // Expunges and flag changes: no new mail; keep waiting.
                _ => {}
            },
            Ok(Ok(_timeout_or_interrupt)) => break,
        }
    }
    let session = timed(limit, "IDLE DONE", handle.done()).await?;
    Ok((session, woken))
}

async fn timed<T>(
    limit: Duration,
    what: &'static str,
    future: impl Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(|source| ImapError::Command { what, source }),
        Err(_) => Err(ImapError::Timeout { what, after: limit }),
    }
}

/// Every response of `stream`, each within `limit` of the one before.
async fn collect<T>(
    limit: Duration,
    what: &'static str,
    stream: impl Stream<Item = Result<T, async_imap::error::Error>>,
) -> Result<Vec<T>, ImapError> {
    let mut stream = std::pin::pin!(stream);
    let mut items = Vec::new();
    loop {
        match tokio::time::timeout(limit, stream.next()).await {
            Err(_) => return Err(ImapError::Timeout { what, after: limit }),
            Ok(None) => return Ok(items),
            Ok(Some(item)) => items.push(item.map_err(|source| ImapError::Command { what, source })?),
        }
    }
}

/// `uids` (sorted, distinct) as an IMAP sequence set of ranges: `1:3,7,9:12`.
fn uid_set(uids: &[u32]) -> String {
    let mut set = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !set.is_empty() {
            set.push(',');
        }
        if start == end {
            set.push_str(&start.to_string());
        } else {
            set.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    set
}

/// An IMAP quoted string (async-imap's LIST takes its pattern unquoted).
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn read_greeting(client: &mut Client<Wire>) -> Result<(), ImapError> {
    let greeting = client.read_response().await.map_err(|e| ImapError::Greeting(e.to_string()))?;
    let Some(greeting) = greeting else { return Err(ImapError::Greeting("connection closed".to_owned())) };
    match greeting.parsed() {
        Response::Data { status: Status::Ok, .. } => Ok(()),
        other => Err(ImapError::Greeting(format!("{other:?}"))),
    }
}

/// What the rest of Vigil trusts (the platform's roots and `[tls] ca_file`), or that plus
/// the mailbox's own `extra_ca_pem`.
fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ImapError> {
    match extra_ca {
        None => Ok(vigil_log::tls::client_config()),
        Some(path) => Ok(vigil_log::tls::build(Some(path))?),
    }
}

async fn handshake(host: &str, tls: Arc<rustls::ClientConfig>, tcp: TcpStream) -> Result<Conn, ImapError> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(name.to_owned()).map_err(|_| ImapError::ServerName(host.to_owned()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| ImapError::Handshake { host: host.to_owned(), source })?;
    Ok(Conn::Tls(Box::new(stream)))
}

/// The transport under async-imap.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// What async-imap sends as the password; [`Wire`] puts the real one in its place.
const PASSWORD_PLACEHOLDER: &str = "vigil-imap-password-placeholder-0c5e1f";

/// The connection async-imap writes to. async-imap logs each command it sends (at `trace`,
/// through the `log` crate, which a `tracing-log` bridge forwards), LOGIN included. So it is
/// given [`PASSWORD_PLACEHOLDER`] as the password, and this writer replaces it on the wire,
/// once, with the real password as an IMAP quoted string's content: the log shows the
/// placeholder.
struct Wire {
    conn: Conn,
    /// The escaped password, until the LOGIN command went out.
    password: Option<Vec<u8>>,
    /// A rewritten command not yet written, reported to async-imap as written already.
    pending: Vec<u8>,
    pending_at: usize,
}

impl Wire {
    fn new(conn: Conn) -> Self {
        Self { conn, password: None, pending: Vec::new(), pending_at: 0 }
    }

    fn arm_password(&mut self, password: &str) {
        // Inside the quotes async-imap puts around the placeholder: escape as it would.
        let escaped = password.replace('\\', "\\\\").replace('"', "\\\"");
        self.password = Some(escaped.into_bytes());
    }

    fn disarm_password(&mut self) {
        if let Some(mut password) = self.password.take() {
            password.fill(0);
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending.len() {
            let written = ready!(Pin::new(&mut self.conn).poll_write(cx, &self.pending[self.pending_at..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += written;
        }
        if !self.pending.is_empty() {
            self.pending.fill(0);
            self.pending.clear();
            self.pending_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.conn {
            Conn::Plain(_) => "plain",
            Conn::Tls(_) => "tls",
        };
        f.debug_struct("Wire").field("conn", &kind).finish_non_exhaustive()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(password) = &this.password {
            let placeholder = PASSWORD_PLACEHOLDER.as_bytes();
            if let Some(at) = buf.windows(placeholder.len()).position(|w| w == placeholder) {
                let mut rewritten = Vec::with_capacity(buf.len() + password.len());
                rewritten.extend_from_slice(&buf[..at]);
                rewritten.extend_from_slice(password);
                rewritten.extend_from_slice(&buf[at + placeholder.len()..]);
                this.disarm_password();
                this.pending = rewritten;
                this.pending_at = 0;
                // Taken whole: the next write or the flush async-imap does right after sends it.
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.conn).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.conn).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.conn).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_and_rejects_garbage() {
        let position = Position { uid_validity: 0xDEAD_BEEF, last_uid: 42 };
        let bytes = position.to_bytes();
        assert_eq!(bytes.len(), 9);
        assert_eq!(Position::from_bytes(&bytes), Ok(position));
        assert_eq!(Position::from_bytes(&bytes[..8]), Err(PositionError::Length(8)));
        assert_eq!(Position::from_bytes(&[]), Err(PositionError::Length(0)));
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(Position::from_bytes(&other), Err(PositionError::Version(9)));
    }

    #[test]
    fn uid_sets_are_ranges() {
        assert_eq!(uid_set(&[1]), "1");
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10, 11, 12]), "1:3,7,9:12");
        assert_eq!(uid_set(&[4, 6, u32::MAX - 1, u32::MAX]), format!("4,6,{}:{}", u32::MAX - 1, u32::MAX));
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn debug_redacts_the_password() {
        let config = ImapConfig::new("imap.example.com", "bounces", "hunter2-secret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let config: ImapConfig = toml::from_str(
            r#"
            host = "imap.example.com"
            username = "bounces"
            password = "p"
            "#,
        )
        .unwrap();
        assert_eq!(config.effective_port(), 993);
        assert_eq!(config.security, Security::Tls);
        assert_eq!(config.mailbox, "INBOX");
        assert_eq!(config.after, AfterProcessing::Flag);
        assert_eq!(config.poll_interval, Duration::from_secs(60));
        assert!(config.idle);
        config.validate().unwrap();

        let config: ImapConfig = toml::from_str(
            r#"
            host = "127.0.0.1"
            port = 1143
            security = "starttls"
            username = "bounces"
            password = "p"
            mailbox = "Bounces"
            after = { move = "Bounces/Done" }
            poll_interval_seconds = 5
            idle = false
            max_message_bytes = 1000
            timeout_seconds = 3
            extra_ca_pem = "/tmp/ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!(config.effective_port(), 1143);
        assert_eq!(config.security, Security::StartTls);
        assert_eq!(config.after, AfterProcessing::Move("Bounces/Done".to_owned()));
        assert_eq!(config.poll_interval, Duration::from_secs(5));
        assert_eq!(config.timeout, Duration::from_secs(3));
        assert_eq!(config.extra_ca_pem.as_deref(), Some(Path::new("/tmp/ca.pem")));

        let delete: ImapConfig =
            toml::from_str("host = \"h\"\nusername = \"u\"\npassword = \"p\"\nafter = \"delete\"\n").unwrap();
        assert_eq!(delete.after, AfterProcessing::Delete);
        assert!(toml::from_str::<ImapConfig>("host = \"h\"\nusername = \"u\"\npassword = \"p\"\nport2 = 1\n").is_err());
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let mut config = ImapConfig::new("h", "u", "p");
        config.after = AfterProcessing::Move("inbox".to_owned());
        assert!(config.validate().unwrap_err().to_string().contains("mailbox read"));
        let mut config = ImapConfig::new("h", "u", "p\r\nA1 DELETE INBOX");
        assert!(config.validate().unwrap_err().to_string().contains("line break"));
        config.password = "p".to_owned();
        config.max_message_bytes = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LocalHost"));
        assert!(!is_loopback("imap.example.com"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
