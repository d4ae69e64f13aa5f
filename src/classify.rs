//! `vigil classify`: the classifier on SMTP response lines from stdin (and, with `--eml`, on
//! bounce emails), one JSON object per input line, blank lines included (class `Uncategorized`,
//! an empty rule), so results join to their input by line number. Scripts depend on the field
//! names.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use serde::Serialize;
use vigil_ingest::dsn::{self, MailKind};
use vigil_processor::classify::EnhancedStatus;
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
    for file in &crate::cli::bounce_rules(&args.bounce_rules, &args.rules) {
        builder.add_file(file)?;
    }
    let classifier = builder.with_bundled_rules().build()?;
    if !args.eml.is_empty() {
        return classify_emails(args, &classifier);
    }
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
        // One result per input line, blank ones too, so a caller can join by line number.
        let result = if input.trim().is_empty() {
            LineResult {
                input,
                class: vigil_schemas::BounceClass::Uncategorized.to_string(),
                permanent: None,
                code: None,
                enhanced: None,
                rule: String::new(),
            }
        } else {
            let found: Classification = classifier.classify(input, None, None);
            LineResult {
                input,
                class: found.class.to_string(),
                permanent: found.permanent,
                code: found.code,
                enhanced: found.enhanced.map(|e| e.to_string()),
                rule: found.rule.to_string(),
            }
        };
        write_line(&mut out, &result)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Default, Serialize)]
struct EmlResult<'a> {
    file: &'a str,
    recipient: Option<String>,
    action: Option<String>,
    status: Option<String>,
    code: Option<u16>,
    diagnostic: Option<String>,
    class: Option<String>,
    permanent: Option<bool>,
    kind: Option<&'static str>,
    feedback_type: Option<String>,
    rule: Option<String>,
    /// Why the email could not be decoded, when it could not.
    error: Option<String>,
}

/// One JSON object per recipient of each email; an email that cannot be decoded gives one
/// object with `error` set, and the exit code 1 once all files are done.
fn classify_emails(args: &ClassifyArgs, classifier: &vigil_processor::Classifier) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = false;
    for path in &args.eml {
        let file = path.display().to_string();
        let decoded: Vec<Result<dsn::DecodedMail, String>> = match std::fs::read(path) {
            Ok(raw) => dsn::split_mailbox(&raw).iter().map(|m| dsn::decode(m).map_err(|e| e.to_string())).collect(),
            Err(e) => vec![Err(e.to_string())],
        };
        for decoded in decoded {
            match decoded {
                Ok(mail) => {
                    for recipient in &mail.recipients {
                        write_line(&mut out, &recipient_result(&file, &mail, recipient, classifier))?;
                    }
                }
                Err(error) => {
                    failed = true;
                    write_line(&mut out, &EmlResult { file: &file, error: Some(error), ..EmlResult::default() })?;
                }
            }
        }
    }
    out.flush()?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// What one decoded email says about one of its recipients, classified.
fn recipient_result<'a>(
    file: &'a str,
    mail: &dsn::DecodedMail,
    r: &dsn::ReportedRecipient,
    classifier: &vigil_processor::Classifier,
) -> EmlResult<'a> {
    let status = r.status.as_deref().and_then(EnhancedStatus::parse);
    let diagnostic = r.diagnostic.clone().unwrap_or_default();
    let mut found = classifier.classify(&diagnostic, status, None);
    // A terse diagnostic ("550 Rejected") that no wording rule matched: what the text of the
    // mail says about the recipient may name the reason.
    if found.decided_by_codes_only()
        && let Some(context) = &r.context
    {
        let from_context = classifier.classify(context, status.or(found.enhanced), None);
        if !from_context.decided_by_codes_only() {
            found = vigil_processor::Classification { code: found.code.or(from_context.code), ..from_context };
        }
    }
    let (kind, class, permanent) = match mail.kind {
        MailKind::Complaint => ("complaint", None, None),
        MailKind::AutoReply => ("auto_reply", Some("AutoReply".to_owned()), Some(false)),
        MailKind::Bounce => {
            let permanent = match r.action.as_deref() {
                Some("failed") => Some(true),
                Some("delayed") => Some(false),
                _ => found.permanent,
            };
            // Only a stated status counts: a window of prose may quote any number.
            let success = status.is_some_and(|s| s.class == 2);
            let kind = match r.action.as_deref() {
                Some("delivered" | "relayed" | "expanded" | "deliverable") => "delivered",
                Some("delayed") => "deferred",
                Some("failed") => "bounced",
                _ if success => "delivered",
                _ if permanent == Some(false) => "deferred",
                _ => "bounced",
            };
            (kind, (kind != "delivered").then(|| found.class.to_string()), permanent)
        }
    };
    EmlResult {
        file,
        recipient: Some(r.recipient.clone()),
        action: r.action.clone(),
        status: r.status.clone().or_else(|| found.enhanced.map(|e| e.to_string())),
        code: found.code,
        diagnostic: r.diagnostic.clone(),
        class,
        permanent,
        kind: Some(kind),
        feedback_type: mail.feedback.as_ref().map(|f| f.feedback_type.clone()),
        rule: (mail.kind == MailKind::Bounce).then(|| found.rule.to_string()),
        error: None,
    }
}

/// One JSON value and a newline.
fn write_line(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}
