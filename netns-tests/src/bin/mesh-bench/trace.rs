//! The trace: one join followed through every node's log.

use std::str::FromStr as _;
use std::time::Duration;

use alloy::primitives::Address;
use mesh_api::Peer;
use netns_tests::convergence::{chain_watch, full_mesh, healthy, watch_change};
use netns_tests::prelude::*;

use crate::report::{NodeTrace, Stages, Stat, Trace};
use crate::table::fixed;
use crate::{BOUND, Follow, ms};

/// The agents' log filter in the trace: their default, with mesh_wg's handshake events at debug.
const TRACE_FILTER: &str = "warn,boringtun::noise::timers=off,p2p_agent=info,mesh_chain=info,mesh_wg=debug,mesh_api=info,dstack_guest=info,unix_socket=info";

/// One join at `n` nodes, traced: the block that holds the newcomer's record, and for every other node
/// when it read the block, added the peer, sent its first initiation, got a session (by its own initiation's
/// response, or by answering the newcomer's), and showed the handshake on its API; the initiations the
/// newcomer dropped because they came before it knew the sender, and WireGuard's retries.
pub(crate) fn join(n: usize, follow: Follow) -> anyhow::Result<Trace> {
    let lan = Lan::new(n);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let config = |i| AgentConfig {
        log_filter: Some(TRACE_FILTER.to_owned()),
        ..follow.config(i)
    };
    let agents = start_agents_as(&cluster, 1..n, config, 300);
    let all: Vec<&Agent<'_>> = agents.iter().collect();
    full_mesh(&all, BOUND)
        .map_err(|e| anyhow::anyhow!("the mesh of {} did not form: {e}", n - 1))?;
    std::thread::sleep(Duration::from_secs(2));
    let token = n as u64;
    let handshaken = |p: &[Peer]| healthy(p, token);
    let watch = chain_watch(&lan, contract, token, true, BOUND);
    let (newcomer, times) = watch_change(&all, BOUND, &[("handshaken", &handshaken)], || {
        Agent::start_with(&cluster, n, config(n), &[])
    })
    .map_err(|e| anyhow::anyhow!("node {n}'s join was not applied: {e}"))?;
    let block = watch.join().expect("chain watch");
    let block_wall = unix_secs(std::time::SystemTime::now()) - block.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let key = format!("{:?}", newcomer.key());
    let key = key.trim_end_matches('…');

    let since = |t: f64| (t - block_wall) * 1000.0;
    let mut rows = Vec::new();
    for (a, api) in agents.iter().zip(&times[0]) {
        let log = std::fs::read_to_string(&a.log)?;
        // The first line after the block; for the newcomer's key where the line names a peer.
        let first = |text: &str, keyed: bool| {
            log_lines(&log, block_wall - 1.0)
                .find(|(_, l)| l.contains(text) && (!keyed || l.contains(key)))
                .map(|(t, _)| since(t))
        };
        rows.push(NodeTrace {
            node: a.index,
            chain: first("peer records changed", false),
            added: first("peer added", true),
            initiated: first("handshake initiation at once", true),
            session: first("handshake response received", true),
            answered: first("handshake initiation received", true),
            timer_retries: log_lines(&log, block_wall)
                .filter(|(_, l)| {
                    l.contains("initiation from WireGuard's timers") && l.contains(key)
                })
                .count(),
            api: ms(api.saturating_duration_since(block)),
        });
    }
    let log = std::fs::read_to_string(&newcomer.log)?;
    let dropped: Vec<f64> = log_lines(&log, block_wall - 1.0)
        .filter(|(_, l)| l.contains("not a peer (yet)"))
        .map(|(t, _)| since(t))
        .collect();
    let added: Vec<f64> = log_lines(&log, block_wall - 1.0)
        .filter(|(_, l)| l.contains("peer added"))
        .map(|(t, _)| since(t))
        .collect();
    let registered = log_lines(&log, block_wall - 60.0)
        .find(|(_, l)| l.contains("registered peer record"))
        .map(|(t, _)| since(t));
    let newcomer_retries = log_lines(&log, block_wall)
        .filter(|(_, l)| l.contains("initiation from WireGuard's timers"))
        .count();

    let stat = |stage: fn(&NodeTrace) -> Option<f64>| Stat::of(rows.iter().map(stage));
    let stages = Stages {
        chain: stat(|r| r.chain),
        added: stat(|r| r.added),
        initiated: stat(|r| r.initiated),
        session: stat(|r| r.session),
        answered: stat(|r| r.answered),
        api: stat(|r| Some(r.api)),
    };
    let retries: usize = rows.iter().map(|r| r.timer_retries).sum();
    eprintln!(
        "   trace of node {n}'s join (ms after the block that holds its record; over the {} other nodes):",
        n - 1
    );
    eprintln!(
        "     the newcomer's registration receipt: {}",
        fixed(registered, 0)
    );
    for (name, s) in stages.named() {
        eprintln!(
            "     {name:<10} median {:>6} p90 {:>6} max {:>6}  ({} nodes)",
            fixed(s.median_ms, 0),
            fixed(s.p90_ms, 0),
            fixed(s.max_ms, 0),
            s.nodes
        );
    }
    eprintln!(
        "     the newcomer added its {} peers from {} to {} ms; dropped {} initiations from keys it did not know yet (the last at {} ms); WireGuard retries: {retries} by the others, {newcomer_retries} by the newcomer",
        added.len(),
        fixed(added.first().copied(), 0),
        fixed(added.last().copied(), 0),
        dropped.len(),
        fixed(dropped.last().copied(), 0),
    );
    Ok(Trace {
        nodes: n,
        follow: follow.describe(),
        registration_receipt_ms: registered,
        stages,
        newcomer_peers_added: added.len(),
        newcomer_first_add_ms: added.first().copied(),
        newcomer_last_add_ms: added.last().copied(),
        initiations_dropped_by_newcomer: dropped.len(),
        timer_retries_by_others: retries,
        timer_retries_by_newcomer: newcomer_retries,
        per_node: rows,
    })
}

/// The lines of an agent's text log at or after `from` (unix seconds), with their time.
fn log_lines(log: &str, from: f64) -> impl Iterator<Item = (f64, &str)> {
    log.lines()
        .filter_map(|l| Some((rfc3339_secs(l.split_whitespace().next()?)?, l)))
        .filter(move |(t, _)| *t >= from)
}

fn unix_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A log line's RFC 3339 timestamp (the agent logs in UTC) as unix seconds.
fn rfc3339_secs(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trace reads the agents' log timestamps as unix seconds, to the microsecond.
    #[test]
    fn log_timestamps_are_read_as_unix_seconds() {
        let t = rfc3339_secs("2026-11-23T06:54:56.179762Z").expect("a timestamp");
        assert!((t - 1_795_416_896.179_762).abs() < 1e-5, "{t}");
        assert_eq!(rfc3339_secs("INFO"), None);
    }
}
