//! `p2p-agent`, the dstack-mesh agent: what runs inside each TEE. The cluster contract, the WireGuard
//! interface, dstack and the local API each have their crate (`mesh-chain`, `mesh-wg`, `dstack-guest`,
//! `mesh-api`); this one has what is the agent's own:
//!
//! - [`config`]: the daemon's flags.
//! - [`node`] and [`keystore`]: this node: its instance, and its node and WireGuard keys, made in the CVM
//!   and sealed on its volume.
//! - [`run`]: the daemon, a set of [`tasks`] passing [`state`] one way under one cancellation token.
//! - [`desired`], [`disputes`], [`tcb_stages`] and [`snapshot`]: decisions, pure: this node's peers, the
//!   bindings it disputes, the stages of a peer below the cluster's TCB policy, and what the API serves.
//! - [`leadership`]: this node's part in the cluster's leadership as a sans-IO machine (its heartbeats,
//!   ballots and lease), which the leader task drives.
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
pub mod disputes;
pub mod faults;
pub mod hooks;
pub mod keystore;
pub mod leadership;
pub mod node;
pub mod registration;
pub mod run;
pub mod snapshot;
pub mod state;
pub mod tasks;
pub mod tcb_stages;
