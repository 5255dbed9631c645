//! The fault matrix, RPC providers: every node reaches the chain through three providers (two must agree),
//! and each provider in turn, the first included, goes down, hangs (each request held 30 s), flaps (down and
//! up every second) and lies (says nothing is allowed, which believed would refuse every peer). For each, a
//! ping between two nodes loses nothing, every agent's status names the provider within 5 s and stops once
//! it is back, and the view follows the chain throughout. With the first provider down, and then hanging,
//! the leader fails over within its timeout and 5 s, and a node with no seat asks for one, is bound by the
//! owner through three providers whose first is down, and joins.
//!
//! Each row prints a line `fault row | …` with its figures, for docs/faults.md.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios faults_rpc:: -- --nocapture
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alloy::sol_types::SolCall as _;
use mesh_api::Status;
use mesh_chain::contract::DstackClusterAppAuth;
use netns_tests::in_process::rpc_proxy::RpcProxy;
use netns_tests::prelude::*;
use netns_tests::system::faults::{
    Measure, Providers, assert_within, clear_of, names, wait_at_rest,
};

/// The bound on naming a fault, and on seeing it end.
const WITHIN: Duration = Duration::from_secs(5);
const LEADER_TIMEOUT: Duration = Duration::from_secs(5);

fn provider(s: &Status, p: usize) -> Option<&mesh_api::Provider> {
    s.chain.verification.providers.get(p)
}

/// Provider `p` named as not answering, and the view still followed.
fn names_down(s: &Status, p: usize) -> bool {
    provider(s, p).is_some_and(|x| x.failing.is_some())
        && names(s, "rpc", "does not answer")
        && s.chain.last_error.is_none()
}

/// Provider `p` answering again, and nothing of the RPC named.
fn answers_again(s: &Status, p: usize) -> bool {
    provider(s, p).is_some_and(|x| x.failing.is_none()) && clear_of(s, "rpc")
}

/// The lie of `rpc_quorum`: every allowlist read answers "not allowed".
fn lies(proxy: &RpcProxy) {
    proxy.rewrite("nothing allowed", |req, response| {
        if req.calls(DstackClusterAppAuth::isComposeHashAllowedCall::SELECTOR)
            || req.calls(DstackClusterAppAuth::isOsAllowedCall::SELECTOR)
        {
            response["result"] = format!("0x{:064x}", 0).into();
        }
    });
}

#[test]
fn each_provider_in_turn_down_hanging_flapping_or_lying_changes_nothing_and_is_named() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_rpc");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let providers = Providers::start(&lan, 3);
    let agents = providers.agents(&cluster, 1..=3, &[]);
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    wait_at_rest(&agents);
    steps.step("3 nodes meshed, each through three providers of its own");

    let measure = |name: String, hold: Duration| Measure {
        name,
        agents: &agents,
        watched: vec![1, 2, 3],
        ping: Some((1, cluster.overlay_of(2))),
        hold,
        within: WITHIN * 2,
    };
    let mut rows = Vec::new();
    for p in 0..3 {
        let n = p + 1;
        let row = measure(
            format!("RPC provider {n} of 3 down"),
            Duration::from_secs(3),
        )
        .run(
            || providers.each(p, |x| x.set_down(true)),
            |s| names_down(s, p),
            || providers.each(p, |x| x.set_down(false)),
            |s| answers_again(s, p),
        );
        assert_within(&row, WITHIN, &agents);
        rows.push(row);

        let row = measure(
            format!("RPC provider {n} of 3 hanging (each request held 30 s)"),
            Duration::from_secs(3),
        )
        .run(
            || providers.each(p, |x| x.set_hang(Some(Duration::from_secs(30)))),
            |s| names_down(s, p),
            || providers.each(p, |x| x.set_hang(None)),
            |s| answers_again(s, p),
        );
        assert_within(&row, WITHIN, &agents);
        rows.push(row);

        // Down and up every second while the row lasts.
        let flapping = Arc::new(AtomicBool::new(false));
        let flapper = {
            let flapping = Arc::clone(&flapping);
            let proxies: Vec<&RpcProxy> = providers.per_node.iter().map(|n| &n[p]).collect();
            std::thread::scope(|scope| {
                measure(
                    format!("RPC provider {n} of 3 flapping (down and up every second)"),
                    Duration::from_secs(6),
                )
                .run(
                    || {
                        flapping.store(true, Ordering::Relaxed);
                        let flapping = Arc::clone(&flapping);
                        let proxies = proxies.clone();
                        scope.spawn(move || {
                            let mut down = true;
                            // Bounded: the row ends it, and it stops after a minute whatever happens.
                            let until = Instant::now() + Duration::from_secs(60);
                            while flapping.load(Ordering::Relaxed) && Instant::now() < until {
                                for x in &proxies {
                                    x.set_down(down);
                                }
                                down = !down;
                                std::thread::sleep(Duration::from_secs(1));
                            }
                            for x in &proxies {
                                x.set_down(false);
                            }
                        });
                    },
                    |s| provider(s, p).is_some_and(|x| x.failing.is_some() || x.failed > 0),
                    || flapping.store(false, Ordering::Relaxed),
                    |s| answers_again(s, p),
                )
            })
        };
        assert_eq!(flapper.lost(), 0, "{}", flapper.line());
        assert!(
            flapper
                .recovered
                .is_some_and(|d| d <= WITHIN + Duration::from_secs(1)),
            "{}",
            flapper.line()
        );
        rows.push(flapper);

        // A lie about the allowlists, read anew at the block that moves one of them.
        let hash = format!("0x{:064x}", 0xfa17_u64 + p as u64);
        let row = measure(
            format!("RPC provider {n} of 3 lying (nothing is allowed)"),
            Duration::from_secs(3),
        )
        .run(
            || {
                providers.each(p, lies);
                cluster.meshctl(0, &["app-auth", "allow-compose", &hash]);
            },
            |s| provider(s, p).is_some_and(|x| x.dissenting) && s.peers_healthy == 2,
            || providers.each(p, |x| x.remove("nothing allowed")),
            |s| s.peers_healthy == 2,
        );
        // A liar stays named for ten minutes after its last lie: recovery here is the mesh still whole.
        assert_eq!(row.lost(), 0, "{}", row.line());
        assert!(row.named.is_some_and(|d| d <= WITHIN), "{}", row.line());
        rows.push(row);
        steps.step(&format!(
            "provider {n}: down, hanging, flapping and lying, each named and outvoted"
        ));
    }
    for a in &agents {
        let s = a.status().0;
        assert_eq!(
            s.chain.lag,
            Some(0),
            "node {} follows the chain: {:?}",
            a.index,
            s.chain
        );
    }
    let _ = rows;
}

