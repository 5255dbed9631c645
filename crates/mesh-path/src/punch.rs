//! Hole punching toward one peer, and the candidate messages exchanged with it. Pure: the device's timer
//! runs [`Punch::tick`] and does what it returns.
//!
//! While a pair is on the relay with a live session (so that a message gets through), each side in turn
//! starts an **attempt**: it sends a *call* with its own candidates through the tunnel and, at once, one
//! WireGuard handshake initiation to every candidate of the peer's, repeated on a schedule over
//! [`WINDOW`] (the same bytes each time: the first copy through makes the handshake, later ones are
//! replays WireGuard drops). The peer, on the call, starts its own attempt toward the caller's
//! candidates, so both NATs see outgoing datagrams to each other within a round trip over the relay, and
//! the first initiation through an opened mapping is answered over UDP. The path then moves to UDP by the
//! rules of [`crate::path`] (an answer over UDP proves the round trip) and is reported `punched`; the relay
//! stays up and takes over again when UDP stops answering.
//!
//! An attempt that gets no answer is tried again after a backoff (10 s, doubling to 60 s), or at once
//! when the peer calls or its candidates change. A pair whose NATs both map per destination is not tried
//! ([`crate::nat::can_punch`]). Candidates are checked before use ([`crate::candidates::usable`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use backoff::Backoff;
use ipnetwork::Ipv4Network;

use crate::candidates::{Candidate, Kind, MAX_CANDIDATES, Message, usable};
use crate::nat::{Mapping, can_punch};

/// When the initiation is sent to every target, after an attempt starts: often at first, while the other
/// side's call is on its way, then less.
const SEND_AT_MS: [u64; 7] = [0, 150, 400, 800, 1_500, 2_500, 4_000];
/// How long an attempt waits for an answer over UDP: WireGuard's REKEY_TIMEOUT, after which its own retry
/// goes through the relay with a new initiation.
pub const WINDOW: Duration = Duration::from_secs(5);
/// The least time between two attempts, however often the peer calls.
const MIN_GAP: Duration = Duration::from_secs(5);
/// The first backoff after an attempt that got no answer; it doubles up to [`BACKOFF_MAX`].
const BACKOFF: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The least time between two updates (answers included) to one peer.
const UPDATE_GAP: Duration = Duration::from_secs(1);
/// Candidates are sent again this long after the last message even when nothing changed: a message in the
/// tunnel is a datagram, and may be lost.
const REFRESH: Duration = Duration::from_secs(120);

/// This node's side: what it publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCandidates {
    /// Bumped whenever `candidates` or `mapping` change.
    pub version: u64,
    pub candidates: Vec<Candidate>,
    pub mapping: Mapping,
    /// This node's interface addresses: a peer's candidate there would be this node.
    pub own_ips: Vec<Ipv4Addr>,
    /// The first round of discovery is over: the mapping is as known as it will be.
    pub settled: bool,
}

/// Why a pair is on the relay rather than punched, for the peer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayReason {
    /// No session through the relay yet, so no message gets through to coordinate.
    NoSession,
    /// The peer has published no candidate, and has no endpoint.
    NoCandidates,
    /// Not tried: the NATs cannot be punched through (the reason says why).
    Skipped {
        reason: &'static str,
        ours: Mapping,
        theirs: Mapping,
    },
    /// An attempt is under way to this many addresses; `failed` attempts before it got no answer.
    Punching { targets: usize, failed: u32 },
    /// The latest attempt got no answer from this many addresses.
    NoAnswer { tried: usize, attempts: u64 },
    /// Waiting to try: the peer's candidates are known, and the next attempt is due by the backoff.
    Waiting,
}

impl std::fmt::Display for RelayReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSession => f.write_str("no session through the relay yet"),
            Self::NoCandidates => f.write_str(
                "the peer has published no address to try (no STUN answer, no local address, no endpoint)",
            ),
            Self::Skipped {
                reason,
                ours,
                theirs,
            } => write!(f, "{reason} (this node: {ours}, the peer: {theirs})"),
            Self::Punching { targets, failed: 0 } => {
                write!(f, "punching: trying {targets} candidate(s)")
            }
            Self::Punching { targets, failed } => write!(
                f,
                "punching: trying {targets} candidate(s) again, after {failed} attempt(s) with no answer over UDP"
            ),
            Self::NoAnswer { tried, attempts } => write!(
                f,
                "no answer over UDP from {tried} candidate(s) in {attempts} attempt(s); trying again with backoff"
            ),
            Self::Waiting => f.write_str("the next punching attempt is due"),
        }
    }
}

