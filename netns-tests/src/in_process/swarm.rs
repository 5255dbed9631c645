//! A swarm of simulated WireGuard peers in one process: the other side of a benchmark of one real agent
//! against hundreds of peers, without running hundreds of agents (each a process with its own TUN device,
//! chain client and API), which one machine could not hold.
//!
//! Each simulated peer is a boringtun [`Tunn`] behind its own static key and its own UDP socket, so to the
//! agent under test it is indistinguishable from a remote node: its own key to authenticate, its own
//! endpoint to answer, its own handshake timers. What the benchmark measures is the join storm: a newcomer
//! joins, every peer initiates a handshake to it at once ([`Swarm::initiate_all`]), and [`Swarm::stats`]
//! says how long each took to get a session, whether the newcomer was under load and answered with cookie
//! replies, and whether a peer had to retry.
//!
//! Like a WireGuard node, a peer answers only the nodes it has been told of ([`Swarm::configure`], or
//! [`Swarm::initiate`], which its member's plan does in the benchmark): an initiation from another key is
//! dropped and counted, as the initiations a newcomer sends before its peers have read its record are.
//!
//! The peers speak only WireGuard's handshake and keepalives: they carry no traffic of their own. They
//! apply no rate limit of their own worth measuring (boringtun's per-`Tunn` default), since the agent,
//! not the swarm, is under test.
//!
//! A thousand peers need a thousand file descriptors: raise `RLIMIT_NOFILE` above the usual soft limit of
//! 1024 before binding that many.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use owned_task::Task;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

/// The agent's persistent keepalive, so a simulated peer keeps the agent's sessions as busy as a real one.
const PERSISTENT_KEEPALIVE_SECS: u16 = 25;
/// How often a peer runs boringtun's timers. boringtun rounds its own timers to this order, and its
/// retransmission jitter is up to a third of a second, so ticking faster would measure nothing more.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Large enough for any datagram of a tunnel with an MTU of about 1500 plus WireGuard's overhead; larger
/// datagrams are truncated, fail to decrypt and are counted as errors. Small, because there are a
/// thousand peers with two of these each.
const MAX_DATAGRAM: usize = 4096;

const HANDSHAKE_INIT: u32 = 1;
const HANDSHAKE_RESPONSE: u32 = 2;
const COOKIE_REPLY: u32 = 3;
const TRANSPORT_DATA: u32 = 4;

/// A simulated peer as the agent under test is to be told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmPeer {
    pub public_key: [u8; 32],
    pub endpoint: SocketAddr,
}

/// What one simulated peer saw, summed over every node it has a session with (in the benchmark, only the
/// agent under test).
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    /// When [`Swarm::initiate_all`] made it send its first initiation: where the join storm starts.
    pub initiated_at: Option<Instant>,
    /// The first moment it had a session, as initiator or as responder. It can precede `initiated_at`
    /// when the agent initiated first (an agent initiates to all its peers when it starts). As responder,
    /// boringtun counts the session only once the initiator's first transport packet (its keepalive)
    /// has arrived, as WireGuard does.
    pub handshake_at: Option<Instant>,
    /// Handshake initiations sent; more than one per handshake means the agent did not answer in
    /// time (REKEY_TIMEOUT, 5 s) and boringtun retried.
    pub initiations_sent: u32,
    /// Cookie replies accepted: the agent was under load and asked for proof of the peer's address.
    pub cookie_replies: u32,
    /// Handshake responses sent, answering the agent's own initiations.
    pub responses_sent: u32,
    /// Transport packets received and authenticated, keepalives included.
    pub data_received: u64,
    /// The node's liveness probes this peer answered ([`mesh_wg::answer_probe`]), as a WireGuard peer's
    /// kernel does.
    pub probes_answered: u64,
    /// Initiations from a node this peer was not told of, dropped unanswered, as WireGuard drops them
    /// from a key that is not one of its peers'.
    pub unknown_initiations: u32,
    /// Datagrams that were not WireGuard, not for this peer or rejected by boringtun, timer errors, and
    /// sends that failed; none of them stops the peer.
    pub errors: u32,
}

