//! KumoMTA traffic-shaping automation rules, read from `shaping.toml` files unchanged.
//!
//! This is the loader only: what the files say, checked and compiled. Acting on the rules
//! (thresholds over time, actions and their expiry) is the actuation work that builds on it.
//!
//! A shaping file is a TOML table whose keys are `default`, `provider` (a table of named
//! providers, each with a `match` list) and destination names (a domain, or a site when the
//! domain rolls up by MX). Any of them may hold `[[... .automation]]` rules:
//!
//! ```toml
//! [[provider."yahoo".automation]]
//! regex = "\\[TSS04\\]"            # or an array; fancy-regex syntax, as KumoMTA
//! action = "Suspend"               # or {SetConfig={name=..., value=...}}, or an array of both
//! trigger = {Threshold="2/hr"}     # default "Immediate"
//! duration = "2 hours"
//! match_internal = false           # default: skip "KumoMTA internal: ..." responses
//! ```
//!
//! Everything else in the file (connection limits, TLS settings, ...) is the MTA's business
//! and is left alone. A rule that does not load is an error naming the file, the scope and
//! the rule's position, so a typo never silently disables a rule.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Where a rule applies, in TSA's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleScope {
    /// `[["default".automation]]`: every destination.
    Default,
    /// `[[provider."name".automation]]`, with the `match` list of the rule's own file (the
    /// list that applies is merged over all files: [`ShapingRules::provider_matchers`]).
    Provider { name: String, matchers: Vec<ProviderMatch> },
    /// `[["domain".automation]]`. With `mx_rollup` (KumoMTA's default) the block is about the
    /// domain's MX site, so it also covers every domain sharing that site.
    Destination { name: String, mx_rollup: bool },
}

/// One entry of a provider's `match` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ProviderMatch {
    #[serde(rename = "MXSuffix")]
    MxSuffix(String),
    DomainSuffix(String),
    HostName(String),
}

/// A value of `SetConfig`: whatever TOML scalar the file gave.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Integer(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

/// What a rule does when it triggers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Action {
    Suspend,
    SetConfig { name: String, value: ConfigValue },
    SetDomainConfig { name: String, value: ConfigValue },
    SuspendTenant,
    SuspendCampaign,
    Bounce,
    BounceTenant,
    BounceCampaign,
}

/// When a rule triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// On the first matching response.
    Immediate,
    /// When `count` matching responses were seen; the rate's period is `per`. (KumoMTA counts
    /// over the rule's `duration`, not over `per`; the actuator decides which to follow.)
    Threshold { count: u64, per: Duration },
}

/// One automation rule, compiled.
#[derive(Debug, Clone)]
pub struct AutomationRule {
    pub scope: RuleScope,
    /// The patterns as written, for display and evidence.
    pub patterns: Vec<String>,
    regexes: Vec<fancy_regex::Regex>,
    pub actions: Vec<Action>,
    pub trigger: Trigger,
    pub duration: Duration,
    pub match_internal: bool,
    /// `file:scope#n`, so every decision can name its rule.
    pub origin: String,
    /// A hash of what the rule says (not where it is written), stable across reloads: the
    /// key threshold counts and actions are kept under.
    pub hash: String,
    /// Dry run: decisions are recorded, nothing is pushed to the MTA.
    pub shadow: bool,
    /// Per action, a hash of the rule and the action (computed once at load).
    action_hashes: Vec<String>,
}

impl AutomationRule {
    /// True when the response line (`"<code> <enhanced> <text>"`) matches any pattern. Our
    /// own MTA's responses (`internal`) only match rules with `match_internal`.
    #[must_use]
    pub fn matches(&self, line: &str, internal: bool) -> bool {
        if internal && !self.match_internal {
            return false;
        }
        // A pattern that fails at run time (backtracking limit) is treated as no match.
        self.regexes.iter().any(|re| re.is_match(line).unwrap_or(false))
    }

