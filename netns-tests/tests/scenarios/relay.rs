//! WireGuard through the gateway when UDP cannot get through. Three nodes, a stand-in gateway (nginx
//! terminating TLS for `*.mesh.test` with a test CA, routing by SNI to each node's relay port), and an
//! nftables rule on the switch that drops every UDP datagram between the nodes:
//!
//! 1. the mesh forms over the relay: every pair pings over `10.0.1.x`, and every peer's path is `relay`;
//! 2. UDP unblocked, with a ping running: every pair moves to `direct` within the documented bound, and the
//!    ping loses at most a few packets (printed);
//! 3. UDP blocked again, with pings running: every pair falls back to `relay`, and pings get through again.
//!
//! The kernel path's shim, with `wireguard-go` as the local WireGuard where there is no kernel module: two
//! nodes run `--wg-backend wireguard-go` and one the userspace device; the mesh forms over the relay through
//! the bridges, and moves to direct once UDP is unblocked.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios relay:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs, plus `nginx` with its stream module and `nft`.

use std::time::{Duration, Instant};

use mesh_api::Path;
use netns_tests::prelude::*;

const NODES: usize = 3;
const RELAY_PORT: u16 = 51820;

/// The agents of a three-node cluster behind `gateway`, each on its backend.
fn start<'a>(
    cluster: &'a Cluster<'a>,
    gateway: &Gateway,
    backends: [&str; NODES],
) -> Vec<Agent<'a>> {
    (1..=NODES)
        .map(|i| {
            Agent::builder(cluster)
                .flags(gateway.agent_flags())
                .flags(["--wg-backend", backends[i - 1]])
                .start(i)
        })
        .collect()
}

