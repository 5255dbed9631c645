//! The daemon's settings: every flag with its environment variable, as clap parses them.

use std::net::SocketAddr;
use std::path::PathBuf;

use alloy::primitives::Address;
use cli_env::Alias;
use mesh_api::Mode;
use mesh_wg::BackendChoice;

/// The older names of the agent's environment variables, still read (see `cli_env`).
pub const ENV_ALIASES: &[Alias] = &[
    Alias::new("DSTACK_MESH_MODE", "MESH_MODE"),
    Alias::new("DSTACK_MESH_CONTRACT", "CLUSTER_CONTRACT"),
    Alias::new("DSTACK_MESH_RPC_URL", "RPC_URL"),
    Alias::new("DSTACK_MESH_DSTACK_ENDPOINT", "DSTACK_SIMULATOR_ENDPOINT"),
    Alias::new("DSTACK_MESH_INTERFACE", "MESH_INTERFACE"),
    Alias::new("DSTACK_MESH_LISTEN_PORT", "MESH_LISTEN_PORT"),
    Alias::new("DSTACK_MESH_ENDPOINT", "MESH_ENDPOINT"),
    Alias::new("DSTACK_MESH_GATEWAY_URL", "MESH_GATEWAY_URL"),
    Alias::new("DSTACK_MESH_GATEWAY_DOMAIN", "MESH_GATEWAY_DOMAIN"),
    Alias::new("DSTACK_MESH_GATEWAY_PORT", "MESH_GATEWAY_PORT"),
    Alias::new("DSTACK_MESH_STATE_DIR", "MESH_STATE_DIR"),
    Alias::new("DSTACK_MESH_API_SOCKET", "P2P_AGENT_API_SOCKET"),
    Alias::new("DSTACK_MESH_KMS_ROOT", "MESH_KMS_ROOT"),
    Alias::new("DSTACK_MESH_APP_IDS", "MESH_APP_IDS"),
    Alias::new("DSTACK_MESH_REPIN", "MESH_REPIN"),
    Alias::new("DSTACK_MESH_CONFIRMATIONS", "MESH_CONFIRMATIONS"),
    Alias::new("DSTACK_MESH_POLL_INTERVAL_MS", "MESH_POLL_INTERVAL_MS"),
    Alias::new("DSTACK_MESH_FULL_READ_SECS", "MESH_FULL_READ_SECS"),
    Alias::new("DSTACK_MESH_TX_KEY_FILE", "TX_KEY_FILE"),
    Alias::new("DSTACK_MESH_WG_KEY_EPOCH", "MESH_WG_KEY_EPOCH"),
    Alias::new("DSTACK_MESH_WG_BACKEND", "MESH_WG_BACKEND"),
    Alias::new("DSTACK_MESH_ON_CHANGE", "MESH_ON_CHANGE"),
    Alias::new("DSTACK_MESH_HOOK_TIMEOUT_SECS", "MESH_HOOK_TIMEOUT_SECS"),
    Alias::new("DSTACK_MESH_HOSTS_FILE", "MESH_HOSTS_FILE"),
    Alias::new("DSTACK_MESH_HOSTS_SUFFIX", "MESH_HOSTS_SUFFIX"),
    Alias::new("DSTACK_MESH_WAIT_TIMEOUT_SECS", "MESH_WAIT_TIMEOUT_SECS"),
];

/// The variables that once carried the transaction key. The agent refuses to start with either set: a
/// variable stays readable in `/proc/<pid>/environ` for the process's whole life, whatever the process does
/// with it, so the key is taken only from a file.
pub const REFUSED_KEY_VARIABLES: [&str; 2] = ["DSTACK_MESH_PRIVATE_KEY", "PRIVATE_KEY"];

/// A transaction key in the environment. Names the variable, never its value.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} is set, but the agent takes its transaction key only from a file: a variable stays readable in /proc/<pid>/environ while the agent runs. Write the key to a file only the agent can read, pass --tx-key-file PATH (or DSTACK_MESH_TX_KEY_FILE), and unset {name}. On dstack, a compose `secrets:` entry with `environment: {name}` turns an encrypted variable into such a file (docs/dstack.md, section 4)"
)]
pub struct KeyInEnvironment {
    pub name: &'static str,
}

