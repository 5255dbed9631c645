//! Whether a peer answers now, and when to ask it. Pure: the device's timer asks [`Prober::due`] and sends
//! the probe, and whoever shows a peer asks [`Liveness::alive`].
//!
//! A peer is **alive** while something it sent authenticated less than [`Liveness::timeout`] ago: a
//! handshake message, data, a keepalive, or the answer to a probe. A WireGuard session says nothing of that
//! (it is valid for 180 s whether or not the peer is still there), and an idle peer sends nothing for 25 s,
//! so the device asks: once a peer with a session has been silent for a third of the timeout, it sends a
//! **probe**, an ICMP echo request to the peer's overlay address through the tunnel (`mesh-wg`'s `probe`), and
//! again every sixth of the timeout while no answer comes. Four probes go out before the timeout, so a
//! lost one or two are not taken for a death; a peer that is under load answers its data anyway.
//!
//! Any WireGuard peer's kernel answers an echo request, and this project's device answers its own probes
//! itself. Of a pair, the side with the lower public key probes first, and the other only after
//! [`SECOND_PROBER`] of the timeout: while the first one's probes arrive the second hears its peer and never
//! probes, so an idle pair costs one probe and one answer per third of the timeout, not two of each. Once a
//! peer counts as dead it is asked every third of the timeout, so that it is alive again about as soon as it
//! answers.
//!
//! Bounds, with the default timeout of 2.5 s: a peer is dead at most 2.5 s after the last thing it sent (so
//! at most 2.5 s after it died, froze or was cut off), and alive again as soon as its first answer arrives.
//!
//! **Watched peers only.** Those bounds hold for a *watched* peer: one that carries traffic, or whose health
//! something uses (the device is told which). An idle peer nothing watches is not probed until it has been
//! silent for [`IDLE_PROBE_AFTER`], which its own keepalive (every 25 s) usually ends first, and counts as dead
//! after [`IDLE_TIMEOUT`]: at 999 idle peers, about 80 keepalives a second each way instead of a probe and
//! its answer per peer every second. A peer that becomes watched is probed at once if it has been silent for
//! the watched probe's third of the timeout.

use std::time::{Duration, Instant};

/// The default [`Liveness::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2500);
/// The shortest timeout that makes sense: a probe's round trip under load must fit in a sixth of it.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(600);
/// The longest: a session with no traffic at all expires after WireGuard's 180 s, after which nothing is
/// probed.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// How long an idle peer that nothing watches may be silent and count as alive: longer than the 25 s between
/// its keepalives.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The silence after which an unwatched peer is probed; then every [`IDLE_RETRY`] until it answers.
pub const IDLE_PROBE_AFTER: Duration = Duration::from_secs(27);
const IDLE_RETRY: Duration = Duration::from_secs(1);

/// How much later than the first side of a pair the second one starts probing, as a fraction of the
/// timeout: the first side's probes start at a third of it.
const SECOND_PROBER: f64 = 0.45;

/// How long a peer may go unheard and still count as alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Liveness {
    /// Whether a peer last heard at `last_heard` is alive at `now`.
    pub fn alive(&self, last_heard: Option<Instant>, now: Instant) -> bool {
        last_heard.is_some_and(|t| now.saturating_duration_since(t) < self.timeout)
    }

    /// How long a peer may be silent and count as alive: the timeout while it is watched, else
    /// [`IDLE_TIMEOUT`] (or the timeout, if that is longer).
    pub fn bound(&self, watched: bool) -> Duration {
        match watched {
            true => self.timeout,
            false => self.timeout.max(IDLE_TIMEOUT),
        }
    }

    /// When a peer last heard at `last_heard` dies unless heard again; `None` if it was never heard.
    pub fn dies_at(&self, last_heard: Option<Instant>) -> Option<Instant> {
        last_heard.map(|t| t + self.timeout)
    }

    /// The silence after which this side probes: a third of the timeout for the first side of a pair,
    /// [`SECOND_PROBER`] of it for the other.
    fn probe_after(&self, first: bool) -> Duration {
        match first {
            true => self.timeout / 3,
            false => self.timeout.mul_f64(SECOND_PROBER),
        }
    }

    /// The longest a silent peer with a session goes unprobed: either side of a pair has probed by then.
    pub fn probed_within(&self) -> Duration {
        self.probe_after(false)
    }

    /// How often an unanswered probe is sent again, while the peer is alive.
    fn retry(&self) -> Duration {
        self.timeout / 6
    }
}

/// Which side of a pair probes first: the one whose public key sorts lower. Both sides work it out alike.
pub fn probes_first(own: &[u8; 32], peer: &[u8; 32]) -> bool {
    own < peer
}

/// When one peer was last probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prober {
    last_probe: Option<Instant>,
    /// Whether the peer was watched at the last call: one that becomes so starts a new silence.
    watched: bool,
    /// A new handshake was asked for in this silence ([`Prober::handshake_due`]).
    handshake_asked: bool,
}

