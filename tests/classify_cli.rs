//! `vigil classify`: the CLI contract scripts depend on.

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{Value, json};

fn classify(args: &[&str], stdin: &str) -> (i32, Vec<Value>) {
    let args: Vec<&str> = std::iter::once("classify").chain(args.iter().copied()).collect();
    let out = common::run_vigil(&args, stdin.as_bytes());
    (out.code, out.json)
}

#[test]
fn lines_give_one_object_each_with_the_documented_fields() {
    let input = "550 5.1.1 <a@b>: Recipient address rejected: User unknown\nsmtp; 452 4.2.2 mailbox full\n\nsomething with no code at all\n";
    let (code, out) = classify(&[], input);
    assert_eq!(code, 0);
    assert_eq!(out.len(), 4, "one result per input line, the blank one too");
    assert_eq!(
        out[2],
        json!({"input": "", "class": "Uncategorized", "permanent": null, "code": null, "enhanced": null, "rule": ""})
    );
    assert_eq!(
        out[0],
        json!({"input": "550 5.1.1 <a@b>: Recipient address rejected: User unknown", "class": "InvalidRecipient",
               "permanent": true, "code": 550, "enhanced": "5.1.1", "rule": out[0]["rule"]})
    );
    assert!(out[0]["rule"].as_str().unwrap().contains(':'), "the rule says which file and class decided");
    assert_eq!(
        (out[1]["class"].as_str(), out[1]["permanent"].as_bool(), out[1]["code"].as_u64()),
        (Some("QuotaIssues"), Some(false), Some(452))
    );
    assert_eq!(
        (out[3]["code"].clone(), out[3]["enhanced"].clone(), out[3]["permanent"].clone()),
        (Value::Null, Value::Null, Value::Null)
    );
}

#[test]
fn user_rule_files_come_first() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("mine.toml");
    std::fs::write(&rules, "[rules]\nGreylisted = ['(?i)greylist']\n").unwrap();
    let (_, out) = classify(&["--rules", rules.to_str().unwrap()], "451 4.7.1 Greylisted, try again in 5 minutes\n");
    assert_eq!(out[0]["class"], "Greylisted");
    assert_eq!(out[0]["rule"], "mine.toml:Greylisted#0");
}

#[test]
fn emails_give_one_object_per_recipient_and_complaints_their_feedback_type() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/sisimai/emails");
    let bounce = dir.join("lhost-postfix-13.eml");
    let complaint = dir.join("arf-01.eml");
    let missing = dir.join("no-such-file.eml");
    let (code, out) =
        classify(&["--eml", bounce.to_str().unwrap(), complaint.to_str().unwrap(), missing.to_str().unwrap()], "");
    assert_eq!(code, 1, "an unreadable file makes the exit code 1, after the others are done");
    assert_eq!(out.len(), 4);
    assert_eq!(
        (out[0]["recipient"].as_str(), out[1]["recipient"].as_str()),
        (Some("kijitora@example.jp"), Some("noraneko@example.jp"))
    );
    for field in
        ["file", "recipient", "action", "status", "code", "diagnostic", "class", "permanent", "kind", "feedback_type"]
    {
        assert!(out[0].get(field).is_some(), "field {field}");
    }
    assert_eq!((out[2]["kind"].as_str(), out[2]["feedback_type"].as_str()), (Some("complaint"), Some("abuse")));
    assert!(out[3]["error"].as_str().unwrap().contains("No such file"), "{}", out[3]);
}
