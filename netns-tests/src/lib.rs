//! The shared test harness of dstack-mesh: what the integration tests, the network-namespace scenarios
//! (`tests/`) and the benchmark (`mesh-bench`) start and tear down. A scenario imports [`prelude`].
//!
//! The system in namespaces, each piece borrowing the one before, so teardown runs in order; a module uses
//! only those before it and those below:
//! - [`lan`]: a LAN of node namespaces behind a bridge, with anvil on it; each node on the bridge, or behind
//!   what [`uplink`] builds: a NAT router of one of four kinds, or slirp4netns; and coturn as a STUN server.
//! - [`cluster`]: a cluster deployed there, with one `dstack-simulator` per node, and `meshctl`.
//! - [`agent`]: the real `p2p-agent` daemon in a node's namespace, started by one builder
//!   ([`agent::AgentBuilder`]), and what a scenario asks of several: a full mesh, pings over the overlay.
//! - [`gateway`]: a stand-in for the dstack gateway (nginx terminating TLS, routing by SNI) for the relay.
//! - [`apps`]: applications on the mesh, the SDK's scripts and the examples, and HTTP to them.
//! - [`convergence`]: when the chain holds a change, and when each agent's API shows it.
//! - [`leadership`]: who claims to lead, and [`liveness`]: which peers each agent says are healthy, both
//!   sampled from every agent at once.
//! - [`attack`]: what the attacker does in the scenarios, against a cluster's chain.
//!
//! Below them:
//! - [`uplink`]: what stands between a node and the switch (NAT routers, slirp4netns), and coturn.
//! - [`process`]: bounded command runs, children killed by PID, the workspace's binaries and Foundry's.
//! - [`netns`]: namespaces and veth pairs; [`wg`]: WireGuard devices in them (ours and `wireguard-go`).
//! - [`ping`]: reachability between namespaces; [`wait`]: bounded waits; [`steps`]: a scenario's progress.
//! - [`runtime`]: async code run from a test's synchronous thread; [`sampler`]: one path of every agent's
//!   API, asked of all at once every few milliseconds.
//! - [`perf`]: throughput and latency, for the benchmark; [`transfer`]: a bulk TCP transfer checked byte by
//!   byte.
//!
//! In containers: [`container`], docker networks, containers and compose projects, removed on drop.
//!
//! In-process pieces, for tests that need no namespace:
//! - [`chain`]: a real anvil on a free loopback port; [`node`]: a simulated dstack instance.
//! - [`api`]: the agent's real API server, serving a fixture snapshot; [`meshctl`]: the CLI against anvil.
//! - [`rpc_proxy`]: a JSON-RPC proxy in front of anvil that tests make fail or lie; [`tcp_relay`]: a TCP
//!   relay they cut and restore (a WebSocket that drops).
//! - [`swarm`]: simulated WireGuard peers, a boringtun `Tunn` and a UDP socket each, for the benchmark of
//!   one agent facing a thousand.
//! - [`unique_name`]: names unique per run, that fit an interface name.

pub mod agent;
pub mod api;
pub mod apps;
pub mod attack;
pub mod chain;
pub mod cluster;
pub mod container;
pub mod convergence;
pub mod gateway;
pub mod lan;
pub mod leadership;
pub mod liveness;
pub mod meshctl;
pub mod netns;
pub mod node;
pub mod perf;
pub mod ping;
pub mod prelude;
pub mod process;
pub mod rpc_proxy;
pub mod runtime;
pub mod sampler;
pub mod steps;
pub mod swarm;
pub mod tcp_relay;
pub mod transfer;
pub mod uplink;
pub mod wait;
pub mod wg;

use std::sync::atomic::{AtomicU32, Ordering};

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, `<prefix><pid-base36><counter>`, that fits an interface name.
///
/// Names must be unique per run because the userspace UAPI directory `/var/run/wireguard/` is shared by
/// every namespace, and leftovers of a crashed run must not collide with the next one.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}{n}", base36(std::process::id()));
    assert!(
        name.len() <= IFNAME_MAX,
        "name {name:?} is longer than {IFNAME_MAX} bytes: use a shorter prefix"
    );
    name
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two calls never return the same name, and both fit an interface name.
    #[test]
    fn unique_names_differ_and_fit_ifnamsiz() {
        let a = unique_name("dm");
        let b = unique_name("dm");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX && b.len() <= IFNAME_MAX);
        assert!(a.starts_with("dm"));
    }

    /// Base 36 round-trips through the standard parser.
    #[test]
    fn base36_matches_std_parser() {
        for v in [0u32, 1, 35, 36, 4_194_304, u32::MAX] {
            assert_eq!(u32::from_str_radix(&base36(v), 36).unwrap(), v);
        }
    }
}
