//! The syslog header in front of an MTA's message: one parser for every line format, whether
//! the line came over a syslog socket or from a file a syslog daemon wrote.
//!
//! # Shapes read
//! - RFC 3164, with or without its priority: `<22>Dec  6 19:00:01 mx1 postfix/smtp[1234]: ...`
//!   (rsyslog's default forwarding template `RSYSLOG_TraditionalForwardFormat`, syslog-ng's
//!   `network()`/`udp()`/`tcp()` destinations) and `Dec  6 19:00:01 mx1 postfix/smtp[1234]: ...`
//!   (what both write to files). Day padded with a space or a zero, optional fractional
//!   seconds, an optional year before the time (`Dec  6 2026 19:00:01`), the host optional
//!   (`<13>Dec  6 19:00:01 postfix/smtp[1]: ...`, as local senders leave it out).
//! - RFC 3339 timestamps in the same place (rsyslog's high-precision `RSYSLOG_FileFormat` and
//!   `RSYSLOG_ForwardFormat`, syslog-ng's `ts-format(iso)`), with or without a priority.
//! - RFC 5424: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`, any field `-`, structured data
//!   with escaped `"`, `\` and `]` in its values, and the UTF-8 BOM before the message.
//! - A priority followed directly by the tag (`<13>postfix/smtp[1]: ...`).
//!
//! The tag is `program[pid]:` or `program:`. rsyslog's traditional templates cut the tag at 32
//! characters (`%syslogtag:1:32%`), which can remove the closing `]:`; such a cut tag is still
//! read as a program (the pid cut short) so Postfix egress mapping by program keeps working.
//!
//! # Times
//! RFC 3164 times carry neither year nor zone: the zone is the source's configured one
//! ([`lines::local_time`](crate::lines::local_time)), the year the one that puts the line
//! closest before the ingest time (a December line read in January belongs to last year). RFC
//! 3339 times without an offset are read in the configured zone too.
//!
//! # Why not a crate
//! `syslog_loose` (Vector's) was the candidate. It is loose by design: any text parses into
//! some message. The line formats here must tell a header from no header, because a file or a
//! shipper may carry lines without one (Exim's own main log, `2026-12-06 19:00:01 1abc-...`, and
//! Postfix message parts, `3D770111AF50: to=<...>`), and a line misread as a header loses its
//! first words. This parser accepts a header only when it is well formed, and says `None`
//! otherwise so the format reads the line as it is.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};

use crate::lines::{Zone, local_time};

/// The highest valid priority: facility 23 (local7), severity 7 (debug).
const MAX_PRIORITY: u16 = 191;

/// The parts of a syslog line. Borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// `<PRI>`: facility × 8 + severity, when the line has one.
    pub priority: Option<u8>,
    /// The header's time, in UTC; `None` for RFC 5424's `-`, or a priority-only header.
    pub at: Option<DateTime<Utc>>,
    pub host: Option<&'a str>,
    /// The tag's program (`postfix/smtp`), or RFC 5424's APP-NAME.
    pub program: Option<&'a str>,
    /// The tag's pid, or RFC 5424's PROCID.
    pub pid: Option<&'a str>,
    /// The message after the header: what the MTA itself wrote.
    pub message: &'a str,
}

/// Reads the syslog header of `line`. `now` (the ingest time) picks the year of RFC 3164
/// times, `zone` is the zone of times that carry none.
///
/// Returns `None` when `line` has no well-formed header: it is then the MTA's text alone.
#[must_use]
pub fn parse(line: &str, now: DateTime<Utc>, zone: Option<Zone>) -> Option<Header<'_>> {
    let line = line.trim_end_matches(['\r', '\n', '\0']);
    let (priority, rest) = match line.strip_prefix('<') {
        Some(after) => {
            let (pri, rest) = after.split_once('>')?;
            let valid = (1..=3).contains(&pri.len()) && pri.bytes().all(|b| b.is_ascii_digit());
            let pri: u16 = pri.parse().ok().filter(|p| valid && *p <= MAX_PRIORITY)?;
            (Some(u8::try_from(pri).ok()?), rest)
        }
        None => (None, line),
    };
    if priority.is_some()
        && let Some(rest) = rest.strip_prefix("1 ")
    {
        return rfc5424(priority, rest);
    }
    match timestamp(rest, now, zone) {
        Some((at, after)) => {
            let (host, after) = host(after);
            let (program, pid, message) = tag(after);
            Some(Header { priority, at: Some(at), host, program, pid, message })
        }
        // A priority makes it syslog even without a time: `<13>program[pid]: message`.
        None if priority.is_some() => {
            let (program, pid, message) = tag(rest);
            Some(Header { priority, at: None, host: None, program, pid, message })
        }
        None => None,
    }
}

