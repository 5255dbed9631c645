//! Keeps a bulk flow from building a standing queue in front of every other flow through the device.
//!
//! When a bulk flow (a backup, a replica catching up) sends faster than the receiving side decrypts, its
//! datagrams wait in the UDP socket's receive buffer, and so does everything else from that peer: a commit's
//! round trip waits behind milliseconds of someone else's transfer. The buffer cannot tell flows apart, since
//! what waits there is encrypted, and it must stay large, or the bursts a busy machine makes overflow it and
//! every flow loses packets. So the device watches what stays queued after each full receive, and while that
//! stands above [`TARGET_BYTES`] for longer than [`INTERVAL`], it drops one full-size packet it has just
//! decrypted, then more often the longer the queue stands (CoDel's control law, RFC 8289 §5). TCP answers
//! the drop by sending less, and the queue drains. A full-size packet is most likely a bulk flow's; small
//! packets (a ping, a request, an acknowledgement) are never dropped.
//!
//! The decision is pure ([`Codel::observe`]); the packet thread gives it the backlog and the time. Beside one
//! iperf3 stream it took a ping's round trip from 1.95 to 1.60 ms (and from 2.42 to 1.90 with reads four
//! times as large), at the same throughput, for tens of retransmits in five seconds (`docs/benchmarks.md`).

use std::time::{Duration, Instant};

/// The backlog the receive buffer may keep for good: at the 250–350 MB/s a core decrypts here, about 0.4 ms.
pub(crate) const TARGET_BYTES: usize = 128 << 10;
/// How long the backlog may stand above the target before a drop, and the spacing of the first drops. A few
/// round trips of a LAN under load: long enough that a burst passes without one.
pub(crate) const INTERVAL: Duration = Duration::from_millis(5);
/// A packet carrying at least this much is a full-size one, and may be dropped.
pub(crate) const FULL_SIZE: usize = 1_000;

/// CoDel's state over a receive buffer's backlog.
#[derive(Debug, Default)]
pub(crate) struct Codel {
    /// When the backlog, above the target since then, has stood for an interval.
    above_until: Option<Instant>,
    /// While dropping: when the next drop is due.
    next_drop: Option<Instant>,
    /// Drops since dropping began; kept after it ends, to start again where it was if the queue comes back.
    count: u32,
    /// When the last dropping state ended.
    ended: Option<Instant>,
}

impl Codel {
    /// The backlog `bytes` left queued after a receive at `now` (0 when the receive found the buffer drained):
    /// whether to drop a full-size packet from what was just received.
    pub(crate) fn observe(&mut self, bytes: usize, now: Instant) -> bool {
        if bytes < TARGET_BYTES {
            self.above_until = None;
            if self.next_drop.take().is_some() {
                self.ended = Some(now);
            }
            return false;
        }
        let stood = *self.above_until.get_or_insert(now + INTERVAL);
        match self.next_drop {
            Some(due) if now >= due => {
                self.count = self.count.saturating_add(1);
                self.next_drop = Some(law(due.max(now - INTERVAL), self.count));
                true
            }
            Some(_) => false,
            None if now >= stood => {
                // A queue back soon after the last dropping state starts near where that one was (RFC 8289).
                let recent = self.ended.is_some_and(|t| now - t < 16 * INTERVAL);
                self.count = if recent {
                    self.count.saturating_sub(2).max(1)
                } else {
                    1
                };
                self.next_drop = Some(law(now, self.count));
                true
            }
            None => false,
        }
    }
}

/// The next drop after one at `at`, the `count`th: sooner as the queue stands on.
fn law(at: Instant, count: u32) -> Instant {
    at + INTERVAL.div_f64(f64::from(count.max(1)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drops over `steps` receives 0.1 ms apart, each leaving `backlog(i)` bytes queued.
    fn drops(steps: u64, backlog: impl Fn(u64) -> usize) -> Vec<u64> {
        let start = Instant::now();
        let mut codel = Codel::default();
        (0..steps)
            .filter(|i| codel.observe(backlog(*i), start + Duration::from_micros(100 * i)))
            .collect()
    }

    #[test]
    fn a_queue_below_the_target_or_a_burst_shorter_than_the_interval_drops_nothing() {
        assert!(drops(1_000, |_| TARGET_BYTES - 1).is_empty());
        // 4 ms above, then drained, again and again.
        assert!(drops(1_000, |i| if i % 60 < 40 { 1 << 20 } else { 0 }).is_empty());
    }

    #[test]
    fn a_standing_queue_is_dropped_from_after_an_interval_and_more_often_as_it_stands() {
        let at = drops(1_000, |_| 1 << 20);
        assert_eq!(at[0], 50, "the first drop after one interval: {at:?}");
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[0], 50, "the second an interval later: {gaps:?}");
        // Non-increasing, to the receive's 0.1 ms.
        assert!(gaps.windows(2).all(|g| g[1] <= g[0] + 1), "{gaps:?}");
        assert!(*gaps.last().unwrap() < 20, "{gaps:?}");
    }

    #[test]
    fn a_drained_queue_stops_the_drops_and_one_back_soon_resumes_near_where_they_were() {
        let start = Instant::now();
        let mut codel = Codel::default();
        let mut now = start;
        let mut step = |codel: &mut Codel, bytes| {
            now += Duration::from_micros(100);
            codel.observe(bytes, now)
        };
        let first = (0..1_000).filter(|_| step(&mut codel, 1 << 20)).count();
        assert!(first > 10);
        assert!(!step(&mut codel, 0), "drained");
        let count = codel.count;
        // Back 10 ms later: after an interval above, drops resume at count - 2, not at 1.
        for _ in 0..100 {
            step(&mut codel, 0);
        }
        let back = (1..=100).find(|_| step(&mut codel, 1 << 20));
        assert_eq!(
            back,
            Some(51),
            "a drop an interval after the first receive above"
        );
        assert_eq!(codel.count, count - 2);
    }
}
