//! A TCB recovery in a running mesh, under the cluster's TCB policy. Three nodes fetch their collateral from a
//! mock PCCS; the owner's policy accepts `UpToDate` only, with a grace and a drop period of `PERIOD` each. Then
//! the mock PKI publishes TCB info that makes the platform (every node's: the mock has one) `OutOfDate`, as a
//! fleet-wide microcode advisory would. Every agent must, for each peer:
//! - warn within a pass (`attestation.tcbStage` `warned`, `tcbStageUntil` a period later), keep it
//!   configured, and lose no ping;
//! - then, at that time, stop admitting it (`not-admitted`) but keep the tunnels it has, still losing no ping;
//!   a node restarted then had no tunnels, and adds none: it lists both peers in `/v1/peers/refused` as
//!   `tcb-policy` at stage `not-admitted`, and its `/healthz` says it reaches none of them;
//! - then, a period later, drop it: refused as `tcb-policy`, its key off the interface.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo nextest run -p netns-tests --test scenarios --profile timed tcb_policy::
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns_tests::net::netns::in_netns;
use netns_tests::prelude::*;
use tdx_mock::pccs::MockPccs;
use tdx_mock::{CollateralOptions, TcbStatus};

const NODES: usize = 3;
/// The grace and the drop period alike.
const PERIOD: u64 = 12;
/// How late a stage may be seen after the time the API gave for it: a poll of the chain (2 s), a pass, and
/// a read of the API.
const SLACK: Duration = Duration::from_secs(5);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Each peer's TCB stage as `a` shows it (none: it meets the policy), and when the next begins.
fn stages(a: &Agent<'_>) -> Vec<(u64, Option<String>, Option<u64>)> {
    a.peers()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let at = p.attestation.as_ref();
            (
                p.token_id,
                at.and_then(|a| a.tcb_stage.clone()),
                at.and_then(|a| a.tcb_stage_until),
            )
        })
        .collect()
}

