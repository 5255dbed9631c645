//! The agent's tasks. Each owns its state, reports its own errors, and publishes on a `watch` channel for
//! the tasks after it; all run under one cancellation token ([`crate::run`]).
//!
//! ```text
//! chain ──ChainState──┬──> registrar ──RegState────────────┐
//!                     ├──> mesh ──────MeshState──┬─────────┼──> publisher ──Snapshot──> API, hooks
//!                     ├──────────────────────────┴> leader ─┤ LeaderState
//!                     └─────────────────────────────────────┘
//! ```

pub mod attestor;
pub mod chain;
pub mod health;
pub mod leader;
pub mod mesh;
pub mod publisher;
pub mod registrar;

use mesh_chain::redact::RedactedUrl;
use tracing::warn;

use crate::state::Fault;

/// Makes `fault` what a task's state shows as failing now. It is logged only when it reads differently,
/// so a failure that repeats on every poll is logged once.
fn show_fault(slot: &mut Option<Fault>, rpc: &RedactedUrl, fault: Fault) {
    if slot.as_ref() != Some(&fault) {
        warn!("{}", fault.render(rpc));
    }
    *slot = Some(fault);
}
