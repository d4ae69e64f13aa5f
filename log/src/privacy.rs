//! What the log keeps of recipients' addresses (`[privacy] recipients`), applied to every
//! event and dead letter before anything is written, the raw record included.
//!
//! - `keep`: addresses as they came.
//! - `hash`: every address becomes `<HMAC-SHA256(key, address in lower case), 32 hex>@<domain>`:
//!   the same person always gets the same pseudonym, so counts, suppressions and per-domain
//!   views still work, and nobody without the key can tell who it is.
//! - `domain`: every address becomes `@<domain>`: per-domain and per-provider views work,
//!   nothing is known of the person (suppressions are not kept).
//!
//! Every address in the stored JSON is rewritten, wherever it appears (the recipient, the
//! sender, a reply quoting the address, the raw record, a dead letter's bytes): a VERP sender
//! carries its recipient, and a bounce text often quotes it, so rewriting only the recipient
//! field would leave copies behind. Rewriting the JSON text is safe: an address holds no
//! quote or backslash, and the replacement holds neither.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use hmac::{Hmac, Mac};
use regex::bytes::Regex;
use sha2::Sha256;

/// How recipients' addresses are kept.
#[derive(Clone, Default)]
pub enum RecipientPrivacy {
    #[default]
    Keep,
    /// Keyed pseudonyms; the key never appears in logs or `Debug`.
    Hash(Arc<[u8]>),
    Domain,
}

impl std::fmt::Debug for RecipientPrivacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Keep => "keep",
            Self::Hash(_) => "hash (key withheld)",
            Self::Domain => "domain",
        })
    }
}

/// An email address as it appears in records and replies: a dot-atom local part (with the
/// characters RFC 5322 allows unquoted) and a domain of at least two labels.
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)",
    )
    .expect("the address pattern compiles")
});

impl RecipientPrivacy {
    #[must_use]
    pub fn is_keep(&self) -> bool {
        matches!(self, Self::Keep)
    }

    /// `json` with every address rewritten as this mode says.
    #[must_use]
    pub fn apply<'a>(&self, json: &'a [u8]) -> Cow<'a, [u8]> {
        if self.is_keep() || memchr::memchr(b'@', json).is_none() {
            return Cow::Borrowed(json);
        }
        ADDRESS.replace_all(json, |captures: &regex::bytes::Captures<'_>| {
            let domain = captures.get(1).map_or(&b""[..], |m| m.as_bytes());
            let mut out = Vec::with_capacity(33 + domain.len());
            if let Self::Hash(key) = self {
                out.extend_from_slice(pseudonym(key, &captures[0]).as_bytes());
            }
            out.push(b'@');
            out.extend_from_slice(domain);
            out
        })
    }

    /// The stored form of one address (what `apply` writes in its place): to find a person's
    /// events by the address they gave.
    #[must_use]
    pub fn address(&self, address: &str) -> String {
        String::from_utf8_lossy(&self.apply(address.as_bytes())).into_owned()
    }
}

/// The local part every erased address becomes, before 32 random hex characters.
const ERASED_PREFIX: &str = "erased-";

