//! In-process pieces, for tests that need no namespace:
//! - [`node`]: a simulated dstack instance; [`chain`]: a real anvil on a free loopback port, and a cluster
//!   deployed on it.
//! - [`api`]: the agent's real API server, serving a fixture snapshot; [`meshctl`]: the CLI against anvil.
//! - [`rpc_proxy`]: a JSON-RPC proxy in front of anvil that tests make fail or lie; [`tcp_relay`]: a TCP
//!   relay they cut and restore (a WebSocket that drops).
//! - [`swarm`]: simulated WireGuard peers, a boringtun `Tunn` and a UDP socket each, for the benchmark of
//!   one agent facing a thousand.

pub mod api;
pub mod chain;
pub mod meshctl;
pub mod node;
pub mod rpc_proxy;
pub mod swarm;
pub mod tcp_relay;
