//! Property-based fuzzing of the DSN decoder: garbage, truncated and mutated real emails must
//! give a result or an error, never a panic. Runs a fixed budget of cases in the test suite;
//! raise it with `PROPTEST_CASES=100000 cargo test -p vigil-ingest --test fuzz_dsn`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::LazyLock;

use proptest::prelude::*;

static EMAILS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/sisimai/emails");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = vigil_ingest::dsn::decode(&bytes);
    }

    #[test]
    fn truncated_real_emails_never_panic(index in 0usize..292, cut in 0.0f64..1.0) {
        let email = &EMAILS[index % EMAILS.len()];
        let end = (email.len() as f64 * cut) as usize;
        let _ = vigil_ingest::dsn::decode(&email[..end]);
    }

    #[test]
    fn mutated_real_emails_never_panic(
        index in 0usize..292,
        flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 1..32),
    ) {
        let mut email = EMAILS[index % EMAILS.len()].clone();
        for (at, byte) in flips {
            let i = ((email.len() as f64) * at) as usize;
            if i < email.len() {
                email[i] = byte;
            }
        }
        let _ = vigil_ingest::dsn::decode(&email);
    }
}
