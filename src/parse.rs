//! `vigil parse`: the server's normaliser and enricher on a file, for scripts and for checking
//! what Vigil makes of a log.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use vigil_ingest::kumomta::ZSTD_MAGIC;
use vigil_ingest::lines::Format;
use vigil_processor::Enricher;

use crate::cli::{InputFormat, ParseArgs};

/// Prints one JSON event per line on stdout; rejected lines go to stderr with their line number
/// and the reason, and make the exit code 1 once every line has been read.
pub fn parse(args: &ParseArgs) -> anyhow::Result<ExitCode> {
    let mut input: Box<dyn Read> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?)
    };
    let mut head = [0u8; 4];
    let got = read_up_to(&mut input, &mut head)?;
    let chained = std::io::Cursor::new(head[..got].to_vec()).chain(input);
    let reader: Box<dyn BufRead> = if got == 4 && head == ZSTD_MAGIC {
        Box::new(BufReader::new(zstd::stream::read::Decoder::new(chained)?))
    } else {
        Box::new(BufReader::new(chained))
    };
    let enricher = Enricher::bundled();
    let mut normaliser = match args.format {
        InputFormat::Kumomta => Format::Kumomta,
        InputFormat::Postfix => Format::Postfix,
        InputFormat::Exim => Format::Exim,
        InputFormat::Powermta => Format::Powermta,
    }
    .normaliser();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut rejected = 0usize;
    let ingested_at = chrono::Utc::now();
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line.context("reading input")?;
        let text = match std::str::from_utf8(line.trim_ascii()) {
            Ok("") => continue,
            Ok(text) => text,
            Err(e) => {
                rejected += 1;
                eprintln!("line {}: not valid UTF-8: {e}", index + 1);
                continue;
            }
        };
        let outcome = normaliser.push_line(text, ingested_at);
        match outcome {
            Ok(events) => {
                for mut event in events {
                    enricher.enrich(&mut event);
                    if !args.raw {
                        event.raw = None;
                    }
                    serde_json::to_writer(&mut out, &event)?;
                    out.write_all(b"\n")?;
                }
            }
            Err(e) => {
                rejected += 1;
                eprintln!("line {}: {e}", index + 1);
            }
        }
    }
    out.flush()?;
    Ok(if rejected == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn read_up_to(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
