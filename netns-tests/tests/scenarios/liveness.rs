//! What the agents say of a peer's health is true within the peer timeout (2.5 s): three nodes, every agent's
//! `/v1/peers` sampled every 100 ms, and the Python SDK's `monitor_peers` on node 1.
//!
//! - Node 2's agent is killed (SIGKILL): nodes 1 and 3 show seat 2 unhealthy within the timeout, and so
//!   does the SDK's callback; started again, it is healthy everywhere once its tunnels are up.
//! - Node 2 is frozen (every process in its namespace stopped), then resumed; then its UDP is dropped by
//!   nftables, then let through: each time seat 2 is unhealthy within the timeout, and healthy again soon
//!   after its first answer can arrive (a dead peer is probed every third of the timeout).
//! - Under iperf3 between nodes 1 and 3 for 30 s, no agent shows any peer unhealthy, not once.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios liveness:: -- --nocapture
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns_tests::measure::perf::iperf3;
use netns_tests::prelude::*;
use netns_tests::run::process::require_root;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The peer timeout, and what a sample adds to it: the sampling period and an answer's time.
const TIMEOUT: Duration = mesh_wg::DEFAULT_PEER_TIMEOUT;
const SAMPLED: Duration = Duration::from_millis(250);
/// Back to healthy after the peer can answer again: a dead peer is probed every third of the timeout, the
/// answer is read off the device within 0.5 s, and sampled within 0.1 s.
const BACK_WITHIN: Duration = Duration::from_millis(2_000);
const LOAD_SECS: u32 = 30;