/// `1 TIMESTAMP HOST APP PROCID MSGID SD [MSG]`, after `<PRI>1 `.
fn rfc5424(priority: Option<u8>, rest: &str) -> Option<Header<'_>> {
    let mut fields = rest.splitn(6, ' ');
    let stamp = fields.next()?;
    let at = match stamp {
        "-" => None,
        stamp => Some(DateTime::parse_from_rfc3339(stamp).ok()?.with_timezone(&Utc)),
    };
    let host = nil(fields.next()?);
    let program = nil(fields.next()?);
    let pid = nil(fields.next()?);
    let _message_id = fields.next()?;
    let rest = fields.next().unwrap_or("");
    let after_data = if let Some(after) = rest.strip_prefix('-') {
        after
    } else {
        structured_data_end(rest).map(|end| &rest[end..])?
    };
    let message = match after_data.strip_prefix(' ') {
        Some(message) => message,
        None if after_data.is_empty() => "",
        None => return None, // SD must end where the message starts
    };
    let message = message.strip_prefix('\u{FEFF}').unwrap_or(message);
    Some(Header { priority, at, host, program, pid, message })
}

/// RFC 5424's NILVALUE `-` as `None`.
fn nil(field: &str) -> Option<&str> {
    (field != "-" && !field.is_empty()).then_some(field)
}

/// Where one or more `[id param="value" ...]` elements end. Inside quotes `\"`, `\\` and `\]`
/// are escapes, so a `]` there does not close the element.
fn structured_data_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while bytes.get(at) == Some(&b'[') {
        let mut quoted = false;
        at += 1;
        loop {
            match *bytes.get(at)? {
                b'\\' if quoted => at += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
            at += 1;
        }
        at += 1;
    }
    (at > 0).then_some(at)
}

/// A timestamp at the start of `text` and what follows its space: RFC 3164's
/// `Mmm dd [yyyy ]hh:mm:ss[.frac]` or RFC 3339's `yyyy-mm-ddThh:mm:ss[.frac][offset]`.
fn timestamp(text: &str, now: DateTime<Utc>, zone: Option<Zone>) -> Option<(DateTime<Utc>, &str)> {
    if text.as_bytes().first()?.is_ascii_digit() {
        let (stamp, after) = text.split_once(' ')?;
        return Some((rfc3339(stamp, zone)?, after));
    }
    let month = month(text.get(..3)?)?;
    let rest = text[3..].strip_prefix(' ')?.trim_start_matches(' ');
    let (day, rest) = rest.split_once(' ')?;
    let day: u32 = day.parse().ok().filter(|_| (1..=2).contains(&day.len()))?;
    let (first, rest) = rest.split_once(' ')?;
    let (year, time, rest) = if first.len() == 4 && first.bytes().all(|b| b.is_ascii_digit()) {
        let (time, rest) = rest.split_once(' ')?;
        (Some(first.parse::<i32>().ok()?), time, rest)
    } else {
        (None, first, rest)
    };
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").ok()?;
    let at = |year| NaiveDate::from_ymd_opt(year, month, day).map(|d| local_time(&d.and_time(time), zone));
    let at = match year {
        Some(year) => at(year)?,
        // Logs are written before they are read: the year that puts the line before `now`
        // (a day's grace for clocks that disagree).
        None => match at(now.year()) {
            Some(this_year) if this_year <= now + TimeDelta::days(1) => this_year,
            _ => at(now.year() - 1)?,
        },
    };
    Some((at, rest))
}

