//! Provider reputation signals recognised by their wording.
//!
//! Mailbox providers say in their replies when they are unhappy with a sender, each in its
//! own fixed words. These are not bounce classes (a Yahoo TSS04 deferral is also a
//! `TransientFailure`): they are counted as their own metric so an analyst sees "Yahoo is
//! rate-limiting ip-3" rather than "some deferrals". Each pattern is a provider's published or
//! long-stable wording; the first that matches names the signal.

use regex::RegexSet;

/// (signal name, pattern). Matched case-insensitively against the response line (code,
/// enhanced code and text).
const SIGNALS: &[(&str, &str)] = &[
    // Gmail: "Our system has detected an unusual rate of unsolicited mail" (4.7.28 / 5.7.28).
    ("gmail_rate_limited", r"[45]\.7\.28\b|unusual rate of unsolicited"),
    // Gmail: the message is not authenticated as its bulk sender guidelines require.
    ("gmail_unauthenticated", r"[45]\.7\.2[67]\b.*(?:gmail|google|authenticat|dmarc|spf|dkim)"),
    // Gmail: "likely unsolicited mail" (5.7.1 policy block).
    ("gmail_unsolicited", r"likely unsolicited mail"),
    // Gmail: "suspicious due to the very low reputation of the sending IP address / domain"
    // (421 4.7.0 rate limited, 550 5.7.1 blocked). Source: Gmail's SMTP error reference,
    // support.google.com/a/answer/3726730.
    ("gmail_low_reputation", r"very low reputation of the sending (?:ip|domain)"),
    // Gmail: the From: domain is not aligned with SPF or DKIM (4.7.32 / 5.7.32), or has no
    // DMARC record (4.7.40 / 5.7.40). Same source.
    ("gmail_dmarc", r"[45]\.7\.(?:32|40)\b|isn.t aligned with either the authenticated spf or dkim"),
    // Yahoo / AOL: temporary deferral codes for excessive complaints or volume.
    ("yahoo_tss04", r"\bTSS04\b"),
    ("yahoo_tss05", r"\bTSS05\b"),
    ("yahoo_tss09", r"\bTSS09\b"),
    // Yahoo / AOL: "[TS01]" / "[TS02]" / "[TS03]" deferrals and blocks for the sending IP's
    // behaviour (help.yahoo.com SLN3434, SLN3436), and 554 5.7.9 "Message not accepted for
    // policy reasons" for a failed DMARC policy (SLN7253).
    ("yahoo_ts", r"\[TS0[1-3]\]"),
    ("yahoo_dmarc", r"\b554[ -]5\.7\.9\b"),
    // Microsoft consumer: IP blocked for reputation (S3140 / S3150), banned IPs.
    ("microsoft_s3140", r"\bS3140\b"),
    ("microsoft_s3150", r"\bS3150\b"),
    ("microsoft_banned_ip", r"banned sending ip"),
    // Microsoft: "451 4.7.500 Server busy. Please try again later from [IP]. (S77719)" (or
    // (AS843)): a throttle on the sending IP, the S775xx/S777xx family being Microsoft's own
    // rule ids (wordtothewise.com/2017/10/troubleshooting-and-codes; the reply as observed from
    // outlook.com, which issue 20 quotes).
    ("microsoft_server_busy", r"4\.7\.500\b.*server busy|\bS77\d{3}\b"),
    // Outlook.com: RP- (rate limited for reputation), SC- (blocked for policy or reputation),
    // DY- (dynamic or compromised IP) and OU- (block list) codes, from the Outlook.com
    // postmaster's troubleshooting page (sendersupport.olc.protection.outlook.com/pm/troubleshooting.aspx).
    ("outlook_rate_limited", r"\bRP-00[1-3]\b"),
    ("outlook_blocked", r"\b(?:SC|DY|OU)-00[1-4]\b"),
    // Comcast: rate limiting (RL000001 ...) and block list (BL000000 ...).
    ("comcast_rate_limited", r"\bRL0000\d*\b"),
    ("comcast_blocked", r"\bBL0000\d*\b"),
    // Apple iCloud: "blocked due to ... policy" with a CS01 reference.
    ("apple_blocked", r"\bCS01\b"),
    // Public block lists quoted in a refusal.
    (
        "blocklist_listed",
        r"spamhaus|spamcop\.net|barracudacentral|b\.barracudacentral|sorbs\.net|bl\.mailspike|psbl\.surriel",
    ),
];

