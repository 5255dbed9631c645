//! Timing how fast the mesh applies a change on the chain: when the chain holds it ([`chain_watch`]), and
//! when each agent's API shows it ([`watch_change`], from the agents' event streams, so that watching a
//! hundred agents costs them nothing between changes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider as _, ProviderBuilder};
use mesh_api::{Client, ConnectionKind, Event, Peer};
use mesh_chain::contract::DstackClusterNFT;

use crate::system::agent::Agent;
use crate::system::lan::{Lan, rpc_url};

/// How often the chain is read while waiting for a change to land there.
const CHAIN_POLL: Duration = Duration::from_millis(10);

/// Whether `peers` has seat `token` healthy over its tunnel.
pub fn healthy(peers: &[Peer], token: u64) -> bool {
    peers
        .iter()
        .any(|p| p.token_id == token && p.healthy && p.connection == ConnectionKind::Wireguard)
}

/// Whether `peers` lists seat `token` at all.
pub fn lists(peers: &[Peer], token: u64) -> bool {
    peers.iter().any(|p| p.token_id == token)
}

/// Reads the cluster from the switch namespace (where anvil listens) on its own thread until seat `token`
/// has a record (`want_record`) or has none; the thread returns when it first saw that.
///
/// # Panics
/// In the thread, when that does not happen within `bound`.
pub fn chain_watch(
    lan: &Lan,
    contract: Address,
    token: u64,
    want_record: bool,
    bound: Duration,
) -> std::thread::JoinHandle<Instant> {
    let path = PathBuf::from("/var/run/netns").join(&lan.switch.name);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("switch namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let provider = ProviderBuilder::new()
                .connect_http(rpc_url().parse().expect("rpc url"))
                .erased();
            let c = DstackClusterNFT::new(contract, provider);
            let deadline = Instant::now() + bound;
            loop {
                let has = c
                    .getPeer(U256::from(token))
                    .call()
                    .await
                    .is_ok_and(|p| p.nonce > 0 && !p.wgPublicKey.is_zero());
                if has == want_record {
                    return Instant::now();
                }
                assert!(
                    Instant::now() < deadline,
                    "seat {token}'s record never {} on-chain within {bound:?}",
                    if want_record { "appeared" } else { "left" }
                );
                tokio::time::sleep(CHAIN_POLL).await;
            }
        })
    })
}

/// A test on an agent's peer list, named for failure messages.
pub type Check<'c> = (&'c str, &'c (dyn Fn(&[Peer]) -> bool + Sync));

/// Makes `change` while following every agent's `/v1/events` (opened before the change is made, on a
/// thread of their own), and returns what `change` returned with, for each of `checks`, when each agent's
/// API first showed a peer list that passes it (in the order of `agents`). Watching a hundred agents this
/// way costs them nothing between changes, unlike polling their APIs.
///
/// # Errors
/// The agents that did not pass every check within `bound` (or whose stream broke), by node and check.
pub fn watch_change<T: Send>(
    agents: &[&Agent<'_>],
    bound: Duration,
    checks: &[Check<'_>],
    change: impl FnOnce() -> T + Send,
) -> Result<(T, Vec<Vec<Instant>>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (opened, ready) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let changed = s.spawn(move || {
            // The watchers are in place (or failed, and the change is made anyway to end the scope).
            let _ = ready.recv();
            change()
        });
        let times = rt.block_on(async {
            let streams = futures::future::join_all(
                agents
                    .iter()
                    .map(|a| async move { Client::new(&a.api_socket).events().await }),
            )
            .await;
            let _ = opened.send(());
            let deadline = tokio::time::Instant::now() + bound;
            let each = agents.iter().zip(streams).map(|(a, stream)| async move {
                let watch = async {
                    let mut events = stream.map_err(|e| e.to_string())?;
                    let mut seen: Vec<Option<Instant>> = vec![None; checks.len()];
                    while let Some(event) = events.next().await {
                        if let Event::Peers(peers) = event.map_err(|e| e.to_string())? {
                            let now = Instant::now();
                            for (at, (_, check)) in seen.iter_mut().zip(checks) {
                                if at.is_none() && check(&peers) {
                                    *at = Some(now);
                                }
                            }
                            if seen.iter().all(Option::is_some) {
                                return Ok(seen.into_iter().flatten().collect::<Vec<_>>());
                            }
                        }
                    }
                    Err("the event stream ended".to_owned())
                };
                tokio::time::timeout_at(deadline, watch)
                    .await
                    .unwrap_or_else(|_| {
                        let names: Vec<&str> = checks.iter().map(|(n, _)| *n).collect();
                        Err(format!("not all of {names:?} within {bound:?}"))
                    })
                    .map_err(|e| format!("node {}: {e}", a.index))
            });
            futures::future::join_all(each).await
        });
        let made = changed.join().expect("the change panicked");
        let failed: Vec<String> = times
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        if !failed.is_empty() {
            return Err(failed.join("\n"));
        }
        let per_agent: Vec<Vec<Instant>> = times.into_iter().flatten().collect();
        let per_check = (0..checks.len())
            .map(|c| per_agent.iter().map(|t| t[c]).collect())
            .collect();
        Ok((made, per_check))
    })
}

/// Waits until every agent reports every other one healthy over WireGuard (followed as in
/// [`watch_change`]).
///
/// # Errors
/// The agents that did not within `bound`.
pub fn full_mesh(agents: &[&Agent<'_>], bound: Duration) -> Result<(), String> {
    let seats: Vec<u64> = agents.iter().map(|a| a.token).collect();
    let all = |peers: &[Peer]| {
        let healthy_peers = seats.iter().filter(|t| healthy(peers, **t)).count();
        healthy_peers + 1 >= seats.len()
    };
    watch_change(agents, bound, &[("every other node healthy", &all)], || ()).map(|_| ())
}

/// The times from `since` to each of `at`, sorted.
pub fn delays(since: Instant, at: &[Instant]) -> Vec<Duration> {
    let mut d: Vec<Duration> = at
        .iter()
        .map(|t| t.saturating_duration_since(since))
        .collect();
    d.sort();
    d
}

/// The median and the largest of sorted `delays`.
pub fn median_and_worst(delays: &[Duration]) -> (Duration, Duration) {
    let median = delays.get(delays.len() / 2).copied().unwrap_or_default();
    (median, delays.last().copied().unwrap_or_default())
}
