//! Which way a peer's datagrams go: direct over UDP, or through its relay. Pure, so every rule is tested
//! without a network. After Tailscale's DERP-to-direct upgrade, with WireGuard's own messages as the probes:
//!
//! - A peer starts direct. When a handshake initiation sent over UDP is not answered within
//!   [`HANDSHAKE_UNANSWERED`] (WireGuard's REKEY_TIMEOUT, after which it would send the next one), or nothing
//!   has come over UDP for the peer timeout (`silence`, [`crate::liveness::Liveness`]) while data went out (a silent
//!   peer is probed within a third of it, and a live one answers its probes), the peer moves to its relay:
//!   a path that went dark is left as soon as the peer counts as dead on it.
//! - A peer that relays to us has given up on the direct path; when we have heard nothing from it directly
//!   for [`DIRECT_QUIET`], we follow.
//! - While on the relay, a handshake initiation goes out over UDP every [`PROBE_INTERVAL`]. Its response
//!   arriving over UDP proves the round trip, and the peer moves back at once; the other side moves when our
//!   data then arrives over UDP.
//!
//! - A peer with no UDP address at all (none registered, none learnt) and a relay goes to the relay at once:
//!   there is nothing to try directly. Hole punching ([`crate::punch`]) may bring it back over UDP.
//!
//! A move changes only where datagrams are sent: the keys, the session and the overlay address stay, and
//! datagrams are taken from both paths at all times. A move back to UDP that hole punching brought about is
//! reported as [`PathKind::Punched`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::liveness::Liveness;

/// How long an initiation sent over UDP may go unanswered.
pub const HANDSHAKE_UNANSWERED: Duration = Duration::from_secs(5);
/// How long a peer that relays to us must have been silent on the direct path before we relay too.
pub const DIRECT_QUIET: Duration = Duration::from_secs(3);
/// The longest a new tunnel takes to reach a peer over the relay when UDP is blocked: its first initiation
/// goes unanswered for [`HANDSHAKE_UNANSWERED`], the next (WireGuard's REKEY_TIMEOUT later) goes over the
/// relay, and the peer answers over the relay once its own direct path has been quiet for [`DIRECT_QUIET`].
/// A seat's silence before then says nothing about the seat.
pub const FIRST_PATH_WITHIN: Duration =
    Duration::from_secs(2 * HANDSHAKE_UNANSWERED.as_secs() + DIRECT_QUIET.as_secs());
/// How long an initiation over UDP goes unanswered before the direct path is in doubt
/// ([`PathState::doubtful`]): an answer within a LAN or the internet takes far less.
pub const DOUBT_AFTER: Duration = Duration::from_secs(1);
/// How often a relayed peer's direct path is tried.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The paths: directly over UDP, to an address the peer registered or roamed from (`Direct`) or to one that
/// hole punching opened (`Punched`); over UDP through another member that relays for the pair (`PeerRelay`,
/// chosen by [`crate::relays`]); or through the peer's own relay, over the gateway (`Relay`). [`PathState`]
/// only decides between direct and not, and never reports `PeerRelay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    Direct,
    Punched,
    PeerRelay,
    Relay,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Punched => "punched",
            Self::PeerRelay => "peer-relay",
            Self::Relay => "relay",
        }
    }

    /// Whether datagrams go directly to the peer over UDP. (A peer relay's datagrams go over UDP too, but
    /// to the relay.)
    pub fn is_direct(self) -> bool {
        matches!(self, Self::Direct | Self::Punched)
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which UDP path a relayed peer came back on, sending to `endpoint`: its registered one (`configured`) is a
/// direct path; any other address it came from is a hole punched through the NATs on the way, by one side's
/// punching or both sides' ([`crate::punch`]).
pub fn udp_path(endpoint: Option<SocketAddr>, configured: Option<SocketAddr>) -> PathKind {
    if endpoint.is_some() && endpoint == configured {
        PathKind::Direct
    } else {
        PathKind::Punched
    }
}

/// A WireGuard message, as far as the path cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A handshake initiation.
    Initiation,
    /// A handshake response (it answers an initiation).
    Response,
    /// A data message with a payload.
    Data,
    /// A data message without one (a keepalive): it answers nothing and asks for nothing.
    Keepalive,
}

impl Message {
    /// Classifies a WireGuard datagram by its type byte and length.
    pub fn of(datagram: &[u8]) -> Option<Self> {
        match datagram.first()? {
            1 => Some(Self::Initiation),
            2 => Some(Self::Response),
            4 if datagram.len() <= 32 => Some(Self::Keepalive),
            4 => Some(Self::Data),
            _ => None,
        }
    }
}

