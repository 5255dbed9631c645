//! Direct paths between nodes behind NATs, by STUN and hole punching, with the relay as the fallback; and the
//! tunnel's MTU on a path that carries less than Ethernet.
//!
//! Real NATs, real servers: each node sits behind slirp4netns (the user-mode NAT of QEMU, which dstack's CVMs
//! sit behind) or an nftables router of one of four kinds, on "hosts" joined by the switch's bridge, the
//! "internet"; coturn answers STUN there, and nginx stands in for the dstack gateway. No node registers an
//! endpoint: none knows its public address.
//!
//! 1. Two nodes behind slirp4netns meet on the relay, punch through, and end up `punched`, the relay used only
//!    until then; when one NAT restarts (a new mapping), the pair gets a direct path back, or keeps its
//!    session on the relay meanwhile.
//! 2. Eight nodes, two behind each kind of NAT: every pair the measured matrix says can punch ends up
//!    `punched`, and the others stay on the relay, each saying why (the two symmetric NATs are not even
//!    tried). Then a ninth node on the switch offers to relay for its peers: every pair that cannot punch
//!    goes through it (`peer-relay`), still saying why it is not punched, and the rest stay punched.
//! 3. A node behind a link of 1,280 bytes: a bulk transfer stalls at the default MTU and the agent's log says
//!    why and what to do; with `--mtu 1200` it completes.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios nat_traversal:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/relay.rs` needs, plus `slirp4netns` and `turnserver` (coturn).

use std::time::{Duration, Instant, SystemTime};

use mesh_api::Path;
use netns_tests::net::uplink::{NatKind, StunServer, Uplink, expected_to_punch};
use netns_tests::prelude::*;

const RELAY_PORT: u16 = 51820;

/// Nodes that know no public address of their own: they register none.
fn behind_nat(i: usize) -> AgentConfig {
    AgentConfig {
        endpoint: None,
        ..AgentConfig::lan(i)
    }
}

