//! DMARC aggregate ("rua") report decoding: one report, as a receiver mails or posts it, into an
//! [`AggregateReport`].
//!
//! # Contract
//!
//! [`decode`] takes the bytes of one report and either returns the whole report or a
//! [`DmarcError`] that says why not; it never returns a partial report.
//!
//! * **Container.** Chosen by magic bytes, never by a file name or a MIME type, because reporters
//!   get both wrong: `1f 8b` is gzip; `PK\x03\x04` is zip, of which the first entry whose name ends
//!   in `.xml` (any case) is read, else the first entry that is a file; anything else is taken as
//!   XML text, with or without a UTF-8 byte-order mark. XML is read as UTF-8 whatever its
//!   declaration says (reports are ASCII in practice).
//! * **Size.** At most [`MAX_REPORT_BYTES`] of XML are ever produced, whatever a gzip or zip header
//!   claims: decompression reads through [`Read::take`] and stops one byte past the limit, so a
//!   decompression bomb costs at most about twice the limit in memory (the buffer's growth) and
//!   then fails with [`DmarcError::TooLarge`]. Plain XML over the limit is refused the same way, so
//!   the limit means one thing whatever the container.
//! * **Formats.** RFC 7489 Appendix C and DMARCbis (RFC 9990, namespace
//!   `urn:ietf:params:xml:ns:dmarc-2.0`). Elements are matched by local name, ASCII
//!   case-insensitively, so no namespace, a default namespace and a prefixed namespace all read
//!   the same. Attributes, unknown elements (`version`, `fo`, `np`, `extra_contact_info`,
//!   `discovery_method`, `error`, extensions) and the order of elements are ignored. DMARCbis
//!   `testing` (its `t=` tag) is also accepted as `t`.
//! * **Normalisation.** Every value is trimmed; an empty element counts as absent. Enumerated values
//!   (`p`, `sp`, `adkim`, `aspf`, `testing`, dispositions, results, `scope`, reason types) are
//!   lower-cased, so `Pass` reads as `pass`; they are not checked against the schema's
//!   enumerations, because new values appear (DMARCbis' sample has disposition `pass`). Free text
//!   (names, ids, domains, IPs, comments) is kept as written. `begin`/`end` are Unix seconds, or
//!   RFC 3339 from reporters who write dates.
//! * **Errors.** A byte that is not UTF-8, a document that is not well-formed, an entity other
//!   than XML's five and character references (no DTD is processed, so nothing is fetched or
//!   expanded), or a number or time that does not parse is [`DmarcError::Xml`] with the 1-based
//!   line and column (in characters) where it was found. A required element that is absent or
//!   empty is [`DmarcError::Missing`], naming it by its path under `feedback`. Required are the
//!   root `feedback`, `report_metadata/org_name`, `report_metadata/report_id`, both ends of
//!   `report_metadata/date_range`, `policy_published/domain`, and each record's `row/source_ip`
//!   and `row/count`. Every other field is optional here, even where the schema requires it; a
//!   required-by-schema string the reporter left out (`disposition`, `header_from`, an auth
//!   result's `domain` or `result`) reads as the empty string.
//! * **Trailing data.** Reading stops when the root element closes; anything after it is ignored,
//!   because mail gateways append footers and padding.

use std::borrow::Cow;
use std::io::{Cursor, Read};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesRef, Event};
use serde::Serialize;
use zip::ZipArchive;

/// The most XML bytes [`decode`] will hold for one report, after decompression. Real reports from
/// the largest receivers are a few MiB; 32 MiB leaves room for them and none for a bomb.
pub const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const UTF8_BOM: &[u8] = &[0xef, 0xbb, 0xbf];

/// One aggregate report: who sent it, the period and published policy it covers, and its rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateReport {
    pub org_name: String,
    pub email: Option<String>,
    pub report_id: String,
    pub begin: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub policy_domain: String,
    /// `p`: the policy published for the domain.
    pub policy: Option<String>,
    /// `sp`.
    pub subdomain_policy: Option<String>,
    pub adkim: Option<String>,
    pub aspf: Option<String>,
    pub pct: Option<u32>,
    /// DMARCbis `testing` (`t=`): `y` or `n`.
    pub testing: Option<String>,
    /// DMARCbis `report_metadata/generator`: the reporting software.
    pub generator: Option<String>,
    pub rows: Vec<ReportRow>,
}

/// One `<record>`: `count` messages from one source IP that were evaluated alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub source_ip: String,
    pub count: u64,
    /// What the receiver did: `none`, `quarantine`, `reject` (DMARCbis also `pass`).
    pub disposition: String,
    /// `policy_evaluated/dkim` is `pass`: DKIM passed *and* aligned with the header From.
    pub dkim_aligned: Option<bool>,
    /// `policy_evaluated/spf` is `pass`: SPF passed *and* aligned with the header From.
    pub spf_aligned: Option<bool>,
    pub header_from: String,
    pub envelope_from: Option<String>,
    pub envelope_to: Option<String>,
    /// Each `policy_evaluated/reason` as `type`, or `type: comment`.
    pub reasons: Vec<String>,
    /// Raw DKIM results, aligned or not, in document order.
    pub dkim: Vec<AuthResult>,
    /// Raw SPF results, aligned or not, in document order.
    pub spf: Vec<AuthResult>,
}

impl ReportRow {
    /// DMARC passes when either mechanism passed in alignment (RFC 7489 §6.6.2); unknown counts
    /// as not passing.
    #[must_use]
    pub fn dmarc_pass(&self) -> bool {
        self.dkim_aligned == Some(true) || self.spf_aligned == Some(true)
    }
}

