//! Property-based fuzzing of the line classifier: any input, including binary garbage, huge
//! lines and mutated real responses, gives a classification and never panics. Raise the budget
//! with `PROPTEST_CASES=100000 cargo test -p vigil-processor --test fuzz_classify`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::LazyLock;

use proptest::prelude::*;
use vigil_processor::Classifier;

static CLASSIFIER: LazyLock<Classifier> = LazyLock::new(Classifier::bundled);
static LINES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let cases =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/sisimai/cases.tsv"))
            .unwrap();
    cases.lines().skip(1).filter_map(|l| l.split('\t').nth(10)).map(str::to_owned).collect()
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_classifies(input in "\\PC{0,600}") {
        let got = CLASSIFIER.classify(&input, None, None);
        prop_assert!(!got.rule.is_empty());
    }

    #[test]
    fn lossy_binary_classifies(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = CLASSIFIER.classify(&text, None, None);
    }

    #[test]
    fn mutated_real_lines_classify(index in 0usize..310, insert in "\\PC{0,40}", at in 0.0f64..1.0) {
        let line = &LINES[index % LINES.len()];
        let mut cut = ((line.len() as f64) * at) as usize;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let mutated = format!("{}{insert}{}", &line[..cut], &line[cut..]);
        let got = CLASSIFIER.classify(&mutated, None, None);
        // The disposition follows the reply code when one was found.
        // A failure reply code decides the disposition (a 2xx leaves it to the enhanced code).
        match got.code.map(|c| c / 100) {
            Some(5) => prop_assert_eq!(got.permanent, Some(true)),
            Some(4) => prop_assert_eq!(got.permanent, Some(false)),
            _ => {}
        }
    }
}

#[test]
fn a_one_megabyte_line_classifies() {
    let line = format!("550 5.1.1 {}", "a".repeat(1 << 20));
    assert_eq!(CLASSIFIER.classify(&line, None, None).class.as_str(), "InvalidRecipient");
}
