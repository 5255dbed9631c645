//! One leader at a time: the leader's lease, whole-system. Three nodes with `--leader-timeout 5` (a lease
//! of 2.5 s); every agent's `/v1/leader` is sampled every 100 ms, as an application acting on `isSelf`
//! would read it, and no sample may show two agents that say they lead.
//!
//! - The leader's whole node is frozen (every process in its namespace stopped, as a hung VM whose kernel
//!   still answers), the others vote it out, and it is resumed: it never claims beside the new leader.
//! - The leader's `--health-cmd` fails: it steps down at once and is voted out.
//! - The release only the leader runs is disallowed: every agent refuses seat 1, the others replace it at once
//!   with one ballot each, and nobody votes again.
//!
//! These are the end-to-end proofs, with the real socket, chain client and health check. Every rule of the
//! leadership (a frozen leader resumed without its RPC, a leader that loses its RPC, an application's
//! health report, a node that joins late, and any mix of them) is tested on the leadership machine itself,
//! several of them on a virtual clock over an in-memory network (`agent/src/leadership/sim.rs`).
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios leader_lease:: -- --nocapture
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use netns_tests::prelude::*;

const NODES: usize = 3;
const LEADER_TIMEOUT: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// What a failover may take beyond the timeout and the lease: heartbeats, the ballots' blocks, polls.
const SLACK: Duration = Duration::from_secs(15);

fn sockets(agents: &[Agent<'_>]) -> Vec<PathBuf> {
    agents.iter().map(|a| a.api_socket().to_owned()).collect()
}

/// The seat the contract names leader, read on-chain.
fn on_chain(cluster: &Cluster<'_>) -> Option<u64> {
    cluster.meshctl(0, &["leader", "show"])["leaderTokenId"].as_u64()
}

fn says_it_leads(agent: &Agent<'_>) -> bool {
    agent.leader().is_ok_and(|l| l.is_self)
}

fn sees_leader(agent: &Agent<'_>, seat: u64) -> bool {
    agent.leader().is_ok_and(|l| l.token_id == Some(seat))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Waits until seat 1 leads and every agent sees it, with `extra` flags for agent i from `flags(i)`.
fn mesh_led_by_seat_1<'a>(
    cluster: &'a Cluster<'a>,
    flags: impl Fn(usize) -> Vec<String>,
) -> Vec<Agent<'a>> {
    let timeout = LEADER_TIMEOUT.as_secs().to_string();
    let mut agents: Vec<Agent<'a>> = (1..=NODES)
        .map(|i| {
            Agent::builder(cluster)
                .flags(["--leader-timeout", timeout.as_str()])
                .flags(flags(i))
                .start(i)
        })
        .collect();
    for a in &mut agents {
        a.wait_ready(60);
    }
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    wait_until(
        "seat 1 to lead, and every agent to see it",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || says_it_leads(&agents[0]) && agents.iter().all(|a| sees_leader(a, 1)),
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
    agents
}

/// What the scenarios that sample the leader start from: a fresh mesh of three led by seat 1 under its lease,
/// and every agent's `/v1/leader` sampled from then on; `scenario` goes on from there.
fn from_seat_1_leading(
    name: &'static str,
    scenario: impl FnOnce(&Steps, &Lan, &Cluster<'_>, &[Agent<'_>], LeaderSampler),
) {
    require_mesh_prerequisites();
    let steps = Steps::new(name);
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let agents = mesh_led_by_seat_1(&cluster, |_| Vec::new());
    steps.step("mesh up, seat 1 leads under its lease");
    let sampler = LeaderSampler::start(sockets(&agents), SAMPLE_EVERY);
    scenario(&steps, &lan, &cluster, &agents, sampler);
}

