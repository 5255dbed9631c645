//! The userspace device: a TUN, a UDP socket and one boringtun `Tunn` per peer, driven by three
//! tokio loops (TUN→UDP, UDP→TUN, timers) plus the UAPI server.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::instrument;

use super::allowed_ips::AllowedIps;
use super::config::{DeviceConfig, PeerConfig, PeerStatus};
use super::netlink::Netlink;
use super::peer::{NoiseKeys, Peer};
use super::task::Task;
use super::uapi::{DeviceSnapshot, PeerSnapshot, PeerUpdate, SetRequest};
use super::{Error, uapi_server};
use wg_key::{Key, PrivateKey};

/// How often boringtun's timers run (it wants 100-250 ms).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// UDP socket buffers; the kernel default (~208 KiB) caps throughput (NetBird #6021).
const SOCKET_BUFFER_BYTES: usize = 7 << 20;
/// Handshakes per second before cookies are demanded (boringtun device's value).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Largest IP packet plus WireGuard overhead, with room to spare.
const BUF_LEN: usize = 65_536 + 256;

/// A running userspace WireGuard interface.
///
/// Dropping it aborts every loop (the TUN then disappears when its file descriptor closes) and
/// removes the UAPI socket; [`Device::shutdown`] does the same and waits for it.
pub struct Device {
    shared: Arc<Shared>,
    netlink: Netlink,
    link_index: u32,
    uapi_path: PathBuf,
    tasks: Vec<Task>,
}

/// State shared by the loops, the UAPI server and the API.
pub(crate) struct Shared {
    pub(crate) ifname: String,
    tun: tun_rs::AsyncDevice,
    state: RwLock<State>,
    /// The current UDP socket; replaced when the listen port changes.
    udp: watch::Sender<Arc<UdpSocket>>,
}

struct State {
    private_key: PrivateKey,
    public_key: x25519::PublicKey,
    keys: NoiseKeys,
    listen_port: u16,
    fwmark: u32,
    peers: HashMap<Key, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    allowed_ips: AllowedIps<Key>,
    next_index: u32,
}

enum Route {
    Peer(Arc<Peer>),
    Reply(Vec<u8>),
    Drop,
}