/// A node-wide relay counter from the agent's metrics.
fn relay_bytes(a: &Agent<'_>) -> u64 {
    [
        "dstack_mesh_relay_tx_bytes_total ",
        "dstack_mesh_relay_rx_bytes_total ",
    ]
    .iter()
    .map(|name| {
        a.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

#[test]
fn two_nodes_behind_slirp_punch_a_direct_path_and_use_the_relay_only_until_then() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft", "nginx", "slirp4netns", "turnserver"]);
    let steps = Steps::new("slirp");
    let lan = Lan::with_uplinks(&[Uplink::Slirp, Uplink::Slirp]);
    let stun = StunServer::start(&lan.switch, "br0");
    let cluster = Cluster::deploy(&lan);
    let gateway = Gateway::for_cluster(&cluster, RELAY_PORT);
    steps
        .step("two nodes behind slirp4netns, coturn and the gateway on the internet; agents start");

    let started = SystemTime::now();
    let builder = Agent::builder(&cluster)
        .config(behind_nat)
        .flags(gateway.agent_flags())
        .flags(stun.agent_flags());
    let mut agents = builder.start_all(1..=2);
    wait_until(
        "nodes 1 and 2 to punch a direct path to each other",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            [path_to(&agents[0], 2), path_to(&agents[1], 1)]
                .iter()
                .all(|p| matches!(p, Some((Path::Punched, _))))
        },
        || {
            format!(
                "{}{}\n{}",
                path_table(&agents),
                tails(&agents),
                gateway.log_tail()
            )
        },
    );
    // From each agent's log: it met the other on the relay first (neither knows the other's address until
    // they talk), and punched after.
    let since = |t: SystemTime| t.duration_since(started).unwrap_or_default();
    for a in &agents {
        let relayed = a
            .first_logged("path.relay")
            .unwrap_or_else(|| panic!("node {} never used the relay\n{}", a.index, a.tail()));
        let punched = a.first_logged("path.punched").expect("punched");
        assert!(relayed <= punched, "node {}: relay, then punched", a.index);
        println!(
            "node {}: on the relay {:.2?} after the agents started, punched {:.2?} after (the relay carried {:.2?})",
            a.index,
            since(relayed),
            since(punched),
            punched.duration_since(relayed).unwrap_or_default()
        );
    }
    let punched_at = agents
        .iter()
        .filter_map(|a| a.first_logged("path.punched"))
        .map(since)
        .max()
        .expect("both punched");
    assert_pings(&agents, 1, 2);
    assert_pings(&agents, 2, 1);

    let (status, peers) = agents[0].status();
    let nat = status.nat.expect("node 1's NAT");
    assert_eq!(
        nat.mapping, "endpoint-independent",
        "slirp4netns maps a socket to one host port for every destination: {nat:?}"
    );
    let public = nat.mapped.first().expect("a public mapping");
    assert!(
        public.starts_with(&format!("{}:", lan_ip(1))) && !public.ends_with(":51820"),
        "node 1 is seen at its host's address, on a port slirp4netns chose: {public}"
    );
    let two = peers.iter().find(|p| p.token_id == 2).expect("seat 2");
    assert!(
        two.candidates
            .iter()
            .any(|c| c.source == "stun" && c.address.starts_with(&format!("{}:", lan_ip(2)))),
        "node 2 published its STUN mapping: {:?}",
        two.candidates
    );
    assert!(
        two.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with(&format!("{}:", lan_ip(2)))),
        "node 1 reaches node 2 at node 2's public mapping: {:?}",
        two.endpoint
    );
    let shown = agents[0].ns().exec_ok(&[
        &workspace_bin("meshctl").display().to_string(),
        "status",
        "--api-socket",
        &agents[0].api_socket.display().to_string(),
    ]);
    assert!(
        shown.contains(" punched ") && shown.contains("nat mapping endpoint-independent"),
        "meshctl status shows the punched path and the NAT:\n{shown}"
    );
    steps.step(&format!(
        "punched {punched_at:.2?} after the agents started; node 1 is seen at {public}"
    ));

    // Once punched, the relay carries nothing more: 100 pings each way go over UDP.
    let before: Vec<u64> = agents.iter().map(relay_bytes).collect();
    for (from, to) in [(1, 2), (2, 1)] {
        let (sent, got) = ping(
            lan.node(from),
            overlay_ip(to),
            100,
            Duration::from_millis(10),
        );
        assert_eq!(got, sent, "node {from} -> {to} over the punched path");
    }
    let after: Vec<u64> = agents.iter().map(relay_bytes).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a - b < 2_000,
            "node {}'s relay carried {} bytes during 200 pings over the punched path",
            i + 1,
            a - b
        );
    }
    steps.step("the relay carried nothing while 200 pings crossed the punched path");
    // The restart below cuts node 1's connections too, the RPC's among them, which it rightly warns of.
    assert_no_warnings(&agents);

    // The NAT in front of node 1 restarts: node 1's sockets get new host ports.
    let ping = BackgroundPing::start(lan.node(2), overlay_ip(1), 600, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(1));
    let remapped = Instant::now();
    lan.restart_slirp(1);
    let mut recovered = None;
    wait_until(
        "the pair to get a working path back after node 1's NAT restarted",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let fresh = agents[0].peer(2).is_some_and(|p| p.healthy)
                && agents[1].peer(1).is_some_and(|p| p.healthy);
            let udp = matches!(
                path_to(&agents[1], 1),
                Some((Path::Punched | Path::Direct, _))
            ) && matches!(
                path_to(&agents[0], 2),
                Some((Path::Punched | Path::Direct, _))
            );
            let reached = replies(&agents, 2, 1) == 3;
            if fresh && reached && recovered.is_none() {
                recovered = Some((remapped.elapsed(), path_to(&agents[1], 1)));
            }
            fresh && udp && reached
        },
        || format!("{}{}", path_table(&agents), tails(&agents)),
    );
    let direct_again = remapped.elapsed();
    let (sent, received, _) = ping.interrupt();
    println!(
        "node 1's NAT restarted: reached again after {:?} on {:?}, direct again after {direct_again:.2?}; \
         pings from node 2 meanwhile: {sent} sent, {} lost",
        recovered.as_ref().map(|r| r.0),
        recovered.as_ref().and_then(|r| r.1.as_ref().map(|p| p.0)),
        sent - received
    );
    let mut now_public = Vec::new();
    wait_until(
        "node 1 to learn its new mapping",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || {
            now_public = agents[0]
                .status()
                .0
                .nat
                .map(|n| n.mapped)
                .unwrap_or_default();
            !now_public.is_empty() && !now_public.contains(public)
        },
        || agents[0].tail(),
    );
    let learnt = remapped.elapsed();
    steps.step(&format!(
        "node 1 remapped from {public} to {now_public:?} (learnt after {learnt:.2?}): direct again after \
         {direct_again:.2?}, the same tunnel throughout"
    ));
    for a in &mut agents {
        a.stop();
    }
}

