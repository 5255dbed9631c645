//! An agent restart costs nothing on-chain: node 2's agent is stopped and started again; it must come
//! back with the same WireGuard key, send no transaction (its record, nonce and the chain's head are
//! unchanged), and the mesh must be whole again.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios restart:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs. `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::Duration;

use netns_tests::prelude::*;
use serde_json::Value;

const NODES: usize = 3;

/// The agent's log line for a transaction it sent.
const REGISTERED: &str = "registered peer record";

/// The chain's head as node 1's agent sees it (anvil mines a block per transaction and none otherwise).
fn head(agents: &[Agent<'_>]) -> u64 {
    let (status, _) = agents[0].status();
    status
        .chain
        .head
        .unwrap_or_else(|| panic!("node 1 reports no chain head: {status:?}"))
}

/// Seat 2's on-chain record, as `meshctl peers` reads and re-verifies it.
fn record_of_seat_2(cluster: &Cluster<'_>) -> Value {
    cluster
        .peers()
        .into_iter()
        .find(|p| p["tokenId"].as_u64() == Some(2))
        .expect("seat 2 has a record")
}

#[test]
fn a_restarted_agent_keeps_its_key_and_sends_no_transaction() {
    require_mesh_prerequisites();
    let steps = Steps::new("restart");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (mut agents, keys) = Agent::builder(&cluster).mesh(1..=NODES);
    steps.step("3-node mesh healthy");

    // The first start registered once: that is the transaction a restart must not repeat.
    let log = std::fs::read_to_string(&agents[1].log).expect("agent 2 log");
    assert_eq!(log.matches(REGISTERED).count(), 1, "{}", agents[1].tail());
    let record_before = record_of_seat_2(&cluster);
    wait_until(
        "node 1 to follow the chain to its head",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || agents[0].status().0.chain.lag == Some(0),
        || statuses(&agents),
    );
    let head_before = head(&agents);

    agents[1].restart(&[]);
    let took = agents[1].wait_ready(60);
    steps.step(&format!("agent 2 restarted and ready in {took:.2?}"));
    assert_eq!(
        agents[1].key(),
        keys[1],
        "a restart must keep node 2's WireGuard key (it is derived, not generated)"
    );
    wait_full_mesh(&agents, &keys);
    for (from, to) in [(2, 1), (2, 3), (1, 2), (3, 2)] {
        assert_pings(&agents, from, to);
    }
    steps.step("mesh whole again: 2 <-> 1 and 2 <-> 3 ping");

    let log = std::fs::read_to_string(&agents[1].log).expect("agent 2 log");
    assert_eq!(
        log.matches(REGISTERED).count(),
        1,
        "the restarted agent sent a registration\n{}",
        agents[1].tail()
    );
    assert_eq!(
        record_of_seat_2(&cluster),
        record_before,
        "seat 2's on-chain record changed across the restart"
    );
    assert_eq!(
        head(&agents),
        head_before,
        "the chain moved during the restart: someone sent a transaction"
    );
    assert!(
        agents[1].status().0.node.registered,
        "node 2 must report its unchanged record as registered"
    );
    steps.step(&format!(
        "no transaction: record nonce {} and head {head_before} unchanged",
        record_before["nonce"]
    ));

    for a in &mut agents {
        a.stop();
    }
    assert_no_warnings(&agents);
}
