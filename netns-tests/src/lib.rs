//! The shared test harness of dstack-mesh: what the integration tests, the network-namespace scenarios
//! (`tests/`) and the benchmark (`mesh-bench`) start and tear down. A scenario imports [`prelude`].
//!
//! Its folders, from the top down; a module uses only those in its own folder before it, and the folders
//! below its own:
//! - [`system`]: the system in namespaces, each piece borrowing the one before so that teardown runs in
//!   order: the LAN, the cluster on it, the agents, the gateway, the applications, and what is observed of
//!   them (convergence, leadership, liveness) or done to them (attack).
//! - [`in_process`]: pieces that need no namespace: anvil, a simulated dstack instance, the agent's API
//!   server, `meshctl`, a lying RPC proxy, a TCP relay to cut, and a swarm of simulated WireGuard peers.
//! - [`measure`]: throughput and latency for the benchmark, and bulk transfers checked byte by byte.
//! - [`net`]: what the namespaces are made of: namespaces and veth pairs, what stands between a node and
//!   the switch (NAT routers, slirp4netns, coturn), WireGuard devices, and pings.
//! - [`run`]: bounded command runs and children killed by PID, bounded waits, a scenario's steps, and async
//!   code run from a test's thread.
//!
//! Beside them: [`container`] (docker networks, containers and compose projects, removed on drop) and
//! [`unique_name`] (names unique per run, that fit an interface name).

pub mod container;
pub mod in_process;
pub mod measure;
pub mod net;
pub mod prelude;
pub mod run;
pub mod system;

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
