//! A lying RPC can hide changes but never invent or undo them. Node 1 follows the chain through a
//! JSON-RPC proxy in its own namespace; nodes 2 to 4 use anvil directly. The proxy:
//! 1. serves another cluster's proven records as this cluster's, in polls and in full reads: cluster B
//!    (same KMS root and app, another contract) holds genuine records of node 2's and node 4's instances,
//!    one with a huge nonce and an endpoint that would redirect seat 2's traffic to node 4;
//! 2. replays seat 3's last registration after the owner revoked seat 3, in polls and in full reads;
//! 3. fails every request for a while, and then every full read for good, while seat 4 joins.
//!
//! Node 1 must configure no forged peer (its peers and interface keys stay exactly the chain's), drop the
//! revoked seat for good, keep following (seat 4's join arrives by events), and keep running.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios adversary:: -- --nocapture
//! ```

use std::collections::BTreeSet;
use std::str::FromStr as _;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::sol_types::SolCall as _;
use mesh_chain::contract::DstackClusterNFT::{Peer, getPeersPageCall};
use mesh_chain::record::PeerRecord;
use netns_tests::in_process::rpc_proxy::{Request, RpcProxy, bloom_claims_every_log, logs_mut};
use netns_tests::prelude::*;
use netns_tests::system::attack::{
    CHAIN_ID, node_identity, on_chain, registration_logs, send_registration,
};
use serde_json::Value;

const NODES: usize = 4;

/// Appends `logs` to every range poll of `eth_getLogs`, as if they were `contract`'s and new, with every
/// block's bloom claiming them so that each poll asks.
fn inject_in_polls(proxy: &RpcProxy, name: &str, contract: Address, logs: Vec<Value>) {
    proxy.rewrite(name, bloom_claims_every_log);
    proxy.rewrite(name, move |req, response| {
        if req.method != "eth_getLogs" || req.gets_one_seats_logs() {
            return;
        }
        for log in &logs {
            let mut log = log.clone();
            log["address"] = contract.to_string().into();
            log["blockNumber"] = req.params[0]["toBlock"].clone();
            if let Some(out) = logs_mut(response) {
                out.push(log);
            }
        }
    });
}

/// Lists `peers` in every `getPeersPage` answer in place of the seats' own records, and answers the full
/// read's lookup of their events with `logs` (relabelled as `contract`'s).
fn inject_in_full_reads(
    proxy: &RpcProxy,
    name: &str,
    contract: Address,
    peers: Vec<Peer>,
    logs: Vec<Value>,
) {
    proxy.rewrite(name, move |req, response| {
        if req.calls(getPeersPageCall::SELECTOR) {
            let Some(hex) = response["result"].as_str() else {
                return;
            };
            let Ok(bytes) = alloy::hex::decode(hex) else {
                return;
            };
            let Ok(mut page) = getPeersPageCall::abi_decode_returns(&bytes) else {
                return;
            };
            page.page
                .retain(|p| peers.iter().all(|q| q.tokenId != p.tokenId));
            page.page.extend(peers.iter().cloned());
            page.total = U256::from(page.page.len());
            let encoded = getPeersPageCall::abi_encode_returns(&page);
            response["result"] = format!("0x{}", alloy::hex::encode(encoded)).into();
        } else if req.gets_one_seats_logs() {
            let topic = req.params[0]["topics"][1].clone();
            let forged: Vec<Value> = logs
                .iter()
                .filter(|l| l["topics"][1] == topic)
                .map(|l| {
                    let mut l = l.clone();
                    l["address"] = contract.to_string().into();
                    l["blockNumber"] = req.params[0]["fromBlock"].clone();
                    l
                })
                .collect();
            if !forged.is_empty() {
                response["result"] = Value::Array(forged);
            }
        }
    });
}

/// Each peer seat with its key and endpoint, as an agent reports it.
type Seats = Vec<(u64, Option<Key>, Option<String>)>;

/// What node 1 has of the mesh: its peer seats, and the keys on its interface.
fn view(a: &Agent<'_>) -> (Seats, BTreeSet<Key>) {
    let (_, peers) = a.status();
    let mut seats: Vec<_> = peers
        .into_iter()
        .map(|p| (p.token_id, p.wg_public_key, p.endpoint))
        .collect();
    seats.sort();
    (seats, a.wg_peer_keys())
}