    /// The patterns as TSA writes them in reasons: the pattern, or `(a,b,...)`.
    #[must_use]
    pub fn pattern_text(&self) -> String {
        match self.patterns.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(",")),
        }
    }

    /// A hash of the rule and its `index`th action: TSA keeps each action of a rule apart.
    #[must_use]
    pub fn action_hash_at(&self, index: usize) -> &str {
        &self.action_hashes[index]
    }

    /// Whether the rule's effects roll up to the MX site (KumoMTA's `was_rollup`): rules of
    /// `default` and of rollup destinations do, provider and `mx_rollup = false` ones do not.
    #[must_use]
    pub fn rolls_up(&self) -> bool {
        match &self.scope {
            RuleScope::Default => true,
            RuleScope::Provider { .. } => false,
            RuleScope::Destination { mx_rollup, .. } => *mx_rollup,
        }
    }
}

/// A shaping file that cannot be used, with where.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct ShapingError {
    pub origin: String,
    #[source]
    pub problem: ShapingProblem,
}

/// What is wrong with a shaping file or rule.
#[derive(Debug, thiserror::Error)]
pub enum ShapingProblem {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("pattern `{pattern}`: {source}")]
    Pattern { pattern: String, source: Box<fancy_regex::Error> },
    /// A value that parses but means nothing: the text says which and why.
    #[error("{0}")]
    Invalid(String),
}

impl ShapingError {
    fn at(origin: impl Into<String>, problem: impl Into<ShapingProblem>) -> Self {
        Self { origin: origin.into(), problem: problem.into() }
    }
}

impl From<String> for ShapingProblem {
    fn from(reason: String) -> Self {
        Self::Invalid(reason)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
enum RawTrigger {
    Immediate,
    Threshold(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    regex: OneOrMany<String>,
    action: OneOrMany<Action>,
    trigger: Option<RawTrigger>,
    duration: String,
    #[serde(default)]
    match_internal: bool,
}

/// Every automation rule of the given shaping files, in file order.
#[derive(Debug, Clone, Default)]
pub struct ShapingRules {
    rules: Vec<AutomationRule>,
    rollup_domains: std::collections::BTreeSet<String>,
    /// Provider name -> its `match` entries from every file: KumoMTA merges provider blocks
    /// of the same name across shaping files, so a file may hold a provider's automation
    /// and another its `match`.
    provider_matchers: std::collections::BTreeMap<String, Vec<ProviderMatch>>,
    /// Built on first use, once every file is added.
    prefilter: std::sync::OnceLock<Prefilter>,
}

/// One pass over a response line that says which rules could match it: every pattern the
/// `regex` crate can compile in one `RegexSet` (most lines match none, and that is one DFA
/// scan instead of a hundred regex runs), plus the rules using fancy-regex features
/// (look-around, backreferences), which are always tried.
#[derive(Debug, Clone)]
struct Prefilter {
    set: regex::RegexSet,
    /// The rule of each pattern of `set`.
    rule_of: Vec<usize>,
    always: Vec<usize>,
}

impl Prefilter {
    fn build(rules: &[AutomationRule]) -> Self {
        let mut patterns = Vec::new();
        let mut rule_of = Vec::new();
        let mut always = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            if rule.patterns.iter().all(|p| regex::Regex::new(p).is_ok()) {
                patterns.extend(rule.patterns.iter().cloned());
                rule_of.extend(std::iter::repeat_n(index, rule.patterns.len()));
            } else {
                always.push(index);
            }
        }
        let set = regex::RegexSet::new(&patterns).unwrap_or_else(|_| {
            // Too big for one set: fall back to trying every rule.
            always = (0..rules.len()).collect();
            rule_of.clear();
            regex::RegexSet::empty()
        });
        Self { set, rule_of, always }
    }
}

impl ShapingRules {
    /// Loads `files` in order.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, or a rule does not load.
    pub fn load(files: &[&Path]) -> Result<Self, ShapingError> {
        let mut rules = Self::default();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|e| ShapingError::at(file.display().to_string(), e))?;
            rules.add_toml(&file.display().to_string(), &text)?;
        }
        Ok(rules)
    }

