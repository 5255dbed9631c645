//! The system in namespaces, each piece borrowing the one before, so teardown runs in order; a module uses
//! only those before it here, and the folders below (`in_process`, `measure`, `net`, `run`):
//! - [`lan`]: a LAN of node namespaces behind a bridge, with anvil on it; each node on the bridge, or behind
//!   what [`crate::net::uplink`] builds: a NAT router of one of four kinds, or slirp4netns; and coturn.
//! - [`cluster`]: a cluster deployed there, with one `dstack-simulator` per node, and `meshctl`.
//! - [`agent`]: the real `p2p-agent` daemon in a node's namespace, started by one builder
//!   ([`agent::AgentBuilder`]), what it reads of it, and what a scenario asks of several.
//! - [`gateway`]: a stand-in for the dstack gateway (nginx terminating TLS, routing by SNI) for the relay.
//! - [`apps`]: applications on the mesh, the SDK's scripts and the examples, and HTTP to them.
//! - [`convergence`]: when the chain holds a change, and when each agent's API shows it.
//! - [`sampler`]: one path of every agent's API, asked of all at once every few milliseconds; with it,
//!   [`leadership`]: who claims to lead, and [`liveness`]: which peers each agent says are healthy.
//! - [`term_echo`]: a TCP service that says which seat and term it answers under, for the forwarded ports.
//! - [`attack`]: what the attacker does in the scenarios, against a cluster's chain.
//! - [`faults`]: the fault matrix's harness: three RPC providers per node to fail, a tmpfs to fill, and a
//!   fault's row measured (pings lost, named within, recovered within).

pub mod agent;
pub mod apps;
pub mod attack;
pub mod cluster;
pub mod convergence;
pub mod faults;
pub mod gateway;
pub mod lan;
pub mod leadership;
pub mod liveness;
pub mod sampler;
pub mod term_echo;
