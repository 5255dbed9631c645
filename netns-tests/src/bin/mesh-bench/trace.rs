//! The trace: one join followed through every node's log.

use std::str::FromStr as _;
use std::time::Duration;

use alloy::primitives::Address;
use mesh_api::Peer;
use netns_tests::convergence::{chain_watch, full_mesh, healthy, watch_change};
use netns_tests::prelude::*;
use serde_json::{Value, json};

use crate::{BOUND, Follow, ms};

/// The agents' log filter in the trace: their default, with mesh_wg's handshake events at debug.
const TRACE_FILTER: &str = "warn,boringtun::noise::timers=off,p2p_agent=info,mesh_chain=info,mesh_wg=debug,mesh_api=info,dstack_guest=info,unix_socket=info";

/// The stages of a join as each existing node goes through them, by the line its log has for each (the
/// first after the block; for the newcomer's key where the line names a peer).
const STAGES: [(&str, &str, bool); 5] = [
    ("chain", "peer records changed", false),
    ("added", "peer added", true),
    ("initiated", "handshake initiation at once", true),
    ("session", "handshake response received", true),
    ("answered", "handshake initiation received", true),
];

/// One join at `n` nodes, traced: the block that holds the newcomer's record, and for every other node
/// when it read the block, added the peer, sent its first initiation, got a session (by its own initiation's
/// response, or by answering the newcomer's), and showed the handshake on its API; the initiations the
/// newcomer dropped because they came before it knew the sender, and WireGuard's retries.
pub(crate) fn trace_join(n: usize, follow: Follow) -> anyhow::Result<Value> {
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
        let mut row = serde_json::Map::new();
        row.insert("node".into(), json!(a.index));
        for (name, text, keyed) in STAGES {
            let at = log_lines(&log, block_wall - 1.0)
                .find(|(_, l)| l.contains(text) && (!keyed || l.contains(key)))
                .map(|(t, _)| since(t));
            row.insert(name.into(), json!(at));
        }
        let retries = log_lines(&log, block_wall)
            .filter(|(_, l)| l.contains("initiation from WireGuard's timers") && l.contains(key))
            .count();
        row.insert("timerRetries".into(), json!(retries));
        row.insert(
            "api".into(),
            json!(ms(api.saturating_duration_since(block))),
        );
        rows.push(Value::Object(row));
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

    let stat = |name: &str| -> Value {
        let mut v: Vec<f64> = rows.iter().filter_map(|r| r[name].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        json!({ "nodes": v.len(), "medianMs": at(0.5), "p90Ms": at(0.9), "maxMs": at(1.0) })
    };
    let stages: serde_json::Map<String, Value> = STAGES
        .iter()
        .map(|(name, _, _)| *name)
        .chain(["api"])
        .map(|name| (name.to_owned(), stat(name)))
        .collect();
    let retries: usize = rows
        .iter()
        .filter_map(|r| r["timerRetries"].as_u64())
        .sum::<u64>() as usize;
    eprintln!(
        "   trace of node {n}'s join (ms after the block that holds its record; over the {} other nodes):",
        n - 1
    );
    eprintln!(
        "     the newcomer's registration receipt: {}",
        registered.map_or("-".into(), |t| format!("{t:.0}"))
    );
    for (name, s) in &stages {
        eprintln!(
            "     {name:<10} median {:>6} p90 {:>6} max {:>6}  ({} nodes)",
            s["medianMs"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            s["p90Ms"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            s["maxMs"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            s["nodes"]
        );
    }
    eprintln!(
        "     the newcomer added its {} peers from {} to {} ms; dropped {} initiations from keys it did not know yet (the last at {} ms); WireGuard retries: {retries} by the others, {newcomer_retries} by the newcomer",
        added.len(),
        added.first().map_or("-".into(), |t| format!("{t:.0}")),
        added.last().map_or("-".into(), |t| format!("{t:.0}")),
        dropped.len(),
        dropped.last().map_or("-".into(), |t| format!("{t:.0}")),
    );
    Ok(json!({
        "nodes": n,
        "follow": follow.describe(),
        "registrationReceiptMs": registered,
        "stages": stages,
        "newcomerPeersAdded": added.len(),
        "newcomerFirstAddMs": added.first(),
        "newcomerLastAddMs": added.last(),
        "initiationsDroppedByNewcomer": dropped.len(),
        "timerRetriesByOthers": retries,
        "timerRetriesByNewcomer": newcomer_retries,
        "perNode": rows,
    }))
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