/// Waits up to `within`, looking every `every`, until node 1 no longer says it leads.
fn wait_node_1_steps_down(agents: &[Agent<'_>], within: Duration, every: Duration) {
    wait_until(
        "node 1 to stop saying it leads",
        within,
        every,
        || !says_it_leads(&agents[0]),
        || agents[0].tail(),
    );
}

/// Waits up to `within` until node 2 says it leads (`what` says how it comes to), showing every agent's
/// status and log if it never does.
fn wait_node_2_leads(agents: &[Agent<'_>], what: &str, within: Duration) {
    wait_until(
        what,
        within,
        Duration::from_millis(100),
        || says_it_leads(&agents[1]),
        || format!("{}\n{}", statuses(agents), tails(agents)),
    );
}

/// Freezes node 1 (the leader) and waits until node 2 leads; returns the frozen processes and when the
/// freeze began.
fn freeze_until_replaced(
    lan: &Lan,
    agents: &[Agent<'_>],
) -> (netns_tests::net::netns::Frozen, Instant) {
    let frozen = lan.node(1).freeze();
    let froze = Instant::now();
    wait_until(
        "node 2 to lead",
        LEADER_TIMEOUT + SLACK,
        Duration::from_millis(100),
        || says_it_leads(&agents[1]),
        || statuses(&agents[1..]),
    );
    (frozen, froze)
}

/// Asserts no sample shows two agents that say they lead.
fn assert_one_leader_at_a_time(samples: &Samples, start: Instant) {
    let two = samples.with_two_leaders();
    assert!(
        two.is_empty(),
        "{} of {} samples show two leaders:\n{}",
        two.len(),
        samples.0.len(),
        samples.story(start)
    );
}

#[test]
fn a_frozen_leader_that_resumes_never_claims_beside_the_new_one() {
    from_seat_1_leading("lease/freeze", |steps, lan, cluster, agents, sampler| {
        let (frozen, froze) = freeze_until_replaced(lan, agents);
        let led = Instant::now();
        assert_eq!(on_chain(cluster), Some(2), "seat 2 leads on-chain");
        // Frozen on after the failover, as a VM that hangs for a while.
        std::thread::sleep(Duration::from_millis(1500));
        let frozen_count = frozen.pids().len();
        frozen.resume();
        let resumed = Instant::now();
        steps.step(&format!(
            "node 1 frozen ({} processes stopped); seat 2 leads {:.1} s after the freeze; node 1 resumed {:.1} s later",
            frozen_count,
            secs(led - froze),
            secs(resumed - led)
        ));
        wait_until(
            "node 1 to see seat 2 as leader",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || sees_leader(&agents[0], 2),
            || agents[0].tail(),
        );
        let caught_up = Instant::now();
        std::thread::sleep(
            (resumed + Duration::from_secs(10)).saturating_duration_since(Instant::now()),
        );
        let samples = sampler.stop();

        assert_one_leader_at_a_time(&samples, froze);
        let after = samples.answers(1, resumed);
        assert!(
            !after.is_empty(),
            "node 1 answered after it resumed:\n{}",
            samples.story(froze)
        );
        assert!(
            after.iter().all(|l| !l.is_self),
            "node 1 claimed after it resumed:\n{}",
            samples.story(froze)
        );
        let first = &after[0];
        println!(
            "lease/freeze: node 1's last claim {:.2} s after the freeze; seat 2 leads {:.2} s after it; node 1 resumed {:.2} s after that, first answered {{isSelf: {}, state: {}, ageMs: {:?}}}, and saw seat 2 {:.3} s after resuming; {} samples, 0 with two leaders",
            secs(
                samples
                    .last_claim(1, resumed)
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(froze))
            ),
            secs(led - froze),
            secs(resumed - led),
            first.is_self,
            first.state.as_str(),
            first.age_ms,
            secs(caught_up - resumed),
            samples.0.len()
        );
    });
}

#[test]
fn a_leader_whose_health_check_fails_steps_down_and_is_replaced() {
    require_mesh_prerequisites();
    let steps = Steps::new("lease/health-cmd");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let dir = tempfile::tempdir().expect("temp dir");
    let down = dir.path().join("down");
    let check = format!("test ! -e {}", down.display());
    let agents = mesh_led_by_seat_1(&cluster, |i| match i {
        1 => vec![
            "--health-cmd".into(),
            check.clone(),
            "--health-interval-ms".into(),
            "300".into(),
        ],
        _ => Vec::new(),
    });
    steps.step("mesh up, seat 1 leads; node 1 checks its service with --health-cmd");

    std::fs::write(&down, b"").expect("mark the service down");
    let marked = Instant::now();
    wait_node_1_steps_down(&agents, Duration::from_secs(3), Duration::from_millis(50));
    let stepped_down = marked.elapsed();
    let health = agents[0].health();
    assert!(!health.healthy);
    assert!(
        health.reasons.iter().any(|r| r.contains("--health-cmd")),
        "{health:?}"
    );
    assert!(agents[0].metrics().contains("dstack_mesh_healthy 0"));
    wait_node_2_leads(&agents, "node 2 to lead", LEADER_TIMEOUT + SLACK);
    steps.step(&format!(
        "the check fails: node 1 stopped leading after {:.0} ms (two failed checks 300 ms apart); seat 2 leads {:.1} s after",
        stepped_down.as_millis(),
        secs(marked.elapsed())
    ));
    std::fs::remove_file(&down).expect("mark the service up");
    wait_until(
        "node 1 to be healthy again",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || agents[0].leader().is_ok_and(|l| l.healthy),
        || agents[0].tail(),
    );
    steps.step("the check passes again: node 1 is healthy");
}

/// The ballots an agent's node has had mined: its votes, withdrawals and elections, from its metrics.
fn mined_ballots(agent: &Agent<'_>) -> u64 {
    let metrics = agent.metrics();
    [
        "dstack_mesh_votes_cast_total ",
        "dstack_mesh_votes_withdrawn_total ",
        "dstack_mesh_elections_total ",
    ]
    .iter()
    .map(|name| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("node {} has no {name}", agent.index))
    })
    .sum()
}

