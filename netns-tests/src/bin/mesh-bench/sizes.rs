//! The sizes section: for each mesh size, how long the mesh takes to form, a join's convergence, the idle
//! cost, churn (at one size), and a revocation.

use std::str::FromStr as _;
use std::time::Instant;

use alloy::primitives::Address;
use mesh_api::Peer;
use netns_tests::prelude::*;
use netns_tests::system::convergence::{
    chain_watch, delays, full_mesh, healthy, lists, median_and_worst, watch_change,
};

use crate::report::Size;
use crate::{Args, BOUND, Follow, churn, cost, ms};

/// Each of `--sizes`, with churn on 25 nodes when that size is measured, else on the largest.
pub(crate) fn measure_all(args: &Args) -> anyhow::Result<Vec<Size>> {
    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    let churn_at = if args.sizes.contains(&25) {
        25
    } else {
        largest
    };
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        anyhow::ensure!(
            (3..=200).contains(&n),
            "--sizes: {n} nodes cannot be measured; give sizes from 3 to 200"
        );
        eprintln!(
            "== {n} nodes: convergence, cost and revocation; {}",
            args.follow.describe()
        );
        let churn = if n == churn_at { args.churn } else { 0 };
        sizes.push(measure(n, churn, args.follow)?);
    }
    Ok(sizes)
}

/// A size's run: `n` nodes; nodes 1..n-1 form the mesh, then node n joins (convergence), the mesh idles
/// (cost), blocks are mined (cost per block), `churn` more nodes join and leave if asked, and seat n is
/// revoked (revocation).
fn measure(n: usize, churn: usize, follow: Follow) -> anyhow::Result<Size> {
    let lan = Lan::new(n + churn);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let ready = Instant::now();
    let following = Agent::builder(&cluster)
        .config(|i| follow.config(i))
        .ready_within(300);
    let mut agents = following.start_all(1..n);
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
        || following.start(n),
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
    let cost = cost::measure(&lan, &agents)?;
    let churn = (churn > 0).then(|| churn::loss(&lan, &cluster, &agents, n + 1, churn, follow));

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
    Ok(Size {
        nodes: n,
        start_secs: started.as_secs_f64(),
        formed_secs: formed.as_secs_f64(),
        listed_ms: ms(listed_worst),
        listed_median_ms: ms(listed_median),
        convergence_ms: ms(hs_worst),
        handshake_median_ms: ms(hs_median),
        cost,
        churn,
        revocation_ms: ms(dropped_worst),
        revocation_median_ms: ms(dropped_median),
    })
}
