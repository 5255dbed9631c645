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

/// Makes `text` what a task's state shows as failing now. It is logged only when it changes, so a failure
/// that repeats on every poll is logged once.
fn show_error(slot: &mut Option<String>, text: String) {
    if slot.as_deref() != Some(&text) {
        warn!("{text}");
    }
    *slot = Some(text);
}

/// [`show_error`] for `what` failing with `e`, with the RPC's credentials scrubbed from it.
fn report(slot: &mut Option<String>, rpc: &RedactedUrl, what: &str, e: impl std::fmt::Display) {
    show_error(slot, format!("{what}: {}", rpc.scrub(&e.to_string())));
}
