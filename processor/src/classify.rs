//! Bounce classification: a compiled, immutable rule engine.
//!
//! Rule sources are KumoMTA bounce-classifier files loaded unchanged (`[rules] Class =
//! ["regex", ...]`, TOML, or JSON when the path does not end in `.toml`). All files are
//! compiled into one [`RegexSet`]; the lowest pattern index that matches wins, so file order
//! comes first, then the order of classes and patterns within a file: KumoMTA's semantics. The
//! input is the response as one line, `code enhanced text`, as KumoMTA's classifier sees it.
//!
//! When no pattern matches, the classification the source itself reported is used (KumoMTA
//! ran the user's own rule files), and then the enhanced status code alone (RFC 3463), which
//! catches codes the shipped files anchor to particular basic codes. Each result names the rule
//! that decided, so an analyst can see why.

use std::path::Path;

use regex::RegexSet;
use serde::Deserialize;
use vigil_schemas::BounceClass;

/// The rule files Vigil ships and loads by default, in load order.
pub const BUNDLED_RULE_FILES: &[(&str, &str)] = &[
    ("kumomta/community_bounces.toml", include_str!("../rules/kumomta/community_bounces.toml")),
    ("kumomta/bounce_classifier_iana.toml", include_str!("../rules/kumomta/bounce_classifier_iana.toml")),
];

/// A rule file or pattern that cannot be used. Names the file and the pattern at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
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
    id: String,
}

/// Collects rule sources in load order, then compiles them.
#[derive(Debug, Default)]
pub struct ClassifierBuilder {
    patterns: Vec<String>,
    rules: Vec<Rule>,
}

impl ClassifierBuilder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The rule files Vigil ships ([`BUNDLED_RULE_FILES`]).
    ///
    /// # Panics
    /// Never in a released build: the bundled files are tested.
    #[must_use]
    pub fn with_bundled_rules(mut self) -> Self {
        for (origin, text) in BUNDLED_RULE_FILES {
            self.add_toml(origin, text).expect("bundled rule files are valid");
        }
        self
    }

    /// Adds a rule file from disk: TOML when the path ends in `.toml`, JSON otherwise.
    ///
    /// # Errors
    /// When the file cannot be read or is not a bounce-classifier file.
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self, RuleError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RuleError::Read { path: path.display().to_string(), source })?;
        let origin = path.display().to_string();
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
    pub fn add_toml(&mut self, origin: &str, text: &str) -> Result<&mut Self, RuleError> {
        let file: RuleFile =
            toml::from_str(text).map_err(|e| RuleError::Format { origin: origin.to_owned(), reason: e.to_string() })?;
        self.add_rules(origin, file)
    }

    /// Adds rules from JSON text (`{"rules": {"Class": ["regex", ...]}}`).
    ///
    /// # Errors
    /// When the text is not a bounce-classifier file or a pattern does not compile.
    pub fn add_json(&mut self, origin: &str, text: &str) -> Result<&mut Self, RuleError> {
        // toml's order-preserving map keeps the file's class order, which decides ties.
        let file: RuleFile = serde_json::from_str(text)
            .map_err(|e| RuleError::Format { origin: origin.to_owned(), reason: e.to_string() })?;
        self.add_rules(origin, file)
    }

    fn add_rules(&mut self, origin: &str, file: RuleFile) -> Result<&mut Self, RuleError> {
        let short = Path::new(origin).file_name().map_or(origin.to_owned(), |n| n.to_string_lossy().into_owned());
        let short = if origin.starts_with("kumomta/") { origin.to_owned() } else { short };
        for (class, patterns) in file.rules {
            let format_err = |reason: String| RuleError::Format { origin: origin.to_owned(), reason };
            let patterns =
                patterns.as_array().ok_or_else(|| format_err(format!("class {class} must be a list of patterns")))?;
            for (index, pattern) in patterns.iter().enumerate() {
                let pattern = pattern
                    .as_str()
                    .ok_or_else(|| format_err(format!("class {class}: pattern {index} is not a string")))?;
                // Compile alone first so the error names the one pattern at fault.
                regex::Regex::new(pattern).map_err(|e| RuleError::Pattern {
                    origin: origin.to_owned(),
                    class: class.clone(),
                    pattern: pattern.to_owned(),
                    reason: e.to_string(),
                })?;
                self.patterns.push(pattern.to_owned());
                self.rules
                    .push(Rule { class: BounceClass::from_label(&class), id: format!("{short}:{class}#{index}") });
            }
        }
        Ok(self)
    }

    /// Compiles every pattern into one set.
    ///
    /// # Errors
    /// When the combined set exceeds the regex engine's size limits.
    pub fn build(self) -> Result<Classifier, RuleError> {
        let set = RegexSet::new(&self.patterns)?;
        Ok(Classifier { set, rules: self.rules })
    }
}

/// What the classifier decided and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: BounceClass,
    /// Which rule decided: `file:Class#index`, `source:<what the source said>`,
    /// `enhanced-status:<code>`, or `none`.
    pub rule: String,
}

/// An immutable, compiled classifier. Share it behind an `Arc`; to reload, build a new one and
/// swap it in.
#[derive(Debug, Clone)]
pub struct Classifier {
    set: RegexSet,
    rules: Vec<Rule>,
}

impl Classifier {
    /// The classifier with Vigil's bundled rule files only.
    #[must_use]
    pub fn bundled() -> Self {
        ClassifierBuilder::new().with_bundled_rules().build().expect("bundled rules compile")
    }

