//! What the API serves, as JSON with camelCase fields: the types users script against. Changing a field
//! changes the API.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};
use wg_key::Key;

mod leader;
mod peer_relay;
mod policy;

pub use leader::*;
pub use peer_relay::*;
pub use policy::*;

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
    /// Over UDP to its endpoint (registered, or learnt from its datagrams).
    Direct,
    /// Over UDP, through holes punched in both sides' NATs at a candidate address the peer published.
    Punched,
    /// Over UDP through another member that relays for the pair, because neither direct nor punched UDP
    /// gets through; [`Peer::relay_seat`] names it.
    PeerRelay,
    /// Through its relay, over the dstack gateway's TLS, because UDP does not get through.
    Relay,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Punched => "punched",
            Self::PeerRelay => "peer-relay",
            Self::Relay => "relay",
        }
    }
}

/// An address a node may be reached at directly, and where it was learnt: `local` (an interface's),
/// `stun` (what a STUN server saw) or `observed` (what a peer saw).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub address: String,
    pub source: String,
}

/// What this node knows of the NAT in front of it (`GET /v1/status`'s `nat`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nat {
    /// How the NAT maps the WireGuard socket: `endpoint-independent`, `address-dependent`,
    /// `address-and-port-dependent` (symmetric), `endpoint-dependent` (one of the two), `none`, or `unknown`.
    pub mapping: String,
    /// The public addresses STUN servers saw.
    pub mapped: Vec<String>,
    /// Each STUN server asked in the latest round.
    pub servers: Vec<StunServer>,
    /// What this node publishes to its peers.
    pub candidates: Vec<Candidate>,
    /// Unix seconds of the latest round.
    pub checked_at: Option<u64>,
}

/// One STUN server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StunServer {
    pub server: String,
    /// Absent when it did not answer.
    pub mapped: Option<String>,
    pub rtt_ms: Option<u64>,
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
    /// While relayed: why, and why hole punching has not brought it over UDP.
    #[serde(default)]
    pub path_reason: Option<String>,
    /// While on a peer relay: the seat relaying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_seat: Option<u64>,
    /// The addresses it published for a direct path, which punching tries.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Hole-punching attempts toward it so far.
    #[serde(default)]
    pub punch_attempts: u64,
    /// What to connect to: the overlay IP over WireGuard, else the gateway URL.
    pub address: Option<String>,
    /// It answers now: it sent something (data, a keepalive, an answer to a probe) within the agent's
    /// peer timeout (`--peer-timeout-ms`).
    pub healthy: bool,
    /// Unix seconds of the latest handshake; absent when there has been none.
    pub latest_handshake: Option<u64>,
    /// Unix seconds of the last time it was heard from; absent when never.
    #[serde(default)]
    pub last_heard: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// It is the cluster's leader.
    #[serde(default)]
    pub leader: bool,
    /// It is being drained (its heartbeats say so, or its seat is marked on-chain): replica ports leave it
    /// out, and no leader is handed to it.
    #[serde(default)]
    pub draining: bool,
    /// Its attestation, as this node verified it: every peer listed here passed (a refused one is in
    /// `/v1/peers/refused`). Absent only from an agent older than attestation.
    #[serde(default)]
    pub attestation: Option<Attestation>,
    /// Who holds its seat, as this node last read it (every full read, and at each transfer); absent until
    /// read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Address>,
    /// What the grants between seats let pass between it and this node; absent while no policy is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PeerPolicy>,
}

impl Peer {
    /// What applications see as a change of this peer: who it is (seat, instance, key), where and how it
    /// is reached (endpoint, address, connection, path), whether it is healthy, and whether it leads; not
    /// its counters or handshake time, which move all the time. The one definition, shared by the
    /// `--on-change` hook, `/v1/events`, [`crate::Client::monitor`] and the SDKs.
    pub fn change_key(&self) -> impl PartialEq + std::fmt::Debug + use<> {
        (
            (self.token_id, self.instance_id.clone(), self.wg_public_key),
            (
                self.endpoint.clone(),
                self.address.clone(),
                self.connection,
                self.path,
            ),
            (self.healthy, self.leader, self.draining),
        )
    }
}

/// Whether the peer list changed as applications see it: a peer came or went, or one's
/// [`Peer::change_key`] changed.
pub fn peers_changed(old: &[Peer], new: &[Peer]) -> bool {
    old.len() != new.len()
        || old
            .iter()
            .zip(new)
            .any(|(a, b)| a.change_key() != b.change_key())
}

/// Every [`RefusedPeer::kind`] an agent gives: the attestation's refusals (mesh-attest's tests check each is
/// here), `unbound` (a record with no binding read), `allowlist-unread` (the allowlists not yet read) and
/// `tcb-policy` (below the cluster's TCB policy past its grace and drop periods). `/metrics` shows each, at 0
/// when no seat is refused for it, so that a sum over them is 0 rather than empty.
pub const REFUSAL_KINDS: [&str; 19] = [
    "malformed",
    "collateral",
    "collateral-not-yet-valid",
    "collateral-expired",
    "collateral-mismatch",
    "signature",
    "debug",
    "tcb-status",
    "tcb-unknown",
    "os-not-allowed",
    "event-log",
    "app-mismatch",
    "compose-not-allowed",
    "key-provider",
    "instance-mismatch",
    "report-data-mismatch",
    "unbound",
    "allowlist-unread",
    "tcb-policy",
];