/// Waits up to `bound` until every pair is on `path`; returns how long it took.
fn until_all_on(agents: &[Agent<'_>], path: Path, bound: Duration, gateway: &Gateway) -> Duration {
    let start = Instant::now();
    wait_until(
        &format!("every pair to be on {path:?}"),
        bound,
        Duration::from_millis(200),
        || all_healthy_on(agents, path),
        || {
            format!(
                "{}{}\n{}",
                path_table(agents),
                tails(agents),
                gateway.log_tail()
            )
        },
    );
    start.elapsed()
}

/// Every node reaches every other seat's overlay address.
fn assert_every_pair_pings(agents: &[Agent<'_>]) {
    for from in 1..=NODES {
        for to in (1..=NODES).filter(|&t| t != from) {
            assert_pings(agents, from, to);
        }
    }
}

/// Every node pings every other seat's overlay address, `count` times `interval` apart, in the background.
fn ping_all(agents: &[Agent<'_>], count: u32, interval: Duration) -> Vec<BackgroundPing> {
    let mut pings = Vec::new();
    for a in agents {
        for t in (1..=NODES as u64).filter(|&t| t != a.index as u64) {
            pings.push(BackgroundPing::start(
                a.ns(),
                overlay_ip(t),
                count,
                interval,
            ));
        }
    }
    pings
}

#[test]
fn the_mesh_forms_over_the_relay_and_moves_to_direct_and_back_as_udp_allows() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft", "nginx"]);
    let steps = Steps::new("relay");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let gateway = Gateway::for_cluster(&cluster, RELAY_PORT);

    steps.step("UDP between the nodes blocked; the agents start");
    let block = UdpBlock::on(&lan);
    let agents = start(&cluster, &gateway, ["userspace"; NODES]);
    let took = until_all_on(&agents, Path::Relay, Duration::from_secs(90), &gateway);
    println!("mesh over the relay after {took:?}");
    let a = agents[0].peer(2).expect("seat 2");
    assert_eq!(
        a.relay_url.as_deref(),
        Some(
            format!(
                "https://{}-{RELAY_PORT}.{TEST_DOMAIN}",
                cluster.sims[1].instance_id
            )
            .as_str()
        ),
        "the relay URL is the gateway name with the relay port"
    );
    assert_every_pair_pings(&agents);
    let status = agents[0].ns().exec_ok(&[
        &workspace_bin("meshctl").display().to_string(),
        "status",
        "--api-socket",
        &agents[0].api_socket.display().to_string(),
    ]);
    assert!(
        status.contains(" relay ")
            && status.contains(&format!("relay https://{}", cluster.sims[1].instance_id)),
        "meshctl status shows the relay:\n{status}"
    );

    steps.step("UDP unblocked with a ping running: every pair moves to direct");
    let ping = BackgroundPing::start(
        agents[0].ns(),
        overlay_ip(2),
        400,
        Duration::from_millis(50),
    );
    std::thread::sleep(Duration::from_secs(1));
    block.off();
    // The bound: two probe intervals (a probe waits for the previous one's handshake, which WireGuard retries
    // through the relay after 5 s), plus a round trip and the other side's move on our first data.
    let bound = mesh_wg::PROBE_INTERVAL * 2 + Duration::from_secs(5);
    let took = until_all_on(&agents, Path::Direct, bound, &gateway);
    println!("every pair direct {took:?} after UDP was unblocked");
    let (sent, received, text) = ping.finish();
    let lost = sent - received;
    println!("ping 10.0.1.2 from node 1 across the move, 50 ms apart: {sent} sent, {lost} lost");
    assert!(sent >= 300, "{text}");
    assert!(lost <= 5, "the move to direct lost {lost} packets: {text}");

    steps.step("UDP blocked again, with pings running: every pair falls back to the relay");
    let block = UdpBlock::on(&lan);
    let pings = ping_all(&agents, 600, Duration::from_millis(100));
    // The peer timeout after the last answer over UDP (a silent path is probed from a third of it on),
    // plus dialling the relay.
    let bound = mesh_wg::DEFAULT_PEER_TIMEOUT + Duration::from_secs(5);
    let took = until_all_on(&agents, Path::Relay, bound, &gateway);
    println!("every pair on the relay {took:?} after UDP was blocked");
    for p in pings {
        let (sent, received, _) = p.interrupt();
        println!(
            "  during the fallback: {sent} sent, {} lost",
            sent - received
        );
    }
    assert_every_pair_pings(&agents);

    steps.step(
        "a stranger's handshake through node 1's relay is dropped, counted, and its stream closed",
    );
    let (node1, _) = agents[0].status();
    let url = node1.node.gateway_url.expect("node 1's gateway URL");
    let target = mesh_relay::relay_target(&url, RELAY_PORT).expect("node 1's relay");
    let closed = gateway.stranger_handshake(lan.node(3), &target, &agents[0].key());
    assert!(closed, "the endpoint closes a stream no member answers on");
    let counted = || {
        agents[0].metrics().lines().any(|l| {
            l.strip_prefix(
                "dstack_mesh_dropped_datagrams_total{reason=\"unknown_peer\",transport=\"relay\"} ",
            )
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v >= 1)
        })
    };
    // The counters are published with the interface's state, at the agent's refresh.
    wait_until(
        "the stranger's datagram to be counted",
        Duration::from_secs(10),
        Duration::from_millis(200),
        counted,
        || agents[0].metrics(),
    );
    assert_no_warnings(&agents);
    drop(block);
}

#[test]
fn the_kernel_paths_shim_carries_wireguard_go_over_the_relay_and_back_to_direct() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft", "nginx", "wireguard-go"]);
    let steps = Steps::new("relay-shim");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let gateway = Gateway::for_cluster(&cluster, RELAY_PORT);

    steps.step("UDP blocked; nodes 1 and 2 on wireguard-go through the shim, node 3 userspace");
    let block = UdpBlock::on(&lan);
    let agents = start(
        &cluster,
        &gateway,
        ["wireguard-go", "wireguard-go", "userspace"],
    );
    let took = until_all_on(&agents, Path::Relay, Duration::from_secs(90), &gateway);
    println!("mesh over the relay after {took:?}");
    let (status, _) = agents[0].status();
    assert_eq!(status.backend.as_deref(), Some("wireguard-go"));
    assert_every_pair_pings(&agents);

    steps.step("UDP unblocked with pings running: every pair moves to direct");
    let pings = ping_all(&agents, 900, Duration::from_millis(50));
    block.off();
    // wireguard-go pairs try the direct path every 30 s for 5 s; pairs with the userspace node probe every 5 s.
    let bound = mesh_wg::TRIAL_EVERY + mesh_wg::TRIAL + Duration::from_secs(10);
    let took = until_all_on(&agents, Path::Direct, bound, &gateway);
    println!("every pair direct {took:?} after UDP was unblocked");
    for p in pings {
        let (sent, received, text) = p.interrupt();
        let lost = sent - received;
        println!("  across the move: {sent} sent, {lost} lost");
        assert!(lost <= 5, "the move to direct lost {lost} packets: {text}");
    }
    assert_no_warnings(&agents);

    // No traffic now but the agents' own: wireguard-go tells the agent nothing per datagram, so its nodes'
    // peers stay healthy only through the probes they send from a raw socket on the interface.
    steps.step("idle for three peer timeouts: every peer stays healthy, wireguard-go's included");
    let timeout = mesh_wg::DEFAULT_PEER_TIMEOUT;
    let sockets: Vec<_> = agents.iter().map(|a| a.api_socket().to_owned()).collect();
    let sampler = HealthSampler::start(sockets, Duration::from_millis(200));
    let idle_from = Instant::now();
    std::thread::sleep(timeout * 3);
    let idle_to = Instant::now();
    let mut agents = agents;
    agents[1].kill();
    let killed = Instant::now();
    std::thread::sleep(timeout + Duration::from_secs(2));
    let health = sampler.stop();
    let flaps = health.unhealthy(&[1, 2, 3], &[1, 2, 3], idle_from, idle_to);
    assert!(
        flaps.is_empty(),
        "idle peers shown unhealthy (s, node, seat): {flaps:?}"
    );
    let dead = health
        .all_said(&[1, 3], 2, false, killed)
        .expect("seat 2 shown unhealthy after its agent (and its wireguard-go) was killed");
    println!(
        "idle {:.0} s with no peer unhealthy; seat 2 unhealthy at node 1 (wireguard-go) and node 3 {dead:.2?} after its kill",
        (idle_to - idle_from).as_secs_f64()
    );
    assert!(
        dead <= timeout + Duration::from_millis(600),
        "seat 2 shown unhealthy only {dead:?} after its kill (the kernel backend reads its peers every 0.5 s)"
    );
}
