//! A node behind a NAT it cannot see out of still meshes. Node 3 sits on a private network behind a router
//! namespace that masquerades it to the LAN (at its public address, [`lan_ip`]`(3)`); nodes 1 and 2 have no route to it. Node 3
//! registers no endpoint (it cannot know its public one); it keeps its mappings open with persistent
//! keepalive, and nodes 1 and 2 learn its public address from its authenticated packets (WireGuard
//! roaming). The test checks that every pair pings both ways, that nodes 1 and 2 reach node 3 at the
//! router's address, and that when node 3's source port changes (its agent restarts on another port, so
//! the NAT maps it anew) they follow it without any transaction.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios nat:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs, and `nft` (nftables). `DSTACK_MESH_TEST_LOGS=<dir>` keeps the logs.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;

const NODES: usize = 3;
const BEHIND: usize = 3;
/// Node 3's port after it moves.
const NEW_PORT: u16 = 51830;

/// The endpoint of node 3's key on `a`'s interface, as WireGuard learnt it.
fn endpoint_of_node_3(a: &Agent<'_>, key: &Key) -> Option<String> {
    a.wg_dump()
        .1
        .into_iter()
        .find(|p| p.public_key == *key)
        .map(|p| p.endpoint)
}

#[test]
fn a_node_behind_nat_meshes_by_keepalive_and_roaming() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft"]);
    let steps = Steps::new("nat");
    let lan = Lan::with_nat(NODES, BEHIND);
    let cluster = Cluster::deploy(&lan);
    steps.step("LAN up with node 3 behind a masquerading router; cluster deployed");

    let mut agents: Vec<Agent<'_>> = (1..BEHIND)
        .map(|i| Agent::builder(&cluster).start(i))
        .collect();
    let behind = |i| AgentConfig {
        endpoint: None,
        ..AgentConfig::lan(i)
    };
    agents.push(Agent::builder(&cluster).config(behind).start(BEHIND));
    for a in &mut agents {
        a.wait_ready(60);
    }
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    for from in 1..=NODES {
        for to in (1..=NODES).filter(|&t| t != from) {
            assert_pings(&agents, from, to);
        }
    }
    steps.step("full mesh through the NAT: all 6 ordered pairs ping");

    let onchain = cluster.peers();
    let record3 = onchain
        .iter()
        .find(|p| p["tokenId"].as_u64() == Some(3))
        .expect("seat 3's record");
    assert_eq!(record3["endpoint"].as_str(), Some(""), "{record3}");
    let public = format!("{}:", lan_ip(BEHIND));
    for a in &agents[..2] {
        let seen = endpoint_of_node_3(a, &keys[2]);
        assert!(
            seen.as_deref().is_some_and(|e| e.starts_with(&public)),
            "node {} must reach node 3 at the router's address, learnt by roaming: {seen:?}",
            a.index
        );
    }
    let (_, dump3) = agents[2].wg_dump();
    assert!(
        dump3.len() == 2 && dump3.iter().all(|p| p.keepalive == "25"),
        "node 3 must keep its NAT mappings open with a 25 s keepalive: {dump3:?}"
    );
    let mapped = endpoint_of_node_3(&agents[0], &keys[2]).expect("seen");
    steps.step(&format!(
        "node 3 registered no endpoint; nodes 1 and 2 reach it at {mapped}; it keeps alive every 25 s"
    ));

    // A new source port means a new NAT mapping: the others must follow it by roaming alone.
    let head = agents[0].status().0.chain.head;
    agents[2].config.listen_port = NEW_PORT;
    agents[2].restart(&[]);
    agents[2].wait_ready(60);
    let moved = Instant::now();
    wait_until(
        "nodes 1 and 2 to follow node 3 to its new mapping",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            agents[..2].iter().all(|a| {
                endpoint_of_node_3(a, &keys[2])
                    .is_some_and(|e| e.starts_with(&public) && e != mapped)
            })
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    let remapped = endpoint_of_node_3(&agents[0], &keys[2]).expect("seen");
    for (from, to) in [(1, 3), (2, 3), (3, 1)] {
        assert_pings(&agents, from, to);
    }
    assert_eq!(
        agents[0].status().0.chain.head,
        head,
        "roaming needs no transaction"
    );
    steps.step(&format!(
        "node 3 remapped {mapped} -> {remapped}: followed in {:.2?}, no transaction",
        moved.elapsed()
    ));

    for a in &mut agents {
        a.stop();
    }
    assert_no_warnings(&agents);
}
