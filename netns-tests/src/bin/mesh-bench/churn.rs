//! Churn loss: ping loss between two steady nodes while others join and leave.

use std::time::{Duration, Instant};

use mesh_api::Peer;
use netns_tests::prelude::*;
use netns_tests::system::convergence::{healthy, watch_change};

use crate::report::Churn;
use crate::{BOUND, Follow};

/// Node 1 pings node 2 every 20 ms while nodes `first..first + count` join (mint, start, adopted by nodes 1
/// and 2) and then leave (revoked, dropped by nodes 1 and 2).
pub(crate) fn loss<'a>(
    lan: &Lan,
    cluster: &'a Cluster<'a>,
    steady: &[Agent<'a>],
    first: usize,
    count: usize,
    follow: Follow,
) -> Churn {
    let pinger = BackgroundPing::start(
        lan.node(1),
        overlay_ip(2),
        100_000,
        Duration::from_millis(20),
    );
    let t0 = Instant::now();
    let pair: Vec<&Agent<'_>> = steady.iter().filter(|a| a.index <= 2).collect();
    let tokens: Vec<u64> = (first..first + count).map(|i| i as u64).collect();
    let adopted = |p: &[Peer]| tokens.iter().all(|&t| healthy(p, t));
    let joining = Agent::builder(cluster).config(|i| follow.config(i));
    let (joiners, _) = watch_change(
        &pair,
        BOUND,
        &[("adopted every churn node", &adopted)],
        || {
            (first..first + count)
                .map(|i| {
                    cluster.mint(i);
                    joining.start(i)
                })
                .collect::<Vec<_>>()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let joined = t0.elapsed();
    let gone = |p: &[Peer]| p.iter().all(|p| !tokens.contains(&p.token_id));
    watch_change(&pair, BOUND, &[("dropped every churn node", &gone)], || {
        for &t in &tokens {
            cluster.meshctl(0, &["revoke", "--token", &t.to_string(), "--yes"]);
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let left = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (sent, received, _) = pinger.interrupt();
    drop(joiners);
    let loss = if sent == 0 {
        100.0
    } else {
        f64::from(sent - received) / f64::from(sent) * 100.0
    };
    eprintln!(
        "   churn: {count} nodes joined in {joined:.1?} and left by {left:.1?}; ping 1 -> 2 {received}/{sent} ({loss:.2}% loss)"
    );
    Churn {
        nodes: count,
        joined_secs: joined.as_secs_f64(),
        left_secs: left.as_secs_f64(),
        pings_sent: sent,
        pings_received: received,
        loss_percent: loss,
    }
}