#[derive(Debug, Clone)]
struct Theirs {
    candidates: Vec<Candidate>,
    mapping: Mapping,
}

#[derive(Debug, Clone)]
struct Attempt {
    started: Instant,
    step: usize,
    targets: Vec<SocketAddrV4>,
}

/// The situation at a tick.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    pub now: Instant,
    /// The peer's datagrams go through the relay.
    pub on_relay: bool,
    /// A session is up: a message gets through.
    pub session: bool,
    pub ours: &'a OwnCandidates,
    /// The peer's UDP endpoint (registered, or where it roamed): one more address to try.
    pub endpoint: Option<SocketAddr>,
    pub overlay: Ipv4Network,
}

/// What to do at a tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// A candidate message to send the peer through the tunnel.
    pub message: Option<Kind>,
    /// Send the attempt's initiation to each of these over UDP.
    pub send_to: Vec<SocketAddrV4>,
    /// The attempt starts: make a fresh initiation for it.
    pub fresh_initiation: bool,
}

/// One peer's punching state.
#[derive(Debug, Clone)]
pub struct Punch {
    theirs: Option<Theirs>,
    attempt: Option<Attempt>,
    last_start: Option<Instant>,
    not_before: Option<Instant>,
    /// Attempts in a row that got no answer, and how long to wait after the latest.
    backoff: Backoff,
    attempts: u64,
    last_tried: usize,
    /// The peer called: attempt as soon as allowed.
    called: bool,
    /// The peer called: it is owed our candidates.
    answer: bool,
    sent_version: Option<u64>,
    last_message: Option<Instant>,
}

impl Default for Punch {
    fn default() -> Self {
        Self {
            theirs: None,
            attempt: None,
            last_start: None,
            not_before: None,
            backoff: Backoff::new(BACKOFF, BACKOFF_MAX),
            attempts: 0,
            last_tried: 0,
            called: false,
            answer: false,
            sent_version: None,
            last_message: None,
        }
    }
}

impl Punch {
    /// The peer's candidates, as it last published them.
    pub fn theirs(&self) -> (&[Candidate], Mapping) {
        self.theirs
            .as_ref()
            .map_or((&[], Mapping::Unknown), |t| (&t.candidates, t.mapping))
    }

    /// Nothing under way or owed: no attempt, no call to answer. Ticks only send the periodic update then.
    pub fn idle(&self) -> bool {
        self.attempt.is_none() && !self.called && !self.answer
    }

    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// A candidate message from the peer.
    pub fn received(&mut self, msg: Message) {
        let mut candidates = msg.candidates;
        candidates.truncate(MAX_CANDIDATES);
        let ips = |list: &[Candidate]| {
            let mut ips: Vec<Ipv4Addr> = list.iter().map(|c| *c.addr.ip()).collect();
            ips.sort();
            ips.dedup();
            ips
        };
        // New addresses are worth trying at once; new ports of a NAT that maps each destination apart are
        // not (they change with every STUN round, and none of them is what this node will see).
        let changed = match &self.theirs {
            None => true,
            Some(t) if t.mapping != msg.mapping => true,
            Some(t) if msg.mapping.depends_on_destination() => {
                ips(&t.candidates) != ips(&candidates)
            }
            Some(t) => t.candidates != candidates,
        };
        self.theirs = Some(Theirs {
            candidates,
            mapping: msg.mapping,
        });
        if msg.kind == Kind::Call {
            self.answer = true;
            // A call while our own attempt is under way is the peer's answer to it: both are punching at
            // once already, and taking it as a new call would keep the two bouncing calls off each other.
            self.called |= self.attempt.is_none();
        }
        if changed {
            self.backoff.reset();
            self.not_before = None;
        }
    }

    /// The addresses an attempt sends to now.
    fn targets(&self, t: &Tick<'_>) -> Vec<SocketAddrV4> {
        let (candidates, _) = self.theirs();
        let endpoint = match t.endpoint {
            Some(SocketAddr::V4(e)) => Some(e),
            _ => None,
        };
        let mut out: Vec<SocketAddrV4> = Vec::new();
        for addr in candidates.iter().map(|c| c.addr).chain(endpoint) {
            if usable(addr, t.overlay, &t.ours.own_ips) && !out.contains(&addr) {
                out.push(addr);
            }
        }
        out.truncate(MAX_CANDIDATES + 1);
        out
    }

