//! The kernel WireGuard backend, through defguard_wireguard_rs: netlink for the kernel module, or the UAPI
//! socket of a `wireguard-go` the agent starts (the same path with another WireGuard behind it, for hosts
//! without the module). dstack's guest kernels have the module; where it is missing, creating the interface
//! fails with [`Error::KernelUnavailable`] and `auto` falls back to the userspace device.
//!
//! The kernel keeps a peer's session when its endpoint, allowed IPs or keepalive are set again, so
//! [`KernelDevice::set_peer`] is an in-place update as the userspace device's is. defguard's
//! `configure_interface` replaces every peer, so it is called once, at creation, with none; peers then go
//! through its per-peer calls.
//!
//! Relayed peers go through the [`crate::shim`]: a task reads the peers every [`CONTROL_TICK`] and moves each
//! between its direct endpoint and its relay bridge. Whether each peer answers is probed from a raw socket
//! on the interface ([`liveness`]).
//!
//! What each peer may reach here (the grants between seats) is enforced with nftables ([`policy`]).

mod liveness;
mod policy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use defguard_wireguard_rs::{
    InterfaceConfiguration, Kernel, Userspace, WGApi, WireguardInterfaceApi,
    key::Key as DefguardKey, net::IpAddrMask, peer::Peer,
};
use ipnetwork::Ipv4Network;

use mesh_path::path::PathKind;
use mesh_policy::Reach;
use mesh_policy::filter::DropCounts;

use super::config::{DeviceConfig, PeerConfig, PeerStatus, PunchStatus};
use super::error::Error;
use crate::netlink::Netlink;
use crate::plan::handshake_is_fresh;
use crate::pmtu::PathCheck;
use crate::shim::{Action, Shim};
use crate::task::Task;
use mesh_relay::Inbound;
use wg_key::Key;

/// Why a relayed peer stays relayed on this backend.
const KERNEL_RELAY_REASON: &str = "UDP did not get through; hole punching needs the agent's own WireGuard socket (--wg-backend userspace), so this backend stays on the relay";

/// How often relayed peers' paths are looked at.
const CONTROL_TICK: Duration = Duration::from_millis(500);
/// How long `wireguard-go` may take to open its UAPI socket.
const WIREGUARD_GO_START: Duration = Duration::from_secs(5);
/// The `PATH` of the programs the backend runs (`wireguard-go`, `nft`): the system's, not the agent's.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which WireGuard is behind the interface.
enum Driver {
    Kernel(WGApi<Kernel>),
    /// `wireguard-go`, started and stopped by the agent.
    WireguardGo {
        api: WGApi<Userspace>,
        child: Child,
    },
}

impl Driver {
    fn api(&self) -> &(dyn WireguardInterfaceApi + 'static) {
        match self {
            Self::Kernel(api) => api,
            Self::WireguardGo { api, .. } => api,
        }
    }
}

/// A kernel WireGuard interface (or `wireguard-go`'s).
pub struct KernelDevice {
    inner: Arc<Inner>,
    shim_tasks: Vec<Task>,
}

struct Inner {
    driver: Mutex<Driver>,
    ifname: String,
    public_key: Key,
    listen_port: u16,
    /// Each peer as last set, to set it again with another endpoint.
    configs: Mutex<HashMap<Key, PeerConfig>>,
    shim: Option<Arc<Shim>>,
    /// When each peer was last heard ([`liveness`]).
    heard: Arc<liveness::Heard>,
    liveness: crate::Liveness,
    /// The nftables table of what each peer may reach here.
    policy: Mutex<policy::Enforcer>,
}

