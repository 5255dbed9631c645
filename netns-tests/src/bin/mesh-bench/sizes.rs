//! One mesh size: how long the mesh takes to form, a join's convergence, the idle cost, churn, and a
//! revocation.

use std::str::FromStr as _;
use std::time::Instant;

use alloy::primitives::Address;
use mesh_api::Peer;
use netns_tests::convergence::{
    chain_watch, delays, full_mesh, healthy, lists, median_and_worst, watch_change,
};
use netns_tests::prelude::*;
use serde_json::{Value, json};

use crate::churn::churn_loss;
use crate::cost::cost;
use crate::{BOUND, Follow, ms};

/// A size's run: `n` nodes; nodes 1..n-1 form the mesh, then node n joins (convergence), the mesh idles
/// (cost), blocks are mined (cost per block), `churn` more nodes join and leave if asked, and seat n is
/// revoked (revocation).
pub(crate) fn size_run(n: usize, churn: usize, follow: Follow) -> anyhow::Result<Value> {
    let lan = Lan::new(n + churn);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let ready = Instant::now();
    let mut agents = start_agents_as(&cluster, 1..n, |i| follow.config(i), 300);
    let started = ready.elapsed();
    let t0 = Instant::now();
    let all: Vec<&Agent<'_>> = agents.iter().collect();
    full_mesh(&all, BOUND)
        .map_err(|e| anyhow::anyhow!("the mesh of {} did not form: {e}", n - 1))?;
    let formed = t0.elapsed();
    eprintln!(
        "   {} agents started in {started:.1?}, meshed {formed:.1?} after",
        n - 1
    );

    // Convergence: node n joins; when does each other node list it, and have a handshake with it?
    let token = n as u64;
    let listed = |p: &[Peer]| lists(p, token);
    let handshaken = |p: &[Peer]| healthy(p, token);
    let watch = chain_watch(&lan, contract, token, true, BOUND);
    let (newcomer, times) = watch_change(
        &all,
        BOUND,
        &[("lists it", &listed), ("handshaken", &handshaken)],
        || Agent::start_with(&cluster, n, follow.config(n), &[]),
    )
    .map_err(|e| anyhow::anyhow!("node {n}'s join was not applied: {e}"))?;
    let block = watch.join().expect("chain watch");
    let (listed_median, listed_worst) = median_and_worst(&delays(block, &times[0]));
    let (hs_median, hs_worst) = median_and_worst(&delays(block, &times[1]));
    agents.push(newcomer);
    eprintln!(
        "   join: listed by all {:.0} ms after its block (median {:.0}), handshaken by all {:.0} ms after (median {:.0})",
        ms(listed_worst),
        ms(listed_median),
        ms(hs_worst),
        ms(hs_median)
    );
    let mut out = json!({
        "nodes": n,
        "startSecs": started.as_secs_f64(),
        "formedSecs": formed.as_secs_f64(),
        "listedMs": ms(listed_worst),
        "listedMedianMs": ms(listed_median),
        "convergenceMs": ms(hs_worst),
        "handshakeMedianMs": ms(hs_median),
    });
    out["cost"] = cost(&lan, &agents)?;
    if churn > 0 {
        out["churn"] = churn_loss(&lan, &cluster, &agents, n + 1, churn, follow);
    }

    // Revocation of seat n: when has each other node dropped it?
    let dropped = |p: &[Peer]| !lists(p, token);
    let watch = chain_watch(&lan, contract, token, false, BOUND);
    let others: Vec<&Agent<'_>> = agents.iter().filter(|a| a.index != n).collect();
    let (_, times) = watch_change(&others, BOUND, &[("dropped it", &dropped)], || {
        cluster.meshctl(0, &["revoke", "--token", &token.to_string(), "--yes"])
    })
    .map_err(|e| anyhow::anyhow!("seat {n}'s revocation was not applied: {e}"))?;
    let cleared = watch.join().expect("chain watch");
    let (dropped_median, dropped_worst) = median_and_worst(&delays(cleared, &times[0]));
    eprintln!(
        "   revocation: dropped by all {:.0} ms after its block (median {:.0})",
        ms(dropped_worst),
        ms(dropped_median)
    );
    out["revocationMs"] = json!(ms(dropped_worst));
    out["revocationMedianMs"] = json!(ms(dropped_median));
    Ok(out)
}
