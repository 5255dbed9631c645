//! Reads that one provider cannot bend, end to end. Nodes 1 and 2 follow the chain through three JSON-RPC
//! providers each (`--rpc-url a,b,c`, two of which must agree): two honest proxies in front of anvil, and a
//! liar that says the cluster's image is not allowed (alone, it would have every peer refused) and hides
//! seat 3's revocation. Node 3 follows anvil alone.
//!
//! The mesh forms as if the liar were not there; the revocation reaches nodes 1 and 2; each of them names
//! the liar in `/v1/status` (and its metrics), the honest providers not; node 3's view says it is
//! unverified.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios rpc_quorum:: -- --nocapture
//! ```

use std::time::Duration;

use alloy::sol_types::SolCall as _;
use mesh_chain::contract::DstackClusterAppAuth;
use netns_tests::in_process::rpc_proxy::{RpcProxy, bloom_claims_every_log, logs_mut};
use netns_tests::prelude::*;

/// A proxy in front of anvil, in node `i`'s namespace, that lies: nothing is allowed, every block claims
/// the cluster's logs, and seat 3's logs are dropped.
fn liar(lan: &Lan, i: usize) -> RpcProxy {
    let proxy = RpcProxy::start_in(lan.node(i), &rpc_url());
    proxy.rewrite("nothing allowed", |req, response| {
        if req.calls(DstackClusterAppAuth::isComposeHashAllowedCall::SELECTOR)
            || req.calls(DstackClusterAppAuth::isOsAllowedCall::SELECTOR)
        {
            response["result"] = format!("0x{:064x}", 0).into();
        }
    });
    proxy.rewrite("blooms", bloom_claims_every_log);
    let seat_3 = format!("0x{:064x}", 3);
    proxy.rewrite("hide seat 3", move |req, response| {
        if req.method == "eth_getLogs"
            && let Some(logs) = logs_mut(response)
        {
            logs.retain(|l| l["topics"].get(1).and_then(|t| t.as_str()) != Some(seat_3.as_str()));
        }
    });
    proxy
}

#[test]
fn a_lying_provider_among_three_is_outvoted_by_every_agent_and_named() {
    require_mesh_prerequisites();
    let steps = Steps::new("rpc_quorum");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    // Per node: honest, liar, honest, in its own namespace.
    let proxies: Vec<[RpcProxy; 3]> = (1..=2)
        .map(|i| {
            [
                RpcProxy::start_in(lan.node(i), &rpc_url()),
                liar(&lan, i),
                RpcProxy::start_in(lan.node(i), &rpc_url()),
            ]
        })
        .collect();
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| p.iter().map(RpcProxy::url).collect::<Vec<_>>().join(","))
        .collect();
    let mut agents: Vec<Agent<'_>> = (1..=3)
        .map(|i| {
            let rpc = urls.get(i - 1).cloned().unwrap_or_else(rpc_url);
            Agent::builder(&cluster)
                .config(move |n| AgentConfig {
                    rpc_url: rpc.clone(),
                    ..AgentConfig::lan(n)
                })
                .start(i)
        })
        .collect();
    for a in &mut agents {
        a.wait_ready(60);
    }
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    steps.step("3-node mesh healthy: nodes 1 and 2 read through two honest providers and one that says nothing is allowed");

    cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    for a in &agents[..2] {
        wait_until(
            &format!("node {} to drop the revoked seat 3", a.index),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || a.peer(3).is_none() && !a.wg_peer_keys().contains(&keys[2]),
            || a.tail(),
        );
    }
    steps.step("seat 3 revoked: nodes 1 and 2 dropped it, though the liar hides its logs");

    for (a, p) in agents[..2].iter().zip(&proxies) {
        let liar_url = p[1].url().trim_end_matches('/').to_owned();
        wait_until(
            &format!("node {} to name its lying provider", a.index),
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let v = a.status().0.chain.verification;
                v.verified
                    && v.quorum == 2
                    && v.providers
                        .iter()
                        .any(|x| x.url.starts_with(&liar_url) && x.dissenting)
                    && v.providers
                        .iter()
                        .filter(|x| !x.dissenting && x.agreed > 0)
                        .count()
                        == 2
            },
            || format!("{:?}\n{}", a.status().0.chain.verification, a.tail()),
        );
        let metrics = a.metrics();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("dstack_mesh_rpc_answers_total")
                    && l.contains(&liar_url)
                    && l.contains("outcome=\"dissented\"")
                    && !l.ends_with(" 0")),
            "{metrics}"
        );
        assert!(
            metrics.contains("dstack_mesh_chain_verified 1"),
            "{metrics}"
        );
    }
    let single = agents[2].status().0.chain.verification;
    assert!(!single.verified && single.quorum == 1, "{single:?}");
    steps.step("nodes 1 and 2 name the liar in their status and metrics; node 3, on one provider, says its view is unverified");
}