fn sockets(agents: &[Agent<'_>]) -> Vec<PathBuf> {
    agents.iter().map(|a| a.api_socket().to_owned()).collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// When (seconds after `from`, a Unix time) the SDK's monitor on node 1 first called back with seat 2
/// `healthy` as `want`.
fn sdk_said(monitor: &App, want: bool, from: f64) -> Option<f64> {
    monitor
        .json_lines()
        .iter()
        .filter(|v| v["kind"] == "peers" && v["t"].as_f64().is_some_and(|t| t >= from))
        .find(|v| {
            v["detailed"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["tokenId"] == 2 && p["healthy"] == want)
        })
        .and_then(|v| v["t"].as_f64())
        .map(|t| t - from)
}

/// Whether every node of `watchers` shows seat 2 with `healthy`.
fn show(agents: &[Agent<'_>], watchers: &[usize], healthy: bool) -> bool {
    watchers.iter().all(|i| {
        agents[i - 1]
            .peers()
            .is_ok_and(|ps| ps.iter().any(|p| p.token_id == 2 && p.healthy == healthy))
    })
}

struct Outage {
    what: &'static str,
    down: Duration,
    back: Duration,
}

#[test]
fn a_dead_frozen_or_cut_off_peer_is_unhealthy_within_the_timeout_and_back_when_it_answers() {
    require_mesh_prerequisites();
    python();
    require_root(&["iperf3"]);
    let steps = Steps::new("liveness");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy(&lan);
    let (mut agents, _) = Agent::builder(&cluster).mesh(1..=3);
    steps.step("three nodes meshed");
    let mut monitor = App::start(
        lan.node(1),
        "sdk/python/tests/live/monitor.py",
        &["--seconds", "600", "--detailed"],
        agents[0].api_socket(),
        &[],
    );
    monitor.wait_for("\"kind\": \"peers\"", Duration::from_secs(30));
    let sampler = HealthSampler::start(sockets(&agents), SAMPLE_EVERY);
    let watchers = [1, 3];
    let mut outages = Vec::new();

    // Killed.
    let (t, unix) = (Instant::now(), unix_now());
    agents[1].kill();
    wait_until(
        "nodes 1 and 3 to show seat 2 unhealthy",
        Duration::from_secs(20),
        SAMPLE_EVERY,
        || show(&agents, &watchers, false),
        || tails(&agents),
    );
    let sdk = monitor.json_lines();
    let killed_sdk = sdk_said(&monitor, false, unix);
    agents[1].start_again();
    agents[1].wait_ready(60);
    let restarted = Instant::now();
    wait_until(
        "nodes 1 and 3 to show seat 2 healthy again",
        Duration::from_secs(30),
        SAMPLE_EVERY,
        || show(&agents, &watchers, true),
        || tails(&agents),
    );
    steps.step("node 2's agent killed, and started again");

    // Frozen, then resumed.
    let frozen_at = Instant::now();
    let frozen = lan.node(2).freeze();
    std::thread::sleep(TIMEOUT + Duration::from_secs(2));
    let resumed = Instant::now();
    frozen.resume();
    std::thread::sleep(BACK_WITHIN + Duration::from_secs(1));
    steps.step("node 2 frozen for 5 s, and resumed");

    // UDP dropped, then let through.
    let dropped_at = Instant::now();
    let udp = lan.drop_udp(2);
    std::thread::sleep(TIMEOUT + Duration::from_secs(2));
    let restored = Instant::now();
    udp.restore();
    std::thread::sleep(BACK_WITHIN + Duration::from_secs(1));
    steps.step("node 2's UDP dropped for 5 s, and let through");

    // Load between the two others.
    let load_from = Instant::now();
    let run = iperf3(
        lan.node(1),
        lan.node(3),
        &overlay_ip(3).to_string(),
        1,
        LOAD_SECS,
    );
    let load_to = Instant::now();
    steps.step(&format!(
        "iperf3 node 1 -> node 3 for {LOAD_SECS} s: {:.2} Gbit/s",
        run.gbps
    ));
    let health = sampler.stop();

    let killed = health
        .all_said(&watchers, 2, false, t)
        .expect("seat 2 shown unhealthy after the kill");
    let killed_back = health
        .all_said(&watchers, 2, true, restarted)
        .expect("seat 2 healthy after its restart");
    outages.push(Outage {
        what: "killed (back: from ready after a restart)",
        down: killed,
        back: killed_back,
    });
    for (what, from, to) in [
        ("frozen", frozen_at, resumed),
        ("UDP dropped", dropped_at, restored),
    ] {
        let down = health
            .all_said(&watchers, 2, false, from)
            .unwrap_or_else(|| panic!("seat 2 never shown unhealthy when {what}"));
        let back = health
            .all_said(&watchers, 2, true, to)
            .unwrap_or_else(|| panic!("seat 2 never healthy again after {what}"));
        outages.push(Outage { what, down, back });
    }
    for o in &outages {
        println!(
            "liveness/{}: unhealthy everywhere {:.2} s after, healthy again {:.2} s after it could answer",
            o.what,
            o.down.as_secs_f64(),
            o.back.as_secs_f64()
        );
    }
    let killed_sdk = killed_sdk.unwrap_or_else(|| {
        panic!(
            "the SDK's monitor never called back with seat 2 unhealthy after the kill: {sdk:?}\n{}",
            monitor.tail()
        )
    });
    println!(
        "liveness/killed: the SDK's callback on node 1 said so {killed_sdk:.2} s after the kill"
    );

    for o in &outages {
        assert!(
            o.down <= TIMEOUT + SAMPLED,
            "seat 2 {}: shown unhealthy only {:?} after (bound {TIMEOUT:?})\n{}",
            o.what,
            o.down,
            tails(&agents)
        );
        assert!(
            o.back <= BACK_WITHIN,
            "seat 2 {}: healthy again only {:?} after it could answer\n{}",
            o.what,
            o.back,
            tails(&agents)
        );
    }
    assert!(
        killed_sdk <= (TIMEOUT + SAMPLED).as_secs_f64(),
        "the SDK's callback said seat 2 was unhealthy {killed_sdk:.2} s after the kill\n{}",
        monitor.tail()
    );

    let flaps = health.unhealthy(&[1, 2, 3], &[1, 2, 3], load_from, load_to);
    let samples = health.answered(&[1, 2, 3], load_from, load_to);
    println!(
        "liveness/load: {} samples of every agent over {:.1} s of iperf3 ({:.2} Gbit/s), {} showing a peer unhealthy",
        samples,
        (load_to - load_from).as_secs_f64(),
        run.gbps,
        flaps.len()
    );
    assert!(
        samples >= 100,
        "the agents answered only {samples} samples under load"
    );
    assert!(
        flaps.is_empty(),
        "under load, peers were shown unhealthy (s after the start, node, seat): {flaps:?}"
    );
    monitor.assert_running();
}
