//! Failover: how long until a cut-off leader is replaced on-chain, and reported by the others.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;
use serde_json::{Value, json};

use crate::{BOUND, ms};

/// Three agents elect seat 1; its node is cut off the LAN: how long until the others' votes replace it
/// on-chain, and until both of them report the new leader on their APIs.
pub(crate) fn failover(timeout: u64) -> Value {
    let lan = Lan::new(3);
    let cluster = Cluster::deploy(&lan);
    let flag = timeout.to_string();
    let (agents, _) = start_mesh_with(&cluster, 1..=3, &["--leader-timeout", &flag]);
    let leads = |a: &Agent<'_>, seat: u64| a.leader().ok().and_then(|l| l.token_id) == Some(seat);
    wait_until(
        "every agent to report seat 1 as leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || agents.iter().all(|a| leads(a, 1)),
        || tails(&agents),
    );
    let on_chain = || cluster.meshctl(0, &["leader", "show"])["leaderTokenId"].as_u64();
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
    json!({
        "leaderTimeoutSecs": timeout,
        "onChainMs": ms(chain),
        "reportedMs": ms(reported),
        "beyondTimeoutMs": ms(chain) - ms(Duration::from_secs(timeout)),
    })
}