#[test]
fn the_nat_matrix_punches_every_pair_that_can_and_keeps_the_rest_on_a_relay() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft", "nginx", "turnserver"]);
    let steps = Steps::new("nat-matrix");
    let kinds: Vec<NatKind> = NatKind::ALL.iter().flat_map(|&k| [k, k]).collect();
    let mut uplinks: Vec<Uplink> = kinds.iter().map(|&k| Uplink::nat(k)).collect();
    // Node 9, on the switch, is the peer relay of the second half.
    uplinks.push(Uplink::Switch);
    let relay_seat = uplinks.len();
    let lan = Lan::with_uplinks(&uplinks);
    let stun = StunServer::start(&lan.switch, "br0");
    let cluster = Cluster::deploy(&lan);
    let gateway = Gateway::for_cluster(&cluster, RELAY_PORT);
    steps.step("eight nodes, two behind each kind of NAT; agents start");

    let builder = |relaying: &str| {
        Agent::builder(&cluster)
            .config(move |i| {
                if i == relay_seat {
                    AgentConfig::lan(i)
                } else {
                    behind_nat(i)
                }
            })
            .flags(gateway.agent_flags())
            .flags(stun.agent_flags())
            .flags(["--relay-for-peers", relaying])
    };
    // None of the eight relays for the others: the first half of the matrix is without a peer relay.
    let mut agents = builder("never").start_all(1..=kinds.len());
    let kind = |i: usize| kinds[i - 1];
    let pairs: Vec<(usize, usize)> = (1..=kinds.len())
        .flat_map(|a| (a + 1..=kinds.len()).map(move |b| (a, b)))
        .collect();
    let started = Instant::now();
    let settled = |agents: &[Agent<'_>], a: usize, b: usize| {
        let want = if expected_to_punch(kind(a), kind(b)) {
            Path::Punched
        } else {
            Path::Relay
        };
        [path_to(&agents[a - 1], b), path_to(&agents[b - 1], a)]
            .iter()
            .all(|p| p.as_ref().is_some_and(|(path, _)| *path == want))
            && agents[a - 1].peer(b as u64).is_some_and(|p| p.healthy)
    };
    wait_until(
        "every pair that can punch to be punched, and every other on the relay",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || pairs.iter().all(|&(a, b)| settled(&agents, a, b)),
        || format!("{}{}", path_table(&agents), tails(&agents)),
    );
    println!(
        "the matrix settled {:.2?} after the agents were ready",
        started.elapsed()
    );
    // Long enough for a pair that should not punch to have tried (and for one that did to have wobbled).
    std::thread::sleep(Duration::from_secs(12));
    let table = matrix_table(&agents, &kinds);
    for &(a, b) in &pairs {
        assert!(
            settled(&agents, a, b),
            "{} ({}) and {} ({}) moved off what the matrix says\n{}",
            a,
            kind(a).as_str(),
            b,
            kind(b).as_str(),
            path_table(&agents)
        );
        if expected_to_punch(kind(a), kind(b)) {
            continue;
        }
        let (_, why) = path_to(&agents[a - 1], b).expect("a path");
        let why = why.unwrap_or_default();
        let both_symmetric = kind(a) == NatKind::Symmetric && kind(b) == NatKind::Symmetric;
        if both_symmetric {
            assert!(
                why.contains("symmetric") && why.contains("no candidate can work"),
                "two symmetric NATs are not tried, and the reason says so: {why}"
            );
            assert_eq!(
                agents[a - 1].peer(b as u64).map(|p| p.punch_attempts),
                Some(0),
                "not even tried"
            );
        } else {
            assert!(
                why.contains("with no answer over UDP") || why.contains("no answer over UDP from"),
                "a pair that cannot punch says it was tried without an answer: {why}"
            );
        }
    }
    for &(a, b) in &[(1, 8), (3, 5), (7, 8), (5, 6)] {
        assert_pings(&agents, a, b);
    }
    println!("{table}");
    steps.step(
        "every pair where the measured matrix says punched is punched; the rest relay and say why",
    );

    // A member on the switch offers to relay: every pair that cannot punch goes through it, not the gateway.
    agents.push(builder("always").start_all([relay_seat]).remove(0));
    let through_relay = |a: usize, b: usize| {
        [(a, b), (b, a)].iter().all(|&(x, y)| {
            agents[x - 1].peer(y as u64).is_some_and(|p| {
                p.path == Some(Path::PeerRelay)
                    && p.relay_seat == Some(relay_seat as u64)
                    && p.healthy
            })
        })
    };
    let started = Instant::now();
    wait_until(
        "every pair that cannot punch to go through the peer relay, and every other to stay punched",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            pairs.iter().all(|&(a, b)| {
                if expected_to_punch(kind(a), kind(b)) {
                    settled(&agents, a, b)
                } else {
                    through_relay(a, b)
                }
            })
        },
        || format!("{}{}", path_table(&agents), tails(&agents)),
    );
    println!(
        "with a peer relay, the matrix settled {:.2?} after it was ready",
        started.elapsed()
    );
    let table = matrix_table(&agents, &kinds);
    for &(a, b) in pairs
        .iter()
        .filter(|&&(a, b)| !expected_to_punch(kind(a), kind(b)))
    {
        let (_, why) = path_to(&agents[a - 1], b).expect("a path");
        let why = why.unwrap_or_default();
        assert!(
            why.contains("symmetric") || why.contains("no answer over UDP"),
            "{a} and {b} still say why they are not punched: {why}"
        );
        assert_pings(&agents, a, b);
    }
    println!("with a peer relay:\n{table}");
    steps.step(
        "with node 9 relaying, every pair that cannot punch goes through it; the rest stay punched",
    );
    assert_no_warnings(&agents);
}

