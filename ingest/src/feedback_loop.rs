//! Which feedback loop sent a complaint report.
//!
//! A report names its sender three ways: the `User-Agent` of the feedback report part, the
//! `Reporting-MTA`, and the host or address it came from. Providers are recognised by the
//! domain those end in (Yahoo and AOL share a platform and a `User-Agent`, so the domain
//! decides between them) and, when no domain is known, by the `User-Agent`. A loop not listed
//! here is left unnamed rather than guessed: the report's mailbox still says where it came.

/// (loop name, domains whose hosts and addresses send its reports), first match wins.
const BY_DOMAIN: &[(&str, &[&str])] = &[
    ("aol", &["aol.com", "aol.net"]),
    ("yahoo_cfl", &["yahoo.com", "yahoo.net", "yahoodns.net", "yahooinc.com"]),
    ("microsoft_jmrp", &["hotmail.com", "outlook.com", "live.com", "msn.com", "microsoft.com"]),
    ("comcast", &["comcast.net"]),
    ("validity_ufbl", &["returnpath.net", "validity.com"]),
    ("fastmail", &["fastmail.com", "messagingengine.com"]),
    ("zoho", &["zoho.com", "zohomail.com"]),
    ("mail_ru", &["mail.ru"]),
    ("yandex", &["yandex.ru", "yandex.net", "yandex.com"]),
    ("united_internet", &["gmx.net", "gmx.com", "web.de", "mail.com"]),
    ("cox", &["cox.net"]),
    ("rackspace", &["emailsrvr.com"]),
    ("seznam", &["seznam.cz"]),
    ("italiaonline", &["libero.it", "italiaonline.it"]),
    ("swisscom", &["bluewin.ch", "swisscom.ch"]),
    ("xs4all", &["xs4all.nl"]),
];

/// (loop name, text its `User-Agent` contains), case-insensitive, when no domain matched.
const BY_USER_AGENT: &[(&str, &str)] = &[
    ("microsoft_jmrp", "jmrp"),
    ("yahoo_cfl", "yahoo!-mail-feedback"),
    ("validity_ufbl", "returnpathfbl"),
    ("yandex", "yandex"),
    ("mail_ru", "mail.ru"),
];

/// The loop that sent a report, from its `User-Agent` and the names it came from (reporting
/// host, `Reporting-MTA`, the sender's address or domain), in any order.
#[must_use]
pub fn recognise<'a>(user_agent: Option<&str>, names: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    for name in names {
        let domain = name.rsplit('@').next().unwrap_or(name).trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            continue;
        }
        let within = |suffix: &str| domain == suffix || domain.strip_suffix(suffix).is_some_and(|h| h.ends_with('.'));
        if let Some((loop_name, _)) = BY_DOMAIN.iter().find(|(_, domains)| domains.iter().any(|d| within(d))) {
            return Some(loop_name);
        }
    }
    let agent = user_agent?.to_ascii_lowercase();
    BY_USER_AGENT.iter().find(|(_, text)| agent.contains(text)).map(|(loop_name, _)| *loop_name)
}

#[cfg(test)]
mod tests {
    use super::recognise;

    #[test]
    fn loops_are_told_apart_by_domain_first() {
        let yahoo_agent = Some("Yahoo!-Mail-Feedback/2.0");
        assert_eq!(recognise(yahoo_agent, ["mta1.feedback.yahoo.com"]), Some("yahoo_cfl"));
        assert_eq!(recognise(yahoo_agent, ["mta2.feedback.aol.com"]), Some("aol"), "AOL shares Yahoo's agent");
        assert_eq!(recognise(Some("Microsoft JMRP"), ["", "staff@hotmail.com"]), Some("microsoft_jmrp"));
        assert_eq!(recognise(None, ["BY2PR01MB123.namprd01.prod.OUTLOOK.COM."]), Some("microsoft_jmrp"));
        assert_eq!(recognise(Some("x"), ["feedback@comcast.net"]), Some("comcast"));
        assert_eq!(recognise(yahoo_agent, ["relay.unknown.example"]), Some("yahoo_cfl"), "the agent when no domain");
        assert_eq!(recognise(Some("SomeGenerator/1.0"), ["mail.reporter.example.net"]), None);
        assert_eq!(recognise(None, ["notyahoo.com"]), None, "a suffix only matches at a label");
    }
}
