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
    let format = match args.format {
        InputFormat::Kumomta => Format::Kumomta,
        InputFormat::Postfix => Format::Postfix,
        InputFormat::Exim => Format::Exim,
        InputFormat::Powermta => Format::Powermta,
        whole => return parse_whole(args, whole, reader, &enricher),
    };
    let mut normaliser = format.normaliser();
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

/// Largest webhook body, email or report read whole.
const MAX_WHOLE_INPUT: u64 = 64 * 1024 * 1024;

/// Inputs read whole: a webhook body, an email (or mbox), a DMARC report.
fn parse_whole(
    args: &ParseArgs,
    format: InputFormat,
    reader: Box<dyn BufRead>,
    enricher: &Enricher,
) -> anyhow::Result<ExitCode> {
    let mut input = Vec::new();
    reader.take(MAX_WHOLE_INPUT + 1).read_to_end(&mut input).context("reading input")?;
    anyhow::ensure!(input.len() as u64 <= MAX_WHOLE_INPUT, "input exceeds {MAX_WHOLE_INPUT} bytes");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if format == InputFormat::Dmarc {
        let report = vigil_ingest::dmarc::decode(&input)?;
        serde_json::to_writer_pretty(&mut out, &report)?;
        out.write_all(b"\n")?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = whole_events(format, &input, chrono::Utc::now());
    for problem in &outcome.problems {
        eprintln!("{problem}");
    }
    if format.relay().is_some() {
        eprintln!("note: signatures and credentials are checked by the HTTP receiver only; not here");
    }
    for mut event in outcome.events {
        enricher.enrich(&mut event);
        if !args.raw {
            event.raw = None;
        }
        serde_json::to_writer(&mut out, &event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(if outcome.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a whole input became: events, and what could not be read, in words.
#[derive(Debug, Default)]
pub(crate) struct WholeOutcome {
    pub events: Vec<vigil_schemas::DeliveryEvent>,
    pub problems: Vec<String>,
}

/// The receivers' own normalisers on a saved webhook body or email (never DMARC).
pub(crate) fn whole_events(format: InputFormat, input: &[u8], now: chrono::DateTime<chrono::Utc>) -> WholeOutcome {
    let mut outcome = WholeOutcome::default();
    if let Some(relay) = format.relay() {
        let tags = vigil_ingest::relay::Tags::default();
        let bodies: Vec<Vec<u8>> = if relay == vigil_ingest::relay::Provider::Elasticemail {
            // One notification per line: a query string, or the whole URL.
            String::from_utf8_lossy(input)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.split_once('?').map_or(l, |(_, q)| q).as_bytes().to_vec())
                .collect()
        } else {
            vec![http_body(input).to_vec()]
        };
        for body in bodies {
            match vigil_ingest::relay::normalise(relay, &body, &tags, now) {
                Ok(normalised) => {
                    outcome.events.extend(normalised.events);
                    outcome
                        .problems
                        .extend(normalised.rejected.into_iter().map(|r| format!("{}: {}", r.location, r.reason)));
                }
                Err(error) => outcome.problems.push(error.to_string()),
            }
        }
        return outcome;
    }
    let verp = vigil_ingest::mail::Verp::default();
    for (index, mail) in vigil_ingest::dsn::split_mailbox(input).iter().enumerate() {
        match vigil_ingest::mail::events(mail, &verp, now) {
            Ok(events) => outcome.events.extend(events),
            Err(error) => outcome.problems.push(format!("message {}: {error}", index + 1)),
        }
    }
    outcome
}

/// A saved HTTP request (`POST /path HTTP/1.1`, headers, blank line, body) -> its body;
/// anything else is the body already.
fn http_body(input: &[u8]) -> &[u8] {
    let is_request = [&b"POST "[..], b"PUT ", b"GET "].iter().any(|m| input.starts_with(m));
    if !is_request {
        return input;
    }
    let text = input;
    for separator in [&b"\r\n\r\n"[..], b"\n\n"] {
        if let Some(at) = text.windows(separator.len()).position(|w| w == separator) {
            return &text[at + separator.len()..];
        }
    }
    input
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

#[cfg(test)]
mod tests {
    //! Golden tests: every relay sample in `testdata/relays/` and every mail in `testdata/mail/`
    //! through the receivers' normalisers and the processor's enricher, compared with
    //! `testdata/golden/`. `VIGIL_BLESS=1 cargo test -p vigil --bin vigil golden` rewrites the
    //! golden files after a reviewed change.

    use std::path::{Path, PathBuf};

    use serde_json::{Value, json};
    use vigil_schemas::{DeliveryEvent, EventKind};

    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    /// Postal's documentation shows payloads without their envelope; wrap them as Postal sends.
    fn postal_envelope(name: &str, input: &[u8]) -> Vec<u8> {
        let event = match name {
            n if n.contains("status_sent") => "MessageSent",
            n if n.contains("bounced") => "MessageBounced",
            n if n.contains("link_clicked") => "MessageLinkClicked",
            _ => "MessageLoaded",
        };
        let payload: Value = serde_json::from_slice(input).unwrap();
        serde_json::to_vec(&json!({"event": event, "timestamp": 1_477_945_177.5, "uuid": name, "payload": payload}))
            .unwrap()
    }

    fn inputs(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                !(name.ends_with(".md") || name == "signed_headers.txt" || name.starts_with("sns_string_to_sign"))
            })
            .collect();
        files.sort();
        files
    }

    fn outcome_of(format: InputFormat, path: &Path) -> WholeOutcome {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut input = std::fs::read(path).unwrap();
        if format == InputFormat::Postal && name.starts_with("docs_payload") {
            input = postal_envelope(&name, &input);
        }
        let mut outcome = whole_events(format, &input, now());
        // Building the classifier is the slow part of a test run: once.
        static ENRICHER: std::sync::LazyLock<Enricher> = std::sync::LazyLock::new(Enricher::bundled);
        let enricher = &*ENRICHER;
        for event in &mut outcome.events {
            enricher.enrich(event);
        }
        outcome
    }

    fn rendered(outcome: &WholeOutcome) -> Value {
        let events: Vec<Value> = outcome
            .events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.raw = None;
                serde_json::to_value(e).unwrap()
            })
            .collect();
        json!({ "events": events, "problems": outcome.problems })
    }

    const DIRECTORIES: [(&str, InputFormat); 10] = [
        ("relays/amazon_ses", InputFormat::Ses),
        ("relays/sendgrid", InputFormat::Sendgrid),
        ("relays/mailgun", InputFormat::Mailgun),
        ("relays/postmark", InputFormat::Postmark),
        ("relays/sparkpost", InputFormat::Sparkpost),
        ("relays/brevo", InputFormat::Brevo),
        ("relays/mailjet", InputFormat::Mailjet),
        ("relays/postal", InputFormat::Postal),
        ("relays/elasticemail", InputFormat::Elasticemail),
        ("mail", InputFormat::Dsn),
    ];

    #[test]
    fn golden_every_relay_sample_and_mail() {
        let bless = std::env::var_os("VIGIL_BLESS").is_some();
        let mut mismatched = Vec::new();
        let mut unmapped = Vec::new();
        let mut compared = 0;
        for (dir, format) in DIRECTORIES {
            let dir_path = root().join(dir);
            if !dir_path.is_dir() {
                continue;
            }
            for path in inputs(&dir_path).into_iter().filter(|p| p.is_file()) {
                let outcome = outcome_of(format, &path);
                unmapped.extend(unmapped_labels(&outcome.events));
                let got = rendered(&outcome);
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let golden = root().join("golden").join(dir).join(format!("{name}.json"));
                if bless {
                    std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                    std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
                    continue;
                }
                let want: Value = serde_json::from_str(
                    &std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display())),
                )
                .unwrap();
                compared += 1;
                if got != want {
                    mismatched.push(format!("{dir}/{name}"));
                }
            }
        }
        assert!(
            mismatched.is_empty(),
            "differ from testdata/golden (rerun with VIGIL_BLESS=1 after review): {mismatched:?}"
        );
        assert!(bless || compared >= 90, "only {compared} samples compared");
        assert!(unmapped.is_empty(), "relay labels missing from processor/rules/relays.toml: {unmapped:?}");
    }

    /// The relay labels of failures that `relays.toml` does not map.
    fn unmapped_labels(events: &[DeliveryEvent]) -> Vec<String> {
        use vigil_processor::classify::relay::{Relay, classify_relay};
        events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Bounced | EventKind::Deferred | EventKind::Dropped))
            .filter_map(|e| {
                let relay = Relay::ALL.into_iter().find(|r| r.as_str() == e.source.as_str())?;
                let label = e.provider_class.as_deref()?;
                classify_relay(relay, label).is_none().then(|| format!("{}: {label}", relay.as_str()))
            })
            .collect()
    }

    fn events(dir: &str, file: &str, format: InputFormat) -> Vec<DeliveryEvent> {
        let outcome = outcome_of(format, &root().join(dir).join(file));
        assert!(outcome.problems.is_empty(), "{file}: {:?}", outcome.problems);
        outcome.events
    }

    /// The fields the issue names, spelled out for the samples that show each.
    #[test]
    fn relay_samples_give_the_right_kinds_recipients_codes_classes_tags_and_ips() {
        // SES: one event per bounced recipient, never per destination.
        let ses = events("relays/amazon_ses", "notif_bounce_with_dsn.json", InputFormat::Ses);
        assert!(ses.iter().all(|e| e.kind == EventKind::Bounced));
        assert_eq!(ses[0].recipient.as_deref(), Some("jane@example.com"));
        assert_eq!((ses[0].smtp_code, ses[0].enhanced_status.as_deref()), (Some(550), Some("5.1.1")));
        assert_eq!(ses[0].provider_class.as_deref(), Some("Permanent/General"));
        let complaint = events("relays/amazon_ses", "notif_complaint_with_feedback_report.json", InputFormat::Ses);
        assert_eq!(complaint.len(), 1, "only the complained recipient, not the 3 destinations");
        assert_eq!(complaint[0].recipient.as_deref(), Some("richard@example.com"));
        assert_eq!(complaint[0].provider_class.as_deref(), Some("abuse"));
        let delivery = events("relays/amazon_ses", "event_delivery.json", InputFormat::Ses);
        assert_eq!(delivery[0].sending_ip.as_deref(), Some("192.0.2.0"));
        let open = events("relays/amazon_ses", "event_open.json", InputFormat::Ses);
        assert_eq!(open[0].kind, EventKind::Open);
        let delay = events("relays/amazon_ses", "event_delivery_delay.json", InputFormat::Ses);
        assert_eq!((delay[0].kind, delay[0].smtp_code), (EventKind::Deferred, Some(421)));
        // SendGrid: a batch; sending IP on bounces; custom args and categories.
        let sendgrid = events("relays/sendgrid", "docs_all_event_types.json", InputFormat::Sendgrid);
        assert!(sendgrid.len() >= 10, "{}", sendgrid.len());
        let bounce = events("relays/sendgrid", "anymail_bounce_with_ip_tls.json", InputFormat::Sendgrid);
        assert_eq!(bounce[0].kind, EventKind::Bounced);
        assert!(bounce[0].sending_ip.is_some());
        // Mailgun: permanent failure with the structured code, temporary is a deferral.
        let failed = events("relays/mailgun", "anymail_failed_permanent.json", InputFormat::Mailgun);
        assert_eq!((failed[0].kind, failed[0].smtp_code), (EventKind::Bounced, Some(550)));
        assert_eq!(failed[0].bounce_class, Some(vigil_schemas::BounceClass::InvalidRecipient));
        let temporary = events("relays/mailgun", "anymail_failed_temporary.json", InputFormat::Mailgun);
        assert_eq!(temporary[0].kind, EventKind::Deferred);
        // Postmark: hard bounce, codes out of Details.
        let postmark = events("relays/postmark", "anymail_bounce_hard.json", InputFormat::Postmark);
        assert_eq!((postmark[0].kind, postmark[0].smtp_code), (EventKind::Bounced, Some(550)));
        assert_eq!(postmark[0].provider_class.as_deref(), Some("HardBounce"));
        let spam = events("relays/postmark", "anymail_spam_complaint.json", InputFormat::Postmark);
        assert_eq!(spam[0].kind, EventKind::Complaint);
        // SparkPost: bounce class 10 is a hard bounce of an invalid recipient; 60 an auto-reply.
        let sparkpost = events("relays/sparkpost", "anymail_bounce_class10.json", InputFormat::Sparkpost);
        assert_eq!(sparkpost[0].bounce_class, Some(vigil_schemas::BounceClass::InvalidRecipient));
        let auto = events("relays/sparkpost", "anymail_bounce_class60_autoreply.json", InputFormat::Sparkpost);
        assert_eq!(auto[0].kind, EventKind::AutoReply);
        assert!(events("relays/sparkpost", "anymail_ping.json", InputFormat::Sparkpost).is_empty());
        // Postal: the MX and the sending IP are only in the details text.
        let postal = events("relays/postal", "docs_payload_message_status_sent.json", InputFormat::Postal);
        assert_eq!(postal[0].mx_host.as_deref(), Some("aspmx.l.google.com"));
        assert_eq!(postal[0].sending_ip.as_deref(), Some("2a00:67a0:a:15::2"));
        assert_eq!(postal[0].campaign.as_deref(), Some("welcome"));
        // Elastic Email: a query string.
        let elastic = events("relays/elasticemail", "mautic_test_notification_query.txt", InputFormat::Elasticemail);
        assert_eq!((elastic[0].kind, elastic[0].recipient.as_deref()), (EventKind::Bounced, Some("test@test.com")));
        assert_eq!(elastic[0].provider_class.as_deref(), Some("NoMailbox"));
    }

    #[test]
    fn bounce_and_complaint_mail_become_events_per_recipient() {
        let dsn = events("mail", "rfc3464_appendix_example_user_unknown.eml", InputFormat::Dsn);
        // RFC 3464's example: two recipients failed, one is delayed.
        let kinds: Vec<(EventKind, &str)> =
            dsn.iter().map(|e| (e.kind, e.recipient.as_deref().unwrap_or(""))).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Bounced, "arathib@vnet.ibm.com"),
                (EventKind::Deferred, "johnh@hpnjld.njd.hp.com"),
                (EventKind::Bounced, "wsnell@sdcc13.ucsd.edu")
            ]
        );
        assert!(dsn.iter().all(|e| e.source == vigil_schemas::SourceKind::Dsn));
        let arf = events("mail", "rfc5965_B2_extended_abuse_report.eml", InputFormat::Arf);
        assert_eq!(arf[0].kind, EventKind::Complaint);
        assert_eq!(arf[0].provider_class.as_deref(), Some("abuse"));
        assert_ne!(arf[0].recipient, arf[0].report_recipient, "the complainer, never the feedback mailbox");
    }
}
