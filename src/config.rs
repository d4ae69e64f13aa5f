//! One configuration file for every role (`vigil run|ingest|process --config FILE`,
//! `vigil check-config FILE`); `examples/vigil.toml` shows every key with its default.
//!
//! Layers, later ones win: built-in defaults, the file, `VIGIL_*` environment variables
//! ([`ENVIRONMENT`]), then flags (`vigil run`'s flags are shorthands for keys of the file).
//! Unknown keys are errors that name the key, the file and the line. A role reads the sections
//! it runs and says once which present sections it ignores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use vigil_log::kafka::KafkaConfig;
use vigil_processor::actuation::push::WebhookConfig;
use vigil_query::auth::TokenConfig;
use vigil_warehouse::clickhouse::ClickHouseConfig;

use crate::sources::SourcesConfig;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the role keeps its state: the log of record, the warehouse and the derived
    /// state's snapshot (`vigil run`), the shipping buffer and checkpoints (`vigil ingest`),
    /// the snapshot and its Kafka positions (`vigil process`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The HTTP listener: ingest hook, API, TSA surface, `/metrics`, `/healthz`. Default
    /// `127.0.0.1:8008` for `vigil run`, `127.0.0.1:8009` for `vigil process`, none for
    /// `vigil ingest`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub sources: SourcesConfig,
    #[serde(default)]
    pub classifier: ClassifierSection,
    #[serde(default)]
    pub processor: ProcessorSection,
    #[serde(default)]
    pub actuation: ActuationSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub buffer: BufferSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub clickhouse: Option<ClickHouseConfig>,
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// `[relays.<name>]`: relay webhook receivers (ses, sendgrid, mailgun, postmark,
    /// sparkpost, brevo, mailjet, postal, elasticemail), each with its key or credential.
    #[serde(default)]
    pub relays: vigil_ingest::relay::http::RelaysConfig,
    /// `[suppressions]`: where new suppressions are pushed (`[[suppressions.push]]`).
    #[serde(default)]
    pub suppressions: SuppressionsSection,
    /// `[alerting]`: the alert rules file and where alerts are delivered.
    #[serde(default)]
    pub alerting: AlertingSection,
    /// `[retention]`: what `vigil run` deletes, and when (defaults: the log 7 days or 20 GiB,
    /// the warehouse 400 days, dead letters 30 days).
    #[serde(default)]
    pub retention: vigil_processor::retention::RetentionSettings,
    /// `[privacy]`: what is kept of recipients' addresses.
    #[serde(default)]
    pub privacy: PrivacySection,
    /// `[dns]`: the MX lookups of recipient domains (`vigil_ingest::dns`).
    #[serde(default)]
    pub dns: vigil_ingest::dns::DnsSettings,
}

/// `[privacy]`: `recipients = "keep" | "hash" | "domain"`; `hash` takes its key from
/// `key_file` or the `VIGIL_PRIVACY_KEY` variable (never from the file itself, never logged).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    #[serde(default)]
    pub recipients: RecipientMode,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientMode {
    #[default]
    Keep,
    Hash,
    Domain,
}

impl PrivacySection {
    /// The mode with its key.
    ///
    /// # Errors
    /// `hash` without a key, or with one too short to be a secret.
    pub fn resolve(&self) -> anyhow::Result<vigil_log::privacy::RecipientPrivacy> {
        use vigil_log::privacy::RecipientPrivacy;
        Ok(match self.recipients {
            RecipientMode::Keep => RecipientPrivacy::Keep,
            RecipientMode::Domain => RecipientPrivacy::Domain,
            RecipientMode::Hash => {
                let key = match (&self.key_file, std::env::var("VIGIL_PRIVACY_KEY")) {
                    (Some(path), _) => std::fs::read(path)
                        .map_err(|e| anyhow::anyhow!("[privacy] key_file {}: {e}", path.display()))?,
                    (None, Ok(key)) => key.into_bytes(),
                    (None, Err(_)) => anyhow::bail!(
                        "[privacy] recipients = \"hash\" needs a key: key_file, or the VIGIL_PRIVACY_KEY variable"
                    ),
                };
                let key: Vec<u8> = key.trim_ascii().to_vec();
                if key.len() < 16 {
                    anyhow::bail!(
                        "[privacy] the hash key must be at least 16 bytes (it is what keeps the pseudonyms secret)"
                    );
                }
                RecipientPrivacy::Hash(key.into())
            }
        })
    }
}

