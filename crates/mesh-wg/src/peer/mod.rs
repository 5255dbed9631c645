//! One peer: its boringtun `Tunn` plus the state boringtun does not keep for us (endpoint,
//! keepalive, byte counters, wall-clock handshake time), and its two paths: the UDP endpoint and the relay
//! streams, with the [`PathState`] that picks between them and the [`Punch`] that tries to bring a relayed
//! peer back over UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use ipnetwork::Ipv4Network;

use mesh_path::candidates::{self, Kind};
use mesh_path::liveness::{self, Liveness, Prober};
use mesh_path::path::{Message, Move, PathKind, PathState, udp_path};
use mesh_path::punch::{self, OwnCandidates, Punch};
use mesh_path::redial::Redial;
use mesh_path::relays::PeerRelays;
use mesh_peer_relay::Control;
use mesh_policy::Reach;
use mesh_policy::filter::{Admit, DropCounts, Filter};

use crate::config::{PeerStatus, PunchStatus};
use crate::probe;
use mesh_relay::{Link, RelayTarget};
use wg_key::{Key, PresharedKey};

mod relayed;
mod session;
mod status;
mod tick;
mod watched;

pub(crate) use relayed::{OFFER_EVERY, RELAYED_PROBE, RelayView};
pub(crate) use session::Session;
pub(crate) use tick::{QUIET_TICK, Ticked};

/// Where a datagram goes to, or came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    Udp(SocketAddr),
    Relay(Link),
    /// Over UDP to a peer relay, at its address, for the pair's allocation there: each datagram carries
    /// [`mesh_peer_relay::Header`].
    PeerRelay {
        relay: SocketAddr,
        vni: u32,
    },
}

impl Via {
    /// The address boringtun's rate limiter binds cookies to: a relayed stream gets its own, made from
    /// its id, so a flood on one stream does not cost another its handshakes.
    pub(crate) fn source_ip(&self) -> IpAddr {
        match self {
            Via::Udp(addr) | Via::PeerRelay { relay: addr, .. } => addr.ip(),
            Via::Relay(link) => IpAddr::V6(Ipv6Addr::from(u128::from(link.id()))),
        }
    }
}

/// WireGuard's REKEY_AFTER_TIME: a session younger than this needs no new handshake.
const REKEY_AFTER: Duration = Duration::from_secs(120);
/// WireGuard's REJECT_AFTER_TIME: a session older than this carries nothing.
const REJECT_AFTER: Duration = Duration::from_secs(180);

const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESP: u8 = 2;
const MSG_DATA: u8 = 4;

/// A peer of the device. Its `Tunn` lives behind a mutex held only for synchronous noise work,
/// never across an `.await`.
pub(crate) struct Peer {
    pub(crate) public_key: Key,
    /// boringtun's peer index (session indices are `index << 8 | n`).
    pub(crate) index: u32,
    /// Set by whatever locks the peer but its own timer and readers of its state (the packet path, the
    /// API, relay control): its timer runs at the next tick, quiet or not ([`Ticked::quiet`]).
    touched: AtomicBool,
    inner: Mutex<PeerInner>,
}

