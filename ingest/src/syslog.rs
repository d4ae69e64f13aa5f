//! Syslog receivers (RFC 3164 and RFC 5424 lines, over UDP and TCP) feeding a line normaliser
//! (Postfix or Exim) into the log of record.
//!
//! All receivers of one [`SyslogIngest`] share one normaliser task, so Postfix lines for the
//! same queue id correlate whichever socket they came by. Between receivers and that task sits
//! a bounded queue: TCP readers wait when it is full (backpressure reaches the sender through
//! TCP); UDP has no backpressure, so datagrams that find the queue full are counted as dropped
//! and reported in the log, never silently. TCP accepts newline-delimited and octet-counted
//! (RFC 6587) framing.
//!
//! The receivers pass each message on whole; the line formats read its syslog header with
//! [`header`], the one parser shared by every format and by the file tails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vigil_log::{AppendBatch, AppendReceipt, EventLog};
use vigil_schemas::DeadLetter;

use crate::lines::{Format, push_into_batch};
use vigil_log::backoff::Backoff;

pub mod header;

/// Lines waiting for the normaliser.
const QUEUE_LINES: usize = 10_000;
/// Lines per log append, and the longest wait before a partial batch is appended.
const BATCH_LINES: usize = 1_000;
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// Longest syslog message accepted; longer ones become dead letters.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Counters a caller can read (and a test can check).
#[derive(Debug, Default)]
pub struct SyslogStats {
    pub received: AtomicU64,
    /// UDP datagrams that found the queue full.
    pub dropped: AtomicU64,
    /// Datagrams and connections from peers not allowed.
    pub refused: AtomicU64,
}

/// One line from a receiver, with where it came from.
#[derive(Debug)]
struct Received {
    peer: SocketAddr,
    line: Result<String, String>,
}

/// The shared side of the receivers: queue, normaliser task, counters.
#[derive(Debug, Clone)]
pub struct SyslogIngest {
    queue: mpsc::Sender<Received>,
    pub stats: Arc<SyslogStats>,
    /// When set, only these peers are heard (a receiver beyond loopback: a forged line steers
    /// the MTA as a forged hook record does); others are counted in `refused` and dropped.
    allowed: Option<Arc<[std::net::IpAddr]>>,
}

impl SyslogIngest {
    /// Starts the normaliser task for `format`, appending to `log` until `shutdown`.
    #[must_use]
    pub fn start(
        format: Format,
        settings: &crate::lines::LineSettings,
        log: EventLog,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, lines) = mpsc::channel(QUEUE_LINES);
        let task = tokio::spawn(normalise(format.normaliser_with(settings), format, lines, log, shutdown));
        (Self { queue, stats: Arc::default(), allowed: None }, task)
    }

    /// Hears only `peers` (compared canonically, so IPv4-mapped IPv6 matches its IPv4).
    #[must_use]
    pub fn with_allowed_peers(mut self, peers: &[std::net::IpAddr]) -> Self {
        self.allowed = Some(peers.iter().map(std::net::IpAddr::to_canonical).collect());
        self
    }

    fn hears(&self, peer: SocketAddr) -> bool {
        let heard = self.allowed.as_ref().is_none_or(|allowed| allowed.contains(&peer.ip().to_canonical()));
        if !heard {
            let refused = self.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // Powers of two: visible, without a log line per forged datagram.
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "syslog from a host not in trusted_hosts: dropped");
            }
        }
        heard
    }

    /// Receives datagrams on `socket` until `shutdown`; one datagram is one message.
    pub async fn run_udp(self, socket: UdpSocket, shutdown: CancellationToken) {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let mut reported_drops = 0;
        loop {
            let (n, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                got = socket.recv_from(&mut buf) => match got {
                    Ok(got) => got,
                    Err(error) => { tracing::warn!(%error, "syslog UDP receive failed"); continue; }
                },
            };
            if !self.hears(peer) {
                continue;
            }
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let line = if n > MAX_MESSAGE_BYTES {
                Err(format!("syslog datagram exceeds {MAX_MESSAGE_BYTES} bytes"))
            } else {
                String::from_utf8(buf[..n].to_vec()).map_err(|e| format!("syslog message is not valid UTF-8: {e}"))
            };
            if self.queue.try_send(Received { peer, line }).is_err() {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                crate::metrics::ingest_metrics().syslog_dropped.inc();
                // Report drops in powers of two: visible, without a log line per datagram.
                if dropped >= reported_drops * 2 || reported_drops == 0 {
                    reported_drops = dropped;
                    tracing::warn!(dropped, "syslog queue full: UDP datagrams dropped (use TCP for backpressure)");
                }
            }
        }
    }

    /// Accepts TCP connections on `listener` until `shutdown`.
    pub async fn run_tcp(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => { tracing::warn!(%error, "syslog TCP accept failed"); continue; }
                },
            };
            if !self.hears(peer) {
                continue;
            }
            let ingest = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    result = ingest.read_stream(stream, peer) => if let Err(error) = result {
                        tracing::debug!(%error, %peer, "syslog TCP connection ended");
                    },
                }
            });
        }
    }

    async fn read_stream(&self, stream: tokio::net::TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream);
        loop {
            let first = match reader.fill_buf().await? {
                [] => return Ok(()),
                bytes => bytes[0],
            };
            let line = if first.is_ascii_digit() {
                // Octet counting: "LEN SP MSG".
                let mut len_text = Vec::new();
                (&mut reader).take(12).read_until(b' ', &mut len_text).await?;
                let len: usize = std::str::from_utf8(&len_text).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
                if len == 0 || len > MAX_MESSAGE_BYTES {
                    let reason = format!("bad octet count `{}`", String::from_utf8_lossy(&len_text).trim());
                    self.send(peer, Err(reason)).await;
                    return Ok(()); // the framing is lost; the sender reconnects
                }
                let mut message = vec![0u8; len];
                reader.read_exact(&mut message).await?;
                String::from_utf8(message).map_err(|e| format!("syslog message is not valid UTF-8: {e}"))
            } else {
                let mut message = Vec::new();
                let n = (&mut reader).take(MAX_MESSAGE_BYTES as u64 + 1).read_until(b'\n', &mut message).await?;
                if n == 0 {
                    return Ok(());
                }
                if message.last() != Some(&b'\n') && n > MAX_MESSAGE_BYTES {
                    // Skip the rest of the over-long line, bounded by the reader's buffer.
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        let m = (&mut reader).take(MAX_MESSAGE_BYTES as u64).read_until(b'\n', &mut rest).await?;
                        if m == 0 || rest.last() == Some(&b'\n') {
                            break;
                        }
                    }
                    Err(format!("syslog message exceeds {MAX_MESSAGE_BYTES} bytes"))
                } else {
                    String::from_utf8(message).map_err(|e| format!("syslog message is not valid UTF-8: {e}"))
                }
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            self.send(peer, line).await;
        }
    }

    /// Waits for room in the queue: TCP backpressure.
    async fn send(&self, peer: SocketAddr, line: Result<String, String>) {
        let _ = self.queue.send(Received { peer, line }).await;
    }
}