/// Refuses a transaction key in the environment, as `lookup` (the process environment, in `main`) shows it.
///
/// # Errors
/// [`KeyInEnvironment`] naming the first refused variable that is set and not empty.
pub fn refuse_key_in_environment(
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(), KeyInEnvironment> {
    match REFUSED_KEY_VARIABLES
        .into_iter()
        .find(|name| lookup(name).is_some_and(|v| !v.is_empty()))
    {
        Some(name) => Err(KeyInEnvironment { name }),
        None => Ok(()),
    }
}

/// `--mode`: how this node offers itself to its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
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

/// `--wg-backend`: which WireGuard implementation carries the tunnel (`mesh_wg::BackendChoice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The kernel's when it can create an interface (dstack's guest kernels have the module); else userspace.
    Auto,
    /// The agent's own, in-process.
    Userspace,
    /// The kernel module.
    Kernel,
    /// wireguard-go, started by the agent and driven as the kernel's is (the kernel path where there is no
    /// module).
    WireguardGo,
}

impl From<BackendArg> for BackendChoice {
    fn from(backend: BackendArg) -> Self {
        match backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Userspace => BackendChoice::Userspace,
            BackendArg::Kernel => BackendChoice::Kernel,
            BackendArg::WireguardGo => BackendChoice::WireguardGo,
        }
    }
}

/// Where the agent reaches the chain and dstack: the daemon's and `register`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// The chain's providers, as `meshctl` takes them too.
    #[command(flatten)]
    pub providers: mesh_chain::cli::ProviderArgs,
    /// dstack guest-agent endpoint: a socket path or an http:// simulator URL (default: dstack's sockets).
    #[arg(long, env = "DSTACK_MESH_DSTACK_ENDPOINT")]
    pub dstack_endpoint: Option<String>,
}

impl Endpoints {
    /// The one handle on the chain's providers.
    ///
    /// # Errors
    /// A repeated URL, one of another scheme, or a quorum that is not more than half of them.
    pub fn rpcs(&self) -> anyhow::Result<mesh_chain::rpc::Rpcs> {
        Ok(self.providers.rpcs()?)
    }
}

