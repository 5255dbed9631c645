//! What the agent's tasks publish, each on its own `watch` channel, for the tasks after it: the chain task's
//! [`ChainState`], the registrar's [`RegState`] and the mesh task's [`MeshState`]; the leader task's is its
//! machine's ([`crate::leadership::state::LeaderState`]). Data flows one way: chain → registrar, chain →
//! mesh, chain and mesh → leader, and all four → publisher. Why a task fails is a [`Fault`], which the
//! publisher renders.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use mesh_chain::election::ElectionError;
use mesh_chain::error::ChainError;
use mesh_chain::follow::FullReadError;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::RegistrationError;
use mesh_chain::roster::Members;
use mesh_chain::view::ChainView;
use mesh_wg::{Key, PeerStatus};

/// This node's seat, as far as the chain task knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeatState {
    /// Not known yet: the chain has not answered, and the cached view holds no record of this instance.
    #[default]
    Unknown,
    /// No seat is bound to this instance.
    None,
    /// Bound and active: the node is a member.
    Active(u64),
    /// Bound, but deactivated by its holder: no record until it is activated again.
    Inactive(u64),
}

impl SeatState {
    /// The seat, while it is active.
    pub fn token(self) -> Option<u64> {
        match self {
            SeatState::Active(t) => Some(t),
            _ => None,
        }
    }

    /// The chain says this node is not a member (as opposed to: not known yet).
    pub fn is_out(self) -> bool {
        matches!(self, SeatState::None | SeatState::Inactive(_))
    }
}

/// The chain task's state.
#[derive(Debug, Clone, Default)]
pub struct ChainState {
    /// What this node believes of the chain: from the RPC, or from the state file until the RPC answers.
    /// Only attested seats' records are in it, and this node's own.
    pub view: Option<Arc<ChainView>>,
    /// Each seat with a record or a binding, attested or refused (this node's own included, as its peers
    /// judge it).
    pub attestations: Arc<crate::attestation::Attestations>,
    /// The view came from the state file: the RPC has not answered since start.
    pub from_cache: bool,
    /// When the last read that confirmed the view began ([`mesh_chain::follow::Tick::confirmed`]): the
    /// view is true of the chain as of then. None while it is only the state file's.
    pub confirmed_at: Option<Instant>,
    /// New heads come by subscription now.
    pub subscribed: bool,
    /// The newest block the RPC reported.
    pub head: Option<u64>,
    pub seat: SeatState,
    /// Why following the chain fails now; already logged.
    pub error: Option<Fault>,
    /// Why this node has no active seat, with what to run; already logged. Kept apart from `error`, which
    /// every read of the chain sets anew, while the seat is looked up only every few seconds.
    pub seat_error: Option<SeatProblem>,
    /// JSON-RPC requests made to follow the chain.
    pub requests: u64,
    /// How long each poll of the chain took.
    pub poll_latency: mesh_api::latency::Latency,
    /// Of those, polls of the chain's head.
    pub head_polls: u64,
    /// Records refused: not authentic, or older than what was known.
    pub rejected: u64,
    pub rpc_errors: u64,
    /// What each provider answered, against the quorum's answers (one provider: unverified). The publisher
    /// fills it from the providers' live report when it renders.
    pub rpcs: mesh_chain::quorum::QuorumReport,
    /// The chain has stopped making blocks, as far as this node can tell ([`mesh_chain::stall`]).
    pub stalled: Option<Failing>,
    /// The PCCS's last fetch failed; the cached collateral serves meanwhile.
    pub collateral_failing: Option<Failing>,
    /// The state file could not be written (a full or read-only volume); it is tried again at every step.
    pub save_failing: Option<Failing>,
    /// The chain's pace, as read at start (or kept in the state file until the RPC answers).
    pub pace: Option<mesh_chain::pace::BlockPace>,
    /// The cluster's grants between seats (who may reach whom), as last read; none until first read.
    pub grants: Option<Arc<mesh_chain::policy::ClusterPolicy>>,
    /// The leader timeout: `--leader-timeout`, or else the chain's pace's, set once and kept for the agent's
    /// life (the lease's safety rests on every node keeping its timeout). None until known.
    pub leader_timeout: Option<Duration>,
}

/// An outside dependency failing, as a task saw it: since when, and why, in words that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub since: std::time::SystemTime,
    pub why: String,
}

/// The registrar's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegState {
    /// The node's record on-chain is the one it wants, and its peers believe it.
    pub registered: bool,
    /// Why registering fails now; already logged.
    pub error: Option<Fault>,
    pub registrations: u64,
    pub rpc_errors: u64,
    /// This node's request for a seat, while it has none (or its seat is bound to another node key).
    pub seat_request: Option<SeatRequest>,
}

/// Whom this node asked for a seat, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatRequest {
    pub holder: Address,
    /// On-chain (`requestBinding`); otherwise on the agent's stdout, for a relay.
    pub on_chain: bool,
}

/// The interface, as the mesh task created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ifname: String,
    pub listen_port: u16,
    /// `userspace` or `kernel`.
    pub backend: &'static str,
}

/// The mesh task's state.
/// The interface's peers by key, with their handshakes and counters. A copy shares the map, and a change
/// to a few peers copies a path of it, not the statuses of a thousand.
pub type PeerStats = imbl::OrdMap<Key, PeerStatus>;