#[test]
fn a_path_smaller_than_the_tunnel_is_named_in_the_log_and_a_smaller_mtu_carries_bulk_data() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft"]);
    let steps = Steps::new("mtu");
    let lan = Lan::with_uplinks(&[
        Uplink::Switch,
        Uplink::Nat {
            kind: NatKind::FullCone,
            mtu: 1280,
        },
    ]);
    let cluster = Cluster::deploy(&lan);
    // Node 2's full cone keeps its WireGuard port: it registers its public address as any forwarded host.
    let builder = Agent::builder(&cluster);
    let (mut agents, _) = builder.mesh(1..=2);
    steps.step("node 2 behind a link of 1,280 bytes; the mesh is up at the default MTU (1420)");

    let stalled = netns_tests::measure::transfer::tcp_transfer_within(
        lan.node(1),
        lan.node(2),
        overlay_ip(2),
        4 << 20,
        Duration::from_secs(8),
    );
    let why = stalled.expect_err("full-size packets cannot cross a 1,280-byte link with DF set");
    println!("at MTU 1420: {why}");
    wait_until(
        "node 1 to log that the path to node 2 is too small, and what to do",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            agents[0].warnings().iter().any(|w| {
                w.contains("carries at most 1280 bytes")
                    && w.contains("--mtu 1220")
                    && w.contains("ICMP")
            })
        },
        || agents[0].tail(),
    );
    let line = agents[0]
        .warnings()
        .into_iter()
        .find(|w| w.contains("--mtu 1220"))
        .expect("the warning");
    steps.step(&format!("node 1 says: {line}"));

    for a in &mut agents {
        a.restart(&["--mtu", "1200"]);
    }
    for a in &mut agents {
        a.wait_ready(60);
    }
    let took = netns_tests::measure::transfer::tcp_transfer(
        lan.node(1),
        lan.node(2),
        overlay_ip(2),
        16 << 20,
    );
    steps.step(&format!(
        "with --mtu 1200: 16 MiB crossed intact in {took:.2?}"
    ));
    for a in &mut agents {
        a.stop();
    }
}