/// The daemon's settings; every flag has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// wireguard: a tunnel to every peer, gateway URLs as fallback; tls: no interface, peers by gateway URL.
    #[arg(
        long,
        env = "DSTACK_MESH_MODE",
        value_enum,
        default_value = "wireguard"
    )]
    pub mode: ModeArg,
    /// The cluster contract: the cluster's identity.
    #[arg(value_parser = parse_address, long, env = "DSTACK_MESH_CONTRACT")]
    pub contract: Option<Address>,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// The mesh interface's name (at most 15 bytes).
    #[arg(long, env = "DSTACK_MESH_INTERFACE", default_value = "dmesh0")]
    pub interface: String,
    /// WireGuard's UDP port.
    #[arg(long, env = "DSTACK_MESH_LISTEN_PORT", default_value_t = 51820)]
    pub listen_port: u16,
    /// The address peers reach this node's WireGuard at, IP:port, registered on-chain.
    #[arg(long, env = "DSTACK_MESH_ENDPOINT")]
    pub endpoint: Option<SocketAddr>,
    /// This node's whole TLS-gateway URL, the fallback when its tunnel is down.
    #[arg(
        long,
        env = "DSTACK_MESH_GATEWAY_URL",
        conflicts_with = "gateway_domain"
    )]
    pub gateway_url: Option<String>,
    /// The gateway's base domain; the URL is https://<instance_id>-<gateway-port>.<domain>.
    #[arg(long, env = "DSTACK_MESH_GATEWAY_DOMAIN", requires = "gateway_port")]
    pub gateway_domain: Option<String>,
    /// The port the gateway URL forwards to (with --gateway-domain, or with dstack's DSTACK_GATEWAY_DOMAIN,
    /// where it defaults to --relay-port).
    #[arg(long, env = "DSTACK_MESH_GATEWAY_PORT")]
    pub gateway_port: Option<u16>,
    /// The gateway's base domain as the platform sets it (Phala Cloud's pre-launch script does): the gateway
    /// URL is built from it when neither --gateway-url nor --gateway-domain is given.
    #[arg(long, env = "DSTACK_GATEWAY_DOMAIN", value_name = "DOMAIN")]
    pub dstack_gateway_domain: Option<String>,
    /// The app id as the platform sets it (Phala Cloud's pre-launch script does): when given, it must be the
    /// app id dstack's guest agent reports, or the agent stops.
    #[arg(long, env = "DSTACK_APP_ID", value_name = "APP_ID")]
    pub dstack_app_id: Option<String>,
    /// TCP port of this node's relay endpoint, which carries WireGuard for peers whose UDP cannot get
    /// through, behind the dstack gateway's TLS. Peers find it by putting this port into the node's gateway
    /// URL, so every node of a cluster uses the same one.
    #[arg(long, env = "DSTACK_MESH_RELAY_PORT", default_value_t = 51820)]
    pub relay_port: u16,
    /// Neither serve a relay nor dial peers' relays: peers whose UDP is blocked are then reached only by
    /// their gateway URL.
    #[arg(long, env = "DSTACK_MESH_NO_RELAY")]
    pub no_relay: bool,
    /// Trust only the CA certificates in this PEM file for the gateway's TLS when dialling relays, instead
    /// of the system roots: for tests and private deployments with their own gateway CA.
    #[arg(
        long,
        env = "DSTACK_MESH_RELAY_CA_FILE",
        value_name = "PEM",
        conflicts_with = "no_relay"
    )]
    pub relay_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// What peers' attestation evidence is verified under: a peer is configured only when its quote passes.
    #[command(flatten)]
    pub trust: mesh_attest::cli::TrustArgs,
    /// The local API's unix socket.
    #[arg(long, env = "DSTACK_MESH_API_SOCKET", default_value = mesh_api::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// The API socket's permissions, in octal: who may read the peer list through it.
    #[arg(long, env = "DSTACK_MESH_API_SOCKET_MODE", default_value = "0660", value_parser = parse_socket_mode)]
    pub api_socket_mode: u32,
    /// The API socket's group, by name or number, e.g. the group an application's non-root user is in.
    #[arg(long, env = "DSTACK_MESH_API_SOCKET_GROUP", value_name = "GROUP")]
    pub api_socket_group: Option<String>,
    /// Also serve the API on this TCP address, e.g. 127.0.0.1:8000: containers that share the agent's network
    /// namespace (compose `network_mode: service:mesh`) read it on loopback, whatever their user.
    #[arg(long, env = "DSTACK_MESH_API_LISTEN", value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Serve `/metrics` alone on this TCP address, for a scraper outside the CVM.
    #[arg(long, env = "DSTACK_MESH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Listen on LISTEN, on 127.0.0.1 and on this node's overlay address, and forward each connection to the
    /// current leader's service: TARGET (LISTEN if not given) on the leader's overlay address, or on
    /// 127.0.0.1 when this node leads. Fenced by the term: a connection is refused at once while no leader
    /// holds a current lease, and closed when the term changes. Repeatable, e.g. 5432:5433 beside a
    /// PostgreSQL listening on 5433.
    #[arg(
        long = "leader-port",
        env = "DSTACK_MESH_LEADER_PORT",
        value_name = "LISTEN[:TARGET]",
        value_delimiter = ',',
        value_parser = parse_forward
    )]
    pub leader_ports: Vec<Forward>,
    /// As --leader-port, but spread over the healthy members that do not lead (read replicas), fewest open
    /// connections first; to the leader, under its fence, while there are none. Repeatable.
    #[arg(
        long = "replica-port",
        env = "DSTACK_MESH_REPLICA_PORT",
        value_name = "LISTEN[:TARGET]",
        value_delimiter = ',',
        value_parser = parse_forward
    )]
    pub replica_ports: Vec<Forward>,
    /// Pin this KMS root instead of reading it from the contract at first start.
    #[arg(value_parser = parse_address, long, env = "DSTACK_MESH_KMS_ROOT", requires = "app_ids")]
    pub kms_root: Option<Address>,
    /// Pin these app ids (with --kms-root).
    #[arg(
        value_parser = parse_address,
        long = "app-id",
        env = "DSTACK_MESH_APP_IDS",
        value_delimiter = ',',
        requires = "kms_root"
    )]
    pub app_ids: Vec<Address>,
    /// Trust the RPC's chain id and mesh prefix (and the contract's KMS root and app ids, unless pinned with
    /// --kms-root) as at a first start, replacing what the state directory pinned, and forget the nonces
    /// seen so far. Only for a cluster that really moved, or a dev chain that was reset.
    #[arg(long, env = "DSTACK_MESH_REPIN")]
    pub repin: bool,
    /// Blocks to wait before acting on an event (0 suits anvil).
    #[arg(long, env = "DSTACK_MESH_CONFIRMATIONS", default_value_t = 0)]
    pub confirmations: u64,
    /// Follow new heads by subscription at this ws:// or wss:// URL, while reads and transactions stay on
    /// an http(s):// --rpc-url: providers often serve both.
    #[arg(long, env = "DSTACK_MESH_RPC_WS_URL", value_name = "URL")]
    pub rpc_ws_url: Option<alloy::transports::http::reqwest::Url>,
    /// How often to poll the chain, in milliseconds. While new heads come by subscription (--rpc-ws-url, or
    /// a ws:// --rpc-url), each block is read when announced and this poll slows to every 15 s at most
    /// often; when the subscription drops, polling at this interval takes over until it is back.
    #[arg(long, env = "DSTACK_MESH_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub poll_interval_ms: u64,
    /// How long a peer may go without sending anything before it is shown unhealthy, in milliseconds
    /// (600-120000). A silent peer is probed through its tunnel from a third of this on, so a live one is
    /// heard in time; a dead, frozen or cut-off one is unhealthy at most this long after it last answered,
    /// and healthy again as soon as it answers. A UDP path that goes dark for as long is left for the relay.
    #[arg(long, env = "DSTACK_MESH_PEER_TIMEOUT_MS", default_value_t = 2500, value_parser = clap::value_parser!(u64).range(600..=120_000))]
    pub peer_timeout_ms: u64,
    /// How long the cluster's leader may go without a fit heartbeat over the mesh before this node casts
    /// its seat's no-confidence vote against it, in seconds. The leader's lease is half of it: a leader that
    /// cannot read the chain, or hear a majority, or is unhealthy stops reporting itself leader within that.
    /// With no leader, the lowest registered seat elects one at once and each next seat after this long per
    /// seat below it. Default: 10 s, or four blocks on a chain whose blocks are slower than 2.5 s (read from
    /// its latest blocks at start). Give every node of a cluster the same.
    #[arg(long, env = "DSTACK_MESH_LEADER_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..))]
    pub leader_timeout: Option<u64>,
    /// Take no part in the leader election: no votes, no elections (the leader is still followed and
    /// served by the API).
    #[arg(long, env = "DSTACK_MESH_NO_FAILOVER")]
    pub no_failover: bool,
    /// On SIGTERM, stop at once. By default the node first drains: replica ports leave it out, and if it
    /// leads it hands its term to another seat (at most `--stop-grace-secs`), so that a planned restart
    /// costs the cluster a hand-off of about a block rather than a failover of `--leader-timeout`.
    #[arg(long, env = "DSTACK_MESH_NO_HANDOFF_ON_STOP")]
    pub no_handoff_on_stop: bool,
    /// The longest a SIGTERM waits for the hand-off to land, in seconds; keep it under the time the
    /// container runtime gives before SIGKILL (docker's default is 10 s). A second SIGTERM stops at once.
    #[arg(long, env = "DSTACK_MESH_STOP_GRACE_SECS", default_value_t = 8)]
    pub stop_grace_secs: u64,
    /// How often to re-read every record as a safety net, in seconds.
    #[arg(long, env = "DSTACK_MESH_FULL_READ_SECS", default_value_t = 60)]
    pub full_read_secs: u64,
    /// A funded key file that pays for registrations when the node's address has no funds. The only way to
    /// give the agent a transaction key: one in the environment is refused.
    #[arg(long, env = "DSTACK_MESH_TX_KEY_FILE")]
    pub tx_key_file: Option<PathBuf>,
    /// Whom this node asks for a seat while it has none: the address that will hold it. Default: the
    /// cluster's owner. The node asks on-chain (paid like a registration), with its binding, which only this
    /// holder can use; the holder then runs `meshctl bind --instance <this instance>`.
    #[arg(long, env = "DSTACK_MESH_HOLDER", value_parser = parse_address, value_name = "ADDRESS")]
    pub holder: Option<Address>,
    /// Do not ask for a seat on-chain while this node has none: its holder binds it with the binding
    /// `p2p-agent identity --bind-holder` prints in the instance.
    #[arg(long, env = "DSTACK_MESH_NO_SEAT_REQUEST", conflicts_with = "holder")]
    pub no_seat_request: bool,
    /// WireGuard key rotation epoch: each epoch is another random key, kept with the node key.
    #[arg(long, env = "DSTACK_MESH_WG_KEY_EPOCH", default_value_t = 0)]
    pub wg_key_epoch: u32,
    /// WireGuard implementation. `auto` takes the kernel's where it has the module, except for a node with no
    /// --endpoint: one behind a NAT gets a direct path to others only by hole punching, which needs the
    /// agent's own WireGuard socket, so it takes the userspace one.
    #[arg(
        long,
        env = "DSTACK_MESH_WG_BACKEND",
        value_enum,
        default_value = "auto"
    )]
    pub wg_backend: BackendArg,
    /// Turn off the userspace WireGuard's TUN offload: TCP super-packets in each TUN read and coalesced TUN
    /// writes (for a kernel whose offload misbehaves; the kernel backends do their own).
    #[arg(long, env = "DSTACK_MESH_NO_TUN_OFFLOAD")]
    pub no_tun_offload: bool,
    /// Turn off the userspace WireGuard's UDP GSO and GRO: runs of datagrams in one send and one receive.
    #[arg(long, env = "DSTACK_MESH_NO_UDP_OFFLOAD")]
    pub no_udp_offload: bool,
    /// The mesh interface's MTU. WireGuard adds 60 bytes to each packet over IPv4 (80 over IPv6), and its
    /// datagrams may not be fragmented: on a path that carries fewer than 1,500 bytes (a tunnel, PPPoE, some
    /// clouds) give the path's MTU minus 60 or less, on every node (say 1200 on a 1,280-byte path). The agent
    /// logs a warning, naming this flag, when it finds a peer's path too small for the MTU.
    #[arg(long, env = "DSTACK_MESH_MTU", default_value_t = mesh_wg::DEFAULT_MTU, value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,
    /// A STUN server (HOST:PORT) that the userspace WireGuard asks, from its own UDP socket, which public
    /// address and port its NAT maps it to, so that a peer behind another NAT can punch a direct path to it
    /// instead of using the relay. Repeatable (or comma-separated); two on different addresses also tell
    /// whether the NAT maps each destination apart (symmetric), where punching cannot work.
    #[arg(
        long = "stun-server",
        env = "DSTACK_MESH_STUN_SERVERS",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        default_values_t = DEFAULT_STUN_SERVERS.map(String::from),
        value_parser = parse_stun_server,
        conflicts_with = "no_stun"
    )]
    pub stun_servers: Vec<String>,
    /// Ask no STUN server (for a node with no way out to one): it then publishes only its interfaces'
    /// addresses and the address peers that reach it directly see.
    #[arg(long, env = "DSTACK_MESH_NO_STUN")]
    pub no_stun: bool,
    #[command(flatten)]
    pub peer_relay: PeerRelayArgs,
    /// Run this shell command after each peer-set change, with the peer list as JSON on stdin and a
    /// cleaned environment (no keys or RPC credentials).
    #[arg(long, env = "DSTACK_MESH_ON_CHANGE")]
    pub on_change: Option<String>,
    /// Run this shell command whenever the leadership changes as this node sees it (who leads, whether this
    /// node does, the term, whether it is confirmed, this node's health), with GET /v1/leader's JSON on
    /// stdin and the same cleaned environment.
    #[arg(long, env = "DSTACK_MESH_ON_LEADER_CHANGE")]
    pub on_leader_change: Option<String>,
    /// The application's health, for leadership: a GET to this http:// URL must answer 2xx (e.g. the
    /// database's health endpoint on loopback). Two failures in a row make this node unhealthy: it stops
    /// leading, and the others vote it out. Applications can also report with POST /v1/health.
    #[arg(
        long,
        env = "DSTACK_MESH_HEALTH_URL",
        value_name = "URL",
        conflicts_with = "health_cmd"
    )]
    pub health_url: Option<alloy::transports::http::reqwest::Url>,
    /// The application's health, for leadership: this shell command must exit 0 (run as the hooks are,
    /// its output discarded). Two failures in a row make this node unhealthy.
    #[arg(long, env = "DSTACK_MESH_HEALTH_CMD", value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// How often the health check runs, in milliseconds; a check that takes longer fails.
    #[arg(long, env = "DSTACK_MESH_HEALTH_INTERVAL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    pub health_interval_ms: u64,
    /// Kill the on-change command if it has not finished (reading its input included) after this long.
    #[arg(long, env = "DSTACK_MESH_HOOK_TIMEOUT_SECS", default_value_t = 30)]
    pub hook_timeout_secs: u64,
    /// Keep a marked block of `node-<tokenId>.<suffix>` names in this hosts file.
    #[arg(long, env = "DSTACK_MESH_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,
    /// The domain suffix of the hosts-file names.
    #[arg(long, env = "DSTACK_MESH_HOSTS_SUFFIX", default_value = "mesh")]
    pub hosts_suffix: String,
}

