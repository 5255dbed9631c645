//! Reads that one provider cannot bend: the follower reads through three RPC proxies in front of one anvil,
//! one of which lies in each way a provider can — it hides a revocation, replays a seat's `InstanceBound`
//! (which would drop the seat's record), says the cluster's image is not allowed, and claims every block
//! holds the cluster's logs. With two honest providers of three, nothing the follower believes changes, and
//! the liar is named in the report. With two providers, one lying, the view stays where both last agreed.
//! With the liar alone, its lies are believed, as before there was a quorum, and the view says it is
//! unverified.

use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::Provider as _;
use alloy::rpc::types::Filter;
use alloy::sol_types::{SolCall, SolEvent};
use mesh_chain::contract::{DstackClusterAppAuth, DstackClusterNFT};
use mesh_chain::follow::{Anchors, Follower};
use mesh_chain::rpc::Rpcs;
use netns_tests::in_process::chain::{anvil, deploy_cluster};
use netns_tests::in_process::node::{SimulatedInstance, image};
use netns_tests::in_process::rpc_proxy::{RpcProxy, bloom_claims_every_log, logs_mut};

use super::{CONFIG, join, mine, reader, send, two_seats};

/// Makes `proxy` lie in every way at once: about seat 2's revocation (its logs dropped), seat 1's binding
/// (its `InstanceBound` replayed in every range of blocks), the allowlists (nothing allowed), and the blocks'
/// blooms (every block claims the cluster's logs, so that the logs are asked for).
fn lie(proxy: &RpcProxy, bound_1: serde_json::Value) {
    let seat_2 = format!("0x{:064x}", 2);
    proxy.rewrite("hide seat 2's revocation", move |req, response| {
        if req.method == "eth_getLogs"
            && let Some(logs) = logs_mut(response)
        {
            logs.retain(|l| l["topics"].get(1).and_then(|t| t.as_str()) != Some(seat_2.as_str()));
        }
    });
    proxy.rewrite("replay seat 1's binding", move |req, response| {
        if req.method == "eth_getLogs"
            && !req.gets_one_seats_logs()
            && let Some(logs) = logs_mut(response)
        {
            let mut log = bound_1.clone();
            log["blockNumber"] = req.params[0]["toBlock"].clone();
            logs.push(log);
        }
    });
    proxy.rewrite("nothing allowed", |req, response| {
        if req.calls(DstackClusterAppAuth::isComposeHashAllowedCall::SELECTOR)
            || req.calls(DstackClusterAppAuth::isOsAllowedCall::SELECTOR)
        {
            response["result"] = format!("0x{:064x}", 0).into();
        }
    });
    proxy.rewrite("blooms", bloom_claims_every_log);
}

/// Seat 1's `InstanceBound` log, as anvil has it.
async fn bound_log(anvil_url: &str, contract: alloy::primitives::Address) -> serde_json::Value {
    let filter = Filter::new()
        .address(contract)
        .event_signature(DstackClusterNFT::InstanceBound::SIGNATURE_HASH)
        .topic1(U256::from(1))
        .from_block(0);
    let logs = reader(anvil_url).get_logs(&filter).await.unwrap();
    serde_json::to_value(&logs[0]).unwrap()
}

/// A follower through `rpcs`.
async fn follow(rpcs: &Rpcs, contract: alloy::primitives::Address) -> Follower {
    Follower::start(
        rpcs.reader().clone(),
        contract,
        CONFIG,
        None,
        &Anchors::default(),
    )
    .await
    .unwrap()
}

fn rpcs(proxies: &[&RpcProxy]) -> Rpcs {
    Rpcs::new(
        proxies.iter().map(|p| p.url().parse().unwrap()).collect(),
        None,
    )
    .unwrap()
}

