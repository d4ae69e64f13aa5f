//! Derived state as a fold over the log, its digest, and its snapshots.
//!
//! Everything the processor derives from events (reputation windows, the suppression list)
//! lives in one [`DerivedState`] that changes only through [`DerivedState::apply`], one
//! enriched event at a time, in log order. It records the offset it reflects, so a snapshot
//! plus the log after that offset rebuilds it exactly, and [`DerivedState::digest`] proves it:
//! a replay from offset 0 and a restart from any snapshot give the same digest.
//!
//! Snapshots are postcard, zstd-compressed, written to a temporary file, fsynced and renamed
//! over the previous one, so a crash leaves the old snapshot or the new one, never half of
//! one. A snapshot in an older format, or one that cannot be read, is ignored with a warning:
//! the state is then rebuilt from the log, which is slower but never wrong.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vigil_schemas::DeliveryEvent;

use crate::actuation::{ActuationState, Decision, RuleSet, Status};
use crate::alerting::{AlertRule, AlertingState};
use crate::complaints::{AttributionCounts, ComplaintJoin, JoinSettings};
use crate::reputation::{ReputationStore, SignalMatcher};
use crate::suppression::Suppressions;

/// Bumped whenever the snapshot's shape changes; older snapshots are ignored.
const SNAPSHOT_FORMAT: u32 = 5;

/// What the fold reads besides the events: provider signal patterns, the rules in force and
/// how far complaints are joined to deliveries. Folding the same log with the same
/// `FoldRules` gives the same state and decisions.
#[derive(Debug, Clone)]
pub struct FoldRules {
    pub signals: SignalMatcher,
    pub rules: std::sync::Arc<RuleSet>,
    pub complaint_join: JoinSettings,
    /// The alert rules evaluated on the events' clock.
    pub alerts: std::sync::Arc<Vec<AlertRule>>,
}

impl FoldRules {
    #[must_use]
    pub fn new(rules: RuleSet) -> Self {
        Self {
            signals: SignalMatcher::new(),
            rules: std::sync::Arc::new(rules),
            complaint_join: JoinSettings::default(),
            alerts: std::sync::Arc::new(crate::alerting::bundled()),
        }
    }

    /// The same, evaluating `alerts` instead of the bundled alert rules.
    #[must_use]
    pub fn with_alerts(mut self, alerts: Vec<AlertRule>) -> Self {
        self.alerts = std::sync::Arc::new(alerts);
        self
    }

    /// The same, joining complaints to deliveries within `settings`.
    #[must_use]
    pub fn with_complaint_join(mut self, settings: JoinSettings) -> Self {
        self.complaint_join = settings;
        self
    }

    /// The bundled rules (`processor/data/rules/default.toml`).
    #[must_use]
    pub fn bundled() -> Self {
        Self::new(RuleSet::bundled(&crate::ProviderMap::bundled()))
    }
}
const SNAPSHOT_FILE: &str = "snapshot.bin.zst";

/// All derived state, and the log offset it reflects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DerivedState {
    /// The next log offset to apply: every event before it is in the state.
    pub offset: u64,
    pub reputation: ReputationStore,
    pub suppressions: Suppressions,
    /// Rule state and the actions in force.
    pub actuation: ActuationState,
    /// The most recent delivery per recipient, to attribute complaints.
    pub complaints: ComplaintJoin,
    /// Alerts pending and firing, and the recent notices.
    pub alerting: AlertingState,
}

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot encoding: {0}")]
    Encode(#[from] postcard::Error),
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: u32,
}

impl DerivedState {
    /// Where the state stands: its offset, digests and sizes.
    #[must_use]
    pub fn summary(&self) -> vigil_schemas::api::StateResponse {
        vigil_schemas::api::StateResponse {
            offset: self.offset,
            digest: self.digest(),
            actions_digest: self.actions_digest(),
            alerts_digest: self.alerts_digest(),
            scopes: self.reputation.scope_count(),
            suppressions: self.suppressions.len(),
            too_late: self.reputation.too_late(),
        }
    }

    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one enriched event, read at `offset`, into the state; the decisions it causes
    /// go to `decisions`.
    ///
    /// # Panics
    /// When offsets go backwards: applying an event twice would count it twice.
    pub fn apply(&mut self, offset: u64, event: &DeliveryEvent, fold: &FoldRules, decisions: &mut Vec<Decision>) {
        let signals = &fold.signals;
        assert!(offset >= self.offset, "event at {offset} applied to state already at {}", self.offset);
        let signal = if matches!(event.kind, vigil_schemas::EventKind::Deferred | vigil_schemas::EventKind::Bounced)
            && !event.internal
        {
            event.response_line().and_then(|line| signals.find(&line))
        } else {
            None
        };
        self.reputation.record(event, signal);
        self.suppressions.record(event);
        let before = decisions.len();
        self.actuation.apply(&fold.rules, event, &self.reputation, decisions);
        for decision in decisions[before..].iter().filter(|d| d.status == Status::Applied) {
            self.alerting.on_decision(decision.at, event.egress_source.as_deref(), event.provider.as_deref());
        }
        self.alerting.tick(&fold.alerts, &self.reputation, event.ingested_at);
        self.offset = offset + 1;
    }

