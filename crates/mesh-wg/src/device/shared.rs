//! What the loops, the UAPI server and the API share: the peers, their keys and allowed IPs, and the UDP
//! socket; and the decisions made on it: which peer a packet is for, what a datagram is, and how a UAPI
//! `set` changes the peers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use ipnetwork::Ipv4Network;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::sync::{mpsc, watch};

use mesh_path::reachability::Reachability;
use mesh_path::{candidates, ipv4};
use mesh_peer_relay::{CONTROL_PORT, Control};
use mesh_policy::filter::{Admit, DropCounts, Dropped};

use super::BUF_LEN;
use super::batch::data_peer_index;
use super::codel;
use super::outbound::send;
use super::relay_dialing::RelayDialing;
use super::relay_server::Server;
use super::threads::Waker;
use super::tun::TunWriter;
use super::udp::{Udp, WhenFull};
use crate::allowed_ips::AllowedIps;
use crate::peer::{NoiseKeys, Peer, RELAYED_PROBE, TickContext, Via};
use crate::uapi::{DeviceSnapshot, PeerSnapshot, PeerUpdate, SetRequest};
use crate::{Error, probe, uapi_server};
use wg_key::{Key, PrivateKey};

/// State shared by the loops, the UAPI server and the API.
pub(crate) struct Shared {
    pub(crate) ifname: String,
    pub(super) tun: tun_rs::SyncDevice,
    pub(super) state: RwLock<State>,
    /// The current UDP socket; replaced when the listen port changes.
    pub(super) udp: watch::Sender<Arc<Udp>>,
    /// Wakes the packet thread to read from the new socket when it is replaced.
    pub(super) packets_waker: Arc<Waker>,
    /// Datagrams that no peer of ours could be found for, by the path they came on: strangers' traffic,
    /// dropped as WireGuard drops it.
    pub(super) unknown_udp: AtomicU64,
    pub(super) unknown_relay: AtomicU64,
    /// Peers' packets the grants between seats dropped, by why ([`Dropped::ALL`]'s order): the device's
    /// own count, which outlives a removed peer's.
    pub(super) policy_dropped: [AtomicU64; 3],
    /// Whether the UDP socket uses GSO and GRO (kept for a rebind).
    pub(super) udp_offload: bool,
    /// How to reach peers' relays; `None` keeps every peer direct.
    pub(super) relay: Option<RelayDialing>,
    /// This node's overlay address (candidate messages come from and go to overlay addresses) and network.
    pub(super) address: Ipv4Addr,
    pub(super) overlay: Ipv4Network,
    /// STUN answers that came to the WireGuard socket, for the discovery loop.
    pub(super) stun_answers: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    /// What the device knows of its own reachability, and the candidates it publishes.
    pub(super) discovered: Mutex<Reachability>,
    /// This node as a peer relay; `None` when it was made without one.
    pub(super) peer_relay: Option<Mutex<Server>>,
    /// Where relayed datagrams for this node's own pairs come from (a relay's address and the pair's vni),
    /// and the pair's peer: the rest that come with a header are for this node to relay.
    pub(super) relayed_in: RwLock<HashMap<(SocketAddr, u32), Key>>,
    /// Relayed datagrams whose header did not parse.
    pub(super) relay_malformed: AtomicU64,
    /// Which peers something watches, besides those that carry traffic ([`crate::Watching`]).
    pub(super) watching: RwLock<Arc<crate::Watching>>,
}

pub(super) struct State {
    pub(super) private_key: PrivateKey,
    pub(super) public_key: x25519::PublicKey,
    pub(super) keys: NoiseKeys,
    /// Handshake messages a second before cookies are demanded.
    pub(super) handshake_limit: u64,
    pub(super) listen_port: u16,
    pub(super) fwmark: u32,
    pub(super) peers: HashMap<Key, Arc<Peer>>,
    /// Counts the peers added and removed: the timer knows its list of peers is still the device's.
    pub(super) generation: u64,
    pub(super) by_index: HashMap<u32, Arc<Peer>>,
    pub(super) allowed_ips: AllowedIps<Key>,
    pub(super) next_index: u32,
    /// How long a peer may be silent and count as alive; a UDP path silent for as long is left.
    pub(super) liveness: crate::Liveness,
    /// UDP ports the policy always passes ([`crate::DeviceConfig::policy_exempt_udp`]).
    pub(super) policy_exempt_udp: Vec<u16>,
}