struct PeerInner {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    /// The endpoint as configured (the peer's record), whatever it roamed to since: reaching the peer there
    /// is a direct path, not a punched one.
    configured: Option<SocketAddr>,
    keepalive: Option<u16>,
    preshared_key: Option<PresharedKey>,
    /// When we last sent anything to the peer; `None` makes a persistent keepalive due now.
    last_tx: Option<Instant>,
    last_handshake: Option<SystemTime>,
    tx_bytes: u64,
    rx_bytes: u64,
    /// Where the peer's relay is, from its record.
    relay: Option<RelayTarget>,
    /// The stream we dialled to the peer's relay.
    relay_out: Option<Link>,
    /// Why the last dial of the peer's relay failed, until one succeeds.
    relay_error: Option<String>,
    /// The stream the peer's datagrams last came in on through our relay endpoint.
    relay_in: Option<Link>,
    path: PathState,
    dial: Redial,
    /// Start a handshake at the next tick, unless a session is fresh.
    kick: bool,
    /// WireGuard has given up on the handshake (REKEY_ATTEMPT_TIME) and not started another: logged once.
    expired: bool,
    /// The peer's overlay address (its /32 allowed IP), where candidate messages go.
    overlay_ip: Option<Ipv4Addr>,
    /// Hole punching toward the peer.
    punch: Punch,
    /// The latest handshake initiation sent, and when: an attempt sends copies of it to candidates.
    last_init: Option<(Instant, Vec<u8>)>,
    /// When the peer's last handshake message (an initiation it sent, or the response to ours) arrived:
    /// stamped as it arrives, unlike boringtun's handshake time, which its timers stamp up to a tick later.
    handshake_rx: Option<Instant>,
    /// When the peer last sent anything that authenticated ([`mesh_path::liveness`]).
    last_heard: Option<Instant>,
    prober: Prober,
    probe_seq: u16,
    /// Candidate messages from the peer that did not parse.
    malformed: u64,
    /// What of the peer's decrypted packets reaches the interface, by the grants between seats.
    filter: Filter,
    /// The peer's packets the filter dropped, by why.
    dropped: DropCounts,
    /// The pair's allocations at peer relays, and which it uses.
    relays: PeerRelays,
    /// The peer's last Offer to relay (accepting or not), and when it came.
    offer: Option<(bool, Instant)>,
    /// The addresses this node last sent the peer UDP at, and when ([`PeerInner::note_udp_sent`]).
    udp_sent: Vec<(IpAddr, Instant)>,
    /// The peer's handshake reached this node over UDP from an address it had sent nothing to, since last
    /// taken by the timer ([`Ticked::reached_first`]).
    reached_first: bool,
    /// When a packet last went between the peer and the interface (an application's, not the device's own
    /// probes, keepalives or control messages).
    app_traffic: Option<Instant>,
    /// Since when the peer has been watched ([`crate::Watching`]); `None` while it is not.
    watched_since: Option<Instant>,
    /// The peer timeout ([`Liveness`]) it is held to while watched.
    liveness_timeout: Duration,
}

/// What every peer's tick needs of the device: this node's candidates, its place on the overlay, and how
/// peers are asked whether they answer.
pub(crate) struct TickContext {
    pub(crate) own: std::sync::Arc<OwnCandidates>,
    /// This node's public key: of a pair, the lower key probes first.
    pub(crate) own_key: Key,
    pub(crate) liveness: Liveness,
    /// This node's overlay address, the source of its candidate messages.
    pub(crate) address: Ipv4Addr,
    pub(crate) overlay: ipnetwork::Ipv4Network,
    /// The peers that offer to relay and that this node reaches directly.
    pub(crate) relays: Vec<mesh_path::relays::Candidate>,
    /// Which peers something watches, besides those that carry traffic.
    pub(crate) watching: Arc<crate::Watching>,
}

/// What the noise layer needs to (re)build a `Tunn`.
pub(crate) struct NoiseKeys {
    pub(crate) secret: x25519::StaticSecret,
    pub(crate) rate_limiter: Arc<RateLimiter>,
}

