//! Fifty nodes at the agent's default settings, following anvil over its WebSocket: the full mesh forms;
//! then a fiftieth node joins and every other node lists it, and handshakes with it, on the block that holds
//! its record rather than at a later poll; then its seat is revoked and every other node drops it, on the
//! block that clears it. The times are printed; how fast is `mesh-bench --sections sizes`'s to measure, on
//! release builds.
//!
//! The LAN gives its addresses as static neighbour entries from 30 nodes on ([`STATIC_NEIGHBOURS_FROM`]):
//! every namespace shares the kernel's one neighbour table, which a full mesh of 50 overflows.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios scale:: -- --nocapture
//! ```
//!
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use mesh_api::Peer;
use netns_tests::prelude::*;
use netns_tests::system::convergence::{
    chain_watch, delays, full_mesh, healthy, lists, median_and_worst, watch_change,
};

const NODES: usize = 50;

/// How long the last node may take to apply a join or a revocation after its block. Shorter than the
/// subscription's 15 s safety poll, so that a change that reaches the agents only by that poll (or by the
/// minute's full read) fails; not the goal of one block plus 500 ms, which `mesh-bench` measures on release
/// builds (50 nodes: 25 ms). Here 49 debug-built agents on two cores each verify the newcomer's quote at
/// the same moment, which took 3.4-4.9 s.
const WITHIN: Duration = Duration::from_secs(10);

/// How long anything may take before the test gives up and shows why.
const BOUND: Duration = Duration::from_secs(120);

#[test]
fn fifty_nodes_apply_a_join_and_a_revocation_on_their_blocks_over_websocket() {
    require_mesh_prerequisites();
    let steps = Steps::new("scale");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_seats(&lan, NODES);
    let contract = Address::from_str(&cluster.contract).expect("contract address");
    steps.step(&format!(
        "LAN of {NODES} (static neighbours), cluster {contract}, {NODES} seats minted"
    ));

    let over_ws = Agent::builder(&cluster)
        .config(AgentConfig::lan_ws)
        .ready_within(120);
    let mut agents = over_ws.start_all(1..NODES);
    steps.step(&format!(
        "{} agents ready, following {}",
        NODES - 1,
        ws_url()
    ));
    let others: Vec<&Agent<'_>> = agents.iter().collect();
    let meshed = Instant::now();
    full_mesh(&others, BOUND).unwrap_or_else(|e| panic!("{e}\n{}", tails(&agents)));
    steps.step(&format!(
        "full mesh of {} ({:.1?} after every agent was ready)",
        NODES - 1,
        meshed.elapsed()
    ));

    let token = NODES as u64;
    let listed = |p: &[Peer]| lists(p, token);
    let handshaken = |p: &[Peer]| healthy(p, token);
    let on_chain = chain_watch(&lan, contract, token, true, BOUND);
    let (newcomer, times) = watch_change(
        &others,
        BOUND,
        &[("lists it", &listed), ("handshaken", &handshaken)],
        || over_ws.start(NODES),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tails(&agents)));
    let block = on_chain.join().expect("chain watch");
    let (listed_median, listed_worst) = median_and_worst(&delays(block, &times[0]));
    let (hs_median, hs_worst) = median_and_worst(&delays(block, &times[1]));
    agents.push(newcomer);
    steps.step(&format!(
        "node {NODES} joined: listed by all after {listed_worst:.2?} (median {listed_median:.2?}), handshaken after {hs_worst:.2?} (median {hs_median:.2?})"
    ));

    let revoke = || cluster.meshctl(0, &["revoke", "--token", &token.to_string(), "--yes"]);
    let dropped = |p: &[Peer]| !lists(p, token);
    let cleared = chain_watch(&lan, contract, token, false, BOUND);
    let others: Vec<&Agent<'_>> = agents[..NODES - 1].iter().collect();
    let (_, times) = watch_change(&others, BOUND, &[("dropped it", &dropped)], revoke)
        .unwrap_or_else(|e| panic!("{e}\n{}", tails(&agents)));
    let block = cleared.join().expect("chain watch");
    let (dropped_median, dropped_worst) = median_and_worst(&delays(block, &times[0]));
    steps.step(&format!(
        "seat {NODES} revoked: dropped by all after {dropped_worst:.2?} (median {dropped_median:.2?})"
    ));

    assert!(
        listed_worst <= WITHIN && hs_worst <= WITHIN,
        "the join took {listed_worst:?} to be listed everywhere and {hs_worst:?} to be handshaken, over {WITHIN:?}"
    );
    assert!(
        dropped_worst <= WITHIN,
        "the revocation took {dropped_worst:?} to be applied everywhere, over {WITHIN:?}"
    );
    for a in &agents[..NODES - 1] {
        let chain = a.status().0.chain;
        assert!(
            chain.subscribed,
            "node {} follows new heads by subscription: {chain:?}",
            a.index
        );
    }
    assert_no_warnings(&agents[..NODES - 1]);
}
