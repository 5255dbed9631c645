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
/// How often a relayed peer's direct path is tried.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The paths: over UDP, to an address the peer registered or roamed from (`Direct`) or to one that hole
/// punching opened (`Punched`); or through the peer's relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    Direct,
    Punched,
    Relay,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Punched => "punched",
            Self::Relay => "relay",
        }
    }

    /// Whether datagrams go over UDP.
    pub fn is_udp(self) -> bool {
        self != Self::Relay
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
        if self.on.is_udp() {
            self.on = PathKind::Punched;
        }
    }

    fn go(&mut self, to: PathKind, now: Instant, reason: &'static str) -> Option<Move> {
        if self.on.is_udp() == to.is_udp() {
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
        match (self.on, message) {
            (on, Message::Data | Message::Keepalive) if on.is_udp() && quiet && settled => self.go(
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
        if !self.on.is_udp() || !relay_available {
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
        // Silent since the last datagram over UDP; but data that went out long after it (an idle pair) is
        // given the time a probe would have had, so that it is not taken as unanswered at once.
        let silent_since = self.data_unanswered.map(|first| {
            let asked = first
                .checked_sub(self.liveness.probed_within())
                .unwrap_or(first);
            self.direct_rx.map_or(first, |rx| rx.max(asked))
        });
        if over(silent_since, self.liveness.timeout) {
            return self.go(PathKind::Relay, now, "no answer over UDP");
        }
        None
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
        if self.on.is_udp() {
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
mod tests {
    use super::*;

    /// The numbers below are for a 3 s peer timeout.
    const THREE: Liveness = Liveness {
        timeout: Duration::from_secs(3),
    };

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn messages_are_told_apart_by_type_and_length() {
        assert_eq!(Message::of(&[1; 148]), Some(Message::Initiation));
        assert_eq!(Message::of(&[2; 92]), Some(Message::Response));
        assert_eq!(Message::of(&[4; 32]), Some(Message::Keepalive));
        assert_eq!(Message::of(&[4; 33]), Some(Message::Data));
        assert_eq!(
            Message::of(&[3; 64]),
            None,
            "a cookie reply answers nothing"
        );
        assert_eq!(Message::of(&[]), None);
    }

    #[test]
    fn an_unanswered_handshake_moves_the_peer_to_its_relay_after_the_bound() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.sent_direct(Message::Initiation, t0);
        assert_eq!(p.tick(at(t0, 4_900), true, true), None);
        // Retries do not restart the clock.
        p.sent_direct(Message::Initiation, at(t0, 4_950));
        let m = p.tick(at(t0, 5_000), true, true).expect("a move");
        assert_eq!(m.to, PathKind::Relay);
        assert_eq!(p.on(), PathKind::Relay);
    }

    #[test]
    fn a_peer_with_no_udp_address_goes_to_its_relay_at_once() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        assert_eq!(p.tick(t0, false, false), None, "no relay: nowhere to go");
        let m = p.tick(t0, true, false).expect("a move");
        assert_eq!(m.to, PathKind::Relay);
        assert_eq!(p.reason(), "no UDP address is known for the peer");
    }

    #[test]
    fn a_punched_peer_is_on_udp_and_leaves_it_as_a_direct_one_does() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.tick(t0, true, false);
        assert_eq!(
            p.received_direct(Message::Response, at(t0, 1_000))
                .map(|m| m.to),
            Some(PathKind::Direct)
        );
        p.punched();
        assert_eq!(p.on(), PathKind::Punched);
        assert_eq!(
            p.received_direct(Message::Data, at(t0, 1_100)),
            None,
            "already on UDP"
        );
        p.sent_direct(Message::Data, at(t0, 2_000));
        assert_eq!(
            p.tick(at(t0, 17_000), true, true).map(|m| m.to),
            Some(PathKind::Relay),
            "unanswered data moves it to the relay"
        );
    }

    #[test]
    fn back_on_udp_at_the_registered_endpoint_is_direct_and_anywhere_else_punched() {
        let registered: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.2:40123".parse().unwrap();
        assert_eq!(
            udp_path(Some(registered), Some(registered)),
            PathKind::Direct
        );
        assert_eq!(udp_path(Some(mapped), Some(registered)), PathKind::Punched);
        assert_eq!(
            udp_path(Some(mapped), None),
            PathKind::Punched,
            "no record endpoint"
        );
    }

    #[test]
    fn without_a_relay_the_peer_stays_direct() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.sent_direct(Message::Initiation, t0);
        assert_eq!(p.tick(at(t0, 60_000), false, true), None);
        assert_eq!(p.on(), PathKind::Direct);
    }

    #[test]
    fn an_answer_in_time_keeps_the_peer_direct() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.sent_direct(Message::Initiation, t0);
        assert_eq!(p.received_direct(Message::Response, at(t0, 20)), None);
        p.sent_direct(Message::Data, at(t0, 1_000));
        assert_eq!(p.received_direct(Message::Keepalive, at(t0, 11_000)), None);
        assert_eq!(p.tick(at(t0, 30_000), true, true), None);
    }

    /// A path that went dark is left at the peer timeout after it last carried anything, as the probes that
    /// went unanswered show; the peer counts as dead at that very moment.
    #[test]
    fn a_path_that_goes_dark_is_left_at_the_peer_timeout_after_its_last_answer() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.received_direct(Message::Data, at(t0, 10_000));
        // The probes of the silence: from a third of the timeout on.
        for probe in [11_000, 11_500, 12_000, 12_500] {
            p.sent_direct(Message::Data, at(t0, probe));
            assert_eq!(p.tick(at(t0, probe), true, true), None);
        }
        assert_eq!(p.tick(at(t0, 12_999), true, true), None);
        let m = p.tick(at(t0, 13_000), true, true).expect("a move");
        assert_eq!(m.to, PathKind::Relay);
        assert_eq!(m.reason, "no answer over UDP");
    }

    /// Keepalives ask for nothing, so an idle pair stays; data after a long idle time gets the time a probe
    /// would have had before it counts as unanswered.
    #[test]
    fn an_idle_path_stays_and_its_first_data_gets_a_probes_time() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.received_direct(Message::Response, t0);
        p.sent_direct(Message::Keepalive, at(t0, 1_000));
        assert_eq!(
            p.tick(at(t0, 60_000), true, true),
            None,
            "an idle peer is not dead"
        );
        p.sent_direct(Message::Data, at(t0, 60_000));
        assert_eq!(p.tick(at(t0, 61_649), true, true), None);
        assert_eq!(
            p.tick(at(t0, 61_650), true, true).unwrap().to,
            PathKind::Relay
        );
    }

    /// A peer that answers one-way data only when probed (it has nothing to send) stays on UDP.
    #[test]
    fn a_peer_that_answers_its_probes_keeps_its_path_under_one_way_traffic() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.received_direct(Message::Response, t0);
        for ms in (10..20_000).step_by(10) {
            p.sent_direct(Message::Data, at(t0, ms));
            // The second side's probes start 1.35 s into a silence; answered 50 ms later.
            if ms % 1_400 == 0 {
                p.received_direct(Message::Data, at(t0, ms + 50));
            }
            assert_eq!(p.tick(at(t0, ms), true, true), None, "at {ms} ms");
        }
    }

    #[test]
    fn a_relayed_peer_is_probed_and_moves_back_on_a_response_over_udp() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.sent_direct(Message::Initiation, t0);
        p.tick(at(t0, 5_000), true, true);
        assert!(
            !p.probe_due(at(t0, 5_000), None),
            "no session yet: nothing to probe for"
        );
        let relayed = Some(at(t0, 5_100));
        assert!(p.probe_due(at(t0, 5_200), relayed));
        assert!(
            !p.probe_due(at(t0, 10_200), relayed),
            "the probe's handshake is still in flight"
        );
        // WireGuard retried it through the relay, where it completed.
        let retried = Some(at(t0, 10_210));
        assert!(!p.probe_due(at(t0, 10_199), retried));
        assert!(p.probe_due(at(t0, 10_220), retried));
        // An initiation from the peer over UDP proves only one direction.
        assert_eq!(p.received_direct(Message::Initiation, at(t0, 10_010)), None);
        let m = p
            .received_direct(Message::Response, at(t0, 10_020))
            .unwrap();
        assert_eq!(m.to, PathKind::Direct);
        assert!(
            !p.probe_due(at(t0, 20_000), Some(at(t0, 10_020))),
            "no probes on the direct path"
        );
    }

    #[test]
    fn the_responder_moves_back_when_the_peers_data_arrives_over_udp() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.sent_direct(Message::Initiation, t0);
        p.tick(at(t0, 5_000), true, true);
        assert_eq!(
            p.received_direct(Message::Data, at(t0, 8_000)).unwrap().to,
            PathKind::Direct
        );
    }

    #[test]
    fn a_peer_that_relays_to_us_is_followed_once_it_is_quiet_over_udp() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.received_direct(Message::Data, at(t0, 10_000));
        // Packets still in flight on the relay just after the peer moved back are no reason to leave.
        assert_eq!(p.received_relayed(Message::Data, at(t0, 10_500)), None);
        assert_eq!(p.received_relayed(Message::Data, at(t0, 12_999)), None);
        let m = p.received_relayed(Message::Data, at(t0, 13_000)).unwrap();
        assert_eq!(m.to, PathKind::Relay);
    }

    #[test]
    fn a_peer_just_moved_direct_does_not_bounce_back_on_stragglers() {
        let t0 = Instant::now();
        let mut p = PathState::new(t0, THREE);
        p.sent_direct(Message::Initiation, t0);
        p.tick(at(t0, 5_000), true, true);
        p.received_direct(Message::Response, at(t0, 20_000));
        // The peer has not heard from us directly yet and still relays; we wait for it.
        assert_eq!(p.received_relayed(Message::Data, at(t0, 21_000)), None);
        assert_eq!(p.on(), PathKind::Direct);
    }

    fn observed(t0: Instant, ms: u64) -> Observed {
        Observed {
            now: at(t0, ms),
            on_bridge: false,
            handshake_fresh: false,
            silent: false,
            rx_bytes: 0,
            relay_ready: false,
            relay_available: true,
            direct_known: true,
        }
    }

    #[test]
    fn a_kernel_peer_without_a_handshake_is_relayed_after_the_bound() {
        let t0 = Instant::now();
        let mut k = TrialState::new(t0);
        assert_eq!(k.step(&observed(t0, 4_999)), Step::Stay);
        assert_eq!(k.step(&observed(t0, 5_000)), Step::Dial);
        let ready = Observed {
            relay_ready: true,
            ..observed(t0, 5_300)
        };
        assert_eq!(k.step(&ready), Step::ToRelay);
        let fresh = Observed {
            handshake_fresh: true,
            ..observed(t0, 60_000)
        };
        assert_eq!(k.step(&fresh), Step::Stay, "a live direct session stays");
        let none = Observed {
            relay_available: false,
            ..observed(t0, 60_000)
        };
        assert_eq!(k.step(&none), Step::Stay, "no relay, nowhere to go");
    }

    /// A kernel peer whose session is up but which has gone silent (the path went dark) is relayed at once:
    /// the silence is already the peer timeout long.
    #[test]
    fn a_silent_kernel_peer_is_relayed_though_its_session_is_fresh() {
        let t0 = Instant::now();
        let mut k = TrialState::new(t0);
        let silent = Observed {
            handshake_fresh: true,
            silent: true,
            relay_ready: true,
            ..observed(t0, 60_000)
        };
        assert_eq!(k.step(&silent), Step::ToRelay);
    }

    #[test]
    fn a_relayed_kernel_peer_tries_direct_and_keeps_it_when_answered() {
        let t0 = Instant::now();
        let mut k = TrialState::new(t0);
        let relayed = |ms, rx| Observed {
            on_bridge: true,
            handshake_fresh: true,
            relay_ready: true,
            rx_bytes: rx,
            ..observed(t0, ms)
        };
        assert_eq!(k.step(&relayed(29_999, 100)), Step::Stay);
        assert_eq!(k.step(&relayed(30_000, 100)), Step::TryDirect);
        let trying = |ms, rx| Observed {
            on_bridge: false,
            ..relayed(ms, rx)
        };
        assert_eq!(k.step(&trying(31_000, 100)), Step::Stay);
        assert_eq!(
            k.step(&trying(32_000, 164)),
            Step::Stay,
            "answered directly"
        );
        assert_eq!(
            k.step(&trying(90_000, 164)),
            Step::Stay,
            "and direct it stays"
        );
    }

    #[test]
    fn an_unanswered_trial_goes_back_to_the_relay_and_waits_for_the_next() {
        let t0 = Instant::now();
        let mut k = TrialState::new(t0);
        let relayed = |ms| Observed {
            on_bridge: true,
            handshake_fresh: true,
            relay_ready: true,
            rx_bytes: 100,
            ..observed(t0, ms)
        };
        assert_eq!(k.step(&relayed(30_000)), Step::TryDirect);
        let trying = |ms| Observed {
            on_bridge: false,
            ..relayed(ms)
        };
        assert_eq!(k.step(&trying(34_999)), Step::Stay);
        assert_eq!(k.step(&trying(35_000)), Step::ToRelay);
        assert_eq!(k.step(&relayed(64_999)), Step::Stay);
        assert_eq!(k.step(&relayed(65_000)), Step::TryDirect);
        // The peer relayed to us during the trial: WireGuard roamed back to a bridge.
        assert_eq!(k.step(&relayed(66_000)), Step::Stay);
        assert_eq!(k.step(&relayed(95_999)), Step::Stay);
    }
}
