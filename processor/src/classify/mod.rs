//! Bounce classification: a compiled, immutable rule engine.
//!
//! Rule sources are bounce-classifier files in KumoMTA's format (`[rules] Class = ["regex",
//! ...]`, TOML, or JSON when the path does not end in `.toml`), loaded unchanged so a KumoMTA
//! user's own files keep working. All files are compiled into one [`RegexSet`]; the lowest
//! pattern index that matches wins, so file order comes first, then the order of classes and
//! patterns within a file: KumoMTA's semantics.
//!
//! The default order (see [`ClassifierBuilder::with_bundled_rules`]) is: the user's files,
//! Vigil's first rules (`rules/vigil_first.toml`: replies whose stage or whose limit decides),
//! Vigil's own text rules (`rules/vigil.toml`: providers and MTAs), KumoMTA's community file,
//! KumoMTA's IANA file, Vigil's fallback rules (`rules/vigil_fallback.toml`: the SMTP stage). When no pattern matches: the class the source itself reported
//! (KumoMTA ran the user's rule files), then the enhanced status code alone ([`enhanced`]),
//! then `TransientFailure` for any other transient reply, then `Uncategorized`. Every result names the rule that decided. The disposition
//! (`permanent`) comes from the reply code and is kept apart from the class.
//!
//! The input is read by [`response::parse_response`], which finds the reply code and enhanced
//! code wherever they are and puts them first, so anchored rules apply to DSN diagnostics and
//! MTA prose too. Results are cached per input line (bounded); the engine itself is immutable,
//! so hot reload is: build a new one, swap the `Arc`.

pub mod enhanced;
pub mod relay;
pub mod response;

use std::path::Path;
use std::sync::Arc;

use regex::RegexSet;
use serde::Deserialize;
use vigil_schemas::BounceClass;

pub use response::{EnhancedStatus, Response, parse_response};

/// KumoMTA's shipped rule files, in the order KumoMTA's community file recommends.
pub const KUMOMTA_RULE_FILES: &[(&str, &str)] = &[
    ("kumomta/community_bounces.toml", include_str!("../../rules/kumomta/community_bounces.toml")),
    ("kumomta/bounce_classifier_iana.toml", include_str!("../../rules/kumomta/bounce_classifier_iana.toml")),
];

/// Vigil's first rules: replies whose class depends on their stage or on whose limit they
/// name, loaded before the phrase rules so that they win over a phrase of another class.
pub const VIGIL_FIRST_RULE_FILE: (&str, &str) = ("vigil_first.toml", include_str!("../../rules/vigil_first.toml"));
/// Vigil's own rules: texts of the major providers and MTAs, loaded before KumoMTA's files.
pub const VIGIL_RULE_FILE: (&str, &str) = ("vigil.toml", include_str!("../../rules/vigil.toml"));
/// Vigil's fallback rules (the SMTP stage a reply came at), loaded after KumoMTA's files.
pub const VIGIL_FALLBACK_RULE_FILE: (&str, &str) =
    ("vigil_fallback.toml", include_str!("../../rules/vigil_fallback.toml"));

/// Longest input considered, in bytes: response lines carry their meaning early, and a bound
/// keeps a 1 MB line from costing more than a normal one.
const MAX_INPUT_BYTES: usize = 2048;
/// Inputs at most this long are cached.
const MAX_CACHED_BYTES: usize = 512;
/// Cached inputs.
const CACHE_ENTRIES: usize = 65_536;