/// True when `recipient` is what an erasure left of an address (`erased-<32 hex>@domain`):
/// the fold keeps no suppression for it.
#[must_use]
pub fn is_erased(recipient: &str) -> bool {
    recipient.strip_prefix(ERASED_PREFIX).and_then(|rest| rest.split_once('@')).is_some_and(|(token, _)| {
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Why a person cannot be erased.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErasureError {
    #[error("`{0}` is not an email address")]
    NotAnAddress(String),
    #[error("[privacy] recipients = \"domain\" keeps no person's address: there is nothing to erase")]
    NothingKept,
}

/// One person's erasure: the address as the stores keep it (the address itself, or its keyed
/// pseudonym in `hash` mode), and what every copy of it becomes: `erased-<32 random hex>@domain`.
///
/// The replacement is random, so nothing (not the address, not the privacy key) leads back to
/// it; it is the same for all of the person's events, so what the derived state joined on the
/// recipient (a complaint to the delivery before it) joins alike when the log is replayed, and
/// counts stay equal. The fold keeps no suppression for an erased address ([`is_erased`]).
#[derive(Debug, Clone)]
pub struct Erasure {
    stored: String,
    replacement: String,
    /// The stored form, any case.
    pattern: Regex,
}

impl Erasure {
    /// The erasure of `address` in a log kept under `privacy`.
    ///
    /// # Errors
    /// When `address` is not an address, or `privacy` keeps none.
    pub fn new(privacy: &RecipientPrivacy, address: &str) -> Result<Self, ErasureError> {
        let address = address.trim();
        let whole = ADDRESS.find(address.as_bytes()).is_some_and(|m| m.start() == 0 && m.end() == address.len());
        if !whole {
            return Err(ErasureError::NotAnAddress(address.to_owned()));
        }
        if matches!(privacy, RecipientPrivacy::Domain) {
            return Err(ErasureError::NothingKept);
        }
        let stored = privacy.address(address).to_ascii_lowercase();
        let domain = stored.rsplit_once('@').map_or("", |(_, d)| d);
        let token: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        let replacement = format!("{ERASED_PREFIX}{token}@{domain}");
        let pattern = Regex::new(&format!("(?i){}", regex::escape(&stored))).expect("an escaped literal compiles");
        Ok(Self { stored, replacement, pattern })
    }

    /// The address as the stores keep it, in lower case.
    #[must_use]
    pub fn stored(&self) -> &str {
        &self.stored
    }

    /// What every copy of it becomes.
    #[must_use]
    pub fn replacement(&self) -> &str {
        &self.replacement
    }

    /// True when `recipient` is this person.
    #[must_use]
    pub fn is_person(&self, recipient: &str) -> bool {
        recipient.eq_ignore_ascii_case(&self.stored)
    }

    /// True when `text` holds a copy of the address, in any case.
    #[must_use]
    pub fn mentions(&self, text: &[u8]) -> bool {
        self.pattern.is_match(text)
    }

    /// `text` with every copy of the address, in any case, replaced.
    #[must_use]
    pub fn rewrite<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        self.pattern.replace_all(text, self.replacement.as_bytes())
    }
}

/// 32 hex characters of HMAC-SHA256 over the address in lower case.
fn pseudonym(key: &[u8], address: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(&address.to_ascii_lowercase());
    let digest = mac.finalize().into_bytes();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_is_rewritten_and_nothing_else() {
        let json = br#"{"recipient":"Jane.Doe+news@Example.COM","sender":"bounce-jane.doe=example.com@mail.acme.net","response_text":"550 5.1.1 <jane.doe+news@example.com>: unknown","raw":"{\"recipient\":\"Jane.Doe+news@Example.COM\"}","tenant":"acme"}"#;
        let hash = RecipientPrivacy::Hash(Arc::from(&b"secret"[..]));
        let hashed = String::from_utf8(hash.apply(json).into_owned()).unwrap();
        assert!(!hashed.to_lowercase().contains("jane"), "{hashed}");
        let value: serde_json::Value = serde_json::from_str(&hashed).expect("still JSON");
        let recipient = value["recipient"].as_str().unwrap();
        assert_eq!(recipient.len(), 32 + 1 + "Example.COM".len());
        assert!(recipient.ends_with("@Example.COM"));
        // The same person, any case, any place: the same pseudonym; another key, another one.
        assert!(value["response_text"].as_str().unwrap().contains(&recipient[..32]));
        assert_eq!(hash.address("jane.doe+news@example.com")[..32], recipient[..32]);
        let other = RecipientPrivacy::Hash(Arc::from(&b"other"[..]));
        assert_ne!(other.address("jane.doe+news@example.com"), hash.address("jane.doe+news@example.com"));
        assert_eq!(value["tenant"], "acme");

        let domain = String::from_utf8(RecipientPrivacy::Domain.apply(json).into_owned()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&domain).unwrap();
        assert_eq!(value["recipient"], "@Example.COM");
        assert_eq!(value["sender"], "@mail.acme.net");
        assert!(!domain.to_lowercase().contains("jane"));
        assert!(matches!(RecipientPrivacy::Keep.apply(json), Cow::Borrowed(_)));
        assert_eq!(format!("{hash:?}"), "hash (key withheld)");
    }

    #[test]
    fn an_erasure_replaces_every_copy_with_one_random_pseudonym() {
        let json = br#"{"recipient":"Jane@Example.com","response_text":"550 <jane@example.com> unknown; cc janet@example.com"}"#;
        let erasure = Erasure::new(&RecipientPrivacy::Keep, " jane@example.com ").unwrap();
        let erased = String::from_utf8(erasure.rewrite(json).into_owned()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&erased).unwrap();
        let recipient = value["recipient"].as_str().unwrap();
        assert!(is_erased(recipient) && recipient.ends_with("@example.com"), "{recipient}");
        assert_eq!(erased.matches(recipient).count(), 2, "{erased}");
        assert!(erased.contains("janet@example.com"), "another person is left alone: {erased}");
        assert_ne!(Erasure::new(&RecipientPrivacy::Keep, "jane@example.com").unwrap().replacement(), recipient);
        assert!(!is_erased("erased-jane@example.com") && !is_erased("jane@example.com"));

        let hash = RecipientPrivacy::Hash(Arc::from(&b"secret"[..]));
        let erasure = Erasure::new(&hash, "Jane@Example.com").unwrap();
        assert!(erasure.is_person(&hash.address("jane@example.com")));
        assert_eq!(Erasure::new(&RecipientPrivacy::Domain, "jane@example.com").unwrap_err(), ErasureError::NothingKept);
        assert!(matches!(Erasure::new(&RecipientPrivacy::Keep, "jane"), Err(ErasureError::NotAnAddress(_))));
    }
}