/// The STUN servers asked unless told otherwise: two operators, on different addresses, so that the NAT's
/// mapping behaviour can be told.
pub const DEFAULT_STUN_SERVERS: [&str; 2] = ["stun.l.google.com:19302", "stun.cloudflare.com:3478"];

/// `--stun-server`: a host (name or IPv4 address) and a port.
fn parse_stun_server(raw: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "{raw:?} is not HOST:PORT: give a STUN server such as stun.example.com:3478 or 192.0.2.1:3478"
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(['/', ' ']) || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad());
    }
    Ok(raw.to_owned())
}

/// `--leader-port`, `--replica-port`: where clients connect, and the service's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub listen: u16,
    pub target: u16,
}

fn parse_forward(raw: &str) -> Result<Forward, String> {
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p > 0);
    let (listen, target) = raw.split_once(':').unwrap_or((raw, raw));
    match (port(listen), port(target)) {
        (Some(listen), Some(target)) => Ok(Forward { listen, target }),
        _ => Err(format!(
            "{raw:?} is not LISTEN[:TARGET]: give the port clients connect to, and the service's port when it differs, such as 5432:5433 (ports 1 to 65535)"
        )),
    }
}

/// `--api-socket-mode`: octal permission bits, such as 0660 or 660.
/// dstack's own WireGuard interface to its gateway, made by the guest OS (`wg0` before 2025's releases).
const DSTACK_INTERFACE: &str = "dstack-wg0";