/// A rule file or pattern that cannot be used. Names the file and the pattern at fault.
#[derive(Debug, thiserror::Error)]
pub enum BounceRulesError {
    #[error("reading rule file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("rule file {origin} is not a bounce-classifier file ([rules] Class = [\"regex\", ...]): {reason}")]
    Format { origin: String, reason: String },
    #[error("rule file {origin}: class {class}: pattern {pattern:?} does not compile: {reason}")]
    Pattern { origin: String, class: String, pattern: String, reason: String },
    #[error("compiling the rule set: {0}")]
    Compile(#[from] regex::Error),
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    rules: toml::map::Map<String, toml::Value>,
}

#[derive(Debug, Clone)]
struct Rule {
    class: BounceClass,
    /// `file:Class#index`, what `classifier_rule` says.
    id: Arc<str>,
}

/// Collects rule sources in load order, then compiles them.
#[derive(Debug)]
pub struct ClassifierBuilder {
    patterns: Vec<String>,
    rules: Vec<Rule>,
    enhanced_fallback: bool,
    cache_entries: usize,
}

impl Default for ClassifierBuilder {
    fn default() -> Self {
        Self { patterns: Vec::new(), rules: Vec::new(), enhanced_fallback: true, cache_entries: CACHE_ENTRIES }
    }
}

impl ClassifierBuilder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Vigil's rules, then KumoMTA's two shipped files, then Vigil's fallback rules.
    ///
    /// # Panics
    /// Never in a released build: the bundled files are tested.
    #[must_use]
    pub fn with_bundled_rules(mut self) -> Self {
        for (origin, text) in [VIGIL_FIRST_RULE_FILE, VIGIL_RULE_FILE] {
            self.add_toml(origin, text).expect("bundled rule files are valid");
        }
        let mut with_kumomta = self.with_kumomta_rules();
        let (origin, text) = VIGIL_FALLBACK_RULE_FILE;
        with_kumomta.add_toml(origin, text).expect("bundled rule files are valid");
        with_kumomta
    }

    /// KumoMTA's two shipped files only, in KumoMTA's recommended order.
    ///
    /// # Panics
    /// Never in a released build: the bundled files are tested.
    #[must_use]
    pub fn with_kumomta_rules(mut self) -> Self {
        for (origin, text) in KUMOMTA_RULE_FILES {
            self.add_toml(origin, text).expect("bundled rule files are valid");
        }
        self
    }

    /// Turns off every fallback after the rule files (source class, enhanced code), so results
    /// are exactly KumoMTA's first-match semantics.
    #[must_use]
    pub fn rules_only(mut self) -> Self {
        self.enhanced_fallback = false;
        self
    }

    /// Sets how many distinct inputs the result cache holds (0 turns it off).
    #[must_use]
    pub fn cache_entries(mut self, entries: usize) -> Self {
        self.cache_entries = entries;
        self
    }

    /// Adds a rule file from disk: TOML when the path ends in `.toml`, JSON otherwise.
    ///
    /// # Errors
    /// When the file cannot be read or is not a bounce-classifier file.
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self, BounceRulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| BounceRulesError::Read { path: path.display().to_string(), source })?;
        let origin = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        if path.extension().is_some_and(|e| e == "toml") {
            self.add_toml(&origin, &text)
        } else {
            self.add_json(&origin, &text)
        }
    }

    /// Adds rules from TOML text; `origin` names them in errors and in `classifier_rule`.
    ///
    /// # Errors
    /// When the text is not a bounce-classifier file or a pattern does not compile.
    pub fn add_toml(&mut self, origin: &str, text: &str) -> Result<&mut Self, BounceRulesError> {
        let file: RuleFile = toml::from_str(text)
            .map_err(|e| BounceRulesError::Format { origin: origin.to_owned(), reason: e.to_string() })?;
        self.add_rules(origin, file)
    }

    /// Adds rules from JSON text (`{"rules": {"Class": ["regex", ...]}}`).
    ///
    /// # Errors
    /// When the text is not a bounce-classifier file or a pattern does not compile.
    pub fn add_json(&mut self, origin: &str, text: &str) -> Result<&mut Self, BounceRulesError> {
        // toml's order-preserving map keeps the file's class order, which decides ties.
        let file: RuleFile = serde_json::from_str(text)
            .map_err(|e| BounceRulesError::Format { origin: origin.to_owned(), reason: e.to_string() })?;
        self.add_rules(origin, file)
    }

    fn add_rules(&mut self, origin: &str, file: RuleFile) -> Result<&mut Self, BounceRulesError> {
        for (class, patterns) in file.rules {
            let format_err = |reason: String| BounceRulesError::Format { origin: origin.to_owned(), reason };
            let patterns =
                patterns.as_array().ok_or_else(|| format_err(format!("class {class} must be a list of patterns")))?;
            for (index, pattern) in patterns.iter().enumerate() {
                let pattern = pattern
                    .as_str()
                    .ok_or_else(|| format_err(format!("class {class}: pattern {index} is not a string")))?;
                // Compile alone first so the error names the one pattern at fault.
                regex::Regex::new(pattern).map_err(|e| BounceRulesError::Pattern {
                    origin: origin.to_owned(),
                    class: class.clone(),
                    pattern: pattern.to_owned(),
                    reason: e.to_string(),
                })?;
                self.patterns.push(pattern.to_owned());
                self.rules.push(Rule {
                    class: BounceClass::from_label(&class),
                    id: format!("{origin}:{class}#{index}").into(),
                });
            }
        }
        Ok(self)
    }

    /// Compiles every pattern into one set.
    ///
    /// # Errors
    /// When the combined set exceeds the regex engine's size limits.
    pub fn build(self) -> Result<Classifier, BounceRulesError> {
        let set = regex::RegexSetBuilder::new(&self.patterns).size_limit(64 << 20).dfa_size_limit(64 << 20).build()?;
        Ok(Classifier {
            set,
            rules: self.rules,
            enhanced_fallback: self.enhanced_fallback,
            cache: (self.cache_entries > 0).then(|| quick_cache::sync::Cache::new(self.cache_entries)),
        })
    }
}

