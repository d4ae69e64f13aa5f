//! Golden texts per vocabulary source: real replies as the providers publish them (Gmail,
//! Microsoft, Yahoo, Apple, Comcast, GMX, Mail.ru, Yandex, Orange, the Japanese carriers), as
//! the MTAs' own sources write them (Postfix, Exim, Sendmail, qmail, Courier, Exchange, Domino,
//! OpenSMTPD, Haraka, KumoMTA) and as the IANA registry titles its codes, each with its
//! provenance in `golden/vocabulary.tsv` (see `golden/VOCABULARY.md`), classified by the
//! bundled rules. The expected class was set from the meaning the source documents, never from
//! the classifier's answer; `acceptable` lists a second reading where the source is ambiguous.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use vigil_processor::ClassifierBuilder;

#[test]
fn every_source_s_texts_get_their_class() {
    let text = include_str!("golden/vocabulary.tsv");
    let classifier = ClassifierBuilder::new().with_bundled_rules().build().unwrap();
    let mut per_source: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [source, provenance, expected, acceptable, reply] = fields[..] else {
            panic!("five tab-separated fields expected: {line}");
        };
        assert!(!provenance.trim().is_empty(), "{source}: a text without its provenance: {reply}");
        *per_source.entry(source).or_default() += 1;
        let got = classifier.classify(reply, None, None);
        let accepted = std::iter::once(expected).chain(acceptable.split('|').filter(|a| !a.is_empty()));
        if !accepted.clone().any(|a| a == got.class.as_str()) {
            wrong.push(format!("{source}: expected {expected}, got {} ({}): {reply}", got.class.as_str(), got.rule));
        }
    }
    assert!(wrong.is_empty(), "{} of the golden texts misread:\n{}", wrong.len(), wrong.join("\n"));
    // A handful from every source, so that none silently drops out of the set.
    for source in [
        "iana",
        "gmail",
        "microsoft",
        "yahoo",
        "apple",
        "comcast",
        "gmx",
        "mailru",
        "yandex",
        "orange",
        "japanese-carriers",
        "postfix",
        "exim",
        "sendmail",
        "qmail",
        "courier",
        "exchange",
        "domino",
        "opensmtpd",
        "haraka",
        "kumomta",
    ] {
        assert!(per_source.get(source).copied().unwrap_or(0) >= 2, "{source}: too few texts ({per_source:?})");
    }
}
