//! DSN / ARF decoding throughput on the Sisimai corpus (real bounce emails of many MTAs).
//! The anchor copies the same bytes, so ratios travel across machines.
//!
//! Run with `scripts/bench`, which writes BENCHMARKS.md.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The allocator of the `vigil` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn emails() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/sisimai/emails");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).expect("corpus").map(|e| e.expect("entry").path()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).expect("email")).collect()
}

fn bench(c: &mut Criterion) {
    let emails = emails();
    let mut group = c.benchmark_group("dsn");
    group.throughput(Throughput::Elements(emails.len() as u64));
    group.bench_function("anchor_copy_emails", |b| {
        b.iter(|| {
            for email in &emails {
                black_box(email.clone());
            }
        });
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            for email in &emails {
                let _ = black_box(vigil_ingest::dsn::decode(email));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
