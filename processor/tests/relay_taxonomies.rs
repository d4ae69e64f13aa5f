//! Golden test: every bounce category in the PowerMTA samples of `testdata/mta_logs/` maps to
//! a Vigil class (the relays' labels are checked where their receivers build them, in the
//! golden tests of `vigil parse`). Regenerate with
//! `VIGIL_BLESS=1 cargo test -p vigil-processor --test relay_taxonomies`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use vigil_processor::classify::relay::{Relay, classify_relay, powermta_labels};

fn line(relay: Relay, file: &str, label: &str) -> String {
    match classify_relay(relay, label) {
        Some(c) => {
            format!("{}/{file}: {label:?} -> {} permanent={:?} ({})\n", relay.as_str(), c.class, c.permanent, c.rule)
        }
        None => format!("{}/{file}: {label:?} -> UNMAPPED\n", relay.as_str()),
    }
}

#[test]
fn relay_samples_map_to_classes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/relays");
    let mut out = String::new();
    let mta_logs = root.join("../mta_logs");
    let csv = std::fs::read_to_string(mta_logs.join("powermta_acct_synthetic_test_lines.csv")).unwrap();
    let header = std::fs::read_to_string(mta_logs.join("powermta_acct_default_headers.txt")).unwrap();
    // The synthetic lines come without a header; the header file holds the one their columns follow.
    let header_line = header.lines().find(|l| l.starts_with("#type") && l.contains("bounceCat")).unwrap_or("");
    for label in powermta_labels(&format!("{header_line}\n{csv}")) {
        out.push_str(&line(Relay::Powermta, "powermta_acct_synthetic_test_lines.csv", &label));
    }

    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/relay_taxonomies.txt");
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&golden).unwrap_or_default(), out, "regenerate with VIGIL_BLESS=1");
    assert!(!out.contains("UNMAPPED"), "every label in the samples is mapped:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("powermta/")), "no PowerMTA sample");
}
