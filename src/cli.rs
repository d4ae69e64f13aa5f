//! The command line. Scripts depend on these names; change them only additively.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Deliverability intelligence for MTAs: ingest logs, classify bounces, score reputation."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process on the embedded log and warehouse: ingest, processor, API.
    Run(RunArgs),
    /// Normalise log records and print canonical events as JSON lines (the server's normaliser).
    Parse(ParseArgs),
    /// Classify SMTP responses read from stdin, one JSON object per line.
    Classify(ClassifyArgs),
    /// Run only ingest: the configured sources into an on-disk buffer, shipped to Kafka.
    Ingest(IngestArgs),
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The ingest configuration (TOML); see `examples/ingest.toml`.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Extra bounce-classifier rule files (KumoMTA format, TOML or JSON), checked before the
    /// bundled ones. Repeatable; first match wins.
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Decode these bounce / complaint / auto-reply emails instead of reading stdin: one JSON
    /// object per reported recipient.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub eml: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where the log of record, the warehouse and checkpoints live.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = "./vigil-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP listener (ingest and API). Port 0 picks a free port; the bound
    /// address is printed on stdout.
    #[arg(long, env = "VIGIL_LISTEN", default_value = "127.0.0.1:8008")]
    pub listen: SocketAddr,
    /// A KumoMTA log directory to tail (`log_dir` of `kumo.configure_local_logs`). Repeatable.
    #[arg(long = "kumomta-logs", value_name = "DIR")]
    pub kumomta_logs: Vec<PathBuf>,
    /// A Postfix maillog file, or a directory of them, to tail. Repeatable.
    #[arg(long = "postfix-log", value_name = "PATH")]
    pub postfix_logs: Vec<PathBuf>,
    /// An Exim main log file, or a directory of them, to tail. Repeatable.
    #[arg(long = "exim-log", value_name = "PATH")]
    pub exim_logs: Vec<PathBuf>,
    /// A PowerMTA accounting CSV file, or a directory of them, to tail. Repeatable.
    #[arg(long = "powermta-acct", value_name = "PATH")]
    pub powermta_accounting: Vec<PathBuf>,
    /// Receive syslog over UDP on this address (Postfix or Exim lines, see --syslog-format).
    #[arg(long, value_name = "HOST:PORT")]
    pub syslog_udp: Option<SocketAddr>,
    /// Receive syslog over TCP on this address (newline-delimited or octet-counted).
    #[arg(long, value_name = "HOST:PORT")]
    pub syslog_tcp: Option<SocketAddr>,
    /// What the syslog receivers carry.
    #[arg(long, value_enum, default_value = "postfix")]
    pub syslog_format: SyslogFormat,
    /// Extra bounce-classifier rule files (KumoMTA format, TOML or JSON), loaded before the
    /// bundled ones so they win. Repeatable; first file wins.
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// Also feed realistic synthetic KumoMTA traffic, so there is something to look at.
    #[arg(long)]
    pub demo: bool,
    /// Largest accepted HTTP ingest body, in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most ingest requests handled at once; more get a 503 (KumoMTA retries them).
    #[arg(long, default_value_t = 32)]
    pub max_ingest_in_flight: usize,
    /// Longest accepted log line when tailing files, in bytes; longer lines become dead letters.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_line_bytes: usize,
    /// How often tailed directories are scanned, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub tail_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    #[default]
    Postfix,
    Exim,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InputFormat {
    /// KumoMTA JSONL log records.
    Kumomta,
    /// Postfix maillog (syslog lines; queue ids correlated).
    Postfix,
    /// Exim main log.
    Exim,
    /// PowerMTA accounting CSV (header line first).
    Powermta,
}

#[derive(Debug, Args)]
pub struct ParseArgs {
    /// The input format.
    #[arg(long = "from", value_enum)]
    pub format: InputFormat,
    /// A file (plain or zstd-compressed JSONL), or `-` for stdin.
    pub input: PathBuf,
    /// Include the raw source record in each event.
    #[arg(long)]
    pub raw: bool,
}
