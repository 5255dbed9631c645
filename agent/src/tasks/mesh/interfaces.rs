//! Where the mesh task gets its interface from: [`Interfaces`], and the real WireGuard interfaces behind it
//! with this node's relay.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Context as _;
use mesh_api::RelayCounters;
use mesh_wg::{BackendChoice, DeviceConfig, DropCounts, MeshDevice, PeerTable, PrivateKey};
use owned_task::Task;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::state::DeviceInfo;

/// Where the mesh task gets its interface from.
pub trait Interfaces: Send {
    /// The peers of a created interface.
    type Table: PeerTable + Send + Sync;

    /// Creates the interface with this node's overlay `address` in a network of `prefix_len` bits.
    fn create(
        &mut self,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> impl Future<Output = anyhow::Result<(Self::Table, DeviceInfo)>> + Send;

    /// Removes the interface.
    fn remove(&mut self, table: Self::Table) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The relay's counters for the interface.
    fn relay_counters(&self, _table: &Self::Table) -> RelayCounters {
        RelayCounters::default()
    }

    /// What the interface knows of the NAT in front of it.
    fn nat(&self, _table: &Self::Table) -> Option<mesh_wg::NatStatus> {
        None
    }

    /// The interface as a peer relay; `None` when it cannot be one.
    fn peer_relay(&self, _table: &Self::Table) -> Option<mesh_wg::PeerRelayStatus> {
        None
    }

    /// Tells the interface which peers something watches ([`mesh_wg::Watching`]).
    fn set_watching(&self, _table: &Self::Table, _watching: mesh_wg::Watching) {}

    /// Peers' packets the grants between seats dropped on the interface since it was made, by why.
    fn policy_dropped(&self, _table: &Self::Table) -> DropCounts {
        DropCounts::default()
    }
}

/// Real WireGuard interfaces.
pub struct WireGuard {
    pub ifname: String,
    pub listen_port: u16,
    pub private_key: PrivateKey,
    pub backend: BackendChoice,
    /// The userspace device's kernel offloads.
    pub offload: mesh_wg::Offload,
    /// The interface's MTU.
    pub mtu: u16,
    /// STUN servers (`host:port`) the userspace device learns its public mapping from.
    pub stun_servers: Vec<String>,
    /// How long a peer may be silent and count as alive: the device probes silent peers to know.
    pub liveness: mesh_wg::Liveness,
    /// Whether this node relays for its peers, and how much (userspace WireGuard only).
    pub peer_relay: mesh_wg::PeerRelayConfig,
    /// The relay, unless turned off.
    pub relay: Option<Relay>,
}

/// This node's relay: the endpoint it serves for its peers, and the dialler for theirs.
pub struct Relay {
    pub port: u16,
    pub dialer: mesh_relay::Dialer,
    pub metrics: Arc<mesh_relay::Metrics>,
    pub limits: mesh_relay::Limits,
    /// The relay's port, held from the agent's start: see [`RelayParts::reserve`].
    pub reserved: std::net::TcpListener,
    /// The endpoint while the interface is up; it stops with it.
    pub serving: Option<Task<()>>,
}

impl Relay {
    /// Serves the relay port for `device`'s WireGuard.
    async fn start(&mut self, device: &MeshDevice) -> anyhow::Result<()> {
        let inbound = device
            .relay_inbound()
            .context("the interface was created without its relay")?;
        let listener = accepting(&self.reserved)
            .with_context(|| format!("serving the relay on port {}/tcp", self.port))?;
        let task = Task::spawn(
            "relay-endpoint",
            mesh_relay::serve(
                listener,
                inbound,
                self.limits,
                Arc::clone(&self.metrics),
                // Stopped by dropping the task, which ends its streams too: no token to cancel.
                CancellationToken::new(),
            ),
        );
        info!(port = self.port, "relay endpoint up");
        self.serving = Some(task);
        Ok(())
    }

    /// Stops the endpoint and waits until its streams are closed. The port stays held for the next
    /// interface; a peer that dials meanwhile waits in the backlog.
    async fn stop(&mut self) {
        if let Some(task) = self.serving.take() {
            let _ = task.stop().await;
        }
    }
}

impl Interfaces for WireGuard {
    type Table = MeshDevice;

