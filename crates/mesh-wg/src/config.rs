//! Configuration and status types of the device and its peers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use ipnetwork::Ipv4Network;

use mesh_path::candidates::Candidate;
use mesh_path::liveness::Liveness;
use mesh_path::nat::{Mapping, NatReport};
use mesh_path::path::PathKind;
use mesh_policy::Reach;
use mesh_policy::filter::DropCounts;

use super::Error;
use mesh_relay::RelayTarget;
use wg_key::{Key, PrivateKey};

/// Default TUN MTU: 1500 minus the WireGuard-over-IPv4/IPv6 overhead (80 bytes).
pub const DEFAULT_MTU: u16 = 1420;
/// Directory of the cross-platform UAPI sockets; global across network namespaces.
pub const DEFAULT_UAPI_DIR: &str = "/var/run/wireguard";
/// Linux IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// How to create a [`Device`](super::Device).
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Interface name (1-15 bytes); also names the UAPI socket `<uapi_dir>/<ifname>.sock`.
    pub ifname: String,
    /// This device's static private key.
    pub private_key: PrivateKey,
    /// UDP listen port; 0 lets the kernel pick one (see [`Device::listen_port`](super::Device::listen_port)).
    pub listen_port: u16,
    /// TUN MTU, [`DEFAULT_MTU`] unless set.
    pub mtu: u16,
    /// Overlay address of this device.
    pub address: Ipv4Addr,
    /// Prefix length of the overlay network; the kernel adds the matching connected route.
    pub prefix_len: u8,
    /// Directory for the UAPI socket, [`DEFAULT_UAPI_DIR`] unless set.
    pub uapi_dir: PathBuf,
    /// Dials peers' relays; without it, peers are direct only.
    pub relay_dialer: Option<mesh_relay::Dialer>,
    /// The kernel offloads the userspace device asks for; both unless set.
    pub offload: Offload,
    /// STUN servers (`host:port`) the userspace device asks for its public mapping; none: it publishes only
    /// its interfaces' addresses and what peers see of it.
    pub stun_servers: Vec<String>,
    /// How long a peer may be silent and still count as alive; the device probes silent peers to know
    /// ([`mesh_path::liveness`]), and leaves a UDP path that has not answered for as long.
    pub liveness: Liveness,
    /// UDP ports whose datagrams pass whatever the grants between seats say, to or from them: the agents'
    /// own (the leader's heartbeats). ICMP always passes too.
    pub policy_exempt_udp: Vec<u16>,
    /// Whether and how this node relays for its peers ([`PeerRelayConfig`]); `None` offers nothing (the
    /// kernel backend, whose WireGuard owns the port).
    pub peer_relay: Option<PeerRelayConfig>,
}

/// Which peers something watches (an application reading their health, the leader's and the replicas'
/// ports): they are held to the peer timeout, probed when silent a third of it. Peers that carry an
/// application's traffic are watched whatever this says; the others are probed only once their keepalive is
/// overdue, and shown alive for [`mesh_path::liveness::IDLE_TIMEOUT`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Watching {
    #[default]
    All,
    Only(std::collections::HashSet<Key>),
}

/// A node's offer to relay WireGuard datagrams between two of its peers that cannot reach each other
/// (`mesh_peer_relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRelayConfig {
    /// When it offers: always, never, or when its own checks find its UDP port reachable.
    pub offer: mesh_path::reachability::RelayOffer,
    pub limits: mesh_peer_relay::Limits,
}

/// The kernel offloads of the userspace device. Each is used only where the kernel has it; turning one off
/// is for kernels whose offload misbehaves, and for measuring what each is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// TUN offload (virtio-net header): TCP super-packets of up to 64 KiB in each TUN read (TSO), split
    /// before encryption, and a flow's decrypted packets coalesced into one TUN write (GRO).
    pub tun: bool,
    /// UDP GSO and GRO: a run of equal-size datagrams to one peer in one send, and a run from one peer in
    /// one receive.
    pub udp: bool,
}

impl Default for Offload {
    fn default() -> Self {
        Self {
            tun: true,
            udp: true,
        }
    }
}

impl DeviceConfig {
    /// A config with the default MTU, a kernel-picked port and the standard UAPI directory.
    pub fn new(
        ifname: impl Into<String>,
        private_key: PrivateKey,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Self {
        Self {
            ifname: ifname.into(),
            private_key,
            listen_port: 0,
            mtu: DEFAULT_MTU,
            address,
            prefix_len,
            uapi_dir: PathBuf::from(DEFAULT_UAPI_DIR),
            relay_dialer: None,
            offload: Offload::default(),
            stun_servers: Vec::new(),
            liveness: Liveness::default(),
            policy_exempt_udp: Vec::new(),
            peer_relay: None,
        }
    }

    /// Checks every field that can be checked without touching the system.
    ///
    /// # Errors
    /// [`Error::IfNameTooLong`], [`Error::InvalidIfName`] or [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<(), Error> {
        validate_ifname(&self.ifname)?;
        if self.prefix_len > 32 {
            return Err(Error::InvalidConfig {
                what: "prefix length (0-32)",
                value: self.prefix_len.to_string(),
            });
        }
        let timeout = self.liveness.timeout;
        if !(mesh_path::liveness::MIN_TIMEOUT..=mesh_path::liveness::MAX_TIMEOUT).contains(&timeout)
        {
            return Err(Error::InvalidConfig {
                what: "peer timeout (0.6-120 s)",
                value: format!("{timeout:?}"),
            });
        }
        if self.mtu < 576 {
            return Err(Error::InvalidConfig {
                what: "MTU (at least 576)",
                value: self.mtu.to_string(),
            });
        }
        Ok(())
    }
}

