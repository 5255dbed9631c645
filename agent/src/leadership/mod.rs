//! This node's part in the cluster's leadership, pure: the [`machine`] that keeps it, over the rules it
//! follows. The leader task ([`crate::tasks::leader`]) drives the machine with a socket, the chain and a
//! clock; the tests drive several with none of them ([`sim`]).
//!
//! - [`heartbeat`]: the heartbeats between the agents over the mesh, their wire format and what each means.
//! - [`election`]: which ballot this node casts: elect, vote against the leader, withdraw.
//! - [`lease`]: when this node may say it leads (`isSelf`), and what it tells the others of itself.
//! - [`machine`]: all of it as one sans-IO state machine: `handle_*` in, `poll_*` out.
//! - [`state`]: what the machine publishes.

pub mod election;
pub mod heartbeat;
pub mod lease;
pub mod machine;
#[cfg(test)]
mod sim;
pub mod state;
