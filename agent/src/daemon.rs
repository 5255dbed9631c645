//! The agent daemon: makes this node a member of the cluster's mesh and keeps it in step with the contract.
//!
//! One loop, ticking every `--poll-interval-ms`: follow the chain (or start following it, with backoff), find
//! this node's seat, bring the interface up once the seat is known, register the node's record when it
//! differs from what the node wants, reconcile the device's peers with the valid records, and publish the
//! state on the local API. With the RPC down at start, the mesh comes up from the state cache.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{Context, bail};
use dstack_guest::DstackClient;
use mesh_api::{ChainStatus, ConnectionKind, Counters, Mode, Node, Peer, Snapshot, Status};
use mesh_chain::backoff::Backoff;
use mesh_chain::follow::{Anchors, FollowConfig, Follower};
use mesh_chain::membership::{self, Member, Own};
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::{Cluster, Desired, Outcome, RegistrationError};
use mesh_chain::view::{ChainView, Seat};
use mesh_wg::{
    BackendChoice, DeviceConfig, Ipv4Network, Key, MeshDevice, PeerConfig, PeerTable as _,
    PrivateKey,
};
use p2p_agent::cache;
use p2p_agent::identity::NodeIdentity;
use tokio::sync::watch;
use tracing::{error, info, warn};
use unix_socket::UnixSocket;

/// WireGuard keepalive towards every peer: keeps NAT mappings open and handshakes fresh.
const KEEPALIVE_SECS: u16 = 25;

/// `--mode`: how this node offers itself to its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// A WireGuard interface, with the gateway URL as fallback.
    Wireguard,
    /// No interface: peers are reached through their TLS-gateway URLs.
    Tls,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Wireguard => Mode::Wireguard,
            ModeArg::Tls => Mode::Tls,
        }
    }
}

/// Which WireGuard implementation carries the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// The kernel's when it can create an interface (dstack's guest kernels have the module); else userspace.
    Auto,
    /// The agent's own, in-process.
    Userspace,
    /// The kernel module.
    Kernel,
}