/// The UDP port of dstack's own WireGuard, which the guest's firewall opens to the gateway alone.
const DSTACK_WG_PORT: u16 = 9182;

/// A gateway base domain: a host name, with the gateway's port after it when that is not 443.
fn check_domain(domain: &str) -> anyhow::Result<()> {
    let (host, port) = domain.rsplit_once(':').unwrap_or((domain, ""));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host_ok = host.len() <= 253 && host.contains('.') && host.split('.').all(label_ok);
    let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
    if !host_ok || !port_ok {
        anyhow::bail!(
            "{domain:?} is not a gateway base domain: give the host name alone, like dstack-pha-prod7.phala.network (with :port when the gateway is not on 443), no scheme and no path"
        );
    }
    Ok(())
}

/// An app id as dstack writes it: 40 hex digits, with or without 0x.
pub fn parse_app_id(raw: &str) -> anyhow::Result<Address> {
    cli_env::address(raw)
        .map(Address::from)
        .map_err(|e| anyhow::anyhow!("not an app id (dstack's are 40 hex digits): {e}"))
}

/// An address flag's value, named as every binary names a mistyped one ([`cli_env::address`]).
fn parse_address(raw: &str) -> Result<Address, String> {
    cli_env::address(raw).map(Address::from)
}

fn parse_socket_mode(raw: &str) -> Result<u32, String> {
    let digits = raw.strip_prefix("0o").unwrap_or(raw);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{raw:?} is not a file mode: give octal permission bits such as 0660 (owner and group) or 0666 (anyone)"
        )),
    }
}

