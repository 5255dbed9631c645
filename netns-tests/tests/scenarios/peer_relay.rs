//! Peer relays between agents: nodes 1 and 2 behind symmetric NATs, which no punch gets through, and nodes 3
//! and 4 on the switch, reachable. Node 3 is told to relay (`--relay-for-peers always`); node 4 finds it may
//! by itself (`auto`: STUN sees no NAT in front of it). coturn answers STUN, nginx stands in for the dstack
//! gateway. (`auto`'s other proof, a peer reaching the node first, is the device's unit tests': a node behind
//! a forward punches toward its peers' addresses as soon as it has a session through the gateway, and whether
//! a peer's direct initiation came first is a race.)
//!
//! 1. The pair 1–2 goes through a peer relay, not the gateway: `/v1/peers` says `peer-relay` and which seat,
//!    `/v1/status` and the metrics count the relay's allocation, and pings pass.
//! 2. The relay in use is killed: the pair moves to the other within the peer timeout.
//! 3. That one is killed too: back to the gateway's relay within the peer timeout.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios peer_relay:: -- --nocapture
//! ```

use std::time::{Duration, Instant};

use mesh_api::Path;
use netns_tests::net::uplink::{NatKind, StunServer, Uplink};
use netns_tests::prelude::*;

const RELAY_PORT: u16 = 51820;

/// Nodes behind a NAT know no public address of their own; those on the switch register theirs.
fn config(i: usize) -> AgentConfig {
    AgentConfig {
        endpoint: if i <= 2 {
            None
        } else {
            AgentConfig::lan(i).endpoint
        },
        ..AgentConfig::lan(i)
    }
}

/// The path each of nodes 1 and 2 has to the other, and the relay seat it names.
fn pair(agents: &[Agent<'_>]) -> [(Option<Path>, Option<u64>); 2] {
    [(0, 2), (1, 1)].map(|(a, to)| {
        agents[a]
            .peer(to)
            .map_or((None, None), |p| (p.path, p.relay_seat))
    })
}

/// Waits until the pair's paths pass `ok`, both sides healthy; returns how long it took.
fn wait_pair(
    agents: &[Agent<'_>],
    what: &str,
    within: Duration,
    ok: impl Fn([(Option<Path>, Option<u64>); 2]) -> bool,
) -> Duration {
    let started = Instant::now();
    wait_until(
        what,
        within,
        Duration::from_millis(50),
        || {
            ok(pair(agents))
                && agents[0].peer(2).is_some_and(|p| p.healthy)
                && agents[1].peer(1).is_some_and(|p| p.healthy)
        },
        || {
            format!(
                "{:?}\n{}{}",
                pair(agents),
                path_table(agents),
                tails(agents)
            )
        },
    );
    started.elapsed()
}

/// Both sides on `path`, through `seat` (none: the gateway's relay).
fn both_on(path: Path, seat: Option<u64>) -> impl Fn([(Option<Path>, Option<u64>); 2]) -> bool {
    move |p| p == [(Some(path), seat), (Some(path), seat)]
}

/// A sample of the agent's metrics, by its whole name and labels.
fn sample(a: &Agent<'_>, name: &str) -> Option<u64> {
    a.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn two_nodes_behind_symmetric_nats_talk_through_a_reachable_member_and_fall_back_to_the_gateway() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft", "nginx", "turnserver"]);
    let steps = Steps::new("peer-relay");
    let lan = Lan::with_uplinks(&[
        Uplink::nat(NatKind::Symmetric),
        Uplink::nat(NatKind::Symmetric),
        Uplink::Switch,
        Uplink::Switch,
    ]);
    let stun = StunServer::start(&lan.switch, "br0");
    let cluster = Cluster::deploy(&lan);
    let gateway = Gateway::for_cluster(&cluster, RELAY_PORT);
    let builder = || {
        Agent::builder(&cluster)
            .config(config)
            .flags(gateway.agent_flags())
            .flags(stun.agent_flags())
    };
    let told = builder().flags(["--relay-for-peers", "always"]);
    let mut agents = vec![
        builder().start(1),
        builder().start(2),
        told.start(3),
        builder().start(4),
    ];
    for a in &mut agents {
        a.wait_ready(60);
    }
    steps.step("nodes 1 and 2 behind symmetric NATs, 3 (told) and 4 (auto) on the switch");

    // 1. Through a peer relay.
    let took = wait_pair(
        &agents,
        "nodes 1 and 2 to go through a peer relay",
        Duration::from_secs(60),
        |p| {
            p.iter()
                .all(|(path, seat)| *path == Some(Path::PeerRelay) && matches!(seat, Some(3 | 4)))
        },
    );
    let seat = pair(&agents)[0].1.expect("a relay seat");
    assert_pings(&agents, 1, 2);
    let relay = &agents[seat as usize - 1];
    let status = relay.try_status().expect("the relay's status");
    let offered = &status["status"]["peerRelay"];
    assert_eq!(offered["offering"], true, "{offered}");
    assert!(offered["allocations"].as_u64() >= Some(1), "{offered}");
    assert!(offered["forwardedBytes"].as_u64() > Some(0), "{offered}");
    assert_eq!(
        offered["dropped"]["stranger"],
        serde_json::Value::Null,
        "{offered}"
    );
    let why = |i: usize| {
        let s = agents[i - 1].try_status().expect("status");
        s["status"]["peerRelay"]["why"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(why(3).contains("always"), "{}", why(3));
    assert!(
        why(4).contains("no NAT"),
        "node 4 offers by itself: {}",
        why(4)
    );
    assert!(
        !agents[0].try_status().expect("status")["status"]["peerRelay"]["offering"]
            .as_bool()
            .unwrap_or(true),
        "node 1 is behind a NAT: it does not offer"
    );
    // Other pairs may hold one too for a while: each asks while its direct path is still in doubt.
    assert!(sample(relay, "dstack_mesh_peer_relay_allocations") >= Some(1));
    let path_metric = agents[0].metrics().lines().any(|l| {
        l.starts_with("dstack_mesh_peer_path{")
            && l.contains("path=\"peer-relay\"")
            && l.contains(&format!("relay_seat=\"{seat}\""))
    });
    assert!(path_metric, "{}", agents[0].metrics());
    steps.step(&format!(
        "on a peer relay (seat {seat}) {took:.2?} after the agents were ready; pings pass"
    ));

    // 2. The relay in use is killed: the other takes over.
    let timeout = mesh_wg::DEFAULT_PEER_TIMEOUT;
    let other = 7 - seat;
    agents[seat as usize - 1].kill();
    let moved = wait_pair(
        &agents,
        "the pair to move to the other relay",
        timeout + Duration::from_secs(10),
        both_on(Path::PeerRelay, Some(other)),
    );
    assert_pings(&agents, 1, 2);
    steps.step(&format!(
        "relay {seat} killed: on relay {other} {moved:.2?} after"
    ));

    // 3. That one too: the gateway's relay.
    agents[other as usize - 1].kill();
    let to_gateway = wait_pair(
        &agents,
        "the pair to move to the gateway's relay",
        timeout + Duration::from_secs(10),
        both_on(Path::Relay, None),
    );
    assert_pings(&agents, 1, 2);
    steps.step(&format!(
        "relay {other} killed too: on the gateway's relay {to_gateway:.2?} after"
    ));
    assert!(
        moved <= timeout + Duration::from_secs(1) && to_gateway <= timeout + Duration::from_secs(1),
        "each move within the peer timeout ({timeout:?}) and a tick or two: {moved:?}, {to_gateway:?}"
    );
}
