//! The kernel WireGuard backend, through defguard_wireguard_rs's netlink API. dstack's guest kernels have the
//! module; where it is missing, creating the interface fails with [`Error::KernelUnavailable`] and `auto`
//! falls back to the userspace device.
//!
//! The kernel keeps a peer's session when its endpoint, allowed IPs or keepalive are set again, so
//! [`KernelDevice::set_peer`] is an in-place update as the userspace device's is. defguard's
//! `configure_interface` replaces every peer, so it is called once, at creation, with none; peers then go
//! through its per-peer calls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, WGApi, WireguardInterfaceApi, key::Key as DefguardKey,
    net::IpAddrMask, peer::Peer,
};
use ipnetwork::Ipv4Network;

use super::config::{DeviceConfig, PeerConfig, PeerStatus};
use super::error::Error;
use crate::path::PathKind;
use mesh_relay::RelayTarget;
use wg_key::Key;

/// A kernel WireGuard interface.
pub struct KernelDevice {
    api: WGApi<Kernel>,
    ifname: String,
    public_key: Key,
    listen_port: u16,
    /// Each peer's relay as configured; the kernel has no notion of one.
    relays: Mutex<HashMap<Key, RelayTarget>>,
}

impl std::fmt::Debug for KernelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDevice")
            .field("ifname", &self.ifname)
            .field("listen_port", &self.listen_port)
            .finish()
    }
}

fn kernel(
    ifname: &str,
    op: &'static str,
) -> impl FnOnce(defguard_wireguard_rs::error::WireguardInterfaceError) -> Error {
    let ifname = ifname.to_owned();
    move |e| Error::Kernel {
        ifname,
        op,
        detail: e.to_string(),
    }
}

impl KernelDevice {
    /// Creates the interface with the device's key, port, address and MTU, and no peers.
    ///
    /// # Errors
    /// [`Error::InterfaceExists`] for a name in use, [`Error::KernelUnavailable`] without the module, or
    /// [`Error::Kernel`] naming the step that failed.
    pub fn create(config: &DeviceConfig) -> Result<Self, Error> {
        config.validate()?;
        let ifname = config.ifname.clone();
        // defguard treats an existing link as success; we must not take over someone else's interface.
        if Path::new("/sys/class/net").join(&ifname).exists() {
            return Err(Error::InterfaceExists {
                ifname,
                what: "a link in this namespace",
            });
        }
        let mut api =
            WGApi::<Kernel>::new(ifname.clone()).map_err(kernel(&ifname, "open netlink"))?;
        api.create_interface()
            .map_err(|e| Error::KernelUnavailable {
                ifname: ifname.clone(),
                detail: e.to_string(),
            })?;
        let interface = InterfaceConfiguration {
            name: ifname.clone(),
            prvkey: base64::engine::general_purpose::STANDARD
                .encode(config.private_key.expose_bytes()),
            addresses: vec![IpAddrMask::new(
                IpAddr::V4(config.address),
                config.prefix_len,
            )],
            port: config.listen_port,
            peers: Vec::new(),
            mtu: Some(u32::from(config.mtu)),
            fwmark: None,
        };
        if let Err(e) = api.configure_interface(&interface) {
            let _ = api.remove_interface();
            return Err(kernel(&ifname, "configure")(e));
        }
        let listen_port = api
            .read_interface_data()
            .map_err(kernel(&ifname, "read"))?
            .listen_port;
        tracing::info!(%ifname, listen_port, "kernel WireGuard interface up");
        Ok(Self {
            api,
            ifname,
            public_key: config.private_key.public_key(),
            listen_port,
            relays: Mutex::default(),
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn public_key(&self) -> Key {
        self.public_key
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Adds the peer, or updates it in place.
    ///
    /// # Errors
    /// [`Error::PeerIsSelf`] or [`Error::Kernel`].
    pub fn set_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        if peer.public_key == self.public_key {
            return Err(Error::PeerIsSelf {
                peer: peer.public_key,
            });
        }
        let mut p = Peer::new(DefguardKey::new(*peer.public_key.as_bytes()));
        p.endpoint = peer.endpoint;
        p.persistent_keepalive_interval = peer.persistent_keepalive;
        p.allowed_ips = peer
            .allowed_ips
            .iter()
            .map(|n| IpAddrMask::new(IpAddr::V4(n.ip()), n.prefix()))
            .collect();
        self.api
            .configure_peer(&p)
            .map_err(kernel(&self.ifname, "set peer"))?;
        let mut relays = self.relays.lock().unwrap_or_else(|e| e.into_inner());
        match peer.relay {
            Some(r) => relays.insert(peer.public_key, r),
            None => relays.remove(&peer.public_key),
        };
        Ok(())
    }

    /// Removes the peer. Returns whether it existed.
    pub fn remove_peer(&self, public_key: &Key) -> bool {
        let had = self.peers().iter().any(|p| &p.public_key == public_key);
        self.relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(public_key);
        if let Err(e) = self
            .api
            .remove_peer(&DefguardKey::new(*public_key.as_bytes()))
        {
            tracing::warn!(ifname = %self.ifname, peer = ?public_key, error = %e, "cannot remove peer");
        }
        had
    }

    /// Every peer's state, as the kernel reports it.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let host = match self.api.read_interface_data() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, error = %e, "cannot read the interface");
                return Vec::new();
            }
        };
        let relays = self.relays.lock().unwrap_or_else(|e| e.into_inner());
        let mut peers: Vec<PeerStatus> = host
            .peers
            .into_values()
            .map(|p| PeerStatus {
                public_key: Key::from_bytes(p.public_key.as_array()),
                endpoint: p.endpoint,
                relay: relays
                    .get(&Key::from_bytes(p.public_key.as_array()))
                    .cloned(),
                path: PathKind::Direct,
                allowed_ips: p
                    .allowed_ips
                    .iter()
                    .filter_map(|m| match m.address {
                        IpAddr::V4(ip) => Ipv4Network::new(ip, m.cidr).ok(),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                // The kernel reports "never" as the epoch.
                last_handshake: p
                    .last_handshake
                    .filter(|t| *t != std::time::SystemTime::UNIX_EPOCH),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                persistent_keepalive: p.persistent_keepalive_interval.filter(|k| *k != 0),
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        peers
    }

    /// Deletes the interface.
    ///
    /// # Errors
    /// [`Error::Kernel`] when the link cannot be deleted.
    pub fn shutdown(self) -> Result<(), Error> {
        self.api
            .remove_interface()
            .map_err(kernel(&self.ifname, "delete"))
    }
}