/// What the classifier decided and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: BounceClass,
    /// Which rule decided: `file:Class#index`, `source:<label>`, `enhanced-status:<code>`,
    /// `reply-code:transient`, or `none`.
    pub rule: Arc<str>,
    /// Permanent (5xx) or transient (4xx), when the response says; separate from the class.
    pub permanent: Option<bool>,
    pub code: Option<u16>,
    pub enhanced: Option<EnhancedStatus>,
}

impl Classification {
    /// Whether only the codes decided (the enhanced status, the reply code, or nothing), not a
    /// wording rule or the source: a caller with more text to go on may try that instead.
    #[must_use]
    pub fn decided_by_codes_only(&self) -> bool {
        let rule = &*self.rule;
        rule == NO_RULE || rule.starts_with(ENHANCED_RULE_PREFIX) || rule.starts_with(REPLY_CODE_RULE_PREFIX)
    }
}

/// The `rule` of a classification nothing decided.
const NO_RULE: &str = "none";
/// The `rule` prefix of a classification by the enhanced status code alone.
const ENHANCED_RULE_PREFIX: &str = "enhanced-status:";
/// The `rule` prefix of a classification by the reply code alone.
const REPLY_CODE_RULE_PREFIX: &str = "reply-code:";

/// The cached part of a classification: what the rules and the parser made of one input.
#[derive(Debug, Clone, Copy)]
struct Matched {
    rule: Option<u32>,
    code: Option<u16>,
    enhanced: Option<EnhancedStatus>,
}

/// An immutable, compiled classifier. Share it behind an `Arc`; to reload, build a new one and
/// swap it in.
pub struct Classifier {
    set: RegexSet,
    rules: Vec<Rule>,
    enhanced_fallback: bool,
    cache: Option<quick_cache::sync::Cache<String, Matched>>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("rules", &self.rules.len()).finish_non_exhaustive()
    }
}

fn bounded(input: &str) -> &str {
    if input.len() <= MAX_INPUT_BYTES {
        return input;
    }
    let mut end = MAX_INPUT_BYTES;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    &input[..end]
}

impl Classifier {
    /// Vigil's bundled rules and every fallback.
    #[must_use]
    pub fn bundled() -> Self {
        ClassifierBuilder::new().with_bundled_rules().build().expect("bundled rules compile")
    }

    /// How many patterns are loaded.
    #[must_use]
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    fn matched(&self, input: &str, known_enhanced: Option<EnhancedStatus>) -> Matched {
        let input = bounded(input);
        let cache = self.cache.as_ref().filter(|_| known_enhanced.is_none() && input.len() <= MAX_CACHED_BYTES);
        if let Some(hit) = cache.and_then(|c| c.get(input)) {
            return hit;
        }
        let response = parse_response(input, known_enhanced);
        // Rules-only mode is KumoMTA's semantics exactly: the line as given.
        let line = if self.enhanced_fallback { response.line.as_str() } else { input };
        let rule = self.set.matches(line).iter().next().map(|i| i as u32);
        let matched = Matched { rule, code: response.code, enhanced: response.enhanced };
        if let Some(cache) = cache {
            cache.insert(input.to_owned(), matched);
        }
        matched
    }

