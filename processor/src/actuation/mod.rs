//! Rules that act: KumoMTA automation rules, rate rules and warm-up plans, folded over the
//! log into decisions.
//!
//! # Contract
//! - In: enriched events in log order, with the reputation store they were just counted in;
//!   the [`RuleSet`] in force.
//! - Out: [`Decision`]s (applied, shadow, lifted, expired), each with its evidence, and the
//!   table of actions in force ([`ActiveActions`]) that the TSA endpoints, the shaping
//!   overlay and `GET /api/v1/throttles` serve.
//! - Guarantees:
//!   - Pure and deterministic: the events' clock only (`ingested_at` as "now", as the
//!     reputation store), so replaying the log under the same rules gives the same decisions
//!     with the same ids. The state is part of [`crate::DerivedState`] and its snapshots.
//!   - A shadow rule decides exactly as it would in force; its decisions are marked and
//!     never pushed.
//!   - Every action has an expiry; ending one (expiry, lift) is itself a decision.
//!   - An operator lifts an action through the log: an `action_lifted` event
//!     ([`operator_lift`]) ends it when folded, so a replay lifts it again at the same point. A
//!     rule whose condition still holds may put it back at its next trigger, as KumoMTA's
//!     tsa-daemon would after an admin call.
//!
//! Pushing decisions to an MTA is the async edge's business ([`push`]).

pub mod active;
pub mod decision;
pub mod kumomta;
pub mod push;
pub mod rate;
pub mod tsa;
pub mod warmup;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vigil_schemas::{DeliveryEvent, EventKind, OperatorAction, SourceKind};

pub use active::ActiveActions;
pub use decision::{ActionKind, Decision, Evidence, SettingValue, Status, Target};
pub use rate::{RateRule, RateState};
pub use tsa::TsaState;
pub use warmup::{Progress, WarmupPlan, WarmupState};

use crate::ProviderMap;
use crate::reputation::ReputationStore;
use crate::reputation::store::minute_of;
use crate::shaping::{ShapingError, ShapingRules};

/// The bundled KumoMTA shaping files whose automation rules are active by default.
const BUILTIN_SHAPING: [(&str, &str); 3] = [
    ("builtin:kumomta-shipped", include_str!("../../data/rules/kumomta_shipped_shaping.toml")),
    ("builtin:kumomta-community", include_str!("../../data/rules/kumomta_community_shaping.toml")),
    ("builtin:vigil-provider-matches", include_str!("../../data/rules/vigil_provider_matches.toml")),
];
/// The bundled rules file: the default rule set.
const DEFAULT_RULES: &str = include_str!("../../data/rules/default.toml");

/// A rules file (`--rules FILE`, `[rules] file` in the config).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    /// KumoMTA shaping files, paths relative to the rules file, or `builtin:kumomta-shipped`
    /// / `builtin:kumomta-community`.
    #[serde(default)]
    shaping_files: Vec<String>,
    /// Automation rules to run in dry-run mode: origins (`file:scope#n`) or prefixes of
    /// them; `"*"` for all.
    #[serde(default)]
    shadow_shaping: Vec<String>,
    #[serde(default)]
    rate: Vec<rate::RateRuleConfig>,
    #[serde(default)]
    warmup: Vec<warmup::WarmupConfig>,
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActionRulesError {
    #[error("reading rules file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("rules file {path}: {source}")]
    Toml { path: String, source: toml::de::Error },
    /// Parses, but a rule is wrong: the text says which and why.
    #[error("rules file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(transparent)]
    Shaping(#[from] ShapingError),
}

/// Every rule in force.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub shaping: ShapingRules,
    pub rate: Vec<RateRule>,
    pub warmup: Vec<WarmupPlan>,
    /// Provider -> the domain its overrides are written under.
    overlay_domains: std::collections::BTreeMap<String, String>,
    /// Where the rules came from, for `/tsa/status` and logs.
    pub source: String,
}

impl RuleSet {
    /// The rule set shipped with Vigil (`processor/data/rules/default.toml`).
    ///
    /// # Panics
    /// Never in a released build: the bundled rules are tested.
    #[must_use]
    pub fn bundled(providers: &ProviderMap) -> Self {
        Self::parse("builtin:default", DEFAULT_RULES, None, providers).expect("bundled rules are valid")
    }

