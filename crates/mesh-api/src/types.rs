//! What the API serves, as JSON with camelCase fields: the types users script against. Changing a field
//! changes the API.

use std::net::Ipv4Addr;

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};
use wg_key::Key;

/// Where the agent serves its API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/p2p-agent/api.sock";

/// How the agent reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// Over the WireGuard tunnel, at the peer's overlay IP.
    Wireguard,
    /// Over the peer's TLS-gateway URL, because its tunnel is not healthy (or it runs in TLS mode).
    TlsGateway,
    /// Neither: the tunnel is down and the peer registered no gateway URL.
    Unreachable,
}

/// Which way a WireGuard peer's datagrams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// Over UDP to its endpoint.
    Direct,
    /// Through its relay, over the dstack gateway's TLS, because UDP does not get through.
    Relay,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relay => "relay",
        }
    }
}

/// The agent's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A WireGuard interface, with the gateway URL as fallback.
    Wireguard,
    /// No interface: peers are reached through their TLS-gateway URLs.
    Tls,
}

/// One peer as applications see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub token_id: u64,
    pub instance_id: String,
    pub overlay_ip: Ipv4Addr,
    /// Base64, as `wg` prints keys; absent for a TLS-only peer.
    pub wg_public_key: Option<Key>,
    pub endpoint: Option<String>,
    pub gateway_url: Option<String>,
    pub connection: ConnectionKind,
    /// Which way its WireGuard datagrams go; absent for a peer with no tunnel (TLS mode, or no key).
    #[serde(default)]
    pub path: Option<Path>,
    /// Where its relay is reached, worked out from its gateway URL; absent when it has none.
    #[serde(default)]
    pub relay_url: Option<String>,
    /// What to connect to: the overlay IP over WireGuard, else the gateway URL.
    pub address: Option<String>,
    pub healthy: bool,
    /// Unix seconds of the latest handshake; absent when there has been none.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// It is the cluster's leader.
    #[serde(default)]
    pub leader: bool,
}

/// `GET /v1/leader`: the seat the cluster contract names leader, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    /// Absent while no leader is elected.
    pub token_id: Option<u64>,
    /// Absent when no believed record names the leader's instance.
    pub instance_id: Option<String>,
    pub overlay_ip: Option<Ipv4Addr>,
    /// What to connect to, as a peer's `address`; this node's own overlay IP when it leads.
    pub address: Option<String>,
    /// This node leads.
    pub is_self: bool,
    /// Whether this node reaches the leader over the mesh now; absent when it leads, or has not probed yet.
    pub reachable: Option<bool>,
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub instance_id: String,
    pub app_id: Address,
    /// Absent until a seat is bound to this instance.
    pub token_id: Option<u64>,
    pub overlay_ip: Option<Ipv4Addr>,
    /// Absent in TLS mode.
    pub wg_public_key: Option<Key>,
    pub interface: Option<String>,
    pub listen_port: Option<u16>,
    pub endpoint: Option<String>,
    pub gateway_url: Option<String>,
    /// Whether this node's record on-chain is the one it wants.
    pub registered: bool,
    /// Why it cannot register now (no seat, no funds, the RPC), in the agent's words; absent otherwise.
    #[serde(default)]
    pub registration_error: Option<String>,
}

/// Where the agent is with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainStatus {
    pub contract: Address,
    pub chain_id: Option<u64>,
    pub rpc_url: String,
    pub head: Option<u64>,
    pub last_processed_block: Option<u64>,
    /// `head - lastProcessedBlock`.
    pub lag: Option<u64>,
    /// The peer set came from the on-disk cache because the RPC has not answered since start.
    pub from_cache: bool,
    /// New heads come by WebSocket subscription now; otherwise the agent polls.
    #[serde(default)]
    pub subscribed: bool,
    pub last_error: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub mode: Mode,
    /// `userspace` or `kernel`; absent in TLS mode.
    pub backend: Option<String>,
    pub node: Node,
    pub chain: ChainStatus,
    pub uptime_secs: u64,
    pub peers_configured: usize,
    pub peers_healthy: usize,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub reconciles: u64,
    pub registrations: u64,
    pub rpc_errors: u64,
    pub invalid_records: u64,
    /// JSON-RPC requests made to follow the chain (reads and log queries, not registrations).
    #[serde(default)]
    pub chain_requests: u64,
    /// Of those, polls of the chain's head (`eth_blockNumber`, one per poll interval): the rest is what new
    /// blocks and full reads cost.
    #[serde(default)]
    pub chain_head_polls: u64,
    #[serde(default)]
    pub relay: RelayCounters,
    #[serde(default)]
    pub election: ElectionCounters,
}

/// This node's part in the leader election.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElectionCounters {
    /// No-confidence votes this node cast, withdrew, and elections it called, mined.
    pub votes_cast: u64,
    pub votes_withdrawn: u64,
    pub elections: u64,
    /// Ballots that failed (a revert, no funds, the RPC).
    pub failures: u64,
}

/// The relay's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayCounters {
    /// Relay streams open now, dialled and accepted.
    pub streams_open: u64,
    pub streams_accepted: u64,
    pub streams_dialled: u64,
    /// Streams refused because too many were open.
    pub streams_refused: u64,
    /// Streams closed because a frame was not a WireGuard message.
    pub streams_malformed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams dropped because they were for no peer of this node (strangers' keys), by the path they
    /// came on.
    pub unknown_udp: u64,
    pub unknown_relay: u64,
}

/// What the API serves: the daemon publishes a new one whenever something changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub status: Status,
    pub peers: Vec<Peer>,
    pub leader: Leader,
    pub counters: Counters,
}
