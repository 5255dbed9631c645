//! A peer as the pair's other seat, reached through a peer relay ([`mesh_path::relays`]), and as a relay
//! itself: the Offers it sends, the allocations this node holds for the pair at each relay, the probes that
//! measure them, and the control messages that go to a relay inside this node's tunnel to it.

use super::*;

use mesh_path::relays::{Ask, Candidate, InUse};
use mesh_peer_relay::{CONTROL_PORT, Control, Op};

/// The top bit of a probe's sequence number marks one sent through a relay: it is answered the way it
/// came, not on the pair's current path, so that it measures that relay.
pub(crate) const RELAYED_PROBE: u16 = 0x8000;
/// An Offer is believed this long: relays send one every [`OFFER_EVERY`].
const OFFER_LASTS: Duration = Duration::from_secs(90);
/// How often a relay tells each peer it relays.
pub(crate) const OFFER_EVERY: Duration = Duration::from_secs(30);

/// How long a datagram this node sent to an address keeps its NAT open for that address's answers, as far
/// as reaching this node first is concerned (NATs keep a UDP mapping 30 s to a few minutes).
const SENT_HOLDS: Duration = Duration::from_secs(180);
/// The most addresses remembered per peer (its endpoint, and the candidates punching tries).
const SENT_KEPT: usize = 8;

/// Whether an address is on the internet: one on a private network reaching this node shows nothing of
/// what the outside can reach.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (b & 0xc0) == 64;
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || shared)
        }
        IpAddr::V6(v6) => {
            let unique_local = (v6.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || unique_local || link_local)
        }
    }
}

/// What the relay side and the client side of the device need of one peer, read under one lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct RelayView {
    /// The peer as a relay this node may use: it offers, and this node reaches it directly and hears it.
    pub(crate) candidate: Option<Candidate>,
    /// Where the peer's authenticated datagrams come from while it is direct or punched here, and alive:
    /// what a relay here forwards to and from.
    pub(crate) udp_endpoint: Option<SocketAddr>,
    /// The pair's ready allocations at relays: where datagrams through them come from, and their ids.
    pub(crate) ready: Vec<InUse>,
}

impl Peer {
    /// The peer's part in peer relaying, now.
    pub(crate) fn relay_view(&self, now: Instant, liveness: Liveness) -> RelayView {
        self.lock_quietly()
            .relay_view(&self.public_key, now, liveness)
    }

    /// What relay `relay` said about this pair's allocation. Returns a Request to send it back, for an
    /// Invite this node takes up.
    pub(crate) fn relay_said(&self, relay: Key, message: Control, now: Instant) -> Option<Control> {
        let mut g = self.lock();
        match message {
            Control::Granted { vni, ready, .. } => {
                g.relays.granted(&relay, vni, ready, now);
                None
            }
            Control::Refused { reason, .. } => {
                tracing::debug!(event = "peer_relay.refused", peer = ?self.public_key, relay = ?relay, reason = reason.as_str(), "a relay refused or released the pair's allocation");
                g.relays.refused(&relay, now);
                None
            }
            Control::Invite { .. } => g.relays.invited(&relay, now).then_some(Control::Request {
                peer: self.public_key,
                op: Op::Allocate,
            }),
            Control::Offer { .. } | Control::Request { .. } => None,
        }
    }

    /// A control message for the peer, as a datagram inside its tunnel on its current path; `None` while it
    /// has no overlay address, path or session to carry it.
    pub(crate) fn control(
        &self,
        own: Ipv4Addr,
        message: &Control,
        dst: &mut [u8],
    ) -> Option<(Via, Vec<u8>)> {
        let mut g = self.lock();
        let (peer_ip, via) = (g.overlay_ip?, g.via()?);
        let packet = mesh_path::ipv4::udp(own, peer_ip, CONTROL_PORT, &message.encode());
        match g.tunn.encapsulate(&packet, dst) {
            TunnResult::WriteToNetwork(out) => {
                let out = out.to_vec();
                g.note_tx_bytes(&out, &via, Instant::now());
                Some((via, out))
            }
            _ => None,
        }
    }
}

impl PeerInner {
    /// The peer's part in peer relaying, now.
    pub(super) fn relay_view(&self, key: &Key, now: Instant, liveness: Liveness) -> RelayView {
        let g = self;
        // Each peer to its own bound: an idle one nothing watches is heard only at its keepalives, and is
        // no less a seat on UDP for that.
        let bound = Liveness {
            timeout: g.health_timeout(now).max(liveness.timeout),
        };
        let alive = g.path.on().is_direct() && bound.alive(g.last_heard, now);
        let udp_endpoint = g.endpoint.filter(|_| alive);
        let offers = g.offer.is_some_and(|(accepting, at)| {
            accepting && now.saturating_duration_since(at) < OFFER_LASTS
        });
        RelayView {
            candidate: udp_endpoint.filter(|_| offers).map(|endpoint| Candidate {
                relay: *key,
                endpoint,
            }),
            udp_endpoint,
            ready: g.relays.ready().collect(),
        }
    }

