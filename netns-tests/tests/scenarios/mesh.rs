//! The whole system, three nodes: anvil on a LAN switch, a cluster deployed with `meshctl`, one
//! `dstack-simulator` and one real `p2p-agent --mode wireguard` per node namespace.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios mesh:: -- --nocapture
//! ```
//!
//! Needs root, /dev/net/tun, iproute2 (`ip`, `ss`), iputils-ping, wireguard-tools and anvil
//! (`scripts/bootstrap`). Without them the test fails with one message saying what is needed.
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mesh_api::ConnectionKind;
use netns_tests::prelude::*;

const NODES: usize = 3;
/// The background ping during the rotation: 10 s at 50 ms, which the rotation (about 1 s) falls well within.
const PINGS: u32 = 200;

/// Three agents form a full mesh on their own; node 3 rotates its WireGuard key (restart with
/// `--wg-key-epoch 1`) while node 1 pings node 2 without losing a packet, and the others follow the new
/// key from the chain.
#[test]
fn three_nodes_form_a_mesh_and_survive_a_key_rotation() {
    require_mesh_prerequisites();
    let steps = Steps::new("mesh");
    let lan = Lan::new(NODES);
    let ns_names: Vec<String> = lan
        .nodes
        .iter()
        .chain([&lan.switch])
        .map(|n| n.name.clone())
        .collect();
    steps.step("LAN up: switch with anvil, 3 node namespaces");
    let cluster = Cluster::deploy(&lan);
    steps.step(&format!(
        "cluster {} deployed, 3 seats minted",
        cluster.contract
    ));

    let mut agents: Vec<Agent<'_>> = (1..=NODES)
        .map(|i| Agent::builder(&cluster).start(i))
        .collect();
    for a in &mut agents {
        let took = a.wait_ready(60);
        steps.step(&format!(
            "agent {} ready (p2p-agent wait: {took:.2?})",
            a.index
        ));
    }

    // Every ordered pair over the overlay.
    for from in 1..=NODES {
        for to in (1..=NODES).filter(|&to| to != from) {
            assert_pings(&agents, from, to);
        }
    }
    steps.step("all 6 ordered pairs ping over 10.0.1.x");

    // Each node reports itself and the other two: over WireGuard, healthy, with their own keys.
    let keys: Vec<Key> = agents
        .iter()
        .map(|a| {
            let (status, _) = a.status();
            assert_eq!(status.node.token_id, Some(a.index as u64), "{status:?}");
            assert_eq!(
                status.node.overlay_ip,
                Some(overlay_ip(a.index as u64)),
                "{status:?}"
            );
            assert!(
                status.node.registered,
                "node {} not registered: {status:?}",
                a.index
            );
            status
                .node
                .wg_public_key
                .unwrap_or_else(|| panic!("node {} reports no WireGuard key", a.index))
        })
        .collect();
    for a in &agents {
        let (_, peers) = a.status();
        let others: BTreeSet<u64> = peers.iter().map(|p| p.token_id).collect();
        let want: BTreeSet<u64> = (1..=NODES as u64)
            .filter(|&t| t != a.index as u64)
            .collect();
        assert_eq!(others, want, "node {} peers: {peers:?}", a.index);
        for p in &peers {
            let j = p.token_id as usize;
            assert_eq!(
                (p.connection, p.healthy),
                (ConnectionKind::Wireguard, true),
                "node {} sees node {j}: {p:?}\n{}",
                a.index,
                tails(&agents)
            );
            assert_eq!(p.wg_public_key, Some(keys[j - 1]), "{p:?}");
            assert_eq!(p.overlay_ip, overlay_ip(j as u64), "{p:?}");
            assert_eq!(
                p.endpoint.as_deref(),
                Some(format!("{}:{WG_PORT}", lan_ip(j)).as_str()),
                "{p:?}"
            );
        }
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cluster.onchain_key(i as u64 + 1),
            Some(*key),
            "node {}'s on-chain key differs from what it reports",
            i + 1
        );
    }
    steps.step("meshctl status: every node sees the other two, wireguard, healthy");

    // Key rotation of node 3 while node 1 pings node 2.
    let old_key = keys[2];
    let bg = BackgroundPing::start(lan.node(1), overlay_ip(2), PINGS, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    let rotation = Instant::now();
    agents[2].restart(&["--wg-key-epoch", "1"]);
    steps.step("agent 3 stopped cleanly and restarted with --wg-key-epoch 1");
    let took = agents[2].wait_ready(60);
    let new_key = agents[2]
        .status()
        .0
        .node
        .wg_public_key
        .unwrap_or_else(|| panic!("node 3 reports no WireGuard key after the restart"));
    assert_ne!(
        new_key, old_key,
        "epoch 1 must give node 3 a new WireGuard key"
    );
    steps.step(&format!("agent 3 ready again with a new key ({took:.2?})"));
    wait_until(
        "nodes 1 and 2 to report node 3 healthy over WireGuard with its new key",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || agents[0].sees_healthy(3, &new_key) && agents[1].sees_healthy(3, &new_key),
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    let rotated_in = rotation.elapsed();
    steps.step(
        &format!(
            "rotation complete: nodes 1 and 2 follow node 3's new key ({rotated_in:.2?} after the restart began)"
        ),
    );
    assert_eq!(
        cluster.onchain_key(3),
        Some(new_key),
        "the chain must hold node 3's new key"
    );
    for a in &agents[..2] {
        let configured = a.wg_peer_keys();
        assert!(
            configured.contains(&new_key)
                && !configured.contains(&old_key)
                && configured.len() == 2,
            "node {}'s interface must hold node 3's new key instead of its old one: {configured:?}",
            a.index
        );
    }

    let (sent, received, out) = bg.finish();
    steps.step(&format!("background ping 1 -> 2: {received}/{sent}"));
    assert_eq!(
        (sent, received),
        (PINGS, PINGS),
        "node 1 -> node 2 lost packets while node 3 rotated its key: {out}\n{}",
        tails(&agents)
    );
    assert_pings(&agents, 1, 3);
    assert_pings(&agents, 3, 2);
    steps.step("1 -> 3 and 3 -> 2 ping over the new key");

    // Clean shutdown of every daemon: exit 0, interface and UAPI socket gone.
    for a in &mut agents {
        let took = a.stop();
        steps.step(&format!("agent {} stopped cleanly ({took:.2?})", a.index));
    }
    // A clean run, restart included, has nothing to warn about.
    assert_no_warnings(&agents);
    let sockets: Vec<_> = agents.iter().map(Agent::uapi_socket).collect();
    drop(agents);
    drop(cluster);
    drop(lan);
    let left = netns_tests::run::process::run_ok(&["ip", "netns", "list"]);
    for name in &ns_names {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} left behind: {left}"
        );
    }
    for s in &sockets {
        assert!(!s.exists(), "{} left behind", s.display());
    }
    steps.step("torn down");
}
