//! Peer relays in the device ([`mesh_peer_relay`]): this node as a relay (its table of allocations, the
//! Offers it sends, forwarding on the packet thread), and as a seat that uses one (relayed datagrams
//! handed to the pair's peer, the control messages that reach each pair's relays).
//!
//! Locks are taken in one order: the table, then a peer. No peer's lock is held while the table's is
//! taken, so control messages that arrive in a run are kept in [`Received`] and handled after it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mesh_path::Liveness;
use mesh_peer_relay::{Control, HEADER_LEN, Header, Op, RefusedReason, Seats};
use wg_key::Key;

use super::batch::segments;
use super::relay_server::PeerRelayStatus;
use super::shared::{Received, Shared, State};
use super::udp::{Udp, WhenFull};
use crate::peer::{OFFER_EVERY, Peer, RelayView, Via};

/// The relay's view of its peers: seats while they are peers, on UDP while direct or punched and alive.
struct PeerSeats<'a> {
    st: &'a State,
    now: Instant,
    liveness: Liveness,
}

impl Seats for PeerSeats<'_> {
    fn is_seat(&self, key: &Key) -> bool {
        self.st.peers.contains_key(key)
    }

    fn udp_endpoint(&self, key: &Key) -> Option<SocketAddr> {
        let peer = self.st.peers.get(key)?;
        peer.relay_view(self.now, self.liveness).udp_endpoint
    }
}

/// The vni of a relayed datagram, if its header parses.
fn vni_of(datagram: &[u8]) -> Option<u32> {
    Header::decode(datagram).ok().map(|(h, _)| h.vni)
}