impl RunArgs {
    /// The WireGuard backend: `--wg-backend`, with `auto` meaning userspace for a node with no endpoint, which
    /// only the userspace device's hole punching gives a direct path behind a NAT.
    pub fn backend(&self) -> BackendChoice {
        match (self.wg_backend, self.endpoint) {
            (BackendArg::Auto, None) => BackendChoice::Userspace,
            (backend, _) => backend.into(),
        }
    }

    /// The STUN servers to ask: none with `--no-stun`.
    pub fn stun_servers(&self) -> Vec<String> {
        if self.no_stun {
            Vec::new()
        } else {
            self.stun_servers.clone()
        }
    }

    /// This node's gateway URL: given whole, or built from the base domain and port. dstack's
    /// `DSTACK_GATEWAY_DOMAIN` counts only when no flag names the gateway; its port is then the relay's unless
    /// `--gateway-port` says otherwise, so that on Phala the relay works with no variable of ours.
    pub fn gateway_url(&self, instance_id: &str) -> Option<String> {
        let relay = (self.mode == ModeArg::Wireguard && !self.no_relay).then_some(self.relay_port);
        match (&self.gateway_url, &self.gateway_domain, self.gateway_port) {
            (Some(url), _, _) => Some(url.clone()),
            (None, Some(domain), Some(port)) => {
                Some(format!("https://{instance_id}-{port}.{domain}"))
            }
            (None, None, port) => {
                let domain = self.dstack_gateway_domain.as_deref()?.trim();
                let port = port.or(relay)?;
                (!domain.is_empty()).then(|| format!("https://{instance_id}-{port}.{domain}"))
            }
            _ => None,
        }
    }