/// `[alerting]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingSection {
    /// A file of `[[alert]]` rules replacing the bundled set (`processor/data/rules/alerts.toml`);
    /// reloaded on SIGHUP.
    pub rules: Option<PathBuf>,
    /// `[[alerting.receivers]]`: Slack, PagerDuty, Teams, a signed webhook or Alertmanager, each
    /// with its matchers and grouping.
    #[serde(default)]
    pub receivers: Vec<vigil_processor::alert_push::ReceiverConfig>,
}

/// `[suppressions]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionsSection {
    /// listmonk, Mautic or webhook targets, each pushed from its own cursor.
    #[serde(default)]
    pub push: Vec<vigil_processor::suppression_push::SuppressionTarget>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            listen: None,
            sources: SourcesConfig::default(),
            classifier: ClassifierSection::default(),
            processor: ProcessorSection::default(),
            actuation: ActuationSection::default(),
            api: ApiSection::default(),
            buffer: BufferSection::default(),
            tls: TlsSection::default(),
            clickhouse: None,
            kafka: None,
            relays: vigil_ingest::relay::http::RelaysConfig::default(),
            suppressions: SuppressionsSection::default(),
            alerting: AlertingSection::default(),
            retention: vigil_processor::retention::RetentionSettings::default(),
            privacy: PrivacySection::default(),
            dns: vigil_ingest::dns::DnsSettings::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./vigil-data")
}

/// `[tls]`: how outbound connections (kumod, webhooks, ClickHouse) trust servers. The
/// platform's roots are always trusted (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured);
/// Kafka's TLS is set by librdkafka's `ssl.*` properties under `[kafka.properties]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificates to trust besides the platform's: a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl TlsSection {
    /// Builds the process's trust store; call once at start.
    ///
    /// # Errors
    /// When the CA file is unusable.
    pub fn init(&self) -> anyhow::Result<()> {
        vigil_log::tls::init(self.ca_file.as_deref()).context("in [tls] ca_file")
    }
}

/// `[classifier]`: the bounce classifier.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSection {
    /// Extra rule files in KumoMTA's format (TOML or JSON), checked before the bundled ones;
    /// first file wins.
    #[serde(default)]
    pub bounce_rules: Vec<PathBuf>,
}

/// `[processor]`: the fold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSection {
    /// Seconds between snapshots of the derived state (a clean stop writes one too).
    #[serde(default = "default_snapshot_seconds")]
    pub snapshot_seconds: u64,
    /// `[processor.complaint_join]`: how far back a complaint without a trace is joined to
    /// the latest delivery to its complainer, and how many recipients are remembered.
    #[serde(default)]
    pub complaint_join: vigil_processor::complaints::JoinSettings,
}

impl Default for ProcessorSection {
    fn default() -> Self {
        Self { snapshot_seconds: default_snapshot_seconds(), complaint_join: Default::default() }
    }
}

fn default_snapshot_seconds() -> u64 {
    60
}