/// The daemon's settings; every flag has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// wireguard: a tunnel to every peer, gateway URLs as fallback; tls: no interface, peers by gateway URL.
    #[arg(long, env = "MESH_MODE", value_enum, default_value = "wireguard")]
    pub(crate) mode: ModeArg,
    /// The cluster contract: the cluster's identity.
    #[arg(long, env = "CLUSTER_CONTRACT")]
    pub(crate) contract: Option<Address>,
    /// The chain's JSON-RPC URL.
    #[arg(long, env = "RPC_URL", default_value = "http://127.0.0.1:8545")]
    pub(crate) rpc_url: alloy::transports::http::reqwest::Url,
    /// dstack guest-agent endpoint: a socket path or an http:// simulator URL (default: dstack's sockets).
    #[arg(long, env = "DSTACK_SIMULATOR_ENDPOINT")]
    pub(crate) dstack_endpoint: Option<String>,
    /// The mesh interface's name (at most 15 bytes).
    #[arg(long, env = "MESH_INTERFACE", default_value = "dmesh0")]
    pub(crate) interface: String,
    /// WireGuard's UDP port.
    #[arg(long, env = "MESH_LISTEN_PORT", default_value_t = 51820)]
    pub(crate) listen_port: u16,
    /// The address peers reach this node's WireGuard at, IP:port, registered on-chain.
    #[arg(long, env = "MESH_ENDPOINT")]
    pub(crate) endpoint: Option<SocketAddr>,
    /// This node's whole TLS-gateway URL, the fallback when its tunnel is down.
    #[arg(long, env = "MESH_GATEWAY_URL", conflicts_with = "gateway_domain")]
    pub(crate) gateway_url: Option<String>,
    /// The gateway's base domain; the URL is https://<instance_id>-<gateway-port>.<domain>.
    #[arg(long, env = "MESH_GATEWAY_DOMAIN", requires = "gateway_port")]
    pub(crate) gateway_domain: Option<String>,
    /// The port the gateway URL forwards to (with --gateway-domain).
    #[arg(long, env = "MESH_GATEWAY_PORT")]
    pub(crate) gateway_port: Option<u16>,
    /// Where the chain view is kept between runs (no secrets).
    #[arg(long, env = "MESH_STATE_DIR", default_value = "/var/lib/p2p-agent")]
    pub(crate) state_dir: PathBuf,
    /// The local API's unix socket.
    #[arg(long, env = "P2P_AGENT_API_SOCKET", default_value = mesh_api::DEFAULT_SOCKET)]
    pub(crate) api_socket: PathBuf,
    /// Pin this KMS root instead of reading it from the contract at first start.
    #[arg(long, env = "MESH_KMS_ROOT", requires = "app_ids")]
    pub(crate) kms_root: Option<Address>,
    /// Pin these app ids (with --kms-root).
    #[arg(
        long = "app-id",
        env = "MESH_APP_IDS",
        value_delimiter = ',',
        requires = "kms_root"
    )]
    pub(crate) app_ids: Vec<Address>,
    /// Trust the RPC's chain id and mesh prefix (and the contract's KMS root and app ids, unless pinned with
    /// --kms-root) as at a first start, replacing what the state directory pinned, and forget the nonces
    /// seen so far. Only for a cluster that really moved, or a dev chain that was reset.
    #[arg(long, env = "MESH_REPIN")]
    pub(crate) repin: bool,
    /// Blocks to wait before acting on an event (0 suits anvil).
    #[arg(long, env = "MESH_CONFIRMATIONS", default_value_t = 0)]
    pub(crate) confirmations: u64,
    /// How often to poll the chain and refresh the state, in milliseconds.
    #[arg(long, env = "MESH_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub(crate) poll_interval_ms: u64,
    /// How often to re-read every record as a safety net, in seconds.
    #[arg(long, env = "MESH_FULL_READ_SECS", default_value_t = 60)]
    pub(crate) full_read_secs: u64,
    /// A funded key file that pays for registrations when the derived address has no funds (or PRIVATE_KEY).
    #[arg(long, env = "TX_KEY_FILE")]
    pub(crate) tx_key_file: Option<PathBuf>,
    /// WireGuard key rotation epoch: each epoch is another key derived from dstack.
    #[arg(long, env = "MESH_WG_KEY_EPOCH", default_value_t = 0)]
    pub(crate) wg_key_epoch: u32,
    /// WireGuard implementation.
    #[arg(long, env = "MESH_WG_BACKEND", value_enum, default_value = "auto")]
    pub(crate) wg_backend: Backend,
    /// Run this shell command after each peer-set change, with the peer list as JSON on stdin and a
    /// cleaned environment (no keys or RPC credentials).
    #[arg(long, env = "MESH_ON_CHANGE")]
    pub(crate) on_change: Option<String>,
    /// Kill the on-change command if it has not finished (reading its input included) after this long.
    #[arg(long, env = "MESH_HOOK_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) hook_timeout_secs: u64,
    /// Keep a marked block of `node-<tokenId>.<suffix>` names in this hosts file.
    #[arg(long, env = "MESH_HOSTS_FILE")]
    pub(crate) hosts_file: Option<PathBuf>,
    /// The domain suffix of the hosts-file names.
    #[arg(long, env = "MESH_HOSTS_SUFFIX", default_value = "mesh")]
    pub(crate) hosts_suffix: String,
}

/// Retries with exponential backoff.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
}

