//! With only KumoMTA's two shipped rule files loaded and no fallbacks, Vigil's classifier gives
//! exactly what KumoMTA's first-match semantics gives: patterns tried in load order (file, then
//! class, then pattern), the first match wins, no match is Uncategorized.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use vigil_processor::ClassifierBuilder;
use vigil_processor::classify::KUMOMTA_RULE_FILES;
use vigil_schemas::BounceClass;

/// A straightforward model of KumoMTA's classifier: every pattern on its own, tried in order.
fn reference(line: &str, rules: &[(String, regex::Regex)]) -> String {
    rules
        .iter()
        .find(|(_, re)| re.is_match(line))
        .map_or_else(|| "Uncategorized".to_owned(), |(class, _)| class.clone())
}

fn reference_rules() -> Vec<(String, regex::Regex)> {
    let mut rules = Vec::new();
    for (_, text) in KUMOMTA_RULE_FILES {
        let file: toml::Table = toml::from_str(text).unwrap();
        for (class, patterns) in file["rules"].as_table().unwrap() {
            for pattern in patterns.as_array().unwrap() {
                rules.push((class.clone(), regex::Regex::new(pattern.as_str().unwrap()).unwrap()));
            }
        }
    }
    rules
}

fn test_lines() -> Vec<String> {
    let mut lines: Vec<String> = [
        // Both files match these; the community file is loaded first and must win.
        "550 5.1.1 <a@b>: Recipient address rejected: User unknown in virtual mailbox table",
        "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using Spamhaus",
        "552 5.2.2 mailbox not found",
        // Only the IANA file matches these.
        "451 4.4.1 no answer from host",
        "550 5.1.10 null MX",
        "452 4.5.3 too many recipients",
        "554 5.7.26 unauthenticated",
        // Neither.
        "250 2.0.0 OK",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred",
        "",
        "550  5.1.1 two spaces",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Real-world lines: every diagnostic of the Sisimai corpus.
    let cases = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/sisimai/cases.tsv");
    for row in std::fs::read_to_string(cases).unwrap().lines().skip(1) {
        lines.push(row.split('\t').nth(10).unwrap_or_default().to_owned());
    }
    lines
}

#[test]
fn kumomta_files_alone_give_kumomta_results() {
    let classifier = ClassifierBuilder::new().with_kumomta_rules().rules_only().build().unwrap();
    let rules = reference_rules();
    assert_eq!(rules.len(), 135);
    let mut matched = 0;
    for line in test_lines() {
        let expected = reference(&line, &rules);
        let got = classifier.classify(&line, None, None);
        assert_eq!(got.class.as_str(), expected, "line {line:?} (rule {})", got.rule);
        matched += usize::from(expected != "Uncategorized");
    }
    assert!(matched > 50, "the test set exercises the rules: {matched} lines matched");
}

#[test]
fn precedence_is_file_then_class_then_pattern() {
    let classifier = ClassifierBuilder::new().with_kumomta_rules().rules_only().build().unwrap();
    let got = classifier.classify(
        "550 5.1.1 <a@b>: Recipient address rejected: User unknown in virtual mailbox table",
        None,
        None,
    );
    assert_eq!(got.class, BounceClass::InvalidRecipient);
    assert!(got.rule.starts_with("kumomta/community_bounces.toml:"), "community before IANA: {}", got.rule);
    let got = classifier.classify("451 4.4.1 no answer from host", None, None);
    assert_eq!(&*got.rule, "kumomta/bounce_classifier_iana.toml:NoAnswerFromHost#0");
    // A user's file loaded first overrides both.
    let mut builder = ClassifierBuilder::new();
    builder.add_toml("mine.toml", "[rules]\nQuotaIssues = ['^550 5\\.1\\.1 ']\n").unwrap();
    let classifier = builder.with_kumomta_rules().rules_only().build().unwrap();
    assert_eq!(classifier.classify("550 5.1.1 user unknown", None, None).class, BounceClass::QuotaIssues);
}