/// `[actuation]`: the rules that act and where their decisions go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActuationSection {
    /// The action rules file (KumoMTA automation rules, rate rules, warm-up plans); default:
    /// the bundled set.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// Bearer token for the TSA endpoints and the actions API (and ingest: kumod holds it).
    #[serde(default)]
    pub api_token: Option<String>,
    /// kumod's HTTP listener, to push suspensions and bounces to.
    #[serde(default)]
    pub kumod_url: Option<String>,
    /// Signed webhooks: `[[actuation.webhooks]] name, url, secret`.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[api]`: who may use the HTTP API, and the ingest hook's bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// `[[api.tokens]] name, token, role` (viewer, operator, admin). Without tokens the API is
    /// open and the listener must be on loopback.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A file of more `[[tokens]]` (`examples/api-tokens.toml`), kept apart from the rest.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Client addresses admitted without a token on ingest routes, the TSA endpoints and the
    /// actions API (the MTA's hosts, as tsa-daemon's `trusted_hosts`).
    #[serde(default)]
    pub trusted_hosts: Vec<std::net::IpAddr>,
    /// Largest accepted HTTP ingest body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most ingest requests handled at once; more wait for a turn (up to 20 s) and are
    /// answered 503 only after that.
    #[serde(default = "default_max_in_flight")]
    pub max_ingest_in_flight: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            tokens_file: None,
            trusted_hosts: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            max_ingest_in_flight: default_max_in_flight(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    crate::cli::DEFAULT_MAX_BODY_BYTES
}
fn default_max_in_flight() -> usize {
    crate::cli::DEFAULT_MAX_INGEST_IN_FLIGHT
}

/// `[buffer]`: `vigil ingest`'s on-disk buffer in front of Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSection {
    /// Events kept on disk while the broker has not acknowledged them; beyond this, tails
    /// pause and the HTTP hook answers 503.
    #[serde(default = "default_max_events")]
    pub max_events: u64,
}

impl Default for BufferSection {
    fn default() -> Self {
        Self { max_events: default_max_events() }
    }
}

fn default_max_events() -> u64 {
    1_000_000
}

/// The roles that read a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Run,
    Ingest,
    Process,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Run => "vigil run",
            Self::Ingest => "vigil ingest",
            Self::Process => "vigil process",
        }
    }

    /// The sections this role does not read.
    fn ignores(self) -> &'static [&'static str] {
        match self {
            Self::Run => &["kafka", "buffer"],
            // The buffer deletes what the broker acknowledged; [retention] is for the log of record.
            Self::Ingest => {
                &["classifier", "processor", "actuation", "clickhouse", "suppressions", "alerting", "retention", "dns"]
            }
            // Suppressions are pushed, and alerts delivered, by `vigil run` only, for now; this
            // role ingests nothing, so it has no addresses to rewrite.
            Self::Process => &["sources", "buffer", "relays", "suppressions", "alert receivers", "privacy", "dns"],
        }
    }
}

/// The environment variables every role reads, and the key each sets.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("VIGIL_DATA_DIR", "data_dir"),
    ("VIGIL_LISTEN", "listen"),
    ("VIGIL_KAFKA_BROKERS", "kafka.brokers"),
    ("VIGIL_CLICKHOUSE_URL", "clickhouse.url"),
    ("VIGIL_CLICKHOUSE_DATABASE", "clickhouse.database"),
    ("VIGIL_CLICKHOUSE_USER", "clickhouse.user"),
    ("VIGIL_CLICKHOUSE_PASSWORD", "clickhouse.password"),
    ("VIGIL_KUMOD_URL", "actuation.kumod_url"),
    ("VIGIL_API_TOKEN", "actuation.api_token"),
    ("VIGIL_API_TOKENS", "api.tokens_file"),
    ("VIGIL_CA_FILE", "tls.ca_file"),
    ("VIGIL_DNS", "dns.enabled"),
];

