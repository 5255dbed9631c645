//! What a node does on the chain through three providers when one of them fails: down, hanging, or taking
//! transactions and dropping them. Every write (a seat request, a registration, a ballot) and the reads it
//! rests on go through the one handle the agent builds, so one provider changes nothing and is named.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`:
//! `cargo test -p netns-tests --test integration chain_providers:: -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{U256, utils::parse_ether};
use alloy::providers::Provider as _;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall as _;
use mesh_chain::binding::{Requested, binding_requests};
use mesh_chain::cluster::Cluster;
use mesh_chain::contract::DstackClusterElection::electLeaderCall;
use mesh_chain::contract::DstackClusterNFT::{self, lastBindingRequestBlockCall};
use mesh_chain::election::{Ballot, ElectionError};
use mesh_chain::error::ChainError;
use mesh_chain::quorum::QuorumReport;
use mesh_chain::registration::{Desired, Outcome};
use mesh_chain::rpc::Rpcs;
use netns_tests::in_process::chain::{TestCluster, anvil, deploy_cluster, mined, mint, wallet};
use netns_tests::in_process::node::SimulatedInstance;
use netns_tests::in_process::rpc_proxy::RpcProxy;

/// A cluster on a fresh chain whose seat 1 is bound to `node`, three proxies in front of its anvil, and the
/// cluster through them as the agent makes it.
async fn through_three(
    anvil: &AnvilInstance,
    node: &SimulatedInstance,
) -> (TestCluster, [RpcProxy; 3], Cluster) {
    let c = deploy_cluster(anvil, node.kms_root).await;
    let url = anvil.endpoint();
    let proxies = [
        RpcProxy::start(&url),
        RpcProxy::start(&url),
        RpcProxy::start(&url),
    ];
    let urls = proxies.iter().map(|p| p.url().parse().unwrap()).collect();
    let cluster = Cluster::new(Rpcs::new(urls, None).unwrap(), *c.address());
    (c, proxies, cluster)
}

fn tx_key(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    anvil.keys()[i].clone().into()
}

fn desired(identity: &p2p_agent::node::NodeIdentity) -> Desired {
    Desired {
        wg_public_key: Some(identity.wg_public_key()),
        endpoint: "192.0.2.1:51820".into(),
        gateway_url: String::new(),
    }
}

fn report(cluster: &Cluster) -> QuorumReport {
    cluster.rpcs().watch().report()
}