/// What a seat's evidence (its TDX quote and RTMR3 event log, from its on-chain binding) came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    pub verified: bool,
    /// Its platform's TCB status under the collateral, e.g. `UpToDate`; absent when refused.
    #[serde(default)]
    pub tcb_status: Option<String>,
    /// The compose hash its RTMR3 log names, 0x-hex; absent when refused.
    #[serde(default)]
    pub compose_hash: Option<String>,
    /// Until when (Unix seconds) the collateral it was verified under holds; after that, fresh collateral
    /// decides again. Absent when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral_until: Option<u64>,
    /// When refused: what failed, as one word (see [`RefusedPeer::kind`]).
    #[serde(default)]
    pub kind: Option<String>,
    /// When refused: why, and what to do. When below the cluster's TCB policy: how it falls short.
    #[serde(default)]
    pub reason: Option<String>,
    /// Verified, but below the cluster's TCB policy: `warned` (admitted), or `not-admitted` (kept only by the
    /// nodes that had it). Once dropped, the seat is refused as `tcb-policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcb_stage: Option<String>,
    /// When the next stage begins (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcb_stage_until: Option<u64>,
}

/// `GET /v1/peers/refused`: a seat with a record that this node does not configure because its evidence was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedPeer {
    pub token_id: u64,
    pub instance_id: String,
    /// What failed, one word: `signature`, `tcb-status`, `os-not-allowed`, `compose-not-allowed`,
    /// `instance-mismatch`, `report-data-mismatch`, `collateral-expired`, `debug`, `unbound`, ... (the
    /// metric `dstack_mesh_peers_refused` is labelled with it).
    pub kind: String,
    pub reason: String,
    /// For a seat below the cluster's TCB policy: its stage (`not-admitted`, kept only where it was
    /// configured before; a `dropped` one has no stage here, its kind says so), and when the next begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_until: Option<u64>,
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
    /// This node's own binding as its peers verify it; absent until its seat is bound and read.
    #[serde(default)]
    pub attestation: Option<Attestation>,
    /// Whom this node asked for a seat, while it has none (or its seat is bound to a key it lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seat_request: Option<SeatRequest>,
    /// This node is being drained (SIGTERM, `POST /v1/drain`, or its seat marked draining on-chain): it
    /// hands off if it leads, and replica ports leave it out.
    #[serde(default)]
    pub draining: bool,
}

/// A seatless node's request for a seat: the holder runs `meshctl bind --instance <instance>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeatRequest {
    /// Who may bind a seat to this node with the request.
    pub holder: Address,
    /// The request is on-chain; otherwise the binding is on the agent's stdout, for a relay (no funds).
    pub on_chain: bool,
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
    /// The cluster's mesh prefix (`10.0.1.0/24`, `10.1.0.0/16`, …): seat N's overlay address is its N-th
    /// host address. Absent until the chain (or the state file) has been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub last_error: Option<String>,
    /// Whom the view rests on: one provider (unverified), or a quorum of several, each with its record.
    #[serde(default)]
    pub verification: Verification,
}

/// Whether what this node believes of the chain is checked by more than one provider.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// More than one provider must answer each read alike: a lying one is outvoted, or stops the view.
    /// False with one provider: the view is what it says.
    pub verified: bool,
    /// How many providers must answer alike.
    pub quorum: usize,
    pub providers: Vec<Provider>,
    /// Reads no answer of which reached the quorum; the view stayed as it was.
    pub splits: u64,
    /// The last of those, naming who answered what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_split: Option<String>,
}

/// One JSON-RPC provider, as the quorum judges its answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// Its URL, credentials hidden.
    pub url: String,
    /// Answers among the quorum's, answers unlike it (ignored), and requests it did not answer.
    pub agreed: u64,
    pub dissented: u64,
    pub failed: u64,
    /// Its last answer was unlike the quorum's.
    pub dissenting: bool,
    /// The method of its last answer unlike the quorum's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dissent: Option<String>,
    /// Who answered alike that time: the quorum whose answer was taken. Either side may be the one that
    /// lies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dissented_from: Vec<String>,
    /// Why it does not answer, while it does not: its last error, or that a request has waited seconds for
    /// it. Absent while it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    /// For how long it has not answered, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_secs: Option<u64>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    /// The commit the agent was built from (as its `--version` names it); absent from an older agent.
    #[serde(default)]
    pub commit: Option<String>,
    /// Unix seconds of the agent's start; absent from an older agent.
    #[serde(default)]
    pub started_at: Option<u64>,
    pub mode: Mode,
    /// `userspace` or `kernel`; absent in TLS mode.
    pub backend: Option<String>,
    pub node: Node,
    pub chain: ChainStatus,
    pub uptime_secs: u64,
    pub peers_configured: usize,
    pub peers_healthy: usize,
    /// Seats with a record whose evidence this node refused (`/v1/peers/refused`).
    #[serde(default)]
    pub peers_refused: usize,
    /// The NAT in front of this node and its candidates; absent without the userspace device.
    #[serde(default)]
    pub nat: Option<Nat>,
    /// This node's part in the leader election: its vote, and its last ballot.
    #[serde(default)]
    pub election: Election,
    /// The ports this node forwards to the leader or the replicas (`--leader-port`, `--replica-port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::forwarded::ForwardedPort>,
    /// The outside dependencies that fail now, as this node sees them: an RPC provider, the chain, the
    /// PCCS, dstack's guest agent, the state directory, a peer's relay, the STUN servers. Empty while
    /// nothing fails.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// The grants between seats, as last read from the chain, and what they dropped here; absent until
    /// read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,
    /// This node as a peer relay; absent on the kernel's WireGuard and in TLS mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_relay: Option<PeerRelayStatus>,
}