    /// Adds the rules of one file's text; `name` is used in errors and origins.
    ///
    /// # Errors
    /// When the TOML does not parse or a rule does not load.
    pub fn add_toml(&mut self, name: &str, text: &str) -> Result<(), ShapingError> {
        let table: toml::Table = toml::from_str(text).map_err(|e: toml::de::Error| ShapingError::at(name, e))?;
        for (key, value) in table {
            if key == "provider" {
                let Some(providers) = value.as_table() else {
                    return Err(ShapingError::at(format!("{name}:provider"), "must be a table".to_owned()));
                };
                for (provider, entry) in providers {
                    let origin = format!("{name}:provider.{provider}");
                    let matchers: Vec<ProviderMatch> = match entry.get("match") {
                        Some(list) => list
                            .clone()
                            .try_into()
                            .map_err(|e: toml::de::Error| ShapingError::at(format!("{origin}.match"), e))?,
                        None => Vec::new(),
                    };
                    self.provider_matchers.entry(provider.clone()).or_default().extend(matchers.iter().cloned());
                    let scope = RuleScope::Provider { name: provider.clone(), matchers };
                    self.add_rules(&origin, scope, entry.get("automation"))?;
                }
            } else {
                let scope = if key == "default" {
                    RuleScope::Default
                } else {
                    let mx_rollup = value.get("mx_rollup").and_then(toml::Value::as_bool).unwrap_or(true);
                    RuleScope::Destination { name: key.clone(), mx_rollup }
                };
                self.add_rules(&format!("{name}:{key}"), scope, value.get("automation"))?;
            }
        }
        Ok(())
    }

