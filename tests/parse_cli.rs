//! `vigil parse --from kumomta`: the server's normaliser on files and stdin.

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::Value;

fn examples() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/kumomta/examples.jsonl")
}

fn parse(args: &[&str], stdin: &[u8]) -> (i32, Vec<Value>, String) {
    let args: Vec<&str> = ["parse", "--from", "kumomta"].into_iter().chain(args.iter().copied()).collect();
    let out = common::run_vigil(&args, stdin);
    (out.code, out.json, out.stderr)
}

#[test]
fn prints_one_enriched_event_per_example_record() {
    let (code, events, stderr) = parse(&[examples().to_str().unwrap()], b"");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(events.len(), 5);
    let field = |i: usize, k: &str| events[i][k].clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reception", "delivered", "deferred", "bounced", "bounced"]);
    assert_eq!(field(3, "recipient_domain"), "gmail.com");
    assert_eq!(field(3, "egress_source"), "ip-10-0-0-1");
    assert_eq!((field(3, "smtp_code"), field(3, "enhanced_status")), (Value::from(550), Value::from("5.1.1")));
    assert_eq!(field(3, "bounce_class"), "InvalidRecipient");
    assert_eq!(field(3, "provider"), "google");
    assert_eq!(field(2, "provider"), "yahoo");
    assert_eq!(field(2, "egress_source"), "unspecified");
    assert!(field(2, "classifier_rule").is_string(), "every failure says which rule decided");
    assert_eq!(field(1, "bounce_class"), Value::Null, "deliveries are not classified");
    assert!(events.iter().all(|e| e.get("raw").is_none()), "raw only with --raw");
}

#[test]
fn reads_zstd_and_stdin_and_reports_bad_lines() {
    let plain = std::fs::read(examples()).unwrap();
    let compressed = zstd::encode_all(plain.as_slice(), 3).unwrap();
    let (code, events, _) = parse(&["-"], &compressed);
    assert_eq!((code, events.len()), (0, 5));

    let mut input = b"{\"type\":\"Delivery\"}\n".to_vec();
    input.extend_from_slice(&plain);
    let (code, events, stderr) = parse(&["--raw", "-"], &input);
    assert_eq!(code, 1, "a rejected line makes the exit code 1");
    assert_eq!(events.len(), 5, "the good lines are still printed");
    assert!(stderr.contains("line 1:") && stderr.contains("missing field `id`"), "{stderr}");
    assert!(events[0]["raw"].as_str().unwrap().contains("\"Reception\""));
}