impl Peer {
    pub(crate) fn new(
        public_key: Key,
        index: u32,
        keys: &NoiseKeys,
        preshared_key: Option<PresharedKey>,
        liveness: Liveness,
        exempt_udp: &[u16],
    ) -> Self {
        Self {
            public_key,
            index,
            touched: AtomicBool::new(true),
            inner: Mutex::new(PeerInner {
                tunn: new_tunn(public_key, index, keys, preshared_key.as_ref()),
                endpoint: None,
                configured: None,
                keepalive: None,
                preshared_key,
                last_tx: None,
                last_handshake: None,
                tx_bytes: 0,
                rx_bytes: 0,
                relay: None,
                relay_error: None,
                relay_out: None,
                relay_in: None,
                path: PathState::new(Instant::now(), liveness),
                dial: Redial::default(),
                kick: false,
                expired: false,
                overlay_ip: None,
                punch: Punch::default(),
                last_init: None,
                handshake_rx: None,
                last_heard: None,
                prober: Prober::default(),
                probe_seq: 0,
                malformed: 0,
                filter: Filter::new(Reach::everything(), exempt_udp.to_vec()),
                dropped: DropCounts::default(),
                relays: PeerRelays::default(),
                offer: None,
                udp_sent: Vec::new(),
                reached_first: false,
                app_traffic: None,
                watched_since: None,
                liveness_timeout: liveness.timeout,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.touch();
        self.lock_quietly()
    }

    /// Locks the peer without making its timer run: for the timer itself, and for reading its state.
    fn lock_quietly(&self) -> MutexGuard<'_, PeerInner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the peer's timer run at the next tick.
    pub(crate) fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Whether anything touched the peer since last asked ([`Peer::lock`]).
    pub(crate) fn take_touched(&self) -> bool {
        // A load first: a peer nothing touched, the common case, costs no write to a shared line.
        self.touched.load(Ordering::Relaxed) && self.touched.swap(false, Ordering::Relaxed)
    }

    /// Sets the endpoint. A new one starts a handshake at the next tick (unless a session is fresh), so a
    /// peer that was just added, or has moved, is reachable at once rather than at its first packet: both
    /// sides initiate as they add each other, and whichever initiation arrives first makes the session.
    pub(crate) fn set_endpoint(&self, endpoint: SocketAddr) {
        let mut g = self.lock();
        g.configured = Some(endpoint);
        if g.endpoint != Some(endpoint) {
            g.endpoint = Some(endpoint);
            g.kick = true;
        }
    }

    /// Sets the peer's overlay address, where candidate messages go; `None` when it has no /32.
    pub(crate) fn set_overlay_ip(&self, ip: Option<Ipv4Addr>) {
        self.lock().overlay_ip = ip;
    }

    /// Sets what the peer may reach here. The flows this node opened stay, so their replies still pass.
    pub(crate) fn set_reach(&self, reach: Reach) {
        let mut g = self.lock();
        if *g.filter.reach() != reach {
            g.filter.set_reach(reach);
        }
    }

    /// Sets where the peer's relay is. A changed relay drops the stream to the old one.
    pub(crate) fn set_relay(&self, relay: Option<RelayTarget>) {
        let mut g = self.lock();
        if g.relay == relay {
            return;
        }
        g.relay = relay;
        g.relay_out = None;
        g.relay_error = None;
        g.dial = Redial::default();
        if g.relay.is_none() && g.live_relay().is_none() {
            let now = Instant::now();
            if let Some(m) = g.path.relay_gone(now) {
                log_move(&self.public_key, m, None);
            }
        }
    }

    /// The relay to dial now, if the peer is on its relay path without a live stream of ours; marks the
    /// attempt as started.
    pub(crate) fn relay_to_dial(&self, now: Instant) -> Option<RelayTarget> {
        let mut g = self.lock();
        if g.path.on() != PathKind::Relay
            || g.relay_out.as_ref().is_some_and(|l| !l.is_closed())
            || g.relay.is_none()
            || !g.dial.start(now)
        {
            return None;
        }
        g.relay.clone()
    }

    /// The outcome of a dial started by [`Peer::relay_to_dial`]. Returns the number of failures in a row.
    pub(crate) fn dialled(&self, target: &RelayTarget, result: Result<Link, String>) -> u32 {
        let mut g = self.lock();
        if g.relay.as_ref() != Some(target) {
            // The record changed meanwhile; the next tick dials the new relay.
            g.dial.abandoned();
            return 0;
        }
        let ok = result.is_ok();
        match result {
            Ok(link) => {
                g.relay_out = Some(link);
                g.relay_error = None;
                g.kick = true;
            }
            Err(why) => g.relay_error = Some(why),
        }
        g.dial.finished(ok, Instant::now())
    }

    /// Sets the persistent keepalive (0 = off); turning it on or changing it sends one at the
    /// next timer tick, as the kernel does.
    pub(crate) fn set_keepalive(&self, seconds: u16) {
        let mut g = self.lock();
        let new = (seconds != 0).then_some(seconds);
        if g.keepalive != new {
            g.keepalive = new;
            if new.is_some() {
                g.last_tx = None;
            }
        }
    }

    /// Changes the preshared key. boringtun cannot swap it inside a live `Tunn`, so a *changed*
    /// key rebuilds the tunnel (the next packet re-handshakes); an unchanged one does nothing.
    pub(crate) fn set_preshared_key(&self, psk: Option<PresharedKey>, keys: &NoiseKeys) -> bool {
        let mut g = self.lock();
        if g.preshared_key == psk {
            return false;
        }
        g.tunn = new_tunn(self.public_key, self.index, keys, psk.as_ref());
        g.preshared_key = psk;
        true
    }

    pub(crate) fn preshared_key(&self) -> Option<PresharedKey> {
        // Read at every status snapshot: reading leaves a quiet peer's timer be.
        self.lock_quietly().preshared_key.clone()
    }

    /// Switches to a new device private key; boringtun clears the sessions.
    pub(crate) fn set_static_private(&self, keys: &NoiseKeys) {
        let public = x25519::PublicKey::from(&keys.secret);
        self.lock().tunn.set_static_private(
            keys.secret.clone(),
            public,
            Some(keys.rate_limiter.clone()),
        );
    }
}

fn log_move(peer: &Key, m: Move, relay: Option<&RelayTarget>) {
    match m.to {
        PathKind::Relay => {
            tracing::info!(event = "path.relay", peer = ?peer, relay = ?relay.map(ToString::to_string), reason = m.reason, "path: relay")
        }
        PathKind::Direct => {
            tracing::info!(event = "path.direct", peer = ?peer, reason = m.reason, "path: direct")
        }
        PathKind::Punched => {
            tracing::info!(event = "path.punched", peer = ?peer, reason = m.reason, "path: punched (UDP through the holes punched in both NATs)")
        }
        // Not a move `PathState` makes yet: the device reports a peer relay by the relay the pair uses.
        PathKind::PeerRelay => {
            tracing::info!(event = "path.peer_relay", peer = ?peer, reason = m.reason, "path: peer relay")
        }
    }
}

impl PeerInner {
    /// A relay stream that is up: ours if we dialled one, else the one the peer's datagrams came on.
    fn live_relay(&self) -> Option<&Link> {
        [&self.relay_out, &self.relay_in]
            .into_iter()
            .flatten()
            .find(|l| !l.is_closed())
    }

    /// Where to send now: off the direct path, through the peer relay in use, else the gateway's relay.
    /// With neither up yet, datagrams still go out over UDP: they may get through, and WireGuard's retries
    /// cover the rest until a relay is there.
    fn via(&self) -> Option<Via> {
        if let Some(u) = self.peer_relay() {
            return Some(Via::PeerRelay {
                relay: u.endpoint,
                vni: u.vni,
            });
        }
        if !self.path.on().is_direct()
            && let Some(link) = self.live_relay()
        {
            return Some(Via::Relay(link.clone()));
        }
        self.endpoint.map(Via::Udp)
    }

    /// boringtun's timers and our keepalive. Their expected events (a retried or renewed handshake, giving
    /// up on an absent peer) are logged here at debug level; boringtun's own logs of them (as warnings and
    /// errors) are filtered out by the agent.
    fn timers(&mut self, key: &Key, dst: &mut [u8]) -> Option<(Via, Vec<u8>)> {
        let g = self;
        g.refresh_handshake();
        let mut out = match g.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(out) => {
                if out.first() == Some(&MSG_HANDSHAKE_INIT) {
                    tracing::debug!(event = "handshake.initiated_by_timers", peer = ?key, "handshake initiation from WireGuard's timers (a retry after REKEY_TIMEOUT, or a rekey)");
                }
                g.expired = false;
                Some(out.to_vec())
            }
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                if !std::mem::replace(&mut g.expired, true) {
                    tracing::debug!(peer = ?key, "WireGuard gave up on the handshake (REKEY_ATTEMPT_TIME) or the session expired; the next packet starts another");
                }
                None
            }
            _ => {
                g.expired = false;
                None
            }
        };
        if out.is_none() {
            let due = match (g.keepalive, g.via(), g.last_tx) {
                (Some(_), Some(_), None) => true,
                (Some(k), Some(_), Some(t)) => t.elapsed() >= Duration::from_secs(k.into()),
                _ => false,
            };
            if due {
                // Counts as "sent" even while a handshake is pending, so a pending handshake
                // does not queue an empty packet on every tick.
                g.last_tx = Some(Instant::now());
                if let TunnResult::WriteToNetwork(keepalive) = g.tunn.encapsulate(&[], dst) {
                    out = Some(keepalive.to_vec());
                }
            }
        }
        let (out, via) = (out?, g.via()?);
        g.note_tx_bytes(&out, &via, Instant::now());
        Some((via, out))
    }
}

impl PeerInner {
    /// Takes note of an authenticated datagram from the peer. Returns whether the path or the endpoint moved.
    fn received(&mut self, key: &Key, from: &Via, datagram: &[u8], now: Instant) -> bool {
        self.rx_bytes += datagram.len() as u64;
        let mut moved_endpoint = false;
        let message = Message::of(datagram);
        if matches!(message, Some(Message::Initiation | Message::Response)) {
            self.handshake_rx = Some(now);
        }
        // An answer: a response to our initiation, or anything on a session (which the peer has only once
        // our answer reached it). Its own initiation is a question; a peer that can send but not hear us
        // sends nothing else.
        if message != Some(Message::Initiation) {
            self.last_heard = Some(now);
        }
        let moved = match from {
            Via::Udp(addr) => {
                if message == Some(Message::Initiation) {
                    self.note_reached(*addr, now);
                }
                if self.endpoint != Some(*addr) {
                    tracing::debug!(peer = ?key, old = ?self.endpoint, new = %addr, "peer roamed");
                    self.endpoint = Some(*addr);
                    moved_endpoint = true;
                }
                message.and_then(|m| self.path.received_direct(m, now))
            }
            Via::Relay(link) => {
                if self.relay_out.as_ref() != Some(link) && self.relay_in.as_ref() != Some(link) {
                    tracing::debug!(peer = ?key, link = link.id(), "peer relays to us on a new stream");
                    self.relay_in = Some(link.clone());
                    moved_endpoint = true;
                }
                message.and_then(|m| self.path.received_relayed(m, now))
            }
            Via::PeerRelay { relay, vni } => {
                if let Some(relay) = self.relays.relay_at(*relay, *vni) {
                    self.relays.heard_via(&relay, now);
                }
                let before = self.peer_relay();
                let moved = message.and_then(|m| self.path.received_relayed(m, now));
                moved_endpoint |= self.peer_relay() != before;
                moved
            }
        };
        let moved = moved.map(|mut m| {
            if m.to.is_direct() {
                self.punch.moved_to_udp();
                m.to = udp_path(self.endpoint, self.configured);
                if m.to == PathKind::Punched {
                    self.path.punched();
                }
            }
            m
        });
        if let Some(m) = moved {
            log_move(key, m, self.relay.as_ref());
        }
        moved_endpoint || moved.is_some()
    }

