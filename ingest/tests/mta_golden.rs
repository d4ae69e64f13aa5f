//! Golden tests: every MTA log sample in `testdata/mta_logs/` through its normaliser. Rejected
//! lines are part of the golden output (with their reasons). Regenerate with
//! `VIGIL_BLESS=1 cargo test -p vigil-ingest --test mta_golden`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use vigil_ingest::lines::Format;

fn check(format: Format, file: &str, golden: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = std::fs::read_to_string(root.join("../testdata/mta_logs").join(file)).unwrap();
    // A fixed ingest time makes the years inferred for RFC 3164 lines reproducible.
    let ingested_at: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z").unwrap().with_timezone(&Utc);
    let mut normaliser = format.normaliser();
    let mut out = String::new();
    for (number, line) in input.lines().enumerate() {
        // The sample files annotate themselves with `#` lines (PowerMTA's `#type,...` header aside).
        if line.trim().is_empty() || (line.starts_with('#') && !line.starts_with("#type")) {
            continue;
        }
        match normaliser.push_line(line, ingested_at) {
            Ok(events) => {
                for mut event in events {
                    event.raw = None;
                    out.push_str(&serde_json::to_string(&event).unwrap());
                    out.push('\n');
                }
            }
            Err(error) => out.push_str(&format!("REJECTED line {}: {}\n", number + 1, error.0)),
        }
    }
    let path = root.join("tests/golden").join(golden);
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &out).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        out,
        "{} drifted; VIGIL_BLESS=1 regenerates",
        path.display()
    );
    assert!(out.lines().any(|l| l.starts_with('{')), "{file} gave no events");
}

#[test]
fn postfix_maillog() {
    check(Format::Postfix, "postfix_maillog_samples.log", "postfix_maillog_samples.jsonl");
}

#[test]
fn postfix_message_parts() {
    check(Format::Postfix, "postfix_message_part_samples.txt", "postfix_message_part_samples.jsonl");
}

#[test]
fn exim_spec_examples() {
    check(Format::Exim, "exim_mainlog_spec_examples.log", "exim_mainlog_spec_examples.jsonl");
}

#[test]
fn exim_testsuite_lines() {
    check(Format::Exim, "exim_mainlog_testsuite_lines.log", "exim_mainlog_testsuite_lines.jsonl");
}

#[test]
fn powermta_accounting() {
    check(Format::Powermta, "powermta_acct_synthetic_test_lines.csv", "powermta_acct_synthetic_test_lines.jsonl");
}

#[test]
fn kumomta_examples() {
    // The same normaliser the HTTP receiver and the tail use, through the line interface.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut normaliser = Format::Kumomta.normaliser();
    let input = std::fs::read_to_string(root.join("../testdata/kumomta/examples.jsonl")).unwrap();
    let events: usize = input.lines().map(|l| normaliser.push_line(l, Utc::now()).unwrap().len()).sum();
    assert_eq!(events, 5);
}
