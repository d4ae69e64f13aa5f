//! The ingest sources both roles start from their configuration: file tails and syslog
//! receivers, appending to the log (`vigil run`) or the shipping buffer (`vigil ingest`). The
//! KumoMTA HTTP log hook is a route on the role's own listener. Same sources, same normalisers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vigil_ingest::direct::DirectShipper;
use vigil_ingest::lines::{Format, LineSettings, PostfixEgress, Zone};
use vigil_ingest::syslog::SyslogIngest;
use vigil_ingest::tail::{TailConfig, Tailer};
use vigil_log::EventLog;

use crate::cli::SyslogFormat;
use crate::run::MapOk;

/// The `[sources]` section of `vigil ingest --config`, and the same settings as flags of
/// `vigil run`: one definition, so the two roles cannot drift apart.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// A KumoMTA log directory to tail (`log_dir` of `kumo.configure_local_logs`). Repeatable.
    #[serde(default)]
    #[arg(long = "kumomta-logs", value_name = "DIR")]
    pub kumomta_logs: Vec<PathBuf>,
    /// A Postfix maillog file, or a directory of them, to tail. Repeatable.
    #[serde(default)]
    #[arg(long = "postfix-log", value_name = "PATH")]
    pub postfix_logs: Vec<PathBuf>,
    /// An Exim main log file, or a directory of them, to tail. Repeatable.
    #[serde(default)]
    #[arg(long = "exim-log", value_name = "PATH")]
    pub exim_logs: Vec<PathBuf>,
    /// A PowerMTA accounting CSV file, or a directory of them, to tail. Repeatable.
    #[serde(default)]
    #[arg(long = "powermta-acct", value_name = "PATH")]
    pub powermta_accounting: Vec<PathBuf>,
    /// Receive syslog over UDP on this address (Postfix or Exim lines, see --syslog-format).
    #[arg(long, value_name = "HOST:PORT")]
    pub syslog_udp: Option<SocketAddr>,
    /// Receive syslog over TCP on this address (newline-delimited or octet-counted).
    #[arg(long, value_name = "HOST:PORT")]
    pub syslog_tcp: Option<SocketAddr>,
    /// What the syslog receivers carry.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t)]
    pub syslog_format: SyslogFormat,
    /// Longest accepted log line when tailing files, in bytes; longer lines become dead letters.
    #[serde(default = "default_max_line_bytes")]
    #[arg(long, default_value_t = default_max_line_bytes())]
    pub max_line_bytes: usize,
    /// How often tailed directories are scanned, in milliseconds.
    #[serde(default = "default_tail_interval_ms")]
    #[arg(long, default_value_t = default_tail_interval_ms())]
    pub tail_interval_ms: u64,
    /// The time zone of log lines that carry none (RFC 3164 syslog, Postfix, Exim without
    /// `log_timezone`): an IANA name such as `Europe/Berlin`. Default UTC.
    #[serde(default)]
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<Zone>,
    /// Read rotated, compressed files (`.gz`, `.zst`) in tailed directories? When set they are
    /// skipped by name, each with one log line.
    #[serde(default)]
    #[arg(long)]
    pub skip_compressed_files: bool,
    /// Postfix logs no sending address: `[[sources.postfix_egress]]` entries map a transport
    /// (`service`), an `instance` or a syslog `host` to an `egress_source` and `sending_ip`.
    /// Configuration file only.
    #[serde(default)]
    #[arg(skip)]
    pub postfix_egress: Vec<PostfixEgress>,
    /// VERP return-path patterns (regular expressions with a `recipient` group, or `local`
    /// and `domain`), tried before the default `bounces+alice=example.com@...`, for bounce
    /// mail from mailboxes and uploads. Configuration file only.
    #[serde(default)]
    #[arg(skip)]
    pub verp: Vec<String>,
    /// A maildir (its `new/` is read; messages move to `cur/` once stored) of bounce,
    /// feedback-loop or DMARC report mail. Repeatable.
    #[serde(default)]
    #[arg(long = "maildir", value_name = "DIR")]
    pub maildir: Vec<PathBuf>,
    /// `[[sources.imap]]`: IMAP mailboxes of bounce, feedback-loop or DMARC report mail (host,
    /// username, password, mailbox, security, after, ...; see docs/relays.md). Configuration
    /// file only.
    #[serde(default)]
    #[arg(skip)]
    pub imap: Vec<vigil_ingest::imap::ImapConfig>,
}

impl SourcesConfig {
    /// What the line normalisers need to know of these sources.
    #[must_use]
    pub fn line_settings(&self) -> LineSettings {
        LineSettings { time_zone: self.time_zone, postfix_egress: self.postfix_egress.clone() }
    }

    /// Refuses egress entries that could match nothing.
    ///
    /// # Errors
    /// Naming the entry.
    pub fn check(&self) -> anyhow::Result<()> {
        for (i, egress) in self.postfix_egress.iter().enumerate() {
            if egress.service.is_none() && egress.instance.is_none() && egress.host.is_none() {
                anyhow::bail!(
                    "[[sources.postfix_egress]] entry {} ({}) needs a `service`, `instance` or `host` to match",
                    i + 1,
                    egress.egress_source
                );
            }
        }
        Ok(())
    }
}

fn default_max_line_bytes() -> usize {
    1024 * 1024
}
fn default_tail_interval_ms() -> u64 {
    1000
}