/// The swarm's peers, each a task of its own; dropping the swarm stops them all.
pub struct Swarm {
    peers: Vec<PeerHandle>,
}

struct PeerHandle {
    peer: SwarmPeer,
    stats: Arc<Mutex<PeerStats>>,
    orders: mpsc::UnboundedSender<Initiate>,
    task: Task<()>,
}

/// The order to take a node as a peer, and to start a handshake toward it if `start`; sent to the peer's
/// task, which owns its `Tunn`s.
#[derive(Debug, Clone, Copy)]
struct Initiate {
    key: [u8; 32],
    endpoint: SocketAddr,
    start: bool,
}

impl Swarm {
    /// Binds `n` peers on `ip`, at ports `first_port..first_port + n`, or at ports the system picks when
    /// `first_port` is 0 (see [`Swarm::peers`] for where they are), each with a fresh static key.
    ///
    /// The sockets are bound before this returns, in the calling thread's network namespace, so a caller
    /// that has entered a namespace leaves them there.
    ///
    /// # Errors
    /// When the ports do not fit below 65536, a socket cannot be bound, or no randomness is available.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn bind(ip: Ipv4Addr, first_port: u16, n: usize) -> anyhow::Result<Swarm> {
        let mut peers = Vec::with_capacity(n);
        for i in 0..n {
            let port = if first_port == 0 {
                0
            } else {
                u16::try_from(usize::from(first_port) + i).with_context(|| {
                    format!("{n} ports from {first_port} do not fit below 65536")
                })?
            };
            peers.push(PeerHandle::bind(SocketAddrV4::new(ip, port).into())?);
        }
        Ok(Swarm { peers })
    }

    pub fn peers(&self) -> Vec<SwarmPeer> {
        self.peers.iter().map(|p| p.peer).collect()
    }

    /// The join storm: every peer initiates a handshake to `key` at `endpoint` at once (see
    /// [`Swarm::initiate`]).
    pub fn initiate_all(&self, key: [u8; 32], endpoint: SocketAddr) {
        for peer in 0..self.peers.len() {
            self.initiate(peer, key, endpoint);
        }
    }

    /// Peer `peer` (its place in [`Swarm::peers`]) initiates a handshake to `key` at `endpoint`, with a
    /// new `Tunn` toward it or, if it already has one (the node initiated first), a forced new handshake;
    /// for a storm paced by when each peer learns of the newcomer rather than all at once.
    ///
    /// # Panics
    /// When there is no such peer.
    pub fn initiate(&self, peer: usize, key: [u8; 32], endpoint: SocketAddr) {
        self.order(peer, key, endpoint, true);
    }

    /// Peer `peer` takes the node `key` at `endpoint` as its peer without initiating: from now on it answers
    /// the node's initiations, which it drops until told of the node, as WireGuard does.
    ///
    /// # Panics
    /// When there is no such peer.
    pub fn configure(&self, peer: usize, key: [u8; 32], endpoint: SocketAddr) {
        self.order(peer, key, endpoint, false);
    }

    fn order(&self, peer: usize, key: [u8; 32], endpoint: SocketAddr, start: bool) {
        let handle = &self.peers[peer];
        if handle
            .orders
            .send(Initiate {
                key,
                endpoint,
                start,
            })
            .is_err()
        {
            // Its task is gone, which only a bug ends: let the stats show it never initiated.
            lock(&handle.stats).errors += 1;
        }
    }

    pub fn stats(&self) -> Vec<PeerStats> {
        self.peers.iter().map(|p| lock(&p.stats).clone()).collect()
    }

    /// Stops every peer and waits until their sockets are closed, so the ports are free on return
    /// (dropping the swarm stops them too, but without waiting).
    pub async fn shutdown(self) {
        for handle in self.peers {
            // Aborted is what a stopped peer reports; a panic there has already been printed.
            let _ = handle.task.stop().await;
        }
    }
}