/// An outside dependency that fails now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// One of [`FAULT_DEPENDENCIES`].
    pub dependency: String,
    /// What fails, in words that name the provider, server, directory or peer, and what goes on meanwhile.
    pub detail: String,
    /// Since when, in Unix seconds, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// The dependencies a [`Fault`] names: the metric `dstack_mesh_dependency_failing` has a sample for each.
pub const FAULT_DEPENDENCIES: [&str; 7] = [
    "rpc",
    "chain",
    "pccs",
    "dstack",
    "state-dir",
    "relay",
    "stun",
];

/// This node's part in the leader election, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Election {
    /// The seat this node's no-confidence vote stands against, as last read from the chain or cast.
    #[serde(default)]
    pub vote: Option<u64>,
    /// The last ballot this node sent, and what came of it; absent before its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ballot: Option<BallotReport>,
}

/// One ballot this node sent: what, why, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BallotReport {
    pub kind: BallotKind,
    /// The seat a vote is cast against, or the seat of the vote withdrawn.
    #[serde(default)]
    pub seat: Option<u64>,
    /// Why this node decided on it, in the agent's words.
    pub reason: String,
    pub outcome: BallotOutcome,
    /// Why it failed, with the RPC's credentials scrubbed; absent unless it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds at which it was sent.
    pub sent_at: u64,
}

/// A ballot's kind, as the contract's functions are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BallotKind {
    /// `electLeader`: there was no leader.
    Elect,
    /// `castVote`: no confidence in the seat named.
    Vote,
    /// `withdrawVote`: the seat voted against answers again.
    Withdraw,
}

/// What came of a ballot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BallotOutcome {
    /// Sent; no receipt yet.
    Pending,
    /// Mined.
    Mined,
    /// Another node's election landed first: nothing failed, the question was settled.
    Preempted,
    /// Reverted, or not sent (no funds, the RPC): `error` says why.
    Failed,
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
    /// How long each poll of the chain took: its head, and the logs of new blocks.
    #[serde(default)]
    pub chain_polls: crate::latency::Latency,
    /// How long each change of the interface took, from the plan to the device having it.
    #[serde(default)]
    pub reconcile: crate::latency::Latency,
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
    /// Times this node stopped reporting itself leader while the contract still named it (its lease ran
    /// out, or it became unhealthy).
    #[serde(default)]
    pub stepdowns: u64,
    /// Heartbeats refused: malformed, or not from the overlay address of a member.
    #[serde(default)]
    pub heartbeats_refused: u64,
    /// Ballots due that this node held back because it had sent one less than a leader timeout before
    /// (at most one per timeout): more than a few means the decisions loop, which is a bug.
    #[serde(default)]
    pub ballots_held: u64,
    /// How long each ballot took, from sending it to its receipt (or its failure).
    #[serde(default)]
    pub ballots: crate::latency::Latency,
    /// Hand-offs this node made that landed, and those given up (no seat would take the lead).
    #[serde(default)]
    pub handoffs: u64,
    #[serde(default)]
    pub handoffs_given_up: u64,
    /// How long each landed hand-off took, from releasing the term to the view showing the next.
    #[serde(default)]
    pub handoff_times: crate::latency::Latency,
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
    /// Shared: a snapshot is copied for every read of the API and every event stream, and the list is most
    /// of it.
    pub peers: Arc<[Peer]>,
    /// Whether `peers` is known: it comes from a view of the chain (read, or from the state file), and the
    /// tunnels a (re)started node makes again have had their first handshake (or their time). Until then the
    /// event streams send nothing, so that a client that reconnects to a restarted agent is not told that
    /// every peer left.
    pub peers_known: bool,
    /// Seats refused for their evidence.
    pub refused: Vec<RefusedPeer>,
    pub leader: Leader,
    pub counters: Counters,
    /// The agent's own health check (`--health-url`, `--health-cmd`), if it runs one: with the
    /// application's reports, what `/v1/health` says.
    pub check: Option<crate::signal::CheckSignal>,
}

impl Snapshot {
    /// The snapshot as of `now`: see [`Leader::as_of`].
    #[must_use]
    pub fn as_of(&self, now: Instant) -> Self {
        Self {
            leader: self.leader.as_of(now),
            ..self.clone()
        }
    }
}