/// One peer's path and what it is decided from.
#[derive(Debug, Clone)]
pub struct PathState {
    on: PathKind,
    since: Instant,
    /// How long UDP may carry nothing from the peer, with data sent to it meanwhile, before it is left.
    liveness: Liveness,
    /// The last authenticated datagram from the peer over UDP.
    direct_rx: Option<Instant>,
    /// The first initiation sent over UDP since the last direct receipt.
    init_unanswered: Option<Instant>,
    /// The first data message sent over UDP since the last direct receipt.
    data_unanswered: Option<Instant>,
    last_probe: Option<Instant>,
    /// Why the last move was made.
    reason: &'static str,
}

/// A move from one path to the other, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub to: PathKind,
    pub reason: &'static str,
}

impl PathState {
    pub fn new(now: Instant, liveness: Liveness) -> Self {
        Self {
            on: PathKind::Direct,
            since: now,
            liveness,
            direct_rx: None,
            init_unanswered: None,
            data_unanswered: None,
            last_probe: None,
            reason: "a new peer starts direct",
        }
    }

    pub fn on(&self) -> PathKind {
        self.on
    }

    /// Why the peer is on its path: the reason of the last move.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The move to UDP just made was hole punching's doing.
    pub fn punched(&mut self) {
        if self.on.is_direct() {
            self.on = PathKind::Punched;
        }
    }

    /// A move between direct and not; none within either (the path is binary here).
    fn go(&mut self, to: PathKind, now: Instant, reason: &'static str) -> Option<Move> {
        if self.on.is_direct() == to.is_direct() {
            return None;
        }
        self.on = to;
        self.since = now;
        self.reason = reason;
        self.init_unanswered = None;
        self.data_unanswered = None;
        Some(Move { to, reason })
    }

    /// We sent `message` over UDP.
    pub fn sent_direct(&mut self, message: Message, now: Instant) {
        match message {
            Message::Initiation => {
                self.init_unanswered.get_or_insert(now);
            }
            Message::Data => {
                self.data_unanswered.get_or_insert(now);
            }
            Message::Response | Message::Keepalive => {}
        }
    }

    /// An authenticated `message` from the peer arrived over UDP. A response or data on the relay path proves
    /// the direct round trip (the peer only sends data directly once it has that proof itself).
    pub fn received_direct(&mut self, message: Message, now: Instant) -> Option<Move> {
        self.direct_rx = Some(now);
        self.init_unanswered = None;
        self.data_unanswered = None;
        match (self.on, message) {
            (PathKind::Relay, Message::Response) => self.go(
                PathKind::Direct,
                now,
                "a handshake over UDP was answered over UDP",
            ),
            (PathKind::Relay, Message::Data | Message::Keepalive) => {
                self.go(PathKind::Direct, now, "the peer sends over UDP again")
            }
            _ => None,
        }
    }

    /// An authenticated data message from the peer arrived through a relay.
    pub fn received_relayed(&mut self, message: Message, now: Instant) -> Option<Move> {
        let quiet = self
            .direct_rx
            .is_none_or(|t| now.saturating_duration_since(t) >= DIRECT_QUIET);
        let settled = now.saturating_duration_since(self.since) >= DIRECT_QUIET;
        let direct = self.on.is_direct();
        match message {
            Message::Data | Message::Keepalive if direct && quiet && settled => self.go(
                PathKind::Relay,
                now,
                "the peer relays to us and is silent over UDP",
            ),
            _ => None,
        }
    }

    /// The timer's check: whether to leave UDP (only when a relay is there to go to). `has_address`: the peer
    /// has a UDP address to send to at all.
    pub fn tick(&mut self, now: Instant, relay_available: bool, has_address: bool) -> Option<Move> {
        if !self.on.is_direct() || !relay_available {
            return None;
        }
        if !has_address {
            return self.go(PathKind::Relay, now, "no UDP address is known for the peer");
        }
        let over = |since: Option<Instant>, bound| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= bound)
        };
        if over(self.init_unanswered, HANDSHAKE_UNANSWERED) {
            return self.go(PathKind::Relay, now, "no handshake answer over UDP");
        }
        if over(self.silent_since(), self.liveness.timeout) {
            return self.go(PathKind::Relay, now, "no answer over UDP");
        }
        None
    }

    /// Silent since the last datagram over UDP; but data that went out long after it (an idle pair) is
    /// given the time a probe would have had, so that it is not taken as unanswered at once.
    fn silent_since(&self) -> Option<Instant> {
        self.data_unanswered.map(|first| {
            let asked = first
                .checked_sub(self.liveness.probed_within())
                .unwrap_or(first);
            self.direct_rx.map_or(first, |rx| rx.max(asked))
        })
    }

    /// Whether the direct path is in doubt: not taken, or halfway to being left (an initiation unanswered
    /// for [`DOUBT_AFTER`], or data for half the peer timeout). A pair in doubt gets its peer relays ready,
    /// so that leaving UDP finds one to go to.
    pub fn doubtful(&self, now: Instant) -> bool {
        let over = |since: Option<Instant>, bound| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= bound)
        };
        !self.on.is_direct()
            || over(self.init_unanswered, DOUBT_AFTER)
            || over(self.silent_since(), self.liveness.timeout / 2)
    }

    /// Whether to send a probe over UDP now; records it when so. A probe is a new handshake, which replaces
    /// one in flight, so there is none until the last probe's handshake has completed (over UDP, or through
    /// the relay when WireGuard retried it there): `last_handshake` is when the latest one completed.
    pub fn probe_due(&mut self, now: Instant, last_handshake: Option<Instant>) -> bool {
        if self.on != PathKind::Relay {
            return false;
        }
        let Some(handshake) = last_handshake else {
            return false;
        };
        let due = self
            .last_probe
            .is_none_or(|t| handshake > t && now.saturating_duration_since(t) >= PROBE_INTERVAL);
        if due {
            self.last_probe = Some(now);
        }
        due
    }

    /// The relay went away (the peer's record lost its gateway URL): back to direct.
    pub fn relay_gone(&mut self, now: Instant) -> Option<Move> {
        if self.on.is_direct() {
            return None;
        }
        self.go(PathKind::Direct, now, "the peer has no relay")
    }
}

