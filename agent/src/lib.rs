//! `p2p-agent`, the dstack-mesh agent: what runs inside each TEE. The cluster contract, the WireGuard
//! interface, dstack and the local API each have their crate (`mesh-chain`, `mesh-wg`, `dstack-guest`,
//! `mesh-api`); this one has what is the agent's own:
//!
//! - [`config`]: the daemon's flags.
//! - [`identity`] and [`keystore`]: this node: its instance, and its node and WireGuard keys, made in the CVM
//!   and sealed on its volume.
//! - [`run`]: the daemon, a set of [`tasks`] passing [`state`] one way under one cancellation token.
//! - [`desired`], [`election`], [`lease`] and [`snapshot`]: the decisions, pure: this node's peers, its
//!   part in the leader election, when it may say it leads, and what the API serves.
//! - [`heartbeat`]: the leader's heartbeats over the mesh, their wire format and what each means.
//! - [`cache`]: the chain view kept in `--state-dir`, so a restart without the RPC brings the mesh up.
//! - [`causes`]: an error with its whole chain of causes, for logs and the API.
//! - [`hooks`]: the `--on-change` command and the hosts file.
//! - [`commands`]: the one-shot subcommands.

pub mod attestation;
pub mod cache;
pub mod causes;
pub mod commands;
pub mod config;
pub mod desired;
pub mod election;
pub mod heartbeat;
pub mod hooks;
pub mod identity;
pub mod keystore;
pub mod lease;
pub mod run;
pub mod snapshot;
pub mod state;
pub mod tasks;