/// Checks an interface name against the kernel's rules (as iproute2 does).
///
/// # Errors
/// [`Error::IfNameTooLong`] above 15 bytes, [`Error::InvalidIfName`] for empty names, `.`/`..`,
/// or names with `/`, `:` or whitespace.
pub fn validate_ifname(ifname: &str) -> Result<(), Error> {
    if ifname.len() > MAX_IFNAME_LEN {
        return Err(Error::IfNameTooLong {
            ifname: ifname.to_owned(),
            len: ifname.len(),
        });
    }
    if ifname.is_empty()
        || ifname == "."
        || ifname == ".."
        || ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(Error::InvalidIfName {
            ifname: ifname.to_owned(),
        });
    }
    Ok(())
}

/// Desired state of one peer, as a reconciler would set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's static public key; a different key is a different peer.
    pub public_key: Key,
    /// Where to send to. `None` keeps whatever endpoint is configured or was learned by roaming.
    pub endpoint: Option<SocketAddr>,
    /// Overlay prefixes routed to this peer; replaces the previous set. A prefix owned by another
    /// peer moves to this one.
    pub allowed_ips: Vec<Ipv4Network>,
    /// Persistent keepalive interval in seconds; `None` or `Some(0)` turns it off.
    pub persistent_keepalive: Option<u16>,
    /// The peer's relay, used when its UDP cannot get through; `None` keeps it direct only.
    pub relay: Option<RelayTarget>,
    /// What the peer may reach here, by the grants between seats: flows it opens to anything else are
    /// dropped as they arrive, replies to this node's own flows pass ([`mesh_policy::filter`]).
    pub reach: Reach,
}

/// Observed state of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's static public key.
    pub public_key: Key,
    /// Current endpoint (configured or roamed), if any.
    pub endpoint: Option<SocketAddr>,
    /// The peer's relay, as configured.
    pub relay: Option<RelayTarget>,
    /// Which path its datagrams take now.
    pub path: PathKind,
    /// The relay seat's key, while the path is [`PathKind::PeerRelay`].
    pub peer_relay: Option<Key>,
    /// How long it may be silent and be shown alive: the peer timeout while something watches it or it
    /// carries traffic, else [`mesh_path::liveness::IDLE_TIMEOUT`] ([`Watching`]).
    pub health_timeout: std::time::Duration,
    /// Hole punching toward it (userspace device only).
    pub punch: PunchStatus,
    /// Prefixes routed to this peer.
    pub allowed_ips: Vec<Ipv4Network>,
    /// Wall-clock time of the last completed handshake; `None` = never.
    pub last_handshake: Option<SystemTime>,
    /// When the peer last sent anything that authenticated (a handshake, data, a keepalive, the answer to
    /// a probe), on the monotonic clock: whether it is alive ([`crate::Liveness`]). `None` = never.
    pub last_heard: Option<Instant>,
    /// Bytes of authenticated WireGuard datagrams received from the peer.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent to the peer.
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds, if on.
    pub persistent_keepalive: Option<u16>,
    /// Why the peer's relay could not be dialled, while its last dial failed (userspace device only).
    pub relay_error: Option<String>,
    /// What the peer may reach here, as in force on the interface.
    pub reach: Reach,
    /// The peer's packets the policy dropped, by why.
    pub policy_dropped: DropCounts,
}

/// What the userspace device knows of its NAT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatStatus {
    /// The latest round of STUN requests: each server's answer, and the mapping they show.
    pub report: NatReport,
    /// The addresses it publishes to its peers.
    pub candidates: Vec<Candidate>,
    /// Since when no STUN server has answered, while none does.
    pub unanswered_since: Option<std::time::SystemTime>,
}

/// What a peer has published of its candidates, and how punching toward it goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PunchStatus {
    /// The addresses the peer published, to try.
    pub candidates: Vec<Candidate>,
    /// The peer's NAT mapping, as it published it.
    pub mapping: Mapping,
    /// Punching attempts toward it so far.
    pub attempts: u64,
    /// Candidate messages from it that did not parse.
    pub malformed: u64,
    /// While on the relay: why the pair got there, and why it is not punched.
    pub relay_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names longer than 15 bytes are rejected with their length.
    #[test]
    fn long_ifname_is_rejected() {
        let err = validate_ifname("wg-0123456789abc").unwrap_err();
        assert!(matches!(err, Error::IfNameTooLong { len: 16, .. }), "{err}");
        validate_ifname("wg-0123456789ab").expect("15 bytes is fine");
    }

    /// Names iproute2 would refuse are rejected.
    #[test]
    fn bad_ifnames_are_rejected() {
        for name in ["", ".", "..", "wg/0", "wg 0", "wg:0"] {
            assert!(
                matches!(validate_ifname(name), Err(Error::InvalidIfName { .. })),
                "{name:?} accepted"
            );
        }
    }

    /// A prefix length above 32 and a tiny MTU are config errors.
    #[test]
    fn config_ranges_are_checked() {
        let key = PrivateKey::from_bytes([1; 32]);
        let mut cfg = DeviceConfig::new("wg0", key, Ipv4Addr::new(10, 0, 1, 1), 33);
        assert!(matches!(cfg.validate(), Err(Error::InvalidConfig { .. })));
        cfg.prefix_len = 24;
        cfg.mtu = 100;
        assert!(matches!(cfg.validate(), Err(Error::InvalidConfig { .. })));
        cfg.mtu = DEFAULT_MTU;
        cfg.validate().unwrap();
    }
}
