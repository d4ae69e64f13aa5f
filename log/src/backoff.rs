//! Waiting before a retry: a capped exponential delay that gives way to shutdown. Used
//! wherever a role waits on something outside it (the broker, a full buffer, ClickHouse).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The delay doubles after each wait, up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    #[must_use]
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The delay the next [`Backoff::wait`] sleeps.
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// Sleeps the current delay, or less if `shutdown` comes first; then doubles it.
    pub async fn wait(&mut self, shutdown: &CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(self.next) => {}
        }
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let mut delays = Vec::new();
        for _ in 0..4 {
            let start = tokio::time::Instant::now();
            backoff.wait(&shutdown).await;
            delays.push(start.elapsed());
        }
        assert_eq!(delays, [100, 200, 300, 300].map(Duration::from_millis));
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