    /// Runs the peer's hole punching ([`Punch::tick`]): the candidate message it asks for goes through the
    /// tunnel on the current path, and the attempt's initiation to each target over UDP.
    fn punch_tick(
        &mut self,
        key: &Key,
        now: Instant,
        handshake_at: Option<Instant>,
        ctx: &TickContext,
        dst: &mut [u8],
        sends: &mut Vec<(Via, Vec<u8>)>,
    ) {
        let session = handshake_at.is_some_and(|t| now.saturating_duration_since(t) < REJECT_AFTER)
            && self.overlay_ip.is_some();
        let tick = punch::Tick {
            now,
            on_relay: self.path.on() == PathKind::Relay,
            session,
            ours: &ctx.own,
            endpoint: self.endpoint,
            overlay: ctx.overlay,
        };
        let actions = self.punch.tick(&tick);
        if let (Some(kind), Some(peer_ip), Some(via)) =
            (actions.message, self.overlay_ip, self.via())
        {
            let observed = match (self.path.on().is_direct(), self.endpoint) {
                (true, Some(SocketAddr::V4(e))) => Some(e),
                _ => None,
            };
            let message = candidates::Message {
                kind,
                mapping: ctx.own.mapping,
                observed,
                candidates: ctx.own.candidates.clone(),
            };
            let packet = candidates::wrap(ctx.address, peer_ip, &message.encode());
            if let TunnResult::WriteToNetwork(out) = self.tunn.encapsulate(&packet, dst) {
                let out = out.to_vec();
                if kind == Kind::Call {
                    tracing::debug!(event = "punch.call", peer = ?key, candidates = message.candidates.len(), "punching: calling the peer through the tunnel");
                }
                self.note_tx_bytes(&out, &via, now);
                sends.push((via, out));
            }
        }
        if actions.send_to.is_empty() {
            return;
        }
        let init = match self.initiation_to_copy(now, actions.fresh_initiation) {
            Some(init) => init,
            None => match self.tunn.format_handshake_initiation(dst, true) {
                TunnResult::WriteToNetwork(init) => init.to_vec(),
                _ => return,
            },
        };
        tracing::debug!(event = "punch.send", peer = ?key, targets = ?actions.send_to, "punching: a handshake initiation to each candidate");
        for addr in actions.send_to {
            let via = Via::Udp(SocketAddr::V4(addr));
            self.note_tx_bytes(&init, &via, now);
            sends.push((via, init.clone()));
        }
    }