/// One `auth_results/dkim` or `auth_results/spf` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthResult {
    pub domain: String,
    /// DKIM only.
    pub selector: Option<String>,
    /// SPF only: `mfrom` or `helo`.
    pub scope: Option<String>,
    pub result: String,
    pub human_result: Option<String>,
}

/// Why a report could not be decoded. The messages are written for the sender of the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmarcError {
    #[error("report is larger than {limit} bytes once decompressed")]
    TooLarge { limit: usize },
    #[error("unreadable report container: {0}")]
    Container(String),
    /// `line` and `column` are 1-based; `column` counts characters.
    #[error("malformed report XML at line {line}, column {column}: {reason}")]
    Xml { line: usize, column: usize, reason: String },
    /// The path, under `feedback`, of the required element that is absent or empty.
    #[error("report lacks required element {0}")]
    Missing(&'static str),
}

/// Decodes one aggregate report (plain XML, gzip or zip); see the module documentation for the
/// contract.
pub fn decode(bytes: &[u8]) -> Result<AggregateReport, DmarcError> {
    let xml = open_container(bytes)?;
    let xml = xml.strip_prefix(UTF8_BOM).unwrap_or(&xml);
    parse_report(xml)
}

fn open_container(bytes: &[u8]) -> Result<Cow<'_, [u8]>, DmarcError> {
    if bytes.starts_with(GZIP_MAGIC) {
        read_bounded(GzDecoder::new(bytes)).map_err(|error| error.in_container("gzip")).map(Cow::Owned)
    } else if bytes.starts_with(ZIP_MAGIC) {
        read_zip_report(bytes).map(Cow::Owned)
    } else if bytes.len() > MAX_REPORT_BYTES {
        Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES })
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}

fn read_zip_report(bytes: &[u8]) -> Result<Vec<u8>, DmarcError> {
    let zip_error = |error: zip::result::ZipError| DmarcError::Container(format!("zip: {error}"));
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    let mut first_file = None;
    let mut first_xml = None;
    for index in 0..archive.len() {
        // The raw view reads only the headers: choosing an entry must not inflate any.
        let entry = archive.by_index_raw(index).map_err(zip_error)?;
        if !entry.is_file() {
            continue;
        }
        first_file.get_or_insert(index);
        // A name that does not decode is simply not an `.xml` name; the entry may still be the report.
        if entry.name().is_ok_and(|name| name.to_ascii_lowercase().ends_with(".xml")) {
            first_xml = Some(index);
            break;
        }
    }
    let index = first_xml.or(first_file).ok_or_else(|| DmarcError::Container("zip archive holds no file".into()))?;
    let entry = archive.by_index(index).map_err(zip_error)?;
    // The declared size refuses an honest oversized entry before inflating anything; a lying one
    // is still stopped by `read_bounded`.
    if entry.size() > MAX_REPORT_BYTES as u64 {
        return Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES });
    }
    read_bounded(entry).map_err(|error| error.in_container("zip"))
}

/// Reads at most `MAX_REPORT_BYTES + 1` bytes: the extra byte is how an oversized stream is told
/// apart from one exactly at the limit.
fn read_bounded(reader: impl Read) -> Result<Vec<u8>, DmarcError> {
    let mut out = Vec::new();
    reader
        .take(MAX_REPORT_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|error| DmarcError::Container(error.to_string()))?;
    if out.len() > MAX_REPORT_BYTES {
        return Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES });
    }
    Ok(out)
}

impl DmarcError {
    fn in_container(self, container: &str) -> Self {
        match self {
            DmarcError::Container(reason) => DmarcError::Container(format!("{container}: {reason}")),
            other => other,
        }
    }
}

/// The elements the report schema uses, by local name; everything else is `Other`. Matching the
/// open-element stack against these paths reads the document in one streaming pass, whatever the
/// namespace prefix and whatever order the reporter wrote siblings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Feedback,
    ReportMetadata,
    OrgName,
    Email,
    ReportId,
    DateRange,
    Begin,
    End,
    Generator,
    PolicyPublished,
    Domain,
    P,
    Sp,
    Adkim,
    Aspf,
    Pct,
    Testing,
    Record,
    Row,
    SourceIp,
    Count,
    PolicyEvaluated,
    Disposition,
    Dkim,
    Spf,
    Reason,
    Type,
    Comment,
    Identifiers,
    HeaderFrom,
    EnvelopeFrom,
    EnvelopeTo,
    AuthResults,
    Selector,
    Scope,
    /// `result` inside `auth_results/dkim` or `auth_results/spf`.
    MechanismResult,
    HumanResult,
    Other,
}

