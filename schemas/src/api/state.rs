//! `GET /api/v1/state`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The body of `GET /api/v1/state`, and what `vigil replay` prints: where the processor's
/// derived state stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateResponse {
    /// The next log offset the state will apply: it reflects every event before it.
    pub offset: u64,
    /// `vigil replay` prints the same digest for the same log up to `offset`.
    pub digest: String,
    /// The rules' state and the actions in force; `vigil replay` prints it too.
    pub actions_digest: String,
    /// The alerts in force and the alert history; `vigil replay` prints it too.
    pub alerts_digest: String,
    pub scopes: usize,
    pub suppressions: usize,
    pub too_late: u64,
}