impl Device {
    /// Creates the TUN `config.ifname`, configures it over netlink (MTU, address and prefix
    /// route, up), binds the UDP socket and the UAPI socket, and starts the loops. Must run
    /// inside a tokio runtime; everything is created in the calling thread's network namespace.
    ///
    /// # Errors
    /// [`Error::IfNameTooLong`]/[`Error::InvalidIfName`]/[`Error::InvalidConfig`] for a bad
    /// config, [`Error::InterfaceExists`] when the name is taken, [`Error::TunUnavailable`]
    /// without CAP_NET_ADMIN or `/dev/net/tun`, and [`Error::Netlink`], [`Error::Udp`],
    /// [`Error::Uapi`] when a setup step fails (the TUN is removed again in that case).
    #[instrument(skip_all, fields(ifname = %config.ifname))]
    pub async fn create(config: DeviceConfig) -> Result<Self, Error> {
        config.validate()?;
        let ifname = config.ifname.clone();
        if !Path::new("/dev/net/tun").exists() {
            return Err(Error::TunUnavailable {
                ifname,
                syscall: "stat /dev/net/tun",
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        let netlink = Netlink::open(&ifname)?;
        if netlink.link_index(&ifname).await?.is_some() {
            return Err(Error::InterfaceExists {
                ifname,
                what: "a link with this name exists in this network namespace",
            });
        }
        let uapi_path = config.uapi_dir.join(format!("{ifname}.sock"));
        let uapi = uapi_server::claim(&uapi_path, &ifname).await?;

        // From here on, an early return drops `tun`, which deletes the interface again.
        let tun = create_tun(&ifname)?;
        let link_index = netlink
            .link_index(&ifname)
            .await?
            .ok_or_else(|| Error::Tun {
                ifname: ifname.clone(),
                syscall: "RTM_GETLINK after TUNSETIFF",
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
        netlink
            .configure(link_index, config.mtu, config.address, config.prefix_len)
            .await?;
        let udp = bind_udp(&ifname, config.listen_port, 0)?;
        let listen_port = udp.local_addr().map(|a| a.port()).unwrap_or_default();

        let secret = config.private_key.to_secret();
        let public_key = x25519::PublicKey::from(&secret);
        let keys = NoiseKeys {
            rate_limiter: Arc::new(RateLimiter::new(&public_key, HANDSHAKE_RATE_LIMIT)),
            secret,
        };
        let (udp_tx, _) = watch::channel(Arc::new(udp));
        let shared = Arc::new(Shared {
            ifname: ifname.clone(),
            tun,
            state: RwLock::new(State {
                private_key: config.private_key.clone(),
                public_key,
                keys,
                listen_port,
                fwmark: 0,
                peers: HashMap::new(),
                by_index: HashMap::new(),
                allowed_ips: AllowedIps::default(),
                next_index: 1,
            }),
            udp: udp_tx,
        });
        let span = || tracing::info_span!("wg", ifname = %ifname);
        let tasks = vec![
            Task::spawn("tun-to-udp", span(), tun_loop(shared.clone())),
            Task::spawn("udp-to-tun", span(), udp_loop(shared.clone())),
            Task::spawn("timers", span(), timer_loop(shared.clone())),
            Task::spawn("uapi", span(), uapi_server::serve(uapi, shared.clone())),
        ];
        tracing::info!(listen_port, address = %config.address, prefix_len = config.prefix_len, mtu = config.mtu, "device up");
        Ok(Self {
            shared,
            netlink,
            link_index,
            uapi_path,
            tasks,
        })
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.shared.ifname
    }

    /// This device's public key.
    pub fn public_key(&self) -> Key {
        Key::from_bytes(self.shared.read().public_key.to_bytes())
    }

    /// The UDP port the device listens on (the kernel's pick when configured with 0).
    pub fn listen_port(&self) -> u16 {
        self.shared.read().listen_port
    }

    /// Path of the UAPI socket (`wg show <ifname>` talks to it).
    pub fn uapi_path(&self) -> &Path {
        &self.uapi_path
    }

    /// Adds the peer, or updates it in place: changing the endpoint, allowed IPs or keepalive
    /// keeps a live session. (A different public key is a different peer.)
    ///
    /// # Errors
    /// [`Error::PeerIsSelf`] for the device's own public key.
    #[instrument(skip_all, fields(ifname = %self.shared.ifname, peer = ?peer.public_key))]
    pub fn set_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        let update = PeerUpdate {
            endpoint: peer.endpoint,
            persistent_keepalive: Some(peer.persistent_keepalive.unwrap_or(0)),
            replace_allowed_ips: true,
            allowed_ips: peer.allowed_ips,
            ..PeerUpdate::new(peer.public_key)
        };
        let mut st = self.shared.write();
        if update.public_key == Key::from_bytes(st.public_key.to_bytes()) {
            return Err(Error::PeerIsSelf {
                peer: update.public_key,
            });
        }
        st.upsert_peer(&update);
        Ok(())
    }

    /// Removes the peer and its allowed IPs. Returns whether it existed.
    #[instrument(skip_all, fields(ifname = %self.shared.ifname, peer = ?public_key))]
    pub fn remove_peer(&self, public_key: &Key) -> bool {
        self.shared.write().remove_peer(public_key)
    }

    /// Status of every peer, ordered by public key.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.shared
            .peer_snapshots()
            .into_iter()
            .map(|p| p.status)
            .collect()
    }

    /// Stops every loop, deletes the interface and removes the UAPI socket.
    ///
    /// # Errors
    /// [`Error::Netlink`] if deleting the link failed for another reason than it being gone.
    #[instrument(skip_all, fields(ifname = %self.shared.ifname))]
    pub async fn shutdown(mut self) -> Result<(), Error> {
        for task in std::mem::take(&mut self.tasks) {
            task.stop().await;
        }
        // Deleting the link while we still hold the TUN fd is fine; closing the fd (when `self`
        // drops) would delete the non-persistent TUN as well.
        // The UAPI task is stopped, so its socket is gone.
        let result = self.netlink.delete_link(self.link_index).await;
        tracing::info!("device down");
        result
    }
}

fn create_tun(ifname: &str) -> Result<tun_rs::AsyncDevice, Error> {
    tun_rs::DeviceBuilder::new()
        .name(ifname)
        // MTU, address and link state go through netlink, not tun-rs's ioctls.
        .inherit_enable_state()
        .build_async()
        .map_err(|source| match source.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EPERM | Errno::EACCES | Errno::ENOENT | Errno::ENXIO | Errno::ENODEV) => {
                Error::TunUnavailable {
                    ifname: ifname.to_owned(),
                    syscall: "open /dev/net/tun + ioctl TUNSETIFF",
                    source,
                }
            }
            Some(Errno::EBUSY | Errno::EEXIST) => Error::InterfaceExists {
                ifname: ifname.to_owned(),
                what: "TUNSETIFF says the device is busy",
            },
            _ => Error::Tun {
                ifname: ifname.to_owned(),
                syscall: "ioctl TUNSETIFF",
                source,
            },
        })
}

fn bind_udp(ifname: &str, port: u16, fwmark: u32) -> Result<UdpSocket, Error> {
    let err = |syscall: &'static str| {
        move |source: io::Error| Error::Udp {
            ifname: ifname.to_owned(),
            port,
            syscall,
            source,
        }
    };
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(err("bind"))?;
    sock.set_nonblocking(true)
        .map_err(err("fcntl O_NONBLOCK"))?;
    // The *Force variants pass rmem_max/wmem_max (needs CAP_NET_ADMIN); fall back to the capped ones.
    if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES)
            .map_err(|e| err("setsockopt SO_RCVBUF")(e.into()))?;
    }
    if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER_BYTES)
            .map_err(|e| err("setsockopt SO_SNDBUF")(e.into()))?;
    }
    if fwmark != 0 {
        setsockopt(&sock, sockopt::Mark, &fwmark)
            .map_err(|e| err("setsockopt SO_MARK")(e.into()))?;
    }
    UdpSocket::from_std(sock).map_err(err("register with tokio"))
}

