//! A seat that its holder deactivates leaves the mesh, and comes back when activated. In a three-node mesh,
//! seat 3's holder runs `meshctl deactivate --token 3`: nodes 1 and 2 must drop it, and node 3 must leave
//! (interface removed, no peers, unregistered, a warning naming `meshctl activate`). Then
//! `meshctl activate --token 3`: node 3 must register again with the same key and the mesh be whole.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios deactivate:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs. `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::Duration;

use netns_tests::prelude::*;

const NODES: usize = 3;

#[test]
fn a_deactivated_seat_leaves_the_mesh_and_returns_when_activated() {
    require_mesh_prerequisites();
    let steps = Steps::new("deactivate");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (mut agents, keys) = Agent::builder(&cluster).mesh(1..=NODES);
    steps.step("3-node mesh healthy");

    // Seat 3's holder is account 3.
    cluster.meshctl(3, &["deactivate", "--token", "3"]);
    wait_until(
        "nodes 1 and 2 to drop seat 3, and node 3 to leave the mesh",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (status, peers) = agents[2].status();
            agents[..2].iter().all(|a| a.peer(3).is_none())
                && status.node.token_id.is_none()
                && !status.node.registered
                && peers.is_empty()
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    let links = agents[2].ns().ip(&["link", "show"]);
    assert!(
        !links.contains(&agents[2].ifname),
        "node 3 must remove its interface while its seat is inactive: {links}"
    );
    assert!(
        agents[2]
            .warnings()
            .iter()
            .any(|w| w.contains("deactivated") && w.contains("meshctl activate --token 3")),
        "node 3 must say its seat is deactivated and how to activate it\n{}",
        agents[2].tail()
    );
    assert_no_pings(&agents, 1, 3);
    steps
        .step("seat 3 deactivated: nodes 1 and 2 dropped it; node 3 left (no interface, no peers)");

    // While the seat stays inactive (past two seat lookups, and many chain reads), node 3 warns once and
    // its API's errors hold still: the chain reads do not overwrite what the seat lookup found.
    let errors = || {
        let node = agents[2].status().0;
        (node.node.registration_error, node.chain.last_error)
    };
    let first = errors();
    assert!(
        first
            .0
            .as_deref()
            .is_some_and(|e| e.contains("meshctl activate --token 3")),
        "{first:?}"
    );
    for _ in 0..24 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            errors(),
            first,
            "node 3's API errors changed while nothing did"
        );
    }
    let warned = agents[2]
        .warnings()
        .iter()
        .filter(|w| w.contains("meshctl activate --token 3"))
        .count();
    assert_eq!(
        warned,
        1,
        "warned about the inactive seat once:\n{}",
        agents[2].tail()
    );
    steps.step("seat 3 inactive for 12 s: one warning, and the API's errors held still");

    cluster.meshctl(3, &["activate", "--token", "3"]);
    wait_full_mesh(&agents, &keys);
    for (from, to) in [(1, 3), (3, 2)] {
        assert_pings(&agents, from, to);
    }
    assert_eq!(agents[2].key(), keys[2], "the same key comes back");
    assert!(agents[2].status().0.node.registered);
    steps.step("seat 3 activated: node 3 registered again and the mesh is whole");

    for a in &mut agents {
        a.stop();
    }
    assert_no_warnings(&agents[..2]);
}