/// Waits until every agent shows every other seat at `stage`; returns when the API said it would begin.
fn wait_for_stage(agents: &[Agent<'_>], stage: &str) -> Option<u64> {
    let others = NODES - 1;
    wait_until(
        &format!("every agent to show its peers {stage}"),
        Duration::from_secs(PERIOD * 2 + 20),
        Duration::from_millis(250),
        || {
            agents.iter().all(|a| {
                let s = stages(a);
                s.len() == others && s.iter().all(|(_, st, _)| st.as_deref() == Some(stage))
            })
        },
        || {
            agents
                .iter()
                .map(|a| format!("node {}: {:?}\n", a.index, stages(a)))
                .collect::<String>()
                + &tails(agents)
        },
    );
    agents
        .iter()
        .flat_map(stages)
        .filter_map(|(_, _, until)| until)
        .min()
}

#[test]
fn a_platform_below_the_tcb_policy_is_warned_then_not_admitted_then_dropped_at_the_policys_times() {
    require_mesh_prerequisites();
    let steps = Steps::new("tcb_policy");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_seats(&lan, NODES);
    let pki = cluster.mock_pki();
    let now = unix_now();
    // Collateral with less than a day left is fetched again at every pass, so what the PCCS publishes is
    // seen within one.
    let window = |status, issued: u64| CollateralOptions {
        issue_date: issued,
        next_update: now + 12 * 3600,
        tcb_status: status,
        ..CollateralOptions::valid_from(now, 1)
    };
    let listener = in_netns(&lan.switch, || std::net::TcpListener::bind((SWITCH_IP, 0)))
        .expect("a port for the mock PCCS");
    let pccs = MockPccs::start(
        listener,
        pki.collateral(&window(TcbStatus::UpToDate, now - 3600)),
    );
    cluster.fetch_collateral_from(&pccs.url());
    cluster.meshctl(
        0,
        &[
            "app-auth",
            "tcb",
            "set",
            "--grace",
            &PERIOD.to_string(),
            "--drop",
            &PERIOD.to_string(),
        ],
    );
    let (mut agents, keys) = Agent::builder(&cluster)
        .flags(["--full-read-secs", "2"])
        .mesh(1..=NODES);
    for a in &agents {
        assert!(
            stages(a).iter().all(|(_, st, _)| st.is_none()),
            "node {}: {:?}",
            a.index,
            stages(a)
        );
    }
    steps.step(&format!(
        "3-node mesh on collateral from the mock PCCS; the TCB policy accepts UpToDate, {PERIOD}s grace, {PERIOD}s drop"
    ));

    std::thread::scope(|scope| {
        // Nodes 1 and 3 keep talking until the drop.
        let pinger = scope.spawn(|| {
            ping(
                lan.node(1),
                overlay_ip(3),
                (PERIOD * 2 * 10 - 20) as u32,
                Duration::from_millis(100),
            )
        });

        pccs.publish(pki.collateral(&window(TcbStatus::OutOfDate, now - 1800)));
        let published = Instant::now();
        let not_admitted_at = wait_for_stage(&agents, "warned").expect("warned until");
        steps.step(&format!(
            "the PCCS published OutOfDate TCB info: every agent warns of its peers within {:.1}s, admitted until {not_admitted_at}",
            published.elapsed().as_secs_f64()
        ));
        for a in &agents {
            assert_eq!(a.wg_peer_keys().len(), NODES - 1, "node {}", a.index);
            let metrics = a.metrics();
            assert!(
                metrics.contains(&format!(
                    "dstack_mesh_peers_below_tcb_policy{{stage=\"warned\"}} {}",
                    NODES - 1
                )),
                "node {}:\n{metrics}",
                a.index
            );
            let warned = a.log_lines("below the cluster's TCB policy");
            assert!(
                warned
                    .iter()
                    .any(|l| l.contains("stage=\"warned\"") || l.contains("stage=warned")),
                "node {}: {warned:#?}",
                a.index
            );
        }

        let dropped_at = wait_for_stage(&agents, "not-admitted").expect("not admitted until");
        let late = unix_now().saturating_sub(not_admitted_at);
        assert!(
            unix_now() >= not_admitted_at && late <= SLACK.as_secs(),
            "not admitted {late}s after {not_admitted_at}"
        );
        assert_eq!(dropped_at, not_admitted_at + PERIOD, "a drop period later");
        for a in &agents {
            assert_eq!(
                a.wg_peer_keys().len(),
                NODES - 1,
                "node {} keeps the tunnels it had",
                a.index
            );
        }
        steps.step(&format!(
            "at the grace's end (+{late}s) every agent no longer admits its peers, and keeps the tunnels it had"
        ));

        // Node 2 restarts meanwhile (the ping is between 1 and 3): the new process had no tunnels, so it
        // configures neither peer, and shows both rather than nothing.
        agents[1].stop();
        agents[1].start_again();
        let two = &agents[1];
        wait_until(
            "node 2, restarted, to list both peers as refused and not admitted",
            Duration::from_secs(PERIOD),
            Duration::from_millis(200),
            || {
                two.try_refused().is_ok_and(|refused| {
                    refused.len() == NODES - 1
                        && refused.iter().all(|r| {
                            r.kind == "tcb-policy" && r.stage.as_deref() == Some("not-admitted")
                        })
                })
            },
            || format!("{:?}\n{}", two.try_refused(), two.tail()),
        );
        let (status, peers) = two.status();
        let health = mesh_api::assess(&status, &peers);
        assert!(
            !health.healthy
                && health
                    .reasons
                    .iter()
                    .any(|r| r.contains("reaches none of the cluster's other seats")),
            "node 2 says it reaches nobody: {health:?}"
        );
        let metrics = two.metrics();
        assert!(
            metrics.contains("dstack_mesh_peers_refused{reason=\"tcb-policy\"} 2")
                && metrics.contains("dstack_mesh_peers_below_tcb_policy{stage=\"not-admitted\"} 2"),
            "{metrics}"
        );
        steps.step("node 2 restarted while its peers were not admitted: both refused with their stage, /healthz unhealthy");

        let (sent, received) = pinger.join().expect("pinger");
        assert_eq!(
            received, sent,
            "node 1 lost pings to node 3 before the drop"
        );
        steps.step(&format!(
            "node 1 -> node 3: {received}/{sent} pings answered while warned and not admitted"
        ));

        wait_until(
            "every agent to drop its peers as tcb-policy",
            Duration::from_secs(PERIOD + 20),
            Duration::from_millis(250),
            || {
                agents.iter().all(|a| {
                    let refused = a.refused();
                    refused.len() == NODES - 1 && refused.iter().all(|r| r.kind == "tcb-policy")
                })
            },
            || {
                agents
                    .iter()
                    .map(|a| format!("node {}: {:?}\n", a.index, a.refused()))
                    .collect::<String>()
                    + &tails(&agents)
            },
        );
        let late = unix_now().saturating_sub(dropped_at);
        assert!(
            unix_now() >= dropped_at && late <= SLACK.as_secs(),
            "dropped {late}s after {dropped_at}"
        );
        for a in &agents {
            assert!(
                a.wg_peer_keys().is_empty(),
                "node {} still has peers on its interface",
                a.index
            );
        }
        steps.step(&format!(
            "at the drop period's end (+{late}s) every agent refuses its peers as tcb-policy and takes them off its interface"
        ));
    });
    drop(keys);
    drop(pccs);
}