    /// Settings that cannot work, named with the flag to change.
    ///
    /// # Errors
    /// What is missing or conflicting.
    pub fn validate(&self) -> anyhow::Result<Address> {
        use anyhow::Context as _;
        let contract = self.contract.context(
            "--contract (or CLUSTER_CONTRACT) is required: the cluster contract's address",
        )?;
        if self.mode == ModeArg::Wireguard {
            mesh_wg::validate_ifname(&self.interface).context("--interface")?;
            if self.interface == DSTACK_INTERFACE {
                anyhow::bail!(
                    "--interface {DSTACK_INTERFACE} is the name of dstack's own WireGuard interface to its gateway, which the guest OS creates: give the mesh another name (the default is dmesh0)"
                );
            }
            if self.listen_port == DSTACK_WG_PORT {
                anyhow::bail!(
                    "--listen-port {DSTACK_WG_PORT} is the UDP port of dstack's own WireGuard to its gateway ({DSTACK_INTERFACE}), whose firewall drops everything but the gateway there: give the mesh another port (the default is 51820)"
                );
            }
            if self.listen_port == crate::leadership::heartbeat::PORT {
                anyhow::bail!(
                    "--listen-port {} is the UDP port of the leader's heartbeats on the overlay address; give WireGuard another port",
                    crate::leadership::heartbeat::PORT
                );
            }
        }
        self.check_forwards()?;
        if let Some(domain) = &self.dstack_gateway_domain {
            check_domain(domain).context("DSTACK_GATEWAY_DOMAIN")?;
        }
        if let Some(app) = &self.dstack_app_id {
            parse_app_id(app).context("DSTACK_APP_ID")?;
        }
        if self.mode == ModeArg::Tls && self.gateway_url("0").is_none() {
            anyhow::bail!(
                "--mode tls needs this node's gateway URL: pass --gateway-url, or --gateway-domain with --gateway-port (or --gateway-port beside the platform's DSTACK_GATEWAY_DOMAIN)"
            );
        }
        // Checked here rather than by clap, whose error would quote the URL and any key in it.
        self.endpoints.rpcs()?;
        if let Some(url) = &self.health_url
            && url.scheme() != "http"
        {
            anyhow::bail!(
                "--health-url must be an http:// URL of a service in this CVM (say http://127.0.0.1:8080/health), not {}://",
                url.scheme()
            );
        }
        if let Some(ws) = &self.rpc_ws_url {
            use mesh_chain::rpc::Transport;
            let Some(single) = self.endpoints.providers.single() else {
                anyhow::bail!(
                    "--rpc-ws-url conflicts with several --rpc-url providers: heads a subscription announces come from one provider, so with several the head a quorum agrees on is polled; drop --rpc-ws-url"
                );
            };
            match (
                Transport::of(ws).context("--rpc-ws-url")?,
                Transport::of(single)?,
            ) {
                (Transport::Http, _) => anyhow::bail!(
                    "--rpc-ws-url is for the subscription to new heads: give the provider's ws:// or wss:// URL (reads stay on --rpc-url)"
                ),
                (_, Transport::WebSocket) => anyhow::bail!(
                    "--rpc-ws-url conflicts with a ws:// --rpc-url, which carries the subscription itself: drop one of them"
                ),
                _ => {}
            }
        }
        Ok(contract)
    }

