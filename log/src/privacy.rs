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
}
