//! One configuration file for every role: the examples validate, a misspelt key is refused with
//! its name and line, `vigil run --config` serves the demo, and the per-source settings of
//! `[sources]` (a time zone, Postfix's egress map) reach the events (the sending IP each
//! transport maps to is checked by the normaliser's own tests: the API does not list it).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{Vigil, eventually};

fn check_config(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).arg("check-config").args(files).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_config_passes_every_example_and_names_a_misspelt_key_with_its_line() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let (ok, output) = check_config(&files);
    assert!(ok, "{output}");
    for file in &files {
        assert!(output.contains(&format!("{}: ok", file.display())), "{output}");
    }

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "data_dir = \"x\"\n\n[sources]\nkumomta_log = [\"/var/log/kumomta\"]\n").unwrap();
    let (ok, output) = check_config(std::slice::from_ref(&bad));
    assert!(!ok, "{output}");
    assert!(output.contains("kumomta_log") && output.contains("line 4"), "{output}");
    assert!(output.contains(&bad.display().to_string()), "the error names the file: {output}");
}

#[test]
fn check_config_names_a_bad_alert_rule_with_its_line_and_a_receiver_missing_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(
        &rules,
        "[[alert]]\nname = \"spam\"\nmetric = \"block_rate\"\nwindow = \"1h\"\nthreshold = 0.05\nmin_volum = 10\n",
    )
    .unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, format!("[alerting]\nrules = \"{}\"\n", rules.display())).unwrap();
    let (ok, output) = check_config(std::slice::from_ref(&config));
    assert!(!ok, "{output}");
    assert!(output.contains("min_volum") && output.contains("line 6") && output.contains("alerts.toml"), "{output}");
    std::fs::write(&rules, "[[alert]]\nname = \"spam\"\nmetric = \"block_rate\"\nwindow = \"1h\"\nthreshold = 5\n")
        .unwrap();
    let (ok, output) = check_config(std::slice::from_ref(&config));
    assert!(!ok && output.contains("alert rule `spam`") && output.contains("fraction"), "{output}");
    std::fs::write(&config, "[[alerting.receivers]]\nname = \"chat\"\nkind = \"slack\"\n").unwrap();
    let (ok, output) = check_config(std::slice::from_ref(&config));
    assert!(!ok && output.contains("chat") && output.contains("`url`"), "{output}");
}

#[tokio::test]
async fn run_with_the_example_file_serves_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    // The common launcher's --listen and --data-dir flags win over the file's keys.
    let vigil = Vigil::start(dir.path(), &["--config", example.to_str().unwrap(), "--demo"]).await;
    eventually("demo data in the summary", Duration::from_secs(30), || async {
        let rows = vigil.summary("group_by=provider").await;
        rows.as_array().unwrap().iter().any(|r| r["provider"] == "google")
    })
    .await;
    assert!(dir.path().join("log").exists(), "the flag's data directory is used, not the file's");
}

#[tokio::test]
async fn postfix_transports_map_to_egress_sources_and_lines_land_in_the_configured_zone() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let maillog = logs.path().join("maillog");
    // India has no daylight saving time: a wall-clock line is always UTC+05:30.
    let local = |at: chrono::DateTime<Utc>| (at + TimeDelta::minutes(330)).format("%b %e %H:%M:%S").to_string();
    let sent = (Utc::now() - TimeDelta::minutes(10)).with_nanosecond_zero();
    let line = |transport: &str, id: &str, to: &str, status: &str| {
        format!(
            "{} mta {transport}[4]: {id}: to=<{to}>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, delay=1, dsn={}, status={status} ({})",
            local(sent),
            if status == "sent" { "2.0.0" } else { "4.7.28" },
            if status == "sent" { "250 2.0.0 OK" } else { "421 4.7.28 Gmail has detected an unusual rate" },
        )
    };
    let lines = [
        line("postfix/smtp-ip1/smtp", "AAAAA11111", "a@gmail.com", "sent"),
        line("postfix/smtp-ip1/smtp", "AAAAA22222", "b@gmail.com", "sent"),
        line("postfix/smtp-ip2/smtp", "BBBBB11111", "c@gmail.com", "deferred"),
    ];
    std::fs::write(&maillog, lines.join("\n") + "\n").unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sources]
postfix_logs = [{maillog:?}]
tail_interval_ms = 50
time_zone = "Asia/Kolkata"

[[sources.postfix_egress]]
service = "postfix/smtp-ip1/smtp"
egress_source = "ip1"
sending_ip = "192.0.2.11"

[[sources.postfix_egress]]
service = "smtp-ip2"
egress_source = "ip2"
sending_ip = "192.0.2.12"
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let vigil = Vigil::start(&data, &["--config", config.to_str().unwrap()]).await;
    eventually("both egress sources in the live reputation", Duration::from_secs(30), || async {
        let (_, body) = vigil.get("/api/v1/reputation?scope=egress_source&window=1h").await;
        let rows = body["rows"].as_array().unwrap().clone();
        let count = |source: &str, metric: &str| {
            rows.iter().find(|r| r["egress_source"] == source).map_or(0, |r| r[metric].as_u64().unwrap())
        };
        count("ip1", "delivered") == 2 && count("ip2", "deferred") == 1
    })
    .await;
    let from = (sent - TimeDelta::hours(1)).to_rfc3339();
    let (status, page) = vigil.get(&format!("/api/v1/events?from={}", urlencode(&from))).await;
    assert_eq!(status, 200, "{page:#}");
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{page:#}");
    for row in rows {
        let at = chrono::DateTime::parse_from_rfc3339(row["occurred_at"].as_str().unwrap()).unwrap();
        assert_eq!(at, sent, "the line's wall-clock time read in Asia/Kolkata: {row:#}");
        assert!(row["egress_source"] == "ip1" || row["egress_source"] == "ip2", "{row:#}");
    }
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

trait NanosecondZero {
    fn with_nanosecond_zero(self) -> Self;
}

impl NanosecondZero for chrono::DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        chrono::DateTime::from_timestamp(self.timestamp(), 0).unwrap()
    }
}
