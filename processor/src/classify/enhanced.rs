//! The RFC 3463 enhanced status code alone -> class: the backbone under the text rules.
//!
//! The shipped KumoMTA files anchor most codes to particular basic codes
//! (`^(451|550) [45]\\.1\\.[1234] `); this table catches the same enhanced code behind any
//! basic code (`554 5.1.1`), or with no basic code at all (a DSN `Status:` field).

use vigil_schemas::BounceClass;

use super::response::EnhancedStatus;

/// The class an enhanced status code implies, if any.
#[must_use]
pub fn class_of(status: EnhancedStatus) -> Option<BounceClass> {
    if status.class != 4 && status.class != 5 {
        return None;
    }
    use BounceClass as C;
    Some(match (status.subject, status.detail) {
        (1, 1 | 3 | 4) => C::InvalidRecipient,
        (1, 2 | 10) => C::BadDomain,
        (1, 6) => C::InactiveMailbox,
        (1, 7 | 8) => C::InvalidSender,
        (2, 1) => C::InactiveMailbox,
        (2, 2 | 3) | (3, 1 | 4) => C::QuotaIssues,
        // X.3.2 "system not accepting network messages": for good when permanent, a system
        // shedding load when transient (Exchange, KumoMTA `4.3.2 ... load shedding`).
        (3, 2) if status.class == 4 => C::TransientFailure,
        (3, 2) => C::BadDomain,
        // X.3.0: "other or undefined mail system status": the receiving system's own trouble.
        (3, 0) if status.class == 4 => C::TransientFailure,
        (3, 0) => C::BadConfiguration,
        (4, 1) => C::NoAnswerFromHost,
        (4, 2) => C::BadConnection,
        (4, 3) => C::DNSFailure,
        (4, 4 | 6) => C::RoutingErrors,
        (4, 5) => C::TransientFailure,
        (4, 7) => C::MessageExpired,
        (5, 3) => C::TooManyRecipients,
        (5 | 6, _) => C::ProtocolErrors,
        (7, 13) => C::InactiveMailbox,
        (7, 17) => C::InvalidRecipient,
        (7, 18) => C::BadDomain,
        (7, 25) => C::InvalidSender,
        // IANA's registry (RFC 7372): X.7.20-22 no passing, acceptable or author-matched DKIM
        // signature, X.7.23-24 SPF, X.7.26 several checks; X.7.27 (null MX, RFC 7505) and
        // X.7.29-30 (ARC, REQUIRETLS) are what Gmail uses for SPF, TLS and DKIM failures; X.7.32
        // and X.7.40 are Gmail's DMARC alignment and missing-record codes
        // (support.google.com/a/answer/3726730).
        (7, 20..=24 | 26 | 27 | 29 | 30 | 32 | 40) => C::AuthenticationFailed,
        (7, _) => C::PolicyRelated,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_to_classes() {
        let class = |s: &str| class_of(EnhancedStatus::parse(s).unwrap());
        assert_eq!(class("5.1.1"), Some(BounceClass::InvalidRecipient));
        assert_eq!(class("4.4.7"), Some(BounceClass::MessageExpired));
        assert_eq!(class("5.7.26"), Some(BounceClass::AuthenticationFailed));
        // The DKIM codes of RFC 7372, and Gmail's DMARC ones.
        for code in ["5.7.20", "5.7.21", "5.7.22", "4.7.32", "5.7.40"] {
            assert_eq!(class(code), Some(BounceClass::AuthenticationFailed), "{code}");
        }
        assert_eq!(class("2.0.0"), None);
        assert_eq!(class("4.3.0"), Some(BounceClass::TransientFailure));
        assert_eq!(class("5.3.0"), Some(BounceClass::BadConfiguration));
        assert_eq!(class("4.3.2"), Some(BounceClass::TransientFailure));
        assert_eq!(class("5.3.2"), Some(BounceClass::BadDomain));
    }
}
