//! The leader port (`--leader-port`) and the replica port (`--replica-port`) on three real agents: each node
//! runs a TCP service that answers with its seat and the term it leads under.
//!
//! - Every node's leader port, on loopback and on its overlay address, reaches the leader's service.
//! - The replica port reaches the members that do not lead, spread over them.
//! - The leader's node is cut off the LAN. Its own port refuses connections as soon as its lease lapses; the
//!   others' ports refuse too, a lease after seat 1 last answered them as leading, before any new term, and
//!   close the connections they opened to it; once the others elect seat 2, new connections reach seat 2's
//!   service under the new term. Prints how long node 3's port reached no leader.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios leader_port:: -- --nocapture
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_api::PortRole;
use netns_tests::prelude::*;

const NODES: usize = 3;
const LEADER_TIMEOUT: &str = "5";
const SERVICE: u16 = 7001;
const LEADER_PORT: u16 = 7000;
const REPLICA_PORT: u16 = 7002;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn overlay(seat: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, seat], port))
}

/// The seat and term an answer names: `seat S term T: …`.
fn seat_and_term(answer: &str) -> (u64, Option<u64>) {
    let mut words = answer.split_whitespace();
    let seat = words.nth(1).and_then(|s| s.parse().ok());
    let term = words.nth(1).map(|t| t.trim_end_matches(':').parse().ok());
    match (seat, term) {
        (Some(seat), Some(term)) => (seat, term),
        _ => panic!("not an answer of the echo service: {answer:?}"),
    }
}

fn port_of(agent: &Agent<'_>, role: PortRole) -> mesh_api::ForwardedPort {
    agent
        .status()
        .0
        .ports
        .into_iter()
        .find(|p| p.role == role)
        .unwrap_or_else(|| panic!("no {} port in the status", role.as_str()))
}

