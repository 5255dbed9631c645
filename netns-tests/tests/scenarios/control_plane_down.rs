//! The control plane going away does not take the data plane with it. In a mesh of nodes 1-3, node 3
//! loses its route to the RPC (a blackhole route to anvil in its namespace) and its agent restarts: it must
//! bring its tunnels up from the state cache and carry traffic. Meanwhile seat 4 is minted and node 4
//! joins, which nodes 1 and 2 adopt and node 3 cannot know of. Once the route is back, node 3 must catch
//! up on its own: leave the cache, adopt node 4, and reach it.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios control_plane_down:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs. `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;

/// Four namespaces, three seats at first.
const NODES: usize = 4;
const FIRST: usize = 3;

#[test]
fn a_node_without_rpc_runs_from_its_cache_and_catches_up() {
    require_mesh_prerequisites();
    let steps = Steps::new("control_plane_down");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_seats(&lan, FIRST);
    let (mut agents, mut keys) = Agent::builder(&cluster).mesh(1..=FIRST);
    steps.step("3-node mesh healthy");

    let rpc_route = format!("{SWITCH_IP}/32");
    lan.node(3).ip(&["route", "add", "blackhole", &rpc_route]);
    agents[2].restart(&[]);
    agents[2].wait_ready(60);
    let (status, _) = agents[2].status();
    assert!(
        status.chain.from_cache && status.chain.last_error.is_some(),
        "node 3 must say it runs from its cache and why: {:?}",
        status.chain
    );
    assert_eq!(status.node.token_id, Some(3), "{status:?}");
    assert_eq!(agents[2].key(), keys[2], "the cache restart keeps the key");
    wait_full_mesh(&agents, &keys);
    for (from, to) in [(3, 1), (3, 2), (1, 3), (2, 3)] {
        assert_pings(&agents, from, to);
    }
    steps.step("node 3 restarted without RPC: up from its cache, 3 <-> 1 and 3 <-> 2 ping");

    // The cluster changes while node 3 cannot see it.
    cluster.mint(4);
    agents.push(Agent::builder(&cluster).start(4));
    agents[3].wait_ready(60);
    keys.push(agents[3].key());
    wait_until(
        "nodes 1 and 2 to report node 4 healthy",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || agents[..2].iter().all(|a| a.sees_healthy(4, &keys[3])),
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    assert!(
        agents[2].peer(4).is_none(),
        "node 3 cannot know of seat 4 without the RPC: {:?}",
        agents[2].peer(4)
    );
    assert!(agents[2].status().0.chain.from_cache);
    assert_no_pings(&agents, 3, 4);
    steps.step(
        "seat 4 joined: nodes 1 and 2 adopted it; node 3, still without RPC, does not know it",
    );

    lan.node(3).ip(&["route", "del", "blackhole", &rpc_route]);
    let back = Instant::now();
    // The agent retries the RPC with a backoff of up to 30 s.
    wait_until(
        "node 3 to leave its cache and adopt node 4",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || !agents[2].status().0.chain.from_cache && agents[2].sees_healthy(4, &keys[3]),
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    steps.step(&format!(
        "RPC back: node 3 caught up and adopted node 4 in {:.2?}",
        back.elapsed()
    ));
    wait_full_mesh(&agents, &keys);
    assert_pings(&agents, 3, 4);
    assert_pings(&agents, 4, 3);
    let status = agents[2].status().0;
    assert_eq!(status.chain.last_error, None, "{:?}", status.chain);
    assert_eq!(status.chain.lag, Some(0), "{:?}", status.chain);
    steps.step("3 <-> 4 ping; node 3 reports no error and no lag");

    for a in &mut agents {
        a.stop();
    }
    // Node 3 warned of the RPC outage, and of nothing else.
    let node3: Vec<String> = agents[2].warnings();
    assert!(
        node3.iter().any(|w| w.contains("cannot follow cluster")),
        "node 3 must warn that it cannot reach the chain: {node3:#?}"
    );
    let unrelated: Vec<&String> = node3
        .iter()
        .filter(|w| !w.contains("cannot follow cluster"))
        .collect();
    assert!(
        unrelated.is_empty(),
        "node 3 warned of more: {unrelated:#?}"
    );
    let others: Vec<Agent<'_>> = agents.drain(..).filter(|a| a.index != 3).collect();
    assert_no_warnings(&others);
}
