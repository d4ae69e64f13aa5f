//! Rates with honest bounds, and the 0-100 reputation score.
//!
//! The formula and the reasons for each threshold are in `docs/reputation-score.md`; this file
//! is that document in code, and its tests pin the same numbers. In short: each bad rate is
//! taken at the lower end of its 95 % Wilson interval (so a handful of events cannot condemn a
//! sender), turned into a penalty that is 0 at the providers' "healthy" threshold and full at
//! their "action" threshold, and the penalties are taken off 100. Below the minimum volume
//! there is no score at all, only counts.

use schemars::JsonSchema;
use serde::Serialize;

use super::counters::{Metric, Totals};

/// z for a two-sided 95 % interval.
const Z: f64 = 1.96;

/// Fewer attempts than this in a window gives no score: a score from 10 messages is noise.
pub const MIN_ATTEMPTS: u64 = 50;

/// A proportion with its 95 % Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct Rate {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
    /// The denominator: how many trials the rate is over.
    pub of: u64,
}

impl Rate {
    /// `hits / trials`, or `None` without trials.
    #[must_use]
    pub fn wilson(hits: u64, trials: u64) -> Option<Self> {
        if trials == 0 {
            return None;
        }
        let n = trials as f64;
        let p = (hits.min(trials)) as f64 / n;
        let z2 = Z * Z;
        let centre = p + z2 / (2.0 * n);
        let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        let denominator = 1.0 + z2 / n;
        Some(Self {
            value: p,
            lower: ((centre - spread) / denominator).max(0.0),
            upper: ((centre + spread) / denominator).min(1.0),
            of: trials,
        })
    }
}

/// The rates reported for a scope and window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct Rates {
    /// delivered / attempts
    pub delivery: Option<Rate>,
    /// deferred / attempts
    pub deferral: Option<Rate>,
    /// bounced / attempts
    pub bounce: Option<Rate>,
    /// hard bounces / attempts
    pub hard_bounce: Option<Rate>,
    /// blocks / attempts
    pub block: Option<Rate>,
    /// provider signals / attempts
    pub signal: Option<Rate>,
    /// complaints / delivered: the providers' definition of the spam rate.
    pub complaint: Option<Rate>,
}

impl Rates {
    #[must_use]
    pub fn of(totals: &Totals) -> Self {
        let attempts = totals.attempts();
        let per_attempt = |metric| Rate::wilson(totals.get(metric), attempts);
        Self {
            delivery: per_attempt(Metric::Delivered),
            deferral: per_attempt(Metric::Deferred),
            bounce: per_attempt(Metric::Bounced),
            hard_bounce: per_attempt(Metric::HardBounces),
            block: per_attempt(Metric::Blocks),
            signal: per_attempt(Metric::Signals),
            complaint: Rate::wilson(totals.get(Metric::Complaints), totals.get(Metric::Delivered)),
        }
    }
}

/// One penalty of the score: a rate's lower bound mapped linearly from `healthy` (no
/// penalty) to `action` (`weight` points off).
#[derive(Debug, Clone, Copy)]
struct Penalty {
    weight: f64,
    healthy: f64,
    action: f64,
}

impl Penalty {
    fn points(self, rate: Option<Rate>) -> f64 {
        let Some(rate) = rate else { return 0.0 };
        let share = ((rate.lower - self.healthy) / (self.action - self.healthy)).clamp(0.0, 1.0);
        self.weight * share
    }
}

/// Gmail and Yahoo: keep the spam rate under 0.1 %, never reach 0.3 %.
const COMPLAINTS: Penalty = Penalty { weight: 35.0, healthy: 0.001, action: 0.003 };
/// Hard bounces: 2 % is the line ESPs treat as healthy list hygiene; at 10 % SES pauses.
const HARD_BOUNCES: Penalty = Penalty { weight: 20.0, healthy: 0.02, action: 0.10 };
/// Blocks: the receiver refusing the sender. A little is background noise; 5 % is an incident.
const BLOCKS: Penalty = Penalty { weight: 25.0, healthy: 0.005, action: 0.05 };
/// Deferrals: greylisting and throttling are normal up to a few percent.
const DEFERRALS: Penalty = Penalty { weight: 10.0, healthy: 0.05, action: 0.30 };
/// Named provider signals (TSS04, 4.7.28, S3140): any sustained rate is the provider warning.
const SIGNALS: Penalty = Penalty { weight: 10.0, healthy: 0.001, action: 0.02 };