    /// Loads a rules file.
    ///
    /// # Errors
    /// When the file or a shaping file it names cannot be read, or a rule does not load; the
    /// error names the file and the rule.
    pub fn load(path: &Path, providers: &ProviderMap) -> Result<Self, ActionRulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ActionRulesError::Read { path: path.display().to_string(), source })?;
        Self::parse(&path.display().to_string(), &text, path.parent(), providers)
    }

    /// Parses a rules file's text; `name` is used in errors, relative shaping files are
    /// resolved from the working directory.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn from_toml(name: &str, text: &str, providers: &ProviderMap) -> Result<Self, ActionRulesError> {
        Self::parse(name, text, None, providers)
    }

    fn parse(name: &str, text: &str, base: Option<&Path>, providers: &ProviderMap) -> Result<Self, ActionRulesError> {
        let fail = |reason: String| ActionRulesError::Invalid { path: name.to_owned(), reason };
        let file: RulesFile =
            toml::from_str(text).map_err(|source| ActionRulesError::Toml { path: name.to_owned(), source })?;
        let mut shaping = ShapingRules::default();
        for entry in &file.shaping_files {
            if let Some((builtin, text)) = BUILTIN_SHAPING.iter().find(|(n, _)| n == entry) {
                shaping.add_toml(builtin, text)?;
            } else if entry.starts_with("builtin:") {
                return Err(fail(format!("unknown shaping file `{entry}`")));
            } else {
                let path: PathBuf = base.map_or_else(|| PathBuf::from(entry), |b| b.join(entry));
                shaping.add_toml(
                    &path.display().to_string(),
                    &std::fs::read_to_string(&path)
                        .map_err(|source| ActionRulesError::Read { path: path.display().to_string(), source })?,
                )?;
            }
        }
        shaping.set_shadow(&file.shadow_shaping);
        // Rate rules and warm-up plans share one namespace: decisions name their rule.
        let mut names = std::collections::BTreeSet::new();
        let mut compile_named = |name: &str, what: &str, compiled: Result<(), String>| {
            if !names.insert(name.to_owned()) {
                return Err(fail(format!("two rules are named `{name}`")));
            }
            compiled.map_err(|e| fail(format!("{what} `{name}`: {e}")))
        };
        let mut rate = Vec::new();
        for config in file.rate {
            let name = config.name.clone();
            compile_named(&name, "rate rule", RateRule::compile(config).map(|rule| rate.push(rule)))?;
        }
        let mut warmup = Vec::new();
        for config in file.warmup {
            let name = config.name.clone();
            compile_named(&name, "warm-up plan", WarmupPlan::compile(config).map(|plan| warmup.push(plan)))?;
        }
        let overlay_domains = providers.primary_domains().map(|(p, d)| (p.to_owned(), d.to_owned())).collect();
        Ok(Self { shaping, rate, warmup, overlay_domains, source: name.to_owned() })
    }

    fn overlay_domain(&self, provider: &str) -> Option<String> {
        self.overlay_domains.get(provider).cloned()
    }
}

/// The event that lifts `decision`'s action when folded: what an operator's request is written
/// to the log as. Its id is unique to the request (its time included), its target fields are
/// the action's, so it shows among the pair's events.
#[must_use]
pub fn operator_lift(decision: &Decision, action: OperatorAction, at: DateTime<Utc>) -> DeliveryEvent {
    let mut hasher = blake3::Hasher::new();
    for part in ["operator-lift", &action.action_key, &action.author, &action.reason, &format!("{at:?}")] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let id = hasher.finalize().to_hex()[..32].to_owned();
    let mut event = DeliveryEvent::new(id, SourceKind::Operator, EventKind::ActionLifted, at, at);
    event.source_type = Some("lift".into());
    event.egress_source.clone_from(&decision.target.egress_source);
    event.provider.clone_from(&decision.target.provider);
    event.recipient_domain.clone_from(&decision.target.domain);
    event.tenant.clone_from(&decision.target.tenant);
    event.campaign.clone_from(&decision.target.campaign);
    event.site.clone_from(&decision.target.site);
    event.operator = Some(action);
    event
}

/// All rule state: part of the derived state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActuationState {
    pub active: ActiveActions,
    pub tsa: TsaState,
    pub rate: RateState,
    pub warmup: WarmupState,
    /// The events' clock: the newest `ingested_at` seen.
    now: Option<DateTime<Utc>>,
}

impl ActuationState {
    /// Folds one event, already counted in `reputation`: time-driven rules first (the clock
    /// may have moved into a new minute or day), then the event's own matches.
    pub fn apply(
        &mut self,
        rules: &RuleSet,
        event: &DeliveryEvent,
        reputation: &ReputationStore,
        out: &mut Vec<Decision>,
    ) {
        let now = self.now.map_or(event.ingested_at, |n| n.max(event.ingested_at));
        self.now = Some(now);
        let overlay_domain = |p: &str| rules.overlay_domain(p);
        self.active.expire(now, out);
        self.rate.tick(&rules.rate, reputation, &overlay_domain, minute_of(now), &mut self.active, out);
        self.warmup.tick(&rules.warmup, reputation, &overlay_domain, now, &mut self.active, out);
        if event.kind == EventKind::ActionLifted {
            if let Some(action) = &event.operator
                && let Some(lifted) =
                    self.active.lift(&action.action_key, now, format!("lifted by {}: {}", action.author, action.reason))
            {
                out.push(lifted);
            }
            return;
        }
        if matches!(event.kind, EventKind::SuppressionRemoved | EventKind::Blocklisted | EventKind::Delisted) {
            // An operator's change to the suppression list, a block list's verdict: no
            // delivery outcome for the rules.
            return;
        }
        if !event.internal {
            self.rate.seen(&rules.rate, event.egress_source.as_deref(), event.provider.as_deref());
        }
        self.tsa.on_event(&rules.shaping, event, &mut self.active, out);
    }

    /// Frees what no rule can reach any more.
    pub fn evict(&mut self, rules: &RuleSet) {
        if let Some(now) = self.now {
            self.tsa.evict(&rules.shaping, now);
        }
    }

    /// Hashes the actions in force and the rate and warm-up state. Threshold counts are
    /// left out: when they are pruned depends on batch boundaries, not on the log, and what
    /// they lead to shows in the actions.
    pub fn digest_into(&self, hasher: &mut blake3::Hasher) {
        self.active.digest_into(hasher);
        if let Ok(bytes) = postcard::to_stdvec(&(&self.rate, &self.warmup, &self.now)) {
            hasher.update(&bytes);
        }
    }
}