    /// This node sent the peer a datagram at `ip`: answers from there are let in by a NAT in front of it.
    /// The same address as the last costs one comparison, as it does on the packet path.
    pub(super) fn note_udp_sent(&mut self, ip: IpAddr, now: Instant) {
        if let Some(last) = self.udp_sent.last_mut()
            && last.0 == ip
        {
            last.1 = now;
            return;
        }
        self.udp_sent.retain(|(sent, _)| *sent != ip);
        if self.udp_sent.len() >= SENT_KEPT {
            self.udp_sent.remove(0);
        }
        self.udp_sent.push((ip, now));
    }

    /// The peer's handshake came over UDP from `from`.
    pub(super) fn note_reached(&mut self, from: SocketAddr, now: Instant) {
        let sent = (self.udp_sent.iter())
            .any(|(ip, t)| *ip == from.ip() && now.saturating_duration_since(*t) < SENT_HOLDS);
        if !sent && is_public(from.ip()) {
            self.reached_first = true;
        }
    }

    /// The pair's peer relays at a tick: the candidates as they are now, the allocations to ask for, and the
    /// probes through each ready one, which go out here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relays_tick(
        &mut self,
        key: &Key,
        now: Instant,
        handshake_at: Option<Instant>,
        ctx: &TickContext,
        dst: &mut [u8],
        sends: &mut Vec<(Via, Vec<u8>)>,
        controls: &mut Vec<(Key, Control)>,
    ) {
        let session = handshake_at.is_some_and(|t| now.saturating_duration_since(t) < REJECT_AFTER);
        let wanted = self.path.doubtful(now) && self.overlay_ip.is_some();
        // Only a pair that wants a relay looks at the candidates: with every member offering, each of n
        // peers going through all n candidates at every tick would cost n² a tick.
        let released = if wanted {
            let candidates: Vec<Candidate> = (ctx.relays.iter())
                .filter(|c| c.relay != *key)
                .copied()
                .collect();
            self.relays.set_candidates(&candidates)
        } else {
            Vec::new()
        };
        let tick = self.relays.tick(now, wanted, session, ctx.liveness);
        let op = |ask| match ask {
            Ask::Allocate => Op::Allocate,
            Ask::Release => Op::Release,
        };
        let asks = released.into_iter().chain(tick.asks);
        controls.extend(asks.map(|(relay, ask)| {
            let m = Control::Request {
                peer: *key,
                op: op(ask),
            };
            (relay, m)
        }));
        let Some(peer_ip) = self.overlay_ip else {
            return;
        };
        for (relay, seq) in tick.probes {
            let Some(u) = self.relays.ready().find(|u| u.relay == relay) else {
                continue;
            };
            let packet = probe::request(ctx.address, peer_ip, seq | RELAYED_PROBE);
            if let TunnResult::WriteToNetwork(out) = self.tunn.encapsulate(&packet, dst) {
                let via = Via::PeerRelay {
                    relay: u.endpoint,
                    vni: u.vni,
                };
                let out = out.to_vec();
                self.note_tx_bytes(&out, &via, now);
                sends.push((via, out));
            }
        }
    }

    /// Whether a datagram that came `from` may be the peer's: one through a peer relay must come through an
    /// allocation this node holds for this very pair.
    pub(super) fn accepts(&self, from: &Via) -> bool {
        match from {
            Via::PeerRelay { relay, vni } => self.relays.relay_at(*relay, *vni).is_some(),
            Via::Udp(_) | Via::Relay(_) => true,
        }
    }

    /// The peer relay in use, while the pair is not direct.
    pub(super) fn peer_relay(&self) -> Option<InUse> {
        (!self.path.on().is_direct())
            .then(|| self.relays.current())
            .flatten()
    }
}

impl Session<'_> {
    /// Whether a datagram that came `from` may be this peer's ([`PeerInner::accepts`]).
    pub(crate) fn accepts(&self, from: &Via) -> bool {
        self.g.accepts(from)
    }

    /// The answer to a probe through a relay came back through it.
    pub(crate) fn relay_probe_answered(&mut self, from: &Via, seq: u16) {
        if let Via::PeerRelay { relay, vni } = from
            && let Some(key) = self.g.relays.relay_at(*relay, *vni)
        {
            self.g
                .relays
                .probe_answered(&key, seq & !RELAYED_PROBE, self.now);
        }
    }

    /// The peer, as a relay, offers or stops.
    pub(crate) fn offer_received(&mut self, accepting: bool) {
        if self.g.offer.is_none_or(|(was, _)| was != accepting) {
            tracing::debug!(event = "peer_relay.offer", peer = ?self.key, accepting, "the peer offers to relay");
        }
        self.g.offer = Some((accepting, self.now));
    }
}
