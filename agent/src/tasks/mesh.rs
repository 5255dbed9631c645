//! The mesh task: from the chain state to the interface. It works out this node's peers
//! ([`crate::desired`]), creates the interface once the node has an active seat and removes it when the
//! seat goes, plans the changes (`mesh_wg::plan`) and applies them, and publishes [`MeshState`].
//!
//! The interface is behind [`Interfaces`], so the task is tested against an in-memory peer table.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use mesh_api::RelayCounters;
use mesh_chain::membership::{InvalidRecord, Own};
use mesh_chain::view::ChainView;
use mesh_wg::{BackendChoice, DeviceConfig, Key, MeshDevice, PeerTable, PrivateKey};
use owned_task::Task;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ModeArg, RunArgs};
use crate::desired;
use crate::state::{ChainState, DeviceInfo, MeshState, SeatState};
use crate::tasks::Shared;

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

/// The longest the mesh task waits between reads of the device, so that the API shows a new handshake
/// soon even when the chain is polled slowly (or followed by subscription).
pub const REFRESH_AT_MOST: Duration = Duration::from_millis(500);

/// How often the device is read while a peer's first handshake is awaited: it comes a round trip or two
/// after the peer is added, and the API should say so then, not at the next refresh.
const AWAIT_REFRESH: Duration = Duration::from_millis(50);

/// How long a new peer's first handshake is awaited that closely: two of WireGuard's 5 s retries.
const AWAIT_FOR: Duration = Duration::from_secs(12);

/// How long the first members' tunnels have to come up before the list is published anyway: the time a
/// handshake gets before the relay is tried.
const SETTLE_FOR: Duration = Duration::from_secs(5);

/// Whether the peer list a (re)started node publishes first is settled: each tunnel has had its first
/// handshake, or `by` has passed. Before, a peer whose session is only being made again would be shown
/// unreachable, and an application that reconnected to a restarted agent told that every peer had left.
fn settled(awaiting: &BTreeMap<Key, Instant>, by: Instant, now: Instant) -> bool {
    awaiting.is_empty() || now >= by
}

/// When to read the device next: soon while a peer that came within [`AWAIT_FOR`] has had no handshake
/// (`awaiting` holds when each such peer was first seen without one), else after `refresh`.
fn next_refresh(awaiting: &BTreeMap<Key, Instant>, now: Instant, refresh: Duration) -> Duration {
    let soon = awaiting
        .values()
        .any(|since| now.saturating_duration_since(*since) < AWAIT_FOR);
    match soon {
        true => AWAIT_REFRESH.min(refresh),
        false => refresh,
    }
}