/// With the first provider down, a seatless node asks for its seat, registers once bound, and elects a
/// leader, each within seconds; the status names the provider as not answering, the others as agreeing.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_first_provider_down_a_node_asks_for_its_seat_registers_and_elects() {
    let anvil = anvil();
    let node = SimulatedInstance::start("node-1").await;
    let (c, proxies, cluster) = through_three(&anvil, &node).await;
    proxies[0].set_down(true);
    let identity = node.identity(0).await;
    let owner = anvil.addresses()[0];
    let chain_id = anvil.chain_id();
    let key = tx_key(&anvil, 1);

    let began = Instant::now();
    let binding = node.binding(owner, chain_id, *c.address()).await;
    let asked = cluster
        .request_binding(&identity.node, &binding, Some(&key))
        .await
        .expect("the request goes through the two providers up");
    assert!(matches!(asked, Requested::Sent { .. }), "{asked:?}");
    assert_eq!(
        cluster
            .requested_holder(identity.node.address())
            .await
            .unwrap(),
        Some(owner),
        "the request read back through the quorum"
    );

    mined(c.mintNodeAccess(owner, mesh_chain::contract::binding_arg(&binding))).await;
    let pins = cluster.contract_pins().await.unwrap();
    let registered = cluster
        .register(&identity.node, &desired(&identity), Some(&key), &pins)
        .await
        .expect("the registration goes through");
    assert!(
        matches!(registered, Outcome::Registered { .. }),
        "{registered:?}"
    );

    // The seat's holder is account 0, which the transaction key is not: the node's own address pays.
    let fund = alloy::rpc::types::TransactionRequest::default()
        .to(identity.node.address())
        .value(parse_ether("1").unwrap());
    netns_tests::in_process::chain::mined_tx(&wallet(&anvil, 2), fund).await;
    cluster
        .cast(&identity.node, None, 1, Ballot::Elect)
        .await
        .expect("the election goes through");
    let leader = mesh_chain::contract::DstackClusterElection::new(
        cluster.election().await.unwrap(),
        cluster.reader(),
    )
    .leaderTokenId()
    .call()
    .await
    .unwrap();
    assert_eq!(leader, U256::from(1));
    println!(
        "first provider down: request, registration and election in {:.1?}",
        began.elapsed()
    );

    let r = report(&cluster);
    assert!(r.providers[0].failing.is_some(), "{r:?}");
    assert!(
        r.providers[1..]
            .iter()
            .all(|p| p.failing.is_none() && p.agreed > 0),
        "{r:?}"
    );

    // Back up: named as answering again at its next request (heard out after the quorum's answer).
    proxies[0].set_down(false);
    let back = Instant::now();
    loop {
        cluster.reader().get_block_number().await.unwrap();
        let r = report(&cluster);
        if r.providers.iter().all(|p| p.failing.is_none()) {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One provider takes transactions and drops them, another holds every request 30 s: a registration still
/// lands within seconds, and the one that hangs is named as not answering within 3 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_drops_transactions_and_one_that_hangs_hold_nothing_up() {
    let anvil = anvil();
    let node = SimulatedInstance::start("node-1").await;
    let (c, proxies, cluster) = through_three(&anvil, &node).await;
    mint(&c, anvil.addresses()[1], Some(&node)).await;
    let identity = node.identity(0).await;
    let pins = cluster.contract_pins().await.unwrap();
    proxies[0].set_drop_transactions(true);
    proxies[1].set_hang(Some(Duration::from_secs(30)));

    let began = Instant::now();
    let registered = cluster
        .register(
            &identity.node,
            &desired(&identity),
            Some(&tx_key(&anvil, 1)),
            &pins,
        )
        .await
        .expect("the third provider carries the registration");
    let took = began.elapsed();
    assert!(
        matches!(registered, Outcome::Registered { .. }),
        "{registered:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        proxies[0].dropped_transactions() >= 1,
        "the dropper took it"
    );
    println!("one provider dropping transactions, one hanging 30 s: registered in {took:.1?}");

    let named = Instant::now();
    loop {
        let r = report(&cluster);
        if r.providers[1].failing.as_deref() == Some("no answer within 3 s") {
            break;
        }
        assert!(named.elapsed() < Duration::from_secs(5), "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxies[1].set_hang(None);
}

/// A ballot that mines but fails (here, out of gas) is called again to say why, at a head a quorum has
/// reached: a provider a block behind, which answers the call at `latest` as it was before, is not named
/// as dissenting for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transaction_is_called_again_at_a_head_the_quorum_reached_not_at_latest() {
    let anvil = anvil();
    let node = SimulatedInstance::start("node-1").await;
    let (c, proxies, cluster) = through_three(&anvil, &node).await;
    mint(&c, anvil.addresses()[1], Some(&node)).await;
    let identity = node.identity(0).await;
    let key = tx_key(&anvil, 1);
    let pins = cluster.contract_pins().await.unwrap();
    let registered = cluster
        .register(&identity.node, &desired(&identity), Some(&key), &pins)
        .await
        .expect("registered");
    assert!(matches!(registered, Outcome::Registered { .. }));

    // Every provider underestimates the ballot, so it runs out of gas once mined.
    for p in &proxies {
        p.rewrite("underestimate", |req, response| {
            if req.method == "eth_estimateGas" {
                response["result"] = "0x1".into();
            }
        });
    }
    // The third answers `latest` as a provider a block behind the others would: the ballot reverts there.
    let called = Arc::new(AtomicUsize::new(0));
    let seen = called.clone();
    proxies[2].rewrite("a block behind", move |req, response| {
        if !req.calls(electLeaderCall::SELECTOR) {
            return;
        }
        seen.fetch_add(1, Ordering::Relaxed);
        if req
            .params
            .get(1)
            .is_none_or(|at| at == "latest" || at == "pending")
        {
            *response = serde_json::json!({
                "jsonrpc": "2.0",
                "id": response["id"].clone(),
                "error": {"code": 3, "message": "execution reverted", "data": "0x"},
            });
        }
    });

    // The first answers each request a moment late, so that the quorum waits for the third's answer and
    // weighs it before the ballot returns, not after the test has looked.
    proxies[0].set_hang(Some(Duration::from_secs(1)));
    let failed = cluster
        .cast(&identity.node, Some(&key), 1, Ballot::Elect)
        .await
        .expect_err("a ballot given too little gas fails once mined");
    assert!(
        matches!(failed, ElectionError::Chain(ChainError::TxFailed { .. })),
        "{failed}"
    );
    assert!(
        called.load(Ordering::Relaxed) >= 1,
        "the failed ballot was called again to say why"
    );
    let r = report(&cluster);
    assert!(
        r.providers.iter().all(|p| p.dissented == 0),
        "no provider is named for answering a head the others had passed: {r:?}"
    );
}

/// A node's seat request is listed (`meshctl requests`, `bind --instance`) from a head a quorum has reached: a
/// provider a block behind, which answers `lastBindingRequestBlock` at `latest` as it was before the request,
/// is not named as dissenting, and the request is found.
#[tokio::test(flavor = "multi_thread")]
async fn seat_requests_are_listed_at_a_head_the_quorum_reached_not_at_latest() {
    let anvil = anvil();
    let node = SimulatedInstance::start("node-1").await;
    let (c, proxies, cluster) = through_three(&anvil, &node).await;
    let identity = node.identity(0).await;
    let binding = node
        .binding(anvil.addresses()[0], anvil.chain_id(), *c.address())
        .await;
    let asked = cluster
        .request_binding(&identity.node, &binding, Some(&tx_key(&anvil, 1)))
        .await
        .expect("the request is sent");
    assert!(matches!(asked, Requested::Sent { .. }), "{asked:?}");

    // The third answers `latest` as a provider a block behind the request would: no request yet.
    let asked_latest = Arc::new(AtomicUsize::new(0));
    let seen = asked_latest.clone();
    proxies[2].rewrite("a block behind", move |req, response| {
        if req.calls(lastBindingRequestBlockCall::SELECTOR)
            && req
                .params
                .get(1)
                .is_none_or(|at| at == "latest" || at == "pending")
        {
            seen.fetch_add(1, Ordering::Relaxed);
            response["result"] = format!("0x{}", "0".repeat(64)).into();
        }
    });
    // The first answers a moment late, so that the third's answer is among those the quorum weighs.
    proxies[0].set_hang(Some(Duration::from_secs(1)));
    let at = cluster.rpcs().present().await.expect("a head");
    let through_quorum = DstackClusterNFT::new(*c.address(), cluster.reader().clone());
    let (found, unreadable) = binding_requests(&through_quorum, at, 16)
        .await
        .expect("the requests are read");
    assert!(unreadable.is_empty(), "{unreadable:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].binding.instance_id, node.instance_id);
    assert_eq!(
        asked_latest.load(Ordering::Relaxed),
        0,
        "nothing was read at `latest`"
    );
    let r = report(&cluster);
    assert!(
        r.providers.iter().all(|p| p.dissented == 0),
        "no provider is named for answering a head the others had passed: {r:?}"
    );
}