/// How long a direct trial of a relayed peer on the kernel's WireGuard lasts without an answer.
pub const TRIAL: Duration = Duration::from_secs(5);
/// How often a relayed peer on the kernel's WireGuard tries the direct path.
pub const TRIAL_EVERY: Duration = Duration::from_secs(30);

/// What the agent sees of a peer on a WireGuard it does not run itself (the kernel's, or `wireguard-go`
/// standing in for it): no per-datagram events, only the peer's endpoint, handshake and counters.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    pub now: Instant,
    /// Whether the endpoint is one of the agent's relay bridges: the WireGuard roams there when the peer's
    /// datagrams come through the relay, and away again when they come directly.
    pub on_bridge: bool,
    /// Whether a handshake completed within WireGuard's REJECT_AFTER_TIME.
    pub handshake_fresh: bool,
    /// Whether the session's peer has not been heard for the peer timeout ([`crate::liveness`]).
    pub silent: bool,
    pub rx_bytes: u64,
    /// Whether our own stream to the peer's relay is up (its bridge can be the endpoint).
    pub relay_ready: bool,
    /// Whether the peer has a relay at all.
    pub relay_available: bool,
    /// Whether the peer's direct endpoint is known.
    pub direct_known: bool,
}

/// What to do to such a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Stay,
    /// Open our stream to the peer's relay.
    Dial,
    /// Point the endpoint at our stream's bridge.
    ToRelay,
    /// Point the endpoint at the direct address and send a keepalive there.
    TryDirect,
}

/// The path of a peer on a WireGuard the agent only configures. Its endpoint says the path: on a relay
/// bridge it is relayed, else direct. The agent moves it to the relay when no handshake is fresh
/// [`HANDSHAKE_UNANSWERED`] after it went direct, or its session's peer has not been heard for the peer
/// timeout (the direct path went dark), and, while relayed with a live session, tries the direct
/// path every [`TRIAL_EVERY`]: the endpoint goes direct with a keepalive, and comes back to the bridge unless
/// something arrives within [`TRIAL`] while the endpoint stays direct (WireGuard would have roamed back to a
/// bridge had it come through the relay). An idle peer therefore stays relayed.
#[derive(Debug, Clone)]
pub struct TrialState {
    direct_since: Instant,
    trial: Option<(Instant, u64)>,
    last_trial: Option<Instant>,
}

impl TrialState {
    pub fn new(now: Instant) -> Self {
        Self {
            direct_since: now,
            trial: None,
            last_trial: None,
        }
    }

    pub fn step(&mut self, o: &Observed) -> Step {
        if let Some((started, rx0)) = self.trial {
            if o.on_bridge {
                // The peer's datagrams came through the relay: it does not hear us directly.
                self.trial = None;
                self.last_trial = Some(o.now);
                return Step::Stay;
            }
            if o.rx_bytes > rx0 {
                self.trial = None;
                self.direct_since = o.now;
                return Step::Stay;
            }
            if o.now.saturating_duration_since(started) < TRIAL {
                return Step::Stay;
            }
            self.trial = None;
            self.last_trial = Some(o.now);
            return if o.relay_ready {
                Step::ToRelay
            } else {
                Step::Dial
            };
        }
        if o.on_bridge {
            let since = self.last_trial.unwrap_or(self.direct_since);
            if o.direct_known
                && o.handshake_fresh
                && o.now.saturating_duration_since(since) >= TRIAL_EVERY
            {
                self.trial = Some((o.now, o.rx_bytes));
                return Step::TryDirect;
            }
            return Step::Stay;
        }
        let no_handshake = !o.handshake_fresh
            && o.now.saturating_duration_since(self.direct_since) >= HANDSHAKE_UNANSWERED;
        if o.relay_available && (no_handshake || o.silent) {
            if !o.relay_ready {
                return Step::Dial;
            }
            self.last_trial = Some(o.now);
            return Step::ToRelay;
        }
        Step::Stay
    }
}

#[cfg(test)]
mod tests;
