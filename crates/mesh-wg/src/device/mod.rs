//! The userspace device: a TUN, a UDP socket and one boringtun `Tunn` per peer, driven by a packet thread
//! (UDP→TUN and TUN→UDP; [`packets`], [`threads`]) and tokio tasks for the timers, relays, discovery and the
//! UAPI ([`loops`]), over the state they share with the UAPI server and the API ([`shared`]).

mod batch;
mod codel;
mod discovery;
mod flows;
mod loops;
mod outbound;
mod packets;
mod peer_relay;
mod relay_dialing;
mod relay_server;
mod schedule;
mod shared;
mod spare;
mod threads;
mod tun;
mod udp;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use nix::errno::Errno;
use tokio::sync::{mpsc, watch};
use tracing::instrument;

use super::allowed_ips::AllowedIps;
use super::config::{DeviceConfig, NatStatus, PeerConfig, PeerStatus};
use super::netlink::{Netlink, NetworkChanges};
use super::peer::NoiseKeys;
use super::pmtu::PathCheck;
use super::task::Task;
use super::uapi::PeerUpdate;
use super::{Error, uapi_server};
use discovery::{ANSWERS, discovery_loop};
use loops::{relay_loop, timer_loop};
use mesh_relay::Inbound;
use relay_dialing::RelayDialing;
pub use relay_server::PeerRelayStatus;
use shared::{Shared, State};
use threads::{PacketThreads, Stop, Waker};
use wg_key::Key;

/// How often boringtun's timers run (it wants 100-250 ms).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// UDP socket buffers; the kernel default (~208 KiB) caps throughput (NetBird #6021).
const SOCKET_BUFFER_BYTES: usize = 7 << 20;
/// Handshakes per second before cookies are demanded, at the least (boringtun device's value).
const HANDSHAKE_RATE_LIMIT_MIN: u64 = 100;

/// Handshake messages a second before the device is under load and demands cookies, for an overlay of
/// `prefix_len`: a node that joins gets an initiation and a response from every other seat at once (both
/// sides initiate), and a cookie makes the sender wait WireGuard's 5 s retry. With boringtun's fixed 100, a
/// join at 100 nodes (198 messages in 0.1 s) left half the mesh without a tunnel for 5 s. Twice that burst
/// keeps room for rekeys; a flood beyond it still meets cookies, as Linux's does beyond its queue.
fn handshake_rate_limit(prefix_len: u8) -> u64 {
    let seats = 1u64
        .checked_shl(32u32.saturating_sub(u32::from(prefix_len)).min(16))
        .unwrap_or(u64::MAX);
    seats.saturating_mul(4).max(HANDSHAKE_RATE_LIMIT_MIN)
}
/// The packet thread's name, as `top -H` and `perf` show it.
const PACKET_THREAD: &str = "wg-packets";

/// The largest IP packet.
const MAX_PACKET: usize = 65_535;
/// Largest IP packet plus WireGuard overhead, with room to spare.
const BUF_LEN: usize = 65_536 + 256;
/// Relayed datagrams waiting for the device.
const RELAY_INBOUND: usize = 1024;

/// A running userspace WireGuard interface.
///
/// Dropping it stops every loop and thread (the TUN then disappears when its file descriptor closes)
/// and removes the UAPI socket; [`Device::shutdown`] does the same and waits for it.
pub struct Device {
    shared: Arc<Shared>,
    netlink: Netlink,
    link_index: u32,
    uapi_path: PathBuf,
    tasks: Vec<Task>,
    threads: PacketThreads,
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
        let netlink = name_is_free(&ifname).await?;
        let uapi_path = config.uapi_dir.join(format!("{ifname}.sock"));
        let uapi = uapi_server::claim(&uapi_path, &ifname).await?;

        // From here on, an early return drops `tun`, which deletes the interface again.
        let tun = create_tun(&ifname, config.offload.tun)?;
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
        if tun.tcp_gso()
            && let Err(e) = netlink
                .cap_segments(link_index, tun::MAX_SEGMENTS as u32)
                .await
        {
            tracing::warn!(error = %e, max = tun::MAX_SEGMENTS, "the kernel would not cap the interface's super-packets at this many segments: a larger one (a UDP GSO send of small datagrams) is lost when the batch it is read into cannot split it");
        }
        let udp = udp::Udp::bind(&ifname, config.listen_port, 0, config.offload.udp)?;
        let listen_port = udp.local_addr().map(|a| a.port()).unwrap_or_default();