/// Whether both nodes of a pair show each other on `path` and healthy.
fn pair_on(agents: &[Agent<'_>], path: Path) -> bool {
    [(0, 2), (1, 1)].iter().all(|&(i, seat)| {
        agents[i]
            .peers()
            .ok()
            .and_then(|ps| ps.into_iter().find(|p| p.token_id == seat))
            .is_some_and(|p| p.healthy && p.path == Some(path))
    })
}

/// The samples between `from` and `to` in which a node showed its peer `punched` and healthy (seconds after
/// `from`, node): while the punched path is dark, that is a lie.
fn punched_and_healthy(health: &Health, from: Instant, to: Instant) -> Vec<(f64, usize)> {
    health
        .0
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .flat_map(|s| {
            (1..=2).filter_map(move |i| {
                let peer = 3 - i as u64;
                let peers = s.answers[i - 1].as_ref()?;
                let p = peers.iter().find(|p| p.token_id == peer)?;
                (p.healthy && p.path == Some(Path::Punched))
                    .then(|| ((s.at - from).as_secs_f64(), i))
            })
        })
        .collect()
}

/// A punched pair (full cone ↔ symmetric) whose path goes dark: the symmetric NAT forgets its mappings, then
/// UDP between the sites is blocked. Each side hears nothing from the other within a third of the peer
/// timeout and probes; with nothing back by the timeout it shows the peer unhealthy and moves to the relay,
/// and never shows the dark punched path healthy after that. Unblocked, the pair punches again. Then both
/// agents are restarted 20 times, from scratch: each time the pair punches within 2 s of meeting on the
/// relay (a first attempt that copied an initiation already answered over the relay used to be dropped by
/// the peer as a replay, and the next came 15 s later).
#[test]
fn a_punched_path_that_goes_dark_is_left_for_the_relay_within_the_peer_timeout() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["nft", "nginx", "turnserver", "conntrack"]);
    let steps = Steps::new("nat-dark");
    let lan = Lan::with_uplinks(&[
        Uplink::nat(NatKind::FullCone),
        Uplink::nat(NatKind::Symmetric),
    ]);
    let stun = StunServer::start(&lan.switch, "br0");
    let cluster = Cluster::deploy(&lan);
    let gateway = Gateway::for_cluster(&cluster, RELAY_PORT);
    let mut agents = Agent::builder(&cluster)
        .config(behind_nat)
        .flags(gateway.agent_flags())
        .flags(stun.agent_flags())
        .start_all(1..=2);
    let punched = |agents: &[Agent<'_>], what: &str, within: Duration| {
        wait_until(
            what,
            within,
            Duration::from_millis(50),
            || pair_on(agents, Path::Punched),
            || format!("{}{}", path_table(agents), tails(agents)),
        );
    };
    punched(&agents, "the pair to punch", Duration::from_secs(60));
    steps.step("node 1 behind a full cone, node 2 behind a symmetric NAT: punched");
    let timeout = mesh_wg::DEFAULT_PEER_TIMEOUT;
    let sockets: Vec<_> = agents.iter().map(|a| a.api_socket().to_owned()).collect();
    let sampler = HealthSampler::start(sockets, Duration::from_millis(100));

    // The symmetric NAT forgets: node 2's next datagram out gets a new port, which node 1 learns by roaming
    // as soon as it authenticates; a probe brings one within a third of the timeout of silence.
    let ping = BackgroundPing::start(lan.node(1), overlay_ip(2), 100, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(2));
    let flushed = Instant::now();
    lan.flush_nat(2);
    let answering_again = wait_for_replies(&agents, 1, 2);
    let healed = flushed.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (sent, received, _) = ping.interrupt();
    let flush_lost = sent - received;
    steps.step(&format!(
        "node 2's NAT forgot its mappings: pings through again within {healed:.2?} (3 pings 200 ms apart), \
         {flush_lost} of {sent} pings 100 ms apart lost; {}",
        path_table(&agents).trim().replace('\n', "; ")
    ));

    // UDP between the sites blocked: the relay within the timeout, with pings lost only meanwhile.
    let ping = BackgroundPing::start(lan.node(1), overlay_ip(2), 150, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(2));
    let blocked = Instant::now();
    let block = UdpBlock::on(&lan);
    wait_until(
        "the pair to move to the relay",
        timeout + Duration::from_secs(10),
        Duration::from_millis(50),
        || pair_on(&agents, Path::Relay),
        || format!("{}{}", path_table(&agents), tails(&agents)),
    );
    let to_relay = blocked.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    let (sent, received, _) = ping.interrupt();
    let block_lost = sent - received;
    let unblocked = Instant::now();
    block.off();
    punched(
        &agents,
        "the pair to punch again once UDP gets through",
        Duration::from_secs(60),
    );
    let punched_again = unblocked.elapsed();
    let health = sampler.stop();
    steps.step(&format!(
        "UDP blocked: on the relay {to_relay:.2?} after, {block_lost} of {sent} pings lost; unblocked: punched again {punched_again:.2?} after"
    ));

    // Within the timeout of the block the last answer is recent: after it, never.
    let told_from = blocked + timeout + Duration::from_millis(250);
    let lies = punched_and_healthy(&health, told_from, unblocked);
    assert!(
        lies.is_empty(),
        "a dark punched path shown healthy after the peer timeout (s after the timeout, node): {lies:?}"
    );
    let told = punched_and_healthy(&health, blocked, told_from);
    println!(
        "nat-dark: the dark punched path was still shown healthy in {} of the samples in the timeout after the block",
        told.len()
    );
    assert!(
        to_relay <= timeout + Duration::from_secs(3),
        "on the relay only {to_relay:?} after UDP was blocked (the peer timeout is {timeout:?}, plus the relay's dial)"
    );
    assert!(
        answering_again,
        "the pair did not carry pings again after the NAT forgot its mappings\n{}",
        tails(&agents)
    );
    assert!(
        flush_lost <= 15,
        "{flush_lost} pings (100 ms apart) lost after the NAT forgot its mappings"
    );
    assert!(
        block_lost <= 45,
        "{block_lost} pings (100 ms apart) lost while the pair moved to the relay"
    );

    // The punch again and again, from scratch: both agents restart (no session, no address known on either
    // side), meet on the relay, and punch; each node's time from the relay to punched, from its log.
    let mut times = Vec::new();
    for run in 1..=20 {
        for a in agents.iter_mut() {
            a.stop();
        }
        let since = SystemTime::now();
        for a in agents.iter_mut() {
            a.start_again();
        }
        // Traffic from the start, as an application sends as soon as its peer is listed: its packets start
        // handshakes between the device's timer ticks, whose answers boringtun stamps a tick early.
        let traffic =
            BackgroundPing::start(lan.node(1), overlay_ip(2), 500, Duration::from_millis(20));
        punched(
            &agents,
            &format!("run {run}: the pair to punch after both agents restarted"),
            Duration::from_secs(30),
        );
        let _ = traffic.interrupt();
        let took = agents
            .iter()
            .map(|a| {
                let relayed = a
                    .first_logged_since("path.relay", since)
                    .unwrap_or_else(|| {
                        panic!(
                            "run {run}: node {} met its peer on the relay first\n{}",
                            a.index,
                            a.tail()
                        )
                    });
                let punched_at = a
                    .first_logged_since("path.punched", since)
                    .expect("punched");
                punched_at.duration_since(relayed).unwrap_or_default()
            })
            .max()
            .expect("two nodes");
        times.push(took);
    }
    let mut sorted = times.clone();
    sorted.sort();
    println!(
        "nat-dark: 20 punches from scratch (both agents restarted), from the relay to punched, the later node: median {:.2?}, worst {:.2?}; all: {times:.2?}",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    assert!(
        sorted[sorted.len() - 1] <= Duration::from_secs(2),
        "a punch took longer than 2 s: {times:.2?}"
    );
}