enum Route {
    Peer(Arc<Peer>),
    /// A STUN message: an answer to the discovery loop's request.
    Stun,
    /// A cookie reply: we are under load and the sender must prove its address.
    Reply(Vec<u8>),
    /// For no peer of ours: a stranger's traffic, counted.
    Unknown,
    /// Malformed, or over the handshake rate limit.
    Drop,
}

/// A batch of received datagrams on its way through the device: the packets for the TUN, and the answers
/// to send.
pub(super) struct Received {
    pub(super) tun: TunWriter,
    pub(super) replies: Vec<(Via, Vec<u8>)>,
    /// Where packets queued behind a handshake are encrypted to, before they are copied to `replies`.
    pub(super) scratch: Vec<u8>,
    ranges: Vec<Range<usize>>,
    peers: Vec<Option<Arc<Peer>>>,
    /// Where peers said, in their candidate messages, they see this node.
    pub(super) observed: Vec<(Key, SocketAddrV4)>,
    /// Peer-relay control messages, by the peer that sent each, handled once the run's peers are released.
    pub(super) relay_control: Vec<(Key, Control)>,
    /// Whether to drop the next full-size packet decrypted, to drain a standing queue ([`super::codel`]).
    pub(super) shed: bool,
}

impl Received {
    pub(super) fn new() -> Self {
        Self {
            tun: TunWriter::new(),
            replies: Vec::new(),
            scratch: vec![0; BUF_LEN],
            ranges: Vec::new(),
            peers: Vec::new(),
            observed: Vec::new(),
            relay_control: Vec::new(),
            shed: false,
        }
    }

    /// Writes the packets to the TUN, sends the answers, and takes note of what peers see.
    pub(super) fn flush(&mut self, shared: &Shared, sock: &Udp, when_full: WhenFull) {
        self.tun.flush(&shared.tun);
        for (via, datagram) in self.replies.drain(..) {
            send(sock, &datagram, &via, when_full);
        }
        if !self.observed.is_empty() {
            shared.observed(&self.observed);
            self.observed.clear();
        }
    }
}

impl uapi_server::Uapi for Shared {
    fn get(&self) -> String {
        crate::uapi::render_get(&self.snapshot())
    }

    fn set(&self, request: SetRequest) -> Result<(), Error> {
        self.apply_set(request)
    }
}

impl Shared {
    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn socket(&self) -> Arc<Udp> {
        self.udp.borrow().clone()
    }

