//! Key rotation and an endpoint move at once, in a four-node mesh: node 3 rotates its WireGuard key
//! (`--wg-key-epoch 1`) and node 4 moves its WireGuard to another port (a new endpoint on-chain), while
//! node 1 pings node 2. Every other node must follow both changes from the chain (node 3's new key in
//! place of the old, node 4's new endpoint), and the 1 -> 2 session must lose nothing.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios rotate_and_move:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs. `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use netns_tests::prelude::*;

const NODES: usize = 4;
/// 10 s at 50 ms: both changes (about 1 s each, concurrently) fall well within it.
const PINGS: u32 = 200;
const INTERVAL: Duration = Duration::from_millis(50);
/// Node 4's new WireGuard port.
const MOVED_PORT: u16 = 51821;

/// Whether `a` has node 4 at `endpoint` both in `meshctl status` and on its interface (`wg show dump`).
fn sees_node_4_at(a: &Agent<'_>, key: &Key, endpoint: &str) -> bool {
    a.sees_healthy(4, key)
        && a.peer(4).and_then(|p| p.endpoint).as_deref() == Some(endpoint)
        && a.wg_dump()
            .1
            .iter()
            .any(|p| p.public_key == *key && p.endpoint == endpoint)
}

#[test]
fn peers_follow_a_key_rotation_and_an_endpoint_move_without_loss_elsewhere() {
    require_mesh_prerequisites();
    let steps = Steps::new("rotate_and_move");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (mut agents, mut keys) = Agent::builder(&cluster).mesh(1..=NODES);
    steps.step("4-node mesh healthy");

    let bg = BackgroundPing::start(lan.node(1), overlay_ip(2), PINGS, INTERVAL);
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let old_key_3 = keys[2];
    agents[2].restart(&["--wg-key-epoch", "1"]);
    let moved = SocketAddrV4::new(lan_ip(4), MOVED_PORT);
    agents[3].config = AgentConfig {
        listen_port: MOVED_PORT,
        endpoint: Some(moved),
        ..AgentConfig::lan(4)
    };
    agents[3].restart(&[]);
    agents[2].wait_ready(60);
    agents[3].wait_ready(60);
    keys[2] = agents[2].key();
    assert_ne!(keys[2], old_key_3, "epoch 1 must give node 3 a new key");
    assert_eq!(agents[3].key(), keys[3], "a move keeps node 4's key");
    steps.step(&format!(
        "node 3 restarted with a new key, node 4 on {moved}; both ready"
    ));

    let moved = moved.to_string();
    wait_until(
        "every node to follow node 3's new key and node 4's new endpoint",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            agents
                .iter()
                .filter(|a| a.index != 3)
                .all(|a| a.sees_healthy(3, &keys[2]))
                && agents
                    .iter()
                    .filter(|a| a.index != 4)
                    .all(|a| sees_node_4_at(a, &keys[3], &moved))
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    steps.step(&format!(
        "all followed, {:.2?} after the changes began",
        began.elapsed()
    ));
    wait_full_mesh(&agents, &keys);
    for a in agents.iter().filter(|a| a.index != 3) {
        let configured = a.wg_peer_keys();
        assert!(
            configured.contains(&keys[2]) && !configured.contains(&old_key_3),
            "node {}'s interface must hold node 3's new key instead of its old one: {configured:?}",
            a.index
        );
    }
    let onchain: Vec<serde_json::Value> = cluster.peers();
    let endpoint_4 = onchain
        .iter()
        .find(|p| p["tokenId"].as_u64() == Some(4))
        .and_then(|p| p["endpoint"].as_str().map(str::to_owned));
    assert_eq!(endpoint_4, Some(moved), "{onchain:?}");
    assert_eq!(cluster.onchain_key(3), Some(keys[2]));
    for (from, to) in [(1, 3), (3, 4), (4, 1), (2, 4)] {
        assert_pings(&agents, from, to);
    }
    steps.step("1 -> 3, 3 -> 4, 4 -> 1, 2 -> 4 ping over the new key and endpoint");

    let (sent, received, out) = bg.finish();
    steps.step(&format!("background ping 1 -> 2: {received}/{sent}"));
    assert_eq!(
        (sent, received),
        (PINGS, PINGS),
        "node 1 -> node 2 lost packets while 3 rotated and 4 moved: {out}\n{}",
        tails(&agents)
    );
    for a in &mut agents {
        a.stop();
    }
    assert_no_warnings(&agents);
}
