//! When to dial a peer's relay: one attempt at a time, and after failures, again only after a backoff that
//! doubles from 1 s up to 3 s. The relay is dialled only while the pair's UDP does not get through, so the
//! pair has no path but it: a gateway that is back must carry it again within seconds, not at the end of a
//! long backoff. What that costs a gateway that is down is one refused connection per relayed peer every 3 s.

use std::time::{Duration, Instant};

use backoff::Backoff;

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Redial {
    in_progress: bool,
    backoff: Backoff,
    not_before: Option<Instant>,
}

impl Default for Redial {
    fn default() -> Self {
        Self {
            in_progress: false,
            backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_MAX),
            not_before: None,
        }
    }
}

impl Redial {
    /// Starts an attempt if none is running and the backoff has passed; whether it did.
    pub fn start(&mut self, now: Instant) -> bool {
        if self.in_progress || self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        self.in_progress = true;
        true
    }

    /// The attempt ended with the stream up (`ok`) or not, at `now`; returns the failures in a row.
    pub fn finished(&mut self, ok: bool, now: Instant) -> u32 {
        self.in_progress = false;
        if ok {
            self.backoff.reset();
            self.not_before = None;
        } else {
            self.not_before = Some(now + self.backoff.next_delay());
        }
        self.backoff.failures()
    }

    /// The attempt ended but its target is no longer wanted: neither success nor failure.
    pub fn abandoned(&mut self) {
        self.in_progress = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_attempt_at_a_time_and_failures_back_off_to_three_seconds() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        assert!(r.start(t0));
        assert!(!r.start(t0), "one attempt at a time");
        assert_eq!(r.finished(false, t0), 1);
        assert!(!r.start(t0 + Duration::from_millis(999)));
        assert!(r.start(t0 + Duration::from_secs(1)));
        assert_eq!(r.finished(false, t0), 2);
        assert!(!r.start(t0 + Duration::from_millis(1_999)));
        assert!(r.start(t0 + Duration::from_secs(2)));
        for n in 3..=20 {
            assert_eq!(r.finished(false, t0), n);
            assert!(
                !r.start(t0 + Duration::from_millis(2_999)),
                "capped at 3 s, not less"
            );
            assert!(
                r.start(t0 + Duration::from_secs(3)),
                "capped at 3 s after {n} failures"
            );
        }
        assert_eq!(r.finished(true, t0), 0);
        assert!(r.start(t0), "a success clears the backoff");
        r.abandoned();
        assert!(r.start(t0), "an abandoned attempt counts for nothing");
    }
}
