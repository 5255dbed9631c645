//! The module's one error type.

use std::io;
use std::path::PathBuf;

use wg_key::Key;

/// What the `HINT` for TUN/netlink permission failures says.
pub const NEEDS_NET_ADMIN: &str = "needs CAP_NET_ADMIN and /dev/net/tun; run as root or add \
                                   NET_ADMIN and the tun device to the container";

/// Errors of the userspace WireGuard device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The interface name does not fit Linux's IFNAMSIZ.
    #[error("interface name {ifname:?} is {len} bytes; Linux allows at most 15")]
    IfNameTooLong {
        /// The rejected name.
        ifname: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The interface name is empty or contains a character iproute2 rejects.
    #[error(
        "interface name {ifname:?} is invalid: use 1-15 bytes without '/', ':' or whitespace, not '.' or '..'"
    )]
    InvalidIfName {
        /// The rejected name.
        ifname: String,
    },
    /// A network interface (or a live UAPI socket, which is global across namespaces) already
    /// uses this name.
    #[error("interface name {ifname:?} is already in use ({what})")]
    InterfaceExists {
        /// The name in use.
        ifname: String,
        /// Where it was found: a link in this namespace or a live UAPI socket.
        what: &'static str,
    },
    /// The kernel has no WireGuard support (no module), so `--wg-backend kernel` cannot work here.
    #[error(
        "kernel WireGuard is not available for {ifname:?} ({detail}); load the wireguard module, or use the userspace backend"
    )]
    KernelUnavailable {
        /// The interface being created.
        ifname: String,
        /// What the kernel said.
        detail: String,
    },
    /// Configuring a kernel WireGuard interface failed.
    #[error("kernel WireGuard interface {ifname:?}: {op} failed: {detail}")]
    Kernel {
        /// The interface.
        ifname: String,
        /// The failing operation.
        op: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// A relay bridge's socket failed.
    #[error("relay {what} failed: {source}")]
    Relay {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `wireguard-go` could not be started or did not come up.
    #[error(
        "wireguard-go for {ifname:?}: {detail}; install it (Debian: apt-get install wireguard-go) or choose another backend"
    )]
    WireguardGo { ifname: String, detail: String },
    /// The grants between seats could not be put in force on a kernel backend's interface (with nftables):
    /// the peers' traffic is judged as it was before the change.
    #[error(
        "cannot enforce the grants between seats on {ifname:?}: {detail}; this backend enforces them with nftables: install it (Debian: apt-get install nftables) and run with CAP_NET_ADMIN, or use the userspace backend"
    )]
    Policy {
        /// The interface.
        ifname: String,
        /// What failed: nft missing, or what it said.
        detail: String,
    },
    /// The process may not create a TUN device.
    #[error("cannot create TUN device {ifname:?}: {NEEDS_NET_ADMIN} ({syscall}: {source})")]
    TunUnavailable {
        /// The interface being created.
        ifname: String,
        /// The failing step, e.g. `open /dev/net/tun`.
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to the TUN device failed.
    #[error("TUN device {ifname:?}: {syscall} failed: {source}")]
    Tun {
        /// The interface.
        ifname: String,
        /// The failing call.
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A packet thread could not be started (the process is at its thread limit, or out of memory).
    #[error("cannot start the device's {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request (link, address) failed.
    #[error("netlink {op} on {ifname:?} failed: {source}")]
    Netlink {
        /// The interface.
        ifname: String,
        /// The request, e.g. `RTM_NEWADDR 10.0.1.1/24`.
        op: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening the netlink socket failed.
    #[error("opening a netlink socket for {ifname:?} failed: {source}")]
    NetlinkSocket {
        /// The interface.
        ifname: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A UDP socket operation failed.
    #[error("UDP socket of {ifname:?} (port {port}): {syscall} failed: {source}")]
    Udp {
        /// The interface.
        ifname: String,
        /// The port concerned (0 = any).
        port: u16,
        /// The failing call, e.g. `bind`.
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel backend's liveness probes could not be sent or received: without them its peers are
    /// known alive only while they send data.
    #[error(
        "the liveness probes of {ifname:?}: {syscall} failed: {source} (they need CAP_NET_RAW, which root and docker's default capabilities have)"
    )]
    Probe {
        /// The interface.
        ifname: String,
        /// The failing call.
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Creating, binding or serving the UAPI unix socket failed.
    #[error("UAPI socket {path}: {syscall} failed: {source}")]
    Uapi {
        /// The socket (or its directory).
        path: PathBuf,
        /// The failing call.
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A UAPI request line could not be parsed or is not supported.
    #[error("UAPI request: {key}: {reason}")]
    UapiRequest {
        /// The key of the offending line (never its value, which may be a private key).
        key: String,
        /// Why it was rejected.
        reason: String,
        /// The negative errno reported to the client.
        errno: i32,
    },
    /// A peer was configured with the device's own public key.
    #[error("peer {peer:?} has this device's own public key")]
    PeerIsSelf {
        /// The key prefix.
        peer: Key,
    },
    /// A configuration value is out of range.
    #[error("invalid {what}: {value}")]
    InvalidConfig {
        /// The field.
        what: &'static str,
        /// The rejected value (never secret).
        value: String,
    },
}

impl Error {
    /// The negative errno a UAPI client sees for this error (`errno=-22` for a bad request).
    pub fn uapi_errno(&self) -> i32 {
        match self {
            Error::UapiRequest { errno, .. } => *errno,
            Error::Udp { source, .. } if source.kind() == io::ErrorKind::AddrInUse => {
                -(nix::errno::Errno::EADDRINUSE as i32)
            }
            Error::InvalidConfig { .. } | Error::PeerIsSelf { .. } => {
                -(nix::errno::Errno::EINVAL as i32)
            }
            _ => -(nix::errno::Errno::EIO as i32),
        }
    }
}
