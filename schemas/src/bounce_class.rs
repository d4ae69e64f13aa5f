//! Bounce classes: KumoMTA's labels, so that KumoMTA rule files and automation rules keep their
//! meaning, plus any user-defined label.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! predefined_classes {
    ($($name:ident),+ $(,)?) => {
        /// Why a message was not delivered.
        ///
        /// The predefined variants are KumoMTA's `PreDefinedBounceClass` labels (29 of them);
        /// any other label is kept as [`BounceClass::UserDefined`], as KumoMTA does since
        /// 2023.12.28. Serialised as the bare label string.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum BounceClass {
            $($name,)+
            /// A label from a user's own rule file.
            UserDefined(String),
        }

        impl BounceClass {
            /// The predefined labels, in KumoMTA's order.
            pub const PREDEFINED: &'static [&'static str] = &[$(stringify!($name)),+];

            /// The label as written in rule files and logs.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$name => stringify!($name),)+
                    Self::UserDefined(label) => label,
                }
            }

            /// Parses a label; unknown labels become [`BounceClass::UserDefined`].
            #[must_use]
            pub fn from_label(label: &str) -> Self {
                match label {
                    $(stringify!($name) => Self::$name,)+
                    other => Self::UserDefined(other.to_owned()),
                }
            }
        }
    };
}

predefined_classes!(
    InvalidRecipient,
    DNSFailure,
    SpamBlock,
    SpamContent,
    ProhibitedAttachment,
    RelayDenied,
    AutoReply,
    TransientFailure,
    Subscribe,
    Unsubscribe,
    ChallengeResponse,
    BadConfiguration,
    BadConnection,
    BadDomain,
    ContentRelated,
    InactiveMailbox,
    InvalidSender,
    MessageExpired,
    NoAnswerFromHost,
    PolicyRelated,
    ProtocolErrors,
    QuotaIssues,
    RelayingIssues,
    RoutingErrors,
    SpamRelated,
    VirusRelated,
    AuthenticationFailed,
    TooManyRecipients,
    Uncategorized,
);

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BounceClass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BounceClass {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from_label(&label))
    }
}

impl JsonSchema for BounceClass {
    fn schema_name() -> Cow<'static, str> {
        "BounceClass".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A KumoMTA bounce-class label, or a user-defined label from a rule file.",
            "anyOf": [
                { "enum": Self::PREDEFINED },
                { "type": "string", "minLength": 1 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_29_predefined_labels_and_they_round_trip() {
        assert_eq!(BounceClass::PREDEFINED.len(), 29);
        for label in BounceClass::PREDEFINED {
            let class = BounceClass::from_label(label);
            assert!(!matches!(class, BounceClass::UserDefined(_)), "{label}");
            assert_eq!(class.as_str(), *label);
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(serde_json::from_str::<BounceClass>(&json).unwrap(), class);
        }
    }

    #[test]
    fn unknown_labels_are_user_defined() {
        let class: BounceClass = serde_json::from_str("\"GreylistedByAcme\"").unwrap();
        assert_eq!(class, BounceClass::UserDefined("GreylistedByAcme".into()));
        assert_eq!(serde_json::to_string(&class).unwrap(), "\"GreylistedByAcme\"");
    }
}