    /// How many patterns are loaded.
    #[must_use]
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The first matching pattern for a one-line response (`550 5.1.1 text`).
    #[must_use]
    pub fn match_rules(&self, response_line: &str) -> Option<Classification> {
        let index = self.set.matches(response_line).iter().next()?;
        let rule = &self.rules[index];
        Some(Classification { class: rule.class.clone(), rule: rule.id.clone() })
    }

    /// Classifies a response: rule files first, then what the source said (unless it said
    /// `Uncategorized`), then the enhanced status code alone.
    #[must_use]
    pub fn classify(
        &self,
        response_line: &str,
        enhanced_status: Option<&str>,
        source_class: Option<&str>,
    ) -> Classification {
        if let Some(found) = self.match_rules(response_line) {
            return found;
        }
        if let Some(label) = source_class.filter(|l| !l.is_empty() && *l != "Uncategorized") {
            return Classification { class: BounceClass::from_label(label), rule: format!("source:{label}") };
        }
        if let Some(class) = enhanced_status.and_then(class_of_enhanced_status) {
            let code = enhanced_status.unwrap_or_default();
            return Classification { class, rule: format!("enhanced-status:{code}") };
        }
        Classification { class: BounceClass::Uncategorized, rule: "none".into() }
    }
}

/// RFC 3463 subject/detail -> class, independent of the basic reply code. The shipped KumoMTA
/// files anchor most codes to particular basic codes (`^(451|550) [45]\.1\.[1234] `); this
/// catches the same enhanced code behind another basic code (`554 5.1.1`).
fn class_of_enhanced_status(code: &str) -> Option<BounceClass> {
    let mut parts = code.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if class != 4 && class != 5 {
        return None;
    }
    use BounceClass as C;
    Some(match (subject, detail) {
        (1, 1 | 3 | 4) => C::InvalidRecipient,
        (1, 2 | 10) => C::BadDomain,
        (1, 6) => C::InactiveMailbox,
        (1, 7 | 8) => C::InvalidSender,
        (2, 1) => C::InactiveMailbox,
        (2, 2 | 3) | (3, 1 | 4) => C::QuotaIssues,
        (4, 1) => C::NoAnswerFromHost,
        (4, 2) => C::BadConnection,
        (4, 3) => C::DNSFailure,
        (4, 4 | 6) => C::RoutingErrors,
        (4, 5) => C::TransientFailure,
        (4, 7) => C::MessageExpired,
        (5, 3) => C::TooManyRecipients,
        (5 | 6, _) => C::ProtocolErrors,
        (7, 1) => C::PolicyRelated,
        (7, 13) => C::InactiveMailbox,
        (7, 17) => C::InvalidRecipient,
        (7, 18) => C::BadDomain,
        (7, 26 | 27 | 23 | 24 | 25 | 29 | 30) => C::AuthenticationFailed,
        (7, _) => C::PolicyRelated,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_files_load_every_pattern() {
        // 109 community patterns + 26 IANA patterns, as KUMOMTA.md §5 counts them.
        assert_eq!(Classifier::bundled().rule_count(), 109 + 26);
    }

    #[test]
    fn first_match_in_load_order_wins() {
        let c = Classifier::bundled();
        // Both files match a 550 5.1.1 user-unknown line; the community file is loaded first.
        let got = c.classify(
            "550 5.1.1 <a@b>: Recipient address rejected: User unknown in virtual mailbox table",
            Some("5.1.1"),
            None,
        );
        assert_eq!(got.class, BounceClass::InvalidRecipient);
        assert!(got.rule.starts_with("kumomta/community_bounces.toml:InvalidRecipient#"), "{}", got.rule);
        let got =
            c.classify("550 5.1.1 The email account that you tried to reach does not exist.", Some("5.1.1"), None);
        assert_eq!(got.class, BounceClass::InvalidRecipient);
        let got = c.classify("552 5.2.2 over quota", Some("5.2.2"), None);
        assert_eq!(got.class, BounceClass::QuotaIssues);
    }

    #[test]
    fn falls_back_to_the_source_then_the_enhanced_code() {
        let c = Classifier::bundled();
        let got = c.classify("599 something odd", None, Some("SpamBlock"));
        assert_eq!((got.class, got.rule.as_str()), (BounceClass::SpamBlock, "source:SpamBlock"));
        let got = c.classify("554 5.1.1 gone", Some("5.1.1"), Some("Uncategorized"));
        assert_eq!((got.class, got.rule.as_str()), (BounceClass::InvalidRecipient, "enhanced-status:5.1.1"));
        let got = c.classify("250 ok", None, None);
        assert_eq!((got.class, got.rule.as_str()), (BounceClass::Uncategorized, "none"));
    }

    #[test]
    fn json_rule_files_keep_class_order_and_user_labels() {
        let mut b = ClassifierBuilder::new();
        b.add_json("mine.json", r#"{"rules": {"Greylisted": ["greylist"], "SpamBlock": ["grey"]}}"#).unwrap();
        let c = b.build().unwrap();
        let got = c.match_rules("451 4.7.1 greylisted, try later").unwrap();
        assert_eq!(got.class, BounceClass::UserDefined("Greylisted".into()));
        assert_eq!(got.rule, "mine.json:Greylisted#0");
    }

    #[test]
    fn a_bad_pattern_is_named_in_the_error() {
        let mut b = ClassifierBuilder::new();
        let err = b.add_toml("bad.toml", "[rules]\nSpamBlock = [\"(unclosed\"]\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.toml") && text.contains("SpamBlock") && text.contains("(unclosed"), "{text}");
    }
}
