//! Recipient domain and MX host -> mailbox provider, from the versioned data file
//! `processor/data/providers.toml`.

use std::collections::HashMap;

use serde::Deserialize;
use vigil_schemas::DeliveryEvent;

/// The provider name for everything the map does not know.
pub const OTHER: &str = "other";

const BUNDLED: &str = include_str!("../data/providers.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    version: u32,
    providers: std::collections::BTreeMap<String, ProviderEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    domain_suffixes: Vec<String>,
    #[serde(default)]
    mx_suffixes: Vec<String>,
}

/// A provider map file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderMapError {
    #[error("provider map: {0}")]
    Toml(#[from] toml::de::Error),
    /// Parses, but says two things about one domain or suffix.
    #[error("provider map: {0}")]
    Conflict(String),
}

/// An immutable provider map.
#[derive(Debug, Clone)]
pub struct ProviderMap {
    version: u32,
    by_domain: HashMap<String, String>,
    /// (suffix, provider), longest suffix first so the most specific entry wins.
    domain_suffixes: Vec<(String, String)>,
    mx_suffixes: Vec<(String, String)>,
    /// Each provider's first listed domain: the domain a provider-wide override is written
    /// under (with `mx_rollup`, so it covers the provider's MX site).
    primary: HashMap<String, String>,
}

impl ProviderMap {
    /// The map shipped in the repository.
    ///
    /// # Panics
    /// Never in a released build: the bundled file is tested.
    #[must_use]
    pub fn bundled() -> Self {
        Self::from_toml(BUNDLED).expect("bundled provider map is valid")
    }

    /// Parses a provider map file.
    ///
    /// # Errors
    /// When the TOML does not have the documented shape.
    pub fn from_toml(text: &str) -> Result<Self, ProviderMapError> {
        let file: ProviderFile = toml::from_str(text)?;
        let mut by_domain = HashMap::new();
        let mut domain_suffixes = Vec::new();
        let mut mx_suffixes = Vec::new();
        let mut primary = HashMap::new();
        for (name, entry) in file.providers {
            if let Some(first) = entry.domains.first() {
                primary.insert(name.clone(), first.to_ascii_lowercase());
            }
            for domain in entry.domains {
                // A domain under two providers would silently belong to whichever came last.
                if let Some(other) = by_domain.insert(domain.to_ascii_lowercase(), name.clone()) {
                    return Err(ProviderMapError::Conflict(format!(
                        "domain `{domain}` is listed under `{other}` and `{name}`"
                    )));
                }
            }
            domain_suffixes.extend(entry.domain_suffixes.into_iter().map(|s| (normalise_suffix(&s), name.clone())));
            mx_suffixes.extend(entry.mx_suffixes.into_iter().map(|s| (normalise_suffix(&s), name.clone())));
        }
        for suffixes in [&mut domain_suffixes, &mut mx_suffixes] {
            suffixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            if let Some(pair) = suffixes.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                return Err(ProviderMapError::Conflict(format!(
                    "suffix `{}` is listed under `{}` and `{}`",
                    pair[0].0, pair[0].1, pair[1].1
                )));
            }
        }
        Ok(Self { version: file.version, by_domain, domain_suffixes, mx_suffixes, primary })
    }

    /// Each provider with its first listed domain (`google`, `gmail.com`).
    pub fn primary_domains(&self) -> impl Iterator<Item = (&str, &str)> {
        self.primary.iter().map(|(p, d)| (p.as_str(), d.as_str()))
    }

    /// The data file's version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The provider of a recipient domain and/or MX host name.
    #[must_use]
    pub fn lookup(&self, recipient_domain: Option<&str>, mx_host: Option<&str>) -> &str {
        if let Some(domain) = recipient_domain.map(str::to_ascii_lowercase) {
            if let Some(name) = self.by_domain.get(&domain) {
                return name;
            }
            if let Some(name) = suffix_match(&self.domain_suffixes, &domain) {
                return name;
            }
        }
        if let Some(mx) = mx_host.map(|m| m.trim_end_matches('.').to_ascii_lowercase())
            && let Some(name) = suffix_match(&self.mx_suffixes, &mx)
        {
            return name;
        }
        OTHER
    }

    /// The provider of an event: its recipient domain, else its MX host, else the MX part of
    /// its KumoMTA site name.
    #[must_use]
    pub fn provider_of(&self, event: &DeliveryEvent) -> String {
        let by_domain = self.lookup(event.recipient_domain.as_deref(), event.mx_host.as_deref());
        if by_domain != OTHER {
            return by_domain.to_owned();
        }
        self.lookup(None, event.site.as_deref().and_then(mx_of_site)).to_owned()
    }
}