/// The score, with the points each penalty took, so an analyst sees why.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct Score {
    pub value: f64,
    pub complaints: f64,
    pub hard_bounces: f64,
    pub blocks: f64,
    pub deferrals: f64,
    pub signals: f64,
}

/// The score of a window's totals, or `None` under [`MIN_ATTEMPTS`].
#[must_use]
pub fn score(totals: &Totals, rates: &Rates) -> Option<Score> {
    if totals.attempts() < MIN_ATTEMPTS {
        return None;
    }
    let complaints = COMPLAINTS.points(rates.complaint);
    let hard_bounces = HARD_BOUNCES.points(rates.hard_bounce);
    let blocks = BLOCKS.points(rates.block);
    let deferrals = DEFERRALS.points(rates.deferral);
    let signals = SIGNALS.points(rates.signal);
    let value = (100.0 - complaints - hard_bounces - blocks - deferrals - signals).max(0.0);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Some(Score {
        value: round(value),
        complaints: round(complaints),
        hard_bounces: round(hard_bounces),
        blocks: round(blocks),
        deferrals: round(deferrals),
        signals: round(signals),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(Metric, u64)]) -> Totals {
        let mut t = Totals::default();
        for &(m, n) in pairs {
            t.0[m as usize] = n;
        }
        t
    }

    #[test]
    fn wilson_matches_the_textbook() {
        // 10 of 100: the 95 % Wilson interval is [0.0552, 0.1744].
        let r = Rate::wilson(10, 100).unwrap();
        assert!((r.lower - 0.0552).abs() < 1e-4 && (r.upper - 0.1744).abs() < 1e-4, "{r:?}");
        let zero = Rate::wilson(0, 1000).unwrap();
        assert!(zero.lower == 0.0 && zero.upper > 0.0 && zero.upper < 0.004, "{zero:?}");
        assert_eq!(Rate::wilson(3, 0), None);
    }

    #[test]
    fn no_score_under_the_minimum_volume_however_bad() {
        let t = totals(&[(Metric::Bounced, 49), (Metric::HardBounces, 49)]);
        assert_eq!(score(&t, &Rates::of(&t)), None);
    }

    #[test]
    fn a_clean_sender_scores_100_and_complaints_cost_most() {
        let clean = totals(&[(Metric::Delivered, 10_000)]);
        assert_eq!(score(&clean, &Rates::of(&clean)).unwrap().value, 100.0);
        // 0.5 % complaints on 10 000 delivered: the lower bound is far past 0.3 %.
        let spammy = totals(&[(Metric::Delivered, 10_000), (Metric::Complaints, 50)]);
        let s = score(&spammy, &Rates::of(&spammy)).unwrap();
        assert_eq!((s.value, s.complaints), (65.0, 35.0));
        // 0.15 % complaints: the lower bound (about 0.09 %) is still under 0.1 %.
        let edge = totals(&[(Metric::Delivered, 10_000), (Metric::Complaints, 15)]);
        assert_eq!(score(&edge, &Rates::of(&edge)).unwrap().value, 100.0);
    }

    /// 200 of 400 attempts deferred with Outlook's "Server busy (S77719)": the reply names a
    /// signal, so the pair loses the signal penalty's 10 points besides the deferrals' 10.
    #[test]
    fn a_pair_half_throttled_by_a_named_signal_scores_80() {
        let line =
            "451 4.7.500 Server busy. Please try again later from [192.0.2.7]. (S77719) [Name=Protocol Filter Agent]";
        let named = u64::from(crate::reputation::SignalMatcher::new().find(line) == Some("microsoft_server_busy"));
        let t = totals(&[(Metric::Delivered, 200), (Metric::Deferred, 200), (Metric::Signals, 200 * named)]);
        let s = score(&t, &Rates::of(&t)).unwrap();
        assert_eq!((s.value, s.deferrals, s.signals), (80.0, 10.0, 10.0), "{s:?}");
    }
}