impl PeerHandle {
    fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        // std binds here and now, in this thread's namespace, where tokio's bind would wait for a poll.
        let socket = std::net::UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
        socket.set_nonblocking(true)?;
        let endpoint = socket.local_addr()?;
        let socket = UdpSocket::from_std(socket)?;
        let secret = StaticSecret::from(random::<32>().context("read /dev/urandom")?);
        let public = PublicKey::from(&secret);
        let stats = Arc::new(Mutex::new(PeerStats::default()));
        let (orders, orders_rx) = mpsc::unbounded_channel();
        let peer = SimulatedPeer {
            socket,
            secret,
            public,
            remotes: Vec::new(),
            stats: Arc::clone(&stats),
            out: vec![0; MAX_DATAGRAM],
        };
        Ok(Self {
            peer: SwarmPeer {
                public_key: public.to_bytes(),
                endpoint,
            },
            stats,
            orders,
            task: Task::spawn("swarm peer", peer.run(orders_rx)),
        })
    }
}

/// One simulated peer, owned by its task.
struct SimulatedPeer {
    socket: UdpSocket,
    secret: StaticSecret,
    public: PublicKey,
    /// The nodes it has a `Tunn` toward; boringtun's index of `remotes[i]` is `i + 1` (0 is never used,
    /// so a zeroed index in a datagram finds nobody).
    remotes: Vec<Remote>,
    stats: Arc<Mutex<PeerStats>>,
    /// Where boringtun writes what is to be sent.
    out: Vec<u8>,
}

struct Remote {
    key: [u8; 32],
    tunn: Tunn,
    /// The last address an authenticated datagram came from: where timers send to, so a node that moves
    /// (or answers from behind a NAT) is followed, as WireGuard's endpoint roaming does.
    endpoint: SocketAddr,
}