    /// Classifies a response line (`550 5.1.1 text`, `smtp; 550-5.1.1 ...`, or prose with the
    /// reply inside). `known_enhanced` is a status known from elsewhere (a DSN `Status:`);
    /// `source_class` is what the source itself said.
    #[must_use]
    pub fn classify(
        &self,
        input: &str,
        known_enhanced: Option<EnhancedStatus>,
        source_class: Option<&str>,
    ) -> Classification {
        let m = self.matched(input, known_enhanced);
        let permanent = response::disposition(m.code, m.enhanced);
        let decided =
            |class, rule: Arc<str>| Classification { class, rule, permanent, code: m.code, enhanced: m.enhanced };
        if let Some(index) = m.rule {
            let rule = &self.rules[index as usize];
            return decided(rule.class.clone(), Arc::clone(&rule.id));
        }
        if self.enhanced_fallback {
            if let Some(label) = source_class.filter(|l| !l.is_empty() && *l != "Uncategorized") {
                return decided(BounceClass::from_label(label), format!("source:{label}").into());
            }
            if let Some(status) = m.enhanced
                && let Some(class) = enhanced::class_of(status)
            {
                return decided(class, format!("{ENHANCED_RULE_PREFIX}{status}").into());
            }
            // A transient reply that says nothing more (`451 Could not load DRD`) is still a
            // transient failure: the sender will retry it.
            if permanent == Some(false) {
                return decided(BounceClass::TransientFailure, format!("{REPLY_CODE_RULE_PREFIX}transient").into());
            }
        }
        decided(BounceClass::Uncategorized, NO_RULE.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kumomta_files_load_every_pattern() {
        // 109 community patterns + 26 IANA patterns, as KUMOMTA.md §5 counts them.
        let kumomta = ClassifierBuilder::new().with_kumomta_rules().build().unwrap();
        assert_eq!(kumomta.rule_count(), 109 + 26);
        assert!(Classifier::bundled().rule_count() > kumomta.rule_count());
    }

    #[test]
    fn falls_back_to_the_source_then_the_enhanced_code() {
        let c = ClassifierBuilder::new().with_kumomta_rules().build().unwrap();
        let got = c.classify("599 something odd", None, Some("SpamBlock"));
        assert_eq!((got.class, &*got.rule), (BounceClass::SpamBlock, "source:SpamBlock"));
        let got = c.classify("554 5.1.1 gone", None, Some("Uncategorized"));
        assert_eq!((got.class, &*got.rule), (BounceClass::InvalidRecipient, "enhanced-status:5.1.1"));
        assert_eq!(got.permanent, Some(true));
        let got = c.classify("250 ok", None, None);
        assert_eq!((got.class, &*got.rule), (BounceClass::Uncategorized, "none"));
    }

    #[test]
    fn json_rule_files_keep_class_order_and_user_labels() {
        let mut b = ClassifierBuilder::new();
        b.add_json("mine.json", r#"{"rules": {"Greylisted": ["greylist"], "SpamBlock": ["grey"]}}"#).unwrap();
        let c = b.build().unwrap();
        let got = c.classify("451 4.7.1 greylisted, try later", None, None);
        assert_eq!(got.class, BounceClass::UserDefined("Greylisted".into()));
        assert_eq!(&*got.rule, "mine.json:Greylisted#0");
        assert_eq!(got.permanent, Some(false));
    }

    #[test]
    fn a_bad_pattern_is_named_in_the_error() {
        let mut b = ClassifierBuilder::new();
        let err = b.add_toml("bad.toml", "[rules]\nSpamBlock = [\"(unclosed\"]\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.toml") && text.contains("SpamBlock") && text.contains("(unclosed"), "{text}");
    }

    #[test]
    fn cached_and_uncached_answers_agree_and_huge_inputs_are_bounded() {
        let c = Classifier::bundled();
        let line = "550 5.1.1 <a@b>: Recipient address rejected: User unknown in virtual mailbox table";
        let first = c.classify(line, None, None);
        assert_eq!(c.classify(line, None, None), first);
        let huge = format!("550 5.1.1 {}", "x".repeat(1 << 20));
        assert_eq!(c.classify(&huge, None, None).class, BounceClass::InvalidRecipient);
    }
}
