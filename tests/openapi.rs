//! The OpenAPI document at `/api/v1/openapi.json` validates (openapi-spec-validator, from
//! PyPI), and a schema-driven fuzzer (schemathesis, from PyPI) sending what the document allows
//! and what it does not, to a `vigil run --demo` with traffic in it, gets no 5xx, and every
//! answer matches the schema the document gives for it. `scripts/test`
//! installs both into a virtualenv and names them in `VIGIL_OPENAPI_VALIDATOR` and
//! `VIGIL_SCHEMATHESIS`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Vigil, eventually};

fn tool(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set: run ./scripts/test, which installs it"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_validates_and_fuzzing_it_finds_no_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let vigil = Vigil::start(dir.path(), &["--demo"]).await;
    eventually("demo traffic in the warehouse", Duration::from_secs(60), || async {
        vigil.get("/api/v1/summary").await.1["rows"].as_array().is_some_and(|rows| !rows.is_empty())
    })
    .await;
    let (status, document) = vigil.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, document.to_string()).unwrap();

    let validated = Command::new(tool("VIGIL_OPENAPI_VALIDATOR")).arg(&file).output().unwrap();
    assert!(validated.status.success(), "{}", String::from_utf8_lossy(&validated.stdout));

    let url = vigil.url("/api/v1/openapi.json");
    let fuzzed = tokio::task::spawn_blocking(move || {
        Command::new(tool("VIGIL_SCHEMATHESIS"))
            .args([
                "run",
                &url,
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "40",
                "--seed",
                "7",
            ])
            .args(["--workers", "2", "--no-color", "--request-timeout", "30"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&fuzzed.stdout);
    println!("{report}");
    assert!(fuzzed.status.success(), "schemathesis found failures:\n{report}");
    let operations = document["paths"].as_object().unwrap().len();
    assert!(report.contains(&format!("Tested: {operations}")), "every operation fuzzed:\n{report}");
}
