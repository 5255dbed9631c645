//! `p2p-agent`, the dstack-mesh agent: what runs inside each TEE. The cluster contract, the WireGuard
//! interface, dstack and the local API each have their crate (`mesh-chain`, `mesh-wg`, `dstack-guest`,
//! `mesh-api`); this one has what is the agent's own:
//!
//! - [`identity`]: this node as dstack attests it: its peer key and its WireGuard key.
//! - [`cache`]: the chain view kept in `--state-dir`, so a restart without the RPC brings the mesh up.
//! - [`hooks`]: the `--on-change` command, run with a cleaned environment and a time limit.

pub mod cache;
pub mod hooks;
pub mod identity;