/// Suffixes are stored with a leading dot and without a trailing one (KumoMTA's community
/// file writes some as `.kpnmail.nl.`).
fn normalise_suffix(suffix: &str) -> String {
    let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
    if suffix.starts_with('.') { suffix } else { format!(".{suffix}") }
}

fn suffix_match<'a>(suffixes: &'a [(String, String)], host: &str) -> Option<&'a str> {
    let dotted = format!(".{host}");
    suffixes.iter().find(|(suffix, _)| dotted.ends_with(suffix.as_str())).map(|(_, name)| name.as_str())
}

/// `ip1->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client` -> the MX part. Its factored
/// prefix does not matter: matching is by suffix.
#[must_use]
pub fn mx_of_site(site: &str) -> Option<&str> {
    let (_, rest) = site.split_once("->")?;
    let mx = rest.rsplit_once('@').map_or(rest, |(mx, _)| mx);
    let mx = mx.trim_end_matches('.');
    (!mx.is_empty()).then_some(mx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_then_mx_suffixes_then_other() {
        let map = ProviderMap::bundled();
        assert_eq!(map.lookup(Some("Gmail.com"), None), "google");
        assert_eq!(map.lookup(Some("contoso.onmicrosoft.com"), None), "microsoft");
        assert_eq!(map.lookup(Some("example.org"), Some("example-org.mail.protection.outlook.com.")), "microsoft");
        assert_eq!(map.lookup(Some("corp.example"), Some("mx1.corp.example")), OTHER);
        assert_eq!(map.lookup(Some("kpn.example"), Some("mx.kpnmail.nl")), "kpn");
        assert_eq!(map.lookup(None, Some("google.com")), "google", "a bare suffix host matches too");
        assert_eq!(map.lookup(None, Some("notgoogle.com")), OTHER, "suffixes match at label boundaries");
    }

    #[test]
    fn the_bundled_map_covers_the_big_providers_and_gateways() {
        let map = ProviderMap::bundled();
        assert!(map.version() >= 2);
        for (domain, mx, provider) in [
            ("yahoo.co.jp", None, "yahoo"),
            ("t-online.de", None, "t_online"),
            ("corp.example", Some("corp-example.mail.protection.outlook.com"), "microsoft"),
            ("corp.example", Some("mx1.corp.iphmx.com"), "cisco_ironport"),
            ("corp.example", Some("eu-smtp-inbound-1.mimecast.com"), "mimecast"),
            ("corp.example", Some("mx0a-00123.pphosted.com"), "proofpoint"),
            ("corp.example", Some("aspmx.l.google.com"), "google"),
        ] {
            assert_eq!(map.lookup(Some(domain), mx), provider, "{domain} {mx:?}");
        }
    }

    #[test]
    fn a_domain_or_suffix_under_two_providers_is_refused() {
        let twice = "version = 1\n[providers.a]\ndomains = [\"x.com\"]\n[providers.b]\ndomains = [\"X.com\"]\n";
        let err = ProviderMap::from_toml(twice).unwrap_err().to_string();
        assert!(err.contains("`X.com`") && err.contains("`a`"), "{err}");
        let twice =
            "version = 1\n[providers.a]\nmx_suffixes = [\".x.net\"]\n[providers.b]\nmx_suffixes = [\"x.net.\"]\n";
        assert!(ProviderMap::from_toml(twice).unwrap_err().to_string().contains("`.x.net`"));
    }

    #[test]
    fn site_names_give_the_mx() {
        assert_eq!(
            mx_of_site("ip-10-0-0-1->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"),
            Some("(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com")
        );
        assert_eq!(
            mx_of_site("source2->(alt1|alt2)?.gmail-smtp-in.l.google.com."),
            Some("(alt1|alt2)?.gmail-smtp-in.l.google.com")
        );
        assert_eq!(
            mx_of_site("unspecified->(mta5|mta6|mta7).am0.yahoodns.net"),
            Some("(mta5|mta6|mta7).am0.yahoodns.net")
        );
        assert_eq!(mx_of_site("localhost"), None);
        let map = ProviderMap::bundled();
        assert_eq!(map.lookup(None, mx_of_site("unspecified->(mta5|mta6|mta7).am0.yahoodns.net")), "yahoo");
    }
}