/// With the first of three providers down, then hanging, the leader is killed: a survivor leads within the
/// leader timeout and 5 s, each time. Then a node with no seat, its first provider down too, asks for one, the
/// owner binds it through three providers whose first is down, and it joins.
#[test]
fn with_the_first_provider_down_or_hanging_the_leader_fails_over_and_a_new_node_gets_its_seat() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_rpc/failover");
    let lan = Lan::new(4);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let providers = Providers::start(&lan, 4);
    let timeout = LEADER_TIMEOUT.as_secs().to_string();
    let mut agents = providers.agents(&cluster, 1..=3, &["--leader-timeout", timeout.as_str()]);
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    let leads = |a: &Agent<'_>| a.leader().is_ok_and(|l| l.is_self);
    wait_until(
        "a leader, with its lease",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || agents.iter().any(leads),
        || statuses(&agents),
    );
    steps.step("3 nodes meshed through three providers each; a leader holds its lease");

    let bound = LEADER_TIMEOUT + WITHIN;
    for (what, fail) in [
        (
            "down",
            Box::new(|x: &RpcProxy| x.set_down(true)) as Box<dyn Fn(&RpcProxy)>,
        ),
        (
            "hanging",
            Box::new(|x: &RpcProxy| {
                x.set_down(false);
                x.set_hang(Some(Duration::from_secs(30)));
            }),
        ),
    ] {
        providers.each(0, &fail);
        let leader = agents
            .iter()
            .position(leads)
            .expect("a leader before the kill");
        agents[leader].kill();
        let killed = Instant::now();
        wait_until(
            &format!("another node to lead with the first provider {what}"),
            bound + Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                agents
                    .iter()
                    .enumerate()
                    .any(|(i, a)| i != leader && leads(a))
            },
            || statuses(&agents),
        );
        let took = killed.elapsed();
        println!(
            "fault row | the leader killed, the first RPC provider {what} | failover in {:.1} s (timeout {} s) | bound {} s",
            took.as_secs_f64(),
            LEADER_TIMEOUT.as_secs(),
            bound.as_secs()
        );
        assert!(took <= bound, "failover took {took:?}, over {bound:?}");
        steps.step(&format!(
            "first provider {what}: the leader killed, replaced in {took:.1?}"
        ));
        agents[leader].start_again();
        agents[leader].wait_ready(60);
        wait_full_mesh(&agents, &keys);
        // At rest before the next kill: every vote withdrawn, and a leader timeout since, so that the next
        // failover is not held back by a node's one ballot per timeout.
        wait_until(
            "every vote withdrawn",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || agents.iter().all(|a| a.status().0.election.vote.is_none()),
            || statuses(&agents),
        );
        std::thread::sleep(LEADER_TIMEOUT);
    }

    // A node with no seat, its first provider down as the others' is, and meshctl through three
    // providers on the switch whose first is down too.
    providers.each(0, |x| {
        x.set_hang(None);
        x.set_down(true);
    });
    let owner_side = [
        RpcProxy::start_in(&lan.switch, &rpc_url()),
        RpcProxy::start_in(&lan.switch, &rpc_url()),
        RpcProxy::start_in(&lan.switch, &rpc_url()),
    ];
    owner_side[0].set_down(true);
    let owner_urls = owner_side
        .iter()
        .map(RpcProxy::url)
        .collect::<Vec<_>>()
        .join(",");
    let began = Instant::now();
    // Not waited for: it has no seat to be ready with.
    let mut four = providers.agent(&cluster, 4, &[]);
    let instance = cluster.sims[3].instance_id.clone();
    wait_until(
        "node 4 to ask for a seat on-chain, its first provider down",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            four.try_status()
                .is_ok_and(|s| s["status"]["node"]["seatRequest"]["onChain"] == true)
        },
        || four.tail(),
    );
    let asked = began.elapsed();
    let bound_seat = cluster.meshctl(
        0,
        &["bind", "--rpc-url", &owner_urls, "--instance", &instance],
    );
    assert_eq!(bound_seat["tokenId"], 4, "{bound_seat}");
    let k4 = four.key();
    wait_until(
        "node 4 to take seat 4 and see node 1 healthy",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || four.sees_healthy(1, &keys[0]) && agents[0].sees_healthy(4, &k4),
        || four.tail(),
    );
    println!(
        "fault row | a node with no seat, the first RPC provider down | asked in {:.1} s, meshed {:.1} s after it started",
        asked.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    four.assert_running();
    steps.step(&format!(
        "node 4 asked for its seat in {asked:.1?}, was bound through meshctl with the first provider down, and joined"
    ));
}