impl Shared {
    /// A run of datagrams that came `from` with a peer-relay header, on the packet thread: those of a pair
    /// this node is in go to its peer, the header taken off; the others are forwarded, header and all,
    /// when this node relays for their pair.
    pub(super) fn relayed_run(
        &self,
        sock: &Udp,
        from: SocketAddr,
        buf: &[u8],
        stride: usize,
        rx: &mut Received,
    ) {
        let mut segs = segments(0..buf.len(), stride).peekable();
        while let Some(first) = segs.next() {
            let Some(vni) = vni_of(&buf[first.clone()]) else {
                self.relay_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, "a relayed datagram whose header does not parse; dropped");
                continue;
            };
            let mut group = first.clone();
            while let Some(next) = segs.next_if(|r| vni_of(&buf[r.clone()]) == Some(vni)) {
                group.end = next.end;
            }
            let ours = (self.relayed_in.read())
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&(from, vni));
            if ours {
                let via = Via::PeerRelay { relay: from, vni };
                let ranges = segments(group, stride).map(|r| r.start + HEADER_LEN..r.end);
                self.receive(&via, buf, ranges, rx);
            } else {
                self.forward(sock, from, vni, buf, group, stride);
            }
        }
    }

    /// Forwards a run of one pair's datagrams as the relay: in one send when they all go on, as most do.
    fn forward(
        &self,
        sock: &Udp,
        from: SocketAddr,
        vni: u32,
        buf: &[u8],
        run: Range<usize>,
        stride: usize,
    ) {
        let Some(server) = &self.peer_relay else {
            self.unknown_udp.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = Instant::now();
        let mut to: Vec<(Range<usize>, SocketAddr)> = Vec::new();
        {
            let mut s = server.lock().unwrap_or_else(|e| e.into_inner());
            for seg in segments(run.clone(), stride) {
                match s.table.forward(vni, from, seg.len(), now) {
                    Ok(dst) => to.push((seg, dst)),
                    Err(why) => {
                        tracing::trace!(%from, vni, why = why.as_str(), "relayed datagram not forwarded")
                    }
                }
            }
        }
        let whole = to.len() == segments(run.clone(), stride).count();
        if whole && let Some((_, dst)) = to.first() {
            let dst = *dst;
            if to.iter().all(|(_, d)| *d == dst) {
                if let Err(err) = sock.send_run(&buf[run], stride, dst, WhenFull::Wait) {
                    tracing::debug!(to = %dst, error = %err, "relayed send failed");
                }
                return;
            }
        }
        for (seg, dst) in to {
            if let Err(err) = sock.send_to(&buf[seg], dst, WhenFull::Wait) {
                tracing::debug!(to = %dst, error = %err, "relayed send failed");
            }
        }
    }

    /// The control messages that arrived in a run, each from the peer named first: Requests go to the
    /// table; a relay's answers to the pair they are about. What they call for is encrypted for its peer
    /// into `rx.replies`.
    pub(super) fn relay_controls(&self, st: &State, rx: &mut Received) {
        let now = Instant::now();
        let liveness = st.liveness;
        let mut out: Vec<(Key, Control)> = Vec::new();
        for (from, message) in std::mem::take(&mut rx.relay_control) {
            match message {
                Control::Request { peer, op } => {
                    let Some(server) = &self.peer_relay else {
                        let reason = RefusedReason::NotRelaying;
                        out.push((from, Control::Refused { peer, reason }));
                        continue;
                    };
                    let mut s = server.lock().unwrap_or_else(|e| e.into_inner());
                    let seats = PeerSeats { st, now, liveness };
                    out.extend(match op {
                        Op::Allocate => s.table.request(from, peer, &seats, now),
                        Op::Release => s.table.release(from, peer),
                    });
                }
                Control::Granted { peer, .. }
                | Control::Refused { peer, .. }
                | Control::Invite { peer, .. } => {
                    if let Some(p) = st.peers.get(&peer)
                        && let Some(ask) = p.relay_said(from, message, now)
                    {
                        out.push((from, ask));
                    }
                }
                // Taken under the sender's lock as it arrived.
                Control::Offer { .. } => {}
            }
        }
        for (to, message) in out {
            if let Some(p) = st.peers.get(&to)
                && let Some(send) = p.control(self.address, &message, &mut rx.scratch)
            {
                rx.replies.push(send);
            }
        }
    }

    /// The relay's upkeep at a timer tick, from each peer's view: whether it offers, the seats' endpoints,
    /// allocations that ran out, and the Offers due. Returns the control messages to send.
    pub(super) fn relay_upkeep(&self, views: &[(Arc<Peer>, RelayView)]) -> Vec<(Key, Control)> {
        let Some(server) = &self.peer_relay else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut s = server.lock().unwrap_or_else(|e| e.into_inner());
        let mode = s.mode;
        let (offering, why) = self.discovered(|d| d.offers_relay(mode));
        let changed = offering != s.offering;
        if changed {
            tracing::info!(
                event = "peer_relay.offering",
                offering,
                why,
                "peer relaying for others: {}",
                if offering { "offered" } else { "not offered" }
            );
        }
        (s.offering, s.why) = (offering, why);
        s.table.set_accepting(offering);
        let gone = s.seats.align(views.iter().map(|(p, _)| p.public_key));
        let mut out = Vec::new();
        for (i, (_, view)) in views.iter().enumerate() {
            let seat = s.seats.get_mut(i);
            if seat.endpoint != Some(view.udp_endpoint) {
                seat.endpoint = Some(view.udp_endpoint);
                let key = seat.key;
                out.extend(s.table.endpoint(key, view.udp_endpoint));
            }
        }
        for key in gone {
            out.extend(s.table.seat_gone(key));
        }
        out.extend(s.table.tick(now));
        let offer = s.table.offer();
        for (i, (_, view)) in views.iter().enumerate() {
            let seat = s.seats.get_mut(i);
            let due =
                (seat.offered).is_none_or(|t| now.saturating_duration_since(t) >= OFFER_EVERY);
            let told = seat.offered.is_some();
            // Offered to a peer that reaches this node directly, and withdrawn from those told.
            if view.udp_endpoint.is_some() && (offering || told) && (due || changed) {
                seat.offered = Some(now);
                out.push((seat.key, offer));
            }
            if !offering && told && !changed {
                seat.offered = None;
            }
        }
        out
    }

    /// Where relayed datagrams for this node's pairs come from, as the timer tick found them: one map,
    /// replaced only when it changed.
    pub(super) fn note_relayed_in(&self, views: &[(Arc<Peer>, RelayView)]) {
        let now: HashMap<(SocketAddr, u32), Key> = (views.iter())
            .flat_map(|(p, v)| v.ready.iter().map(|u| ((u.endpoint, u.vni), p.public_key)))
            .collect();
        // Read by the packet thread on every relayed run: written only when it changed.
        if *self.relayed_in.read().unwrap_or_else(|e| e.into_inner()) != now {
            *self.relayed_in.write().unwrap_or_else(|e| e.into_inner()) = now;
        }
    }

    /// The device as a peer relay; `None` when it was made without one.
    pub(super) fn peer_relay_status(&self) -> Option<PeerRelayStatus> {
        let s = self.peer_relay.as_ref()?;
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        Some(PeerRelayStatus {
            offering: s.offering,
            why: s.why,
            stats: s.table.stats(),
            malformed: self.relay_malformed.load(Ordering::Relaxed),
        })
    }
}