    fn add_rules(
        &mut self,
        origin: &str,
        scope: RuleScope,
        automation: Option<&toml::Value>,
    ) -> Result<(), ShapingError> {
        let Some(automation) = automation else { return Ok(()) };
        let Some(list) = automation.as_array() else {
            return Err(ShapingError::at(origin, "`automation` must be an array of tables".to_owned()));
        };
        for (n, raw) in list.iter().enumerate() {
            let origin = format!("{origin}#{n}");
            let fail = |problem: ShapingProblem| ShapingError { origin: origin.clone(), problem };
            let raw: RawRule = raw.clone().try_into().map_err(|e: toml::de::Error| fail(e.into()))?;
            let patterns = raw.regex.into_vec();
            let regexes = patterns
                .iter()
                .map(|p| {
                    fancy_regex::Regex::new(p)
                        .map_err(|e| fail(ShapingProblem::Pattern { pattern: p.clone(), source: Box::new(e) }))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let duration = parse_duration(&raw.duration).map_err(|e| fail(e.into()))?;
            let trigger = match raw.trigger {
                None | Some(RawTrigger::Immediate) => Trigger::Immediate,
                Some(RawTrigger::Threshold(rate)) => parse_threshold(&rate).map_err(|e| fail(e.into()))?,
            };
            let actions = raw.action.into_vec();
            if actions.is_empty() {
                return Err(fail(ShapingProblem::Invalid("`action` is empty".into())));
            }
            let hash = {
                let mut hasher = blake3::Hasher::new();
                let content =
                    format!("{scope:?}|{patterns:?}|{actions:?}|{trigger:?}|{duration:?}|{}", raw.match_internal);
                hasher.update(content.as_bytes());
                hasher.finalize().to_hex().to_string()
            };
            if let RuleScope::Destination { name, mx_rollup: true } = &scope {
                self.rollup_domains.insert(name.clone());
            }
            self.prefilter = std::sync::OnceLock::new();
            let action_hashes = actions
                .iter()
                .map(|action| {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(hash.as_bytes());
                    hasher.update(format!("{action:?}").as_bytes());
                    hasher.finalize().to_hex().to_string()
                })
                .collect();
            self.rules.push(AutomationRule {
                action_hashes,
                shadow: false,
                hash,
                scope: scope.clone(),
                patterns,
                regexes,
                actions,
                trigger,
                duration,
                match_internal: raw.match_internal,
                origin,
            });
        }
        Ok(())
    }

    #[must_use]
    pub fn rules(&self) -> &[AutomationRule] {
        &self.rules
    }

    /// Puts the rules whose origin starts with one of `origins` (or all, for `"*"`) in
    /// dry-run mode. Returns how many.
    pub fn set_shadow(&mut self, origins: &[String]) -> usize {
        let mut n = 0;
        for rule in &mut self.rules {
            if origins.iter().any(|o| o == "*" || rule.origin.starts_with(o.as_str())) {
                rule.shadow = true;
                n += 1;
            }
        }
        n
    }

    /// Indices of the rules whose patterns may match `line`, in file order (a superset: check
    /// each with [`AutomationRule::matches`]).
    pub fn candidates(&self, line: &str, out: &mut Vec<usize>) {
        out.clear();
        let prefilter = self.prefilter.get_or_init(|| Prefilter::build(&self.rules));
        if prefilter.set.is_match(line) {
            out.extend(prefilter.set.matches(line).iter().map(|p| prefilter.rule_of[p]));
        }
        out.extend(&prefilter.always);
        out.sort_unstable();
        out.dedup();
    }

    /// A provider's `match` entries, merged over every file loaded.
    #[must_use]
    pub fn provider_matchers(&self, provider: &str) -> &[ProviderMatch] {
        self.provider_matchers.get(provider).map_or(&[], Vec::as_slice)
    }

    /// Whether `domain` names a destination block that rolls up to its MX site.
    #[must_use]
    pub fn is_rollup_domain(&self, domain: &str) -> bool {
        self.rollup_domains.contains(domain)
    }
}

/// `"2 hours"`, `"90m"`, `"30 minutes"`, `"1 hour"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("duration `{text}`: {e}"))
}

/// `"5/hr"`, `"10/minute"`, `"100/day"`.
fn parse_threshold(text: &str) -> Result<Trigger, String> {
    let bad = |why: &str| format!("threshold `{text}` {why}; write it as N/period, e.g. 5/hr");
    let (count, period) = text.split_once('/').ok_or_else(|| bad("has no `/`"))?;
    let count: u64 = count.trim().parse().map_err(|_| bad("does not start with a count"))?;
    let per = match period.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hr" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => return Err(bad(&format!("has an unknown period `{other}`"))),
    };
    if count == 0 {
        return Err(bad("has a count of 0"));
    }
    Ok(Trigger::Threshold { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_thresholds_parse_as_kumomta_writes_them() {
        for (text, secs) in [("1 hour", 3600), ("2 hours", 7200), ("30m", 1800), ("90m", 5400), ("30 minutes", 1800)] {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        assert_eq!(parse_threshold("5/hr").unwrap(), Trigger::Threshold { count: 5, per: Duration::from_secs(3600) });
        assert!(parse_threshold("5 per hour").unwrap_err().contains("N/period"));
        assert!(parse_threshold("0/hr").unwrap_err().contains("count of 0"));
    }

    #[test]
    fn a_bad_rule_is_named_in_the_error() {
        let mut rules = ShapingRules::default();
        let text = "[[provider.\"yahoo\".automation]]\nregex = \"x\"\naction = \"Suspend\"\nduration = \"2 hours\"\n\n\
                    [[provider.\"yahoo\".automation]]\nregex = \"(\"\naction = \"Suspend\"\nduration = \"1 hour\"\n";
        let err = rules.add_toml("mine.toml", text).unwrap_err().to_string();
        assert!(err.starts_with("mine.toml:provider.yahoo#1: pattern `(`"), "{err}");
        let typo = "[[\"default\".automation]]\nregex = \"x\"\naction = \"Suspnd\"\nduration = \"1 hour\"\n";
        assert!(ShapingRules::default().add_toml("t.toml", typo).unwrap_err().to_string().contains("t.toml:default#0"));
        let unknown = "[[\"default\".automation]]\nregex = \"x\"\naction = \"Suspend\"\nduration = \"1 hour\"\nduraton = \"2h\"\n";
        assert!(ShapingRules::default().add_toml("t.toml", unknown).unwrap_err().to_string().contains("duraton"));
    }

    #[test]
    fn internal_responses_match_only_rules_that_ask_for_them() {
        let mut rules = ShapingRules::default();
        let text = "[[\"default\".automation]]\nregex = \"^(?!.*KumoMTA internal).*RL000010\"\naction = \"Suspend\"\nduration = \"1 hour\"\n";
        rules.add_toml("t.toml", text).unwrap();
        let rule = &rules.rules()[0];
        assert!(rule.matches("421 4.7.0 RL000010 rate limited", false), "lookahead patterns work");
        assert!(!rule.matches("421 4.7.0 RL000010 rate limited", true));
        assert!(!rule.matches("KumoMTA internal: RL000010", false));
    }
}
