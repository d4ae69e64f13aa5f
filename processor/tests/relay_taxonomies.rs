//! Golden test: every failure in the relay samples of `testdata/relays/` (from the shared
//! fixtures) maps to a Vigil class. Regenerate with
//! `VIGIL_BLESS=1 cargo test -p vigil-processor --test relay_taxonomies`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use vigil_processor::classify::relay::{Relay, classify_relay, labels_from_payload, powermta_labels};

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
    for (relay, dir) in [
        (Relay::Ses, "amazon_ses"),
        (Relay::Sendgrid, "sendgrid"),
        (Relay::Mailgun, "mailgun"),
        (Relay::Postmark, "postmark"),
        (Relay::Sparkpost, "sparkpost"),
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for path in files {
            let payload: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            for label in labels_from_payload(relay, &payload) {
                out.push_str(&line(relay, &name, &label));
            }
        }
    }
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
    for relay in Relay::ALL {
        assert!(out.lines().any(|l| l.starts_with(&format!("{}/", relay.as_str()))), "no sample for {relay:?}");
    }
}
