//! `/metrics`: a snapshot in Prometheus's text exposition format.

use crate::types::{Peer, Snapshot};

/// Renders the Prometheus text exposition of a snapshot.
pub fn metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    let per_peer = |f: &dyn Fn(&Peer) -> u64| {
        s.peers
            .iter()
            .map(|p| (format!("{{token_id=\"{}\"}}", p.token_id), f(p)))
            .collect::<Vec<_>>()
    };
    metric(
        "dstack_mesh_peers_configured",
        "gauge",
        "Peers in the desired set.",
        one(s.peers.len() as u64),
    );
    metric(
        "dstack_mesh_peers_healthy",
        "gauge",
        "Peers with a recent WireGuard handshake.",
        one(s.peers.iter().filter(|p| p.healthy).count() as u64),
    );
    metric(
        "dstack_mesh_peer_latest_handshake_seconds",
        "gauge",
        "Unix time of each peer's latest handshake (0: never).",
        per_peer(&|p| p.latest_handshake.unwrap_or(0)),
    );
    metric(
        "dstack_mesh_peer_rx_bytes_total",
        "counter",
        "Bytes received from each peer.",
        per_peer(&|p| p.rx_bytes),
    );
    metric(
        "dstack_mesh_peer_tx_bytes_total",
        "counter",
        "Bytes sent to each peer.",
        per_peer(&|p| p.tx_bytes),
    );
    metric(
        "dstack_mesh_reconciles_total",
        "counter",
        "Reconciles that changed the device.",
        one(s.counters.reconciles),
    );
    metric(
        "dstack_mesh_registrations_total",
        "counter",
        "Peer records this node registered.",
        one(s.counters.registrations),
    );
    metric(
        "dstack_mesh_rpc_errors_total",
        "counter",
        "Failed RPC requests.",
        one(s.counters.rpc_errors),
    );
    metric(
        "dstack_mesh_chain_requests_total",
        "counter",
        "JSON-RPC requests made to follow the chain.",
        one(s.counters.chain_requests),
    );
    metric(
        "dstack_mesh_invalid_records_total",
        "counter",
        "On-chain records skipped because they failed local checks.",
        one(s.counters.invalid_records),
    );
    metric(
        "dstack_mesh_chain_lag_blocks",
        "gauge",
        "Chain head minus the last processed block.",
        one(s.status.chain.lag.unwrap_or(0)),
    );
    metric(
        "dstack_mesh_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        one(s.status.uptime_secs),
    );
    out
}
