//! Failover: how long until a cut-off leader is replaced on-chain, and reported by the others.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;
use serde::Deserialize;

use crate::report::Failover;
use crate::{BOUND, ms};

/// What `meshctl --json leader show` prints, as far as it is read here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shown {
    /// None while no seat leads.
    leader_token_id: Option<u64>,
}

/// Three agents elect seat 1; its node is cut off the LAN: how long until the others' votes replace it
/// on-chain, and until both of them report the new leader on their APIs.
pub(crate) fn failover(timeout: u64) -> Failover {
    let lan = Lan::new(3);
    let cluster = Cluster::deploy(&lan);
    let flag = timeout.to_string();
    let (agents, _) = Agent::builder(&cluster)
        .flags(["--leader-timeout", &flag])
        .mesh(1..=3);
    let leads = |a: &Agent<'_>, seat: u64| a.leader().ok().and_then(|l| l.token_id) == Some(seat);
    wait_until(
        "every agent to report seat 1 as leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || agents.iter().all(|a| leads(a, 1)),
        || tails(&agents),
    );
    let on_chain = || {
        let shown = cluster.meshctl(0, &["leader", "show"]);
        serde_json::from_value::<Shown>(shown.clone())
            .unwrap_or_else(|e| panic!("meshctl leader show: {e}: {shown}"))
            .leader_token_id
    };
    let _cut = lan.cut_off(1);
    let t0 = Instant::now();
    let bound = Duration::from_secs(timeout) + BOUND;
    wait_until(
        "seat 2 to lead on-chain",
        bound,
        Duration::from_millis(100),
        || on_chain() == Some(2),
        || tails(&agents),
    );
    let chain = t0.elapsed();
    wait_until(
        "nodes 2 and 3 to report seat 2",
        bound,
        Duration::from_millis(20),
        || agents[1..].iter().all(|a| leads(a, 2)),
        || tails(&agents),
    );
    let reported = t0.elapsed();
    eprintln!(
        "   failover: on-chain {:.1} s, reported by both {:.1} s after the cut (timeout {timeout} s)",
        chain.as_secs_f64(),
        reported.as_secs_f64()
    );
    Failover {
        leader_timeout_secs: timeout,
        on_chain_ms: ms(chain),
        reported_ms: ms(reported),
        beyond_timeout_ms: ms(chain) - ms(Duration::from_secs(timeout)),
    }
}