/// An IPv4-mapped IPv6 source is the IPv4 address it carries.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

async fn send(sock: &UdpSocket, packet: &[u8], to: SocketAddr) {
    if let Err(err) = sock.send_to(packet, to).await {
        tracing::debug!(%to, error = %err, "UDP send failed");
    }
}

impl uapi_server::Uapi for Shared {
    fn get(&self) -> String {
        super::uapi::render_get(&self.snapshot())
    }

    fn set(&self, request: SetRequest) -> Result<(), Error> {
        self.apply_set(request)
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn socket(&self) -> Arc<UdpSocket> {
        self.udp.borrow().clone()
    }

    fn peer_for(&self, dst: Ipv4Addr) -> Option<Arc<Peer>> {
        let st = self.read();
        let key = st.allowed_ips.lookup(dst)?;
        st.peers.get(key).cloned()
    }

    fn route_datagram(&self, datagram: &[u8], from: SocketAddr) -> Route {
        let st = self.read();
        let mut cookie = [0u8; 64];
        let packet =
            match st
                .keys
                .rate_limiter
                .verify_packet(Some(from.ip()), datagram, &mut cookie)
            {
                Ok(packet) => packet,
                Err(TunnResult::WriteToNetwork(reply)) => return Route::Reply(reply.to_vec()),
                Err(_) => return Route::Drop,
            };
        let peer = match packet {
            Packet::HandshakeInit(init) => {
                match parse_handshake_anon(&st.keys.secret, &st.public_key, &init) {
                    Ok(half) => st.peers.get(&Key::from_bytes(half.peer_static_public)),
                    Err(err) => {
                        tracing::debug!(%from, error = ?err, "handshake initiation not for us");
                        None
                    }
                }
            }
            Packet::HandshakeResponse(p) => st.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => st.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketData(p) => st.by_index.get(&(p.receiver_idx >> 8)),
        };
        match peer {
            Some(peer) => Route::Peer(peer.clone()),
            None => {
                tracing::trace!(%from, "datagram for no known peer");
                Route::Drop
            }
        }
    }

    /// Cryptokey routing check on receive: the inner source must be one of the peer's IPs.
    fn source_allowed(&self, peer: &Peer, src: Ipv4Addr) -> bool {
        self.read().allowed_ips.lookup(src) == Some(&peer.public_key)
    }

    async fn handle_datagram(
        &self,
        sock: &UdpSocket,
        datagram: &[u8],
        from: SocketAddr,
        dst: &mut [u8],
    ) {
        let peer = match self.route_datagram(datagram, from) {
            Route::Peer(peer) => peer,
            Route::Reply(cookie) => {
                send(sock, &cookie, from).await;
                return;
            }
            Route::Drop => return,
        };
        match peer.decapsulate(from, datagram, dst) {
            TunnResult::WriteToNetwork(out) => {
                send(sock, out, from).await;
                // Packets queued behind the handshake go out now.
                loop {
                    match peer.flush_queued(dst) {
                        (Some(to), TunnResult::WriteToNetwork(out)) => send(sock, out, to).await,
                        (None, TunnResult::WriteToNetwork(_)) => continue,
                        _ => break,
                    }
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                if self.source_allowed(&peer, src) {
                    // A failed TUN write loses one packet (as a full queue would); not fatal.
                    if let Err(err) = self.tun.send(packet).await {
                        tracing::debug!(error = %err, "TUN write failed");
                    }
                } else {
                    tracing::debug!(peer = ?peer.public_key, %src, "inner source not in the peer's allowed IPs; dropped");
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                tracing::trace!(peer = ?peer.public_key, "IPv6 inner packet dropped (IPv4-only overlay)");
            }
            TunnResult::Done => {}
            TunnResult::Err(err) => {
                tracing::debug!(peer = ?peer.public_key, %from, error = ?err, "datagram rejected");
            }
        }
    }

    pub(crate) fn peer_snapshots(&self) -> Vec<PeerSnapshot> {
        let st = self.read();
        let mut out: Vec<PeerSnapshot> = st
            .peers
            .values()
            .map(|peer| PeerSnapshot {
                status: peer.status(st.allowed_ips.prefixes_of(&peer.public_key)),
                preshared_key: peer.preshared_key(),
            })
            .collect();
        out.sort_by_key(|p| p.status.public_key);
        out
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
            let sock = bind_udp(&self.ifname, port, st.fwmark)?;
            st.listen_port = sock.local_addr().map(|a| a.port()).unwrap_or(port);
            tracing::info!(listen_port = st.listen_port, "rebound UDP socket");
            self.udp.send_replace(Arc::new(sock));
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
    fn set_private_key(&mut self, private_key: PrivateKey) {
        let secret = private_key.to_secret();
        self.public_key = x25519::PublicKey::from(&secret);
        self.keys = NoiseKeys {
            rate_limiter: Arc::new(RateLimiter::new(&self.public_key, HANDSHAKE_RATE_LIMIT)),
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

    fn allocate_index(&mut self) -> u32 {
        loop {
            // boringtun shifts the index left by 8 bits, so it must fit in 24.
            let index = self.next_index & 0x00ff_ffff;
            self.next_index = self.next_index.wrapping_add(1);
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    fn upsert_peer(&mut self, update: &PeerUpdate) {
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
                let peer = Arc::new(Peer::new(key, index, &self.keys, psk));
                self.peers.insert(key, peer.clone());
                self.by_index.insert(index, peer.clone());
                tracing::info!(peer = ?peer.public_key, "peer added");
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
        }
        for net in &update.allowed_ips {
            if let Some(prev) = self.allowed_ips.insert(*net, key)
                && prev != key
            {
                tracing::info!(%net, from = ?prev, to = ?peer.public_key, "allowed IP moved");
            }
        }
        if let Some(keepalive) = update.persistent_keepalive {
            peer.set_keepalive(keepalive);
        }
        tracing::debug!(peer = ?peer.public_key, endpoint = ?update.endpoint, "peer updated");
    }

    fn remove_peer(&mut self, key: &Key) -> bool {
        let Some(peer) = self.peers.remove(key) else {
            return false;
        };
        self.by_index.remove(&peer.index);
        self.allowed_ips.remove_value(key);
        tracing::info!(peer = ?peer.public_key, "peer removed");
        true
    }
}

async fn tun_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut src = vec![0u8; BUF_LEN];
    let mut dst = vec![0u8; BUF_LEN];
    loop {
        let n = shared
            .tun
            .recv(&mut src)
            .await
            .map_err(|source| Error::Tun {
                ifname: shared.ifname.clone(),
                syscall: "read",
                source,
            })?;
        let packet = &src[..n];
        let Some(IpAddr::V4(dst_ip)) = Tunn::dst_address(packet) else {
            continue; // IPv6 (e.g. router solicitations) or garbage: not routed.
        };
        let Some(peer) = shared.peer_for(dst_ip) else {
            tracing::trace!(%dst_ip, "no peer for destination");
            continue;
        };
        match peer.encapsulate(packet, &mut dst) {
            (Some(to), TunnResult::WriteToNetwork(out)) => send(&shared.socket(), out, to).await,
            (None, TunnResult::WriteToNetwork(_)) => {
                tracing::debug!(peer = ?peer.public_key, "peer has no endpoint; packet queued or dropped");
            }
            (_, TunnResult::Err(err)) => {
                tracing::debug!(peer = ?peer.public_key, error = ?err, "encapsulate failed");
            }
            _ => {}
        }
    }
}

async fn udp_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut socket_rx = shared.udp.subscribe();
    let mut src = vec![0u8; BUF_LEN];
    let mut dst = vec![0u8; BUF_LEN];
    loop {
        let sock = socket_rx.borrow_and_update().clone();
        let received = tokio::select! {
            r = sock.recv_from(&mut src) => r,
            changed = socket_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        match received {
            Ok((n, from)) => {
                shared
                    .handle_datagram(&sock, &src[..n], canonical(from), &mut dst)
                    .await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn timer_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dst = vec![0u8; BUF_LEN];
    let mut last_reset = Instant::now();
    loop {
        tick.tick().await;
        let (peers, limiter) = {
            let st = shared.read();
            let peers: Vec<Arc<Peer>> = st.peers.values().cloned().collect();
            (peers, st.keys.rate_limiter.clone())
        };
        if last_reset.elapsed() >= Duration::from_secs(1) {
            limiter.reset_count();
            last_reset = Instant::now();
        }
        let sock = shared.socket();
        for peer in peers {
            if let Some((to, out)) = peer.tick(&mut dst) {
                send(&sock, &out, to).await;
            }
        }
    }
}
