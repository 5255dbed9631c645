//! The fault matrix, the chain itself: every provider down for two minutes, the chain halting for two
//! minutes, and a reorg of two blocks that undoes a revocation. The tunnels carry traffic throughout (no ping
//! lost), the statuses name the fault within 5 s and stop within 5 s of its end, no node turns unhealthy or
//! unregistered for an outage, and the view follows the chain as it is when the fault ends: a seat that
//! joined meanwhile is adopted, a revocation the reorg undid is undone.
//!
//! Each row prints a line `fault row | …` with its figures, for docs/faults.md.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios faults_chain:: -- --nocapture
//! ```

use std::time::Duration;

use netns_tests::prelude::*;
use netns_tests::system::faults::{
    Measure, Providers, assert_within, clear_of, names, wait_at_rest,
};

const WITHIN: Duration = Duration::from_secs(5);
const OUTAGE: Duration = Duration::from_secs(120);

#[test]
fn every_provider_down_for_two_minutes_keeps_the_mesh_and_its_health_and_the_view_catches_up() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_chain/providers_down");
    let lan = Lan::new(4);
    let cluster = Cluster::deploy_seats(&lan, 4);
    let providers = Providers::start(&lan, 3);
    let agents = providers.agents(&cluster, 1..=3, &[]);
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    wait_at_rest(&agents);
    steps.step("3 nodes meshed, each through three providers");

    // Node 4 joins while nobody can read the chain: it follows anvil itself, the others learn of it after.
    let mut four: Option<Agent<'_>> = None;
    let row = Measure {
        name: "every RPC provider down for 2 min".into(),
        agents: &agents,
        watched: vec![1, 2, 3],
        ping: Some((1, cluster.overlay_of(2))),
        hold: OUTAGE,
        within: WITHIN * 2,
    }
    .run(
        || {
            for p in 0..3 {
                providers.each(p, |x| x.set_down(true));
            }
            four = Some(Agent::builder(&cluster).start(4));
        },
        |s| {
            s.chain
                .verification
                .providers
                .iter()
                .all(|p| p.failing.is_some())
                && names(s, "rpc", "")
                && s.node.registered
        },
        || {
            for p in 0..3 {
                providers.each(p, |x| x.set_down(false));
            }
        },
        |s| clear_of(s, "rpc") && s.peers_configured == 3 && s.chain.lag == Some(0),
    );
    assert_within(&row, WITHIN, &agents);
    for a in &agents {
        let h = mesh_api::assess(&a.status().0, &a.status().1);
        assert!(h.healthy, "node {} stayed healthy: {h:?}", a.index);
    }
    steps.step(&format!(
        "two minutes without a provider: {} pings lost, named in {:.1?}, caught up with seat 4 in {:.1?}",
        row.lost(),
        row.named.unwrap_or_default(),
        row.recovered.unwrap_or_default()
    ));
    drop(four);
}

#[test]
fn a_chain_that_halts_for_two_minutes_is_named_and_a_reorg_of_two_blocks_is_followed() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_chain/halt");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let (agents, _) = Agent::builder(&cluster).mesh(1..=3);
    wait_at_rest(&agents);
    // A block every second, as a real chain makes them, empty or not.
    lan.anvil_rpc("evm_setIntervalMining", &["1"]);
    std::thread::sleep(Duration::from_secs(8));
    wait_at_rest(&agents);
    steps.step("3 nodes meshed on a chain that makes a block every second");

    let row = Measure {
        name: "the chain halting for 2 min (no block)".into(),
        agents: &agents,
        watched: vec![1, 2, 3],
        ping: Some((1, cluster.overlay_of(2))),
        hold: OUTAGE,
        within: WITHIN * 2,
    }
    .run(
        || {
            lan.anvil_rpc("evm_setIntervalMining", &["0"]);
            lan.anvil_rpc("evm_setAutomine", &["false"]);
        },
        |s| names(s, "chain", "has made no block for"),
        || {
            lan.anvil_rpc("evm_setIntervalMining", &["1"]);
        },
        |s| clear_of(s, "chain"),
    );
    assert_within(&row, WITHIN, &agents);
    for a in &agents {
        assert!(
            a.status().0.node.registered,
            "node {} kept its record",
            a.index
        );
    }
    steps.step("the chain halted two minutes: named, nothing lost, and cleared at its next block");
}

/// A reorg of two blocks that undoes a revocation, on a chain whose agents wait two confirmations (as
/// docs/security.md says to set them on a chain that reorganises): no agent ever drops the seat, nothing is
/// lost, and the chain and every view agree that the seat is still there.
#[test]
fn a_reorg_of_two_blocks_within_the_confirmations_never_reaches_the_view() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_chain/reorg");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    lan.anvil_rpc("evm_setIntervalMining", &["1"]);
    let (agents, keys) = Agent::builder(&cluster)
        .flags(["--confirmations", "2"])
        .mesh(1..=3);
    wait_at_rest(&agents);
    steps.step(
        "3 nodes meshed, waiting two confirmations, on a chain that makes a block every second",
    );

    let sampler = HealthSampler::start(
        agents.iter().map(|a| a.api_socket().to_owned()).collect(),
        Duration::from_millis(100),
    );
    let row = Measure {
        name: "a reorg of 2 blocks undoing a revocation, agents waiting 2 confirmations".into(),
        agents: &agents,
        watched: vec![1, 2, 3],
        ping: Some((1, cluster.overlay_of(3))),
        hold: Duration::from_secs(8),
        within: WITHIN,
    }
    .run(
        || {
            // The revocation the newest block (mining on demand meanwhile), then that block and the one before
            // replaced by empty ones, and blocks every second again.
            lan.anvil_rpc("evm_setIntervalMining", &["0"]);
            lan.anvil_rpc("evm_setAutomine", &["true"]);
            cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
            lan.anvil_rpc("anvil_reorg", &["2", "[]"]);
            lan.anvil_rpc("evm_setIntervalMining", &["1"]);
        },
        |s| s.peers_healthy == 2,
        || {},
        |s| s.peers_healthy == 2 && s.chain.lag.is_some_and(|l| l <= 3),
    );
    let health = sampler.stop();
    assert_eq!(row.lost(), 0, "{}", row.line());
    assert!(
        cluster.onchain_key(3).is_some(),
        "the reorg undid the revocation on-chain"
    );
    // Every answer of nodes 1 and 2 lists seat 3.
    let dropped = health
        .0
        .iter()
        .flat_map(|sample| sample.answers.iter().take(2).flatten())
        .filter(|peers| !peers.iter().any(|p| p.token_id == 3))
        .count();
    assert_eq!(dropped, 0, "seat 3 left a view in {dropped} samples");
    wait_full_mesh(&agents, &keys);
    steps.step("a reorg of two undid seat 3's revocation before any agent took it: nothing dropped, nothing lost");
}