/// What the mesh task needs to know.
pub struct MeshTask<I> {
    /// `None` in TLS mode: the node has no interface, but its peers are still worked out.
    pub interfaces: Option<I>,
    pub instance_id: String,
    /// Absent in TLS mode.
    pub wg_public_key: Option<Key>,
    /// How often the device is read and reconciled besides on chain changes: handshakes, counters,
    /// endpoints.
    pub refresh: Duration,
    /// The port peers' relays are on; `None` with relays off.
    pub relay_port: Option<u16>,
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
fn accepting(reserved: &std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    let listener = reserved.try_clone()?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

impl MeshTask<WireGuard> {
    /// The mesh task: an interface in WireGuard mode (none in TLS mode), with the relay on
    /// `--relay-port` unless `--no-relay`, dialling peers' relays with `relay`.
    pub fn from_args(args: &RunArgs, shared: &Shared, relay: Option<RelayParts>) -> Self {
        let wireguard = args.mode == ModeArg::Wireguard;
        let identity = &shared.identity;
        let relay_port = (wireguard && !args.no_relay).then_some(args.relay_port);
        if wireguard && args.backend() != BackendChoice::from(args.wg_backend) {
            info!(
                "no --endpoint: this node takes the userspace WireGuard, whose own socket can punch through NATs to peers (give --wg-backend kernel for the kernel's)"
            );
        }
        Self {
            interfaces: wireguard.then(|| WireGuard {
                ifname: args.interface.clone(),
                listen_port: args.listen_port,
                private_key: identity.wg_private_key().clone(),
                backend: args.backend(),
                offload: mesh_wg::Offload {
                    tun: !args.no_tun_offload,
                    udp: !args.no_udp_offload,
                },
                mtu: args.mtu,
                stun_servers: args.stun_servers(),
                liveness: args.liveness(),
                relay: relay_port.zip(relay).map(|(port, parts)| Relay {
                    port,
                    dialer: parts.dialer,
                    metrics: parts.metrics,
                    limits: mesh_relay::Limits::default(),
                    reserved: parts.reserved,
                    serving: None,
                }),
            }),
            instance_id: identity.instance_id().to_owned(),
            wg_public_key: wireguard.then(|| identity.wg_public_key()),
            // Handshakes are read off the device this often, whatever the chain's poll: a new peer's health
            // reaches the API within this of its handshake.
            refresh: args.poll_interval().min(REFRESH_AT_MOST),
            relay_port,
        }
    }
}

struct Running<I: Interfaces> {
    task: MeshTask<I>,
    device: Option<(I::Table, DeviceInfo)>,
    /// The view and seat the published members were worked out for: checking records costs signature
    /// recoveries, so they are kept until either changes.
    members_of: Option<(Arc<ChainView>, SeatState)>,
    /// The reason each skipped record was skipped, so each is logged once.
    invalid: BTreeMap<u64, String>,
    /// Peers on the device with no handshake yet, since when ([`next_refresh`]).
    awaiting: BTreeMap<Key, Instant>,
    /// When the first members' tunnels count as settled whatever their handshakes ([`settled`]); set with
    /// the first view.
    settle_by: Option<Instant>,
    state: MeshState,
}

impl<I: Interfaces> MeshTask<I> {
    /// Runs until `cancel` fires, then removes the interface.
    ///
    /// # Errors
    /// When the interface cannot be created: that needs the operator (privileges, a name in use).
    pub async fn run(
        self,
        mut chain: watch::Receiver<ChainState>,
        out: watch::Sender<MeshState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut running = Running {
            task: self,
            device: None,
            members_of: None,
            invalid: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            settle_by: None,
            state: MeshState::default(),
        };
        let result = loop {
            let now_chain = chain.borrow_and_update().clone();
            if let Err(e) = running.step(&now_chain).await {
                break Err(e);
            }
            out.send_replace(running.state.clone());
            let wait = next_refresh(&running.awaiting, Instant::now(), running.task.refresh);
            tokio::select! {
                () = cancel.cancelled() => break Ok(()),
                changed = chain.changed() => if changed.is_err() { break Ok(()) },
                () = tokio::time::sleep(wait) => {}
            }
        };
        // The on-chain record stays: peers keep it until this node changes it or the seat is cleared.
        running.leave().await;
        result
    }
}

impl<I: Interfaces> Running<I> {
    async fn step(&mut self, chain: &ChainState) -> anyhow::Result<()> {
        let Some(view) = &chain.view else {
            return Ok(());
        };
        if chain.seat.is_out() && self.device.is_some() {
            // No longer a member: drop the tunnels rather than keep sessions the others have already cut.
            // Should the seat become active again, the interface comes back.
            self.leave().await;
        }
        self.update_members(view, chain.seat);
        if let (Some(token), None) = (chain.seat.token(), &self.device)
            && let Some(interfaces) = self.task.interfaces.as_mut()
        {
            let prefix = view.prefix().outside_dstack()?;
            let address = prefix
                .address(token)
                .with_context(|| format!("seat {token} does not fit the mesh prefix {prefix}"))?;
            let (table, info) = interfaces.create(address, prefix.bits()).await?;
            info!(interface = %info.ifname, %address, port = info.listen_port, backend = info.backend, "interface up");
            self.state.device = Some(info.clone());
            self.device = Some((table, info));
        }
        self.reconcile();
        if !self.state.known
            && let Some(by) = self.settle_by
        {
            self.state.known = settled(&self.awaiting, by, Instant::now());
        }
        Ok(())
    }

    fn update_members(&mut self, view: &Arc<ChainView>, seat: SeatState) {
        if let Some((v, s)) = &self.members_of
            && Arc::ptr_eq(v, view)
            && *s == seat
        {
            return;
        }
        let own = Own {
            token_id: seat.token(),
            instance_id: &self.task.instance_id,
            wg_public_key: self.task.wg_public_key,
        };
        let (members, invalid) = desired::members(view, seat, own);
        self.note_invalid(invalid);
        // The device logs a peer by its key (its only name in WireGuard); naming each key by its seat makes
        // every such line, the device's included, say which seat it is about.
        wg_key::names::set(
            members
                .iter()
                .filter_map(|m| m.wg_public_key.map(|k| (k, format!("seat {}", m.token_id)))),
        );
        self.state.members = Arc::new(members);
        self.settle_by
            .get_or_insert_with(|| Instant::now() + SETTLE_FOR);
        self.members_of = Some((Arc::clone(view), seat));
    }

    fn note_invalid(&mut self, invalid: Vec<InvalidRecord>) {
        for e in invalid {
            let text = e.to_string();
            if self.invalid.get(&e.token_id()) != Some(&text) {
                warn!(token = e.token_id(), reason = %text, "skipping a record that fails local checks");
                self.state.invalid_records = self.state.invalid_records.saturating_add(1);
                self.invalid.insert(e.token_id(), text);
            }
        }
    }

    fn reconcile(&mut self) {
        let Some((table, _)) = &self.device else {
            self.state.stats = Arc::default();
            return;
        };
        let want = desired::peer_configs(&self.state.members, self.task.relay_port);
        let changes = mesh_wg::plan(&want, &table.peers(), SystemTime::now());
        if !changes.is_empty() {
            for change in &changes {
                info!(%change, "reconcile");
            }
            let began = Instant::now();
            for (change, error) in mesh_wg::apply(table, &changes) {
                warn!(%change, %error, "could not apply a change");
            }
            self.state.reconcile_latency.observe(began.elapsed());
            self.state.reconciles = self.state.reconciles.saturating_add(1);
        }
        if let Some(interfaces) = &self.task.interfaces {
            self.state.relay = interfaces.relay_counters(table);
            self.state.nat = interfaces.nat(table);
        }
        let stats: BTreeMap<Key, _> = table
            .peers()
            .into_iter()
            .map(|p| (p.public_key, p))
            .collect();
        let now = Instant::now();
        self.awaiting
            .retain(|k, _| stats.get(k).is_some_and(|p| p.last_handshake.is_none()));
        for (key, p) in &stats {
            if p.last_handshake.is_none() {
                self.awaiting.entry(*key).or_insert(now);
            }
        }
        self.state.stats = Arc::new(stats);
    }

    async fn leave(&mut self) {
        let (Some((table, info)), Some(interfaces)) =
            (self.device.take(), self.task.interfaces.as_mut())
        else {
            return;
        };
        self.state.device = None;
        self.state.stats = Arc::default();
        self.state.nat = None;
        match interfaces.remove(table).await {
            Ok(()) => info!(interface = %info.ifname, "removed the interface"),
            Err(e) => {
                warn!(interface = %info.ifname, error = %format!("{e:#}"), "could not remove the interface cleanly")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::tests::{record, view};
    use mesh_wg::MemoryTable;
    use std::sync::Mutex;

    #[test]
    fn the_relay_port_is_held_from_the_start_and_serves_one_interface_after_another() {
        let reserved = RelayParts::reserve(0).expect("a free port");
        let port = reserved.local_addr().unwrap().port();
        let taken = std::net::TcpListener::bind(("127.0.0.1", port))
            .expect_err("no other socket can take the held port, not even one bound to loopback");
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            drop(accepting(&reserved).expect("the first interface's endpoint"));
            let next = accepting(&reserved).expect("the next interface's endpoint");
            let dialled = tokio::net::TcpStream::connect(("127.0.0.1", port));
            let (dialled, accepted) = tokio::join!(dialled, next.accept());
            assert!(
                dialled.is_ok() && accepted.is_ok(),
                "{dialled:?} {accepted:?}"
            );
        });
    }

    #[test]
    fn the_first_list_is_settled_once_every_tunnel_has_handshaken_or_its_time_is_up() {
        let t0 = Instant::now();
        let by = t0 + SETTLE_FOR;
        let mut awaiting = BTreeMap::new();
        assert!(settled(&awaiting, by, t0), "no tunnel to wait for");
        awaiting.insert(Key::from_bytes([1; 32]), t0);
        assert!(
            !settled(&awaiting, by, t0),
            "a first handshake still to come"
        );
        assert!(
            !settled(&awaiting, by, by - Duration::from_millis(1)),
            "within its time"
        );
        assert!(
            settled(&awaiting, by, by),
            "a peer that is down holds nothing up"
        );
    }

    /// The device is read every 50 ms while a peer added less than 12 s ago has no handshake, so that the
    /// API shows its tunnel up within 50 ms of the handshake; otherwise, and for a peer absent for longer,
    /// at the usual refresh.
    #[test]
    fn a_new_peers_first_handshake_is_watched_closely_for_a_while() {
        let t0 = Instant::now();
        let refresh = Duration::from_millis(500);
        let mut awaiting = BTreeMap::new();
        assert_eq!(
            next_refresh(&awaiting, t0, refresh),
            refresh,
            "nothing awaited"
        );
        awaiting.insert(Key::from_bytes([1; 32]), t0);
        assert_eq!(next_refresh(&awaiting, t0, refresh), AWAIT_REFRESH);
        assert_eq!(
            next_refresh(&awaiting, t0 + Duration::from_secs(11), refresh),
            AWAIT_REFRESH
        );
        assert_eq!(
            next_refresh(&awaiting, t0 + AWAIT_FOR, refresh),
            refresh,
            "an absent peer is not watched for ever"
        );
        assert_eq!(
            next_refresh(&awaiting, t0, Duration::from_millis(20)),
            Duration::from_millis(20),
            "never slower than asked"
        );
    }

    /// Interfaces in memory: what was created and removed, and the table of the current one.
    #[derive(Default, Clone)]
    struct Memory {
        log: Arc<Mutex<Vec<String>>>,
        table: Arc<Mutex<Option<Arc<MemoryTable>>>>,
    }

    impl Memory {
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
        fn keys(&self) -> Vec<Key> {
            let table = self.table.lock().unwrap().clone().expect("an interface");
            table.peers().into_iter().map(|p| p.public_key).collect()
        }
    }

    impl Interfaces for Memory {
        type Table = Arc<MemoryTable>;

        async fn create(
            &mut self,
            address: Ipv4Addr,
            prefix_len: u8,
        ) -> anyhow::Result<(Arc<MemoryTable>, DeviceInfo)> {
            self.log
                .lock()
                .unwrap()
                .push(format!("create {address}/{prefix_len}"));
            let table = Arc::new(MemoryTable::default());
            *self.table.lock().unwrap() = Some(Arc::clone(&table));
            let info = DeviceInfo {
                ifname: "mem0".into(),
                listen_port: 1,
                backend: "memory",
            };
            Ok((table, info))
        }

        async fn remove(&mut self, _: Arc<MemoryTable>) -> anyhow::Result<()> {
            self.log.lock().unwrap().push("remove".into());
            *self.table.lock().unwrap() = None;
            Ok(())
        }
    }

    fn chain(records: &[mesh_chain::record::SignedRegistration], seat: SeatState) -> ChainState {
        ChainState {
            view: Some(Arc::new(view(records))),
            seat,
            ..ChainState::default()
        }
    }

    fn task(memory: &Memory) -> MeshTask<Memory> {
        MeshTask {
            interfaces: Some(memory.clone()),
            instance_id: "own".into(),
            wg_public_key: Some(Key::from_bytes([0xee; 32])),
            refresh: Duration::from_secs(3600),
            relay_port: None,
        }
    }

    /// Waits until the task has published a state `ok` accepts, for at most 5 s.
    async fn until(
        rx: &mut watch::Receiver<MeshState>,
        ok: impl Fn(&MeshState) -> bool,
    ) -> MeshState {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| ok(s)))
            .await
            .expect("the mesh task published in time")
            .expect("the mesh task is running")
            .clone()
    }

    /// The interface comes up with the seat's address, holds every member with a key, follows the records
    /// as they change, goes when the seat goes, and is removed at shutdown.
    #[tokio::test]
    async fn the_interface_follows_the_seat_and_the_records() {
        let memory = Memory::default();
        let (chain_tx, chain_rx) = watch::channel(ChainState::default());
        let (out, mut rx) = watch::channel(MeshState::default());
        let cancel = CancellationToken::new();
        let running = Task::spawn("mesh", task(&memory).run(chain_rx, out, cancel.clone()));

        // No seat known: peers from the view are offered, but there is no interface to put them on.
        chain_tx.send_replace(chain(&[record(2, 0x22, "")], SeatState::Unknown));
        let s = until(&mut rx, |s| s.members.len() == 1).await;
        assert!(s.device.is_none());
        assert!(memory.log().is_empty());

        chain_tx.send_replace(chain(
            &[record(2, 0x22, ""), record(3, 0x33, "")],
            SeatState::Active(5),
        ));
        let s = until(&mut rx, |s| s.device.is_some() && s.members.len() == 2).await;
        assert_eq!(memory.log(), ["create 10.0.1.5/24"]);
        assert_eq!(
            memory.keys(),
            [Key::from_bytes([0x22; 32]), Key::from_bytes([0x33; 32])]
        );
        assert_eq!(s.stats.len(), 2, "the interface's peers are published");
        assert_eq!(s.reconciles, 1);
        assert_eq!(s.reconcile_latency.count, 1, "its time is measured");

        // Seat 2 is revoked: its peer goes.
        chain_tx.send_replace(chain(&[record(3, 0x33, "")], SeatState::Active(5)));
        until(&mut rx, |s| s.members.len() == 1).await;
        assert_eq!(memory.keys(), [Key::from_bytes([0x33; 32])]);

        // This node's seat is revoked: no members, no interface.
        chain_tx.send_replace(chain(&[record(3, 0x33, "")], SeatState::None));
        let s = until(&mut rx, |s| s.device.is_none()).await;
        assert!(s.members.is_empty() && s.stats.is_empty());
        assert_eq!(memory.log(), ["create 10.0.1.5/24", "remove"]);

        // A seat again: the interface comes back.
        chain_tx.send_replace(chain(&[record(3, 0x33, "")], SeatState::Active(6)));
        until(&mut rx, |s| s.device.is_some()).await;
        cancel.cancel();
        running.await.unwrap().unwrap();
        assert_eq!(
            memory.log(),
            [
                "create 10.0.1.5/24",
                "remove",
                "create 10.0.1.6/24",
                "remove"
            ],
            "removed at shutdown"
        );
    }

    /// A record that fails local checks is counted once, not on every pass.
    #[tokio::test]
    async fn a_record_that_fails_local_checks_is_counted_once() {
        let memory = Memory::default();
        let mut bad = record(3, 0x33, "");
        bad.endpoint = "not-an-endpoint".into();
        let (chain_tx, chain_rx) = watch::channel(chain(
            &[record(2, 0x22, ""), bad.clone()],
            SeatState::Active(1),
        ));
        let (out, mut rx) = watch::channel(MeshState::default());
        let cancel = CancellationToken::new();
        let running = Task::spawn("mesh", task(&memory).run(chain_rx, out, cancel.clone()));
        until(&mut rx, |s| s.device.is_some()).await;
        // A newer view that still holds it: worked out again, but the reason is the same.
        chain_tx.send_replace(chain(
            &[record(2, 0x22, ""), bad, record(4, 0x44, "")],
            SeatState::Active(1),
        ));
        let s = until(&mut rx, |s| s.members.len() == 2).await;
        assert_eq!(s.invalid_records, 1);
        assert_eq!(
            memory.keys(),
            [Key::from_bytes([0x22; 32]), Key::from_bytes([0x44; 32])]
        );
        cancel.cancel();
        running.await.unwrap().unwrap();
    }

    /// In TLS mode there is never an interface, but the members are worked out.
    #[tokio::test]
    async fn a_tls_node_has_members_but_no_interface() {
        let (_chain_tx, chain_rx) =
            watch::channel(chain(&[record(2, 0x22, "")], SeatState::Active(1)));
        let (out, mut rx) = watch::channel(MeshState::default());
        let cancel = CancellationToken::new();
        let t = MeshTask::<Memory> {
            interfaces: None,
            instance_id: "own".into(),
            wg_public_key: None,
            refresh: Duration::from_secs(3600),
            relay_port: None,
        };
        let running = Task::spawn("mesh", t.run(chain_rx, out, cancel.clone()));
        let s = until(&mut rx, |s| s.members.len() == 1).await;
        assert!(s.device.is_none());
        cancel.cancel();
        running.await.unwrap().unwrap();
    }
}