    /// What every peer's tick needs of the device.
    pub(super) fn tick_context(&self) -> TickContext {
        let (own_key, liveness) = {
            let st = self.read();
            (Key::from_bytes(st.public_key.to_bytes()), st.liveness)
        };
        TickContext {
            own: self.own_candidates(),
            own_key,
            liveness,
            address: self.address,
            overlay: self.overlay,
            relays: Vec::new(),
            watching: Arc::clone(&self.watching.read().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Which peer each packet read from the TUN goes to, under one read of the state: by its destination
    /// in the allowed IPs. IPv6 (e.g. router solicitations) and garbage go nowhere.
    pub(super) fn route_packets<'p>(
        &self,
        packets: impl Iterator<Item = &'p [u8]>,
        peers: &mut Vec<Option<Arc<Peer>>>,
    ) {
        peers.clear();
        let st = self.read();
        let mut last: Option<(Ipv4Addr, Option<Arc<Peer>>)> = None;
        for packet in packets {
            let Some(IpAddr::V4(dst)) = Tunn::dst_address(packet) else {
                peers.push(None);
                continue;
            };
            let peer = match &last {
                Some((ip, peer)) if *ip == dst => peer.clone(),
                _ => {
                    let peer = st
                        .allowed_ips
                        .lookup(dst)
                        .and_then(|key| st.peers.get(key))
                        .cloned();
                    if peer.is_none() {
                        tracing::trace!(%dst, "no peer for destination");
                    }
                    last = Some((dst, peer.clone()));
                    peer
                }
            };
            peers.push(peer);
        }
    }

    /// Takes a run of datagrams that came `from` (`ranges` of `buf`): decrypts what is for a peer of ours into
    /// `rx`'s TUN batch, after the cryptokey routing check, and puts the answers (handshake responses, cookie
    /// replies, packets queued behind a handshake) in `rx.replies`. One read of the state for the run, and one
    /// lock of each peer for the datagrams in a row that are its.
    pub(super) fn receive(
        &self,
        from: &Via,
        buf: &[u8],
        ranges: impl Iterator<Item = Range<usize>>,
        rx: &mut Received,
    ) {
        let st = self.read();
        rx.ranges.clear();
        rx.peers.clear();
        for range in ranges {
            let peer = match st.route_datagram(&buf[range.clone()], from) {
                Route::Peer(peer) => Some(peer),
                Route::Reply(cookie) => {
                    rx.replies.push((from.clone(), cookie));
                    None
                }
                Route::Unknown => {
                    let counter = match from {
                        Via::Udp(_) | Via::PeerRelay { .. } => &self.unknown_udp,
                        Via::Relay(_) => &self.unknown_relay,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(?from, "datagram for no known peer");
                    None
                }
                Route::Stun => {
                    if let Via::Udp(addr) = from {
                        // A full queue drops it, as the network might have: the round retransmits.
                        let _ = self
                            .stun_answers
                            .try_send((*addr, buf[range.clone()].to_vec()));
                    }
                    None
                }
                Route::Drop => None,
            };
            rx.ranges.push(range);
            rx.peers.push(peer);
        }
        let mut i = 0;
        while i < rx.ranges.len() {
            let Some(peer) = rx.peers[i].clone() else {
                i += 1;
                continue;
            };
            let mut session = peer.session();
            while i < rx.ranges.len() && rx.peers[i].as_ref().is_some_and(|p| Arc::ptr_eq(p, &peer))
            {
                let datagram = &buf[rx.ranges[i].clone()];
                i += 1;
                if !session.accepts(from) {
                    // Through a relay, but not an allocation of this pair: another seat's, replayed.
                    self.unknown_udp.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = ?peer.public_key, ?from, "relayed datagram through an allocation not the pair's; dropped");
                    continue;
                }
                if rx.tun.is_full() {
                    tracing::debug!(peer = ?peer.public_key, "TUN batch full; datagram dropped");
                    continue;
                }
                match session.decapsulate(from, datagram, rx.tun.slot(datagram.len())) {
                    TunnResult::WriteToTunnelV4(packet, src) => {
                        let len = packet.len();
                        if st.allowed_ips.lookup(src) != Some(&peer.public_key) {
                            tracing::debug!(peer = ?peer.public_key, %src, "inner source not in the peer's allowed IPs; dropped");
                        } else if let Some(payload) = candidates::unwrap(packet, self.address) {
                            // The peer's candidates are the device's business, not the TUN's.
                            if let Some(seen) = session.candidates_received(payload) {
                                rx.observed.push((peer.public_key, seen));
                            }
                        } else if let Some(payload) =
                            ipv4::udp_payload_for(packet, self.address, CONTROL_PORT)
                        {
                            match Control::decode(payload) {
                                Ok(Control::Offer { accepting, .. }) => {
                                    session.offer_received(accepting);
                                }
                                Ok(message) => rx.relay_control.push((peer.public_key, message)),
                                Err(e) => {
                                    tracing::debug!(peer = ?peer.public_key, error = %e, "a peer-relay control message that does not parse; dropped")
                                }
                            }
                        } else if let Some(echo) = probe::parse(packet, self.address) {
                            // A probe is answered here, at once; an answer was taken note of when it
                            // authenticated. Neither is a program's business.
                            match echo {
                                probe::Echo::Request { seq, .. } => {
                                    if let Some((via, answer)) = session.answer_probe(
                                        self.address,
                                        seq,
                                        from,
                                        &mut rx.scratch,
                                    ) {
                                        rx.replies.push((via, answer.to_vec()));
                                    }
                                }
                                probe::Echo::Reply { seq, .. } if seq & RELAYED_PROBE != 0 => {
                                    session.relay_probe_answered(from, seq);
                                }
                                probe::Echo::Reply { .. } => {}
                            }
                        } else if let Admit::Drop(why) = session.admit(packet) {
                            self.policy_dropped[why.index()].fetch_add(1, Ordering::Relaxed);
                            tracing::trace!(peer = ?peer.public_key, rule = why.as_str(), "packet dropped by the policy");
                        } else if rx.shed && len >= codel::FULL_SIZE {
                            rx.shed = false;
                            tracing::trace!(peer = ?peer.public_key, len, "dropped to drain a standing receive queue");
                        } else {
                            session.note_app_traffic();
                            rx.tun.commit(len);
                        }
                    }
                    TunnResult::WriteToNetwork(answer) => {
                        rx.replies.push((from.clone(), answer.to_vec()));
                        // Packets queued behind the handshake go out now.
                        while let TunnResult::WriteToNetwork(queued) =
                            session.flush_queued(&mut rx.scratch)
                        {
                            if let Some(via) = session.via() {
                                rx.replies.push((via.clone(), queued.to_vec()));
                            }
                        }
                    }
                    TunnResult::WriteToTunnelV6(..) => {
                        tracing::trace!(peer = ?peer.public_key, "IPv6 inner packet dropped (IPv4-only overlay)");
                    }
                    TunnResult::Done => {}
                    TunnResult::Err(err) => {
                        tracing::debug!(peer = ?peer.public_key, ?from, error = ?err, "datagram rejected");
                    }
                }
            }
        }
        if !rx.relay_control.is_empty() {
            self.relay_controls(&st, rx);
        }
    }

    /// Peers' packets the policy dropped, by why, since the device was made.
    pub(super) fn policy_dropped(&self) -> DropCounts {
        let mut counts = DropCounts::default();
        for why in Dropped::ALL {
            counts.add_n(
                why,
                self.policy_dropped[why.index()].load(Ordering::Relaxed),
            );
        }
        counts
    }

    pub(crate) fn peer_snapshots(&self) -> Vec<PeerSnapshot> {
        self.snapshots_where(None)
    }

    /// [`Shared::peer_snapshots`] of the peers among `keys` only.
    pub(crate) fn peer_snapshots_of(&self, keys: &[Key]) -> Vec<PeerSnapshot> {
        self.snapshots_where(Some(keys))
    }

    fn snapshots_where(&self, keys: Option<&[Key]>) -> Vec<PeerSnapshot> {
        let own_mapping = self.own_candidates().mapping;
        let st = self.read();
        let wanted = |k: &Key| keys.is_none_or(|keys| keys.contains(k));
        let mut prefixes = st.allowed_ips.prefixes_by_value(wanted);
        let peers: Vec<&Arc<Peer>> = match keys {
            None => st.peers.values().collect(),
            Some(keys) => keys.iter().filter_map(|k| st.peers.get(k)).collect(),
        };
        let mut out: Vec<PeerSnapshot> = peers
            .into_iter()
            .map(|peer| PeerSnapshot {
                status: peer.status(
                    prefixes.remove(&peer.public_key).unwrap_or_default(),
                    own_mapping,
                ),
                preshared_key: peer.preshared_key(),
            })
            .collect();
        out.sort_by_key(|p| p.status.public_key);
        out
    }

    /// The endpoint of each peer whose datagrams go directly over UDP.
    pub(super) fn udp_endpoints(&self) -> Vec<(Key, SocketAddr)> {
        self.peer_snapshots()
            .into_iter()
            .filter(|p| p.status.path.is_direct())
            .filter_map(|p| Some((p.status.public_key, p.status.endpoint?)))
            .collect()
    }

    /// What `get=1` shows.
    pub(crate) fn snapshot(&self) -> DeviceSnapshot {
        let peers = self.peer_snapshots();
        let st = self.read();
        DeviceSnapshot {
            private_key: st.private_key.clone(),
            listen_port: st.listen_port,
            fwmark: st.fwmark,
            peers,
        }
    }

    /// Applies a parsed `set=1` request in order, in place: peers that are not removed keep
    /// their sessions.
    pub(crate) fn apply_set(&self, req: SetRequest) -> Result<(), Error> {
        let mut st = self.write();
        if let Some(private_key) = req.private_key
            && private_key != st.private_key
        {
            st.set_private_key(private_key);
        }
        if let Some(mark) = req.fwmark
            && mark != st.fwmark
        {
            let sock = self.socket();
            setsockopt(&*sock, sockopt::Mark, &mark).map_err(|e| Error::Udp {
                ifname: self.ifname.clone(),
                port: st.listen_port,
                syscall: "setsockopt SO_MARK",
                source: e.into(),
            })?;
            st.fwmark = mark;
        }
        if let Some(port) = req.listen_port
            && (port != st.listen_port || port == 0)
        {
            let sock = Udp::bind(&self.ifname, port, st.fwmark, self.udp_offload)?;
            st.listen_port = sock.local_addr().map(|a| a.port()).unwrap_or(port);
            tracing::info!(listen_port = st.listen_port, "rebound UDP socket");
            self.udp.send_replace(Arc::new(sock));
            self.packets_waker.wake();
        }
        let own = Key::from_bytes(st.public_key.to_bytes());
        if req.replace_peers {
            let keep: HashSet<Key> = req
                .peers
                .iter()
                .filter(|p| !p.remove)
                .map(|p| p.public_key)
                .collect();
            let gone: Vec<Key> = st
                .peers
                .keys()
                .filter(|k| !keep.contains(*k))
                .copied()
                .collect();
            for key in gone {
                st.remove_peer(&key);
            }
        }
        for mut update in req.peers {
            if update.public_key == own {
                // The kernel ignores a peer with the interface's own key; so do we.
                continue;
            }
            if req.replace_peers && !update.remove && st.peers.contains_key(&update.public_key) {
                // A full re-declaration (`wg setconf`): unspecified attributes get their
                // defaults, as after a fresh add, but the session stays.
                update.persistent_keepalive.get_or_insert(0);
                update.preshared_key.get_or_insert(None);
                update.replace_allowed_ips = true;
            }
            st.upsert_peer(&update);
        }
        Ok(())
    }
}

impl State {
    /// Which peer a datagram is for. A data message names it in its header; anything else goes through the
    /// rate limiter (which may answer with a cookie under load) and, for an initiation, the handshake's
    /// decryption of the sender's key.
    fn route_datagram(&self, datagram: &[u8], from: &Via) -> Route {
        if let Some(index) = data_peer_index(datagram) {
            return self
                .by_index
                .get(&index)
                .map_or(Route::Unknown, |p| Route::Peer(p.clone()));
        }
        if matches!(from, Via::Udp(_)) && mesh_path::stun::is_stun(datagram) {
            return Route::Stun;
        }
        let mut cookie = [0u8; 64];
        let packet = match self.keys.rate_limiter.verify_packet(
            Some(from.source_ip()),
            datagram,
            &mut cookie,
        ) {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => return Route::Reply(reply.to_vec()),
            Err(_) => return Route::Drop,
        };
        let peer = match packet {
            Packet::HandshakeInit(init) => {
                match parse_handshake_anon(&self.keys.secret, &self.public_key, &init) {
                    Ok(half) => {
                        let key = Key::from_bytes(half.peer_static_public);
                        let peer = self.peers.get(&key);
                        if peer.is_none() {
                            // At a join, the others' initiations can arrive before the newcomer has read
                            // them from the chain; their retries (REKEY_TIMEOUT) get through.
                            tracing::debug!(event = "handshake.unknown_peer", from_key = ?key, ?from, "handshake initiation from a key that is not a peer (yet); dropped");
                        }
                        peer
                    }
                    Err(err) => {
                        tracing::debug!(?from, error = ?err, "handshake initiation not for us");
                        None
                    }
                }
            }
            Packet::HandshakeResponse(p) => self.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => self.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketData(p) => self.by_index.get(&(p.receiver_idx >> 8)),
        };
        peer.map_or(Route::Unknown, |p| Route::Peer(p.clone()))
    }

    pub(super) fn set_private_key(&mut self, private_key: PrivateKey) {
        let secret = private_key.to_secret();
        self.public_key = x25519::PublicKey::from(&secret);
        self.keys = NoiseKeys {
            rate_limiter: Arc::new(RateLimiter::new(&self.public_key, self.handshake_limit)),
            secret,
        };
        self.private_key = private_key;
        for peer in self.peers.values() {
            peer.set_static_private(&self.keys);
        }
        let own = Key::from_bytes(self.public_key.to_bytes());
        self.remove_peer(&own);
        tracing::info!(public_key = ?own, "private key changed; sessions cleared");
    }

    pub(super) fn allocate_index(&mut self) -> u32 {
        loop {
            // boringtun shifts the index left by 8 bits, so it must fit in 24.
            let index = self.next_index & 0x00ff_ffff;
            self.next_index = self.next_index.wrapping_add(1);
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    pub(super) fn upsert_peer(&mut self, update: &PeerUpdate) {
        let key = update.public_key;
        if update.remove {
            self.remove_peer(&key);
            return;
        }
        let peer = match self.peers.get(&key) {
            Some(peer) => peer.clone(),
            None if update.update_only => return,
            None => {
                let index = self.allocate_index();
                let psk = update.preshared_key.clone().flatten();
                let peer = Arc::new(Peer::new(
                    key,
                    index,
                    &self.keys,
                    psk,
                    self.liveness,
                    &self.policy_exempt_udp,
                ));
                self.peers.insert(key, peer.clone());
                self.generation += 1;
                self.by_index.insert(index, peer.clone());
                tracing::info!(event = "peer.added", peer = ?peer.public_key, "peer added");
                peer
            }
        };
        if let Some(endpoint) = update.endpoint {
            peer.set_endpoint(endpoint);
        }
        if let Some(psk) = update.preshared_key.clone()
            && peer.set_preshared_key(psk, &self.keys)
        {
            tracing::info!(peer = ?peer.public_key, "preshared key changed; session restarts");
        }
        if update.replace_allowed_ips {
            self.allowed_ips.remove_value(&key);
            peer.set_overlay_ip(None);
        }
        for net in &update.allowed_ips {
            if let Some(prev) = self.allowed_ips.insert(*net, key)
                && prev != key
            {
                tracing::info!(%net, from = ?prev, to = ?peer.public_key, "allowed IP moved");
            }
        }
        if let Some(host) = update.allowed_ips.iter().find(|n| n.prefix() == 32) {
            peer.set_overlay_ip(Some(host.ip()));
        }
        if let Some(keepalive) = update.persistent_keepalive {
            peer.set_keepalive(keepalive);
        }
        tracing::debug!(peer = ?peer.public_key, endpoint = ?update.endpoint, "peer updated");
    }

    pub(super) fn remove_peer(&mut self, key: &Key) -> bool {
        let Some(peer) = self.peers.remove(key) else {
            return false;
        };
        self.generation += 1;
        self.by_index.remove(&peer.index);
        self.allowed_ips.remove_value(key);
        tracing::info!(peer = ?peer.public_key, "peer removed");
        true
    }
}