impl Default for SourcesConfig {
    fn default() -> Self {
        Self {
            kumomta_logs: Vec::new(),
            postfix_logs: Vec::new(),
            exim_logs: Vec::new(),
            powermta_accounting: Vec::new(),
            syslog_udp: None,
            syslog_tcp: None,
            syslog_format: SyslogFormat::default(),
            max_line_bytes: default_max_line_bytes(),
            tail_interval_ms: default_tail_interval_ms(),
            time_zone: None,
            skip_compressed_files: false,
            postfix_egress: Vec::new(),
            verp: Vec::new(),
            maildir: Vec::new(),
            imap: Vec::new(),
        }
    }
}

/// Starts every configured source on `tasks`, appending to `log`; file tails send straight to
/// Kafka through `direct` when the role has one (`vigil ingest`).
///
/// # Errors
/// When a syslog address cannot be bound.
pub async fn start(
    config: &SourcesConfig,
    log: &EventLog,
    direct: Option<&Arc<DirectShipper>>,
    trusted_hosts: &[std::net::IpAddr],
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    config.check()?;
    let tails = [
        (Format::Kumomta, &config.kumomta_logs),
        (Format::Postfix, &config.postfix_logs),
        (Format::Exim, &config.exim_logs),
        (Format::Powermta, &config.powermta_accounting),
    ];
    for (format, paths) in tails {
        for path in paths {
            let mut tail = TailConfig::new(path.clone(), format);
            tail.poll_interval = Duration::from_millis(config.tail_interval_ms.max(10));
            tail.max_line_bytes = config.max_line_bytes;
            tail.settings = config.line_settings();
            tail.skip_compressed_files = config.skip_compressed_files;
            tracing::info!(path = %path.display(), ?format, "tailing");
            let mut tailer = Tailer::new(tail, log.clone());
            if let Some(direct) = direct {
                tailer = tailer.with_direct(Arc::clone(direct));
            }
            tasks.spawn(tailer.run(shutdown.clone()).map_ok());
        }
    }
    let verp = vigil_ingest::mail::Verp::new(&config.verp).map_err(anyhow::Error::msg)?;
    for mailbox in &config.imap {
        mailbox.validate().with_context(|| format!("[[sources.imap]] {}@{}", mailbox.username, mailbox.host))?;
        tracing::info!(host = %mailbox.host, mailbox = %mailbox.mailbox, "reading a bounce mailbox over IMAP");
        let run = vigil_ingest::mailbox::run_imap(mailbox.clone(), log.clone(), verp.clone(), shutdown.clone());
        tasks.spawn(run.map_ok());
    }
    for dir in &config.maildir {
        tracing::info!(maildir = %dir.display(), "reading a bounce maildir");
        let interval = Duration::from_millis(config.tail_interval_ms.max(10));
        let run =
            vigil_ingest::mailbox::run_maildir(dir.clone(), log.clone(), verp.clone(), interval, shutdown.clone());
        tasks.spawn(run.map_ok());
    }
    if config.syslog_udp.is_some() || config.syslog_tcp.is_some() {
        let format = match config.syslog_format {
            SyslogFormat::Postfix => Format::Postfix,
            SyslogFormat::Exim => Format::Exim,
        };
        let (syslog, normaliser) = SyslogIngest::start(format, &config.line_settings(), log.clone(), shutdown.clone());
        let syslog = guard_syslog(syslog, [config.syslog_udp, config.syslog_tcp].into_iter().flatten(), trusted_hosts)?;
        tasks.spawn(async move { normaliser.await.context("syslog normaliser") });
        if let Some(addr) = config.syslog_udp {
            let socket =
                tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("binding syslog UDP {addr}"))?;
            tracing::info!(%addr, ?format, "receiving syslog over UDP");
            tasks.spawn(syslog.clone().run_udp(socket, shutdown.clone()).map_ok());
        }
        if let Some(addr) = config.syslog_tcp {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding syslog TCP {addr}"))?;
            tracing::info!(%addr, ?format, "receiving syslog over TCP");
            tasks.spawn(syslog.run_tcp(listener, shutdown.clone()).map_ok());
        }
    }
    Ok(())
}

/// A syslog receiver beyond loopback hears only the trusted hosts, and without any refuses to
/// start: a forged Postfix line suppresses a recipient as a forged hook record does. On
/// loopback every local sender is heard.
fn guard_syslog(
    syslog: SyslogIngest,
    mut bound: impl Iterator<Item = std::net::SocketAddr>,
    trusted_hosts: &[std::net::IpAddr],
) -> anyhow::Result<SyslogIngest> {
    let Some(public) = bound.find(|addr| !addr.ip().is_loopback()) else { return Ok(syslog) };
    if trusted_hosts.is_empty() {
        anyhow::bail!(
            "the syslog receiver on {public} would hear anyone who reaches it; list the hosts that forward \
             to it in --trusted-hosts ([api] trusted_hosts), or bind it to 127.0.0.1"
        );
    }
    Ok(syslog.with_allowed_peers(trusted_hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_syslog_receiver_beyond_loopback_needs_trusted_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let (syslog, _task) = SyslogIngest::start(
            Format::Postfix,
            &vigil_ingest::lines::LineSettings::default(),
            log,
            CancellationToken::new(),
        );
        let public: std::net::SocketAddr = "0.0.0.0:5514".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:5514".parse().unwrap();
        let error = guard_syslog(syslog.clone(), [public].into_iter(), &[]).unwrap_err().to_string();
        assert!(error.contains("0.0.0.0:5514") && error.contains("--trusted-hosts"), "{error}");
        assert!(guard_syslog(syslog.clone(), [public].into_iter(), &["10.0.0.5".parse().unwrap()]).is_ok());
        assert!(guard_syslog(syslog, [local].into_iter(), &[]).is_ok(), "loopback hears every local sender");
    }
}
