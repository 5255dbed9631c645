//! Failover without a person: three nodes run the counter example (`examples/counter`) on the SDK; the
//! leader's node is cut off the LAN with nftables, and the others' agents vote it out on-chain after
//! `--leader-timeout`, from their own node addresses. Every agent left reports the new leader,
//! increments succeed on it, and the count has lost no acknowledged write. When the old leader comes back,
//! the votes against it are withdrawn. Prints the measured failover time.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (the SDK and the examples'
//! packages in `.toolchain/venv`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios failover:: -- --nocapture
//! ```
//!
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;
use serde_json::Value;

const NODES: usize = 3;
/// Short, so the scenario is quick; the default is 30 s.
const LEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// What failover may take beyond the timeout: a heartbeat, the ballots' blocks, the follower's poll.
const FAILOVER_SLACK: Duration = Duration::from_secs(15);
const COUNTER_PORT: u16 = 8080;

fn counter_url(path: &str) -> String {
    format!("http://127.0.0.1:{COUNTER_PORT}{path}")
}

/// `POST /increment` on node `i`'s counter: the count it acknowledged.
fn increment(lan: &Lan, i: usize) -> Result<u64, String> {
    match http(lan.node(i), "POST", &counter_url("/increment"), Some("{}"))? {
        (200, reply) => reply["count"]
            .as_u64()
            .ok_or_else(|| format!("no count in {reply}")),
        (code, reply) => Err(format!("node {i}: {code} {reply}")),
    }
}

fn count(lan: &Lan, i: usize) -> Option<u64> {
    match http(lan.node(i), "GET", &counter_url("/counter"), None) {
        Ok((200, reply)) => reply["count"].as_u64(),
        _ => None,
    }
}

/// The leader and the votes on-chain (`meshctl leader show`).
fn election(cluster: &Cluster<'_>) -> Value {
    cluster.meshctl(0, &["leader", "show"])
}

fn votes_against(election: &Value, seat: u64) -> u64 {
    election["seats"]
        .as_array()
        .and_then(|seats| seats.iter().find(|s| s["tokenId"].as_u64() == Some(seat)))
        .and_then(|s| s["votesAgainst"].as_u64())
        .unwrap_or_else(|| panic!("no seat {seat} in {election}"))
}

fn leader_seen_by(agent: &Agent<'_>) -> Option<u64> {
    agent.leader().ok().and_then(|l| l.token_id)
}

