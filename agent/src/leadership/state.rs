//! What the leadership's machine publishes ([`super::machine::Machine::state`]): the leader task's state, for
//! the publisher and the API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::state::Fault;

/// The leader task's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// The seat this node's vote is against, as last read or cast.
    pub vote: Option<u64>,
    /// Whether each watched seat (the leader, the vote's target) answered a recent heartbeat.
    pub answering: BTreeMap<u64, bool>,
    pub counters: mesh_api::ElectionCounters,
    /// Why the last ballot or read failed; already logged.
    pub error: Option<Fault>,
    /// Whether this node leads, and until when ([`super::lease`]).
    pub claim: super::lease::Claim,
    /// This node's health, as the claim was decided on it.
    pub health: mesh_api::HealthSignal,
    /// When the seat named leader last answered this node as leading under the view's term: when the
    /// ping it answered was sent.
    pub leader_confirmed_at: Option<Instant>,
    /// The last ballot this node sent, and what came of it.
    pub last_ballot: Option<BallotLog>,
    /// The hand-off this node is making, while it is.
    pub handoff: Option<HandOffLog>,
    /// Why the last hand-off could not be made, once it was given up.
    pub handoff_error: Option<Fault>,
    /// The last hand-off this node made that landed.
    pub last_handoff: Option<HandedOff>,
    /// This node is being drained: asked to (SIGTERM, the API), or its seat marked draining on-chain.
    pub draining: bool,
    /// The other seats being drained: heard so lately, or marked on-chain.
    pub draining_peers: std::collections::BTreeSet<u64>,
}

/// A hand-off under way ([`super::machine`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOffLog {
    /// The term given up.
    pub term: u64,
    /// The successor the transaction names.
    pub to: u64,
    /// Why: `asked` or `drain`.
    pub cause: &'static str,
    pub since: Instant,
    /// Why the last attempt failed; the publisher renders it, scrubbed of the RPC's credentials.
    pub error: Option<Fault>,
}

/// A hand-off that landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOff {
    /// The term given up.
    pub term: u64,
    /// The leader the view named after it.
    pub to: Option<u64>,
    pub cause: &'static str,
    /// From the release to the view showing the new term.
    pub took: Duration,
}

/// A ballot this node sent, as the API reports it ([`mesh_api::BallotReport`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BallotLog {
    pub ballot: mesh_chain::election::Ballot,
    /// The seat of the vote a withdrawal takes back.
    pub withdrawn: Option<u64>,
    pub reason: String,
    pub sent: Instant,
    pub outcome: mesh_api::BallotOutcome,
    /// Why it failed; the publisher renders it, scrubbed of the RPC's credentials.
    pub error: Option<Fault>,
}