/// What [`Prober::due`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    pub now: Instant,
    /// When the peer last sent anything that authenticated.
    pub last_heard: Option<Instant>,
    /// A session is up: a probe can be sent, and answered. Without one WireGuard's own handshake is the
    /// question, and its response the answer.
    pub session: bool,
    /// This side probes first ([`probes_first`]).
    pub first: bool,
    /// The peer carries traffic, or something uses its health: it is held to the timeout.
    pub watched: bool,
}

impl Prober {
    /// Whether to send a probe now; records it when so.
    pub fn due(&mut self, liveness: &Liveness, s: Situation) -> bool {
        if s.watched && !std::mem::replace(&mut self.watched, s.watched) {
            // Judged by the idle bound until now: the first probe of the watched schedule goes at once.
            self.last_probe = None;
        }
        self.watched = s.watched;
        if !s.session {
            return false;
        }
        let silent = s
            .last_heard
            .map_or(Duration::MAX, |t| s.now.saturating_duration_since(t));
        let (after, retry, dead, dead_every) = match s.watched {
            true => (
                liveness.probe_after(s.first),
                liveness.retry(),
                liveness.timeout,
                liveness.probe_after(true),
            ),
            false => (IDLE_PROBE_AFTER, IDLE_RETRY, IDLE_TIMEOUT, IDLE_TIMEOUT / 3),
        };
        if silent < after {
            return false;
        }
        let every = match silent < dead {
            true => retry,
            false => dead_every,
        };
        let due = match self.last_probe {
            None => true,
            // Answered since: this silence is a new one, and its first probe is due now.
            Some(p) if s.last_heard.is_some_and(|h| h >= p) => true,
            Some(p) => s.now.saturating_duration_since(p) >= every,
        };
        if due {
            self.last_probe = Some(s.now);
        }
        due
    }

