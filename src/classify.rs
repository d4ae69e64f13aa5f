//! `vigil classify`: the classifier on SMTP response lines from stdin (and, with `--eml`, on
//! bounce emails), one JSON object per line. Scripts depend on the field names.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use serde::Serialize;
use vigil_processor::{Classification, ClassifierBuilder};

use crate::cli::ClassifyArgs;

/// Longest line read from stdin; longer lines are classified on their first bytes (the
/// classifier looks at 2 KiB at most anyway), so memory stays bounded.
const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Serialize)]
struct LineResult<'a> {
    input: &'a str,
    class: String,
    permanent: Option<bool>,
    code: Option<u16>,
    enhanced: Option<String>,
    rule: String,
}

pub fn classify(args: &ClassifyArgs) -> anyhow::Result<ExitCode> {
    let mut builder = ClassifierBuilder::new();
    for file in &args.rules {
        builder.add_file(file)?;
    }
    let classifier = builder.with_bundled_rules().build()?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = (&mut reader).take(MAX_LINE_BYTES as u64).read_until(b'\n', &mut buf)?;
        if read == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') && read == MAX_LINE_BYTES {
            // Skip the rest of an over-long line.
            let mut sink = Vec::new();
            reader.read_until(b'\n', &mut sink)?;
        }
        let text = String::from_utf8_lossy(&buf);
        let input = text.trim_end_matches(['\r', '\n']);
        if input.trim().is_empty() {
            continue;
        }
        let found: Classification = classifier.classify(input, None, None);
        let result = LineResult {
            input,
            class: found.class.to_string(),
            permanent: found.permanent,
            code: found.code,
            enhanced: found.enhanced.map(|e| e.to_string()),
            rule: found.rule.to_string(),
        };
        serde_json::to_writer(&mut out, &result)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
