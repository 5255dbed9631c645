//! The shared test harness of dstack-mesh: what the crates' integration tests, and later the
//! network-namespace scenarios and benchmarks, start and tear down.
//!
//! Layout:
//! - [`api`]: the agent's real API server, serving a fixture snapshot.
//! - [`attack`]: what the attacker does in the scenarios: sign with a CVM's keys, send `registerPeer`
//!   directly, read the contract's events.
//! - [`chain`]: a real anvil on a free loopback port, killed on drop.
//! - [`netns`]: network namespaces, veth pairs, processes and WireGuard devices inside namespaces.
//! - [`node`]: a simulated dstack instance served in-process, and the records it signs.
//! - [`rpc_proxy`]: a JSON-RPC proxy in front of anvil that tests make fail or lie.
//! - [`topology`]: the whole system in namespaces: a LAN of nodes behind a bridge with anvil on it, a
//!   cluster deployed there with one `dstack-simulator` per node, and the real `p2p-agent` daemon per node.
//! - [`unique_name`]: names unique per run, that fit an interface name.

pub mod api;
pub mod attack;
pub mod chain;
pub mod netns;
pub mod node;
pub mod rpc_proxy;
pub mod topology;

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
