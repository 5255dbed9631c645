//! The agent's tasks. Each owns its state, reports its own errors, and publishes on a `watch` channel for
//! the tasks after it; all run under one cancellation token ([`crate::run`]).
//!
//! ```text
//! chain ──ChainState──┬──> registrar ──RegState──┐
//!                     ├──> mesh ──────MeshState──┼──> publisher ──Snapshot──> API, hooks
//!                     └──────────────────────────┘
//! ```

pub mod chain;
pub mod mesh;
pub mod publisher;
pub mod registrar;
