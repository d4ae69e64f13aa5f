//! Decoding bounce and complaint mail: RFC 3464 delivery status notifications, RFC 5965 ARF
//! feedback reports, RFC 3834 auto-replies, and the common bounce bodies that carry no
//! machine-readable part (qmail, Exim, Exchange, Sendmail, provider notices).
//!
//! MIME (multipart, base64 and quoted-printable, charsets) is `mail-parser`'s job. What this
//! module adds is reading the parts: the header-like groups of `message/delivery-status` and
//! `message/feedback-report`, and, for bounces without them, finding each failed recipient in
//! the text and the paragraph that explains it. Classification is not done here: the result
//! carries the diagnostic text and status for the classifier.

use mail_parser::{Message, MessageParser, MimeHeaders};

/// Largest email decoded; bounces are small, and the bound keeps a hostile upload cheap.
pub const MAX_EMAIL_BYTES: usize = 16 * 1024 * 1024;

/// What kind of mail it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    /// A delivery status notification (standard or not).
    Bounce,
    /// A feedback report (complaint).
    Complaint,
    /// An automatic reply.
    AutoReply,
}

/// One recipient the mail reports on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedRecipient {
    pub recipient: String,
    /// `failed`, `delayed`, `delivered`, `relayed`, `expanded` (RFC 3464), when stated.
    pub action: Option<String>,
    /// The enhanced status code, when stated.
    pub status: Option<String>,
    /// The remote server's reply or the reporting MTA's explanation, on one line.
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
    /// What the human-readable part of the mail says about this recipient, when it says more
    /// than `diagnostic` (which may be terse: `550 Rejected`).
    pub context: Option<String>,
    /// The comment after the status code (`Status: 4.0.0 (host name lookup failure)`).
    pub status_comment: Option<String>,
}

/// The fields of an ARF report that matter for deliverability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feedback {
    pub feedback_type: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub reported_domain: Option<String>,
    pub original_mail_from: Option<String>,
}

/// A decoded bounce, complaint or auto-reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedMail {
    pub kind: MailKind,
    pub recipients: Vec<ReportedRecipient>,
    pub feedback: Option<Feedback>,
}

/// Why an email could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsnError {
    #[error("email of {0} bytes exceeds the limit of {MAX_EMAIL_BYTES} bytes")]
    TooLarge(usize),
    #[error("not an email: no header section could be parsed")]
    NotAnEmail,
    #[error("no recipient found: not a bounce, complaint or auto-reply Vigil can read")]
    NoRecipient,
}