/// The owner disallows the release that only the leader's node runs (its compose hash). Every agent refuses
/// seat 1 at its next allowlist read; nodes 2 and 3 vote against it at once, one ballot each, which is all
/// one replacement needs, and seat 2, attested, leads. Node 1 casts nothing and never says it leads once it
/// knows it is refused; nodes 2 and 3 never report the refused seat as their leader; no sample shows two
/// leaders; and over four more leader timeouts nobody casts another ballot.
#[test]
fn a_leader_on_a_disallowed_release_is_replaced_at_once_with_one_ballot_per_voter() {
    require_mesh_prerequisites();
    let steps = Steps::new("lease/refused");
    let lan = Lan::new(NODES);
    let layout = Layout {
        releases: vec![(1, "dstack-mesh-next")],
        ..Layout::default_for(NODES)
    };
    let cluster = Cluster::deploy_layout(&lan, &layout);
    let release = cluster.identity(1)["compose_hash"]
        .as_str()
        .expect("node 1's compose hash")
        .to_owned();
    // The allowlists are read every --full-read-secs: 2 s here, so that the refusal comes soon.
    let agents = mesh_led_by_seat_1(&cluster, |_| vec!["--full-read-secs".into(), "2".into()]);
    steps.step("mesh up; seat 1, the only node on release `dstack-mesh-next`, leads");
    let before: Vec<u64> = agents.iter().map(mined_ballots).collect();
    let term = agents[1]
        .leader()
        .expect("node 2's leader")
        .term
        .expect("a term");
    let sampler = LeaderSampler::start(sockets(&agents), SAMPLE_EVERY);

    let disallowed = Instant::now();
    cluster.meshctl(
        0,
        &[
            "app-auth",
            "disallow-compose",
            &release,
            "--contract",
            &cluster.contract,
            // Seat 1 runs it: the point is that every agent refuses it.
            "--yes",
        ],
    );
    wait_until(
        "every agent to refuse seat 1",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            agents[1..]
                .iter()
                .all(|a| a.refused().iter().any(|r| r.token_id == 1))
                && agents[0]
                    .status()
                    .0
                    .node
                    .attestation
                    .is_some_and(|a| !a.verified)
        },
        || tails(&agents),
    );
    let refused = disallowed.elapsed();
    wait_node_2_leads(&agents, "seat 2 to lead", LEADER_TIMEOUT + SLACK);
    let replaced = disallowed.elapsed();
    assert_eq!(on_chain(&cluster), Some(2));
    std::thread::sleep(LEADER_TIMEOUT * 4);
    let samples = sampler.stop();
    let after: Vec<u64> = agents.iter().map(mined_ballots).collect();
    let cast: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let term_now = agents[1]
        .leader()
        .expect("node 2's leader")
        .term
        .expect("a term");
    println!(
        "lease/refused: every agent refused seat 1 {:.2} s after its release was disallowed; seat 2 led {:.2} s after; ballots mined since, nodes 1–3: {cast:?}; term {term} → {term_now}; {} samples, 0 with two leaders",
        secs(refused),
        secs(replaced),
        samples.0.len()
    );
    assert_one_leader_at_a_time(&samples, disallowed);
    assert_eq!(
        cast,
        [0, 1, 1],
        "one vote from each of nodes 2 and 3, nothing from node 1, and no more over 4 timeouts\n{}",
        tails(&agents)
    );
    assert_eq!(term_now, term + 1, "one replacement");
    let refused_by_all = disallowed + refused;
    for i in 1..=NODES {
        let wrong: Vec<_> = samples
            .answers(i, refused_by_all)
            .into_iter()
            .filter(|l| l.token_id == Some(1))
            .collect();
        assert!(
            wrong.is_empty(),
            "node {i} reported the refused seat 1 as its leader: {wrong:?}"
        );
    }
    assert!(
        agents[1..]
            .iter()
            .all(|a| a.refused().iter().all(|r| r.token_id != 2)),
        "the new leader is a seat every agent attests"
    );
}