impl Config {
    /// Reads `path`: every error names the file, and a misspelt or misplaced key its line.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid configuration.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the configuration {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the configuration {}", path.display()))
    }

    /// Parses the text of a configuration file.
    ///
    /// # Errors
    /// When it is not valid TOML or holds a key no section has.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.sources.check()?;
        Ok(config)
    }

    /// Applies the `VIGIL_*` variables of [`ENVIRONMENT`] that are set.
    ///
    /// # Errors
    /// Naming the variable whose value does not fit its key.
    pub fn with_environment(self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut config = self;
        for (variable, key) in ENVIRONMENT {
            let Some(value) = lookup(variable).filter(|v| !v.is_empty()) else { continue };
            config.set(key, value).with_context(|| format!("in the environment variable {variable} (sets {key})"))?;
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, value: String) -> anyhow::Result<()> {
        match key {
            "data_dir" => self.data_dir = value.into(),
            "listen" => self.listen = Some(value.parse().context("expected HOST:PORT")?),
            "kafka.brokers" => match &mut self.kafka {
                Some(kafka) => kafka.brokers = value,
                None => self.kafka = Some(KafkaConfig::new(value)),
            },
            "clickhouse.url" => match &mut self.clickhouse {
                Some(clickhouse) => clickhouse.url = value,
                None => self.clickhouse = Some(ClickHouseConfig::new(value)),
            },
            "clickhouse.database" | "clickhouse.user" | "clickhouse.password" => {
                // The login of a ClickHouse configured elsewhere (the file, VIGIL_CLICKHOUSE_URL,
                // or `vigil run --clickhouse-url`, whose flags read the same variables): alone,
                // it configures nothing.
                let Some(clickhouse) = self.clickhouse.as_mut() else { return Ok(()) };
                match key {
                    "clickhouse.database" => clickhouse.database = value,
                    "clickhouse.user" => clickhouse.user = value,
                    _ => clickhouse.password = value,
                }
            }
            "actuation.kumod_url" => self.actuation.kumod_url = Some(value),
            "actuation.api_token" => self.actuation.api_token = Some(value),
            "api.tokens_file" => self.api.tokens_file = Some(value.into()),
            "tls.ca_file" => self.tls.ca_file = Some(value.into()),
            "dns.enabled" => self.dns.enabled = value.parse().context("expected true or false")?,
            other => anyhow::bail!("no key {other}"),
        }
        Ok(())
    }

    /// Logs once, at start, the sections `role` does not read but the file sets.
    pub fn note_ignored(&self, role: Role) {
        let present = |section: &str| match section {
            "kafka" => self.kafka.is_some(),
            "clickhouse" => self.clickhouse.is_some(),
            "buffer" => self.buffer.max_events != default_max_events(),
            "classifier" => !self.classifier.bounce_rules.is_empty(),
            "processor" => {
                self.processor.snapshot_seconds != default_snapshot_seconds()
                    || self.processor.complaint_join != vigil_processor::complaints::JoinSettings::default()
            }
            "suppressions" => !self.suppressions.push.is_empty(),
            "alerting" => self.alerting.rules.is_some() || !self.alerting.receivers.is_empty(),
            "alert receivers" => !self.alerting.receivers.is_empty(),
            "relays" => !self.relays.is_empty(),
            "retention" => self.retention != vigil_processor::retention::RetentionSettings::default(),
            "privacy" => self.privacy.recipients != RecipientMode::Keep,
            "dns" => self.dns != vigil_ingest::dns::DnsSettings::default(),
            "actuation" => {
                self.actuation.rules.is_some()
                    || self.actuation.kumod_url.is_some()
                    || !self.actuation.webhooks.is_empty()
            }
            "sources" => {
                let s = &self.sources;
                !(s.kumomta_logs.is_empty()
                    && s.postfix_logs.is_empty()
                    && s.exim_logs.is_empty()
                    && s.powermta_accounting.is_empty()
                    && s.syslog_udp.is_none()
                    && s.syslog_tcp.is_none())
            }
            _ => false,
        };
        let ignored: Vec<&str> = role.ignores().iter().copied().filter(|s| present(s)).collect();
        if !ignored.is_empty() {
            tracing::info!(role = role.name(), sections = ?ignored, "these configuration sections are for other roles; ignored");
        }
    }

    /// Checks what only makes sense once built: each relay receiver can verify its requests,
    /// each suppression target has its credentials, each VERP pattern compiles, each IMAP
    /// mailbox is usable.
    ///
    /// # Errors
    /// The first that is not, in words.
    pub fn check_inputs(&self) -> anyhow::Result<()> {
        for (provider, receiver) in &self.relays {
            vigil_ingest::relay::verify::Verifier::new(*provider, receiver.clone()).map_err(anyhow::Error::msg)?;
        }
        for target in &self.suppressions.push {
            target.check().map_err(anyhow::Error::msg)?;
        }
        crate::run::load_alert_rules(self.alerting.rules.as_deref())?;
        vigil_processor::alert_push::check_receivers(&self.alerting.receivers).map_err(anyhow::Error::msg)?;
        vigil_ingest::mail::Verp::new(&self.sources.verp).map_err(anyhow::Error::msg)?;
        for mailbox in &self.sources.imap {
            mailbox.validate().with_context(|| format!("[[sources.imap]] {}@{}", mailbox.username, mailbox.host))?;
        }
        Ok(())
    }

    /// The `[kafka]` section, which the Kafka roles need.
    ///
    /// # Errors
    /// When it is missing.
    pub fn kafka(&self, role: Role) -> anyhow::Result<&KafkaConfig> {
        self.kafka.as_ref().with_context(|| format!("{} needs a [kafka] section with `brokers`", role.name()))
    }
}