/// `Field: value` groups of a `message/delivery-status` or `message/feedback-report` body,
/// separated by blank lines; continuation lines are unfolded. Some MTAs leave out the blank
/// line between recipients, so a field that repeats within a group also starts a new one.
fn field_groups(body: &str) -> Vec<Vec<(String, String)>> {
    let mut groups = Vec::new();
    let mut group: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if line.trim().is_empty() {
            if !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if group.iter().any(|(seen, _)| *seen == name) {
                groups.push(std::mem::take(&mut group));
            }
            group.push((name, value.trim().to_owned()));
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// `rfc822; a@b` -> `a@b`, without angle brackets.
fn address_field(value: &str) -> String {
    let value = value.split_once(';').map_or(value, |(_, v)| v);
    value.trim().trim_start_matches('<').trim_end_matches('>').trim().to_owned()
}

/// `smtp; 550 ...` -> `550 ...`, on one line. A local delivery agent's bare exit status
/// (`X-Unix; 71`) is named after sysexits.h, so rules can read it.
fn diagnostic_field(value: &str) -> String {
    let (kind, value) = match value.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') && kind.len() < 16 => (kind.trim(), rest),
        _ => ("", value),
    };
    let value = one_line(value);
    if kind.eq_ignore_ascii_case("x-unix")
        && let Some(name) = value.parse::<u8>().ok().and_then(sysexit_name)
    {
        return format!("{value} {name}");
    }
    value
}

/// The names sysexits.h gives to the exit statuses of delivery programs.
fn sysexit_name(status: u8) -> Option<&'static str> {
    let names = [
        "EX_USAGE",
        "EX_DATAERR",
        "EX_NOINPUT",
        "EX_NOUSER",
        "EX_NOHOST",
        "EX_UNAVAILABLE",
        "EX_SOFTWARE",
        "EX_OSERR",
        "EX_OSFILE",
        "EX_CANTCREAT",
        "EX_IOERR",
        "EX_TEMPFAIL",
        "EX_PROTOCOL",
        "EX_NOPERM",
        "EX_CONFIG",
    ];
    names.get(usize::from(status.checked_sub(64)?)).copied()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The mail from its first line on: blank lines before the header section (a copy saved from
/// a mail client or a web page) say nothing, and a header line never starts with white space,
/// so dropping them is safe. Every reader of a mail starts here.
#[must_use]
pub fn from_first_header(raw: &[u8]) -> &[u8] {
    raw.trim_ascii_start()
}

/// The messages of an mbox file (each after a `From ` separator line, `>From ` unquoted);
/// input that does not start with a separator is one message.
pub fn split_mailbox(raw: &[u8]) -> Vec<std::borrow::Cow<'_, [u8]>> {
    let raw = from_first_header(raw);
    if !raw.starts_with(b"From ") {
        return vec![raw.into()];
    }
    let messages: Vec<Vec<u8>> = mail_parser::mailbox::mbox::MessageIterator::new(raw)
        .filter_map(Result::ok)
        .map(mail_parser::mailbox::mbox::Message::unwrap_contents)
        .collect();
    if messages.len() <= 1 {
        // One message: decode it as it is (mail-parser skips the separator line itself).
        return vec![raw.into()];
    }
    messages.into_iter().map(Into::into).collect()
}

/// Decodes one email.
///
/// # Errors
/// When the input is too large, has no header section, or reports on no recipient.
pub fn decode(raw: &[u8]) -> Result<DecodedMail, DsnError> {
    if raw.len() > MAX_EMAIL_BYTES {
        return Err(DsnError::TooLarge(raw.len()));
    }
    let raw = from_first_header(raw);
    let message = MessageParser::default().parse(raw).ok_or(DsnError::NotAnEmail)?;
    if message.headers().is_empty() {
        return Err(DsnError::NotAnEmail);
    }
    let mut recipients = Vec::new();
    let mut feedback: Option<(Feedback, Vec<String>)> = None;
    let mut original: Option<&Message<'_>> = None;
    let mut original_headers: Option<String> = None;
    for part in &message.parts {
        let Some(content_type) = part.content_type() else { continue };
        let subtype = content_type.subtype().unwrap_or("").to_ascii_lowercase();
        match (content_type.ctype().to_ascii_lowercase().as_str(), subtype.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                let body = String::from_utf8_lossy(part.contents());
                recipients.extend(delivery_status(&body));
            }
            ("message", "feedback-report") => {
                feedback = Some(feedback_report(&String::from_utf8_lossy(part.contents())));
            }
            ("message", "rfc822" | "global") => {
                // A report forwarded inside the report (some MTAs nest them) still counts.
                if let Some(nested) = part.message() {
                    for inner in &nested.parts {
                        let is_status = inner.content_type().is_some_and(|t| {
                            t.ctype().eq_ignore_ascii_case("message")
                                && t.subtype().is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"))
                        });
                        if is_status {
                            recipients.extend(delivery_status(&String::from_utf8_lossy(inner.contents())));
                        }
                    }
                }
                original = original.or(part.message());
            }
            ("text", "rfc822-headers") => {
                original_headers =
                    original_headers.or_else(|| Some(String::from_utf8_lossy(part.contents()).into_owned()));
            }
            _ => {}
        }
    }
    // Broken MIME (a boundary that does not match its header, seen in real bounces) hides the
    // report parts; the status groups are still there in the raw text.
    if recipients.is_empty() && feedback.is_none() {
        let raw_text = String::from_utf8_lossy(raw);
        if raw_text.contains("Final-Recipient:") || raw_text.contains("final-recipient:") {
            recipients = delivery_status(&raw_text);
        }
    }
    let (text, inline_original) = body_text(&message, raw);
    let original_to = original_recipients(original, original_headers.as_deref().or(inline_original.as_deref()));

    // Microsoft's JMRP (Outlook.com, Hotmail) is not ARF: the complained-about message is
    // attached, with the complaining mailbox in its `X-HmXmrOriginalRecipient` header.
    if feedback.is_none()
        && recipients.is_empty()
        && let Some(complainer) = original.and_then(|m| m.header_raw("X-HmXmrOriginalRecipient"))
    {
        let complainer = addresses(complainer);
        let rcpts = if complainer.is_empty() { original_to.clone() } else { complainer };
        let report = Feedback {
            feedback_type: "abuse".into(),
            source_ip: None,
            user_agent: Some("Microsoft JMRP".into()),
            reported_domain: None,
            original_mail_from: None,
        };
        feedback = Some((report, rcpts));
    }
    if let Some((report, rcpts)) = feedback {
        let rcpts = if rcpts.is_empty() { original_to } else { rcpts };
        let recipients =
            rcpts.into_iter().map(|recipient| ReportedRecipient { recipient, ..Default::default() }).collect();
        return Ok(DecodedMail { kind: MailKind::Complaint, recipients, feedback: Some(report) });
    }

    // Exim names the address that generated a file or pipe delivery in X-Failed-Recipients,
    // and only the path in the status part.
    let failed: Vec<String> =
        message.header_raw("X-Failed-Recipients").map(|v| addresses(v).into_iter().collect()).unwrap_or_default();
    for (i, r) in recipients.iter_mut().enumerate() {
        if !r.recipient.contains('@')
            && let Some(address) = failed.get(i).or(failed.first().filter(|_| failed.len() == 1))
        {
            r.recipient.clone_from(address);
        }
    }

    if !recipients.is_empty() {
        // Some MTAs leave Diagnostic-Code out, or keep it terse, and explain in the text.
        for r in &mut recipients {
            let paragraph = paragraph_about(&text, &r.recipient);
            if r.diagnostic.is_none() {
                // The text says most; the status comment is the last resort.
                r.diagnostic = paragraph.or_else(|| r.status_comment.clone());
            } else if paragraph.as_deref() != r.diagnostic.as_deref() {
                r.context = paragraph;
            }
        }
        return Ok(DecodedMail { kind: MailKind::Bounce, recipients, feedback: None });
    }

    if let Some(mail) = ses_notification(&text) {
        return Ok(mail);
    }

    if is_auto_reply(&message) && !looks_like_bounce(&message) {
        let from = message.from().and_then(|a| a.first()).and_then(|a| a.address()).map(str::to_owned);
        let recipient = from.ok_or(DsnError::NoRecipient)?;
        let diagnostic = text.split("\n\n").map(one_line).find(|p| !p.is_empty());
        return Ok(DecodedMail {
            kind: MailKind::AutoReply,
            recipients: vec![ReportedRecipient { recipient, diagnostic, ..Default::default() }],
            feedback: None,
        });
    }

    // The bounce's own addressee and the original's sender are not failed recipients.
    let mut excluded: Vec<String> =
        message.to().map(|a| a.iter().filter_map(|a| a.address()).map(str::to_owned).collect()).unwrap_or_default();
    excluded
        .extend(original.and_then(|m| m.from()).and_then(|a| a.first()).and_then(|a| a.address()).map(str::to_owned));
    // Exim and Gmail name the failed recipients in a header.
    let mut recipients =
        non_standard(&text, if failed.is_empty() { &original_to } else { &failed }, &excluded, !failed.is_empty());
    if recipients.is_empty() {
        let reporter = message.from().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or("");
        recipients = bare_local_parts(&text, reporter, &original_to);
    }
    if recipients.is_empty() {
        return Err(DsnError::NoRecipient);
    }
    Ok(DecodedMail { kind: MailKind::Bounce, recipients, feedback: None })
}