#[test]
fn a_lying_rpc_cannot_add_forged_peers_undo_a_revocation_or_stop_the_follower() {
    require_mesh_prerequisites();
    let steps = Steps::new("adversary");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let contract = Address::from_str(&cluster.contract).expect("contract address");
    let proxy = RpcProxy::start_in(lan.node(1), &rpc_url());
    let via_proxy = |i| AgentConfig {
        rpc_url: proxy.url().to_owned(),
        ..AgentConfig::lan(i)
    };
    let mut agents = vec![
        Agent::builder(&cluster)
            .config(via_proxy)
            .flags(["--full-read-secs", "2"])
            .start(1),
    ];
    agents.extend((2..=3).map(|i| Agent::builder(&cluster).start(i)));
    for a in &mut agents {
        a.wait_ready(60);
    }
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    steps.step("3-node mesh healthy; node 1 follows the chain through the proxy");

    // Cluster B: same KMS root and app, another contract, with genuine records of nodes 2 and 4.
    let deployed = cluster.meshctl(
        0,
        &[
            "deploy",
            "--kms-root",
            &cluster.kms_root,
            "--app-id",
            &format!("0x{APP_ID}"),
            "--prefix",
            "10.0.1.0/24",
            "--max-nodes",
            "10",
        ],
    );
    let other = deployed["contract"].as_str().expect("cluster B").to_owned();
    let other_address = Address::from_str(&other).expect("address");
    cluster.allow_images_at(&other);
    for seat in 1..=4 {
        let mut args = vec![
            "mint",
            "--contract",
            &other,
            "--to",
            "0x00000000000000000000000000000000000000b0",
        ];
        let binding = (seat == 2 || seat == 4).then(|| {
            cluster.binding_file_at(&other, seat, "0x00000000000000000000000000000000000000b0")
        });
        if let Some(b) = &binding {
            args.extend(["--binding", b.to_str().expect("utf-8 path")]);
        }
        cluster.meshctl(0, &args);
    }
    for (seat, nonce) in [(2usize, 1000u64), (4, 1)] {
        let identity = node_identity(&cluster, seat, 0);
        let reg = identity
            .node
            .sign(
                PeerRecord {
                    tokenId: U256::from(seat),
                    instanceId: identity.instance_id().to_owned(),
                    wgPublicKey: identity.wg_public_key().as_bytes().into(),
                    endpoint: format!("{}:{WG_PORT}", lan_ip(4)),
                    gatewayUrl: String::new(),
                    nonce,
                },
                CHAIN_ID,
                other_address,
            )
            .expect("sign");
        let (sent, _, _) = send_registration(&lan.switch, other_address, &reg);
        assert!(
            sent.starts_with("no revert"),
            "registering on cluster B: {sent}"
        );
    }
    let other_logs = registration_logs(&lan.switch, other_address, None);
    assert_eq!(other_logs.len(), 2, "cluster B's records");
    let other_peers: Vec<Peer> = on_chain(&lan.switch, other_address, async |c| {
        let mut peers = Vec::new();
        for seat in [2u64, 4] {
            peers.push(c.getPeer(U256::from(seat)).call().await.expect("getPeer"));
        }
        peers
    });
    let before = view(&agents[0]);
    inject_in_polls(&proxy, "other cluster, polls", contract, other_logs.clone());
    inject_in_full_reads(
        &proxy,
        "other cluster, full reads",
        contract,
        other_peers,
        other_logs,
    );
    // anvil mines only on a transaction, and node 1 may have polled cluster B's last registration block
    // before the proxy began to lie: without a new block, no poll would ever read a range to inject into.
    lan.anvil_rpc("evm_mine", &[]);
    let warned = |agent: &Agent<'_>, what: &str| {
        agent.warnings().iter().filter(|w| w.contains(what)).count()
    };
    // A full read finds seat 4 listed without its InstanceBound event, which the proxy cannot forge: it
    // cannot verify that listing, so it keeps what it had and says so.
    let incomplete = "could not fetch every changed record's event";
    let incomplete_before = warned(&agents[0], incomplete);
    // The polls refuse both records, and full reads change nothing: as long as that takes on a busy
    // machine, never with the peers changed meanwhile.
    wait_until(
        "node 1 to refuse cluster B's records in its polls, and to fully read past them",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            assert_eq!(
                view(&agents[0]),
                before,
                "node 1's peers changed under cluster B's records"
            );
            warned(&agents[0], "refusing a record") >= 2
                && warned(&agents[0], incomplete) > incomplete_before
        },
        || agents[0].tail(),
    );
    std::thread::sleep(Duration::from_secs(3)); // more polls, and the full read's retry
    agents[0].assert_running();
    assert_eq!(
        view(&agents[0]),
        before,
        "node 1's peers changed under cluster B's records"
    );
    let refusals = warned(&agents[0], "refusing a record");
    assert_pings(&agents, 1, 2);
    steps.step(&format!(
        "cluster B's records served as this cluster's (seat 2 at nonce 1000, redirected to node 4; a seat 4): node 1 refused them ({refusals} warnings) and kept its peers"
    ));

    // Seat 3 is revoked; then the proxy replays its last registration.
    let seat3_logs = registration_logs(&lan.switch, contract, Some(3));
    let seat3_peer = on_chain(&lan.switch, contract, async |c| {
        c.getPeer(U256::from(3)).call().await.expect("getPeer(3)")
    });
    cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    let key3 = keys[2];
    wait_until(
        "node 1 to drop the revoked seat 3",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || agents[0].peer(3).is_none() && !agents[0].wg_peer_keys().contains(&key3),
        || agents[0].tail(),
    );
    let last = seat3_logs.last().cloned().expect("seat 3's registration");
    inject_in_polls(&proxy, "replay seat 3, polls", contract, vec![last.clone()]);
    inject_in_full_reads(
        &proxy,
        "replay seat 3, full reads",
        contract,
        vec![seat3_peer],
        vec![last],
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        agents[0].peer(3).is_none(),
        "the revoked seat came back:\n{}",
        agents[0].tail()
    );
    assert!(
        !agents[0].wg_peer_keys().contains(&key3),
        "seat 3's key is back on node 1's interface"
    );
    steps.step("seat 3 revoked; its last registration replayed in polls and full reads: node 1 keeps it out");

    // An outage, then full reads refused for good; seat 4 joins meanwhile.
    proxy.fail_for("outage", Duration::from_secs(4), |_: &Request<'_>| true);
    proxy.fail("no full reads", |r| r.calls(getPeersPageCall::SELECTOR));
    cluster.mint(4);
    agents.push(Agent::builder(&cluster).start(4));
    agents[3].wait_ready(60);
    let key4 = agents[3].key();
    assert_eq!(cluster.onchain_key(4), Some(key4));
    // Every full read is refused, so node 1 can only learn of seat 4 by events; waiting for a refused one too
    // shows that it tried (its retries back off, so the first may come after seat 4 is seen).
    wait_until(
        "node 1 to follow seat 4's join by events, and to have been refused a full read",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || agents[0].sees_healthy(4, &key4) && proxy.hits("no full reads") > 0,
        || format!("{}\n{}", agents[0].tail(), agents[3].tail()),
    );
    assert!(
        proxy.hits("outage") > 0 && proxy.hits("no full reads") > 0,
        "refused: {} in the outage, {} full reads\n{}",
        proxy.hits("outage"),
        proxy.hits("no full reads"),
        agents[0].tail()
    );
    agents[0].assert_running();
    steps.step(&format!(
        "every request refused for 4 s ({} refused), then every full read ({} so far): node 1 followed seat 4's join by events",
        proxy.hits("outage"),
        proxy.hits("no full reads")
    ));

    let (seats, wg_keys) = view(&agents[0]);
    let expected: Vec<(u64, Option<Key>)> = [2u64, 4]
        .iter()
        .map(|&t| (t, cluster.onchain_key(t)))
        .collect();
    assert_eq!(
        seats.iter().map(|(t, k, _)| (*t, *k)).collect::<Vec<_>>(),
        expected,
        "node 1's peers are exactly the chain's"
    );
    let endpoint2 = seats
        .iter()
        .find(|(t, ..)| *t == 2)
        .and_then(|(_, _, e)| e.clone());
    assert_eq!(
        endpoint2,
        Some(format!("{}:{WG_PORT}", lan_ip(2))),
        "seat 2 was not redirected"
    );
    assert_eq!(
        wg_keys,
        [cluster.onchain_key(2), cluster.onchain_key(4)]
            .into_iter()
            .flatten()
            .collect::<BTreeSet<_>>(),
        "node 1's interface holds exactly the chain's keys"
    );
    assert_pings(&agents, 1, 2);
    assert_pings(&agents, 1, 4);
    steps.step("node 1's peers and interface are exactly the chain's; it reaches nodes 2 and 4");

    for a in &mut agents {
        a.stop();
    }
    // Node 1 warned of every refusal, and node 3 of its revocation; the others had nothing to warn of.
    let honest: Vec<Agent<'_>> = agents
        .into_iter()
        .filter(|a| a.index == 2 || a.index == 4)
        .collect();
    assert_no_warnings(&honest);
}