    /// The initiation in flight, to copy to an attempt's every target ([`punch::copy_initiation`]): only one no
    /// handshake has answered yet, as stamped on arrival (the peer drops a copy of an answered one as a
    /// replay), and at an attempt's start (`fresh`) only one just sent.
    fn initiation_to_copy(&self, now: Instant, fresh: bool) -> Option<Vec<u8>> {
        self.last_init
            .as_ref()
            .filter(|(at, _)| punch::copy_initiation(*at, self.handshake_rx, now, fresh))
            .map(|(_, init)| init.clone())
    }

    /// Asks the peer whether it is still there, when [`Prober::due`] says so: a probe through the tunnel on
    /// the current path, which it answers ([`crate::probe`]); and once its silence reaches the timeout, a new
    /// handshake ([`Prober::handshake_due`]).
    fn probe_tick(
        &mut self,
        key: &Key,
        now: Instant,
        handshake_at: Option<Instant>,
        ctx: &TickContext,
        dst: &mut [u8],
        sends: &mut Vec<(Via, Vec<u8>)>,
    ) {
        let (Some(peer_ip), Some(via)) = (self.overlay_ip, self.via()) else {
            return;
        };
        let watched = self.watch(key, now, ctx);
        let situation = liveness::Situation {
            now,
            last_heard: self.last_heard,
            session: handshake_at.is_some_and(|t| now.saturating_duration_since(t) < REJECT_AFTER),
            first: liveness::probes_first(ctx.own_key.as_bytes(), key.as_bytes()),
            watched,
        };
        if self.prober.handshake_due(&ctx.liveness, situation)
            && let TunnResult::WriteToNetwork(init) =
                self.tunn.format_handshake_initiation(dst, false)
        {
            tracing::debug!(event = "handshake.initiated", peer = ?key, ?via, "handshake initiation: the peer has not answered for the peer timeout, and may have lost the session");
            let init = init.to_vec();
            self.note_tx_bytes(&init, &via, now);
            sends.push((via.clone(), init));
        }
        if !self.prober.due(&ctx.liveness, situation) {
            return;
        }
        // The top bit marks probes through a relay ([`RELAYED_PROBE`]).
        self.probe_seq = (self.probe_seq + 1) & !RELAYED_PROBE;
        let packet = probe::request(ctx.address, peer_ip, self.probe_seq);
        if let TunnResult::WriteToNetwork(out) = self.tunn.encapsulate(&packet, dst) {
            tracing::trace!(event = "probe.sent", peer = ?key, seq = self.probe_seq, "asking the peer whether it is there");
            let out = out.to_vec();
            self.note_tx_bytes(&out, &via, now);
            sends.push((via, out));
        }
    }