/// The compiled signal patterns.
#[derive(Debug, Clone)]
pub struct SignalMatcher {
    set: RegexSet,
}

impl Default for SignalMatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl SignalMatcher {
    /// # Panics
    /// Never: the patterns are constant and tested.
    #[must_use]
    pub fn new() -> Self {
        let set = regex::RegexSetBuilder::new(SIGNALS.iter().map(|(_, p)| p))
            .case_insensitive(true)
            .build()
            .expect("signal patterns compile");
        Self { set }
    }

    /// The first signal the response line carries.
    #[must_use]
    pub fn find(&self, line: &str) -> Option<&'static str> {
        self.set.matches(line).iter().next().map(|i| SIGNALS[i].0)
    }

    /// Every signal name, for documentation and the API.
    pub fn names() -> impl Iterator<Item = &'static str> {
        SIGNALS.iter().map(|(name, _)| *name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_wordings_name_their_signal() {
        let m = SignalMatcher::new();
        let cases = [
            ("421 4.7.28 [1.2.3.4] Our system has detected an unusual rate of unsolicited mail", "gmail_rate_limited"),
            ("550 5.7.26 This mail is unauthenticated, which poses a security risk. gmail", "gmail_unauthenticated"),
            ("421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred", "yahoo_tss04"),
            ("421 4.7.0 [TSS09] All messages from 1.2.3.4 will be permanently deferred", "yahoo_tss09"),
            ("550 5.7.1 Unfortunately, messages from [1.2.3.4] weren't sent. (S3140)", "microsoft_s3140"),
            ("550 5.7.1 Service unavailable, Client host [1.2.3.4] blocked using Spamhaus", "blocklist_listed"),
            ("554 ... Part of their network is on our block list (S3150)", "microsoft_s3150"),
            ("550 5.7.511 Access denied, banned sending IP [1.2.3.4]", "microsoft_banned_ip"),
            ("421 RL000001 Too many connections from 1.2.3.4", "comcast_rate_limited"),
            // The references' own wording (see the sources beside each pattern).
            (
                "421 4.7.0 This message is suspicious due to the very low reputation of the sending IP address. To protect our users from spam, email sent from your IP address has been temporarily rate limited.",
                "gmail_low_reputation",
            ),
            (
                "550 5.7.1 This message is likely suspicious due to the very low reputation of the sending domain.",
                "gmail_low_reputation",
            ),
            (
                "421 4.7.32 Your email has been rate limited because the From: header (RFC5322) in this message isn't aligned with either the authenticated SPF or DKIM organizational domain.",
                "gmail_dmarc",
            ),
            ("421 4.7.0 [TS01] Messages from 1.2.3.4 temporarily deferred due to user complaints", "yahoo_ts"),
            ("553 5.7.1 [TS03] All messages from 1.2.3.4 will be permanently deferred", "yahoo_ts"),
            ("554 5.7.9 Message not accepted for policy reasons.", "yahoo_dmarc"),
            (
                "451 4.7.500 Server busy. Please try again later from [1.2.3.4]. (S77719) [Name=Protocol Filter Agent]",
                "microsoft_server_busy",
            ),
            ("451 4.7.500 Server busy. Please try again later from [1.2.3.4]. (AS843)", "microsoft_server_busy"),
            (
                "421 RP-001 (COL004-MC1F1) Unfortunately, some messages from 1.2.3.4 weren't sent. Please try again.",
                "outlook_rate_limited",
            ),
            ("550 SC-001 (BAY004-MC1F40) Unfortunately, messages from 1.2.3.4 weren't sent.", "outlook_blocked"),
            ("550 OU-001 (SNT004-MC1F51) Unfortunately, messages from 1.2.3.4 weren't sent.", "outlook_blocked"),
        ];
        for (line, signal) in cases {
            assert_eq!(m.find(line), Some(signal), "{line}");
        }
        assert_eq!(m.find("550 5.1.1 user unknown"), None);
        assert_eq!(m.find("250 ok TSS040"), None, "word boundaries");
    }
}