/// The normaliser task: lines in, batches of events and dead letters out to the log.
async fn normalise(
    mut normaliser: Box<dyn crate::lines::LineNormaliser>,
    format: Format,
    mut lines: mpsc::Receiver<Received>,
    log: EventLog,
    shutdown: CancellationToken,
) {
    let source = match format {
        Format::Postfix => "postfix-syslog",
        Format::Exim => "exim-syslog",
        Format::Kumomta => "kumomta-syslog",
        Format::Powermta => "powermta-syslog",
    };
    let mut batch = AppendBatch::default();
    let mut pending = 0;
    let mut pending_bytes = 0;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => None,
            next = tokio::time::timeout(BATCH_WAIT, lines.recv()) => match next {
                Ok(None) => None,
                Ok(Some(received)) => Some(Some(received)),
                Err(_) => Some(None), // timeout: flush what is pending
            },
        };
        let done = next.is_none();
        let timed_out = matches!(next, Some(None));
        if let Some(Some(Received { peer, line })) = next {
            pending += 1;
            let location = format!("from {peer}");
            match line {
                Ok(text) => {
                    pending_bytes += text.len();
                    // A rejected line is in the batch as a dead letter.
                    let _ =
                        push_into_batch(&mut batch, normaliser.as_mut(), source, location, text.as_bytes(), Utc::now());
                }
                Err(reason) => batch.dead_letters.push(DeadLetter::new(source, Some(location), reason, b"")),
            }
        }
        if (done || timed_out || pending >= BATCH_LINES) && !batch.is_empty() {
            let full = std::mem::take(&mut batch);
            let observation = crate::metrics::BatchObservation::of(&full);
            let (records, bytes) = (std::mem::take(&mut pending), std::mem::take(&mut pending_bytes));
            match append_when_room(&log, full, &shutdown).await {
                Ok(receipt) => observation.committed(source, records as u64, bytes as u64, &receipt),
                Err(error) => tracing::error!(%error, "syslog batch not stored"),
            }
        }
        if done {
            return;
        }
    }
}

/// Appends `batch`, waiting while the log is a full shipping buffer: the senders' queue then
/// fills, and TCP senders are slowed by their socket instead of anything being dropped.
async fn append_when_room(
    log: &EventLog,
    batch: AppendBatch,
    shutdown: &CancellationToken,
) -> Result<AppendReceipt, String> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match log.append_async(&batch).await {
            Ok(receipt) => return Ok(receipt),
            Err(error) if error.is_full() && !shutdown.is_cancelled() => {
                tracing::debug!(%error, "syslog paused until the buffer drains");
                backoff.wait(shutdown).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receiver_with_allowed_peers_drops_everyone_else() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let shutdown = CancellationToken::new();
        let (syslog, _task) =
            SyslogIngest::start(Format::Postfix, &crate::lines::LineSettings::default(), log, shutdown.clone());
        // Only 10.9.9.9 is heard; this test sends from loopback.
        let syslog = syslog.with_allowed_peers(&["10.9.9.9".parse().unwrap()]);
        let stats = Arc::clone(&syslog.stats);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(syslog.run_udp(socket, shutdown.clone()));
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let line = "<22>Dec  6 19:00:01 mx1 postfix/smtp[1234]: 3F2A1: to=<victim@gmail.com>, status=bounced (550 5.1.1 no such user)";
        sender.send_to(line.as_bytes(), addr).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.refused.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the datagram was never refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.received.load(Ordering::Relaxed), 0, "nothing from an untrusted peer is received");
        shutdown.cancel();
    }
}
