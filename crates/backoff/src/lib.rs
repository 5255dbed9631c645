//! Exponential backoff as a plain value: how long to wait before trying again something that failed.
//! Pure (no clock, no timer), so that each sans-IO machine that retries (the chain follower, the relay
//! redial, hole punching, the leader's ballots, the SDK client's reconnects) holds one and is tested with
//! made-up instants.

use std::time::Duration;

/// Doubles from `initial` up to `max` with each failure; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
            failures: 0,
        }
    }

    /// One more failure: the delay before the next attempt. Each call doubles the one after, up to the
    /// maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The failures in a row since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: back to the initial delay, and no failures.
    pub fn reset(&mut self) {
        self.next = self.initial;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_a_reset_starts_over() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn the_cap_is_never_below_the_start() {
        let mut tiny = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(tiny.next_delay(), Duration::from_secs(2));
        assert_eq!(tiny.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn a_huge_count_of_failures_neither_overflows_nor_passes_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.failures(), 200);
    }
}
