//! Erasing one person: `vigil erase --recipient ADDR` (with `vigil run` stopped) and
//! `DELETE /api/v1/admin/recipients/{addr}` (while it runs).
//!
//! Every copy of the person's address becomes one random pseudonym
//! ([`vigil_log::privacy::Erasure`]), in this order:
//! 1. the log of record: the person's events (every field and the source record) and the dead
//!    letters that mention the address, rewritten in place at their offsets;
//! 2. the warehouse: every Parquet events file holding a row of theirs, rewritten and replaced
//!    atomically (the hourly rollup holds no addresses);
//! 3. the derived state: their suppression dropped, and their place in the complaint join
//!    renamed to the pseudonym; the snapshot written again;
//! 4. ClickHouse, when Vigil feeds one: an `ALTER TABLE events UPDATE` mutation, awaited.
//!
//! The events stay, anonymous: the deliveries happened, and reputation counts them. So the
//! state is exactly what a replay of the rewritten log gives (the pseudonym joins complaints
//! as the address did, and an erased address never suppresses): its digest does not move,
//! except for the suppression, which a replay would not find either. What the erasure cannot
//! reach is said in docs/privacy.md: suppressions already pushed to a marketing app, copies
//! in backups, and bytes in pages the log's file freed but has not reused yet.
//!
//! While `vigil run` runs, the pipeline does steps 1 to 3 between two batches (nothing folds
//! or writes the warehouse meanwhile; ingest goes on), through [`Eraser`].

use std::path::Path;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use vigil_log::privacy::{Erasure, ErasureError};
use vigil_log::{Erased, EventLog, LogError};
use vigil_warehouse::clickhouse::{ClickHouseConfig, ClickHouseError};
use vigil_warehouse::writer::ErasedRows;
use vigil_warehouse::{ParquetWriter, WarehouseError};

use crate::state::{DerivedState, SnapshotError};

/// What an erasure rewrote, store by store.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// What every copy of the address became.
    pub erased_as: String,
    pub log: Erased,
    pub warehouse: ErasedRows,
    pub state: ErasedFromState,
    /// Rows of ClickHouse's `events` rewritten; absent without ClickHouse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse_rows: Option<u64>,
}

/// What an erasure changed in the derived state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ErasedFromState {
    /// The person was on the suppression list, and is no longer.
    pub suppression: bool,
    /// The complaint join remembered a delivery to them (now under the pseudonym).
    pub complaint_join: bool,
    /// The snapshot was written again without them.
    pub snapshot: bool,
}

