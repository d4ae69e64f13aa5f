//! The workspace's dependency graph is the one ARCHITECTURE.md draws, and the API reads the
//! processor only through its view.
//!
//! `schemas <- log <- {ingest, processor}`, `schemas <- warehouse <- processor <- query <-
//! vigil`, and `warehouse` uses `log` for the TLS trust store: ingest and the processor are siblings on the log crate and never import each
//! other, and nothing below the binary depends on a crate above it. A new edge is a design
//! change: add it here and to ARCHITECTURE.md together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Every workspace crate and the workspace crates it may depend on (normal, build and dev
/// dependencies alike: a test that imports a sibling couples them just the same).
const ALLOWED: &[(&str, &[&str])] = &[
    ("vigil-schemas", &[]),
    ("vigil-log", &["vigil-schemas"]),
    ("vigil-warehouse", &["vigil-schemas", "vigil-log"]),
    ("vigil-ingest", &["vigil-schemas", "vigil-log"]),
    ("vigil-processor", &["vigil-schemas", "vigil-log", "vigil-warehouse"]),
    ("vigil-query", &["vigil-schemas", "vigil-log", "vigil-warehouse", "vigil-processor"]),
    ("vigil", &["vigil-schemas", "vigil-log", "vigil-warehouse", "vigil-ingest", "vigil-processor", "vigil-query"]),
];

fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> =
        packages.iter().map(|p| p["name"].as_str().expect("package name").to_owned()).collect();
    packages
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| d["name"].as_str().expect("dependency name").to_owned())
                .filter(|name| members.contains(name))
                .collect();
            (package["name"].as_str().expect("package name").to_owned(), deps)
        })
        .collect()
}

#[test]
fn every_edge_between_crates_is_in_the_documented_graph() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(name, deps)| (*name, deps.iter().copied().collect())).collect();
    let edges = workspace_edges();
    let crates: BTreeSet<&str> = edges.keys().map(String::as_str).collect();
    assert_eq!(crates, allowed.keys().copied().collect(), "a crate was added or removed: update ALLOWED");
    let mut unexpected = Vec::new();
    for (name, deps) in &edges {
        for dep in deps {
            if !allowed[name.as_str()].contains(dep.as_str()) {
                unexpected.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(unexpected.is_empty(), "edges outside the documented graph: {unexpected:?}");
    assert!(!edges["vigil-processor"].contains("vigil-ingest"), "ingest and the processor are siblings");
    assert!(!edges["vigil-ingest"].contains("vigil-processor"), "ingest and the processor are siblings");
}

/// Every `vigil_processor::` path in the API's sources goes through `view`, so a change to the
/// fold's internals cannot break an endpoint.
#[test]
fn the_api_reads_the_processor_only_through_its_view() {
    let mut offenders = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("query");
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("query sources") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for (number, line) in text.lines().enumerate() {
                    let mut rest = line;
                    while let Some(at) = rest.find("vigil_processor::") {
                        rest = &rest[at + "vigil_processor::".len()..];
                        if !rest.starts_with("view") {
                            offenders.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                        }
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "the API reaches past vigil_processor::view:\n{}", offenders.join("\n"));
}