impl SimulatedPeer {
    /// Serves the socket, the timers and the swarm's orders until the swarm is dropped.
    async fn run(mut self, mut orders: mpsc::UnboundedReceiver<Initiate>) {
        let mut timers = tokio::time::interval(TIMER_TICK);
        timers.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut datagram = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut datagram) => match received {
                    Ok((len, from)) => self.receive(&datagram[..len], from).await,
                    Err(_) => self.record(|s| s.errors += 1),
                },
                order = orders.recv() => match order {
                    Some(order) => self.initiate(order).await,
                    None => return,
                },
                _ = timers.tick() => self.tick().await,
            }
        }
    }

    async fn initiate(&mut self, order: Initiate) {
        let i = self.remote_for(order.key, order.endpoint);
        let remote = &mut self.remotes[i];
        remote.endpoint = order.endpoint;
        if !order.start {
            return;
        }
        // Forced, so that a handshake the node started first does not swallow the storm's.
        match remote.tunn.format_handshake_initiation(&mut self.out, true) {
            TunnResult::WriteToNetwork(packet) => {
                let at = Instant::now();
                if send(&self.socket, &self.stats, packet, order.endpoint).await {
                    self.record(|s| {
                        s.initiated_at.get_or_insert(at);
                    });
                }
            }
            TunnResult::Err(_) => self.record(|s| s.errors += 1),
            TunnResult::Done
            | TunnResult::WriteToTunnelV4(..)
            | TunnResult::WriteToTunnelV6(..) => {}
        }
    }

    async fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        let i = match self.route(datagram) {
            Routed::To(i) => i,
            Routed::Unknown => {
                self.record(|s| s.unknown_initiations += 1);
                return;
            }
            Routed::Invalid => {
                self.record(|s| s.errors += 1);
                return;
            }
        };
        let accepted = self.decapsulate(i, datagram, from).await;
        let remote = &mut self.remotes[i];
        if accepted {
            remote.endpoint = from;
        }
        let established = remote.tunn.time_since_last_handshake().is_some();
        let kind = message_type(datagram);
        self.record(|s| {
            if accepted && kind == Some(COOKIE_REPLY) {
                s.cookie_replies += 1;
            }
            if accepted && kind == Some(TRANSPORT_DATA) {
                s.data_received += 1;
            }
            if established {
                s.handshake_at.get_or_insert_with(Instant::now);
            }
        });
    }

    /// Which remote a datagram is for: an initiation names its sender only inside its encryption (a node
    /// this peer was not told of is unknown), the other messages name our index in their header.
    fn route(&self, datagram: &[u8]) -> Routed {
        if message_type(datagram) == Some(HANDSHAKE_INIT) {
            let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) else {
                return Routed::Invalid;
            };
            let Ok(half) = parse_handshake_anon(&self.secret, &self.public, &init) else {
                return Routed::Invalid;
            };
            return self
                .remotes
                .iter()
                .position(|r| r.key == half.peer_static_public)
                .map_or(Routed::Unknown, Routed::To);
        }
        self.route_by_index(datagram)
            .map_or(Routed::Invalid, Routed::To)
    }

    fn route_by_index(&self, datagram: &[u8]) -> Option<usize> {
        match message_type(datagram)? {
            // A response names its sender first, then us; the others name only us.
            HANDSHAKE_RESPONSE => self.remote_at(datagram.get(8..12)?),
            COOKIE_REPLY | TRANSPORT_DATA => self.remote_at(datagram.get(4..8)?),
            _ => None,
        }
    }

    /// The remote that a receiver index (as sent, little-endian) names.
    fn remote_at(&self, receiver: &[u8]) -> Option<usize> {
        let receiver = u32::from_le_bytes(receiver.try_into().ok()?);
        // boringtun's session indices are `index << 8 | n`.
        let i = usize::try_from((receiver >> 8).checked_sub(1)?).ok()?;
        (i < self.remotes.len()).then_some(i)
    }

    /// Feeds a datagram to the remote's `Tunn` and sends whatever it answers, then what it had queued
    /// (boringtun's contract: after a write to the network, call again with nothing until it is done).
    /// Whether boringtun accepted the datagram.
    async fn decapsulate(&mut self, i: usize, datagram: &[u8], from: SocketAddr) -> bool {
        let tunn = &mut self.remotes[i].tunn;
        let mut result = tunn.decapsulate(Some(from.ip()), datagram, &mut self.out);
        let accepted = !matches!(result, TunnResult::Err(_));
        let mut probe_answer = None;
        loop {
            match result {
                TunnResult::WriteToNetwork(packet) => {
                    send(&self.socket, &self.stats, packet, from).await;
                }
                TunnResult::Err(_) => {
                    lock(&self.stats).errors += 1;
                    break;
                }
                // An IP packet: the node's probe is answered, as a peer's kernel would; anything else is
                // for a tunnel the swarm does not have, counted as data by the caller, and dropped.
                TunnResult::WriteToTunnelV4(packet, _) => {
                    probe_answer = mesh_wg::answer_probe(packet);
                    break;
                }
                TunnResult::Done | TunnResult::WriteToTunnelV6(..) => break,
            }
            result = tunn.decapsulate(None, &[], &mut self.out);
        }
        if let Some(answer) = probe_answer
            && let TunnResult::WriteToNetwork(packet) = tunn.encapsulate(&answer, &mut self.out)
            && send(&self.socket, &self.stats, packet, from).await
        {
            lock(&self.stats).probes_answered += 1;
        }
        accepted
    }

    /// Runs every `Tunn`'s timers and sends what they ask: keepalives, retried initiations.
    async fn tick(&mut self) {
        for remote in &mut self.remotes {
            match remote.tunn.update_timers(&mut self.out) {
                TunnResult::WriteToNetwork(packet) => {
                    send(&self.socket, &self.stats, packet, remote.endpoint).await;
                }
                // A handshake that gave up (REKEY_ATTEMPT_TIME) reports this on every tick from then
                // on: a state that a `handshake_at` of `None` already shows, not an event to count.
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(_) => lock(&self.stats).errors += 1,
                TunnResult::Done
                | TunnResult::WriteToTunnelV4(..)
                | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
    }

    /// The index in `remotes` of the `Tunn` toward `key`, made now (with `endpoint`) if there is none.
    fn remote_for(&mut self, key: [u8; 32], endpoint: SocketAddr) -> usize {
        if let Some(i) = self.remotes.iter().position(|r| r.key == key) {
            return i;
        }
        let index = u32::try_from(self.remotes.len() + 1).expect("a peer has few remotes");
        self.remotes.push(Remote {
            key,
            tunn: Tunn::new(
                self.secret.clone(),
                PublicKey::from(key),
                None,
                Some(PERSISTENT_KEEPALIVE_SECS),
                index,
                // The peer is not under test: boringtun's own limiter per `Tunn` is enough.
                None,
            ),
            endpoint,
        });
        self.remotes.len() - 1
    }

    fn record(&self, update: impl FnOnce(&mut PeerStats)) {
        update(&mut lock(&self.stats));
    }
}

/// Where a received datagram goes.
enum Routed {
    To(usize),
    /// An initiation from a node the peer was not told of.
    Unknown,
    /// Not WireGuard, or not for any of this peer's remotes.
    Invalid,
}

/// Sends a datagram and counts it; a failure is counted too. Whether it was sent.
async fn send(socket: &UdpSocket, stats: &Mutex<PeerStats>, packet: &[u8], to: SocketAddr) -> bool {
    let sent = socket.send_to(packet, to).await.is_ok();
    let mut stats = lock(stats);
    match (sent, message_type(packet)) {
        (false, _) => stats.errors += 1,
        (true, Some(HANDSHAKE_INIT)) => stats.initiations_sent += 1,
        (true, Some(HANDSHAKE_RESPONSE)) => stats.responses_sent += 1,
        (true, _) => {}
    }
    sent
}

/// WireGuard's message type: the first four bytes, little-endian.
fn message_type(datagram: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(datagram.get(..4)?.try_into().ok()?))
}

