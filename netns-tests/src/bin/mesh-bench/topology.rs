//! The throughput and latency sections' topology, on one LAN: the mesh between nodes 1 and 2, a pair of each
//! reference between two other nodes, and the bare link.

use std::net::Ipv4Addr;
use std::time::Duration;

use netns_tests::net::wg::{Reference, WireguardGo, test_key};
use netns_tests::prelude::*;

use crate::report::{BARE, MESH};
use crate::report::{Named, Rtt, Throughput, Udp};
use crate::tunnel::{Side, Tunnel};
use crate::{Args, latency, throughput, udp};

/// What the throughput, latency and UDP sections measure on one topology.
pub(crate) struct Compared {
    pub(crate) latency: bool,
    pub(crate) throughput: bool,
    pub(crate) udp: bool,
}

/// Latency, then TCP throughput, then UDP, as `compared` asks, through the mesh, each of `references` and
/// the bare link.
pub(crate) fn measure(
    args: &Args,
    references: &[Reference],
    compared: &Compared,
) -> (Option<Named<Rtt>>, Option<Throughput>, Option<Udp>) {
    let lan = Lan::new(2 + 2 * references.len());
    let cluster = Cluster::deploy_seats(&lan, 2);
    // The agent's own data path, whatever the kernel offers (`auto` would take a kernel module): it is
    // what is compared, and its CPU is then the agent process's.
    let (agents, _keys) = Agent::builder(&cluster)
        .flags(["--wg-backend", "userspace"])
        .mesh(1..=2);
    let pairs: Vec<(&str, WireguardGo, WireguardGo)> = references
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let (a, b) = reference_pair(&lan, r, k);
            (r.name(), a, b)
        })
        .collect();
    let tunnels = tunnels(&lan, &agents, &pairs);
    // Latency first, while every tunnel has only carried pings.
    let rtts = compared
        .latency
        .then(|| latency::latency(&tunnels, args.seconds, args.perf_record.as_deref()));
    let rates = compared
        .throughput
        .then(|| throughput::throughput(args, &tunnels));
    let mesh_tcp = rates
        .as_ref()
        .and_then(|t| t.streams1.runs.get(MESH))
        .map(|r| r.gbps);
    let udp = compared.udp.then(|| udp::udp(&tunnels, mesh_tcp));
    (rtts, rates, udp)
}

/// The implementations in the table's order (mesh, the references, bare), on the throughput and latency
/// topology: the mesh between nodes 1 and 2, reference k between nodes 3 + 2k and 4 + 2k, and the bare
/// link from node 1 to node 2, all on the same bridge.
pub(crate) fn tunnels<'a>(
    lan: &'a Lan,
    agents: &[Agent<'_>],
    pairs: &'a [(&'static str, WireguardGo, WireguardGo)],
) -> Vec<Tunnel<'a>> {
    let agent_side = |a: &Agent<'_>| Side {
        ns: lan.node(a.index),
        pid: a
            .pid()
            .unwrap_or_else(|| panic!("agent {} is not running", a.index)),
        ifname: a.ifname.clone(),
    };
    let mut out = vec![Tunnel {
        name: MESH,
        client: lan.node(1),
        server: lan.node(2),
        addr: overlay_ip(2),
        sides: Some([agent_side(&agents[0]), agent_side(&agents[1])]),
    }];
    for (k, (name, a, b)) in pairs.iter().enumerate() {
        let (ns_a, ns_b) = (lan.node(3 + 2 * k), lan.node(4 + 2 * k));
        out.push(Tunnel {
            name,
            client: ns_a,
            server: ns_b,
            addr: reference_ip(k, 2),
            sides: Some([
                Side {
                    ns: ns_a,
                    pid: a.pid(),
                    ifname: a.ifname.clone(),
                },
                Side {
                    ns: ns_b,
                    pid: b.pid(),
                    ifname: b.ifname.clone(),
                },
            ]),
        });
    }
    out.push(Tunnel {
        name: BARE,
        client: lan.node(1),
        server: lan.node(2),
        addr: lan_ip(2),
        sides: None,
    });
    out
}

/// Reference k's overlay address `host` (1 or 2): 10.0.(2 + k).host, apart from the mesh's 10.0.1.0/24.
fn reference_ip(k: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2 + u8::try_from(k).expect("few references"), host)
}

/// A pair of `reference` on nodes 3 + 2k and 4 + 2k, overlay [`reference_ip`]; returns once a ping goes
/// through (the handshake done), so that no measurement includes it.
fn reference_pair(lan: &Lan, reference: &Reference, k: usize) -> (WireguardGo, WireguardGo) {
    let (i, j) = (3 + 2 * k, 4 + 2 * k);
    let seed = |node: usize| u8::try_from(28 + node).expect("few references");
    // Node `node` as overlay host `host`, its peer node `peer` as `peer_host`.
    let start = |node: usize, host: u8, peer: usize, peer_host: u8| {
        WireguardGo::start(
            reference,
            lan.node(node),
            &test_key(seed(node)),
            &format!("{}/24", reference_ip(k, host)),
            &test_key(seed(peer)).public_key(),
            &format!("{}:51820", lan_ip(peer)),
            &format!("{}/32", reference_ip(k, peer_host)),
        )
    };
    let a = start(i, 1, j, 2);
    let b = start(j, 2, i, 1);
    let target = reference_ip(k, 2);
    wait_until(
        &format!("a ping through the {} pair ({i} -> {j})", reference.name()),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || ping(lan.node(i), target, 1, Duration::from_millis(200)).1 == 1,
        || lan.node(i).exec_ok(&["wg", "show", &a.ifname]),
    );
    (a, b)
}
