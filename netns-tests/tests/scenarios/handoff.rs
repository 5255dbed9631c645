//! A planned restart of the leader: three nodes run the counter example (`examples/counter`) on the SDK,
//! a client writes through a follower all along, and the leader's agent is stopped with SIGTERM, as
//! `docker stop` or an upgrade does. The agent hands its term off before it exits: the others report the
//! new leader with `termReason: handoff`, no vote is cast, and the count has lost no acknowledged write.
//! Prints the time with no writable primary: the longest gap between two acknowledged writes.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap`:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios handoff:: -- --nocapture
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_tests::prelude::*;

const NODES: usize = 3;
const COUNTER_PORT: u16 = 8080;
/// How often the client writes.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// `POST /increment` through node `i`'s counter: the count acknowledged.
fn increment(lan: &Lan, i: usize) -> Result<u64, String> {
    let url = format!("http://127.0.0.1:{COUNTER_PORT}/increment");
    match http(lan.node(i), "POST", &url, Some("{}"))? {
        (200, reply) => reply["count"]
            .as_u64()
            .ok_or_else(|| format!("no count in {reply}")),
        (code, reply) => Err(format!("node {i}: {code} {reply}")),
    }
}

fn leader_seen_by(agent: &Agent<'_>) -> Option<(Option<u64>, Option<String>)> {
    agent.leader().ok().map(|l| (l.token_id, l.term_reason))
}

#[test]
fn a_leader_stopped_with_sigterm_hands_off_and_loses_no_acknowledged_write() {
    require_mesh_prerequisites();
    python();
    let steps = Steps::new("handoff");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    for i in 1..=NODES {
        let address = cluster.identity(i)["node"]
            .as_str()
            .expect("a node address")
            .to_owned();
        cluster.meshctl(0, &["fund", &address, "--amount", "1"]);
    }
    let (mut agents, _) = Agent::builder(&cluster).mesh(1..=NODES);
    wait_until(
        "node 1 to lead under its lease",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || {
            agents
                .iter()
                .all(|a| leader_seen_by(a).is_some_and(|l| l.0 == Some(1)))
                && agents[0].leader().is_ok_and(|l| l.is_self)
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
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
    wait_until(
        "a first write through node 3",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || increment(&lan, 3).is_ok(),
        || counters[2].tail(),
    );
    steps.step("seat 1 leads; the counter takes writes through node 3");

    // The client: writes through node 3 (a follower throughout) until told to stop, keeping when each
    // acknowledged write was acknowledged and its count.
    let acked: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut ballots_before: Vec<usize> = Vec::new();
    let writer = {
        let (writes, stop_writing) = (Arc::clone(&acked), Arc::clone(&done));
        let lan = &lan;
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                let mut refused = Vec::new();
                while !stop_writing.load(Ordering::Relaxed) {
                    match increment(lan, 3) {
                        Ok(n) => writes
                            .lock()
                            .expect("not poisoned")
                            .push((Instant::now(), n)),
                        Err(_) => refused.push(Instant::now()),
                    }
                    std::thread::sleep(WRITE_EVERY);
                }
                refused
            });
            std::thread::sleep(Duration::from_secs(3));
            // The first election's ballots are before the signal; none may come after it.
            ballots_before = agents[1..]
                .iter()
                .map(|a| a.log_lines("casting a ballot").len())
                .collect();
            let stopping = Instant::now();
            let took = agents[0].stop();
            steps.step(&format!(
                "node 1's agent stopped with SIGTERM: it exited {:.2} s after the signal",
                took.as_secs_f64()
            ));
            wait_until(
                "nodes 2 and 3 to report seat 2 leading a term begun by a hand-off",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    agents[1..]
                        .iter()
                        .all(|a| leader_seen_by(a) == Some((Some(2), Some("handoff".to_owned()))))
                },
                || statuses(&agents[1..]),
            );
            let led = stopping.elapsed();
            wait_until(
                "a write acknowledged after the hand-off",
                Duration::from_secs(20),
                Duration::from_millis(100),
                || {
                    acked
                        .lock()
                        .expect("not poisoned")
                        .last()
                        .is_some_and(|(t, _)| *t > stopping + led)
                },
                || counters[1].tail(),
            );
            std::thread::sleep(Duration::from_secs(3));
            done.store(true, Ordering::Relaxed);
            (writer.join().expect("the writer"), stopping, led)
        })
    };
    let (refused, stopping, led) = writer;
    let acked = acked.lock().expect("not poisoned").clone();
    // A write the client saw fail may still have counted (the old leader took it as its term ended): each
    // count skipped must be one of those, and no acknowledged write is ever counted over.
    for pair in acked.windows(2) {
        let failed_between = (refused.iter())
            .filter(|t| (pair[0].0..pair[1].0).contains(*t))
            .count() as u64;
        assert!(
            pair[1].1 > pair[0].1 && pair[1].1 - pair[0].1 - 1 <= failed_between,
            "each acknowledged write counts once, after the one before, with only the {failed_between} \
             writes refused between them besides: {pair:?}"
        );
    }
    let refused = refused.len();
    let gap = acked
        .windows(2)
        .filter(|p| p[1].0 > stopping)
        .map(|p| p[1].0 - p[0].0)
        .max()
        .expect("writes after the stop");
    steps.step(&format!(
        "{} writes acknowledged, none lost, {refused} refused; seat 2 led {:.2} s after the SIGTERM",
        acked.len(),
        led.as_secs_f64()
    ));
    println!(
        "hand-off: no writable primary for {} ms (the longest gap between two acknowledged writes), seat 2 named {} ms after the SIGTERM",
        gap.as_millis(),
        led.as_millis()
    );
    let log = agents[0].tail();
    assert!(
        log.contains("handing this node's term off") && log.contains("the hand-off landed"),
        "node 1 logs its hand-off\n{log}"
    );
    for (a, before) in agents[1..].iter().zip(&ballots_before) {
        assert_eq!(
            a.log_lines("casting a ballot").len(),
            *before,
            "no vote after the SIGTERM: the term was handed, not taken\n{}",
            a.tail()
        );
    }
}
