//! When a tunnel cannot come up, peers are offered by their TLS-gateway URL. Every node has a gateway URL
//! (`--gateway-domain dstack.example --gateway-port 8080`). Node 3's UDP cannot reach nodes 1 and 2
//! (blackhole routes in its namespace), and node 4 runs `--mode tls`. Nodes 1 and 2 must report node 3
//! and node 4 with connection `tls-gateway` and their URLs as address, while they stay on WireGuard with
//! each other; node 4 must report everyone by URL. Once node 3's routes are back, its tunnels come up and
//! the others move it back to `wireguard`.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios fallback:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs. `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::{Duration, Instant};

use mesh_api::ConnectionKind;
use netns_tests::prelude::*;

const NODES: usize = 4;
// Relays off: this scenario is the last resort, the gateway URL handed to applications (tests/scenarios/relay.rs
// carries the tunnel through the gateway instead).
const GATEWAY: [&str; 5] = [
    "--no-relay",
    "--gateway-domain",
    "dstack.example",
    "--gateway-port",
    "8080",
];

fn url_of(cluster: &Cluster<'_>, i: usize) -> String {
    format!(
        "https://{}-8080.dstack.example",
        cluster.sims[i - 1].instance_id
    )
}

/// Whether `a` reports seat `token` by gateway URL: connection tls-gateway, the URL as address, not healthy.
fn sees_by_url(a: &Agent<'_>, node: usize, url: &str) -> bool {
    a.peer(node as u64).is_some_and(|p| {
        p.connection == ConnectionKind::TlsGateway
            && p.address.as_deref() == Some(url)
            && p.gateway_url.as_deref() == Some(url)
            && !p.healthy
    })
}

#[test]
fn unreachable_and_tls_nodes_are_offered_by_their_gateway_url() {
    require_mesh_prerequisites();
    let steps = Steps::new("fallback");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let urls: Vec<String> = (1..=NODES).map(|i| url_of(&cluster, i)).collect();

    // Node 3 can reach the chain but not its peers.
    let blocked = [lan_ip(1), lan_ip(2)].map(|ip| format!("{ip}/32"));
    for route in &blocked {
        lan.node(3).ip(&["route", "add", "blackhole", route]);
    }
    let behind_gateway = Agent::builder(&cluster).flags(GATEWAY);
    let mut agents: Vec<Agent<'_>> = (1..=3).map(|i| behind_gateway.start(i)).collect();
    agents.push(
        Agent::builder(&cluster)
            .config(|_| AgentConfig::tls())
            .flags(GATEWAY)
            .start(4),
    );
    for a in agents.iter_mut().filter(|a| a.index != 3) {
        a.wait_ready(60);
    }
    let keys: Vec<Key> = agents[..3].iter().map(Agent::key).collect();
    wait_until(
        "nodes 1 and 2 on WireGuard with each other, node 3 registered",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            agents[0].sees_healthy(2, &keys[1])
                && agents[1].sees_healthy(1, &keys[0])
                && agents[2].status().0.node.registered
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    steps.step("nodes 1, 2 and 4 ready; node 3 registered with its UDP blocked");

    // Long enough for several handshake attempts to fail (WireGuard retries every 5 s).
    std::thread::sleep(Duration::from_secs(6));
    for a in &agents[..2] {
        for j in [3, 4] {
            assert!(
                sees_by_url(a, j, &urls[j - 1]),
                "node {} must offer node {j} by its gateway URL {}: {:?}\n{}",
                a.index,
                urls[j - 1],
                a.peer(j as u64),
                statuses(&agents)
            );
        }
        let other = 3 - a.index;
        assert!(
            a.sees_healthy(other as u64, &keys[other - 1]),
            "{}",
            statuses(&agents)
        );
        let key3 = a.wg_dump().1.into_iter().find(|p| p.public_key == keys[2]);
        assert!(
            key3.is_some_and(|p| p.latest_handshake == 0),
            "node {} keeps trying node 3's tunnel, without a handshake",
            a.index
        );
    }
    assert!(
        agents[0].peer(4).is_some_and(|p| p.wg_public_key.is_none()),
        "a TLS node has no WireGuard key"
    );
    for j in [1, 2] {
        assert!(
            sees_by_url(&agents[2], j, &urls[j - 1]),
            "node 3 must offer node {j} by URL: {:?}",
            agents[2].peer(j as u64)
        );
    }
    for j in 1..=3 {
        assert!(
            sees_by_url(&agents[3], j, &urls[j - 1]),
            "the TLS node must offer node {j} by URL: {:?}",
            agents[3].peer(j as u64)
        );
    }
    let (status4, _) = agents[3].status();
    assert_eq!(status4.node.interface, None, "a TLS node has no interface");
    assert_eq!(status4.node.gateway_url.as_deref(), Some(urls[3].as_str()));
    assert_no_pings(&agents, 1, 3);
    assert_pings(&agents, 1, 2);
    steps
        .step("nodes 1 and 2 offer nodes 3 and 4 by URL (tls-gateway) and each other by WireGuard");

    for route in &blocked {
        lan.node(3).ip(&["route", "del", "blackhole", route]);
    }
    let unblocked = Instant::now();
    wait_until(
        "nodes 1 and 2 to move node 3 back to WireGuard",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || agents[..2].iter().all(|a| a.sees_healthy(3, &keys[2])),
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    assert_pings(&agents, 1, 3);
    assert_pings(&agents, 3, 2);
    steps.step(&format!(
        "routes back: node 3 on WireGuard again after {:.2?}",
        unblocked.elapsed()
    ));

    for a in &mut agents {
        a.stop();
    }
    assert_no_warnings(&agents);
    for a in &agents {
        let noise = a.log_lines("boringtun::noise::timers");
        assert!(
            noise.is_empty(),
            "agent {}: WireGuard's expected timer events (node 3 was silent) belong at debug level: {noise:?}",
            a.index
        );
    }
}