/// Stats stay readable after a panic elsewhere: they are counters, never half-updated.
fn lock(stats: &Mutex<PeerStats>) -> std::sync::MutexGuard<'_, PeerStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a test waits for the swarm: a handshake on loopback takes milliseconds, and a retry
    /// would take REKEY_TIMEOUT (5 s), which is what these tests must not see.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// The node the swarm faces, written on boringtun alone (no swarm code), so the swarm is checked
    /// against a WireGuard implementation rather than against itself. It answers whatever arrives, but only
    /// while a test waits in [`Newcomer::serve_until`].
    struct Newcomer {
        socket: UdpSocket,
        secret: StaticSecret,
        /// A `Tunn` per swarm peer, with its key; boringtun's index of `tunns[i]` is `i + 1`.
        tunns: Vec<([u8; 32], Tunn)>,
    }

    impl Newcomer {
        async fn bind() -> Self {
            Self {
                socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind newcomer"),
                secret: StaticSecret::from(random::<32>().expect("random key")),
                tunns: Vec::new(),
            }
        }

        fn key(&self) -> [u8; 32] {
            PublicKey::from(&self.secret).to_bytes()
        }

        fn endpoint(&self) -> SocketAddr {
            self.socket.local_addr().expect("newcomer address")
        }

        async fn initiate(&mut self, peer: &SwarmPeer) {
            let i = self.tunn_for(peer.public_key);
            let mut out = [0u8; MAX_DATAGRAM];
            let TunnResult::WriteToNetwork(init) =
                self.tunns[i].1.format_handshake_initiation(&mut out, true)
            else {
                panic!("a forced initiation is always formatted");
            };
            self.socket
                .send_to(init, peer.endpoint)
                .await
                .expect("send initiation");
        }

        /// Answers the swarm until every peer's stats satisfy `done`, and returns them.
        ///
        /// # Panics
        /// When [`PATIENCE`] runs out first, with the stats.
        async fn serve_until(
            &mut self,
            swarm: &Swarm,
            done: impl Fn(&PeerStats) -> bool,
        ) -> Vec<PeerStats> {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            let mut datagram = [0u8; MAX_DATAGRAM];
            loop {
                let stats = swarm.stats();
                if stats.iter().all(&done) {
                    return stats;
                }
                let step = deadline.min(tokio::time::Instant::now() + Duration::from_millis(20));
                match tokio::time::timeout_at(step, self.socket.recv_from(&mut datagram)).await {
                    Ok(received) => {
                        let (len, from) = received.expect("newcomer receives");
                        self.answer(&datagram[..len], from).await;
                    }
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        panic!("the swarm did not get there within {PATIENCE:?}: {stats:#?}")
                    }
                    Err(_) => {}
                }
            }
        }

        async fn answer(&mut self, datagram: &[u8], from: SocketAddr) {
            let i = match Tunn::parse_incoming_packet(datagram).expect("the swarm sends WireGuard")
            {
                Packet::HandshakeInit(init) => {
                    let public = PublicKey::from(&self.secret);
                    let half = parse_handshake_anon(&self.secret, &public, &init)
                        .expect("the swarm's initiation is for the newcomer");
                    self.tunn_for(half.peer_static_public)
                }
                Packet::HandshakeResponse(p) => (p.receiver_idx >> 8) as usize - 1,
                Packet::PacketCookieReply(p) => (p.receiver_idx >> 8) as usize - 1,
                Packet::PacketData(p) => (p.receiver_idx >> 8) as usize - 1,
            };
            let tunn = &mut self.tunns[i].1;
            let mut out = [0u8; MAX_DATAGRAM];
            let mut result = tunn.decapsulate(Some(from.ip()), datagram, &mut out);
            while let TunnResult::WriteToNetwork(packet) = result {
                self.socket
                    .send_to(packet, from)
                    .await
                    .expect("newcomer sends");
                result = tunn.decapsulate(None, &[], &mut out);
            }
            assert!(
                !matches!(result, TunnResult::Err(_)),
                "boringtun rejects what the swarm sent: {result:?}"
            );
        }

        fn tunn_for(&mut self, key: [u8; 32]) -> usize {
            if let Some(i) = self.tunns.iter().position(|(k, _)| *k == key) {
                return i;
            }
            let index = self.tunns.len() as u32 + 1;
            let tunn = Tunn::new(
                self.secret.clone(),
                PublicKey::from(key),
                None,
                None,
                index,
                None,
            );
            self.tunns.push((key, tunn));
            self.tunns.len() - 1
        }
    }

    async fn swarm_of(n: usize) -> Swarm {
        Swarm::bind(Ipv4Addr::LOCALHOST, 0, n)
            .await
            .expect("bind swarm")
    }

    #[tokio::test]
    async fn join_storm_completes_at_first_try_without_cookies() {
        let swarm = swarm_of(3).await;
        let mut newcomer = Newcomer::bind().await;

        swarm.initiate_all(newcomer.key(), newcomer.endpoint());
        let stats = newcomer
            .serve_until(&swarm, |s| s.handshake_at.is_some())
            .await;

        for s in &stats {
            let (initiated, established) = (s.initiated_at.unwrap(), s.handshake_at.unwrap());
            assert!(initiated <= established, "{s:?}");
            assert_eq!(s.initiations_sent, 1, "no retry: {s:?}");
            assert_eq!(s.cookie_replies, 0, "no load: {s:?}");
            assert_eq!(s.responses_sent, 0, "{s:?}");
            assert_eq!(s.errors, 0, "{s:?}");
        }
        swarm.shutdown().await;
    }

    #[tokio::test]
    async fn peers_answer_the_initiations_of_a_node_they_were_told_of() {
        let swarm = swarm_of(3).await;
        let mut newcomer = Newcomer::bind().await;

        for (i, peer) in swarm.peers().iter().enumerate() {
            swarm.configure(i, newcomer.key(), newcomer.endpoint());
            newcomer.initiate(peer).await;
        }
        // The newcomer's keepalive after the response is what confirms a responder's session.
        let stats = newcomer
            .serve_until(&swarm, |s| s.handshake_at.is_some())
            .await;

        for s in &stats {
            assert_eq!(s.responses_sent, 1, "{s:?}");
            assert_eq!(s.initiations_sent, 0, "{s:?}");
            assert!(s.initiated_at.is_none(), "{s:?}");
            assert!(s.data_received >= 1, "the keepalive: {s:?}");
            assert_eq!(s.errors, 0, "{s:?}");
        }
        swarm.shutdown().await;
    }

    #[tokio::test]
    async fn garbage_is_counted_and_the_peer_still_handshakes() {
        let swarm = swarm_of(1).await;
        let peer = swarm.peers()[0];
        let mut newcomer = Newcomer::bind().await;

        let unknown_index = 0x00ab_cd01_u32;
        let mut data_for_nobody = [0u8; 32];
        data_for_nobody[..4].copy_from_slice(&TRANSPORT_DATA.to_le_bytes());
        data_for_nobody[4..8].copy_from_slice(&unknown_index.to_le_bytes());
        let mut initiation_for_nobody = random::<148>().expect("random bytes");
        initiation_for_nobody[..4].copy_from_slice(&HANDSHAKE_INIT.to_le_bytes());
        let garbage: [&[u8]; 3] = [
            &random::<7>().expect("random bytes"),
            &data_for_nobody,
            &initiation_for_nobody,
        ];
        for datagram in garbage {
            newcomer
                .socket
                .send_to(datagram, peer.endpoint)
                .await
                .expect("send garbage");
        }
        newcomer.serve_until(&swarm, |s| s.errors == 3).await;

        swarm.initiate_all(newcomer.key(), newcomer.endpoint());
        let stats = newcomer
            .serve_until(&swarm, |s| s.handshake_at.is_some())
            .await;

        assert_eq!(stats[0].initiations_sent, 1, "{:?}", stats[0]);
        assert_eq!(
            stats[0].errors, 3,
            "nothing more went wrong: {:?}",
            stats[0]
        );
        swarm.shutdown().await;
    }

    #[tokio::test]
    async fn an_unknown_nodes_initiation_is_dropped_until_the_peer_is_told_of_it() {
        let swarm = swarm_of(1).await;
        let peer = swarm.peers()[0];
        let mut newcomer = Newcomer::bind().await;

        newcomer.initiate(&peer).await;
        let stats = newcomer
            .serve_until(&swarm, |s| s.unknown_initiations == 1)
            .await;
        assert_eq!(stats[0].responses_sent, 0, "unanswered: {:?}", stats[0]);
        assert!(stats[0].handshake_at.is_none(), "{:?}", stats[0]);

        swarm.configure(0, newcomer.key(), newcomer.endpoint());
        // The order reaches the peer's task before the next datagram does only if it is sent first: wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
        newcomer.initiate(&peer).await;
        let stats = newcomer
            .serve_until(&swarm, |s| s.handshake_at.is_some())
            .await;
        assert_eq!(stats[0].responses_sent, 1, "{:?}", stats[0]);
        assert_eq!(stats[0].unknown_initiations, 1, "{:?}", stats[0]);
        assert_eq!(stats[0].errors, 0, "{:?}", stats[0]);
        swarm.shutdown().await;
    }

    #[tokio::test]
    async fn contiguous_ports_are_bound_as_asked() {
        assert!(
            Swarm::bind(Ipv4Addr::LOCALHOST, 65_535, 2).await.is_err(),
            "65536 is no port"
        );

        // A free base: the system's pick for one socket, released, with its neighbours free too unless
        // another test took one meanwhile; then another pick.
        for _ in 0..5 {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe port");
            let base = probe
                .local_addr()
                .expect("probe address")
                .port()
                .min(65_000);
            drop(probe);
            if let Ok(swarm) = Swarm::bind(Ipv4Addr::LOCALHOST, base, 3).await {
                let ports: Vec<u16> = swarm.peers().iter().map(|p| p.endpoint.port()).collect();
                assert_eq!(ports, [base, base + 1, base + 2]);
                return;
            }
        }
        panic!("no three free ports in a row in five tries");
    }
}