/// Why an erasure did not finish. What was rewritten before the failure stays rewritten, and
/// erasing again finishes the job (a person's events are found by the address, so a second
/// erasure finds what the first did not reach).
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error(transparent)]
    Refused(#[from] ErasureError),
    #[error("the log: {0}")]
    Log(#[from] LogError),
    #[error("the warehouse: {0}")]
    Warehouse(#[from] WarehouseError),
    #[error("the state snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] ClickHouseError),
    #[error("the pipeline is stopping; nothing was erased")]
    Stopped,
}

impl DerivedState {
    /// Drops the person's suppression and renames them in the complaint join (see the module
    /// docs); `snapshot` is left for the caller to set.
    pub fn erase(&mut self, erasure: &Erasure) -> ErasedFromState {
        ErasedFromState {
            suppression: self.suppressions.remove(erasure.stored()).is_some(),
            complaint_join: self.complaints.rename(erasure.stored(), erasure.replacement()),
            snapshot: false,
        }
    }
}

/// Steps 1 and 2: the log and the warehouse files. Blocking.
pub(crate) fn erase_files(
    log: &EventLog,
    writer: &ParquetWriter,
    erasure: &Erasure,
) -> Result<(Erased, ErasedRows), EraseError> {
    let in_log = log.erase(erasure)?;
    let rewrite = |text: &str| String::from_utf8_lossy(&erasure.rewrite(text.as_bytes())).into_owned();
    let in_warehouse = writer.erase(&|recipient| erasure.is_person(recipient), &rewrite)?;
    Ok((in_log, in_warehouse))
}

/// The whole erasure on a data directory no process has open (`vigil erase`): the log, the
/// warehouse, the snapshot (when there is one) and ClickHouse (when given). Blocking, but
/// for ClickHouse, which is awaited on `runtime`.
///
/// # Errors
/// When a store cannot be read or written; see [`EraseError`].
pub fn erase_offline(
    data_dir: &Path,
    log: &EventLog,
    erasure: &Erasure,
    clickhouse: Option<(&ClickHouseConfig, &tokio::runtime::Runtime)>,
) -> Result<ErasureReport, EraseError> {
    let writer = ParquetWriter::open(&data_dir.join("warehouse"))?;
    let (in_log, warehouse) = erase_files(log, &writer, erasure)?;
    let state_dir = crate::pipeline::state_dir(data_dir);
    let state = match DerivedState::load(&state_dir) {
        Some(mut state) => {
            let mut erased = state.erase(erasure);
            state.save(&state_dir)?;
            erased.snapshot = true;
            erased
        }
        None => ErasedFromState::default(),
    };
    let clickhouse_rows = match clickhouse {
        Some((config, runtime)) => Some(runtime.block_on(erase_in_clickhouse(config, erasure))?),
        None => None,
    };
    Ok(ErasureReport { erased_as: erasure.replacement().to_owned(), log: in_log, warehouse, state, clickhouse_rows })
}

async fn erase_in_clickhouse(config: &ClickHouseConfig, erasure: &Erasure) -> Result<u64, EraseError> {
    Ok(vigil_warehouse::clickhouse::erase_recipient(config, erasure.stored(), erasure.replacement()).await?)
}

/// One erasure the pipeline is asked to do, and where its answer goes.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) erasure: Erasure,
    pub(crate) reply: oneshot::Sender<Result<ErasureReport, EraseError>>,
}

/// The pipeline's side of [`Eraser`]: give it to [`crate::Pipeline::with_erasures`].
#[derive(Debug)]
pub struct ErasureRequests(pub(crate) mpsc::Receiver<Request>);

/// Erases people from a running `vigil run`: the pipeline does the log, the warehouse and
/// the state between two batches; then ClickHouse, once its feed has passed every event the
/// log rewrite covered (so no copy read before the rewrite lands after the mutation).
#[derive(Debug, Clone)]
pub struct Eraser {
    requests: mpsc::Sender<Request>,
    log: EventLog,
    clickhouse: Option<ClickHouseConfig>,
}

/// How long an erasure waits for the ClickHouse feed to pass the rewritten offsets.
const FEED_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Eraser {
    /// An eraser for the pipeline that takes the returned requests, on `log` (whose privacy
    /// mode says how addresses are stored), and ClickHouse if Vigil feeds one.
    #[must_use]
    pub fn new(log: EventLog, clickhouse: Option<ClickHouseConfig>) -> (Self, ErasureRequests) {
        // One erasure at a time is plenty; the rest wait their turn here.
        let (requests, receiver) = mpsc::channel(4);
        (Self { requests, log, clickhouse }, ErasureRequests(receiver))
    }

    /// Erases `address` everywhere; returns what was rewritten.
    ///
    /// # Errors
    /// See [`EraseError`]; an address that is not one, or a log that keeps no addresses, is
    /// [`EraseError::Refused`] before anything is touched.
    pub async fn erase(&self, address: &str) -> Result<ErasureReport, EraseError> {
        let erasure = Erasure::new(self.log.privacy(), address)?;
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { erasure: erasure.clone(), reply }).await.map_err(|_| EraseError::Stopped)?;
        let mut report = answer.await.map_err(|_| EraseError::Stopped)??;
        if let Some(config) = &self.clickhouse {
            let deadline = tokio::time::Instant::now() + FEED_WAIT;
            let mut head = self.log.subscribe();
            while self.log.committed_offset(crate::clickhouse_feed::CLICKHOUSE_CONSUMER)? < report.log.through
                && tokio::time::Instant::now() < deadline
            {
                // The feed commits as it inserts; each append wakes this to look again.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), head.changed()).await;
            }
            report.clickhouse_rows = Some(erase_in_clickhouse(config, &erasure).await?);
        }
        tracing::info!(
            log_events = report.log.events,
            dead_letters = report.log.dead_letters,
            warehouse_rows = report.warehouse.rows,
            clickhouse_rows = report.clickhouse_rows,
            suppression = report.state.suppression,
            "a recipient was erased (the address is not logged)"
        );
        Ok(report)
    }
}
