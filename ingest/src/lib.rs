//! Ingest: sources and normalisers that turn what MTAs say into canonical events in the log of
//! record.
//!
//! # Contract
//! - In: relay webhooks (`POST /ingest/<relay>`, verified before they are read); KumoMTA JSON log records, by HTTP log hook (`POST /ingest/kumomta`, one object or an
//!   array) or by tailing a KumoMTA log directory (plain JSONL and zstd segments); Postfix,
//!   Exim and PowerMTA log lines by tailing a file or a directory (with logrotate's `.gz` and
//!   `.zst` history), and Postfix or Exim lines over syslog (UDP and TCP, every header
//!   [`syslog::header`] reads).
//! - Out: [`vigil_schemas::DeliveryEvent`]s appended to the [`vigil_log::EventLog`], one per
//!   (record, recipient); records that cannot be normalised become
//!   [`vigil_schemas::DeadLetter`]s with the reason.
//! - Guarantee: at least once into the log, made exactly once by the log's dedupe on the
//!   stable `event_id`. HTTP answers 2xx only after the log has fsync'd the batch; a file's
//!   checkpoint commits in the same transaction as the events it covers. Bad input never
//!   crashes a receiver and never disappears: it gets a 4xx with a reason or a dead letter.
//!   A tailed file is read once across its rotations; a file in a compression the tail
//!   cannot read (bzip2, xz, lz4) is skipped with a log line rather than dead-lettered.
//!
//! # Layout
//! - [`kumomta`]: the record mirror, the normaliser and the HTTP receiver.
//! - [`postfix`], [`exim`], [`powermta`]: the other MTAs' log normalisers, behind [`lines`].
//! - [`tail`]: reading log files and directories into the log, with checkpoints; a one-file
//!   tail follows its file through rotations (rename or copytruncate) by device and inode,
//!   and a directory's `.gz` and `.zst` rotations are read once.
//! - [`syslog`]: UDP and TCP syslog receivers for Postfix and Exim lines, and
//!   [`syslog::header`], the one syslog header parser (RFC 3164 with or without priority, RFC
//!   5424, rsyslog's and syslog-ng's forms) every line format reads its lines with.
//! - [`forward`]: the ingest role's forwarder from the on-disk buffer to Kafka (the Kafka
//!   binding itself, configuration and topics, is [`vigil_log::kafka`]).
//! - [`direct`]: the ingest role's direct path from file tails to Kafka, spilling to the
//!   buffer while the broker is away.
//! - [`feedback_loop`]: which feedback loop (Yahoo CFL, Microsoft JMRP, AOL, ...) sent a
//!   complaint report.
//! - [`relay`]: relay webhooks (SES through SNS, SendGrid, Mailgun, Postmark, SparkPost, Brevo,
//!   Mailjet, Postal, Elastic Email): normalisers, signature and credential checks, receivers.
//! - [`mail`]: bounce, complaint and auto-reply mail as events, joined to the original send by
//!   Message-ID and VERP.
//! - [`mailbox`]: bounce mailboxes (IMAP through [`imap`], maildir) into the log.
//! - [`upload`]: `POST /ingest/dsn` and `POST /ingest/dmarc`.
//! - [`dmarc`]: DMARC aggregate reports (XML, gzip, zip) and their rows as events.
//! - [`dns`]: the MX of recipient domains, looked up in the background and written into
//!   the events that name none (through [`vigil_log::Annotator`]), so relay and DSN events of
//!   custom domains count under the provider that hosts them.
//! - [`blocklist`]: our sending IPs and domains checked against DNS block lists on a
//!   schedule; listings and delistings written to the log as events.
//! - [`domain_checks`]: our sending domains' SPF, DKIM, DMARC, MTA-STS and TLS-RPT, read as
//!   receivers read them, with a severity and a fix per finding.
//! - [`dsn`]: decoding bounce, complaint and auto-reply mail (RFC 3464, RFC 5965, RFC 3834 and
//!   common non-standard bounce bodies).

pub mod blocklist;
pub mod direct;
pub mod dmarc;
pub mod dns;
pub mod domain_checks;
pub mod dsn;
pub mod exim;
pub mod feedback_loop;
pub mod forward;
pub mod imap;
pub mod kumomta;
pub mod lines;
pub mod mail;
pub mod mailbox;
pub mod metrics;
pub mod postfix;
pub mod powermta;
pub mod relay;
pub mod syslog;
pub mod tail;
pub mod upload;