fn delivery_status(body: &str) -> Vec<ReportedRecipient> {
    let groups = field_groups(body);
    // The first group is per-message (Reporting-MTA, ...); the rest are per-recipient.
    groups
        .iter()
        .filter_map(|g| {
            // Prefer whichever recipient field holds an address (a local delivery may report a
            // mailbox path as the final recipient).
            let named = ["final-recipient", "original-recipient", "x-actual-recipient"];
            let recipient = named
                .iter()
                .filter_map(|n| field(g, n))
                .find(|v| v.contains('@'))
                .or_else(|| field(g, "final-recipient"))
                .map(address_field)?;
            // A pipe or file delivery ("|/usr/bin/x user@host") reports the address inside.
            let recipient = if recipient.contains(char::is_whitespace) || recipient.starts_with(['|', '/']) {
                addresses(&recipient).into_iter().next().unwrap_or(recipient)
            } else {
                recipient
            };
            let status = field(g, "status");
            // `Status: 4.0.0 (cat.example.net: host name lookup failure)`: Sendmail explains in a
            // comment when it has no reply to quote.
            let status_comment = status
                .and_then(|s| s.split_once('('))
                .map(|(_, comment)| one_line(comment.trim_end().trim_end_matches(')')))
                .filter(|c| !c.is_empty());
            (!recipient.is_empty()).then(|| ReportedRecipient {
                recipient,
                action: field(g, "action").map(|a| a.to_ascii_lowercase()),
                status: status.map(|s| s.split_whitespace().next().unwrap_or(s).to_owned()),
                diagnostic: field(g, "diagnostic-code").map(diagnostic_field).filter(|d| !d.is_empty()),
                status_comment,
                remote_mta: field(g, "remote-mta").map(address_field),
                context: None,
            })
        })
        .collect()
}

