//! Classifier throughput on a realistic mix: the Sisimai corpus diagnostics (real bounces from
//! many MTAs and providers) and KumoMTA-style lines. `warm`: the same lines again, answered from
//! the cache; `cold`: the cache off, every line through the parser and the regex set. The
//! anchor hashes the same bytes with the standard hasher, so ratios travel across machines.
//!
//! Run with `scripts/bench`, which writes BENCHMARKS.md.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigil_processor::ClassifierBuilder;

/// The allocator of the `vigil` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn lines() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cases = std::fs::read_to_string(root.join("testdata/sisimai/cases.tsv")).expect("corpus");
    let mut lines: Vec<String> = cases
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(10))
        .filter(|d| !d.trim().is_empty())
        .map(str::to_owned)
        .collect();
    // What a KumoMTA log mostly carries: short provider responses.
    for (i, template) in [
        "250 2.0.0 OK 1700000000 x{}si123.456 - gsmtp",
        "421 4.7.0 [TSS04] Messages from 192.0.2.{} temporarily deferred due to unexpected volume or user complaints",
        "550 5.1.1 The email account that you tried to reach does not exist. {} - gsmtp",
        "451 4.7.650 The mail server [192.0.2.{}] has been temporarily rate limited due to IP reputation.",
        "452 4.2.2 The email account that you tried to reach is over quota. {} - gsmtp",
    ]
    .iter()
    .enumerate()
    {
        lines.push(template.replace("{}", &i.to_string()));
    }
    lines
}

fn bench(c: &mut Criterion) {
    let lines = lines();
    let bytes: usize = lines.iter().map(String::len).sum();
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(lines.len() as u64));

    group.bench_function("anchor_hash_lines", |b| {
        b.iter(|| {
            for line in &lines {
                let mut h = DefaultHasher::new();
                line.hash(&mut h);
                black_box(h.finish());
            }
        });
    });

    let warm = ClassifierBuilder::new().with_bundled_rules().build().expect("rules");
    for line in &lines {
        black_box(warm.classify(line, None, None));
    }
    group.bench_function("warm", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(warm.classify(line, None, None));
            }
        });
    });

    let cold = ClassifierBuilder::new().with_bundled_rules().cache_entries(0).build().expect("rules");
    group.bench_function("cold", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(cold.classify(line, None, None));
            }
        });
    });
    group.finish();
    eprintln!("mix: {} lines, {} bytes on average", lines.len(), bytes / lines.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