/// An RFC 3339 time; without an offset (some senders leave it out) in `zone`.
fn rfc3339(stamp: &str, zone: Option<Zone>) -> Option<DateTime<Utc>> {
    if stamp.as_bytes().get(10) != Some(&b'T') && stamp.as_bytes().get(10) != Some(&b't') {
        return None; // `2026-12-06 19:00:01` is Exim's own line, not a syslog header
    }
    if let Ok(at) = DateTime::<FixedOffset>::parse_from_rfc3339(stamp) {
        return Some(at.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(local_time(&naive, zone))
}

fn month(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let position = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    u32::try_from(position + 1).ok()
}

/// The host before the tag, unless the first word is itself the tag (`program[pid]:`), as
/// when a local sender leaves the host out.
fn host(text: &str) -> (Option<&str>, &str) {
    let (word, after) = text.split_once(' ').unwrap_or((text, ""));
    let is_tag = word.ends_with(':') || word.contains('[');
    if word.is_empty() || is_tag { (None, text) } else { (Some(word), after) }
}

/// `program[pid]: message`, `program: message`, or a tag cut short by a 32-character template
/// (`program[12`); anything else is a message without a tag.
fn tag(text: &str) -> (Option<&str>, Option<&str>, &str) {
    let end = text.find([':', '[', ' ']).unwrap_or(text.len());
    let program = &text[..end];
    let rest = &text[end..];
    if program.is_empty() {
        return (None, None, text);
    }
    let (pid, rest) = match rest.strip_prefix('[') {
        Some(after) => {
            let close = after.find([']', ' ']).unwrap_or(after.len());
            let pid = &after[..close];
            (Some(pid).filter(|p| !p.is_empty()), after[close..].strip_prefix(']').unwrap_or(&after[close..]))
        }
        None => (None, rest),
    };
    let rest = match rest.strip_prefix(':') {
        Some(after) => after,
        None if pid.is_some() => rest,
        None => return (None, None, text), // a first word, not a tag
    };
    // rsyslog puts a space between tag and message when the message lacks one.
    (Some(program), pid, rest.strip_prefix(' ').unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn read(line: &str) -> Header<'_> {
        parse(line, now(), None).unwrap_or_else(|| panic!("no header in {line:?}"))
    }

    fn stamp(header: &Header<'_>) -> String {
        header.at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339())
    }

    /// The same Postfix message under every header shape rsyslog, syslog-ng and Postfix's own
    /// files give it.
    #[test]
    fn every_header_shape_gives_host_program_pid_and_message() {
        let message = "ABCDEF1234: to=<a@example.org>, status=sent (250 ok)";
        let shapes = [
            // rsyslog RSYSLOG_TraditionalForwardFormat and syslog-ng network(): RFC 3164 + PRI.
            (format!("<22>Dec  6 19:00:01 mx1 postfix/smtp[1234]: {message}"), "2026-12-06T19:00:01+00:00"),
            // The same in a file (RSYSLOG_TraditionalFileFormat).
            (format!("Dec  6 19:00:01 mx1 postfix/smtp[1234]: {message}"), "2026-12-06T19:00:01+00:00"),
            (format!("Dec 06 19:00:01 mx1 postfix/smtp[1234]: {message}"), "2026-12-06T19:00:01+00:00"),
            (format!("Dec  6 19:00:01.250 mx1 postfix/smtp[1234]: {message}"), "2026-12-06T19:00:01.250+00:00"),
            (format!("Dec  6 2025 19:00:01 mx1 postfix/smtp[1234]: {message}"), "2025-12-06T19:00:01+00:00"),
            // rsyslog high precision (RSYSLOG_FileFormat, RSYSLOG_ForwardFormat).
            (
                format!("2026-12-06T19:00:01.123456+01:00 mx1 postfix/smtp[1234]: {message}"),
                "2026-12-06T18:00:01.123456+00:00",
            ),
            (
                format!("<22>2026-12-06T19:00:01.123456+01:00 mx1 postfix/smtp[1234]: {message}"),
                "2026-12-06T18:00:01.123456+00:00",
            ),
            // RFC 5424 (RSYSLOG_SyslogProtocol23Format, syslog-ng syslog(), logger).
            (format!("<22>1 2026-12-06T19:00:01Z mx1 postfix/smtp 1234 - - {message}"), "2026-12-06T19:00:01+00:00"),
            (
                format!(
                    "<22>1 2026-12-06T19:00:01.5+00:00 mx1 postfix/smtp 1234 ID47 [timeQuality tzKnown=\"1\" isSynced=\"0\"][x@1 a=\"]\\\"[\"] \u{FEFF}{message}"
                ),
                "2026-12-06T19:00:01.500+00:00",
            ),
        ];
        for (line, at) in &shapes {
            let header = read(line);
            assert_eq!(
                (header.host, header.program, header.pid, header.message),
                (Some("mx1"), Some("postfix/smtp"), Some("1234"), message),
                "{line}"
            );
            assert_eq!(stamp(&header), *at, "{line}");
        }
        assert_eq!(read(&shapes[0].0).priority, Some(22));
        assert_eq!(read(&shapes[1].0).priority, None);
    }

    #[test]
    fn missing_parts_are_none() {
        let header = read("<22>1 - - - - - -");
        assert_eq!((header.at, header.host, header.program, header.pid, header.message), (None, None, None, None, ""));
        let header = read("<13>Dec  6 19:00:01 postfix/smtp[1]: hello");
        assert_eq!((header.host, header.program, header.message), (None, Some("postfix/smtp"), "hello"));
        let header = read("<13>postfix/smtp[1]: hello");
        assert_eq!(
            (header.at, header.host, header.program, header.message),
            (None, None, Some("postfix/smtp"), "hello")
        );
        let header = read("Dec  6 19:00:01 mx1 postfix/qmgr: hello");
        assert_eq!((header.program, header.pid, header.message), (Some("postfix/qmgr"), None, "hello"));
        let header = read("Dec  6 19:00:01 mx1 just some words");
        assert_eq!((header.host, header.program, header.message), (Some("mx1"), None, "just some words"));
    }

    #[test]
    fn tags_cut_at_32_characters_keep_their_program() {
        // `%syslogtag:1:32%` of `postfix-out1/smtp-ip1/smtp[123456]:`.
        let header = read("<22>Dec  6 19:00:01 mx1 postfix-out1/smtp-ip1/smtp[12345 ABCDEF: removed");
        assert_eq!(
            (header.program, header.pid, header.message),
            (Some("postfix-out1/smtp-ip1/smtp"), Some("12345"), "ABCDEF: removed")
        );
    }

    #[test]
    fn lines_without_a_header_are_none() {
        for line in [
            "2002-10-31 08:57:53 16ZCW1-0005MB-00 => a@b.example R=r T=t",
            "3D770111AF50: to=<a@b.c>, status=sent (250 ok)",
            "{\"type\":\"Delivery\"}",
            "d,2026-01-09 10:00:00+0000,a@b.c",
            "<500>Dec  6 19:00:01 mx1 x: y",
            "<22 Dec  6 19:00:01 mx1 x: y",
            "<22>1 not-a-time mx1 x - - y",
            "<22>1 2026-12-06T19:00:01Z mx1 x 1 - [unclosed y",
            "Dez  6 19:00:01 mx1 x: y",
            "",
        ] {
            assert_eq!(parse(line, now(), None), None, "{line}");
        }
    }

    #[test]
    fn times_without_a_zone_are_read_in_the_configured_one_and_the_year_is_inferred() {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        let at = |line: &str| parse(line, now(), Some(berlin)).unwrap().at.unwrap().to_rfc3339();
        assert_eq!(at("Jul  9 10:00:00 mx x: y"), "2026-07-09T08:00:00+00:00");
        assert_eq!(at("<22>Dec  6 19:00:01 mx x: y"), "2026-12-06T18:00:01+00:00");
        assert_eq!(at("2026-12-06T19:00:01 mx x: y"), "2026-12-06T18:00:01+00:00");
        // An explicit offset wins over the configured zone.
        assert_eq!(at("2026-12-06T19:00:01Z mx x: y"), "2026-12-06T19:00:01+00:00");
        // Read on 7 December 2026, a 27 December line is from 2025.
        assert_eq!(stamp(&read("Dec 27 02:38:54 mx x: y")), "2025-12-27T02:38:54+00:00");
        assert_eq!(stamp(&read("Dec  7 12:00:00 mx x: y")), "2026-12-07T12:00:00+00:00");
    }
}