#[test]
fn the_leader_port_reaches_the_leader_of_the_term_and_only_it() {
    require_mesh_prerequisites();
    let steps = Steps::new("leader_port");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let leader_port = format!("{LEADER_PORT}:{SERVICE}");
    let replica_port = format!("{REPLICA_PORT}:{SERVICE}");
    let (agents, _) = Agent::builder(&cluster)
        .flags([
            "--leader-timeout",
            LEADER_TIMEOUT,
            "--leader-port",
            &leader_port,
            "--replica-port",
            &replica_port,
        ])
        .mesh(1..=NODES);
    let _services: Vec<TermEcho> = (1..=NODES)
        .map(|i| {
            TermEcho::start(
                lan.node(i),
                SERVICE,
                i as u64,
                agents[i - 1].api_socket().to_owned(),
            )
        })
        .collect();
    wait_until(
        "node 1 to lead under its lease, and every agent to see it",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            agents[0].leader().is_ok_and(|l| l.is_self)
                && agents.iter().all(|a| {
                    a.leader().is_ok_and(|l| {
                        l.token_id == Some(1) && l.state == mesh_api::Freshness::Current
                    })
                })
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    let first_term = agents[0].leader().unwrap().term.expect("a term");
    steps.step(&format!("mesh up; seat 1 leads under term {first_term}"));

    // Every node's port, on loopback and on the overlay address (from another node), reaches seat 1.
    let mut held = Vec::new();
    for i in 1..=NODES {
        let from_other = lan.node(i % NODES + 1);
        for (ns, to) in [
            (lan.node(i), loopback(LEADER_PORT)),
            (from_other, overlay(i as u8, LEADER_PORT)),
        ] {
            wait_until(
                &format!("{to} from {} to reach seat 1", ns.name),
                Duration::from_secs(10),
                Duration::from_millis(200),
                || reaches(ns, to).is_some_and(|a| seat_and_term(&a) == (1, Some(first_term))),
                || format!("{:?}\n{}", reaches(ns, to), tails(&agents)),
            );
        }
        if i > 1 {
            let mut c = LineClient::connect(lan.node(i), loopback(LEADER_PORT)).unwrap();
            assert!(c.ask("hold").is_some());
            held.push(c);
        }
    }
    steps.step("every node's leader port reaches seat 1's service, on 127.0.0.1 and on its overlay address");

    // The replica port: the two members that do not lead, one connection each while both are open.
    let mut replicas = Vec::new();
    let mut seats = Vec::new();
    for _ in 0..2 {
        let mut c = LineClient::connect(lan.node(1), loopback(REPLICA_PORT)).unwrap();
        seats.push(seat_and_term(&c.ask("read").expect("an answer")).0);
        replicas.push(c);
    }
    seats.sort_unstable();
    assert_eq!(seats, [2, 3], "spread over the seats that do not lead");
    steps.step("node 1's replica port spreads its connections over seats 2 and 3");
    drop(replicas);

    let cut = lan.cut_off(1);
    let cut_at = Instant::now();
    steps.step("node 1, the leader, cut off the LAN");

    // Node 1's own port: no lease, no forward.
    wait_until(
        "node 1's port to refuse connections once its lease lapses",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || reaches(lan.node(1), loopback(LEADER_PORT)).is_none(),
        || format!("{:?}\n{}", agents[0].leader(), agents[0].tail()),
    );
    let refused_after = cut_at.elapsed();
    // The status is rendered every second. The connection that found the port closed may have been fenced
    // rather than refused (counted as fenced): each look asks again, so that a refusal is what is counted
    // once the lease has lapsed. Once closed, the port stays closed: node 1's view of the chain is current
    // a while longer, but its claim ran out, and its overlay address would reach its own service.
    wait_until(
        "node 1's status to count the refusal as not-current",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let again = reaches(lan.node(1), loopback(LEADER_PORT));
            assert!(
                again.is_none(),
                "node 1's port forwarded again after its lease ran out: {again:?}\n{}",
                agents[0].tail()
            );
            port_of(&agents[0], PortRole::Leader)
                .refused
                .get("not-current")
                .is_some_and(|&n| n > 0)
        },
        || format!("{:?}", port_of(&agents[0], PortRole::Leader)),
    );
    steps.step(&format!(
        "node 1's port refuses {:.1} s after the cut (its lease lapsed)",
        refused_after.as_secs_f64()
    ));

    // Nodes 2 and 3 no longer hear seat 1 lead: a lease after its last answer (and a heartbeat, for that
    // answer's ping) they stop forwarding to it, before the others vote it out, and close what they opened.
    let bound = Duration::from_millis(2_500 + 500 + 1_500);
    for i in [2, 3] {
        wait_until(
            &format!("node {i} to stop taking seat 1 as current"),
            bound.saturating_sub(cut_at.elapsed()),
            Duration::from_millis(100),
            || {
                agents[i - 1]
                    .leader()
                    .is_ok_and(|l| l.state != mesh_api::Freshness::Current)
            },
            || format!("{:?}\n{}", agents[i - 1].leader(), agents[i - 1].tail()),
        );
    }
    let stale_after = cut_at.elapsed();
    assert!(
        agents[2].leader().is_ok_and(|l| l.token_id == Some(1)),
        "seat 1 is still the leader named: the followers refuse before any new term"
    );
    assert!(reaches(lan.node(3), loopback(LEADER_PORT)).is_none());
    wait_until(
        "node 3's status to count a refusal as not-current",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            port_of(&agents[2], PortRole::Leader)
                .refused
                .get("not-current")
                .is_some_and(|&n| n > 0)
        },
        || format!("{:?}", port_of(&agents[2], PortRole::Leader)),
    );
    for (k, c) in held.iter_mut().enumerate() {
        assert!(
            c.closed_within(Duration::from_secs(2)),
            "node {}'s connection to seat 1 outlived seat 1's lease",
            k + 2
        );
    }
    steps.step(&format!(
        "nodes 2 and 3 stop forwarding to seat 1 {:.1} s after the cut (its last answer plus the lease), before any new term",
        stale_after.as_secs_f64()
    ));

    // New connections reach seat 2 once it leads.
    let answered = std::cell::RefCell::new(None);
    wait_until(
        "node 3's leader port to reach seat 2 under a newer term",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let got = reaches(lan.node(3), loopback(LEADER_PORT));
            *answered.borrow_mut() = got.clone();
            got.as_deref()
                .is_some_and(|a| matches!(seat_and_term(a), (2, Some(t)) if t > first_term))
        },
        || {
            format!(
                "{:?}\n{}\n{}",
                answered.borrow(),
                statuses(&agents),
                tails(&agents)
            )
        },
    );
    let dark = cut_at.elapsed();
    let (_, second_term) = seat_and_term(answered.borrow().as_deref().unwrap());
    for (ns, to) in [
        (lan.node(2), loopback(LEADER_PORT)),
        (lan.node(3), overlay(2, LEADER_PORT)),
        (lan.node(2), overlay(3, LEADER_PORT)),
    ] {
        wait_until(
            &format!("{to} from {} to reach seat 2", ns.name),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || reaches(ns, to).is_some_and(|a| seat_and_term(&a) == (2, second_term)),
            || format!("{:?}", reaches(ns, to)),
        );
    }
    let term_of = |port: &mesh_api::ForwardedPort, t: u64| {
        port.routes.iter().find(|r| r.term == Some(t)).copied()
    };
    wait_until(
        "node 3's status to show its old term's connection fenced and the new term's opened",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let third = port_of(&agents[2], PortRole::Leader);
            term_of(&third, first_term).is_some_and(|r| r.seat == 1 && r.counts.fenced >= 1)
                && term_of(&third, second_term.unwrap())
                    .is_some_and(|r| r.seat == 2 && r.counts.opened >= 1)
                && third.total.bytes_from_service > 0
        },
        || format!("{:?}", port_of(&agents[2], PortRole::Leader)),
    );
    let metrics = agents[2].metrics();
    assert!(
        metrics.contains("dstack_mesh_forwarded_connections_total{role=\"leader\",port=\"7000\",outcome=\"fenced\"}"),
        "{metrics}"
    );
    steps.step(&format!(
        "old connections closed; every port reaches seat 2 under term {} ({:.1} s with no leader reachable through node 3's port)",
        second_term.unwrap(),
        dark.as_secs_f64()
    ));
    println!(
        "leader port: node 1 refused {:.2} s after the cut; node 3's port reached the new leader {:.2} s after it (leader timeout {LEADER_TIMEOUT} s)",
        refused_after.as_secs_f64(),
        dark.as_secs_f64()
    );
    cut.restore();
}