        let secret = config.private_key.to_secret();
        let public_key = x25519::PublicKey::from(&secret);
        let own_key = Key::from_bytes(public_key.to_bytes());
        let handshake_limit = handshake_rate_limit(config.prefix_len);
        let keys = NoiseKeys {
            rate_limiter: Arc::new(RateLimiter::new(&public_key, handshake_limit)),
            secret,
        };
        let (udp_tx, _) = watch::channel(Arc::new(udp));
        let packets_waker = Waker::new().map(Arc::new).map_err(|source| Error::Thread {
            name: PACKET_THREAD,
            source,
        })?;
        let (relay, relay_rx) = match config.relay_dialer {
            Some(dialer) => {
                let (inbound, rx) = mpsc::channel(RELAY_INBOUND);
                (Some(RelayDialing::new(dialer, inbound)), Some(rx))
            }
            None => (None, None),
        };
        let (stun_answers, answers_rx) = mpsc::channel(ANSWERS);
        let overlay =
            ipnetwork::Ipv4Network::new(config.address, config.prefix_len).map_err(|_| {
                Error::InvalidConfig {
                    what: "overlay prefix",
                    value: format!("{}/{}", config.address, config.prefix_len),
                }
            })?;
        let shared = Arc::new(Shared {
            ifname: ifname.clone(),
            tun,
            state: RwLock::new(State {
                private_key: config.private_key.clone(),
                public_key,
                keys,
                handshake_limit,
                listen_port,
                fwmark: 0,
                peers: HashMap::new(),
                generation: 0,
                by_index: HashMap::new(),
                allowed_ips: AllowedIps::default(),
                next_index: 1,
                liveness: config.liveness,
                policy_exempt_udp: config.policy_exempt_udp.clone(),
            }),
            udp: udp_tx,
            packets_waker: packets_waker.clone(),
            relay,
            udp_offload: config.offload.udp,
            unknown_udp: 0.into(),
            unknown_relay: 0.into(),
            policy_dropped: Default::default(),
            address: config.address,
            overlay,
            stun_answers,
            discovered: Mutex::default(),
            peer_relay: (config.peer_relay)
                .map(|c| Mutex::new(relay_server::Server::new(own_key, c))),
            relayed_in: RwLock::default(),
            relay_malformed: 0.into(),
            watching: RwLock::new(Arc::new(crate::Watching::All)),
        });
        let span = || tracing::info_span!("wg", ifname = %ifname);
        let stop = Arc::new(Stop::default());
        let mut threads = PacketThreads::new(stop.clone());
        {
            let (shared, stop, waker) = (shared.clone(), stop.clone(), packets_waker.clone());
            let mtu = config.mtu;
            threads.spawn(PACKET_THREAD, span(), packets_waker, move || {
                if let Err(e) = threads::set_own_nice(threads::PACKET_NICE) {
                    tracing::info!(error = %e, nice = threads::PACKET_NICE, "the packet thread keeps the default priority (lowering its nice value needs CAP_SYS_NICE)");
                }
                packets::packet_loop(&shared, mtu, &waker, &stop)
            })?;
        }
        let mut tasks = vec![
            Task::spawn("timers", span(), timer_loop(shared.clone())),
            Task::spawn("uapi", span(), uapi_server::serve(uapi, shared.clone())),
            Task::spawn(
                "discovery",
                span(),
                discovery_loop(
                    shared.clone(),
                    config.stun_servers.clone(),
                    answers_rx,
                    NetworkChanges::watch(&ifname)?,
                ),
            ),
            Task::spawn("path-mtu", span(), {
                let shared = shared.clone();
                crate::pmtu::run(
                    PathCheck::new(Netlink::open(&ifname)?, config.mtu),
                    move || shared.udp_endpoints(),
                )
            }),
        ];
        if let Some(rx) = relay_rx {
            tasks.push(Task::spawn(
                "relay-to-tun",
                span(),
                relay_loop(shared.clone(), rx),
            ));
        }
        let (tun_offload, udp_gso) = (shared.tun.tcp_gso(), shared.socket().max_gso_segments() > 1);
        tracing::info!(listen_port, address = %config.address, prefix_len = config.prefix_len, mtu = config.mtu, tun_offload, udp_gso, "device up");
        Ok(Self {
            shared,
            netlink,
            link_index,
            uapi_path,
            tasks,
            threads,
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
        if let Some(p) = st.peers.get(&update.public_key) {
            p.set_relay(peer.relay);
            p.set_reach(peer.reach);
        }
        Ok(())
    }

    /// Where this node's relay endpoint hands the datagrams it accepts: `None` when the device was created
    /// without a relay dialler.
    pub fn relay_inbound(&self) -> Option<mpsc::Sender<Inbound>> {
        self.shared.relay.as_ref().map(|r| r.inbound.clone())
    }

    /// Peers' packets the grants between seats dropped, by why, since the device was made.
    pub fn policy_dropped(&self) -> mesh_policy::filter::DropCounts {
        self.shared.policy_dropped()
    }

    /// The device as a peer relay: whether it offers, why, and its counters; `None` when it was made without
    /// one ([`DeviceConfig::peer_relay`]).
    pub fn peer_relay(&self) -> Option<PeerRelayStatus> {
        self.shared.peer_relay_status()
    }

    /// Which peers something watches, besides those that carry traffic: they are held to the peer timeout
    /// and the others to the idle bound ([`crate::Watching`]). All of them until told otherwise.
    pub fn set_watching(&self, watching: crate::Watching) {
        let mut current = (self.shared.watching.write()).unwrap_or_else(|e| e.into_inner());
        if **current == watching {
            return;
        }
        *current = Arc::new(watching);
        drop(current);
        // A peer that becomes watched is probed at once, quiet or not.
        for peer in self.shared.read().peers.values() {
            peer.touch();
        }
    }

    /// Datagrams dropped because no peer of this device matched them (strangers' traffic): over UDP, and
    /// through the relay.
    pub fn unknown_datagrams(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.unknown_udp.load(Relaxed),
            self.shared.unknown_relay.load(Relaxed),
        )
    }