    /// `--leader-port` and `--replica-port`: they need the overlay, listen on a port each, and never forward to
    /// themselves.
    fn check_forwards(&self) -> anyhow::Result<()> {
        let all = self
            .leader_ports
            .iter()
            .map(|f| ("--leader-port", f))
            .chain(self.replica_ports.iter().map(|f| ("--replica-port", f)));
        let mut seen = std::collections::BTreeMap::new();
        for (flag, f) in all {
            if self.mode == ModeArg::Tls {
                anyhow::bail!(
                    "{flag} {} needs the overlay (--mode wireguard): in TLS mode peers have no overlay address to forward to",
                    f.listen
                );
            }
            if f.listen == f.target {
                anyhow::bail!(
                    "{flag} {}: when this node leads it forwards to 127.0.0.1:{}, which is the port itself; run the service on another port and give it as the target, such as {flag} {}:{}",
                    f.listen,
                    f.target,
                    f.listen,
                    f.listen.wrapping_add(1).max(1)
                );
            }
            if let Some(other) = seen.insert(f.listen, flag) {
                anyhow::bail!(
                    "{flag} {} conflicts with {other}, which listens on the same port: give each its own",
                    f.listen
                );
            }
        }
        Ok(())
    }

    /// How often the chain is polled (`--poll-interval-ms`, 50 ms at least).
    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms.max(50))
    }

    /// The lease, heartbeat and election times that `--leader-timeout` makes, if given; without it they
    /// follow from the chain's pace ([`crate::leadership::lease::Timing::for_pace`]).
    pub fn leader_timing(&self) -> Option<crate::leadership::lease::Timing> {
        self.leader_timeout.map(|secs| {
            crate::leadership::lease::Timing::for_timeout(std::time::Duration::from_secs(secs))
        })
    }

    /// How long a peer may be silent and be shown healthy (`--peer-timeout-ms`).
    pub fn liveness(&self) -> mesh_wg::Liveness {
        mesh_wg::Liveness {
            timeout: std::time::Duration::from_millis(self.peer_timeout_ms),
        }
    }

    /// Where new heads are followed by subscription: --rpc-ws-url, else a WebSocket --rpc-url; nowhere
    /// with several providers, whose agreed head is polled.
    pub fn subscription_url(&self) -> Option<alloy::transports::http::reqwest::Url> {
        use mesh_chain::rpc::Transport;
        let single = self.endpoints.providers.single()?;
        self.rpc_ws_url.clone().or_else(|| {
            matches!(Transport::of(single), Ok(Transport::WebSocket)).then(|| single.clone())
        })
    }
}

/// The key that pays for registrations: the one in `--tx-key-file`, else none.
///
/// # Errors
/// A key file that cannot be read or does not hold a private key.
pub fn tx_signer(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<alloy::signers::local::PrivateKeySigner>> {
    Ok(mesh_chain::tx_key::load(
        file,
        "--tx-key-file",
        REFUSED_KEY_VARIABLES[0],
        None,
    )?)
}

/// Where the agent keeps what it must not lose between runs: `--state-dir`, and the node's sealed keys in
/// it unless `--node-key-file` says otherwise. Shared by the daemon and the one-shot commands, which must
/// open the same keys.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Where the chain view (no secrets) and, unless --node-key-file says otherwise, the node's sealed keys
    /// are kept between runs: on the CVM's own volume.
    #[arg(
        long = "state-dir",
        env = "DSTACK_MESH_STATE_DIR",
        default_value = "/var/lib/p2p-agent"
    )]
    pub dir: PathBuf,
    /// The node's sealed keys (its node key and WireGuard keys, made in this CVM). Default: node-keys.sealed in
    /// the state directory. Keep it on the CVM's own volume: losing it means new keys, which the seat's holder
    /// binds again.
    #[arg(
        long = "node-key-file",
        env = "DSTACK_MESH_NODE_KEY_FILE",
        value_name = "PATH"
    )]
    pub node_key_file: Option<PathBuf>,
}

impl StateArgs {
    /// The node's key file: the one given, else the default in the state directory.
    pub fn key_file(&self) -> PathBuf {
        self.node_key_file
            .clone()
            .unwrap_or_else(|| self.dir.join(crate::keystore::FILE_NAME))
    }
}

mod peer_relay;

pub use peer_relay::{PeerRelayArgs, RelayForPeersArg};

#[cfg(test)]
mod tests;
