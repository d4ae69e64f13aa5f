//! Reading an SMTP response as it reaches us: a KumoMTA `code enhanced text` line, a DSN
//! `Diagnostic-Code: smtp; 550-5.1.1 ...`, or an MTA's prose with the reply somewhere inside
//! ("host mx.example[192.0.2.1] said: 550 5.1.1 <a@b>: User unknown (in reply to RCPT TO)").

use std::fmt;

/// An RFC 3463 enhanced status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    /// Parses `class.subject.detail` exactly.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let status = Self {
            class: parts.next()?.parse().ok()?,
            subject: parts.next()?.parse().ok()?,
            detail: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none() && matches!(status.class, 2 | 4 | 5)).then_some(status)
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A response taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The line rules match against: `code enhanced text` when the reply code was found, so that
    /// KumoMTA's anchored rules (`^550 5\.1\.1 `) apply; the text unchanged when it already
    /// starts that way.
    pub line: String,
    pub code: Option<u16>,
    pub enhanced: Option<EnhancedStatus>,
}

impl Response {
    /// See [`disposition`].
    #[must_use]
    pub fn permanent(&self) -> Option<bool> {
        disposition(self.code, self.enhanced)
    }
}

/// Permanent (5xx) or transient (4xx), from the reply code, else the enhanced code's class.
#[must_use]
pub fn disposition(code: Option<u16>, enhanced: Option<EnhancedStatus>) -> Option<bool> {
    match (code.map(|c| c / 100), enhanced.map(|e| e.class)) {
        (Some(5), _) => Some(true),
        (Some(4), _) => Some(false),
        (_, Some(5)) => Some(true),
        (_, Some(4)) => Some(false),
        _ => None,
    }
}

/// Strips transport prefixes, folds the text to one line with single spaces, and drops the
/// `550-5.7.1` prefixes a multi-line reply repeats on every line after the first, so that
/// wordings split across lines match again.
fn clean(input: &str) -> String {
    let mut text = input.trim();
    for prefix in ["smtp;", "SMTP;", "X-Postfix;", "x-unix;", "X-Unix;"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim_start();
        }
    }
    let is_code = |w: &str| {
        w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()) && matches!(w.as_bytes()[0], b'2' | b'4' | b'5')
    };
    let mut out = String::with_capacity(text.len());
    let mut first_code: Option<&str> = None;
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if !out.is_empty() {
            // `550-5.7.1` or `550 5.7.1` after the start: a continuation prefix, dropped.
            // (The digit test first: most words are not codes, and it is cheaper than a split.)
            if word.as_bytes().first().is_some_and(u8::is_ascii_digit)
                && word.split_once('-').is_some_and(|(c, e)| is_code(c) && EnhancedStatus::parse(e).is_some())
            {
                continue;
            }
            if first_code == Some(word) && words.peek().is_some_and(|n| EnhancedStatus::parse(n).is_some()) {
                words.next();
                continue;
            }
            out.push(' ');
        }
        if first_code.is_none() && is_code(word.get(..3).unwrap_or(word)) {
            first_code = word.get(..3);
        }
        out.push_str(word);
    }
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_'
}

/// The first reply code standing alone (followed by a space, a hyphen, a colon or the end, and
/// not part of a longer number, an address or a `key=value`), with its byte offset. A failure
/// code (4xx, 5xx) is preferred over a success code anywhere before it.
fn find_code(text: &str) -> Option<(usize, u16)> {
    let bytes = text.as_bytes();
    let searchable = &bytes[..bytes.len().saturating_sub(2)];
    // Jump from one candidate first digit to the next (memchr's SIMD search) instead of
    // testing every byte.
    find_code_at(bytes, memchr::memchr2_iter(b'4', b'5', searchable))
        .or_else(|| find_code_at(bytes, memchr::memchr_iter(b'2', searchable)))
}

/// The first reply code starting at one of `candidates` (offsets of its first digit).
fn find_code_at(bytes: &[u8], mut candidates: impl Iterator<Item = usize>) -> Option<(usize, u16)> {
    candidates.find_map(|i| {
        let digits = &bytes[i..i + 3];
        if !(b'0'..=b'5').contains(&digits[1]) {
            return None;
        }
        let before_ok = i == 0 || !(is_word_byte(bytes[i - 1]) || bytes[i - 1] == b'=');
        let after_ok = bytes.get(i + 3).is_none_or(|b| matches!(b, b' ' | b'-' | b':' | b')'));
        (matches!(digits[0], b'2' | b'4' | b'5')
            && digits[1].is_ascii_digit()
            && digits[2].is_ascii_digit()
            && before_ok
            && after_ok)
            .then(|| {
                (i, u16::from(digits[0] - b'0') * 100 + u16::from(digits[1] - b'0') * 10 + u16::from(digits[2] - b'0'))
            })
    })
}