    /// Whether to start a new handshake now: once in a silence, when it reaches the timeout with a session
    /// up. The peer may have lost the session (its agent restarted) and be unable to ask for one itself (it
    /// knows no address of ours yet, behind a NAT); WireGuard would ask only after 15 s of unanswered data.
    pub fn handshake_due(&mut self, liveness: &Liveness, s: Situation) -> bool {
        let bound = Liveness {
            timeout: liveness.bound(s.watched),
        };
        if !s.session || bound.alive(s.last_heard, s.now) {
            self.handshake_asked = false;
            return false;
        }
        !std::mem::replace(&mut self.handshake_asked, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The numbers below are for a 3 s timeout.
    const THREE: Liveness = Liveness {
        timeout: Duration::from_secs(3),
    };

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn situation(now: Instant, last_heard: Option<Instant>, first: bool) -> Situation {
        Situation {
            now,
            last_heard,
            session: true,
            first,
            watched: true,
        }
    }

    #[test]
    fn a_peer_is_alive_until_the_timeout_after_it_was_last_heard() {
        let l = THREE;
        let t0 = Instant::now();
        assert!(!l.alive(None, t0), "never heard");
        assert!(l.alive(Some(t0), ms(t0, 2_999)));
        assert!(!l.alive(Some(t0), ms(t0, 3_000)));
        assert_eq!(l.dies_at(Some(t0)), Some(ms(t0, 3_000)));
        assert_eq!(l.dies_at(None), None);
    }

    #[test]
    fn the_lower_key_of_a_pair_probes_first() {
        assert!(probes_first(&[1; 32], &[2; 32]));
        assert!(!probes_first(&[2; 32], &[1; 32]));
    }

    /// The first side probes after a third of the timeout of silence, then every sixth while unanswered, so
    /// four probes go out before the peer counts as dead; the second side starts later.
    #[test]
    fn a_silent_peer_is_probed_after_a_third_of_the_timeout_then_every_sixth() {
        let l = THREE;
        let t0 = Instant::now();
        let mut p = Prober::default();
        let sent: Vec<u64> = (0..3_000)
            .step_by(100)
            .filter(|t| p.due(&l, situation(ms(t0, *t), Some(t0), true)))
            .collect();
        assert_eq!(sent, [1_000, 1_500, 2_000, 2_500]);

        let mut second = Prober::default();
        let sent: Vec<u64> = (0..3_000)
            .step_by(100)
            .filter(|t| second.due(&l, situation(ms(t0, *t), Some(t0), false)))
            .collect();
        assert_eq!(sent, [1_400, 1_900, 2_400, 2_900]);
    }

    #[test]
    fn a_dead_peer_is_asked_every_third_of_the_timeout() {
        let l = THREE;
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert!(p.due(&l, situation(ms(t0, 3_000), Some(t0), true)));
        assert!(!p.due(&l, situation(ms(t0, 3_900), Some(t0), true)));
        assert!(p.due(&l, situation(ms(t0, 4_000), Some(t0), true)));
    }

    #[test]
    fn a_new_handshake_is_asked_for_once_when_a_silence_reaches_the_timeout() {
        let l = THREE;
        let t0 = Instant::now();
        let mut p = Prober::default();
        let heard = Some(t0);
        assert!(!p.handshake_due(&l, situation(ms(t0, 2_999), heard, true)));
        assert!(p.handshake_due(&l, situation(ms(t0, 3_000), heard, true)));
        assert!(
            !p.handshake_due(&l, situation(ms(t0, 9_000), heard, true)),
            "once"
        );
        let heard = Some(ms(t0, 9_500));
        assert!(!p.handshake_due(&l, situation(ms(t0, 9_600), heard, true)));
        assert!(
            p.handshake_due(&l, situation(ms(t0, 12_500), heard, true)),
            "again in the next silence"
        );
    }

    /// An idle peer nothing watches is probed only once its keepalive is overdue, and counts as dead only after
    /// the idle bound; once watched, it is probed at once and held to the timeout.
    #[test]
    fn an_unwatched_peer_is_probed_only_once_its_keepalive_is_overdue() {
        let l = THREE;
        let t0 = Instant::now();
        let idle = |now: u64, heard: u64| Situation {
            watched: false,
            ..situation(ms(t0, now), Some(ms(t0, heard)), true)
        };
        let mut p = Prober::default();
        // A keepalive every 25 s: never a probe.
        let probes = (0..120_000u64)
            .step_by(100)
            .filter(|t| p.due(&l, idle(*t, t - t % 25_000)))
            .count();
        assert_eq!(probes, 0, "its keepalives answer for it");
        let mut p = Prober::default();
        let sent: Vec<u64> = (0..31_000)
            .step_by(100)
            .filter(|t| p.due(&l, idle(*t, 0)))
            .collect();
        assert_eq!(sent, [27_000, 28_000, 29_000], "then dead at 30 s");
        assert!(
            p.due(&l, situation(ms(t0, 30_100), Some(t0), true)),
            "watched now: probed at once"
        );
        assert_eq!(l.bound(false), IDLE_TIMEOUT);
        assert_eq!(l.bound(true), THREE.timeout);
        let mut h = Prober::default();
        assert!(
            !h.handshake_due(&l, idle(29_999, 0)),
            "alive by the idle bound"
        );
        assert!(h.handshake_due(&l, idle(30_000, 0)));
    }

    #[test]
    fn nothing_is_probed_without_a_session() {
        let l = THREE;
        let t0 = Instant::now();
        let mut p = Prober::default();
        let s = Situation {
            session: false,
            ..situation(ms(t0, 10_000), Some(t0), true)
        };
        assert!(!p.due(&l, s));
    }

    #[test]
    fn an_answer_starts_a_new_silence_whose_first_probe_comes_after_a_third() {
        let l = THREE;
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert!(p.due(&l, situation(ms(t0, 1_000), Some(t0), true)));
        let answered = Some(ms(t0, 1_010));
        assert!(!p.due(&l, situation(ms(t0, 1_500), answered, true)));
        assert!(!p.due(&l, situation(ms(t0, 2_000), answered, true)));
        assert!(p.due(&l, situation(ms(t0, 2_010), answered, true)));
    }

    /// What one side of a pair sees when the other answers each of its probes after `rtt`, loses those
    /// listed in `lost`, and sends nothing of its own: whether it ever counts the peer dead.
    fn flaps(rtt: u64, lost: &[usize], first: bool) -> bool {
        let l = THREE;
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut last_heard = Some(t0);
        let mut answers: Vec<u64> = Vec::new();
        let mut probes = 0;
        // The device's timer runs every 100 ms; answers arrive between ticks.
        for tick in (0..60_000).step_by(100) {
            let now = ms(t0, tick);
            if let Some(at) = answers.iter().copied().filter(|a| *a <= tick).max() {
                last_heard = Some(ms(t0, at));
            }
            if !l.alive(last_heard, now) {
                return true;
            }
            if p.due(&l, situation(now, last_heard, first)) {
                if !lost.contains(&probes) {
                    answers.push(tick + rtt);
                }
                probes += 1;
            }
        }
        false
    }

    #[test]
    fn a_lost_probe_or_three_are_no_death() {
        assert!(!flaps(1, &[], true));
        assert!(!flaps(1, &[0], true));
        assert!(!flaps(1, &[0, 1, 2], true));
        assert!(!flaps(1, &[5, 6], false));
        assert!(flaps(1, &[0, 1, 2, 3], true), "four in a row is silence");
    }

    proptest! {
        /// Whatever the round trip (under the retry interval) and whichever two probes in a row are lost, a
        /// peer that answers is never taken for dead.
        #[test]
        fn an_answering_peer_never_flaps(rtt in 0u64..450, a in 0usize..40, first: bool) {
            prop_assert!(!flaps(rtt, &[a, a + 1], first));
        }

        /// A peer that stops answering is dead by the timeout after the last thing it sent, whenever that
        /// was; and never before.
        #[test]
        fn a_silent_peer_dies_at_the_timeout(heard_ms in 0u64..10_000, now_ms in 0u64..20_000) {
            let l = THREE;
            let t0 = Instant::now();
            let alive = l.alive(Some(ms(t0, heard_ms)), ms(t0, now_ms));
            prop_assert_eq!(alive, now_ms < heard_ms + 3_000);
        }
    }
}