impl std::fmt::Debug for KernelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDevice")
            .field("ifname", &self.inner.ifname)
            .field("listen_port", &self.inner.listen_port)
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
    /// Creates the interface with the device's key, port, address and MTU, and no peers, on the kernel's
    /// WireGuard, or on a `wireguard-go` it starts when `wireguard_go` is set.
    ///
    /// # Errors
    /// [`Error::InterfaceExists`] for a name in use, [`Error::KernelUnavailable`] without the module,
    /// [`Error::WireguardGo`] when it cannot be started, or [`Error::Kernel`] naming the step that failed.
    pub async fn create(config: &DeviceConfig, wireguard_go: bool) -> Result<Self, Error> {
        config.validate()?;
        let ifname = config.ifname.clone();
        // defguard treats an existing link as success; we must not take over someone else's interface.
        if Path::new("/sys/class/net").join(&ifname).exists() {
            return Err(Error::InterfaceExists {
                ifname,
                what: "a link in this namespace",
            });
        }
        let mut interface = InterfaceConfiguration {
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
        let driver = if wireguard_go {
            let child = start_wireguard_go(&ifname).await?;
            let driver = Driver::WireguardGo {
                api: WGApi::<Userspace>::new(ifname.clone())
                    .map_err(kernel(&ifname, "open the UAPI socket"))?,
                child,
            };
            // Address, MTU and link state through our netlink; defguard's would leave the link down.
            interface.addresses.clear();
            interface.mtu = None;
            let configured = driver_configure(&driver, &interface, &ifname);
            let netlink = Netlink::open(&ifname)?;
            let link = match configured {
                Ok(()) => netlink.link_index(&ifname).await,
                Err(e) => Err(e),
            };
            let up = match link {
                Ok(Some(index)) => {
                    netlink
                        .configure(index, config.mtu, config.address, config.prefix_len)
                        .await
                }
                Ok(None) => Err(Error::WireguardGo {
                    ifname: ifname.clone(),
                    detail: "its interface did not appear".into(),
                }),
                Err(e) => Err(e),
            };
            if let Err(e) = up {
                stop_driver(driver, &ifname);
                return Err(e);
            }
            driver
        } else {
            let mut api =
                WGApi::<Kernel>::new(ifname.clone()).map_err(kernel(&ifname, "open netlink"))?;
            api.create_interface()
                .map_err(|e| Error::KernelUnavailable {
                    ifname: ifname.clone(),
                    detail: e.to_string(),
                })?;
            let driver = Driver::Kernel(api);
            if let Err(e) = driver_configure(&driver, &interface, &ifname) {
                stop_driver(driver, &ifname);
                return Err(e);
            }
            driver
        };
        let listen_port = match driver.api().read_interface_data() {
            Ok(host) => host.listen_port,
            Err(e) => {
                stop_driver(driver, &ifname);
                return Err(kernel(&ifname, "read")(e));
            }
        };
        let (shim, shim_tasks) = match &config.relay_dialer {
            Some(dialer) => {
                let (shim, task) = Shim::start(listen_port, dialer.clone());
                (Some(shim), vec![task])
            }
            None => (None, Vec::new()),
        };
        tracing::info!(%ifname, listen_port, wireguard_go, "WireGuard interface up");
        let inner = Arc::new(Inner {
            driver: Mutex::new(driver),
            policy: Mutex::new(policy::Enforcer::new(&ifname, &config.policy_exempt_udp)),
            ifname,
            public_key: config.private_key.public_key(),
            listen_port,
            configs: Mutex::default(),
            shim,
            heard: Arc::default(),
            liveness: config.liveness,
        });
        let mut device = Self { inner, shim_tasks };
        let path_check = PathCheck::new(Netlink::open(&device.inner.ifname)?, config.mtu);
        let inner = Arc::clone(&device.inner);
        device.shim_tasks.push(Task::spawn(
            "path-mtu",
            tracing::info_span!("wg", ifname = %device.inner.ifname),
            crate::pmtu::run(path_check, move || inner.endpoints()),
        ));
        let inner = Arc::clone(&device.inner);
        device.shim_tasks.push(Task::spawn(
            "liveness-probes",
            tracing::info_span!("wg", ifname = %device.inner.ifname),
            liveness::run(
                device.inner.ifname.clone(),
                device.inner.public_key,
                device.inner.liveness,
                Arc::clone(&device.inner.heard),
                move || inner.overlay_ips(),
            ),
        ));
        if device.inner.shim.is_some() {
            let inner = Arc::clone(&device.inner);
            device.shim_tasks.push(Task::spawn(
                "relay-paths",
                tracing::info_span!("wg", ifname = %device.inner.ifname),
                async move {
                    let mut tick = tokio::time::interval(CONTROL_TICK);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        inner.control();
                    }
                },
            ));
        }
        Ok(device)
    }

    pub fn ifname(&self) -> &str {
        &self.inner.ifname
    }

    /// `kernel`, or `wireguard-go`.
    pub fn backend(&self) -> &'static str {
        match &*lock(&self.inner.driver) {
            Driver::Kernel(_) => "kernel",
            Driver::WireguardGo { .. } => "wireguard-go",
        }
    }

    pub fn public_key(&self) -> Key {
        self.inner.public_key
    }

    pub fn listen_port(&self) -> u16 {
        self.inner.listen_port
    }

    /// Where this node's relay endpoint hands the datagrams it accepts: `None` without a relay dialler.
    pub fn relay_inbound(&self) -> Option<tokio::sync::mpsc::Sender<Inbound>> {
        self.inner.shim.as_ref().map(|s| s.inbound())
    }

    /// Adds the peer, or updates it in place. A relayed peer keeps its bridge as endpoint; a new direct
    /// endpoint is kept for the next direct trial.
    ///
    /// # Errors
    /// [`Error::PeerIsSelf`] or [`Error::Kernel`]; [`Error::Policy`] when the peer is set but what it may
    /// reach cannot be enforced (the rules stay as they were; the next call tries again).
    pub fn set_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        if peer.public_key == self.inner.public_key {
            return Err(Error::PeerIsSelf {
                peer: peer.public_key,
            });
        }
        let mut endpoint = peer.endpoint;
        if let Some(shim) = &self.inner.shim {
            shim.set_peer(peer.public_key, peer.relay.clone(), peer.endpoint);
            let current = self
                .inner
                .read_peers()
                .into_iter()
                .find(|p| p.public_key == DefguardKey::new(*peer.public_key.as_bytes()))
                .and_then(|p| p.endpoint);
            if shim.is_bridge(current) {
                endpoint = current;
            }
        }
        self.inner.configure(&peer, endpoint, None)?;
        lock(&self.inner.configs).insert(peer.public_key, peer);
        self.inner.enforce()
    }

    /// Removes the peer. Returns whether it existed.
    pub fn remove_peer(&self, public_key: &Key) -> bool {
        let had = self.peers().iter().any(|p| &p.public_key == public_key);
        lock(&self.inner.configs).remove(public_key);
        if let Some(shim) = &self.inner.shim {
            shim.set_peer(*public_key, None, None);
        }
        if let Err(e) = self
            .inner
            .api()
            .remove_peer(&DefguardKey::new(*public_key.as_bytes()))
        {
            tracing::warn!(ifname = %self.inner.ifname, peer = ?public_key, error = %e, "cannot remove peer");
        }
        if let Err(e) = self.inner.enforce() {
            tracing::warn!(error = %e, "the removed peer's rules stay");
        }
        had
    }

    /// Peers' packets the grants between seats dropped, by why, since the device was made.
    pub fn policy_dropped(&self) -> DropCounts {
        lock(&self.inner.policy).total()
    }

    /// Every peer's state, as the WireGuard reports it. A relayed peer is shown at its direct endpoint, with
    /// its path.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let shim = self.inner.shim.as_ref();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let read = self.inner.read_peers();
        let configs = lock(&self.inner.configs).clone();
        let enforcer = lock(&self.inner.policy);
        let dropped = enforcer.per_peer();
        self.inner.heard.retain(|k| {
            read.iter()
                .any(|p| p.public_key.as_array() == *k.as_bytes())
        });
        let mut peers: Vec<PeerStatus> = read
            .into_iter()
            .map(|p| {
                let key = Key::from_bytes(p.public_key.as_array());
                let relayed = shim.is_some_and(|s| s.is_bridge(p.endpoint));
                // The kernel reports "never" as the epoch.
                let last_handshake = p.last_handshake.filter(|t| *t != SystemTime::UNIX_EPOCH);
                let session = handshake_is_fresh(last_handshake, wall);
                let last_heard = self.inner.heard.read(key, p.rx_bytes, session, now);
                let address = configs
                    .get(&key)
                    .and_then(policy::PeerRules::of)
                    .map(|r| r.address);
                PeerStatus {
                    peer_relay: None,
                    health_timeout: self.inner.liveness.timeout,
                    public_key: key,
                    endpoint: if relayed {
                        shim.and_then(|s| s.direct_of(&key))
                    } else {
                        p.endpoint
                    },
                    relay: shim.and_then(|s| s.relay_of(&key)),
                    path: if relayed {
                        PathKind::Relay
                    } else {
                        PathKind::Direct
                    },
                    punch: PunchStatus {
                        relay_reason: relayed.then(|| KERNEL_RELAY_REASON.to_owned()),
                        ..PunchStatus::default()
                    },
                    allowed_ips: p
                        .allowed_ips
                        .iter()
                        .filter_map(|m| match m.address {
                            IpAddr::V4(ip) => Ipv4Network::new(ip, m.cidr).ok(),
                            IpAddr::V6(_) => None,
                        })
                        .collect(),
                    last_handshake,
                    last_heard,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    persistent_keepalive: p.persistent_keepalive_interval.filter(|k| *k != 0),
                    relay_error: None,
                    // What nft holds, not what was asked: a change it refused is not shown as in force.
                    reach: address.map_or_else(Reach::everything, |a| enforcer.reach_of(a)),
                    policy_dropped: address
                        .and_then(|a| dropped.get(&a).copied())
                        .unwrap_or_default(),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        peers
    }

    /// Deletes the interface.
    ///
    /// # Errors
    /// [`Error::Kernel`] when the link cannot be deleted.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        for task in std::mem::take(&mut self.shim_tasks) {
            task.stop().await;
        }
        lock(&self.inner.policy).remove();
        let ifname = self.inner.ifname.clone();
        let mut driver = lock(&self.inner.driver);
        match &mut *driver {
            Driver::Kernel(api) => api.remove_interface().map_err(kernel(&ifname, "delete")),
            Driver::WireguardGo { child, .. } => {
                stop_child(child, &ifname);
                Ok(())
            }
        }
    }
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        // Rules left behind would judge whatever next takes the interface's name; `shutdown` has already
        // deleted them if called.
        lock(&self.inner.policy).remove();
        // A wireguard-go the agent started never outlives it; `shutdown` has already stopped it if called.
        if let Driver::WireguardGo { child, .. } = &mut *lock(&self.inner.driver) {
            stop_child(child, &self.inner.ifname);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn api(&self) -> DriverRef<'_> {
        DriverRef(lock(&self.driver))
    }

    /// Puts what each peer may reach in force, as the peers are now set.
    fn enforce(&self) -> Result<(), Error> {
        let configs = lock(&self.configs);
        let peers: Vec<policy::PeerRules<'_>> =
            configs.values().filter_map(policy::PeerRules::of).collect();
        lock(&self.policy).apply(&peers)
    }

    /// Each peer's overlay address (its /32), for the probes.
    fn overlay_ips(&self) -> Vec<(Key, std::net::Ipv4Addr)> {
        lock(&self.configs)
            .iter()
            .filter_map(|(key, c)| {
                let host = c.allowed_ips.iter().find(|n| n.prefix() == 32)?;
                Some((*key, host.ip()))
            })
            .collect()
    }

    /// Each peer's UDP endpoint, for the path MTU check.
    fn endpoints(&self) -> Vec<(Key, SocketAddr)> {
        self.read_peers()
            .into_iter()
            .filter_map(|p| Some((Key::from_bytes(p.public_key.as_array()), p.endpoint?)))
            .collect()
    }

    fn read_peers(&self) -> Vec<Peer> {
        match self.api().read_interface_data() {
            Ok(h) => h.peers.into_values().collect(),
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, error = %e, "cannot read the interface");
                Vec::new()
            }
        }
    }

    /// Sets `peer` with `endpoint` (and `keepalive` instead of its own, when given).
    fn configure(
        &self,
        peer: &PeerConfig,
        endpoint: Option<SocketAddr>,
        keepalive: Option<u16>,
    ) -> Result<(), Error> {
        let mut p = Peer::new(DefguardKey::new(*peer.public_key.as_bytes()));
        p.endpoint = endpoint;
        p.persistent_keepalive_interval = keepalive.or(peer.persistent_keepalive);
        p.allowed_ips = peer
            .allowed_ips
            .iter()
            .map(|n| IpAddrMask::new(IpAddr::V4(n.ip()), n.prefix()))
            .collect();
        self.api()
            .configure_peer(&p)
            .map_err(kernel(&self.ifname, "set peer"))
    }

    /// One look at every relayed peer: moves it between its direct endpoint and its relay bridge.
    fn control(&self) {
        let Some(shim) = &self.shim else { return };
        shim.sweep();
        let (now, wall) = (Instant::now(), SystemTime::now());
        for p in self.read_peers() {
            let key = Key::from_bytes(p.public_key.as_array());
            let handshake = p.last_handshake.filter(|t| *t != SystemTime::UNIX_EPOCH);
            let fresh = handshake_is_fresh(handshake, wall);
            let heard = self.heard.read(key, p.rx_bytes, fresh, now);
            // A session whose peer has not been heard for the timeout: the path went dark.
            let silent = fresh && !self.liveness.alive(heard, now);
            let action = shim.step(&key, p.endpoint, fresh, silent, p.rx_bytes);
            let Some(config) = lock(&self.configs).get(&key).cloned() else {
                continue;
            };
            let result = match action {
                Action::None => Ok(()),
                Action::SetEndpoint(bridge) => self.configure(&config, Some(bridge), None),
                Action::TryDirect(direct) => {
                    // Turning the keepalive off and on makes WireGuard send one at once, to the new endpoint.
                    self.configure(&config, Some(direct), Some(0))
                        .and_then(|()| self.configure(&config, Some(direct), None))
                }
            };
            if let Err(e) = result {
                tracing::warn!(peer = ?key, error = %e, "could not move the peer's path");
            }
        }
    }
}

