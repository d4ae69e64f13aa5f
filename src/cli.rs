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
    /// Run only the processor, on Kafka: enrich `vigil.events` in a consumer group, fold
    /// `vigil.enriched` into reputation and suppressions, serve the API from them.
    Process(ProcessArgs),
    /// Rebuild the derived state (reputation, suppressions) from offset 0 of the log and print
    /// its digest; `vigil run` must not be running on the same data directory.
    Replay(ReplayArgs),
    /// Erase one person: every copy of their address, in the log, the warehouse, the derived
    /// state and ClickHouse, becomes one random pseudonym; prints what was rewritten where.
    /// `vigil run` must be stopped (while it runs, `DELETE /api/v1/admin/recipients/{address}`).
    Erase(EraseArgs),
    /// Create Vigil's ClickHouse database and tables, or bring them up to this version's schema
    /// (`schemas/clickhouse/`); safe to run again.
    Migrate(MigrateArgs),
    /// Validate configuration files (the format every role reads) without starting anything.
    CheckConfig(CheckConfigArgs),
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The files to check (see `examples/vigil.toml`).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// ClickHouse's HTTP interface.
    #[arg(long, env = "VIGIL_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    pub clickhouse_url: String,
    #[command(flatten)]
    pub login: ClickHouseLogin,
}

/// Which ClickHouse database Vigil owns, and as whom it connects.
#[derive(Debug, Clone, Args)]
pub struct ClickHouseLogin {
    /// The database Vigil owns (created if missing).
    #[arg(
        long = "clickhouse-database",
        alias = "database",
        env = "VIGIL_CLICKHOUSE_DATABASE",
        default_value = "vigil"
    )]
    pub database: String,
    #[arg(long = "clickhouse-user", alias = "user", env = "VIGIL_CLICKHOUSE_USER", default_value = "default")]
    pub user: String,
    #[arg(
        long = "clickhouse-password",
        alias = "password",
        env = "VIGIL_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub password: String,
}