    /// Attributes the batch's complaints to the deliveries before them (see
    /// [`crate::complaints`]), in log order, before the batch is stored or folded. Returns
    /// the complaints per attribution.
    pub fn attribute(&mut self, events: &mut [(u64, DeliveryEvent)], fold: &FoldRules) -> AttributionCounts {
        self.complaints.configure(fold.complaint_join);
        self.complaints.observe_all(events.iter_mut().map(|(_, event)| event))
    }

    /// Folds a batch of enriched events read from the log, marks offsets up to `end` as
    /// applied, and frees what no window can reach any more. Returns the batch's decisions.
    ///
    /// Quiet extensions of actions in force are kept for [`Self::take_announced`] until the
    /// next batch.
    pub fn apply_batch(&mut self, events: &[(u64, DeliveryEvent)], end: u64, fold: &FoldRules) -> Vec<Decision> {
        self.actuation.active.take_announced();
        let mut decisions = Vec::new();
        for (offset, event) in events {
            self.apply(*offset, event, fold, &mut decisions);
        }
        self.advance_to(end);
        self.reputation.evict();
        self.actuation.evict(&fold.rules);
        decisions
    }

    /// The last batch's quiet extensions of actions in force (each entry as it now stands), for
    /// live subscribers: they are not decisions, so they are neither recorded nor pushed.
    pub fn take_announced(&mut self) -> Vec<Decision> {
        self.actuation.active.take_announced()
    }

    /// Marks offsets up to `next` as applied (events past the end of a batch that the log
    /// skipped, e.g. after truncation).
    pub fn advance_to(&mut self, next: u64) {
        self.offset = self.offset.max(next);
    }

    /// A hash of the counts and the suppression list: equal digests mean equal reputation
    /// and suppression answers. They do not depend on the order events are folded in, so
    /// instances folding several partitions in different interleavings agree on it.
    #[must_use]
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.offset.to_le_bytes());
        self.reputation.digest_into(&mut hasher);
        self.suppressions.digest_into(&mut hasher);
        hasher.finalize().to_hex().to_string()
    }

    /// A hash of the rule state and the actions in force. Rules that act depend on the order
    /// events arrive (a threshold crossed at one event or another), as TSA's do: equal for
    /// the same log replayed in the same order under the same rules.
    #[must_use]
    pub fn actions_digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.offset.to_le_bytes());
        self.actuation.digest_into(&mut hasher);
        hasher.finalize().to_hex().to_string()
    }

    /// A hash of the alerts in force and the alert history (each notice's id): equal for the
    /// same log replayed in the same order under the same alert rules.
    #[must_use]
    pub fn alerts_digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.offset.to_le_bytes());
        self.alerting.digest_into(&mut hasher);
        hasher.finalize().to_hex().to_string()
    }

    /// Writes the state to `dir` atomically.
    ///
    /// # Errors
    /// When the file cannot be written or synced.
    pub fn save(&self, dir: &Path) -> Result<(), SnapshotError> {
        save_snapshot(dir, self)
    }

    /// The snapshot in `dir`, or `None` when there is none or it cannot be used (said in a
    /// warning; the caller rebuilds from the log).
    #[must_use]
    pub fn load(dir: &Path) -> Option<Self> {
        let mut state: Self = load_snapshot(dir)?;
        state.after_load();
        Some(state)
    }

    /// Restores what a decoded state does not carry (lookup indexes).
    pub fn after_load(&mut self) {
        self.reputation.after_load();
    }
}

/// Writes `value` as the snapshot of `dir`, atomically: a temporary file, fsynced, renamed
/// over the previous snapshot, and the directory fsynced.
///
/// # Errors
/// When the file cannot be written or synced.
pub fn save_snapshot<T: Serialize>(dir: &Path, value: &T) -> Result<(), SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let file = fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut encoder = zstd::Encoder::new(std::io::BufWriter::new(file), 3).map_err(io(&tmp))?;
    postcard::to_io(&SnapshotHeader { format: SNAPSHOT_FORMAT }, &mut encoder)?;
    postcard::to_io(value, &mut encoder)?;
    let mut writer = encoder.finish().map_err(io(&tmp))?;
    writer.flush().map_err(io(&tmp))?;
    let file = writer.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    let path = dir.join(SNAPSHOT_FILE);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// The snapshot of `dir`, or `None` when there is none or it cannot be used (said in a
/// warning).
#[must_use]
pub fn load_snapshot<T: DeserializeOwned>(dir: &Path) -> Option<T> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "snapshot unreadable; rebuilding");
            return None;
        }
    };
    let decoded = zstd::decode_all(bytes.as_slice()).map_err(|e| e.to_string()).and_then(|raw| {
        let (header, rest): (SnapshotHeader, _) = postcard::take_from_bytes(&raw).map_err(|e| e.to_string())?;
        if header.format != SNAPSHOT_FORMAT {
            return Err(format!("format {} is not {SNAPSHOT_FORMAT}", header.format));
        }
        postcard::from_bytes::<T>(rest).map_err(|e| e.to_string())
    });
    decoded.map_err(|error| tracing::warn!(%error, path = %path.display(), "snapshot unusable; rebuilding")).ok()
}
