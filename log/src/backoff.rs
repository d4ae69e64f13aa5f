//! Waiting before a retry: the one retry delay of the whole project (the broker, a full
//! buffer, ClickHouse, the pipeline's step, each decision pusher). A capped exponential delay
//! with jitter, that gives way to shutdown.
//!
//! Jitter: each wait sleeps a random time between half the nominal delay and the whole of it
//! ("equal jitter"), so many retriers that failed together (every pusher when a target
//! restarts, every tail when the broker comes back) do not come back together, while the wait
//! never shrinks below half of what the caller asked.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// The nominal delay doubles after each wait, up to `max`; each wait sleeps between half of it
/// and all of it.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    #[must_use]
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, next: first, max }
    }

    /// The nominal delay of the next wait (what it sleeps at most).
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// Takes the next delay, jittered, and doubles the nominal one: for callers that schedule
    /// the retry themselves (one timer for many pending retries).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = nominal / 2;
        half + rand::rng().random_range(Duration::ZERO..=nominal - half)
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay, or less if `shutdown` comes first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_with_each_wait_between_half_and_all_of_it() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let mut delays = Vec::new();
        for _ in 0..4 {
            let start = tokio::time::Instant::now();
            backoff.wait(&shutdown).await;
            delays.push(start.elapsed());
        }
        for (delay, nominal) in delays.iter().zip([100, 200, 300, 300].map(Duration::from_millis)) {
            assert!(*delay >= nominal / 2 && *delay <= nominal, "{delay:?} for {nominal:?}");
        }
        backoff.reset();
        assert_eq!(backoff.delay(), Duration::from_millis(100));
    }

    #[test]
    fn the_jitter_spreads_retries() {
        let delays: std::collections::BTreeSet<_> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(10), Duration::from_secs(10)).next_delay()).collect();
        assert!(delays.len() > 40, "fifty retriers that failed together come back apart: {delays:?}");
        assert!(delays.iter().all(|d| *d >= Duration::from_secs(5) && *d <= Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_the_wait_short() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let start = tokio::time::Instant::now();
        backoff.wait(&shutdown).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "a cancelled token wins over the sleep");
    }
}
