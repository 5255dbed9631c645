//! What a test asks of several agents at once: a full mesh, everyone healthy on a path, pings over the
//! overlay, no warnings; and their state side by side when a wait fails.

use std::time::Duration;

use mesh_api::Peer;
use mesh_wg::Key;

use super::Agent;
use crate::net::ping::ping;
use crate::run::wait::wait_until;

/// What `a` says of its path to seat `to`: the path and, while relayed, why.
pub fn path_to(a: &Agent<'_>, to: usize) -> Option<(mesh_api::Path, Option<String>)> {
    let p = a.peer(to as u64)?;
    Some((p.path?, p.path_reason))
}

/// Whether every agent sees every other one healthy on `path`.
pub fn all_healthy_on(agents: &[Agent<'_>], path: mesh_api::Path) -> bool {
    agents.iter().all(|a| {
        let Ok(status) = a.try_status() else {
            return false; // Not serving yet.
        };
        let peers: Vec<Peer> = serde_json::from_value(status["peers"].clone()).unwrap_or_default();
        agents.iter().filter(|b| b.index != a.index).all(|b| {
            peers
                .iter()
                .any(|p| p.token_id == b.token && p.healthy && p.path == Some(path))
        })
    })
}

/// Every ordered pair's path and health, and why a relayed one is, for failure messages.
pub fn path_table(agents: &[Agent<'_>]) -> String {
    let mut out = String::new();
    for a in agents {
        for b in agents.iter().filter(|b| b.index != a.index) {
            let seen = match a.peer(b.token) {
                Some(p) => format!(
                    "{:?}, {}{}",
                    p.path,
                    if p.healthy { "healthy" } else { "not healthy" },
                    p.path_reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                None => "absent".to_owned(),
            };
            out.push_str(&format!("{} -> {}: {seen}\n", a.index, b.index));
        }
    }
    out
}

/// Every agent's log tail, for failure messages.
pub fn tails(agents: &[Agent<'_>]) -> String {
    agents
        .iter()
        .map(Agent::tail)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every agent's `meshctl status --json` (or why it failed), for failure messages.
pub fn statuses(agents: &[Agent<'_>]) -> String {
    agents
        .iter()
        .map(|a| {
            let s = a.try_status().map(|v| v.to_string()).unwrap_or_else(|e| e);
            format!("--- meshctl status, node {} ---\n{s}", a.index)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (60 s) until every agent reports every other one healthy over WireGuard with the key in `keys`
/// (`keys[j - 1]` is node j's).
pub fn wait_full_mesh(agents: &[Agent<'_>], keys: &[Key]) {
    wait_until(
        &format!(
            "nodes {:?} to report each other healthy over WireGuard",
            agents.iter().map(|a| a.index).collect::<Vec<_>>()
        ),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || agents.iter().all(|a| a.sees_all_healthy(agents, keys)),
        || format!("{}\n{}", statuses(agents), tails(agents)),
    );
}

/// Node `from` pings seat `to`'s overlay address 3 times, 200 ms apart; returns the replies received.
pub fn replies(agents: &[Agent<'_>], from: usize, to: usize) -> u32 {
    ping(
        agents[0].cluster.lan().node(from),
        agents[0].cluster.overlay_of(to),
        3,
        Duration::from_millis(200),
    )
    .1
}

/// Node `from` reaches seat `to` over the overlay (3 of 3 pings); panics with every status and log tail.
pub fn assert_pings(agents: &[Agent<'_>], from: usize, to: usize) {
    let got = replies(agents, from, to);
    assert_eq!(
        got,
        3,
        "node {from} -> node {to} ({}) over the overlay: {got} of 3 replies\n{}\n{}",
        agents[0].cluster.overlay_of(to),
        statuses(agents),
        tails(agents)
    );
}

/// Node `from` cannot reach seat `to` over the overlay (0 of 3 pings).
pub fn assert_no_pings(agents: &[Agent<'_>], from: usize, to: usize) {
    let got = replies(agents, from, to);
    assert_eq!(
        got,
        0,
        "node {from} must not reach node {to} ({}) over the overlay, yet {got} of 3 replies came\n{}\n{}",
        agents[0].cluster.overlay_of(to),
        statuses(agents),
        tails(agents)
    );
}

/// Panics listing them if any agent logged a warning or an error (see [`Agent::warnings`]): a clean run
/// has nothing to warn about.
pub fn assert_no_warnings(agents: &[Agent<'_>]) {
    let warnings: Vec<String> = agents
        .iter()
        .flat_map(|a| {
            a.warnings()
                .into_iter()
                .map(move |w| format!("agent {}: {w}", a.index))
        })
        .collect();
    assert!(
        warnings.is_empty(),
        "the agents logged warnings or errors:\n{}",
        warnings.join("\n")
    );
}
