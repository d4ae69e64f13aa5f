//! A decision: one thing a rule did (or would have done, in shadow), with its evidence. The
//! record of `vigil.decisions`, the body of the generic webhook, and what the TSA frames and
//! the shaping overlay are built from.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What happened to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Put in force (and pushed to the MTA).
    Applied,
    /// Would have been applied; the rule is in dry-run mode, so nothing was pushed.
    Shadow,
    /// Taken back before it expired (a rate rule recovered, or an operator lifted it).
    Lifted,
    /// Ran out at `expires`.
    Expired,
}

/// What the MTA is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Stop the ready queue of one egress path (`target.site`): KumoMTA `Suspend`.
    SuspendReadyQueue,
    /// Hold the scheduled queues of a domain for a tenant (and campaign): `SuspendTenant`,
    /// `SuspendCampaign`.
    SuspendScheduled,
    /// Bounce what is queued for a domain (tenant, campaign): `Bounce*`.
    Bounce,
    /// Override an egress path setting (`setting`, `value`) for a domain and egress source:
    /// `SetConfig`, `SetDomainConfig`, rate rules and warm-up limits.
    SetConfig,
}

/// Who the action is for. Fields a given action does not use are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    pub egress_source: Option<String>,
    pub provider: Option<String>,
    pub domain: Option<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    /// KumoMTA's egress path, `source->site@smtp_client`, for ready-queue suspensions.
    pub site: Option<String>,
}

/// A setting's value as the shaping file or rule gave it. Written as a plain JSON or TOML
/// scalar; snapshots (postcard, not self-describing) store it tagged.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    Integer(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PlainValue {
    Integer(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

#[derive(Serialize, Deserialize)]
enum TaggedValue {
    Integer(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Serialize for SettingValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        macro_rules! write_as {
            ($ty:ident) => {
                match self.clone() {
                    Self::Integer(v) => $ty::Integer(v).serialize(s),
                    Self::Float(v) => $ty::Float(v).serialize(s),
                    Self::Bool(v) => $ty::Bool(v).serialize(s),
                    Self::Text(v) => $ty::Text(v).serialize(s),
                }
            };
        }
        if human { write_as!(PlainValue) } else { write_as!(TaggedValue) }
    }
}

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(if d.is_human_readable() {
            match PlainValue::deserialize(d)? {
                PlainValue::Integer(v) => Self::Integer(v),
                PlainValue::Float(v) => Self::Float(v),
                PlainValue::Bool(v) => Self::Bool(v),
                PlainValue::Text(v) => Self::Text(v),
            }
        } else {
            match TaggedValue::deserialize(d)? {
                TaggedValue::Integer(v) => Self::Integer(v),
                TaggedValue::Float(v) => Self::Float(v),
                TaggedValue::Bool(v) => Self::Bool(v),
                TaggedValue::Text(v) => Self::Text(v),
            }
        })
    }
}

impl SettingValue {
    /// The value as a TOML literal, for the shaping overlay.
    #[must_use]
    pub fn to_toml(&self) -> String {
        match self {
            Self::Integer(v) => v.to_string(),
            Self::Float(v) => toml::Value::Float(*v).to_string(),
            Self::Bool(v) => v.to_string(),
            Self::Text(v) => toml::Value::String(v.clone()).to_string(),
        }
    }
}

/// Why: what the rule saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The event that triggered the decision (none for expiries and time-driven steps).
    pub event_id: Option<String>,
    /// Its response line.
    pub response: Option<String>,
    /// How many matching responses a threshold counted.
    pub count: Option<u64>,
    /// The window the rule looked at, in seconds.
    pub window_seconds: Option<u64>,
    /// Named figures the rule compared (rates, attempts, bounds, levels).
    pub metrics: BTreeMap<String, f64>,
}

/// One decision. `decision_id` is a hash of what was decided and of the event or time that
/// decided it, so replaying the same log under the same rules yields the same ids: actuators
/// use it to act once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub decision_id: String,
    pub status: Status,
    /// On the events' clock: when the rule decided.
    pub at: DateTime<Utc>,
    pub action: ActionKind,
    pub target: Target,
    /// The setting of a `set_config` action (`max_message_rate`, `connection_limit`, ...).
    pub setting: Option<String>,
    pub value: Option<SettingValue>,
    /// Whether the override applies to the whole MX site of `target.domain` (KumoMTA
    /// `mx_rollup`).
    pub mx_rollup: bool,
    pub expires: DateTime<Utc>,
    pub reason: String,
    /// The rule, as `file:scope#n` or the rule's name.
    pub rule: String,
    /// The key of the action this decision is about, as TSA spells it
    /// (`<site>-<hash>`, then tab-separated selectors for scheduled-queue actions): a later
    /// decision with the same key replaces it.
    pub action_key: String,
    pub evidence: Evidence,
}

impl Decision {
    /// Computes `decision_id` from the other fields.
    #[must_use]
    pub fn with_id(mut self) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in [
            self.action_key.as_str(),
            &format!("{:?}", self.status),
            &self.at.timestamp_millis().to_string(),
            &self.expires.timestamp_millis().to_string(),
            self.evidence.event_id.as_deref().unwrap_or(""),
            &self.value.as_ref().map(SettingValue::to_toml).unwrap_or_default(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        self.decision_id = hasher.finalize().to_hex()[..32].to_owned();
        self
    }

    /// The same action, now in another status (an expiry or a lift), decided at `at`. The
    /// end of a shadow action stays a shadow decision: nothing was pushed, so nothing is
    /// taken back.
    #[must_use]
    pub fn ended(&self, status: Status, at: DateTime<Utc>, reason: String) -> Self {
        let (status, reason) = match self.status {
            Status::Shadow => {
                let what = if status == Status::Lifted { "lifted" } else { "expired" };
                (Status::Shadow, format!("{reason} (shadow action {what})"))
            }
            _ => (status, reason),
        };
        Self {
            status,
            at,
            reason,
            evidence: Evidence { metrics: self.evidence.metrics.clone(), ..Evidence::default() },
            ..self.clone()
        }
        .with_id()
    }
}