impl Tag {
    fn from_local_name(name: &str) -> Tag {
        const NAMES: &[(&str, Tag)] = &[
            ("feedback", Tag::Feedback),
            ("report_metadata", Tag::ReportMetadata),
            ("org_name", Tag::OrgName),
            ("email", Tag::Email),
            ("report_id", Tag::ReportId),
            ("date_range", Tag::DateRange),
            ("begin", Tag::Begin),
            ("end", Tag::End),
            ("generator", Tag::Generator),
            ("policy_published", Tag::PolicyPublished),
            ("domain", Tag::Domain),
            ("p", Tag::P),
            ("sp", Tag::Sp),
            ("adkim", Tag::Adkim),
            ("aspf", Tag::Aspf),
            ("pct", Tag::Pct),
            ("testing", Tag::Testing),
            ("t", Tag::Testing),
            ("record", Tag::Record),
            ("row", Tag::Row),
            ("source_ip", Tag::SourceIp),
            ("count", Tag::Count),
            ("policy_evaluated", Tag::PolicyEvaluated),
            ("disposition", Tag::Disposition),
            ("dkim", Tag::Dkim),
            ("spf", Tag::Spf),
            ("reason", Tag::Reason),
            ("type", Tag::Type),
            ("comment", Tag::Comment),
            ("identifiers", Tag::Identifiers),
            ("header_from", Tag::HeaderFrom),
            ("envelope_from", Tag::EnvelopeFrom),
            ("envelope_to", Tag::EnvelopeTo),
            ("auth_results", Tag::AuthResults),
            ("selector", Tag::Selector),
            ("scope", Tag::Scope),
            ("result", Tag::MechanismResult),
            ("human_result", Tag::HumanResult),
        ];
        NAMES.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)).map_or(Tag::Other, |&(_, tag)| tag)
    }
}

/// What the reporter wrote, gathered while streaming; `finish` checks what is required.
#[derive(Debug, Default)]
struct ReportBuilder {
    org_name: Option<String>,
    email: Option<String>,
    report_id: Option<String>,
    begin: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    generator: Option<String>,
    policy_domain: Option<String>,
    policy: Option<String>,
    subdomain_policy: Option<String>,
    adkim: Option<String>,
    aspf: Option<String>,
    pct: Option<u32>,
    testing: Option<String>,
    rows: Vec<ReportRow>,
    record: Option<RecordBuilder>,
}

#[derive(Debug, Default)]
struct RecordBuilder {
    source_ip: Option<String>,
    count: Option<u64>,
    disposition: Option<String>,
    dkim_aligned: Option<bool>,
    spf_aligned: Option<bool>,
    header_from: Option<String>,
    envelope_from: Option<String>,
    envelope_to: Option<String>,
    reasons: Vec<String>,
    reason: Option<ReasonBuilder>,
    dkim: Vec<AuthResult>,
    spf: Vec<AuthResult>,
    auth_result: Option<AuthResult>,
}

#[derive(Debug, Default)]
struct ReasonBuilder {
    kind: Option<String>,
    comment: Option<String>,
}

impl RecordBuilder {
    /// `Err` names the required field that is absent.
    fn finish(self) -> Result<ReportRow, &'static str> {
        Ok(ReportRow {
            source_ip: self.source_ip.ok_or("record/row/source_ip")?,
            count: self.count.ok_or("record/row/count")?,
            disposition: self.disposition.unwrap_or_default(),
            dkim_aligned: self.dkim_aligned,
            spf_aligned: self.spf_aligned,
            header_from: self.header_from.unwrap_or_default(),
            envelope_from: self.envelope_from,
            envelope_to: self.envelope_to,
            reasons: self.reasons,
            dkim: self.dkim,
            spf: self.spf,
        })
    }
}

impl ReasonBuilder {
    fn finish(self) -> Option<String> {
        match (self.kind, self.comment) {
            (Some(kind), Some(comment)) => Some(format!("{kind}: {comment}")),
            (Some(kind), None) => Some(kind),
            // A comment with no type still tells the domain owner something.
            (None, comment) => comment,
        }
    }
}

fn empty_auth_result() -> AuthResult {
    AuthResult { domain: String::new(), selector: None, scope: None, result: String::new(), human_result: None }
}

impl ReportBuilder {
    /// Called with the stack of open elements, the new one last.
    fn open(&mut self, path: &[Tag]) {
        use Tag::*;
        match path {
            [Feedback, Record] => self.record = Some(RecordBuilder::default()),
            [Feedback, Record, Row, PolicyEvaluated, Reason] => self.record().reason = Some(ReasonBuilder::default()),
            [Feedback, Record, AuthResults, Dkim | Spf] => self.record().auth_result = Some(empty_auth_result()),
            _ => {}
        }
    }