fn feedback_report(body: &str) -> (Feedback, Vec<String>) {
    let fields: Vec<(String, String)> = field_groups(body).into_iter().flatten().collect();
    let report = Feedback {
        feedback_type: field(&fields, "feedback-type").unwrap_or("other").to_ascii_lowercase(),
        source_ip: field(&fields, "source-ip").map(str::to_owned),
        user_agent: field(&fields, "user-agent").map(str::to_owned),
        reported_domain: field(&fields, "reported-domain").map(str::to_owned),
        original_mail_from: field(&fields, "original-mail-from").map(address_field),
    };
    let rcpts = fields
        .iter()
        .filter(|(n, _)| n == "original-rcpt-to" || n == "removal-recipient")
        .map(|(_, v)| address_field(v))
        .filter(|a| a.contains('@'))
        .collect();
    (report, rcpts)
}

/// Recipients of the original message: its `To:` (from the attached message or headers).
fn original_recipients(original: Option<&Message<'_>>, headers: Option<&str>) -> Vec<String> {
    if let Some(to) = original.and_then(|m| m.to()) {
        let list: Vec<String> = to.iter().filter_map(|a| a.address()).map(str::to_owned).collect();
        if !list.is_empty() {
            return list;
        }
    }
    let Some(headers) = headers else { return Vec::new() };
    let parsed = MessageParser::default().parse_headers(headers.as_bytes());
    parsed
        .as_ref()
        .and_then(|m| m.to())
        .map(|to| to.iter().filter_map(|a| a.address()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The human-readable text of the bounce itself, and the returned original when it is quoted
/// inline after one of the usual markers rather than attached.
fn body_text(message: &Message<'_>, raw: &[u8]) -> (String, Option<String>) {
    let mut text = String::new();
    for index in 0..message.text_body_count() {
        if let Some(body) = message.body_text(index) {
            text.push_str(&body);
            text.push_str("\n\n");
        }
    }
    if text.trim().is_empty() {
        for index in 0..message.html_body_count() {
            if let Some(body) = message.body_html(index) {
                text.push_str(&strip_tags(&body));
            }
        }
    }
    if text.trim().is_empty() {
        // Broken MIME (an unfolded boundary parameter, say) leaves no readable part: fall back to
        // the raw body, part headers and all.
        let raw = String::from_utf8_lossy(raw);
        let body = raw.split_once("\r\n\r\n").or_else(|| raw.split_once("\n\n")).map_or("", |(_, b)| b);
        text = body.to_owned();
    }
    // Everything after the usual markers is the returned message, not the explanation.
    let mut inline_original = None;
    for marker in [
        "--- Below this line is a copy of the message",
        "------ This is a copy of the message",
        "----- Original message -----",
        "------ Original message ------",
        "-----Original Message-----",
        "Original message headers:",
        "--- The header of the original message is following. ---",
        "------ This is a copy of the message's headers. ------",
    ] {
        if let Some(at) = text.find(marker) {
            let tail = &text[at + marker.len()..];
            // Skip the rest of the marker line, then take what looks like a header section.
            let tail = tail.split_once('\n').map_or("", |(_, rest)| rest).trim_start();
            inline_original = Some(tail.to_owned());
            text.truncate(at);
        }
    }
    (text, inline_original)
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn is_auto_reply(message: &Message<'_>) -> bool {
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    if header("Auto-Submitted").is_some_and(|v| v.starts_with("auto-replied"))
        || header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || header("Precedence").is_some_and(|v| v == "auto_reply")
    {
        return true;
    }
    let subject = message.subject().unwrap_or("").to_ascii_lowercase();
    ["out of office", "automatic reply", "auto reply", "autoreply", "auto-reply", "vacation", "away until"]
        .iter()
        .any(|s| subject.contains(s))
}

/// The whole explanation on one line, cut at 2 000 bytes.
fn bounded_text(text: &str) -> String {
    let mut line = one_line(text);
    if line.len() > 2000 {
        let mut end = 2000;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// Amazon SES delivers bounce, complaint and delivery notifications as JSON (SNS-wrapped or
/// bare) in the mail body.
fn ses_notification(text: &str) -> Option<DecodedMail> {
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        return None;
    }
    // The JSON may be followed by a footer (SNS's unsubscribe note): read the first value only.
    let outer: serde_json::Value = serde_json::Deserializer::from_str(trimmed).into_iter().next()?.ok()?;
    let inner = match outer.get("Message").and_then(|m| m.as_str()) {
        Some(message) => serde_json::from_str(message).ok()?,
        None => outer,
    };
    let kind = inner.get("notificationType").or_else(|| inner.get("eventType"))?.as_str()?;
    let text_of = |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    match kind {
        "Bounce" => {
            let bounce = inner.get("bounce")?;
            let recipients = bounce
                .get("bouncedRecipients")?
                .as_array()?
                .iter()
                .filter_map(|r| {
                    Some(ReportedRecipient {
                        recipient: text_of(r, "emailAddress")?,
                        action: text_of(r, "action"),
                        status: text_of(r, "status"),
                        diagnostic: text_of(r, "diagnosticCode").map(|d| diagnostic_field(&d)),
                        ..Default::default()
                    })
                })
                .collect();
            Some(DecodedMail { kind: MailKind::Bounce, recipients, feedback: None })
        }
        "Complaint" => {
            let complaint = inner.get("complaint")?;
            let recipients = complaint
                .get("complainedRecipients")?
                .as_array()?
                .iter()
                .filter_map(|r| {
                    Some(ReportedRecipient { recipient: text_of(r, "emailAddress")?, ..Default::default() })
                })
                .collect();
            let feedback_type = text_of(complaint, "complaintFeedbackType").unwrap_or_else(|| "abuse".into());
            Some(DecodedMail {
                kind: MailKind::Complaint,
                recipients,
                feedback: Some(Feedback {
                    feedback_type,
                    user_agent: text_of(complaint, "userAgent"),
                    ..Default::default()
                }),
            })
        }
        "Delivery" => {
            let delivery = inner.get("delivery")?;
            let recipients = delivery
                .get("recipients")?
                .as_array()?
                .iter()
                .filter_map(|r| {
                    Some(ReportedRecipient {
                        recipient: r.as_str()?.to_owned(),
                        action: Some("delivered".into()),
                        diagnostic: text_of(delivery, "smtpResponse"),
                        ..Default::default()
                    })
                })
                .collect();
            Some(DecodedMail { kind: MailKind::Bounce, recipients, feedback: None })
        }
        _ => None,
    }
}

/// Bounces often carry `Auto-Submitted: auto-replied` too (Exim does); a bounce is told apart
/// by its sender or subject.
fn looks_like_bounce(message: &Message<'_>) -> bool {
    let from = message.header_raw("From").unwrap_or("").to_ascii_lowercase();
    if ["mailer-daemon", "postmaster", "mail delivery"].iter().any(|s| from.contains(s)) {
        return true;
    }
    let subject = message.subject().unwrap_or("").to_ascii_lowercase();
    [
        "undeliver",
        "delivery fail",
        "delivery status",
        "failure notice",
        "returned mail",
        "mail delivery",
        "not delivered",
        "delivery has failed",
        "nondeliver",
        "non-deliver",
        "could not be delivered",
        "rejected",
        "error sending",
        "returned to sender",
    ]
    .iter()
    .any(|s| subject.contains(s))
}

/// Email addresses in `text`, in order, lower-cased, without duplicates.
fn addresses(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for raw in text.split(|c: char| c.is_whitespace() || "<>()[]\"',;:".contains(c)) {
        let candidate = raw.trim_matches(|c: char| c == '.' || c == '-' || c == '\\' || c == '*');
        let Some((local, domain)) = candidate.split_once('@') else { continue };
        if local.is_empty() || !domain.contains('.') || domain.contains('@') {
            continue;
        }
        let candidate = candidate.to_ascii_lowercase();
        if !found.contains(&candidate) {
            found.push(candidate);
        }
    }
    found
}

fn is_system_address(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or("");
    ["mailer-daemon", "postmaster", "mail-daemon", "noreply", "no-reply", "abuse"]
        .iter()
        .any(|s| local.eq_ignore_ascii_case(s))
}

/// What the text says about `recipient`: the line that names it and the lines after it, up to
/// the next recipient's line, a separator, two blank lines in a row, or 12 lines; on one line.
fn paragraph_about(text: &str, recipient: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let recipient = recipient.to_ascii_lowercase();
    let at = lower.find(&recipient)?;
    let start = lower[..at].rfind('\n').map_or(0, |p| p + 1);
    let mut window = String::new();
    let mut blank_run = 0;
    let mut taken = 0;
    for line in text[start..].lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            blank_run += 1;
            if blank_run >= 2 && taken > 0 {
                break;
            }
            continue;
        }
        blank_run = 0;
        if taken > 0 && (trimmed.starts_with("-----") || recipient_on_line(trimmed).is_some_and(|r| r != recipient)) {
            break;
        }
        window.push_str(trimmed);
        window.push(' ');
        taken += 1;
        if taken >= 12 {
            break;
        }
    }
    let window = one_line(&window);
    (!window.is_empty()).then_some(window)
}

/// The address a line starts with, the way bounce texts list failed recipients
/// (`<a@b>:`, `  a@b`, `* a@b`, `-- a@b`).
fn recipient_on_line(line: &str) -> Option<String> {
    // Sendmail V5 prefixes the reply code: `554 <a@b>... Remote protocol error`.
    let line = match line.split_once(' ') {
        Some((code, rest)) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => line,
    };
    // A labelled line: `Could not be delivered to: <a@b>`, `Failed recipient: a@b`. The label
    // must be prose (it has a space), so quoted headers such as `Delivered-To:` do not count.
    let line = match line.split_once(':') {
        Some((label, rest))
            if label.contains(' ') && {
                let label = label.to_ascii_lowercase();
                label.contains("deliver") || label.contains("recipient")
            } =>
        {
            rest
        }
        _ => line,
    };
    let stripped = line.trim_start_matches(|c: char| c.is_whitespace() || "<*-\"'".contains(c));
    let first = addresses(stripped).into_iter().next()?;
    stripped.to_ascii_lowercase().starts_with(&first).then_some(first)
}

/// Recipients a provider's own mailer names without their domain (AOL's `Your mail to the
/// following recipients could not be delivered because ...: name1, name2`): each bare local
/// part listed after a colon on a line about recipients, as the original's recipient of that
/// local part when the original is there, else at the domain of the bounce's sender
/// (`MAILER-DAEMON@aol.com`), with that line as its diagnostic.
fn bare_local_parts(text: &str, reporter: &str, original_to: &[String]) -> Vec<ReportedRecipient> {
    let Some((_, domain)) = reporter.rsplit_once('@') else { return Vec::new() };
    let domain = domain.to_ascii_lowercase();
    let address_of = |name: &str| {
        original_to
            .iter()
            .find(|a| a.rsplit_once('@').is_some_and(|(local, _)| local.eq_ignore_ascii_case(name)))
            .map_or_else(|| format!("{}@{domain}", name.to_ascii_lowercase()), |a| a.to_ascii_lowercase())
    };
    let is_local_part =
        |n: &str| !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        let Some((prose, after)) = line.rsplit_once(':') else { continue };
        if prose.is_empty()
            || !lower.contains("recipient")
            || !(lower.contains("not be delivered") || lower.contains("failed"))
        {
            continue;
        }
        // The names follow the colon, or the lines after it up to a blank line.
        let listed: Vec<&str> = if after.trim().is_empty() {
            lines[i + 1..].iter().take_while(|l| !l.is_empty()).take(50).copied().collect()
        } else {
            vec![after]
        };
        let names: Vec<&str> =
            listed.iter().flat_map(|l| l.split(',')).map(str::trim).filter(|n| !n.is_empty()).collect();
        if names.is_empty() || !names.iter().all(|n| is_local_part(n)) {
            continue;
        }
        return names
            .into_iter()
            .map(|name| ReportedRecipient {
                recipient: address_of(name),
                diagnostic: Some(one_line(line)),
                ..Default::default()
            })
            .collect();
    }
    Vec::new()
}

/// Bounces without a delivery-status part: every address the text lists as failed, with what
/// the text says about it.
fn non_standard(
    text: &str,
    original_to: &[String],
    excluded: &[String],
    authoritative: bool,
) -> Vec<ReportedRecipient> {
    let usable = |a: &String| !is_system_address(a) && !excluded.iter().any(|e| e.eq_ignore_ascii_case(a));
    let mut chosen: Vec<String> = if authoritative { original_to.to_vec() } else { Vec::new() };
    // A line that lists a failed address is trusted even when it names the bounce's own
    // addressee (a bounce of a message to oneself).
    for line in text.lines().filter(|_| !authoritative) {
        if let Some(address) = recipient_on_line(line.trim())
            && !is_system_address(&address)
            && !chosen.contains(&address)
        {
            chosen.push(address);
        }
    }
    if chosen.is_empty() {
        let candidates: Vec<String> = addresses(text).into_iter().filter(usable).collect();
        chosen = candidates
            .iter()
            .filter(|a| original_to.iter().any(|o| o.eq_ignore_ascii_case(a)))
            .take(1)
            .cloned()
            .collect();
        if chosen.is_empty() {
            chosen = original_to.iter().take(1).map(|a| a.to_ascii_lowercase()).collect();
        }
        if chosen.is_empty() {
            chosen = candidates.into_iter().take(1).collect();
        }
    }
    chosen
        .into_iter()
        .map(|recipient| {
            // A window that says little beyond the address: the reason is elsewhere in the text.
            let whole = Some(bounded_text(text)).filter(|t| !t.is_empty());
            let window = paragraph_about(text, &recipient).filter(|w| w.len() > recipient.len() + 40);
            let context = window.as_ref().and(whole.clone());
            ReportedRecipient { recipient, diagnostic: window.or(whole), context, ..Default::default() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\nTo: sender@example.org\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nI could not deliver.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; <a@example.com>\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.com\r\nDiagnostic-Code: smtp; 550 5.1.1 <a@example.com>:\r\n  Recipient address rejected: User unknown\r\n\r\nFinal-Recipient: rfc822; b@example.com\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\n--b--\r\n";

    #[test]
    fn rfc3464_gives_one_entry_per_recipient() {
        let mail = decode(DSN.as_bytes()).unwrap();
        assert_eq!(mail.kind, MailKind::Bounce);
        assert_eq!(mail.recipients.len(), 2);
        let first = &mail.recipients[0];
        assert_eq!(first.recipient, "a@example.com");
        assert_eq!((first.action.as_deref(), first.status.as_deref()), (Some("failed"), Some("5.1.1")));
        assert_eq!(
            first.diagnostic.as_deref(),
            Some("550 5.1.1 <a@example.com>: Recipient address rejected: User unknown")
        );
        assert_eq!(first.remote_mta.as_deref(), Some("mx.example.com"));
        assert_eq!(mail.recipients[1].action.as_deref(), Some("delayed"));
    }

    #[test]
    fn garbage_and_truncated_mail_give_errors_not_panics() {
        assert!(decode(b"").is_err());
        assert!(decode(&[0xff, 0x00, 0x13, 0x37]).is_err());
        let truncated = &DSN.as_bytes()[..DSN.len() / 2];
        let _ = decode(truncated);
        assert_eq!(decode(&vec![b'a'; MAX_EMAIL_BYTES + 1]), Err(DsnError::TooLarge(MAX_EMAIL_BYTES + 1)));
    }

    #[test]
    fn recipients_without_blank_lines_between_them_stay_apart() {
        let body = "Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; a@example.com\nAction: failed\nStatus: 5.2.2\nFinal-Recipient: rfc822; b@example.com\nAction: failed\nStatus: 5.1.1\n";
        let found = delivery_status(body);
        let got: Vec<(&str, Option<&str>)> =
            found.iter().map(|r| (r.recipient.as_str(), r.status.as_deref())).collect();
        assert_eq!(got, [("a@example.com", Some("5.2.2")), ("b@example.com", Some("5.1.1"))]);
    }

    #[test]
    fn a_delivery_programs_exit_status_is_named() {
        assert_eq!(diagnostic_field("X-Unix; 71"), "71 EX_OSERR");
        assert_eq!(diagnostic_field("x-unix; 78"), "78 EX_CONFIG");
        assert_eq!(diagnostic_field("X-Unix; 12"), "12");
        assert_eq!(diagnostic_field("smtp; 550 5.1.1 gone"), "550 5.1.1 gone");
    }

    #[test]
    fn an_mbox_file_is_split_into_its_messages() {
        let one = DSN.replace("\r\n", "\n");
        let mbox = format!(
            "From MAILER-DAEMON Thu Apr 29 23:34:45 2015\n{one}\nFrom MAILER-DAEMON Thu Apr 29 23:35:00 2015\n{one}"
        );
        let messages = split_mailbox(mbox.as_bytes());
        assert_eq!(messages.len(), 2);
        for message in &messages {
            assert_eq!(decode(message).unwrap().recipients.len(), 2);
        }
        assert_eq!(split_mailbox(DSN.as_bytes()).len(), 1);
    }

    #[test]
    fn a_microsoft_jmrp_report_is_a_complaint_by_its_original_recipient() {
        let jmrp = "From: staff@hotmail.com\r\nTo: fbl@example.org\r\nSubject: complaint about message from 192.0.2.1\r\n\
                    MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
                    Content-Type: message/rfc822\r\n\r\nX-HmXmrOriginalRecipient: <reader@hotmail.com>\r\n\
                    From: news@example.org\r\nTo: reader@hotmail.com\r\nSubject: News\r\n\r\nHello\r\n--b--\r\n";
        let decoded = decode(jmrp.as_bytes()).unwrap();
        assert_eq!(decoded.kind, MailKind::Complaint);
        assert_eq!(decoded.recipients[0].recipient, "reader@hotmail.com");
        let feedback = decoded.feedback.unwrap();
        assert_eq!(
            (feedback.feedback_type.as_str(), feedback.user_agent.as_deref()),
            ("abuse", Some("Microsoft JMRP"))
        );
    }

    #[test]
    fn blank_lines_before_the_headers_are_skipped() {
        let decoded = decode(format!("  \r\n\r\n{DSN}").as_bytes()).unwrap();
        assert_eq!(decoded.recipients.len(), 2);
        let mbox = format!(
            "\n\nFrom MAILER-DAEMON Thu Apr 29 23:34:45 2015\n{DSN}\nFrom MAILER-DAEMON Thu Apr 29 23:35:00 2015\n{DSN}"
        );
        assert_eq!(split_mailbox(mbox.as_bytes()).len(), 2, "an mbox after blank lines is still split");
    }

    #[test]
    fn recipients_named_without_their_domain_get_the_reporters() {
        let text = "Your mail to the following recipients could not be delivered because they are not \
                    accepting mail with attachments or embedded images: someone, other.one\n";
        let found = bare_local_parts(text, "MAILER-DAEMON@aol.com", &[]);
        let names: Vec<&str> = found.iter().map(|r| r.recipient.as_str()).collect();
        assert_eq!(names, ["someone@aol.com", "other.one@aol.com"]);
        // The original's recipient of that local part wins over the reporter's domain.
        let found = bare_local_parts(text, "MAILER-DAEMON@mx1.relay.example", &["Someone@AIM.com".to_owned()]);
        assert_eq!(found[0].recipient, "someone@aim.com");
        assert!(found[0].diagnostic.as_deref().unwrap().contains("not accepting mail with attachments"));
        assert!(bare_local_parts("Subject: hello: world\n", "MAILER-DAEMON@aol.com", &[]).is_empty());
        assert!(bare_local_parts(text, "", &[]).is_empty(), "no reporter, no domain to give");
        let below = "Your mail to the following recipients could not be delivered because they are not \
                     accepting mail from someone@example.org:\n\tname1\n\n";
        let found = bare_local_parts(below, "MAILER-DAEMON@aol.com", &[]);
        assert_eq!(found.iter().map(|r| r.recipient.as_str()).collect::<Vec<_>>(), ["name1@aol.com"]);
    }

    #[test]
    fn addresses_are_found_in_prose() {
        assert_eq!(
            addresses("<kijitora@example.ne.jp>: said 550 to a.b@c.example."),
            ["kijitora@example.ne.jp", "a.b@c.example"]
        );
    }
}