/// The driver's API, locked.
struct DriverRef<'a>(MutexGuard<'a, Driver>);

impl std::ops::Deref for DriverRef<'_> {
    type Target = dyn WireguardInterfaceApi;
    fn deref(&self) -> &Self::Target {
        self.0.api()
    }
}

fn driver_configure(
    driver: &Driver,
    interface: &InterfaceConfiguration,
    ifname: &str,
) -> Result<(), Error> {
    driver
        .api()
        .configure_interface(interface)
        .map_err(kernel(ifname, "configure"))
}

fn stop_driver(driver: Driver, ifname: &str) {
    match driver {
        Driver::Kernel(api) => {
            let _ = api.remove_interface();
        }
        Driver::WireguardGo { mut child, .. } => stop_child(&mut child, ifname),
    }
}

/// Starts `wireguard-go -f <ifname>` with nothing of the agent's environment, and waits for its UAPI socket.
async fn start_wireguard_go(ifname: &str) -> Result<Child, Error> {
    let err = |detail: String| Error::WireguardGo {
        ifname: ifname.to_owned(),
        detail,
    };
    let mut command = Command::new("wireguard-go");
    command
        .args(["-f", ifname])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Should the agent be killed outright, wireguard-go goes with it rather than holding the interface. (The
    // signal follows the thread that spawned it: a runtime worker, which lives as long as the runtime.)
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only makes one async-signal-safe
    // system call (prctl).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| err(format!("cannot start it: {e}")))?;
    let socket = Path::new(crate::DEFAULT_UAPI_DIR).join(format!("{ifname}.sock"));
    let deadline = tokio::time::Instant::now() + WIREGUARD_GO_START;
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(err(format!("it exited at start ({status})")));
        }
        if tokio::time::Instant::now() >= deadline {
            stop_child(&mut child, ifname);
            return Err(err(format!(
                "no UAPI socket at {} after {WIREGUARD_GO_START:?}",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(child)
}

/// Stops the child by its PID (SIGTERM: it removes its interface and socket), and reaps it.
fn stop_child(child: &mut Child, ifname: &str) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            tracing::info!(%ifname, "wireguard-go stopped");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