/// The first `class.subject.detail` standing alone (not inside an IP address or a version).
fn find_enhanced(text: &str) -> Option<(usize, usize, EnhancedStatus)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = matches!(bytes[i], b'2' | b'4' | b'5') && (i == 0 || !is_word_byte(bytes[i - 1]));
        if starts {
            let end =
                bytes[i..].iter().position(|b| !(b.is_ascii_digit() || *b == b'.')).map_or(bytes.len(), |p| i + p);
            let candidate = text[i..end].trim_end_matches('.');
            if let Some(status) = EnhancedStatus::parse(candidate) {
                return Some((i, i + candidate.len(), status));
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

/// Takes a response apart. `known_enhanced` is an enhanced code known from elsewhere (a DSN's
/// `Status:` field, a KumoMTA record) used when the text carries none.
#[must_use]
pub fn parse_response(input: &str, known_enhanced: Option<EnhancedStatus>) -> Response {
    let text = clean(input);
    let code = find_code(&text);
    let enhanced = find_enhanced(&text);
    let status = enhanced.map(|(_, _, s)| s).or(known_enhanced);
    let line = match (code, status) {
        // Already `code ...`: leave it exactly as KumoMTA would present it.
        (Some((0, code)), Some(s)) => match enhanced {
            // `550 5.1.1 text`, `550-5.1.1 text`: KumoMTA's own shape, `code enhanced text`.
            Some((start, end, _)) if start <= 5 => format!("{code} {s} {}", text[end..].trim_start()),
            _ => format!("{code} {s} {}", text[3..].trim_start_matches([' ', '-'])),
        },
        (Some((0, _)), None) => text,
        (Some((at, code)), Some(s)) => {
            // The reply is inside prose: put it first, keep everything after the code.
            let rest = &text[at + 3..];
            let rest = rest.trim_start_matches([' ', '-', ':']);
            let rest = match enhanced {
                Some((start, end, _)) if start > at && start <= at + 6 => text[end..].trim_start(),
                _ => rest,
            };
            format!("{code} {s} {rest} | {}", &text[..at])
        }
        (Some((at, code)), None) => {
            format!("{code} {} | {}", text[at + 3..].trim_start_matches([' ', '-', ':']), &text[..at])
        }
        (None, Some(s)) => match enhanced {
            Some((0, end, _)) => format!("{s} {}", text[end..].trim_start_matches([' ', '-'])),
            _ => text,
        },
        (None, None) => text,
    };
    Response { line: line.trim_end_matches([' ', '|']).to_owned(), code: code.map(|(_, c)| c), enhanced: status }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &str) -> (String, Option<u16>, Option<String>) {
        let r = parse_response(input, None);
        (r.line, r.code, r.enhanced.map(|e| e.to_string()))
    }

    #[test]
    fn kumomta_lines_are_left_as_they_are() {
        let line = "550 5.1.1 The email account that you tried to reach does not exist.";
        assert_eq!(parsed(line), (line.to_owned(), Some(550), Some("5.1.1".into())));
        assert_eq!(
            parsed("421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred - 4.16.55.1").2.as_deref(),
            Some("4.7.0")
        );
    }

    #[test]
    fn dsn_prefixes_and_hyphens_are_handled() {
        assert_eq!(parsed("smtp; 550-5.1.1 no such user").0, "550 5.1.1 no such user");
        assert_eq!(parsed("SMTP; 552 5.2.2 mailbox full").1, Some(552));
    }

    #[test]
    fn replies_inside_prose_are_moved_first() {
        let (line, code, enhanced) = parsed(
            "host mx.example.org[192.0.2.4] said: 450 4.1.1 <a@b>: Recipient address rejected (in reply to RCPT TO command)",
        );
        assert_eq!((code, enhanced.as_deref()), (Some(450), Some("4.1.1")));
        assert!(line.starts_with("450 4.1.1 <a@b>: Recipient address rejected"), "{line}");
        assert!(line.ends_with("| host mx.example.org[192.0.2.4] said:"), "{line}");
    }

    #[test]
    fn ip_addresses_and_versions_are_not_codes() {
        let (_, code, enhanced) = parsed("Connection to 192.0.2.25 timed out (Postfix 3.4.13)");
        assert_eq!((code, enhanced), (None, None));
        assert_eq!(parsed("sorry, no mailbox here by that name (#5.1.1 - chkusr)").2.as_deref(), Some("5.1.1"));
    }

    #[test]
    fn a_known_status_fills_in_for_a_missing_one() {
        let r = parse_response("550 sorry, no mailbox here by that name", EnhancedStatus::parse("5.1.1"));
        assert_eq!(r.line, "550 5.1.1 sorry, no mailbox here by that name");
        assert_eq!(r.permanent(), Some(true));
    }
}
