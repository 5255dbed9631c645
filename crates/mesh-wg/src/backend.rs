//! The WireGuard backends behind one type, chosen once at start: the kernel's where it has the module
//! (dstack's guest kernels do), else the agent's own userspace device.

use super::config::{DeviceConfig, PeerConfig, PeerStatus};
use super::device::Device;
use super::error::Error;
use super::kernel::KernelDevice;
use super::plan::PeerTable;
use wg_key::Key;

/// Whether this kernel has WireGuard: loaded (or built in) shows under /sys/module, loadable shows in
/// modules.dep. Checked first so that `auto` does not provoke (and log) a failed link creation.
pub fn kernel_module_present() -> bool {
    if std::path::Path::new("/sys/module/wireguard").exists() {
        return true;
    }
    let Ok(uts) = nix::sys::utsname::uname() else {
        return false;
    };
    let dep = std::path::Path::new("/lib/modules")
        .join(uts.release())
        .join("modules.dep");
    std::fs::read_to_string(dep).is_ok_and(|d| {
        d.lines().any(|l| {
            l.split(':').next().is_some_and(|m| {
                m.ends_with("/wireguard.ko")
                    || m.ends_with("/wireguard.ko.xz")
                    || m.ends_with("/wireguard.ko.zst")
            })
        })
    })
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The kernel's if it can create an interface, else userspace.
    Auto,
    Userspace,
    Kernel,
    /// `wireguard-go`, started by the agent and driven as the kernel's is: the kernel path on a host
    /// without the module.
    WireguardGo,
}

/// A mesh interface on one of the backends.
pub enum MeshDevice {
    Userspace(Device),
    Kernel(KernelDevice),
}

impl std::fmt::Debug for MeshDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshDevice")
            .field("backend", &self.backend())
            .field("ifname", &self.ifname())
            .finish()
    }
}

impl MeshDevice {
    /// Creates the interface on the chosen backend.
    ///
    /// # Errors
    /// The backend's [`Error`]; with [`BackendChoice::Kernel`] and no module, [`Error::KernelUnavailable`].
    pub async fn create(config: DeviceConfig, choice: BackendChoice) -> Result<Self, Error> {
        match choice {
            BackendChoice::Userspace => Device::create(config).await.map(Self::Userspace),
            BackendChoice::Kernel => KernelDevice::create(&config, false).await.map(Self::Kernel),
            BackendChoice::WireguardGo => {
                KernelDevice::create(&config, true).await.map(Self::Kernel)
            }
            BackendChoice::Auto if !kernel_module_present() => {
                tracing::info!("no wireguard kernel module; using the userspace backend");
                Device::create(config).await.map(Self::Userspace)
            }
            BackendChoice::Auto => match KernelDevice::create(&config, false).await {
                Ok(k) => Ok(Self::Kernel(k)),
                Err(Error::KernelUnavailable { detail, .. }) => {
                    tracing::warn!(%detail, "the wireguard module is there but unusable; using the userspace backend");
                    Device::create(config).await.map(Self::Userspace)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// `userspace`, `kernel` or `wireguard-go`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Userspace(_) => "userspace",
            Self::Kernel(d) => d.backend(),
        }
    }

    pub fn ifname(&self) -> &str {
        match self {
            Self::Userspace(d) => d.ifname(),
            Self::Kernel(d) => d.ifname(),
        }
    }

    pub fn public_key(&self) -> Key {
        match self {
            Self::Userspace(d) => d.public_key(),
            Self::Kernel(d) => d.public_key(),
        }
    }

    pub fn listen_port(&self) -> u16 {
        match self {
            Self::Userspace(d) => d.listen_port(),
            Self::Kernel(d) => d.listen_port(),
        }
    }

    /// What the device knows of its NAT: only the userspace device asks STUN servers and punches holes.
    pub fn nat(&self) -> Option<super::config::NatStatus> {
        match self {
            Self::Userspace(d) => Some(d.nat()),
            Self::Kernel(_) => None,
        }
    }

    /// Which peers something watches ([`crate::Watching`]); the kernel backend holds every peer to the
    /// timeout whatever this says.
    pub fn set_watching(&self, watching: crate::Watching) {
        if let Self::Userspace(d) = self {
            d.set_watching(watching);
        }
    }

    /// The device as a peer relay: only the userspace one can be (the kernel's WireGuard owns the port).
    pub fn peer_relay(&self) -> Option<crate::device::PeerRelayStatus> {
        match self {
            Self::Userspace(d) => d.peer_relay(),
            Self::Kernel(_) => None,
        }
    }

    /// Where this node's relay endpoint hands the datagrams it accepts; `None` when the device was created
    /// without a relay dialler.
    pub fn relay_inbound(&self) -> Option<tokio::sync::mpsc::Sender<mesh_relay::Inbound>> {
        match self {
            Self::Userspace(d) => d.relay_inbound(),
            Self::Kernel(d) => d.relay_inbound(),
        }
    }

    /// Peers' packets the grants between seats dropped, by why, since the device was made.
    pub fn policy_dropped(&self) -> mesh_policy::filter::DropCounts {
        match self {
            Self::Userspace(d) => d.policy_dropped(),
            Self::Kernel(d) => d.policy_dropped(),
        }
    }

    /// Removes the interface.
    ///
    /// # Errors
    /// The backend's [`Error`].
    pub async fn shutdown(self) -> Result<(), Error> {
        match self {
            Self::Userspace(d) => d.shutdown().await,
            Self::Kernel(d) => d.shutdown().await,
        }
    }
}

impl PeerTable for MeshDevice {
    fn peers(&self) -> Vec<PeerStatus> {
        match self {
            Self::Userspace(d) => d.peers(),
            Self::Kernel(d) => d.peers(),
        }
    }

    fn peers_of(&self, keys: &[Key]) -> Vec<PeerStatus> {
        match self {
            Self::Userspace(d) => d.peers_of(keys),
            // The kernel's interface answers a dump of every peer; it is filtered here.
            Self::Kernel(d) => {
                let mut peers = d.peers();
                peers.retain(|p| keys.contains(&p.public_key));
                peers
            }
        }
    }

    fn set_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        match self {
            Self::Userspace(d) => d.set_peer(peer),
            Self::Kernel(d) => d.set_peer(peer),
        }
    }

    fn remove_peer(&self, key: &Key) -> bool {
        match self {
            Self::Userspace(d) => d.remove_peer(key),
            Self::Kernel(d) => d.remove_peer(key),
        }
    }
}