/// Waits (bounded) for the report to name provider `i` as answering otherwise: an answer that came after the
/// quorum's is heard out in the background.
async fn until_dissenting(rpcs: &Rpcs, i: usize) -> mesh_chain::quorum::QuorumReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = rpcs.watch().report();
        if report.providers[i].dissenting || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_lying_provider_of_three_changes_nothing_and_is_named() {
    let (anvil, _a, _b, c) = two_seats().await;
    let honest = [
        RpcProxy::start(anvil.endpoint().as_str()),
        RpcProxy::start(anvil.endpoint().as_str()),
    ];
    let liar = RpcProxy::start(anvil.endpoint().as_str());
    lie(
        &liar,
        bound_log(anvil.endpoint().as_str(), *c.address()).await,
    );
    let rpcs = rpcs(&[&honest[0], &liar, &honest[1]]);
    let mut f = follow(&rpcs, *c.address()).await;
    assert_eq!(f.view().records.keys().copied().collect::<Vec<_>>(), [1, 2]);

    let (compose, os) = image();
    assert_eq!(
        f.allowlisted(compose, os).await.unwrap(),
        (true, true),
        "the liar's 'not allowed' is outvoted"
    );
    send(c.revoke(U256::from(2))).await;
    f.poll(Instant::now()).await.unwrap();
    assert_eq!(
        f.view().records.keys().copied().collect::<Vec<_>>(),
        [1],
        "the revocation the liar hid is seen, and seat 1's record stays despite its replayed binding"
    );
    mine(&anvil).await;
    f.poll(Instant::now()).await.unwrap();
    f.full_read().await.unwrap();
    assert_eq!(f.view().records.keys().copied().collect::<Vec<_>>(), [1]);

    let report = until_dissenting(&rpcs, 1).await;
    assert!(report.verified() && report.quorum == 2, "{report:?}");
    let liar_report = &report.providers[1];
    assert!(
        liar_report.dissenting && liar_report.dissented > 0,
        "{report:?}"
    );
    assert_eq!(
        liar_report.url,
        liar.url().trim_end_matches('/').to_owned() + "/",
        "{report:?}"
    );
    for i in [0, 2] {
        let p = &report.providers[i];
        assert!(
            p.agreed > 0 && p.dissented == 0 && !p.dissenting,
            "{report:?}"
        );
    }
    assert_eq!(report.splits, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_providers_one_lying_the_view_stays_where_both_last_agreed() {
    let (anvil, _a, _b, c) = two_seats().await;
    let honest = RpcProxy::start(anvil.endpoint().as_str());
    let liar = RpcProxy::start(anvil.endpoint().as_str());
    let rpcs = rpcs(&[&honest, &liar]);
    let mut f = follow(&rpcs, *c.address()).await;
    lie(
        &liar,
        bound_log(anvil.endpoint().as_str(), *c.address()).await,
    );

    send(c.revoke(U256::from(2))).await;
    let err = f.poll(Instant::now()).await.unwrap_err().to_string();
    assert!(err.contains("the RPCs disagree on"), "{err}");
    assert_eq!(
        f.view().records.keys().copied().collect::<Vec<_>>(),
        [1, 2],
        "neither side is followed"
    );
    let report = rpcs.watch().report();
    assert!(
        report.splits > 0 && report.last_split.is_some(),
        "{report:?}"
    );

    for rule in [
        "hide seat 2's revocation",
        "replay seat 1's binding",
        "nothing allowed",
        "blooms",
    ] {
        liar.remove(rule);
    }
    f.poll(Instant::now()).await.unwrap();
    assert_eq!(
        f.view().records.keys().copied().collect::<Vec<_>>(),
        [1],
        "once both agree again, the revocation is seen"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_liar_alone_is_believed_and_the_view_says_it_is_unverified() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let liar = RpcProxy::start(anvil.endpoint().as_str());
    lie(
        &liar,
        bound_log(anvil.endpoint().as_str(), *c.address()).await,
    );
    let rpcs = rpcs(&[&liar]);
    let mut f = follow(&rpcs, *c.address()).await;
    let (compose, os) = image();
    assert_eq!(f.allowlisted(compose, os).await.unwrap(), (false, false));
    let report = rpcs.watch().report();
    assert!(!report.verified(), "{report:?}");
    assert_eq!(report.quorum, 1);
}

/// The quorum's cost: with three providers, every read goes to each of them (a head may be taken before the
/// third is asked), so a block costs at most three times what it costs with one provider.
#[tokio::test(flavor = "multi_thread")]
async fn each_provider_is_asked_what_one_provider_would_be() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let proxies = [
        RpcProxy::start(anvil.endpoint().as_str()),
        RpcProxy::start(anvil.endpoint().as_str()),
        RpcProxy::start(anvil.endpoint().as_str()),
    ];
    let rpcs = rpcs(&[&proxies[0], &proxies[1], &proxies[2]]);
    let mut f = follow(&rpcs, *c.address()).await;
    // The first read's late answers land in the background: count from after they did.
    let before = settled_counts(&proxies).await;
    let counted = f.requests;
    for _ in 0..10 {
        mine(&anvil).await;
        f.poll(Instant::now()).await.unwrap();
    }
    let follower = f.requests - counted;
    let asked: Vec<u64> = settled_counts(&proxies)
        .await
        .into_iter()
        .zip(before)
        .map(|(after, before)| (after - before) as u64)
        .collect();
    // A head is taken once two providers gave theirs: the third's request may be cancelled before it is
    // sent. Everything else goes to all three.
    for a in &asked {
        assert!(
            *a <= follower && *a >= follower - 10,
            "{asked:?} of {follower}"
        );
    }
    println!(
        "quorum of 3: {follower} follower requests for 10 empty blocks, {} per block; the providers were asked {asked:?}, {} per block in all",
        follower as f64 / 10.0,
        asked.iter().sum::<u64>() as f64 / 10.0
    );
}

/// The requests each proxy has seen, once no more came in for a while (late answers are heard out in the
/// background after a read returns), or after two seconds at most.
async fn settled_counts(proxies: &[RpcProxy]) -> Vec<usize> {
    let count = || -> Vec<usize> {
        proxies
            .iter()
            .map(|p| p.requests().values().sum())
            .collect()
    };
    let mut last = count();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}