    fn feasible(&self, ours: Mapping) -> Result<(), &'static str> {
        can_punch(ours, self.theirs().1)
    }

    pub fn tick(&mut self, t: &Tick<'_>) -> Actions {
        let mut out = Actions::default();
        let now = t.now;
        if !t.on_relay || !t.session || self.feasible(t.ours.mapping).is_err() {
            self.end_attempt(now, false);
            self.called = false;
        } else {
            // Until the peer's candidates are in, there is nothing to send to and no telling whether its NAT
            // can be punched: the updates both sides send at the session's start bring them.
            let due = t.ours.settled
                && (self.called
                    || (self.theirs.is_some() && self.not_before.is_none_or(|n| now >= n)));
            let gap_ok = self
                .last_start
                .is_none_or(|s| now.saturating_duration_since(s) >= MIN_GAP);
            if self.attempt.is_none() && due && gap_ok {
                self.attempt = Some(Attempt {
                    started: now,
                    step: 0,
                    targets: Vec::new(),
                });
                self.last_start = Some(now);
                self.attempts += 1;
                self.called = false;
                out.message = Some(Kind::Call);
                out.fresh_initiation = true;
            }
            let targets = self.targets(t);
            if let Some(a) = self.attempt.as_mut() {
                for addr in targets {
                    if !a.targets.contains(&addr) {
                        a.targets.push(addr);
                    }
                }
                let mut send = false;
                while a.step < SEND_AT_MS.len()
                    && now >= a.started + Duration::from_millis(SEND_AT_MS[a.step])
                {
                    a.step += 1;
                    send = true;
                }
                if send {
                    out.send_to.clone_from(&a.targets);
                }
                if now.saturating_duration_since(a.started) >= WINDOW {
                    self.end_attempt(now, true);
                }
            }
        }
        if out.message.is_none() && t.session {
            let spaced = self
                .last_message
                .is_none_or(|m| now.saturating_duration_since(m) >= UPDATE_GAP);
            let news = self.sent_version != Some(t.ours.version) && !t.ours.candidates.is_empty();
            let stale = self
                .last_message
                .is_some_and(|m| now.saturating_duration_since(m) >= REFRESH);
            if spaced && (self.answer || news || stale) {
                out.message = Some(Kind::Update);
            }
        }
        if out.message.is_some() {
            self.answer = false;
            self.sent_version = Some(t.ours.version);
            self.last_message = Some(now);
        }
        out
    }

    /// Ends the attempt under way, if any; `failed` when it ran its window without an answer.
    fn end_attempt(&mut self, now: Instant, failed: bool) {
        let Some(a) = self.attempt.take() else {
            return;
        };
        if failed {
            self.last_tried = a.targets.len();
            self.not_before = Some(now + self.backoff.next_delay());
        }
    }

    /// The path moved to UDP: nothing more to try, and a fresh start should it come back to the relay.
    pub fn moved_to_udp(&mut self) {
        self.attempt = None;
        self.backoff.reset();
        self.not_before = None;
    }

    /// Why the pair is still relayed (call only while it is).
    pub fn relay_reason(
        &self,
        session: bool,
        ours: Mapping,
        endpoint: Option<SocketAddr>,
    ) -> RelayReason {
        let (candidates, theirs) = self.theirs();
        if !session {
            return RelayReason::NoSession;
        }
        if let Err(reason) = self.feasible(ours) {
            return RelayReason::Skipped {
                reason,
                ours,
                theirs,
            };
        }
        if let Some(a) = &self.attempt {
            return RelayReason::Punching {
                targets: a.targets.len(),
                failed: self.backoff.failures(),
            };
        }
        if candidates.is_empty() && endpoint.is_none() {
            return RelayReason::NoCandidates;
        }
        if self.backoff.failures() > 0 {
            return RelayReason::NoAnswer {
                tried: self.last_tried,
                attempts: self.attempts,
            };
        }
        RelayReason::Waiting
    }
}

/// Whether the initiation sent at `sent` may be copied to an attempt's targets at `now`, rather than a new
/// one made: only the one in flight, which no handshake message from the peer has answered yet (the peer
/// drops a copy of one it has answered as a replay: boringtun's `WrongTai64nTimestamp`), within the
/// attempt's [`WINDOW`], and at an attempt's start (`fresh`) only one just sent.
///
/// `handshake_rx` must be when the peer's last handshake message arrived, stamped as it arrived: boringtun's
/// own handshake time is stamped by its timers, up to a tick before an initiation it answered, which then
/// looked unanswered.
pub fn copy_initiation(
    sent: Instant,
    handshake_rx: Option<Instant>,
    now: Instant,
    fresh: bool,
) -> bool {
    let age = now.saturating_duration_since(sent);
    let unanswered = handshake_rx.is_none_or(|h| sent > h);
    unanswered && age < WINDOW && !(fresh && age >= Duration::from_secs(1))
}

#[cfg(test)]
mod tests;