    async fn create(
        &mut self,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> anyhow::Result<(MeshDevice, DeviceInfo)> {
        let mut config = DeviceConfig::new(
            self.ifname.clone(),
            self.private_key.clone(),
            address,
            prefix_len,
        );
        config.listen_port = self.listen_port;
        config.offload = self.offload;
        config.mtu = self.mtu;
        config.stun_servers.clone_from(&self.stun_servers);
        config.liveness = self.liveness;
        config.peer_relay = Some(self.peer_relay);
        // The leader's heartbeats pass whatever the grants between seats say: without them no seat could
        // lead or follow.
        config.policy_exempt_udp = vec![crate::leadership::heartbeat::PORT];
        config.relay_dialer = self.relay.as_ref().map(|r| r.dialer.clone());
        let device = MeshDevice::create(config, self.backend)
            .await
            .with_context(|| format!("creating the WireGuard interface {}", self.ifname))?;
        if let Some(relay) = self.relay.as_mut()
            && let Err(e) = relay.start(&device).await
        {
            let _ = device.shutdown().await;
            return Err(e);
        }
        let info = DeviceInfo {
            ifname: device.ifname().to_owned(),
            listen_port: device.listen_port(),
            backend: device.backend(),
        };
        Ok((device, info))
    }

    async fn remove(&mut self, device: MeshDevice) -> anyhow::Result<()> {
        if let Some(relay) = self.relay.as_mut() {
            relay.stop().await;
        }
        let name = device.ifname().to_owned();
        device
            .shutdown()
            .await
            .with_context(|| format!("removing the interface {name}"))
    }

    fn nat(&self, device: &MeshDevice) -> Option<mesh_wg::NatStatus> {
        device.nat()
    }

    fn peer_relay(&self, device: &MeshDevice) -> Option<mesh_wg::PeerRelayStatus> {
        device.peer_relay()
    }

    fn set_watching(&self, device: &MeshDevice, watching: mesh_wg::Watching) {
        device.set_watching(watching);
    }

    fn policy_dropped(&self, device: &MeshDevice) -> DropCounts {
        device.policy_dropped()
    }

    fn relay_counters(&self, device: &MeshDevice) -> RelayCounters {
        let (unknown_udp, unknown_relay) = match device {
            MeshDevice::Userspace(d) => d.unknown_datagrams(),
            MeshDevice::Kernel(_) => (0, 0),
        };
        let Some(relay) = &self.relay else {
            return RelayCounters {
                unknown_udp,
                unknown_relay,
                ..RelayCounters::default()
            };
        };
        let m = &relay.metrics;
        let get = mesh_relay::Metrics::get;
        RelayCounters {
            streams_open: get(&m.open),
            streams_accepted: get(&m.accepted),
            streams_dialled: get(&m.dialled),
            streams_refused: get(&m.refused),
            streams_malformed: get(&m.malformed),
            bytes_in: get(&m.bytes_in),
            bytes_out: get(&m.bytes_out),
            unknown_udp,
            unknown_relay,
        }
    }
}

/// The relay's dialler, the counters it shares with the relay's endpoint, and the endpoint's port.
pub struct RelayParts {
    pub dialer: mesh_relay::Dialer,
    pub metrics: Arc<mesh_relay::Metrics>,
    pub reserved: std::net::TcpListener,
}

impl RelayParts {
    /// Binds the relay's port on every address now, for the agent's whole life. Bound only once the
    /// interface came up, the port could already be the ephemeral source port of this node's own RPC or
    /// relay connections (Linux picks them from 32768-60999, which holds 51820), and the agent would stop.
    pub fn reserve(port: u16) -> anyhow::Result<std::net::TcpListener> {
        let addr = std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        // std sets SO_REUSEADDR, so a restarted agent binds over its last life's closing streams.
        std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "serving the relay on {addr}/tcp; pass another --relay-port (the same on every node) or --no-relay"
            )
        })
    }
}

/// A listener that accepts on the held port for one interface's life; dropping it leaves the port held.
pub(super) fn accepting(
    reserved: &std::net::TcpListener,
) -> std::io::Result<tokio::net::TcpListener> {
    let listener = reserved.try_clone()?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}