#[test]
fn a_cut_off_leader_is_voted_out_and_the_counter_loses_no_acknowledged_write() {
    require_mesh_prerequisites();
    python();
    let steps = Steps::new("failover");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    // Registrations and ballots then come from each node's address: the contract lets a seat's
    // node vote for it.
    let mut derived = Vec::new();
    for i in 1..=NODES {
        let address = cluster.identity(i)["node"]
            .as_str()
            .expect("a node address")
            .to_owned();
        cluster.meshctl(0, &["fund", &address, "--amount", "1"]);
        derived.push(address);
    }
    steps.step("LAN up, cluster deployed, 3 seats, every node's address funded");
    let timeout = LEADER_TIMEOUT.as_secs().to_string();
    let (agents, _) = Agent::builder(&cluster)
        .flags(["--leader-timeout", &timeout])
        .mesh(1..=NODES);
    // Elected is not yet leading: node 1 leads once its lease holds (a majority's confirmations, and a lease
    // after the agents started), and the counter acknowledges writes only then.
    wait_until(
        "every agent to report seat 1, the lowest, as leader, and node 1 to lead under its lease",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            agents.iter().all(|a| leader_seen_by(a) == Some(1))
                && agents[0].leader().is_ok_and(|l| l.is_self)
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    steps.step("mesh up; seat 1 elected by its own node, and leading");

    let mut counters: Vec<App> = (1..=NODES)
        .map(|i| {
            App::start(
                lan.node(i),
                "examples/counter/counter.py",
                &["--listen", &format!("0.0.0.0:{COUNTER_PORT}")],
                agents[i - 1].api_socket(),
                &[],
            )
        })
        .collect();
    for c in &mut counters {
        c.wait_for("listening on", Duration::from_secs(30));
    }
    let mut acked = 0;
    for k in 0..9 {
        let node = k % NODES + 1;
        let n = increment(&lan, node).unwrap_or_else(|e| {
            panic!(
                "increment {k} through node {node}: {e}\n{}",
                counters[node - 1].tail()
            )
        });
        acked += 1;
        assert_eq!(n, acked, "each acknowledged increment counts once");
    }
    steps.step(&format!(
        "{acked} increments acknowledged, through the leader and forwarded by followers"
    ));

    let cut = lan.cut_off(1);
    let cut_at = Instant::now();
    steps.step("node 1, the leader, cut off");
    wait_until(
        "the others' votes to replace seat 1 on-chain",
        LEADER_TIMEOUT + FAILOVER_SLACK,
        Duration::from_millis(200),
        || election(&cluster)["leaderTokenId"].as_u64() == Some(2),
        || format!("{}\n{}", election(&cluster), tails(&agents)),
    );
    let failover = cut_at.elapsed();
    steps.step(&format!(
        "failover: seat 2 leads on-chain {:.1} s after the cut (leader timeout {} s)",
        failover.as_secs_f64(),
        LEADER_TIMEOUT.as_secs()
    ));
    println!(
        "failover took {} ms (leader timeout {} ms)",
        failover.as_millis(),
        LEADER_TIMEOUT.as_millis()
    );
    for (i, a) in agents.iter().enumerate().skip(1) {
        let ballots = a.log_lines("casting a ballot");
        assert!(
            ballots.iter().any(|l| l.contains("has not answered")),
            "node {} logs its vote with the reason: {ballots:?}",
            i + 1
        );
        // The test can see the replacement on-chain before the agent has its receipt (it polls for it).
        let from_derived = || {
            a.log_lines("ballot mined")
                .iter()
                .any(|l| l.to_lowercase().contains(&derived[i].to_lowercase()))
        };
        wait_until(
            &format!(
                "node {} to log its ballot mined from its node address",
                i + 1
            ),
            Duration::from_secs(10),
            Duration::from_millis(100),
            from_derived,
            || format!("{:?}", a.log_lines("ballot mined")),
        );
    }
    wait_until(
        "nodes 2 and 3 to report seat 2 as leader",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || agents[1..].iter().all(|a| leader_seen_by(a) == Some(2)),
        || statuses(&agents),
    );
    // Under its lease: once a majority (node 3) has confirmed it over the mesh, a heartbeat or two.
    wait_until(
        "node 2 to report that it leads",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || agents[1].leader().is_ok_and(|l| l.is_self),
        || statuses(&agents),
    );

    for k in 0..6 {
        let node = 2 + k % 2;
        let deadline = Instant::now() + Duration::from_secs(20);
        // The new leader syncs the count from its peers before it takes writes: until then it says retry.
        let n = loop {
            match increment(&lan, node) {
                Ok(n) => break n,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("increment through node {node} refused for now: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!(
                    "increment through node {node} after the failover: {e}\n{}\n{}",
                    counters[1].tail(),
                    counters[2].tail()
                ),
            }
        };
        acked += 1;
        assert_eq!(
            n, acked,
            "the new leader continues from every acknowledged write"
        );
    }
    wait_until(
        "nodes 2 and 3 to hold every acknowledged increment",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || count(&lan, 2) == Some(acked) && count(&lan, 3) == Some(acked),
        || format!("{:?} {:?}", count(&lan, 2), count(&lan, 3)),
    );
    steps.step(&format!(
        "{acked} increments acknowledged in all, none lost"
    ));

    cut.restore();
    wait_until(
        "the votes against seat 1 to be withdrawn once it answers again",
        LEADER_TIMEOUT + FAILOVER_SLACK + Duration::from_secs(15),
        Duration::from_millis(500),
        || votes_against(&election(&cluster), 1) == 0,
        || format!("{}\n{}", election(&cluster), tails(&agents)),
    );
    assert_eq!(
        election(&cluster)["leaderTokenId"].as_u64(),
        Some(2),
        "seat 2 keeps leading"
    );
    wait_until(
        "node 1 to report seat 2 as leader",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || leader_seen_by(&agents[0]) == Some(2),
        || statuses(&agents),
    );
    steps.step("node 1 back: the votes against it withdrawn, seat 2 still leads");
}