#[derive(Debug, Clone, Default)]
pub struct MeshState {
    /// The interface, while there is one (never in TLS mode).
    pub device: Option<DeviceInfo>,
    /// The peers this node offers applications: every believed, usable record but its own.
    pub members: Members,
    /// `members` comes from a view of the chain and their tunnels have settled (`tasks::mesh::settled`):
    /// before, the list is not known, rather than empty or every peer unreachable.
    pub known: bool,
    /// The interface's peers, with their handshakes and counters.
    pub stats: PeerStats,
    /// Believed records that are not usable peers (see `mesh_chain::membership::InvalidRecord`).
    pub invalid_records: u64,
    /// Plans that changed the interface.
    pub reconciles: u64,
    /// How long each of those took to apply.
    pub reconcile_latency: mesh_api::latency::Latency,
    /// The relay's streams and the datagrams dropped for strangers' keys.
    pub relay: mesh_api::RelayCounters,
    /// What the userspace device knows of its NAT; `None` on the kernel's WireGuard or without an interface.
    pub nat: Option<mesh_wg::NatStatus>,
    /// The userspace device as a peer relay; `None` on the kernel's WireGuard or without an interface.
    pub peer_relay: Option<mesh_wg::PeerRelayStatus>,
    /// Peers' packets the grants between seats dropped on the interface, by why.
    pub policy_dropped: mesh_wg::DropCounts,
    /// The grants between seats the interface enforces: those of its last plan. Without an interface to
    /// plan (TLS mode, or no active seat), those last read.
    pub policy: Option<Arc<mesh_chain::policy::ClusterPolicy>>,
}

/// Why a task fails now: what it was doing, and the typed error with its causes. The publisher renders it
/// for the API ([`Fault::render`]); `Arc`s keep the states cheap to clone.
#[derive(Debug, Clone)]
pub struct Fault {
    pub doing: Cow<'static, str>,
    pub error: FaultError,
}

/// The errors a task's state carries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Chain(Arc<ChainError>),
    #[error(transparent)]
    Registration(Arc<RegistrationError>),
    #[error(transparent)]
    Election(Arc<ElectionError>),
    #[error("the RPC did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The follower's own account of its failing full reads (it keeps reading events meanwhile).
    #[error("{0}; following events meanwhile")]
    FullRead(FullReadError),
    #[error(
        "no funded sender: fund this node's address with `meshctl fund {node} --amount 0.01`, or give the agent --tx-key-file; meanwhile the signed registration is on the agent's stdout for `meshctl relay -`"
    )]
    NoFundedSender { node: Address },
    #[error(
        "no funded sender to ask for a seat on-chain: fund this node's address with `meshctl fund {node} --amount 0.01`, or give the agent --tx-key-file; meanwhile its binding for {holder} is on the agent's stdout, for `meshctl bind --binding FILE`"
    )]
    NoFundedRequester { node: Address, holder: Address },
    #[error(transparent)]
    Binding(Arc<crate::node::BindingError>),
}

impl From<ChainError> for FaultError {
    fn from(e: ChainError) -> Self {
        Self::Chain(Arc::new(e))
    }
}

impl From<RegistrationError> for FaultError {
    fn from(e: RegistrationError) -> Self {
        Self::Registration(Arc::new(e))
    }
}

impl From<crate::node::BindingError> for FaultError {
    fn from(e: crate::node::BindingError) -> Self {
        Self::Binding(Arc::new(e))
    }
}

impl From<ElectionError> for FaultError {
    fn from(e: ElectionError) -> Self {
        Self::Election(Arc::new(e))
    }
}

impl Fault {
    pub fn new(doing: impl Into<Cow<'static, str>>, error: impl Into<FaultError>) -> Self {
        Self {
            doing: doing.into(),
            error: error.into(),
        }
    }

    /// What the API and the log show: what was being done, and the whole cause chain, with the RPC's
    /// credentials scrubbed (an RPC error may quote its URL).
    pub fn render(&self, rpc: &RedactedUrl) -> String {
        rpc.scrub(&format!(
            "{}: {}",
            self.doing,
            crate::causes::Causes(&self.error)
        ))
    }
}

/// Two faults are the same failure when they read the same: a retry that fails alike is not news.
impl PartialEq for Fault {
    fn eq(&self, other: &Self) -> bool {
        self.doing == other.doing && self.error.to_string() == other.error.to_string()
    }
}

impl Eq for Fault {}

/// Why this node has no active seat, with what to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeatProblem {
    #[error(
        "seat {token} of this instance is deactivated: it has no record until its holder runs `meshctl activate --token {token}`"
    )]
    Inactive { token: u64 },
    /// No seat is bound to this instance: the message says how to bind one.
    #[error("{}", RegistrationError::NoSeat { contract: *contract, instance_id: instance_id.clone() })]
    NotBound {
        contract: Address,
        instance_id: String,
    },
}

impl SeatProblem {
    /// The problem as the status says it, given whom the node asked for a seat: then the holder's one
    /// command, rather than every way to bind.
    pub fn explain(&self, request: Option<&SeatRequest>) -> String {
        match (self, request) {
            (
                SeatProblem::NotBound {
                    contract,
                    instance_id,
                },
                Some(SeatRequest {
                    holder,
                    on_chain: true,
                }),
            ) => format!(
                "no seat is bound to this instance yet: it asked {holder} for one on-chain; the holder runs `meshctl bind --contract {contract} --instance {instance_id}` (with --allow-os if peers do not allow its OS image yet)"
            ),
            (
                SeatProblem::NotBound { instance_id, .. },
                Some(SeatRequest {
                    holder,
                    on_chain: false,
                }),
            ) => format!(
                "no seat is bound to this instance ({instance_id}) yet, and it has no funds to ask on-chain: its binding for {holder} is on the agent's stdout, for `meshctl bind --binding FILE`; or fund this node's address (`meshctl fund`) and it asks by itself"
            ),
            _ => self.to_string(),
        }
    }
}