    /// A candidate message from the peer; returns the address it says it sees this node at, if any.
    fn candidates_received(&mut self, key: &Key, payload: &[u8]) -> Option<std::net::SocketAddrV4> {
        match candidates::Message::decode(payload) {
            Ok(msg) => {
                tracing::debug!(event = "punch.candidates", peer = ?key, kind = ?msg.kind, mapping = %msg.mapping, candidates = ?msg.candidates, "the peer's candidates");
                let observed = msg.observed;
                self.punch.received(msg);
                observed
            }
            Err(e) => {
                self.malformed += 1;
                // Once per peer: a peer that sends one sends them all (another version of the agent, say).
                if self.malformed == 1 {
                    tracing::warn!(peer = ?key, error = %e, "a candidate message from this peer does not parse; dropped, so no hole is punched toward it (the relay still carries it). Does it run another version of the agent?");
                } else {
                    tracing::debug!(peer = ?key, error = %e, "a malformed candidate message from the peer; dropped");
                }
                None
            }
        }
    }
}

impl PeerInner {
    fn note_tx_bytes(&mut self, out: &[u8], via: &Via, now: Instant) {
        self.last_tx = Some(now);
        self.tx_bytes += out.len() as u64;
        if out.first() == Some(&MSG_HANDSHAKE_INIT)
            && self.last_init.as_ref().is_none_or(|(_, last)| last != out)
        {
            self.last_init = Some((now, out.to_vec()));
        }
        if let Via::Udp(addr) = via {
            self.note_udp_sent(addr.ip(), now);
            if let Some(message) = Message::of(out) {
                self.path.sent_direct(message, now);
            }
        }
    }

    /// Converts boringtun's "time since handshake" into a stable wall-clock timestamp.
    fn refresh_handshake(&mut self) {
        let Some(since) = self.tunn.time_since_last_handshake() else {
            return;
        };
        let Some(at) = SystemTime::now().checked_sub(since) else {
            return;
        };
        let moved = match self.last_handshake {
            None => true,
            Some(prev) => {
                let diff = at.duration_since(prev).unwrap_or_else(|e| e.duration());
                diff >= Duration::from_secs(1)
            }
        };
        if moved {
            self.last_handshake = Some(at);
        }
    }
}

fn new_tunn(
    public_key: Key,
    index: u32,
    keys: &NoiseKeys,
    preshared_key: Option<&PresharedKey>,
) -> Tunn {
    Tunn::new(
        keys.secret.clone(),
        x25519::PublicKey::from(*public_key.as_bytes()),
        preshared_key.map(|k| *k.expose_bytes()),
        // Persistent keepalive is ours (see `tick`), so it can change in place.
        None,
        index,
        Some(keys.rate_limiter.clone()),
    )
}

#[cfg(test)]
mod tests;