/// Retries `attempt` with [`backoff`] until it succeeds or `shutdown` fires.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff = backoff();
    loop {
        let delay = backoff.next_delay();
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => warn!(error = %e, retry_in = ?delay, "{what} failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// What the valid members depend on: the block the view is at, its record count, and this node's seat.
type MembersKey = (B256, u64, usize, Option<u64>);

/// The daemon's moving parts.
struct Agent {
    args: RunArgs,
    contract: Address,
    identity: NodeIdentity,
    tx_key: Option<alloy::signers::local::PrivateKeySigner>,
    gateway_url: Option<String>,
    /// The RPC URL as it may be shown, and what to scrub from errors that quote it.
    rpc: RedactedUrl,
    started: Instant,
    api: watch::Sender<Snapshot>,
    follower: Option<Follower>,
    cluster: Option<Cluster>,
    view: Option<ChainView>,
    from_cache: bool,
    next_connect: Instant,
    connect_backoff: Backoff,
    own_token: Option<u64>,
    /// The chain said this node's instance has no seat (as opposed to: not known yet).
    seatless: bool,
    next_seat_lookup: Instant,
    device: Option<MeshDevice>,
    registered: bool,
    next_registration: Instant,
    /// Paces registrations that replaced a stored record peers would not believe: a lying RPC could
    /// otherwise make the node pay for one on every check.
    reregistration_backoff: Backoff,
    relay_printed_for: Option<u64>,
    counters: Counters,
    /// The follower's request and rejection counts at the last [`Agent::count_chain_requests`].
    follower_requests: u64,
    follower_rejected: u64,
    invalid: BTreeMap<u64, String>,
    head: Option<u64>,
    last_error: Option<String>,
    published_peers: Vec<Peer>,
    members_cache: Option<(MembersKey, Vec<Member>)>,
}

/// Runs the daemon until `shutdown` turns true.
pub(crate) async fn run(
    args: RunArgs,
    private_key: Option<zeroize::Zeroizing<String>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let contract = args
        .contract
        .context("--contract (or CLUSTER_CONTRACT) is required: the cluster contract's address")?;
    if args.mode == ModeArg::Wireguard {
        mesh_wg::validate_ifname(&args.interface).context("--interface")?;
    }
    let tx_key = crate::tx_signer(args.tx_key_file.as_deref(), private_key)?;
    if args.mode == ModeArg::Tls && args.gateway_url.is_none() && args.gateway_domain.is_none() {
        bail!(
            "--mode tls needs this node's gateway URL: pass --gateway-url, or --gateway-domain with --gateway-port"
        );
    }

    if let Some(dir) = args.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let socket = UnixSocket::bind(&args.api_socket)
        .await
        .context("binding the API socket (--api-socket)")?;
    socket
        .set_mode(0o660)
        .context("restricting the API socket")?;
    let rpc = RedactedUrl::new(&args.rpc_url);
    let (api_tx, api_rx) = watch::channel(initial_snapshot(&args, contract, &rpc));
    let api_shutdown = {
        let mut s = shutdown.clone();
        async move {
            let _ = s.wait_for(|stop| *stop).await;
        }
    };
    let api_task = tokio::spawn(mesh_api::serve(socket, api_rx, api_shutdown));

    let client = DstackClient::discover(args.dstack_endpoint.as_deref())
        .context("choosing the dstack endpoint")?;
    let epoch = args.wg_key_epoch;
    let Some(identity) = retry(
        "reading this node's identity from dstack",
        &mut shutdown,
        || NodeIdentity::load(&client, epoch),
    )
    .await
    else {
        return Ok(());
    };
    info!(instance = %identity.instance_id(), app = %identity.peer.app_id, wg_key = %Key::from_bytes(identity.wg_public_key().0), "identity from dstack");
    let gateway_url = match (&args.gateway_url, &args.gateway_domain, args.gateway_port) {
        (Some(url), _, _) => Some(url.clone()),
        (None, Some(domain), Some(port)) => Some(format!(
            "https://{}-{port}.{domain}",
            identity.instance_id()
        )),
        _ => None,
    };

    let cache = match cache::load(&args.state_dir) {
        Ok(Some(v)) if v.contract == contract => Some(v),
        Ok(Some(v)) => {
            warn!(cached = %v.contract, %contract, "the state cache is for another cluster; ignoring it");
            None
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "cannot use the state cache");
            None
        }
    };
    let mut agent = Agent {
        contract,
        identity,
        tx_key,
        gateway_url,
        rpc,
        started: Instant::now(),
        api: api_tx,
        follower: None,
        cluster: None,
        view: cache,
        from_cache: false,
        next_connect: Instant::now(),
        connect_backoff: backoff(),
        own_token: None,
        seatless: false,
        next_seat_lookup: Instant::now(),
        device: None,
        registered: false,
        next_registration: Instant::now(),
        reregistration_backoff: Backoff::new(Duration::from_secs(60), Duration::from_secs(3600)),
        relay_printed_for: None,
        counters: Counters::default(),
        follower_requests: 0,
        follower_rejected: 0,
        invalid: BTreeMap::new(),
        head: None,
        last_error: None,
        published_peers: Vec::new(),
        members_cache: None,
        args,
    };
    if agent.view.is_some() {
        agent.from_cache = true;
        info!(
            "loaded the chain view from the state cache; the mesh comes up from it until the RPC answers"
        );
    }

    let mut tick =
        tokio::time::interval(Duration::from_millis(agent.args.poll_interval_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = agent.step().await {
                    break Err(e);
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
        }
    };
    // The on-chain record stays: peers keep it until this node changes it or the seat is cleared.
    if let Some(device) = agent.device.take() {
        let name = device.ifname().to_owned();
        match device.shutdown().await {
            Ok(()) => info!(interface = %name, "removed the interface"),
            Err(e) => {
                warn!(interface = %name, error = %e, "could not remove the interface cleanly")
            }
        }
    }
    drop(agent);
    let _ = api_task.await;
    result
}

fn initial_snapshot(args: &RunArgs, contract: Address, rpc: &RedactedUrl) -> Snapshot {
    Snapshot {
        status: Status {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: args.mode.into(),
            backend: None,
            node: Node::default(),
            chain: ChainStatus {
                contract,
                rpc_url: rpc.to_string(),
                ..ChainStatus::default()
            },
            uptime_secs: 0,
            peers_configured: 0,
            peers_healthy: 0,
        },
        peers: Vec::new(),
        counters: Counters::default(),
    }
}

impl Agent {
    /// One turn of the loop. Only errors the operator must fix end the daemon; the chain and dstack being
    /// unreachable are retried.
    async fn step(&mut self) -> anyhow::Result<()> {
        self.follow_chain().await;
        self.count_chain_requests();
        self.find_seat().await;
        self.ensure_device().await?;
        self.register().await;
        self.reconcile();
        self.publish().await;
        Ok(())
    }

    /// Adds what the follower made since the last count; a new follower starts its own count at zero.
    fn count_chain_requests(&mut self) {
        let (made, rejected) = self
            .follower
            .as_ref()
            .map_or((0, 0), |f| (f.requests, f.rejected));
        self.counters.chain_requests += made.saturating_sub(self.follower_requests);
        self.counters.invalid_records += rejected.saturating_sub(self.follower_rejected);
        self.follower_requests = made;
        self.follower_rejected = rejected;
    }

    /// Logs an error once (until it changes) and shows it in the API, with the RPC's credentials scrubbed.
    fn report(&mut self, what: &str, e: impl std::fmt::Display) {
        let error = self.rpc.scrub(&e.to_string());
        let text = format!("{what}: {error}");
        if self.last_error.as_deref() != Some(&text) {
            warn!(%error, "{what}");
        }
        self.last_error = Some(text);
    }

    fn rpc_failed(&mut self, what: &str, e: impl std::fmt::Display) {
        self.counters.rpc_errors += 1;
        self.report(what, e);
    }

    async fn follow_chain(&mut self) {
        let Some(f) = self.follower.as_mut() else {
            return self.start_following().await;
        };
        match f.tick(Instant::now()).await {
            Ok(tick) => {
                let view = f.view().clone();
                self.head = view.last_block.checked_add(self.args.confirmations);
                self.view = Some(view);
                if tick.full_read_error.is_some() {
                    self.counters.rpc_errors += 1;
                }
                // The follower logged it; the API shows it until a full read succeeds.
                self.last_error = f.full_read_failing().map(|e| {
                    self.rpc.scrub(&format!(
                        "the full read failed ({e}); following events meanwhile"
                    ))
                });
                if tick.changed {
                    self.save();
                }
            }
            Err(e) => self.rpc_failed("following the chain", e),
        }
    }

    async fn start_following(&mut self) {
        if Instant::now() < self.next_connect {
            return;
        }
        let provider = ProviderBuilder::new()
            .connect_http(self.args.rpc_url.clone())
            .erased();
        let anchors = Anchors {
            flags: self
                .args
                .kms_root
                .map(|root| (root, self.args.app_ids.clone())),
            repin: self.args.repin,
        };
        let config = FollowConfig {
            confirmations: self.args.confirmations,
            full_read_every: Duration::from_secs(self.args.full_read_secs.max(1)),
        };
        let started =
            Follower::start(provider, self.contract, config, self.view.clone(), &anchors).await;
        let f = match started {
            Ok(f) => f,
            Err(e) => {
                let what = format!("cannot follow cluster {} via {}", self.contract, self.rpc);
                self.rpc_failed(&what, e);
                self.next_connect = Instant::now() + self.connect_backoff.next_delay();
                return;
            }
        };
        match Cluster::connect(self.args.rpc_url.clone(), self.contract).await {
            Ok(c) => self.cluster = Some(c),
            Err(e) => return self.rpc_failed("connecting the registration client", e),
        }
        info!(
            block = f.view().last_block,
            peers = f.view().records.len(),
            "following the cluster"
        );
        self.view = Some(f.view().clone());
        self.follower = Some(f);
        self.follower_requests = 0;
        self.follower_rejected = 0;
        self.from_cache = false;
        self.last_error = None;
        self.connect_backoff.reset();
        self.save();
    }

    fn save(&self) {
        if let Some(v) = &self.view
            && let Err(e) = cache::save(&self.args.state_dir, v)
        {
            warn!(error = %e, "cannot save the state cache");
        }
    }

    async fn find_seat(&mut self) {
        let from_records = self.view.as_ref().and_then(|v| {
            v.records
                .iter()
                .find(|(_, r)| r.instance_id == self.identity.instance_id())
                .map(|(t, _)| *t)
        });
        if let Some(token) = from_records {
            self.own_token = Some(token);
            self.seatless = false;
            return;
        }
        if Instant::now() < self.next_seat_lookup {
            return;
        }
        self.next_seat_lookup = Instant::now() + Duration::from_secs(5);
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        match f.seat_of(self.identity.instance_id()).await {
            Ok(Seat::Active(token)) => {
                self.own_token = Some(token);
                self.seatless = false;
            }
            Ok(Seat::Inactive(token)) => {
                self.seatless = true;
                if self.own_token.take().is_some() {
                    self.leave_mesh(token, "deactivated").await;
                }
                let text = format!(
                    "seat {token} of this instance is deactivated: it has no record until its holder runs `meshctl activate --token {token}`"
                );
                if self.last_error.as_deref() != Some(&text) {
                    warn!("{text}");
                }
                self.last_error = Some(text);
            }
            Ok(Seat::None) => {
                self.seatless = true;
                if let Some(token) = self.own_token.take() {
                    self.leave_mesh(token, "gone").await;
                }
                let err = RegistrationError::NoSeat {
                    contract: self.contract,
                    instance_id: self.identity.instance_id().to_owned(),
                };
                let text = err.to_string();
                if self.last_error.as_deref() != Some(&text) {
                    warn!("{text}");
                }
                self.last_error = Some(text);
            }
            Err(e) => self.rpc_failed("looking up this node's seat", e),
        }
    }

    /// This node's seat is gone (revoked, or rebound to another instance) or deactivated: it is no longer a
    /// member, so it drops its tunnels and interface rather than keep sessions the others have already cut.
    /// Should a seat become active again, the loop brings the interface back and registers.
    async fn leave_mesh(&mut self, token: u64, why: &str) {
        warn!(token, "this node's seat is {why}: leaving the mesh");
        self.registered = false;
        self.relay_printed_for = None;
        if let Some(device) = self.device.take() {
            let name = device.ifname().to_owned();
            if let Err(e) = device.shutdown().await {
                warn!(interface = %name, error = %e, "could not remove the interface cleanly");
            }
        }
    }

    async fn ensure_device(&mut self) -> anyhow::Result<()> {
        if self.args.mode != ModeArg::Wireguard || self.device.is_some() {
            return Ok(());
        }
        let (Some(token), Some(view)) = (self.own_token, &self.view) else {
            return Ok(());
        };
        let address = view.prefix().address(token).with_context(|| {
            format!(
                "seat {token} does not fit the mesh prefix {}",
                view.prefix()
            )
        })?;
        let mut config = DeviceConfig::new(
            self.args.interface.clone(),
            PrivateKey::from_bytes(self.identity.wg_secret().expose_secret().to_bytes()),
            address,
            view.prefix().bits(),
        );
        config.listen_port = self.args.listen_port;
        let choice = match self.args.wg_backend {
            Backend::Auto => BackendChoice::Auto,
            Backend::Userspace => BackendChoice::Userspace,
            Backend::Kernel => BackendChoice::Kernel,
        };
        let device = MeshDevice::create(config, choice)
            .await
            .with_context(|| format!("creating the WireGuard interface {}", self.args.interface))?;
        info!(interface = %device.ifname(), %address, port = device.listen_port(), "interface up");
        self.device = Some(device);
        Ok(())
    }

    fn desired(&self) -> Desired {
        Desired {
            wg_public_key: if self.args.mode == ModeArg::Wireguard {
                self.identity.wg_public_key()
            } else {
                B256::ZERO
            },
            endpoint: match self.args.mode {
                ModeArg::Wireguard => self
                    .args
                    .endpoint
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                ModeArg::Tls => String::new(),
            },
            gateway_url: self.gateway_url.clone().unwrap_or_default(),
        }
    }

    async fn register(&mut self) {
        if Instant::now() < self.next_registration || self.own_token.is_none() {
            return;
        }
        let desired = self.desired();
        let (Some(cluster), Some(pins)) = (&self.cluster, self.view.as_ref().map(|v| &v.pins))
        else {
            // No RPC yet: the cached record is the best knowledge of whether peers have the right one.
            self.registered = self.own_token.is_some_and(|t| {
                self.view
                    .as_ref()
                    .and_then(|v| v.records.get(&t))
                    .is_some_and(|r| desired.matches(r))
            });
            return;
        };
        let outcome = cluster
            .register(&self.identity.peer, &desired, self.tx_key.as_ref(), pins)
            .await;
        // While registered, re-check rarely (a full read also shows a cleared record); otherwise retry soon.
        let mut next = Duration::from_secs(3);
        match outcome {
            Ok(Outcome::UpToDate { .. }) => {
                self.registered = true;
                self.reregistration_backoff.reset();
                next = Duration::from_secs(self.args.full_read_secs.max(10));
            }
            Ok(Outcome::Registered {
                replaced_unbelievable,
                ..
            }) => {
                // Cluster::register logged it, with the sender and, for a replacement, the reason.
                self.registered = true;
                self.counters.registrations += 1;
                next = match replaced_unbelievable {
                    Some(_) => self.reregistration_backoff.next_delay(),
                    None => Duration::from_secs(2),
                };
            }
            Ok(Outcome::NeedsRelay(reg)) => {
                self.registered = false;
                if self.relay_printed_for != Some(reg.nonce) {
                    self.relay_printed_for = Some(reg.nonce);
                    match serde_json::to_string(&reg) {
                        Ok(json) => println!("{json}"),
                        Err(e) => error!(error = %e, "cannot encode the registration"),
                    }
                    warn!(
                        derived_address = ?self.identity.peer.address().ok(),
                        "no funded sender: the signed registration is on stdout; relay it with `meshctl relay -`, or fund the derived address with `meshctl fund`"
                    );
                }
            }
            Err(e) => {
                self.registered = false;
                self.report("registration failed", e);
            }
        }
        self.next_registration = Instant::now() + next;
    }

    /// The valid peers. Verifying proofs costs signature recoveries, so the result is kept until the view
    /// moves to another block or this node's seat changes.
    fn members(&mut self) -> Vec<Member> {
        let Some(v) = &self.view else {
            return Vec::new();
        };
        let key = (
            v.last_block_hash,
            v.last_block,
            v.records.len(),
            self.own_token,
        );
        if let Some((cached, members)) = &self.members_cache
            && *cached == key
        {
            return members.clone();
        }
        let own = Own {
            token_id: self.own_token,
            instance_id: self.identity.instance_id(),
            wg_public_key: (self.args.mode == ModeArg::Wireguard)
                .then(|| self.identity.wg_public_key().0),
        };
        let (members, invalid) = membership::members(&v.records, own, v.prefix());
        for e in invalid {
            let text = e.to_string();
            if self.invalid.get(&e.token_id()) != Some(&text) {
                warn!(token = e.token_id(), reason = %text, "skipping a record that fails local checks");
                self.counters.invalid_records += 1;
                self.invalid.insert(e.token_id(), text);
            }
        }
        self.members_cache = Some((key, members.clone()));
        members
    }

    fn reconcile(&mut self) {
        let members = self.members();
        let Some(device) = &self.device else { return };
        let want: Vec<PeerConfig> = members
            .iter()
            .filter_map(|m| {
                m.wg_public_key.map(|key| PeerConfig {
                    public_key: Key::from_bytes(key),
                    endpoint: m.endpoint,
                    allowed_ips: vec![
                        Ipv4Network::new(m.overlay_ip, 32).expect("/32 is a valid prefix"),
                    ],
                    persistent_keepalive: Some(KEEPALIVE_SECS),
                })
            })
            .collect();
        let changes = mesh_wg::plan(&want, &device.peers(), SystemTime::now());
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            info!(%change, "reconcile");
        }
        for (change, error) in mesh_wg::apply(device, &changes) {
            warn!(%change, %error, "could not apply a change");
        }
        self.counters.reconciles += 1;
    }

    async fn publish(&mut self) {
        // A node the chain says has no seat is no member: it has no peers to offer applications. (Before
        // the chain has answered, the cached view is served.)
        let members = if self.seatless {
            Vec::new()
        } else {
            self.members()
        };
        let stats: BTreeMap<Key, mesh_wg::PeerStatus> = self
            .device
            .as_ref()
            .map(|d| d.peers().into_iter().map(|p| (p.public_key, p)).collect())
            .unwrap_or_default();
        let now = SystemTime::now();
        let peers: Vec<Peer> = members
            .iter()
            .map(|m| {
                let stat = m.wg_public_key.and_then(|k| stats.get(&Key::from_bytes(k)));
                let handshake = stat.and_then(|s| s.last_handshake);
                let healthy = mesh_wg::handshake_is_fresh(handshake, now);
                let connection = if healthy {
                    ConnectionKind::Wireguard
                } else if m.gateway_url.is_some() {
                    ConnectionKind::TlsGateway
                } else {
                    ConnectionKind::Unreachable
                };
                let address = match connection {
                    ConnectionKind::Wireguard => Some(m.overlay_ip.to_string()),
                    ConnectionKind::TlsGateway => m.gateway_url.clone(),
                    ConnectionKind::Unreachable => None,
                };
                Peer {
                    token_id: m.token_id,
                    instance_id: m.instance_id.clone(),
                    overlay_ip: m.overlay_ip,
                    wg_public_key: m.wg_public_key.map(|k| Key::from_bytes(k).to_string()),
                    endpoint: stat
                        .and_then(|s| s.endpoint)
                        .or(m.endpoint)
                        .map(|e| e.to_string()),
                    gateway_url: m.gateway_url.clone(),
                    connection,
                    address,
                    healthy,
                    latest_handshake: handshake
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: stat.map_or(0, |s| s.rx_bytes),
                    tx_bytes: stat.map_or(0, |s| s.tx_bytes),
                }
            })
            .collect();
        let view = self.view.as_ref();
        let status = Status {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.args.mode.into(),
            backend: self.device.as_ref().map(|d| d.backend().to_owned()),
            node: Node {
                instance_id: self.identity.instance_id().to_owned(),
                app_id: self.identity.peer.app_id,
                token_id: self.own_token,
                overlay_ip: self
                    .own_token
                    .zip(view)
                    .and_then(|(t, v)| v.prefix().address(t)),
                wg_public_key: (self.args.mode == ModeArg::Wireguard)
                    .then(|| Key::from_bytes(self.identity.wg_public_key().0).to_string()),
                interface: self.device.as_ref().map(|d| d.ifname().to_owned()),
                listen_port: self.device.as_ref().map(MeshDevice::listen_port),
                endpoint: self.args.endpoint.map(|e| e.to_string()),
                gateway_url: self.gateway_url.clone(),
                registered: self.registered,
            },
            chain: ChainStatus {
                contract: self.contract,
                chain_id: view.map(ChainView::chain_id),
                rpc_url: self.rpc.to_string(),
                head: self.head,
                last_processed_block: view.map(|v| v.last_block),
                lag: self
                    .head
                    .zip(view)
                    .map(|(h, v)| h.saturating_sub(v.last_block)),
                from_cache: self.from_cache,
                last_error: self.last_error.clone(),
            },
            uptime_secs: self.started.elapsed().as_secs(),
            peers_configured: peers.len(),
            peers_healthy: peers.iter().filter(|p| p.healthy).count(),
        };
        let changed = peer_set_changed(&self.published_peers, &peers);
        self.api.send_replace(Snapshot {
            status,
            peers: peers.clone(),
            counters: self.counters.clone(),
        });
        if changed {
            self.published_peers = peers.clone();
            self.run_hooks(&peers, &members).await;
        }
    }

    async fn run_hooks(&self, peers: &[Peer], members: &[Member]) {
        if let Some(path) = &self.args.hosts_file
            && let Err(e) = write_hosts(path, members, &self.args.hosts_suffix)
        {
            warn!(path = %path.display(), error = %e, "cannot update the hosts file");
        }
        if let Some(cmd) = &self.args.on_change {
            let json = serde_json::to_vec(peers).unwrap_or_default();
            let cmd = cmd.clone();
            let limit = Duration::from_secs(self.args.hook_timeout_secs.max(1));
            // Owned by nobody on purpose: a slow hook must not hold up the mesh; it is bounded instead.
            tokio::spawn(async move {
                if let Err(e) = p2p_agent::hooks::run(&cmd, &json, limit).await {
                    warn!(hook = %cmd, error = %e, "the on-change hook failed");
                }
            });
        }
    }
}

/// A change that applications care about: who is there, at which key, and how to reach them.
fn peer_set_changed(old: &[Peer], new: &[Peer]) -> bool {
    let key = |p: &Peer| {
        (
            p.token_id,
            p.wg_public_key.clone(),
            p.endpoint.clone(),
            p.connection,
            p.address.clone(),
        )
    };
    old.len() != new.len() || old.iter().zip(new).any(|(a, b)| key(a) != key(b))
}

const HOSTS_BEGIN: &str = "# BEGIN dstack-mesh (managed by p2p-agent)";
const HOSTS_END: &str = "# END dstack-mesh";

/// Replaces the marked block of `path` with one `overlay-ip node-<token>.<suffix>` line per member, keeping
/// every other line.
pub(crate) fn hosts_block(existing: &str, members: &[(u64, Ipv4Addr)], suffix: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line == HOSTS_BEGIN {
            inside = true;
        } else if line == HOSTS_END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(HOSTS_BEGIN);
    out.push('\n');
    for (token, ip) in members {
        out.push_str(&format!("{ip}\tnode-{token}.{suffix}\n"));
    }
    out.push_str(HOSTS_END);
    out.push('\n');
    out
}

fn write_hosts(path: &Path, members: &[Member], suffix: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let entries: Vec<(u64, Ipv4Addr)> =
        members.iter().map(|m| (m.token_id, m.overlay_ip)).collect();
    let text = hosts_block(&existing, &entries, suffix);
    let tmp = path.with_extension("dstack-mesh.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The managed block is replaced in place; the rest of the hosts file is kept.
    #[test]
    fn hosts_block_replaces_only_its_own_lines() {
        let existing = "127.0.0.1 localhost\n# BEGIN dstack-mesh (managed by p2p-agent)\n10.0.1.9\tnode-9.mesh\n# END dstack-mesh\n::1 ip6-localhost\n";
        let out = hosts_block(existing, &[(2, Ipv4Addr::new(10, 0, 1, 2))], "mesh");
        assert_eq!(
            out,
            "127.0.0.1 localhost\n::1 ip6-localhost\n# BEGIN dstack-mesh (managed by p2p-agent)\n10.0.1.2\tnode-2.mesh\n# END dstack-mesh\n"
        );
        assert_eq!(
            hosts_block(&out, &[(2, Ipv4Addr::new(10, 0, 1, 2))], "mesh"),
            out,
            "idempotent"
        );
    }
}
