//! The agent's tasks. Each owns its state, reports its own errors, and publishes on a `watch` channel for
//! the tasks after it; all run under one cancellation token ([`crate::run`]).
//!
//! ```text
//! chain ──ChainState──┬──> registrar ──RegState──────────────┐
//!                     ├──> mesh ──────MeshState──┬───────────┼──> publisher ──Snapshot──> API, hooks
//!                     │                          ▼           │
//!                     ├─────────────────────> leader ────────┤ LeaderState
//!                     ├──> disputer (sends disputes of false bindings; publishes nothing)
//! dstack watch (is dstack's guest agent there?) ──Option<Failing>──> publisher
//! health ─────────────┼────CheckSignal──────>                │
//! API POST /v1/health ┴────AppReport────────>                │
//!                     └──────────────────────────────────────┘
//! Snapshot ──> ports (--leader-port, --replica-port: forward to the leader's or a replica's service)
//! ```
//!
//! Each task builds its own settings from the daemon's flags (`from_args`), given what they share ([`Shared`]).

pub mod chain;
pub mod disputer;
pub mod dstack;
pub mod health;
pub mod leader;
pub mod mesh;
pub mod ports;
pub mod publisher;
pub mod registrar;

use std::sync::Arc;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use mesh_chain::cluster::Cluster;
use mesh_chain::redact::RedactedUrl;
use tracing::warn;

use crate::node::NodeIdentity;

use crate::state::Fault;

/// What every task is built from besides the flags: the cluster, the RPC providers as logs may show them,
/// who this node is, the key that pays for its transactions, and dstack (for the quote of a seatless node's
/// request).
pub struct Shared {
    pub contract: Address,
    /// Every provider, credentials hidden: what messages show, and scrub.
    pub rpc: RedactedUrl,
    /// The one handle on the chain: the cluster through every provider, connected once. Every read and
    /// transaction of every task goes through it.
    pub cluster: Cluster,
    pub identity: Arc<NodeIdentity>,
    pub tx_key: Option<PrivateKeySigner>,
    pub dstack: dstack_guest::DstackClient,
}

/// Sleeps until `deadline`, or for ever without one: a machine's next deadline, for its driver.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Makes `fault` what a task's state shows as failing now. It is logged only when it reads differently,
/// so a failure that repeats on every poll is logged once.
fn show_fault(slot: &mut Option<Fault>, rpc: &RedactedUrl, fault: Fault) {
    if slot.as_ref() != Some(&fault) {
        warn!("{}", fault.render(rpc));
    }
    *slot = Some(fault);
}