impl ClickHouseLogin {
    #[must_use]
    pub fn config(&self, url: &str) -> vigil_warehouse::clickhouse::ClickHouseConfig {
        vigil_warehouse::clickhouse::ClickHouseConfig {
            url: url.to_owned(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// The configuration (TOML, the format of every role); see `examples/vigil.toml` and
    /// `examples/process.toml`.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The data directory of `vigil run`.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = "./vigil-data")]
    pub data_dir: PathBuf,
    /// Stop before this log offset (default: the log's head).
    #[arg(long, value_name = "OFFSET")]
    pub until: Option<u64>,
    /// The bounce-classifier rule files `vigil run` uses (its `--rules`), so events classify
    /// the same.
    #[arg(long = "bounce-rules", value_name = "FILE")]
    pub bounce_rules: Vec<PathBuf>,
    /// The action rules `vigil run` uses (its `--action-rules`); default: the bundled set.
    #[arg(long = "action-rules", value_name = "FILE")]
    pub action_rules: Option<PathBuf>,
    /// The alert rules `vigil run` uses (its `--alert-rules`); default: the bundled set.
    #[arg(long = "alert-rules", value_name = "FILE")]
    pub alert_rules: Option<PathBuf>,
    /// What-if: replay under this action rules file (see `processor/data/rules/default.toml`)
    /// and print the decisions that would differ from those recorded.
    #[arg(long = "what-if-rules", value_name = "FILE")]
    pub what_if_rules: Option<PathBuf>,
    /// Deprecated name of `--what-if-rules`.
    #[arg(long = "rules", value_name = "FILE", hide = true, conflicts_with = "what_if_rules")]
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The configuration of `vigil run`: its `data_dir`, `[privacy]` (to find the address
    /// under its pseudonym) and `[clickhouse]` are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory of `vigil run` (default: the configuration's).
    #[arg(long, env = "VIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The person's address.
    #[arg(long, value_name = "ADDRESS")]
    pub recipient: String,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The configuration (TOML, the format of every role); see `examples/vigil.toml` and
    /// `examples/ingest.toml`.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Extra bounce-classifier rule files (KumoMTA format, TOML or JSON), checked before the
    /// bundled ones. Repeatable; first match wins.
    #[arg(long = "bounce-rules", value_name = "FILE")]
    pub bounce_rules: Vec<PathBuf>,
    /// Deprecated name of `--bounce-rules`.
    #[arg(long = "rules", value_name = "FILE", hide = true)]
    pub rules: Vec<PathBuf>,
    /// Decode these bounce / complaint / auto-reply emails instead of reading stdin: one JSON
    /// object per reported recipient.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub eml: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (the format of every role, `examples/vigil.toml`); the flags
    /// below override its keys, and `VIGIL_*` variables sit between the two.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the log of record, the warehouse and checkpoints live.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = "./vigil-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP listener (ingest and API). Port 0 picks a free port; the bound
    /// address is printed on stdout.
    #[arg(long, env = "VIGIL_LISTEN", default_value = "127.0.0.1:8008")]
    pub listen: SocketAddr,
    /// The sources: log files to tail, syslog receivers.
    #[command(flatten)]
    pub sources: crate::sources::SourcesConfig,
    /// Extra bounce-classifier rule files (KumoMTA format, TOML or JSON), loaded before the
    /// bundled ones so they win. Repeatable; first file wins.
    #[arg(long = "bounce-rules", value_name = "FILE")]
    pub bounce_rules: Vec<PathBuf>,
    /// Deprecated name of `--bounce-rules`.
    #[arg(long = "rules", value_name = "FILE", hide = true)]
    pub rules: Vec<PathBuf>,
    /// The rules that act (KumoMTA automation rules, rate rules, warm-up plans); default:
    /// the bundled set, `processor/data/rules/default.toml`.
    #[arg(long = "action-rules", value_name = "FILE")]
    pub action_rules: Option<PathBuf>,
    /// The alert rules (`[[alert]]` entries, see docs/alerting.md); default: the bundled set,
    /// `processor/data/rules/alerts.toml`. Reloaded on SIGHUP.
    #[arg(long = "alert-rules", value_name = "FILE")]
    pub alert_rules: Option<PathBuf>,
    /// Push suspensions and bounces to this kumod (`http://host:8000`) through its admin
    /// API, and bump its config epoch when the shaping overlay changes. Leave it out when kumod
    /// subscribes to Vigil's TSA endpoints instead.
    #[arg(long, env = "VIGIL_KUMOD_URL", value_name = "URL")]
    pub kumod_url: Option<String>,
    /// Deliver every decision to this URL, HMAC-signed with `--webhook-secret`.
    #[arg(long, env = "VIGIL_WEBHOOK_URL", value_name = "URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    #[arg(long, env = "VIGIL_WEBHOOK_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Require `Authorization: Bearer TOKEN` on the TSA endpoints and the actions API; it also
    /// admits ingest (kumod already holds it).
    #[arg(long, env = "VIGIL_API_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Bearer tokens with roles (TOML: `[[tokens]] name, token, role` with role ingest, viewer,
    /// operator or admin; see `examples/api-tokens.toml`). Without them the API is open and the
    /// listener must be on loopback; `ingest` tokens let an MTA's log hook in.
    #[arg(long, env = "VIGIL_API_TOKENS", value_name = "FILE")]
    pub api_tokens: Option<PathBuf>,
    /// Client addresses allowed on ingest, the TSA endpoints and the actions API without a
    /// token (kumod's hosts, as tsa-daemon's `trusted_hosts`); comma-separated.
    #[arg(long, env = "VIGIL_TRUSTED_HOSTS", value_name = "IP,...", value_delimiter = ',')]
    pub trusted_hosts: Vec<std::net::IpAddr>,
    /// Also store the analytics in this ClickHouse (`http://host:8123`) and answer the API
    /// from it: the schema is migrated at start, and the log is inserted as it grows. Without
    /// it the API answers from the Parquet files under the data directory.
    #[arg(long, env = "VIGIL_CLICKHOUSE_URL", value_name = "URL")]
    pub clickhouse_url: Option<String>,
    #[command(flatten)]
    pub clickhouse: ClickHouseLogin,
    /// PEM certificates to trust besides the platform's (which honour `SSL_CERT_FILE`), for
    /// https targets behind a private CA: kumod, webhooks, ClickHouse.
    #[arg(long, env = "VIGIL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Also feed realistic synthetic KumoMTA traffic, so there is something to look at.
    #[arg(long)]
    pub demo: bool,
    /// Largest accepted HTTP ingest body, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most ingest requests handled at once; more wait for a turn (up to 20 s, under kumod's
    /// 60 s HTTP timeout) and are answered 503 only after that.
    #[arg(long, default_value_t = DEFAULT_MAX_INGEST_IN_FLIGHT)]
    pub max_ingest_in_flight: usize,
    /// `[[actuation.webhooks]]` of the configuration file, beside `--webhook-url`.
    #[arg(skip)]
    pub webhooks: Vec<vigil_processor::actuation::push::WebhookConfig>,
    /// `[[api.tokens]]` of the configuration file, beside `--api-tokens`.
    #[arg(skip)]
    pub tokens: Vec<vigil_query::auth::TokenConfig>,
    /// `[relays.<name>]` of the configuration file: relay webhook receivers.
    #[arg(skip)]
    pub relays: vigil_ingest::relay::http::RelaysConfig,
    /// `[[suppressions.push]]` of the configuration file: listmonk, Mautic, webhook targets.
    #[arg(skip)]
    pub suppression_targets: Vec<vigil_processor::suppression_push::SuppressionTarget>,
    /// `[[alerting.receivers]]` of the configuration file: where alerts are delivered.
    #[arg(skip)]
    pub alert_receivers: Vec<vigil_processor::alert_push::ReceiverConfig>,
    /// `[processor] snapshot_seconds` of the configuration file.
    #[arg(skip = 60u64)]
    pub snapshot_seconds: u64,
    /// `[processor.complaint_join]` of the configuration file.
    #[arg(skip)]
    pub complaint_join: vigil_processor::complaints::JoinSettings,
    /// `[retention]` of the configuration file.
    #[arg(skip)]
    pub retention: vigil_processor::retention::RetentionSettings,
    /// `[privacy]` of the configuration file.
    #[arg(skip)]
    pub privacy: crate::config::PrivacySection,
    /// `[dns]` of the configuration file.
    #[arg(skip)]
    pub dns: vigil_ingest::dns::DnsSettings,
}

/// The deprecated `--rules` of `vigil run` and `vigil classify`: its files, with a warning,
/// after those of `--bounce-rules`.
pub fn bounce_rules(bounce_rules: &[PathBuf], deprecated: &[PathBuf]) -> Vec<PathBuf> {
    if !deprecated.is_empty() {
        eprintln!("warning: --rules is deprecated here; use --bounce-rules (it means the same)");
    }
    bounce_rules.iter().chain(deprecated).cloned().collect()
}

impl RunArgs {
    /// Layers the configuration file (`--config`) and `VIGIL_*` variables under the flags:
    /// a key of the file applies unless its flag was given on the command line or through
    /// the flag's variable.
    ///
    /// # Errors
    /// When the file is not a valid configuration.
    pub fn with_config_file(mut self, matches: &clap::ArgMatches) -> anyhow::Result<Self> {
        use crate::config::{Config, Role};
        use clap::parser::ValueSource;
        let given =
            |id: &str| matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        self.bounce_rules = bounce_rules(&self.bounce_rules, &self.rules);
        let config = match &self.config {
            Some(path) => Config::read(path)?,
            None => Config::default(),
        }
        .with_environment(|v| std::env::var(v).ok())?;
        if self.config.is_some() {
            config.note_ignored(Role::Run);
        }
        macro_rules! layer {
            ($id:literal, $target:expr, $value:expr) => {
                if !given($id) {
                    $target = $value;
                }
            };
        }
        layer!("data_dir", self.data_dir, config.data_dir);
        if let Some(listen) = config.listen {
            layer!("listen", self.listen, listen);
        }
        let sources = config.sources;
        layer!("kumomta_logs", self.sources.kumomta_logs, sources.kumomta_logs);
        layer!("postfix_logs", self.sources.postfix_logs, sources.postfix_logs);
        layer!("exim_logs", self.sources.exim_logs, sources.exim_logs);
        layer!("powermta_accounting", self.sources.powermta_accounting, sources.powermta_accounting);
        layer!("syslog_udp", self.sources.syslog_udp, sources.syslog_udp);
        layer!("syslog_tcp", self.sources.syslog_tcp, sources.syslog_tcp);
        layer!("syslog_format", self.sources.syslog_format, sources.syslog_format);
        layer!("max_line_bytes", self.sources.max_line_bytes, sources.max_line_bytes);
        layer!("tail_interval_ms", self.sources.tail_interval_ms, sources.tail_interval_ms);
        layer!("time_zone", self.sources.time_zone, sources.time_zone);
        layer!("skip_compressed_files", self.sources.skip_compressed_files, sources.skip_compressed_files);
        self.sources.postfix_egress = sources.postfix_egress;
        self.sources.verp = sources.verp;
        layer!("maildir", self.sources.maildir, sources.maildir);
        self.sources.imap = sources.imap;
        if !given("bounce_rules") && !given("rules") {
            self.bounce_rules = config.classifier.bounce_rules;
        }
        layer!("action_rules", self.action_rules, config.actuation.rules);
        layer!("alert_rules", self.alert_rules, config.alerting.rules);
        layer!("kumod_url", self.kumod_url, config.actuation.kumod_url);
        layer!("api_token", self.api_token, config.actuation.api_token);
        layer!("trusted_hosts", self.trusted_hosts, config.api.trusted_hosts);
        layer!("api_tokens", self.api_tokens, config.api.tokens_file);
        layer!("max_body_bytes", self.max_body_bytes, config.api.max_body_bytes);
        layer!("max_ingest_in_flight", self.max_ingest_in_flight, config.api.max_ingest_in_flight);
        layer!("ca_file", self.ca_file, config.tls.ca_file);
        if let Some(clickhouse) = config.clickhouse {
            layer!("clickhouse_url", self.clickhouse_url, Some(clickhouse.url));
            layer!("database", self.clickhouse.database, clickhouse.database);
            layer!("user", self.clickhouse.user, clickhouse.user);
            layer!("password", self.clickhouse.password, clickhouse.password);
        }
        self.webhooks = config.actuation.webhooks;
        self.relays = config.relays;
        self.suppression_targets = config.suppressions.push;
        self.alert_receivers = config.alerting.receivers;
        self.tokens = config.api.tokens;
        self.snapshot_seconds = config.processor.snapshot_seconds;
        self.complaint_join = config.processor.complaint_join;
        self.retention = config.retention;
        self.privacy = config.privacy;
        self.dns = config.dns;
        Ok(self)
    }
}

/// The HTTP ingest bounds' defaults, for the flags and for `vigil ingest`'s configuration.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_MAX_INGEST_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone, Copy, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    #[default]
    Postfix,
    Exim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// KumoMTA JSONL log records.
    Kumomta,
    /// Postfix maillog (syslog lines; queue ids correlated).
    Postfix,
    /// Exim main log.
    Exim,
    /// PowerMTA accounting CSV (header line first).
    Powermta,
    /// Amazon SES: an SNS notification, an EventBridge event or a bare SES record.
    Ses,
    /// SendGrid Event Webhook: a JSON array of events.
    Sendgrid,
    /// Mailgun webhook (JSON): `signature` and `event-data`.
    Mailgun,
    /// Postmark webhook: one record.
    Postmark,
    /// SparkPost webhook: a JSON array of `msys` events.
    Sparkpost,
    /// Brevo transactional webhook: one event or an array.
    Brevo,
    /// Mailjet event API: one event or an array.
    Mailjet,
    /// Postal webhook: `event`, `timestamp`, `uuid`, `payload`.
    Postal,
    /// Elastic Email notifications: one query string (or URL) per line.
    Elasticemail,
    /// A bounce email (RFC 3464 DSN or a non-standard bounce), or an mbox of them.
    Dsn,
    /// A feedback report email (RFC 5965 ARF), or an mbox of them.
    Arf,
    /// A DMARC aggregate report: XML, gzip or zip; prints the report.
    Dmarc,
}

impl InputFormat {
    /// The relay whose webhook this format is, if it is one.
    #[must_use]
    pub fn relay(self) -> Option<vigil_ingest::relay::Provider> {
        use vigil_ingest::relay::Provider;
        Some(match self {
            Self::Ses => Provider::Ses,
            Self::Sendgrid => Provider::Sendgrid,
            Self::Mailgun => Provider::Mailgun,
            Self::Postmark => Provider::Postmark,
            Self::Sparkpost => Provider::Sparkpost,
            Self::Brevo => Provider::Brevo,
            Self::Mailjet => Provider::Mailjet,
            Self::Postal => Provider::Postal,
            Self::Elasticemail => Provider::Elasticemail,
            _ => return None,
        })
    }
}

#[derive(Debug, Args)]
pub struct ParseArgs {
    /// The input format.
    #[arg(long = "from", value_enum)]
    pub format: InputFormat,
    /// A file (a log: plain or zstd-compressed; a webhook body, as saved or as the whole HTTP
    /// request; an email or mbox; a DMARC report), or `-` for stdin.
    pub input: PathBuf,
    /// Include the raw source record in each event.
    #[arg(long)]
    pub raw: bool,
}