    /// What the device knows of its NAT, and the candidates it publishes to its peers.
    pub fn nat(&self) -> NatStatus {
        self.shared.discovered(|d| NatStatus {
            report: d.report.clone(),
            candidates: d.own.candidates.clone(),
            unanswered_since: d.unanswered_since,
        })
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

    /// Status of the peers among `keys`, ordered by public key.
    pub fn peers_of(&self, keys: &[Key]) -> Vec<PeerStatus> {
        self.shared
            .peer_snapshots_of(keys)
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
        // Each thread is woken from its wait and ends within one batch.
        self.threads.stop();
        // Deleting the link while we still hold the TUN fd is fine; closing the fd (when `self`
        // drops) would delete the non-persistent TUN as well.
        // The UAPI task is stopped, so its socket is gone.
        let result = self.netlink.delete_link(self.link_index).await;
        tracing::info!("device down");
        result
    }
}

/// A netlink socket for the device `ifname`, once a TUN can be made here and no link has the name.
async fn name_is_free(ifname: &str) -> Result<Netlink, Error> {
    if !Path::new("/dev/net/tun").exists() {
        return Err(Error::TunUnavailable {
            ifname: ifname.to_owned(),
            syscall: "stat /dev/net/tun",
            source: io::Error::from(io::ErrorKind::NotFound),
        });
    }
    let netlink = Netlink::open(ifname)?;
    if netlink.link_index(ifname).await?.is_some() {
        return Err(Error::InterfaceExists {
            ifname: ifname.to_owned(),
            what: "a link with this name exists in this network namespace",
        });
    }
    Ok(netlink)
}

fn create_tun(ifname: &str, offload: bool) -> Result<tun_rs::SyncDevice, Error> {
    tun::open(offload, || {
        tun_rs::DeviceBuilder::new()
            .name(ifname)
            // MTU, address and link state go through netlink, not tun-rs's ioctls.
            .inherit_enable_state()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every other seat's initiation and response to a node that joins fit under the limit twice over,
    /// whatever the overlay's size; a tiny overlay keeps boringtun's floor, and a huge one stays bounded.
    #[test]
    fn a_join_burst_fits_under_the_handshake_limit() {
        for prefix_len in [16u8, 20, 24, 28, 30] {
            let others = (1u64 << (32 - prefix_len)) - 3;
            assert!(
                handshake_rate_limit(prefix_len) >= 2 * 2 * others,
                "/{prefix_len}: {} for {others} other seats",
                handshake_rate_limit(prefix_len)
            );
        }
        assert_eq!(handshake_rate_limit(24), 1024);
        assert_eq!(handshake_rate_limit(31), HANDSHAKE_RATE_LIMIT_MIN);
        assert_eq!(handshake_rate_limit(8), 4 << 16, "capped at a /16's seats");
    }
}
