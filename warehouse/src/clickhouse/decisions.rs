//! The `decisions` table: the record of what the rules that act (and operators) decided, one
//! row per decision, for dashboards. The processor maps its decisions to [`DecisionRow`]s and
//! inserts them through its outbox's pusher, which keeps the cursor: this module only writes.

use serde::Serialize;

use super::{ClickHouseConfig, ClickHouseError};

/// One decision as the table keeps it. Absent text is `''`, times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct DecisionRow {
    pub at_ms: u64,
    pub decision_id: String,
    pub status: String,
    pub action: String,
    pub rule: String,
    pub egress_source: String,
    pub provider: String,
    pub domain: String,
    pub tenant: String,
    pub campaign: String,
    pub site: String,
    pub setting: String,
    pub value: String,
    pub expires_ms: u64,
    pub reason: String,
    pub action_key: String,
    pub evidence_response: String,
    pub evidence_count: u64,
}

/// Inserts decisions into `decisions`.
#[derive(Clone)]
pub struct DecisionWriter {
    client: clickhouse::Client,
    url: String,
}

impl std::fmt::Debug for DecisionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionWriter").field("url", &self.url).finish_non_exhaustive()
    }
}

impl DecisionWriter {
    /// A writer for `config`'s database (migrated by the caller: `vigil migrate` or the role's
    /// start).
    ///
    /// # Errors
    /// When the database name is invalid.
    pub fn new(config: &ClickHouseConfig) -> Result<Self, ClickHouseError> {
        Ok(Self { client: config.client()?, url: config.url.clone() })
    }

    /// Inserts `rows` in one insert.
    ///
    /// # Errors
    /// When ClickHouse refuses or cannot be reached; nothing is known to be stored then.
    pub async fn insert(&self, rows: &[DecisionRow]) -> Result<(), ClickHouseError> {
        let mut insert =
            self.client.insert::<DecisionRow>("decisions").await.map_err(ClickHouseError::at(&self.url))?;
        for row in rows {
            insert.write(row).await.map_err(ClickHouseError::at(&self.url))?;
        }
        insert.end().await.map_err(ClickHouseError::at(&self.url))
    }
}