/// What was seen, kind against kind: one pair of nodes (`kinds[i - 1]` is node i's NAT) for each cell.
fn matrix_table(agents: &[Agent<'_>], kinds: &[NatKind]) -> String {
    let kind = |i: usize| kinds[i - 1];
    let mut table = String::from(
        "| | full-cone | address-restricted | port-restricted | symmetric |\n|---|---|---|---|---|\n",
    );
    for ka in NatKind::ALL {
        table.push_str(&format!("| {} |", ka.as_str()));
        for kb in NatKind::ALL {
            let (a, b) = (1..=kinds.len())
                .flat_map(|a| (1..=kinds.len()).map(move |b| (a, b)))
                .find(|&(a, b)| a != b && kind(a) == ka && kind(b) == kb)
                .expect("two nodes of each kind");
            let seen = path_to(&agents[a - 1], b).map_or("absent", |(p, _)| p.as_str());
            table.push_str(&format!(" {seen} |"));
        }
        table.push('\n');
    }
    table
}

/// Whether node `from` gets pings through to node `to` again within the peer timeout.
fn wait_for_replies(agents: &[Agent<'_>], from: usize, to: usize) -> bool {
    let deadline = Instant::now() + mesh_wg::DEFAULT_PEER_TIMEOUT;
    while Instant::now() < deadline {
        if replies(agents, from, to) > 0 {
            return true;
        }
    }
    false
}