    /// Called with the stack of open elements, the closing one last, and its trimmed text.
    fn close(&mut self, path: &[Tag], text: &str) -> Result<(), CloseError> {
        use Tag::*;
        let value = (!text.is_empty()).then(|| text.to_owned());
        let enumerated = || value.as_ref().map(|value| value.to_ascii_lowercase());
        match path {
            [Feedback, ReportMetadata, OrgName] => self.org_name = value,
            [Feedback, ReportMetadata, Email] => self.email = value,
            [Feedback, ReportMetadata, ReportId] => self.report_id = value,
            [Feedback, ReportMetadata, Generator] => self.generator = value,
            [Feedback, ReportMetadata, DateRange, Begin] => self.begin = parse_time(text)?,
            [Feedback, ReportMetadata, DateRange, End] => self.end = parse_time(text)?,
            [Feedback, PolicyPublished, Domain] => self.policy_domain = value,
            [Feedback, PolicyPublished, P] => self.policy = enumerated(),
            [Feedback, PolicyPublished, Sp] => self.subdomain_policy = enumerated(),
            [Feedback, PolicyPublished, Adkim] => self.adkim = enumerated(),
            [Feedback, PolicyPublished, Aspf] => self.aspf = enumerated(),
            [Feedback, PolicyPublished, Testing] => self.testing = enumerated(),
            [Feedback, PolicyPublished, Pct] => self.pct = parse_number(text)?,
            [Feedback, Record] => {
                if let Some(record) = self.record.take() {
                    self.rows.push(record.finish().map_err(CloseError::Missing)?);
                }
            }
            [Feedback, Record, rest @ ..] => {
                let record = self.record();
                match rest {
                    [Row, SourceIp] => record.source_ip = value,
                    [Row, Count] => record.count = parse_number(text)?,
                    [Row, PolicyEvaluated, Disposition] => record.disposition = enumerated(),
                    [Row, PolicyEvaluated, Dkim] => record.dkim_aligned = enumerated().map(|result| result == "pass"),
                    [Row, PolicyEvaluated, Spf] => record.spf_aligned = enumerated().map(|result| result == "pass"),
                    [Row, PolicyEvaluated, Reason] => {
                        if let Some(reason) = record.reason.take().and_then(ReasonBuilder::finish) {
                            record.reasons.push(reason);
                        }
                    }
                    [Row, PolicyEvaluated, Reason, Type] => record.reason().kind = enumerated(),
                    [Row, PolicyEvaluated, Reason, Comment] => record.reason().comment = value,
                    [Identifiers, HeaderFrom] => record.header_from = value,
                    [Identifiers, EnvelopeFrom] => record.envelope_from = value,
                    [Identifiers, EnvelopeTo] => record.envelope_to = value,
                    [AuthResults, mechanism @ (Dkim | Spf)] => {
                        let result = record.auth_result.take().unwrap_or_else(empty_auth_result);
                        if *mechanism == Dkim { record.dkim.push(result) } else { record.spf.push(result) }
                    }
                    [AuthResults, Dkim | Spf, field] => {
                        let result = record.auth_result.get_or_insert_with(empty_auth_result);
                        match field {
                            Domain => result.domain = value.unwrap_or_default(),
                            Selector => result.selector = value,
                            Scope => result.scope = enumerated(),
                            MechanismResult => result.result = enumerated().unwrap_or_default(),
                            HumanResult => result.human_result = value,
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn record(&mut self) -> &mut RecordBuilder {
        self.record.get_or_insert_with(RecordBuilder::default)
    }

    fn finish(self) -> Result<AggregateReport, DmarcError> {
        Ok(AggregateReport {
            org_name: self.org_name.ok_or(DmarcError::Missing("report_metadata/org_name"))?,
            email: self.email,
            report_id: self.report_id.ok_or(DmarcError::Missing("report_metadata/report_id"))?,
            begin: self.begin.ok_or(DmarcError::Missing("report_metadata/date_range/begin"))?,
            end: self.end.ok_or(DmarcError::Missing("report_metadata/date_range/end"))?,
            policy_domain: self.policy_domain.ok_or(DmarcError::Missing("policy_published/domain"))?,
            policy: self.policy,
            subdomain_policy: self.subdomain_policy,
            adkim: self.adkim,
            aspf: self.aspf,
            pct: self.pct,
            testing: self.testing,
            generator: self.generator,
            rows: self.rows,
        })
    }
}

impl RecordBuilder {
    fn reason(&mut self) -> &mut ReasonBuilder {
        self.reason.get_or_insert_with(ReasonBuilder::default)
    }
}

/// Why `ReportBuilder::close` refused an element; the caller turns it into a [`DmarcError`],
/// adding the position for a malformed value.
#[derive(Debug)]
enum CloseError {
    Malformed(String),
    Missing(&'static str),
}

impl From<String> for CloseError {
    fn from(reason: String) -> Self {
        CloseError::Malformed(reason)
    }
}

fn parse_number<T: std::str::FromStr>(text: &str) -> Result<Option<T>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| format!("`{text}` is not a non-negative integer in range"))
}

/// Unix seconds per RFC 7489; RFC 3339 for the reporters who write dates instead.
fn parse_time(text: &str) -> Result<Option<DateTime<Utc>>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let parsed = match text.parse::<i64>() {
        Ok(seconds) => DateTime::from_timestamp(seconds, 0),
        Err(_) => DateTime::parse_from_rfc3339(text).ok().map(|time| time.with_timezone(&Utc)),
    };
    parsed.map(Some).ok_or_else(|| format!("`{text}` is neither Unix seconds nor an RFC 3339 time"))
}

fn parse_report(xml: &[u8]) -> Result<AggregateReport, DmarcError> {
    // Checked up front so the error can point at the offending byte; quick-xml reports encoding
    // errors without a position.
    let xml = std::str::from_utf8(xml).map_err(|error| {
        let offset = error.valid_up_to();
        xml_error(xml, offset as u64, format!("byte 0x{:02X} is not UTF-8, which reports are read as", xml[offset]))
    })?;
    let mut reader = Reader::from_str(xml);
    // `<sp/>` then reads as an empty `<sp></sp>`: one code path for both.
    reader.config_mut().expand_empty_elements = true;

    let mut report = ReportBuilder::default();
    let mut path: Vec<Tag> = Vec::new();
    let mut text = String::new();
    // Where the innermost open element starts: a value that fails to parse is reported there.
    let mut element_start = 0;
    loop {
        let event_start = reader.buffer_position();
        let event = reader.read_event().map_err(|error| {
            // `error_position` points at the markup that failed, where quick-xml records one.
            xml_error(xml.as_bytes(), reader.error_position().max(event_start), error.to_string())
        })?;
        match event {
            Event::Start(start) => {
                let tag = Tag::from_local_name(start.local_name().as_ref());
                if path.is_empty() && tag != Tag::Feedback {
                    return Err(DmarcError::Missing("feedback"));
                }
                path.push(tag);
                report.open(&path);
                text.clear();
                element_start = event_start;
            }
            Event::Text(content) => text.push_str(&content.xml10_content()),
            Event::CData(content) => text.push_str(&content.xml10_content()),
            Event::GeneralRef(reference) => {
                let resolved =
                    resolve_reference(&reference).map_err(|reason| xml_error(xml.as_bytes(), event_start, reason))?;
                text.push(resolved);
            }
            Event::End(_) => {
                report.close(&path, text.trim()).map_err(|error| match error {
                    CloseError::Missing(path) => DmarcError::Missing(path),
                    CloseError::Malformed(reason) => xml_error(xml.as_bytes(), element_start, reason),
                })?;
                text.clear();
                path.pop();
                if path.is_empty() {
                    break;
                }
            }
            Event::Eof => {
                let reason = match path.last() {
                    None => "the document has no root element".to_owned(),
                    Some(_) => format!("the document ends with {} element(s) still open", path.len()),
                };
                return Err(xml_error(xml.as_bytes(), reader.buffer_position(), reason));
            }
            // Declarations, comments, processing instructions and DOCTYPE carry no report data.
            _ => {}
        }
    }
    report.finish()
}

fn resolve_reference(reference: &BytesRef<'_>) -> Result<char, String> {
    if let Some(character) = reference.resolve_char_ref().map_err(|error| error.to_string())? {
        return Ok(character);
    }
    resolve_predefined_entity(reference)
        .and_then(|replacement| replacement.chars().next())
        .ok_or_else(|| format!("unknown entity `&{};`", &**reference))
}

fn xml_error(xml: &[u8], offset: u64, reason: String) -> DmarcError {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(xml.len());
    let before = &xml[..offset];
    let line_start = before.iter().rposition(|&byte| byte == b'\n').map_or(0, |newline| newline + 1);
    DmarcError::Xml {
        line: before.iter().filter(|&&byte| byte == b'\n').count() + 1,
        column: String::from_utf8_lossy(&before[line_start..]).chars().count() + 1,
        reason,
    }
}

/// One `dmarc_report` event per row of `report`: `sending_ip` the row's source IP,
/// `sender_domain` its header From domain, `message_count` its count, the DMARC verdicts and
/// disposition, `source_node` the reporting organisation, `report_id` the report's id,
/// `occurred_at` the end of the report's period. `raw` holds the row as JSON with the report's
/// metadata, so the auth results (DKIM selectors and domains, SPF scopes) stay readable.
///
/// The `event_id` is hashed from the reporter, the report id and the row's position, so the
/// same report read twice (mailbox and upload, a re-sent report) is stored once.
#[must_use]
pub fn events(report: &AggregateReport, ingested_at: DateTime<Utc>) -> Vec<vigil_schemas::DeliveryEvent> {
    use vigil_schemas::{DeliveryEvent, EventKind, SourceKind};
    let verdict = |aligned: Option<bool>| aligned.map(|pass| if pass { "pass" } else { "fail" }.to_owned());
    report
        .rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let mut hasher = blake3::Hasher::new();
            for part in [report.org_name.as_str(), report.report_id.as_str(), &index.to_string()] {
                hasher.update(part.as_bytes());
                hasher.update(&[0]);
            }
            let id = hasher.finalize().to_hex()[..32].to_owned();
            let mut event = DeliveryEvent::new(id, SourceKind::Dmarc, EventKind::DmarcReport, report.end, ingested_at);
            event.source_node = Some(report.org_name.clone());
            event.source_type = Some("aggregate".into());
            event.report_id = Some(report.report_id.clone());
            event.sending_ip = Some(row.source_ip.clone());
            let from = row.header_from.trim().trim_end_matches('.').to_ascii_lowercase();
            event.sender_domain = Some(if from.is_empty() { report.policy_domain.to_ascii_lowercase() } else { from });
            event.message_count = Some(row.count);
            event.dmarc_disposition = Some(row.disposition.clone()).filter(|d| !d.is_empty());
            event.dmarc_dkim = verdict(row.dkim_aligned);
            event.dmarc_spf = verdict(row.spf_aligned);
            let raw = serde_json::json!({
                "org_name": report.org_name,
                "report_id": report.report_id,
                "begin": report.begin,
                "end": report.end,
                "policy_domain": report.policy_domain,
                "policy": report.policy,
                "row": row,
            });
            event.raw = Some(raw.to_string());
            event
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use chrono::TimeZone;
    use flate2::write::GzEncoder;
    use flate2::{Compress, Compression, FlushCompress};
    use zip::ZipWriter;
    use zip::write::SimpleFileOptions;

    use super::*;

    const OUTLOOK: &[u8] =
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/dmarc/parsedmarc_outlook_com_aggregate.xml"));
    const DMARCBIS: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/dmarc/parsedmarc_rfc9990_dmarcbis_sample.xml"
    ));

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// A zip holding `entries` in order; a name ending in `/` is a directory.
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1));
        for (name, contents) in entries {
            if name.ends_with('/') {
                writer.add_directory(*name, options).unwrap();
            } else {
                writer.start_file(*name, options).unwrap();
                writer.write_all(contents).unwrap();
            }
        }
        writer.finish().unwrap().into_inner()
    }

    fn utc(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    fn xml_error_line(result: Result<AggregateReport, DmarcError>) -> (usize, usize, String) {
        match result {
            Err(DmarcError::Xml { line, column, reason }) => (line, column, reason),
            other => panic!("expected an Xml error, got {other:?}"),
        }
    }

    /// A minimal valid report around `records`, for the leniency and error tests.
    fn report_with(records: &str) -> String {
        format!(
            "<feedback>\n<report_metadata><org_name>Org</org_name><report_id>id-1</report_id>\n\
             <date_range><begin>0</begin><end>86400</end></date_range></report_metadata>\n\
             <policy_published><domain>example.org</domain></policy_published>\n{records}\n</feedback>\n"
        )
    }

    #[test]
    fn outlook_report_reads_as_written() {
        let report = decode(OUTLOOK).unwrap();
        assert_eq!(report.org_name, "Outlook.com");
        assert_eq!(report.email.as_deref(), Some("dmarcreport@microsoft.com"));
        assert_eq!(report.report_id, "cfeafefe4129445e8c81018bd9177197");
        assert_eq!(report.begin, Utc.with_ymd_and_hms(2024, 3, 30, 0, 0, 0).unwrap());
        assert_eq!(report.end, Utc.with_ymd_and_hms(2024, 3, 31, 0, 0, 0).unwrap());
        assert_eq!(report.policy_domain, "example.com");
        assert_eq!(report.policy.as_deref(), Some("none"));
        assert_eq!(report.subdomain_policy.as_deref(), Some("none"));
        assert_eq!(report.adkim.as_deref(), Some("r"));
        assert_eq!(report.aspf.as_deref(), Some("r"));
        assert_eq!(report.pct, Some(100));
        assert_eq!(report.testing, None);
        assert_eq!(report.generator, None);
        assert_eq!(
            report.rows,
            vec![ReportRow {
                source_ip: "100.24.188.149".into(),
                count: 1,
                disposition: "none".into(),
                dkim_aligned: Some(false),
                spf_aligned: Some(false),
                header_from: "example.com".into(),
                envelope_from: Some("example.com".into()),
                envelope_to: Some("hotmail.com".into()),
                reasons: vec![],
                dkim: vec![],
                spf: vec![AuthResult {
                    domain: "example.com".into(),
                    selector: None,
                    scope: Some("mfrom".into()),
                    result: "fail".into(),
                    human_result: None,
                }],
            }]
        );
        assert!(!report.rows[0].dmarc_pass());
    }

    #[test]
    fn dmarcbis_report_in_its_default_namespace_reads_as_written() {
        let report = decode(DMARCBIS).unwrap();
        assert_eq!(report.org_name, "Sample Reporter");
        assert_eq!(report.email.as_deref(), Some("report_sender@example-reporter.com"));
        assert_eq!(report.report_id, "3v98abbp8ya9n3va8yr8oa3ya");
        assert_eq!(report.begin, Utc.with_ymd_and_hms(1979, 8, 7, 0, 0, 0).unwrap());
        assert_eq!(report.end, Utc.with_ymd_and_hms(1979, 8, 7, 23, 59, 59).unwrap());
        assert_eq!(report.policy_domain, "example.com");
        assert_eq!(report.policy.as_deref(), Some("quarantine"));
        assert_eq!(report.subdomain_policy.as_deref(), Some("none"));
        assert_eq!((report.adkim.as_deref(), report.aspf.as_deref(), report.pct), (None, None, None));
        assert_eq!(report.testing.as_deref(), Some("n"));
        assert_eq!(report.generator.as_deref(), Some("Example DMARC Aggregate Reporter v1.2"));
        assert_eq!(
            report.rows,
            vec![ReportRow {
                source_ip: "192.0.2.123".into(),
                count: 123,
                disposition: "pass".into(),
                dkim_aligned: Some(true),
                spf_aligned: Some(false),
                header_from: "example.com".into(),
                envelope_from: Some("example.com".into()),
                envelope_to: None,
                reasons: vec![],
                dkim: vec![AuthResult {
                    domain: "example.com".into(),
                    selector: Some("abc123".into()),
                    scope: None,
                    result: "pass".into(),
                    human_result: None,
                }],
                spf: vec![AuthResult {
                    domain: "example.com".into(),
                    selector: None,
                    scope: None,
                    result: "fail".into(),
                    human_result: None,
                }],
            }]
        );
        assert!(report.rows[0].dmarc_pass());
    }

    #[test]
    fn gzip_and_zip_decode_like_plain_xml() {
        for fixture in [OUTLOOK, DMARCBIS] {
            let plain = decode(fixture).unwrap();
            assert_eq!(decode(&gzip(fixture)).unwrap(), plain);
            assert_eq!(decode(&zip(&[("report.xml", fixture)])).unwrap(), plain);
        }
    }

    #[test]
    fn zip_prefers_the_first_xml_entry_then_the_first_file() {
        let expected = decode(OUTLOOK).unwrap();
        let xml_after_others =
            zip(&[("reports/", b""), ("README.txt", b"not xml"), ("r.XML", OUTLOOK), ("s.xml", DMARCBIS)]);
        assert_eq!(decode(&xml_after_others).unwrap(), expected);
        let no_xml_name = zip(&[("dir/", b""), ("report", OUTLOOK), ("other", DMARCBIS)]);
        assert_eq!(decode(&no_xml_name).unwrap(), expected);
    }

    #[test]
    fn broken_containers_are_container_errors() {
        assert!(matches!(decode(&zip(&[("only-a-directory/", b"")])), Err(DmarcError::Container(_))));
        assert!(matches!(decode(b"PK\x03\x04 this is no zip"), Err(DmarcError::Container(_))));
        let mut corrupt_gzip = gzip(OUTLOOK);
        corrupt_gzip.truncate(corrupt_gzip.len() / 2);
        assert!(matches!(decode(&corrupt_gzip), Err(DmarcError::Container(reason)) if reason.starts_with("gzip:")));
    }

    /// A gzip member claiming `mebibytes` MiB of zeros. One MiB is deflated up to a full flush,
    /// which leaves it byte-aligned and referring to nothing before it, so repeating it is a valid
    /// stream; compressing the whole bomb would take most of a minute in a debug build. The CRC in
    /// the trailer is deliberately wrong: a decoder that read to the end would fail on it instead
    /// of stopping at the limit.
    fn gzip_bomb(mebibytes: u32) -> Vec<u8> {
        let mut compressor = Compress::new(Compression::fast(), false);
        let mut mebibyte = Vec::with_capacity(64 * 1024);
        compressor.compress_vec(&vec![0; 1 << 20], &mut mebibyte, FlushCompress::Full).unwrap();
        assert_eq!(compressor.total_in(), 1 << 20);
        let mut final_block = Vec::with_capacity(64);
        compressor.compress_vec(&[], &mut final_block, FlushCompress::Finish).unwrap();

        let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        for _ in 0..mebibytes {
            bomb.extend_from_slice(&mebibyte);
        }
        bomb.extend_from_slice(&final_block);
        bomb.extend_from_slice(&0u32.to_le_bytes());
        bomb.extend_from_slice(&(mebibytes << 20).to_le_bytes());
        bomb
    }

    #[test]
    fn gzip_bomb_is_too_large() {
        let bomb = gzip_bomb(100);
        assert!(bomb.len() < 2 * 1024 * 1024, "a bomb is small: {} bytes", bomb.len());
        assert_eq!(decode(&bomb), Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES }));
        // The same construction under the limit inflates in full and fails on the wrong CRC, so
        // the bomb above was stopped by the bound and not by the corrupt trailer.
        assert!(matches!(decode(&gzip_bomb(1)), Err(DmarcError::Container(reason)) if reason.contains("gzip")));
    }

    #[test]
    fn zip_entry_declared_larger_than_the_limit_is_refused_before_inflating() {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        writer.start_file("report.xml", stored).unwrap();
        writer.write_all(&vec![b' '; MAX_REPORT_BYTES + 1]).unwrap();
        let oversized = writer.finish().unwrap().into_inner();
        assert_eq!(decode(&oversized), Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES }));
    }

    #[test]
    fn bounded_read_stops_on_an_endless_stream() {
        // Would never return if the bound were not applied to the stream itself.
        assert_eq!(read_bounded(std::io::repeat(b'<')), Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES }));
        assert_eq!(read_bounded(std::io::repeat(b'<').take(MAX_REPORT_BYTES as u64)).unwrap().len(), MAX_REPORT_BYTES);
    }

    #[test]
    fn oversized_plain_xml_is_too_large() {
        let mut huge = report_with("").into_bytes();
        huge.resize(MAX_REPORT_BYTES + 1, b' ');
        assert_eq!(decode(&huge), Err(DmarcError::TooLarge { limit: MAX_REPORT_BYTES }));
    }

    #[test]
    fn mismatched_end_tag_reports_its_line_and_column() {
        let broken = String::from_utf8(OUTLOOK.to_vec()).unwrap().replace("<count>1</count>", "<count>1</cuont>");
        let (line, column, reason) = xml_error_line(decode(broken.as_bytes()));
        // <count> is on line 25 of the fixture, indented by six spaces; `</cuont>` starts at column 15.
        assert_eq!((line, column), (25, 15), "{reason}");
        assert!(reason.contains("cuont"), "{reason}");
    }

    #[test]
    fn truncated_xml_reports_the_line_it_stops_on() {
        // Cut inside the `<result>` tag on line 41.
        let cut = OUTLOOK.windows(10).position(|window| window == b"<result>fa").unwrap() + 4;
        let (line, column, _) = xml_error_line(decode(&OUTLOOK[..cut]));
        assert_eq!((line, column), (41, 9));

        // Cut between elements: everything is well-formed but `</feedback>` never comes.
        let cut = OUTLOOK.windows(9).position(|window| window == b"</record>").unwrap();
        let (line, _, reason) = xml_error_line(decode(&OUTLOOK[..cut]));
        assert_eq!(line, 44);
        assert!(reason.contains("still open"), "{reason}");
    }

    #[test]
    fn malformed_values_report_the_element_line() {
        let records = "<record><row><source_ip>192.0.2.1</source_ip>\n<count>lots</count></row></record>";
        let (line, column, reason) = xml_error_line(decode(report_with(records).as_bytes()));
        assert_eq!((line, column), (6, 1));
        assert!(reason.contains("lots"), "{reason}");

        let bad_date = report_with("").replace("<begin>0</begin>", "<begin>yesterday</begin>");
        assert_eq!(xml_error_line(decode(bad_date.as_bytes())).0, 3);

        let unknown_entity = report_with("").replace("Org<", "Org &nbsp;<");
        let (line, _, reason) = xml_error_line(decode(unknown_entity.as_bytes()));
        assert_eq!(line, 2);
        assert!(reason.contains("nbsp"), "{reason}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_located() {
        let mut latin1 = OUTLOOK.to_vec();
        let at = latin1.windows(7).position(|window| window == b"Outlook").unwrap();
        latin1[at] = 0xe9;
        let (line, column, reason) = xml_error_line(decode(&latin1));
        assert_eq!((line, column), (5, 15));
        assert!(reason.contains("0xE9"), "{reason}");
    }

    #[test]
    fn not_xml_at_all_is_an_xml_error() {
        assert_eq!(xml_error_line(decode(b"")).0, 1);
        assert_eq!(xml_error_line(decode(b"hello\nworld")).0, 2);
    }

    #[test]
    fn documents_that_are_not_reports_are_missing_fields() {
        assert_eq!(decode(b"<html><body>hello</body></html>"), Err(DmarcError::Missing("feedback")));
        assert_eq!(
            decode(b"<feedback><version>1.0</version></feedback>"),
            Err(DmarcError::Missing("report_metadata/org_name"))
        );
        let no_id = report_with("").replace("<report_id>id-1</report_id>", "<report_id>  </report_id>");
        assert_eq!(decode(no_id.as_bytes()), Err(DmarcError::Missing("report_metadata/report_id")));
        let no_end = report_with("").replace("<end>86400</end>", "");
        assert_eq!(decode(no_end.as_bytes()), Err(DmarcError::Missing("report_metadata/date_range/end")));
        let no_domain = report_with("").replace("<domain>example.org</domain>", "");
        assert_eq!(decode(no_domain.as_bytes()), Err(DmarcError::Missing("policy_published/domain")));
        let no_count = report_with("<record><row><source_ip>192.0.2.1</source_ip></row></record>");
        assert_eq!(decode(no_count.as_bytes()), Err(DmarcError::Missing("record/row/count")));
        let no_ip = report_with("<record><row><count>3</count></row></record>");
        assert_eq!(decode(no_ip.as_bytes()), Err(DmarcError::Missing("record/row/source_ip")));
    }

    #[test]
    fn sloppy_reports_are_read_leniently() {
        let records = "
            <record>
              <row>
                <source_ip> 2001:db8::1 </source_ip>
                <count>
                  7
                </count>
                <policy_evaluated>
                  <disposition>Quarantine</disposition>
                  <dkim>FAIL</dkim>
                  <spf> Pass </spf>
                  <reason><type>Forwarded</type><comment>list &amp; relay</comment></reason>
                  <reason><type>local_policy</type></reason>
                </policy_evaluated>
              </row>
              <identifiers><header_from>Example.ORG</header_from></identifiers>
              <auth_results>
                <dkim><domain>a.example</domain><selector>s1</selector><result>Pass</result>
                  <human_result><![CDATA[good <sig>]]></human_result></dkim>
                <spf><domain>example.org</domain><scope>MFROM</scope><result>SoftFail</result></spf>
                <dkim><domain>b.example</domain><result>neutral</result></dkim>
              </auth_results>
            </record>
            <record><row><source_ip>192.0.2.9</source_ip><count>2</count><policy_evaluated/></row></record>";
        let sloppy = report_with(records)
            .replace(
                "<domain>example.org</domain></policy_published>",
                "<domain>example.org</domain><p>REJECT</p><sp/><pct> 50 </pct></policy_published>",
            )
            .replace("<begin>0</begin>", "<begin> 2024-03-30T00:00:00Z </begin>");
        let mut with_bom = UTF8_BOM.to_vec();
        with_bom.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        with_bom.extend_from_slice(sloppy.as_bytes());
        with_bom.extend_from_slice(b"\n-- \nsent by a mail gateway footer <unclosed");

        let report = decode(&with_bom).unwrap();
        assert_eq!(report.begin, utc(1_711_756_800));
        assert_eq!(report.end, utc(86_400));
        assert_eq!(
            (report.policy.as_deref(), report.subdomain_policy.as_deref(), report.pct),
            (Some("reject"), None, Some(50))
        );
        assert_eq!(report.rows.len(), 2);
        let row = &report.rows[0];
        assert_eq!((row.source_ip.as_str(), row.count, row.disposition.as_str()), ("2001:db8::1", 7, "quarantine"));
        assert_eq!((row.dkim_aligned, row.spf_aligned), (Some(false), Some(true)));
        assert!(row.dmarc_pass());
        assert_eq!(row.reasons, ["forwarded: list & relay", "local_policy"]);
        assert_eq!(row.header_from, "Example.ORG");
        assert_eq!(row.envelope_from, None);
        let dkim: Vec<_> = row.dkim.iter().map(|result| (result.domain.as_str(), result.result.as_str())).collect();
        assert_eq!(dkim, [("a.example", "pass"), ("b.example", "neutral")]);
        assert_eq!(row.dkim[0].human_result.as_deref(), Some("good <sig>"));
        assert_eq!((row.spf[0].scope.as_deref(), row.spf[0].result.as_str()), (Some("mfrom"), "softfail"));
        let bare = &report.rows[1];
        assert_eq!((bare.dkim_aligned, bare.spf_aligned, bare.disposition.as_str()), (None, None, ""));
        assert!(!bare.dmarc_pass());
    }

    #[test]
    fn namespace_prefixes_do_not_matter() {
        let prefixed = String::from_utf8(DMARCBIS.to_vec())
            .unwrap()
            .replace("<feedback xmlns=", "<feedback xmlns:d=")
            .replace("</", "</d:")
            .replace('<', "<d:")
            .replace("<d:/d:", "</d:");
        assert!(prefixed.starts_with("<d:feedback xmlns:d="), "{prefixed}");
        assert_eq!(decode(prefixed.as_bytes()).unwrap(), decode(DMARCBIS).unwrap());
    }

    #[test]
    fn errors_read_well_for_the_sender() {
        let error = DmarcError::Xml { line: 3, column: 7, reason: "bad".into() };
        assert_eq!(error.to_string(), "malformed report XML at line 3, column 7: bad");
        assert_eq!(
            DmarcError::Missing("policy_published/domain").to_string(),
            "report lacks required element policy_published/domain"
        );
    }
}
