//! Reputation: exact sliding-window counts per scope, rates with confidence bounds, a score,
//! and the providers' own reputation signals.
//!
//! - [`counters`]: what one event adds (delivered, deferred, bounced, hard bounces, blocks,
//!   complaints, ...).
//! - [`store`]: the minute-bucket window store per scope (egress source, pool, provider,
//!   egress source x provider, sending domain, tenant, campaign), on its own event-time clock.
//! - [`score`]: Wilson bounds and the 0-100 score (`docs/reputation-score.md`).
//! - [`signals`]: Gmail / Yahoo / Microsoft / Comcast / ... wordings counted as signals.

pub mod counters;
pub mod score;
pub mod signals;
pub mod store;

pub use counters::{LabelKind, Metric, Totals};
pub use score::{Rate, Rates, Score};
pub use signals::SignalMatcher;
pub use store::{Followed, ReputationStore, Scope, ScopeValues, SeriesId, Window, WindowFollower, WindowRow};
