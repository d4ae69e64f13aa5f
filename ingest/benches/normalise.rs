//! KumoMTA JSONL parse + normalise throughput (DESIGN.md §12: >= 500 k records/s/core), and
//! Postfix line normalisation. The anchor parses the same lines into `serde_json::Value`, the
//! least any JSON consumer does, so ratios travel across machines.
//!
//! Run with `scripts/bench`, which writes BENCHMARKS.md.

use std::hint::black_box;
use std::path::PathBuf;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigil_ingest::lines::Format;

/// The allocator of the `vigil` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn kumomta_lines() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/kumomta/examples.jsonl");
    let examples: Vec<String> = std::fs::read_to_string(path).expect("examples").lines().map(str::to_owned).collect();
    // A realistic mix: mostly deliveries, then deferrals and bounces, few receptions.
    let weights = [1, 6, 2, 1, 0];
    let mut lines = Vec::new();
    for round in 0..100 {
        for (example, weight) in examples.iter().zip(weights) {
            for i in 0..weight {
                lines.push(example.replacen("\"id\":\"", &format!("\"id\":\"{round:04}{i:02}"), 1));
            }
        }
    }
    lines
}

fn postfix_lines() -> Vec<String> {
    (0..1000)
        .map(|n| format!("Jan  9 10:00:02 mx postfix/smtp[4]: Q{n:09}: to=<u{n}@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.1]:25, delay=1.1, delays=0.1/0/0.3/0.7, dsn=2.0.0, status=sent (250 2.0.0 OK 1700000000 x{n} - gsmtp)"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let kumo = kumomta_lines();
    let mut group = c.benchmark_group("normalise");
    group.throughput(Throughput::Elements(kumo.len() as u64));
    group.bench_function("anchor_json_value", |b| {
        b.iter(|| {
            for line in &kumo {
                black_box(serde_json::from_str::<serde_json::Value>(line).expect("json"));
            }
        });
    });
    group.bench_function("kumomta", |b| {
        let now = Utc::now();
        b.iter(|| {
            for line in &kumo {
                black_box(vigil_ingest::kumomta::normalise_record(line, now).expect("record"));
            }
        });
    });
    let postfix = postfix_lines();
    group.throughput(Throughput::Elements(postfix.len() as u64));
    group.bench_function("postfix", |b| {
        let now = Utc::now();
        let mut normaliser = Format::Postfix.normaliser();
        b.iter(|| {
            for line in &postfix {
                black_box(normaliser.push_line(line, now).expect("line"));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
