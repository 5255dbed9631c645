//! A WireGuard interface you set peers on. With the kernel module, the kernel's; without it, the userspace
//! device: boringtun's noise `Tunn` per peer, driven by our own tokio loops over a TUN device and a UDP
//! socket, with in-place peer updates and the standard cross-platform UAPI so `wg show` / `wg set` work.
//! What to change on it is planned by a pure function, [`plan`].
//!
//! - `plan`: [`plan`] (peers wanted against peers present, as minimal [`Change`]s), [`PeerTable`] and
//!   [`apply`], and handshake freshness.
//! - `backend`: [`MeshDevice`], the userspace device or the kernel's, chosen by [`BackendChoice`].
//! - `device`: [`Device`] — TUN + UDP + loops, peer API, shutdown.
//! - `kernel`: [`KernelDevice`], the kernel module (or a `wireguard-go` standing in) through defguard_wireguard_rs.
//! - `shim`: the relay for it: a local UDP bridge per relay stream, and the paths of relayed peers.
//! - `peer`: one peer's `Tunn`, endpoint (roaming), relay streams, keepalive and counters.
//! - `probe`: the liveness probe on the wire (an ICMP echo through the tunnel), which `mesh-path`'s
//!   `liveness` says when to send.
//! - `allowed_ips`: longest-prefix cryptokey routing table.
//! - `config`: [`DeviceConfig`], [`PeerConfig`], [`PeerStatus`], interface-name rules.
//! - `uapi`: sans-IO `get`/`set` text rendering and parsing.
//! - `uapi_server`: the unix socket at `/var/run/wireguard/<ifname>.sock`.
//! - `netlink`: MTU, address and link state over rtnetlink, and what the kernel knows of a path's MTU.
//! - `pmtu`: whether each peer's path carries the tunnel's datagrams whole; a warning with the `--mtu` that fits.
//! - `task`: owned task handles that abort on drop.
//! - `error`: the module's [`Error`].

mod allowed_ips;
mod backend;
mod config;
mod device;
mod error;
mod kernel;
mod netlink;
mod peer;
mod plan;
mod pmtu;
mod probe;
mod shim;
mod task;
mod uapi;
mod uapi_server;

pub use backend::{BackendChoice, MeshDevice, kernel_module_present};
pub use config::{
    DEFAULT_MTU, DEFAULT_UAPI_DIR, DeviceConfig, MAX_IFNAME_LEN, NatStatus, Offload, PeerConfig,
    PeerRelayConfig, PeerStatus, PunchStatus, Watching, validate_ifname,
};
pub use device::Device;
pub use device::PeerRelayStatus;
pub use mesh_path::reachability::RelayOffer;
pub use mesh_peer_relay::{
    Dropped as RelayDropped, Limits as RelayLimits, RefusedReason, Stats as RelayStats,
};

pub use error::{Error, NEEDS_NET_ADMIN};
pub use ipnetwork::Ipv4Network;
pub use kernel::KernelDevice;
pub use mesh_path::liveness::IDLE_TIMEOUT;
pub use mesh_policy::Reach;
pub use mesh_policy::filter::DropCounts;
pub use mesh_relay::RelayTarget;
pub use plan::{Change, FRESH_HANDSHAKE, MemoryTable, PeerTable, apply, handshake_is_fresh, plan};
pub use probe::answer as answer_probe;
// How a peer is reached is decided in mesh-path; what the device reports of it is in its terms.
pub use mesh_path::{
    Candidate, CandidateSource, DEFAULT_PEER_TIMEOUT, DIRECT_QUIET, FIRST_PATH_WITHIN,
    HANDSHAKE_UNANSWERED, Liveness, MAX_PEER_TIMEOUT, MIN_PEER_TIMEOUT, Mapping, NatReport,
    PROBE_INTERVAL, PUNCH_WINDOW, PathKind, PathState, StunResult, TRIAL, TRIAL_EVERY,
};
pub use wg_key::{Key, KeyParseError, PresharedKey, PrivateKey};
