//! Relay and MTA bounce taxonomies mapped to Vigil's classes (`rules/relays.toml`). The relay
//! receivers (`vigil_ingest::relay`) put each relay's label in the event's `provider_class`.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;
use vigil_schemas::BounceClass;

/// The relays and MTAs whose own bounce taxonomy Vigil maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relay {
    Ses,
    Sendgrid,
    Mailgun,
    Postmark,
    Sparkpost,
    Powermta,
    Brevo,
    Mailjet,
    Postal,
    Elasticemail,
}

impl Relay {
    pub const ALL: [Self; 10] = [
        Self::Ses,
        Self::Sendgrid,
        Self::Mailgun,
        Self::Postmark,
        Self::Sparkpost,
        Self::Powermta,
        Self::Brevo,
        Self::Mailjet,
        Self::Postal,
        Self::Elasticemail,
    ];

    /// The section name in `relays.toml`, also the event `source` name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ses => "ses",
            Self::Sendgrid => "sendgrid",
            Self::Mailgun => "mailgun",
            Self::Postmark => "postmark",
            Self::Sparkpost => "sparkpost",
            Self::Powermta => "powermta",
            Self::Brevo => "brevo",
            Self::Mailjet => "mailjet",
            Self::Postal => "postal",
            Self::Elasticemail => "elasticemail",
        }
    }
}

/// A relay's verdict in Vigil's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayClassification {
    pub class: BounceClass,
    /// The relay's disposition, when its taxonomy implies one.
    pub permanent: Option<bool>,
    /// `relay:<relay>:<label>`, what `classifier_rule` says.
    pub rule: String,
}

#[derive(Debug, Deserialize)]
struct Entry {
    class: String,
    permanent: Option<bool>,
}

static TABLES: LazyLock<HashMap<String, HashMap<String, Entry>>> = LazyLock::new(|| {
    let tables: HashMap<String, HashMap<String, Entry>> =
        toml::from_str(include_str!("../../rules/relays.toml")).expect("relays.toml is valid");
    tables
        .into_iter()
        .map(|(relay, entries)| (relay, entries.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()))
        .collect()
});

/// Maps a relay's own label (see `relays.toml` for each relay's label format).
#[must_use]
pub fn classify_relay(relay: Relay, label: &str) -> Option<RelayClassification> {
    let entry = TABLES.get(relay.as_str())?.get(&label.trim().to_ascii_lowercase())?;
    Some(RelayClassification {
        class: BounceClass::from_label(&entry.class),
        permanent: entry.permanent,
        rule: format!("relay:{}:{}", relay.as_str(), label.trim()),
    })
}

/// Bounce categories of a PowerMTA accounting CSV (header line first; `#` allowed before it),
/// one per `b`, `rb` or `t` record that has one.
#[must_use]
pub fn powermta_labels(csv: &str) -> Vec<String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else { return Vec::new() };
    let columns: Vec<&str> = header.trim_start_matches('#').split(',').map(str::trim).collect();
    let (Some(kind), Some(category)) =
        (columns.iter().position(|c| *c == "type"), columns.iter().position(|c| *c == "bounceCat"))
    else {
        return Vec::new();
    };
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let record = fields.get(kind)?.trim();
            let label = fields.get(category)?.trim();
            (matches!(record, "b" | "rb" | "t") && !label.is_empty()).then(|| label.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_loads_and_maps_known_labels() {
        for relay in Relay::ALL {
            assert!(TABLES.contains_key(relay.as_str()), "{relay:?}");
        }
        let got = classify_relay(Relay::Sparkpost, "22").unwrap();
        assert_eq!((got.class, got.permanent), (BounceClass::QuotaIssues, Some(false)));
        assert_eq!(
            classify_relay(Relay::Sendgrid, "BOUNCE/invalid address").unwrap().class,
            BounceClass::InvalidRecipient
        );
        assert_eq!(classify_relay(Relay::Powermta, "spam-related").unwrap().class, BounceClass::SpamRelated);
        assert!(classify_relay(Relay::Postmark, "NoSuchType").is_none());
    }

    #[test]
    fn sparkpost_covers_every_documented_class() {
        for class in [1, 10, 20, 21, 22, 23, 24, 25, 30, 40, 50, 51, 52, 53, 54, 60, 70, 80, 90, 100] {
            assert!(classify_relay(Relay::Sparkpost, &class.to_string()).is_some(), "class {class}");
        }
    }
}
