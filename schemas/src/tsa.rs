//! The wire types of KumoMTA's traffic-shaping (TSA) surface, as kumod reads them
//! (`kumo_api_types::tsa`): the frames of `/subscribe_event_v1`, `suspended.json` and
//! `bounced.json`. The shaping overlay (`/get_config_v1/shaping.toml`) is TOML text.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A ready-queue suspension (`kumo_api_types::tsa::ReadyQSuspension`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReadyQSuspension {
    pub rule_hash: String,
    pub site_name: String,
    pub reason: String,
    pub source: String,
    pub expires: DateTime<Utc>,
}

/// A scheduled-queue suspension (`SchedQSuspension`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchedQSuspension {
    pub rule_hash: String,
    pub tenant: String,
    pub domain: String,
    pub campaign: Option<String>,
    pub reason: String,
    pub expires: DateTime<Utc>,
}

/// An admin bounce (`SchedQBounce`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchedQBounce {
    pub rule_hash: String,
    pub domain: String,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub reason: String,
    pub expires: DateTime<Utc>,
}

/// One frame of `/subscribe_event_v1` (`SubscriptionItem`, externally tagged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubscriptionItem {
    ReadyQSuspension(ReadyQSuspension),
    SchedQSuspension(SchedQSuspension),
    SchedQBounce(SchedQBounce),
}

/// `GET /get_suspension_v1/suspended.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Suspensions {
    pub ready_q: Vec<ReadyQSuspension>,
    pub sched_q: Vec<SchedQSuspension>,
}