/// `vigil check-config FILE...`: reads each file as every role would, starts nothing.
/// A file of API tokens (`[[tokens]]` only, `[api] tokens_file`) is checked as one.
///
/// # Errors
/// The first file that is not valid, with the reason.
pub fn check(files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading the configuration {}", file.display()))?;
        let tokens_only = text
            .parse::<toml::Table>()
            .is_ok_and(|table| table.len() == 1 && table.get("tokens").is_some_and(toml::Value::is_array));
        if tokens_only {
            crate::run::load_tokens(&[], Some(file))?;
            println!("{}: ok (API tokens)", file.display());
            continue;
        }
        let config = Config::read(file)?.with_environment(|v| std::env::var(v).ok())?;
        vigil_log::tls::build(config.tls.ca_file.as_deref())
            .with_context(|| format!("in the configuration {}: [tls] ca_file", file.display()))?;
        config.check_inputs().with_context(|| format!("in the configuration {}", file.display()))?;
        println!("{}: ok", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_key_is_refused_with_its_name_and_line() {
        let text = "data_dir = \"x\"\n\n[kafka]\nbrokers = \"b:9092\"\ngroup = \"typo\"\n";
        let error = format!("{:#}", Config::parse(text).unwrap_err());
        assert!(error.contains("group") && error.contains("line 5"), "{error}");
    }

    #[test]
    fn the_environment_wins_over_the_file_and_names_itself_when_wrong() {
        let config = Config::parse("listen = \"127.0.0.1:1\"\n").unwrap();
        let env = |name: &str| match name {
            "VIGIL_LISTEN" => Some("127.0.0.1:2".to_owned()),
            "VIGIL_KAFKA_BROKERS" => Some("k:9092".to_owned()),
            _ => None,
        };
        let config = config.with_environment(env).unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:2".parse().unwrap()));
        assert_eq!(config.kafka.unwrap().brokers, "k:9092");
        let bad = Config::default().with_environment(|n| (n == "VIGIL_LISTEN").then(|| "nowhere".to_owned()));
        assert!(format!("{:#}", bad.unwrap_err()).contains("VIGIL_LISTEN"));
        // A login without a server configures nothing (and is no error: `vigil run
        // --clickhouse-url` reads it through its flags).
        let login_only =
            Config::default().with_environment(|n| (n == "VIGIL_CLICKHOUSE_PASSWORD").then(|| "x".to_owned())).unwrap();
        assert!(login_only.clickhouse.is_none());
        let both = Config::default()
            .with_environment(|n| match n {
                "VIGIL_CLICKHOUSE_URL" => Some("http://ch:8123".to_owned()),
                "VIGIL_CLICKHOUSE_USER" => Some("vigil".to_owned()),
                _ => None,
            })
            .unwrap();
        assert_eq!(both.clickhouse.unwrap().user, "vigil");
    }

    #[test]
    fn every_example_is_a_valid_configuration() {
        for file in ["examples/vigil.toml", "examples/ingest.toml", "examples/process.toml", "examples/relays.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            Config::read(&path).unwrap().check_inputs().unwrap();
        }
    }
}
