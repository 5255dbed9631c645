//! Whether the chain has stopped making blocks, judged without I/O from when this node saw its head move.
//!
//! A chain that makes blocks at a steady pace (Ethereum's 12 s, Base's 2 s) and stops is named as stalled once
//! its head has not moved for [`STALL_FACTOR`] of its usual interval, and no sooner than [`MIN_STALL`]. A
//! chain whose blocks come irregularly (anvil mining on demand, a chain with little traffic and no empty
//! blocks) is never named: an idle chain looks the same as a stalled one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many of the last intervals the usual one is the median of.
const KEPT: usize = 10;
/// How many intervals must have been seen, all within [`REGULAR`] of the median, before a pause counts.
const MIN_SEEN: usize = 5;
/// Intervals up to this many times the median count as regular.
const REGULAR: u32 = 3;
/// A pause of this many usual intervals is a stall.
pub const STALL_FACTOR: u32 = 3;
/// The shortest pause named a stall, whatever the pace.
pub const MIN_STALL: Duration = Duration::from_secs(3);

/// The chain's pace, as this node has seen its head move.
#[derive(Debug, Clone, Default)]
pub struct HeadWatch {
    /// The newest head seen, and when it was first seen.
    last: Option<(u64, Instant)>,
    /// The time per block between the last moves of the head, newest last.
    intervals: VecDeque<Duration>,
}

/// A chain that has stopped: its last head, since when it has not moved, and its usual interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub head: u64,
    pub since: Instant,
    pub usual: Duration,
}

impl Stall {
    /// The stall in words.
    pub fn describe(&self, now: Instant) -> String {
        format!(
            "the chain has made no block for {} s (since block {}); its blocks came every {:.1} s",
            now.saturating_duration_since(self.since).as_secs(),
            self.head,
            self.usual.as_secs_f64()
        )
    }
}

impl HeadWatch {
    /// The chain's head is `head` at `now`.
    pub fn observe(&mut self, head: u64, now: Instant) {
        match self.last {
            Some((last, _)) if head <= last => {}
            Some((last, at)) => {
                let blocks = u32::try_from(head - last).unwrap_or(u32::MAX);
                let per_block = now.saturating_duration_since(at) / blocks;
                self.intervals.push_back(per_block);
                if self.intervals.len() > KEPT {
                    self.intervals.pop_front();
                }
                self.last = Some((head, now));
            }
            None => self.last = Some((head, now)),
        }
    }

    /// The usual interval between blocks, once the chain has shown a steady pace.
    pub fn usual(&self) -> Option<Duration> {
        if self.intervals.len() < MIN_SEEN {
            return None;
        }
        let mut sorted: Vec<Duration> = self.intervals.iter().copied().collect();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let steady = !median.is_zero() && sorted.iter().all(|i| *i <= median * REGULAR);
        steady.then_some(median)
    }

    /// Whether the chain has stalled as of `now`.
    pub fn stalled(&self, now: Instant) -> Option<Stall> {
        let (head, since) = self.last?;
        let usual = self.usual()?;
        let pause = now.saturating_duration_since(since);
        (pause >= MIN_STALL.max(usual * STALL_FACTOR)).then_some(Stall { head, since, usual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A head every second, polled every 200 ms.
    fn steady(watch: &mut HeadWatch, t0: Instant, blocks: u64) {
        for ms in (0..=blocks * 1000).step_by(200) {
            watch.observe(100 + ms / 1000, at(t0, ms));
        }
    }

    #[test]
    fn a_steady_chain_that_stops_is_named_after_three_intervals_and_clears_at_its_next_block() {
        let t0 = Instant::now();
        let mut watch = HeadWatch::default();
        steady(&mut watch, t0, 10);
        assert_eq!(watch.usual(), Some(Duration::from_secs(1)));
        assert_eq!(
            watch.stalled(at(t0, 12_500)),
            None,
            "two and a half seconds is a pause"
        );
        let stall = watch
            .stalled(at(t0, 13_100))
            .expect("three seconds is a stall");
        assert_eq!((stall.head, stall.since), (110, at(t0, 10_000)));
        assert!(
            stall
                .describe(at(t0, 20_000))
                .starts_with("the chain has made no block for 10 s (since block 110)"),
            "{}",
            stall.describe(at(t0, 20_000))
        );
        watch.observe(111, at(t0, 120_000));
        assert_eq!(watch.stalled(at(t0, 120_100)), None, "a new block ends it");
    }

    #[test]
    fn a_chain_that_mines_on_demand_is_never_named() {
        let t0 = Instant::now();
        let mut watch = HeadWatch::default();
        // Blocks when transactions come: 0.1 s, 40 s, 2 s, 300 s apart...
        for (head, ms) in [
            (1, 0),
            (2, 100),
            (3, 40_100),
            (4, 42_100),
            (5, 342_100),
            (6, 342_200),
        ] {
            watch.observe(head, at(t0, ms));
        }
        assert_eq!(watch.usual(), None);
        assert_eq!(watch.stalled(at(t0, 10_000_000)), None);
    }

    #[test]
    fn a_fast_chain_is_named_no_sooner_than_three_seconds() {
        let t0 = Instant::now();
        let mut watch = HeadWatch::default();
        for n in 0..10 {
            watch.observe(n, at(t0, n * 250));
        }
        assert_eq!(watch.stalled(at(t0, 2_250 + 2_000)), None);
        assert!(watch.stalled(at(t0, 2_250 + 3_000)).is_some());
    }

    #[test]
    fn heads_that_jump_count_per_block_and_a_head_that_goes_back_is_ignored() {
        let t0 = Instant::now();
        let mut watch = HeadWatch::default();
        // Polled every 2 s on a 1 s chain: two blocks a poll.
        for n in 0..8 {
            watch.observe(n * 2, at(t0, n * 2_000));
        }
        assert_eq!(watch.usual(), Some(Duration::from_secs(1)));
        // A provider behind by a block does not reset anything.
        watch.observe(10, at(t0, 15_000));
        assert_eq!(
            watch.stalled(at(t0, 18_100)),
            Some(Stall {
                head: 14,
                since: at(t0, 14_000),
                usual: Duration::from_secs(1),
            })
        );
    }
}
