//! A fourth node joins a running three-node mesh: its seat is minted (bound to a fourth simulated
//! instance) and its agent started while node 1 pings node 2 in the background. Checks that nodes 1–3
//! all add node 4 (healthy over WireGuard in `meshctl status`, its key on their interfaces), that 1 → 4
//! and 4 → 3 ping, and that the background ping, which spans the whole join, lost nothing.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios join:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs (root, /dev/net/tun, iproute2, iputils-ping, wireguard-tools, anvil).
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use netns_tests::prelude::*;

/// Four namespaces, but only three seats at first.
const NODES: usize = 4;
const FIRST: usize = 3;
/// The background ping 1 -> 2: 10 s at 50 ms, which the join (mint, start, register, adopt: about 1 s)
/// must fall within.
const PINGS: u32 = 200;
const INTERVAL: Duration = Duration::from_millis(50);

/// Three agents mesh; a fourth seat is minted and its agent started; everyone adopts it without
/// disturbing 1 -> 2.
#[test]
fn a_fourth_node_joins_without_disturbing_the_others() {
    require_mesh_prerequisites();
    let steps = Steps::new("join");
    let lan = Lan::new(NODES);
    steps.step("LAN up: switch with anvil, 4 node namespaces");
    let cluster = Cluster::deploy_seats(&lan, FIRST);
    steps.step(&format!(
        "cluster {} deployed, 4 simulators, seats 1-3 minted",
        cluster.contract
    ));

    let mut agents = Agent::builder(&cluster).start_all(1..=FIRST);
    steps.step("agents 1-3 ready");
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    assert_pings(&agents, 1, 2);
    steps.step("3-node mesh healthy; 1 -> 2 pings");

    let mut bg = BackgroundPing::start(lan.node(1), overlay_ip(2), PINGS, INTERVAL);
    std::thread::sleep(Duration::from_millis(500));
    let join = Instant::now();
    let minted = cluster.mint(4);
    steps.step(&format!(
        "seat 4 minted to account 4, bound to instance {} ({:.2?}): {}",
        cluster.sims[3].instance_id,
        join.elapsed(),
        minted["receipt"]
    ));
    agents.push(Agent::builder(&cluster).start(4));
    let took = agents[3].wait_ready(60);
    let key4 = agents[3].key();
    steps.step(&format!("agent 4 ready ({took:.2?}), key {key4}"));
    assert!(
        !keys.contains(&key4),
        "node 4's key must differ from the others'"
    );
    assert_eq!(
        cluster.onchain_key(4),
        Some(key4),
        "the chain must hold node 4's key once its agent is ready"
    );

    wait_until(
        "nodes 1-3 to report node 4 healthy over WireGuard, and node 4 to report them",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            agents[..FIRST].iter().all(|a| a.sees_healthy(4, &key4))
                && (1..=FIRST).all(|j| agents[3].sees_healthy(j as u64, &keys[j - 1]))
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    let joined_in = join.elapsed();
    steps.step(
        &format!(
            "join complete: every node reports every other healthy ({joined_in:.2?} after the mint began)"
        ),
    );
    assert!(
        bg.running(),
        "the join took {joined_in:.2?}, longer than the background ping ({:?}): it did not cover the join",
        INTERVAL * PINGS
    );

    for a in &agents[..FIRST] {
        let configured: BTreeSet<Key> = a.wg_dump().1.into_iter().map(|p| p.public_key).collect();
        let want: BTreeSet<Key> = (1..=NODES)
            .filter(|&j| j != a.index)
            .map(|j| if j == 4 { key4 } else { keys[j - 1] })
            .collect();
        assert_eq!(
            configured, want,
            "node {}'s interface must hold exactly the other three nodes' keys",
            a.index
        );
    }
    assert_pings(&agents, 1, 4);
    assert_pings(&agents, 4, 3);
    steps.step("1 -> 4 and 4 -> 3 ping; nodes 1-3 hold node 4's key");

    let (sent, received, out) = bg.finish();
    steps.step(&format!("background ping 1 -> 2: {received}/{sent}"));
    assert_eq!(
        (sent, received),
        (PINGS, PINGS),
        "node 1 -> node 2 lost packets while node 4 joined: {out}\n{}",
        tails(&agents)
    );

    for a in &mut agents {
        let took = a.stop();
        steps.step(&format!("agent {} stopped cleanly ({took:.2?})", a.index));
    }
    assert_no_warnings(&agents);
    drop(agents);
    drop(cluster);
    drop(lan);
    steps.step("torn down");
}
