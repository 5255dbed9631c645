//! Following the contract on a real anvil: the full read, events per block, removals, local re-verification
//! of every record, an RPC load per block that does not grow with the number of peers, and an RPC that
//! lies: it replays old records, disagrees with the pins, or fails reads for a while. And new heads by
//! WebSocket subscription: read at once, a drop that falls back to polling, and a reorg.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`: `cargo test -p netns-tests --test integration chain_follow:: -- --nocapture`.

use std::time::{Duration, Instant};

use alloy::{
    node_bindings::AnvilInstance,
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::Filter,
    sol_types::{SolCall, SolEvent},
};
use mesh_chain::{
    contract::DstackClusterNFT,
    error::ChainError,
    follow::{Anchors, FollowConfig, Follower},
    heads::{Wake, Wakeups},
    membership::{self, InvalidRecord, Own},
};
use netns_tests::{
    in_process::chain::{TestCluster, anvil, deploy_cluster, mined_tx, mint, wallet},
    in_process::node::{APP_ID, SimulatedInstance},
    in_process::rpc_proxy::{RpcProxy, bloom_claims_every_log, logs_mut},
    in_process::tcp_relay::TcpRelay,
};

type Contract = TestCluster;

mod heads;
mod quorum;

const CONFIG: FollowConfig = FollowConfig {
    confirmations: 0,
    full_read_every: Duration::from_secs(60),
};

/// Mints a seat for `node` and registers its record with `endpoint`.
async fn join(anvil: &AnvilInstance, c: &Contract, node: &SimulatedInstance, endpoint: &str) {
    mint(c, anvil.addresses()[1], Some(node)).await;
    node.register(anvil, *c.address(), endpoint, "", 2).await;
}

/// Two seats on a fresh anvil: instances a and b joined as seats 1 and 2, at 192.0.2.1 and .2.
async fn two_seats() -> (
    AnvilInstance,
    SimulatedInstance,
    SimulatedInstance,
    Contract,
) {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    join(&anvil, &c, &b, "192.0.2.2:51820").await;
    (anvil, a, b, c)
}

fn reader(url: &str) -> DynProvider {
    ProviderBuilder::new()
        .connect_http(url.parse().unwrap())
        .erased()
}

async fn follow(url: &str, contract: Address) -> Follower {
    Follower::start(reader(url), contract, CONFIG, None, &Anchors::default())
        .await
        .unwrap()
}

fn nobody() -> Own<'static> {
    Own {
        token_id: None,
        instance_id: "",
        wg_public_key: None,
    }
}

async fn send(call: alloy::contract::CallBuilder<&DynProvider, impl alloy::contract::CallDecoder>) {
    call.send().await.unwrap().get_receipt().await.unwrap();
}

/// Once the follower has been asked about the allowlists, a change of one (an image allowed or disallowed)
/// is reported at the tick that reads its block, so that the agent judges the seats again at once; a block
/// without one reports none.
#[tokio::test(flavor = "multi_thread")]
async fn an_allowlist_change_is_reported_at_its_block() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let (compose, os) = netns_tests::in_process::node::image();
    assert_eq!(f.allowlisted(compose, os).await.unwrap(), (true, true));
    let auth = mesh_chain::contract::DstackClusterAppAuth::new(
        c.appAuth().call().await.unwrap(),
        c.provider().clone(),
    );

    mine(&anvil).await;
    let quiet = f.tick(Instant::now()).await.unwrap();
    assert!(
        !quiet.allowlists_changed,
        "a block with no allowlist change"
    );

    send(auth.setOsMeasurement(os, false)).await;
    let tick = f.tick(Instant::now()).await.unwrap();
    assert!(tick.allowlists_changed, "the OS image disallowed");
    assert_eq!(f.allowlisted(compose, os).await.unwrap(), (true, false));

    send(auth.setComposeHash(B256::repeat_byte(9), true)).await;
    assert!(
        f.tick(Instant::now()).await.unwrap().allowlists_changed,
        "another compose hash allowed"
    );
    assert!(!f.tick(Instant::now()).await.unwrap().allowlists_changed);
}

/// The TCB policy is read from the app auth (none until the owner sets one), and a change of it or of its
/// advisories is reported at its block, as an allowlist change is, so that the agent judges the seats again.
#[tokio::test(flavor = "multi_thread")]
async fn the_tcb_policy_is_read_and_its_changes_reported_at_their_block() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    assert_eq!(f.tcb_policy().await.unwrap(), None, "no policy set");
    let auth = mesh_chain::contract::DstackClusterAppAuth::new(
        c.appAuth().call().await.unwrap(),
        c.provider().clone(),
    );

    send(auth.setTcbPolicy(0b11, 18, 600, 3600)).await;
    assert!(
        f.tick(Instant::now()).await.unwrap().allowlists_changed,
        "the policy set"
    );
    send(auth.setTcbAdvisory("INTEL-SA-00837".into(), true)).await;
    assert!(
        f.tick(Instant::now()).await.unwrap().allowlists_changed,
        "an advisory accepted"
    );
    assert_eq!(
        f.tcb_policy().await.unwrap(),
        Some(mesh_chain::follow::TcbPolicyRead {
            statuses: 0b11,
            min_evaluation_data_number: 18,
            grace_secs: 600,
            drop_secs: 3600,
            advisories: vec!["INTEL-SA-00837".into()],
        })
    );
    mine(&anvil).await;
    assert!(!f.tick(Instant::now()).await.unwrap().allowlists_changed);
}

/// The grants between seats are read from the app auth in one call (none in force until the owner sets
/// them), and a change of them is reported at its block, so that the agent reads them again there.
#[tokio::test(flavor = "multi_thread")]
async fn the_grants_are_read_and_their_changes_reported_at_their_block() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let none = f.grants().await.unwrap();
    assert!(
        !none.rules.enforced && none.rules.grants.is_empty(),
        "{none:?}"
    );
    let auth = mesh_chain::contract::DstackClusterAppAuth::new(
        c.appAuth().call().await.unwrap(),
        c.provider().clone(),
    );
    send(auth.setSeatTags(alloy::primitives::U256::from(1), 0b01)).await;
    assert!(
        f.tick(Instant::now()).await.unwrap().allowlists_changed,
        "a seat tagged"
    );
    let grant = mesh_chain::contract::DstackClusterGrants::Grant {
        from: 0b10,
        to: 0b01,
        protocol: 6,
        firstPort: 5432,
        lastPort: 5432,
    };
    send(auth.setGrants(vec![grant], true)).await;
    assert!(
        f.tick(Instant::now()).await.unwrap().allowlists_changed,
        "the grants set"
    );
    let read = f.grants().await.unwrap();
    assert!(read.rules.enforced);
    assert_eq!(read.rules.version, 2);
    assert_eq!(read.tags_of(1, None), 0b01);
    assert_eq!(
        read.rules
            .decide(
                0b10,
                read.tags_of(1, None),
                mesh_policy::Protocol::Tcp,
                5432
            )
            .why,
        mesh_policy::Why::Grant(0)
    );
    mine(&anvil).await;
    assert!(!f.tick(Instant::now()).await.unwrap().allowlists_changed);
}

/// Reads of the present are made at the newest confirmed head, as the RPC gives it now: after the chain went
/// back (here anvil reverts to a snapshot five blocks lower), the allowlists are read at the lower head, not
/// at a height the chain no longer has.
#[tokio::test(flavor = "multi_thread")]
async fn the_present_is_read_at_the_head_even_after_the_chain_went_back() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let p = reader(anvil.endpoint().as_str());
    let snapshot: U256 = p.raw_request("evm_snapshot".into(), ()).await.unwrap();
    for _ in 0..5 {
        mine(&anvil).await;
    }
    f.poll(Instant::now()).await.unwrap();
    let _: bool = p
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .unwrap();
    let _ = f.tick(Instant::now()).await;
    let (compose, os) = netns_tests::in_process::node::image();
    assert_eq!(
        f.allowlisted(compose, os).await.unwrap(),
        (true, true),
        "read at the head the chain has now"
    );
}

/// The follower sees joins and revocations block by block, and every record it keeps verifies locally.
#[tokio::test(flavor = "multi_thread")]
async fn follows_joins_and_revocations_and_verifies_every_record() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;

    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    assert_eq!(f.view().records.len(), 1);
    let pins = &f.view().pins;
    assert_eq!(
        (pins.kms_root, pins.app_ids.clone(), pins.chain_id),
        (a.kms_root, vec![APP_ID.parse().unwrap()], anvil.chain_id()),
        "pinned from the RPC and the contract"
    );
    assert_eq!(pins.prefix.to_string(), "10.0.1.0/24");

    join(&anvil, &c, &b, "192.0.2.2:51820").await;
    assert!(
        f.poll(Instant::now()).await.unwrap(),
        "the join is a change"
    );
    assert!(
        !f.poll(Instant::now()).await.unwrap(),
        "nothing new, no change"
    );
    let v = f.view();
    let own = Own {
        token_id: Some(1),
        instance_id: &a.instance_id,
        wg_public_key: None,
    };
    let (members, invalid) = membership::members(&v.records, own, v.prefix());
    assert!(invalid.is_empty(), "{invalid:?}");
    assert_eq!(members.len(), 1, "itself excluded");
    assert_eq!(members[0].overlay_ip.to_string(), "10.0.1.2");
    assert_eq!(members[0].endpoint.unwrap().to_string(), "192.0.2.2:51820");

    send(c.revoke(U256::from(2))).await;
    assert!(
        f.poll(Instant::now()).await.unwrap(),
        "the revocation is a change"
    );
    assert_eq!(
        f.view().records.keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        f.view().high_water.get(&2),
        Some(&1),
        "the revoked seat's mark stays"
    );

    // A full read agrees with what the events built.
    let before = f.view().clone();
    let read = f.full_read().await.unwrap();
    assert!(!read.changed && read.complete, "{read:?}");
    assert_eq!(f.view().records, before.records);
}

/// Records that are believed but unusable are skipped with a reason; records that do not verify against
/// the pins are not believed at all.
#[tokio::test(flavor = "multi_thread")]
async fn records_failing_local_checks_are_skipped() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    join(&anvil, &c, &b, "node-b.example:51820").await; // the contract allows names; agents need an IP
    let f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let v = f.view();
    let (members, invalid) = membership::members(&v.records, nobody(), v.prefix());
    assert_eq!(members.len(), 1);
    assert_eq!(
        invalid,
        vec![InvalidRecord::Endpoint {
            token_id: 2,
            endpoint: "node-b.example:51820".into()
        }]
    );

    // A node that pins another KMS root (say, the RPC or the contract owner lied) believes nobody.
    let anchors = Anchors {
        flags: Some((Address::repeat_byte(0xee), v.pins.app_ids.clone())),
        repin: false,
    };
    let f = Follower::start(
        reader(anvil.endpoint().as_str()),
        *c.address(),
        CONFIG,
        None,
        &anchors,
    )
    .await
    .unwrap();
    assert!(f.view().records.is_empty());
    assert_eq!(f.rejected, 2, "both records refused");
    assert!(
        f.view().high_water.is_empty(),
        "unbelieved records raise no mark"
    );
}

/// The requests a poll makes for one new block are the same with 2 peers and with 6.
#[tokio::test(flavor = "multi_thread")]
async fn rpc_load_per_block_does_not_grow_with_peers() {
    let anvil = anvil();
    let nodes = [
        SimulatedInstance::start("p1").await,
        SimulatedInstance::start("p2").await,
        SimulatedInstance::start("p3").await,
        SimulatedInstance::start("p4").await,
        SimulatedInstance::start("p5").await,
        SimulatedInstance::start("p6").await,
    ];
    let c = deploy_cluster(&anvil, nodes[0].kms_root).await;
    for (i, n) in nodes.iter().take(2).enumerate() {
        join(&anvil, &c, n, &format!("192.0.2.{}:51820", i + 1)).await;
    }
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    let with_two = requests_for_one_block(&anvil, &mut f).await;
    for (i, n) in nodes.iter().enumerate().skip(2) {
        join(&anvil, &c, n, &format!("192.0.2.{}:51820", i + 1)).await;
    }
    f.poll(Instant::now()).await.unwrap();
    assert_eq!(f.view().records.len(), 6);
    let with_six = requests_for_one_block(&anvil, &mut f).await;
    assert_eq!(
        with_two, with_six,
        "requests per block: {with_two} with 2 peers, {with_six} with 6"
    );
    assert!(with_two <= 3, "{with_two} requests for one block");
}

/// Head polls are counted apart from what blocks cost, so the load per block can be read off the counters: a
/// poll with no new block is one request, a head poll; a poll that finds a block is one head poll and the
/// block's own requests.
#[tokio::test(flavor = "multi_thread")]
async fn head_polls_are_counted_apart_from_what_blocks_cost() {
    let anvil = anvil();
    let node = SimulatedInstance::start("h1").await;
    let c = deploy_cluster(&anvil, node.kms_root).await;
    join(&anvil, &c, &node, "192.0.2.1:51820").await;
    let mut f = follow(anvil.endpoint().as_str(), *c.address()).await;
    f.poll(Instant::now()).await.unwrap();
    let (requests, polls) = (f.requests, f.head_polls);
    for _ in 0..3 {
        f.poll(Instant::now()).await.unwrap();
    }
    assert_eq!(
        (f.requests - requests, f.head_polls - polls),
        (3, 3),
        "polls with no new block make head polls only"
    );
    let polls = f.head_polls;
    let block = requests_for_one_block(&anvil, &mut f).await;
    assert_eq!(f.head_polls - polls, 1, "one head poll found the block");
    assert!(
        block >= 2,
        "the block's own requests come beside its head poll: {block} in all"
    );
}

/// Ticks every 100 ms for `duration`; returns how many ticks reported a failed full read.
async fn tick_for(f: &mut Follower, duration: Duration) -> usize {
    let started = Instant::now();
    let mut errors = 0;
    while started.elapsed() < duration {
        errors += usize::from(
            f.tick(Instant::now())
                .await
                .unwrap()
                .full_read_error
                .is_some(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    errors
}

/// Mines one block with no cluster event and counts the requests the next poll makes.
async fn requests_for_one_block(anvil: &AnvilInstance, f: &mut Follower) -> u64 {
    let before = f.requests;
    let tx = alloy::rpc::types::TransactionRequest::default().to(anvil.addresses()[8]);
    mined_tx(&wallet(anvil, 9), tx).await;
    f.poll(Instant::now()).await.unwrap();
    f.requests - before
}

/// Seat `token`'s `PeerRegistered` logs as anvil serves them, oldest first.
async fn registration_logs(
    anvil: &AnvilInstance,
    c: &Contract,
    token: u64,
) -> Vec<serde_json::Value> {
    let filter = Filter::new()
        .address(*c.address())
        .event_signature(DstackClusterNFT::PeerRegistered::SIGNATURE_HASH)
        .topic1(U256::from(token))
        .from_block(0);
    reader(anvil.endpoint().as_str())
        .get_logs(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|l| serde_json::to_value(l).unwrap())
        .collect()
}

/// An RPC that replays a seat's old registration, in polls and in full reads, after the seat moved on and
/// after it was revoked, and across a restart from the state file: the old record never comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_lying_rpc_cannot_roll_a_seat_back() {
    let (anvil, _a, b, c) = two_seats().await;
    let old_peer = c.getPeer(U256::from(2)).call().await.unwrap();
    b.register(&anvil, *c.address(), "192.0.2.22:51820", "", 2)
        .await; // seat 2 moves: nonce 2
    let old_log = registration_logs(&anvil, &c, 2).await.remove(0);

    let proxy = RpcProxy::start(anvil.endpoint().as_str());
    let mut f = follow(proxy.url(), *c.address()).await;
    assert_eq!(f.view().records[&2].nonce, 2);

    // Polls: the old event, replayed in a later block.
    let replay = old_log.clone();
    proxy.rewrite("replay in polls", move |req, response| {
        if req.method == "eth_getLogs" && !req.gets_one_seats_logs() {
            let mut log = replay.clone();
            log["blockNumber"] = req.params[0]["toBlock"].clone();
            if let Some(logs) = logs_mut(response) {
                logs.push(log);
            }
        }
    });
    // Every block's bloom claims the cluster's logs: a bloom that says nothing of the cluster spares the
    // poll its eth_getLogs, and with it the replay.
    proxy.rewrite("blooms that let the replay in", bloom_claims_every_log);
    // Full reads: the old record listed as the seat's current one.
    let listed = old_peer.clone();
    proxy.rewrite("replay in full reads", move |req, response| {
        if !req.calls(DstackClusterNFT::getPeersPageCall::SELECTOR) {
            return;
        }
        let Some(hex) = response["result"].as_str() else {
            return;
        };
        let bytes = alloy::hex::decode(hex).unwrap();
        let mut page = DstackClusterNFT::getPeersPageCall::abi_decode_returns(&bytes).unwrap();
        page.page.retain(|p| p.tokenId != U256::from(2));
        page.page.push(listed.clone());
        let encoded = DstackClusterNFT::getPeersPageCall::abi_encode_returns(&page);
        response["result"] = format!("0x{}", alloy::hex::encode(encoded)).into();
    });

    mine(&anvil).await;
    f.poll(Instant::now()).await.unwrap();
    assert_eq!(f.view().records[&2].nonce, 2, "a replayed event");
    f.full_read().await.unwrap();
    assert_eq!(f.view().records[&2].nonce, 2, "a replayed listing");
    assert!(f.rejected >= 2, "{} rejections", f.rejected);

    send(c.revoke(U256::from(2))).await;
    f.poll(Instant::now()).await.unwrap();
    assert!(!f.view().records.contains_key(&2), "revoked");
    mine(&anvil).await;
    f.poll(Instant::now()).await.unwrap();
    f.full_read().await.unwrap();
    assert!(
        !f.view().records.contains_key(&2),
        "the revoked seat's old record stays out"
    );

    // A restart from the state file keeps the marks.
    let dir = tempfile::tempdir().unwrap();
    let keep = p2p_agent::cache::Keep {
        view: f.view(),
        allowlists: &[],
        tcb_below: &[],
        pace: None,
        grants: None,
    };
    p2p_agent::cache::save(dir.path(), keep).unwrap();
    let cached = p2p_agent::cache::load(dir.path()).unwrap().unwrap().view;
    let mut restarted = Follower::start(
        reader(proxy.url()),
        *c.address(),
        CONFIG,
        Some(cached),
        &Anchors::default(),
    )
    .await
    .unwrap();
    restarted.full_read().await.unwrap();
    mine(&anvil).await;
    restarted.poll(Instant::now()).await.unwrap();
    assert!(
        !restarted.view().records.contains_key(&2),
        "after a restart too"
    );
    assert!(
        restarted.view().records.contains_key(&1),
        "the honest seat stays"
    );
}

async fn mine(anvil: &AnvilInstance) {
    let p = reader(anvil.endpoint().as_str());
    let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
}

/// An RPC on another chain than the node pinned at its first start is refused with both values and the flag
/// that overrides; --repin takes the new values. (Which pins are checked, and how each refusal reads, is
/// tested on `mesh_chain::follow`'s pure check and against a mocked RPC.)
#[tokio::test(flavor = "multi_thread")]
async fn the_rpc_must_agree_with_the_pinned_chain_id_unless_repinned() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let c = deploy_cluster(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    let f = follow(anvil.endpoint().as_str(), *c.address()).await;

    let mut other_chain = f.view().clone();
    other_chain.pins.chain_id = 1;
    let url = anvil.endpoint();
    let start = async |cached, repin| {
        let anchors = Anchors { flags: None, repin };
        Follower::start(
            reader(url.as_str()),
            *c.address(),
            CONFIG,
            Some(cached),
            &anchors,
        )
        .await
    };
    let err = start(other_chain.clone(), false).await.err().unwrap();
    assert!(
        matches!(
            err,
            ChainError::PinMismatch {
                what: "chain id",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    for want in ["chain id 31337", "chain id 1 ", "--repin"] {
        assert!(text.contains(want), "{want:?} in {text}");
    }

    let repinned = start(other_chain, true).await.unwrap();
    assert_eq!(repinned.view().pins.chain_id, anvil.chain_id());
    assert_eq!(repinned.view().records.len(), 1);
}

/// While full reads fail (the record list, or one record's event), the follower backs off from them and
/// goes on polling: a join and a revocation made meanwhile arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_full_read_never_freezes_the_follower() {
    let anvil = anvil();
    let nodes = [
        SimulatedInstance::start("a").await,
        SimulatedInstance::start("b").await,
        SimulatedInstance::start("c").await,
    ];
    let c = deploy_cluster(&anvil, nodes[0].kms_root).await;
    join(&anvil, &c, &nodes[0], "192.0.2.1:51820").await;
    join(&anvil, &c, &nodes[1], "192.0.2.2:51820").await;
    let proxy = RpcProxy::start(anvil.endpoint().as_str());
    let config = FollowConfig {
        confirmations: 0,
        full_read_every: Duration::from_secs(1),
    };
    let mut f = Follower::start(
        reader(proxy.url()),
        *c.address(),
        config,
        None,
        &Anchors::default(),
    )
    .await
    .unwrap();

    // The record list fails: full reads are retried with backoff, not on every tick.
    proxy.fail("getPeersPage", |r| {
        r.calls(DstackClusterNFT::getPeersPageCall::SELECTOR)
    });
    let errors = tick_for(&mut f, Duration::from_secs(4)).await;
    assert!(
        (1..=4).contains(&errors),
        "{errors} failed full reads in 4 s with ticks every 100 ms"
    );
    assert!(proxy.hits("getPeersPage") >= 1);
    proxy.remove("getPeersPage");

    // One record's event fails: a node restarted from its cache, whose first full read needs seat 2's new
    // event, still follows seat 2's move by events.
    let cached = f.view().clone();
    nodes[1]
        .register(&anvil, *c.address(), "192.0.2.22:51820", "", 2)
        .await;
    proxy.fail("one seat's logs", |r| r.gets_one_seats_logs());
    let mut restarted = Follower::start(
        reader(proxy.url()),
        *c.address(),
        config,
        Some(cached),
        &Anchors::default(),
    )
    .await
    .unwrap();
    let errors = tick_for(&mut restarted, Duration::from_secs(2)).await;
    assert!(
        errors >= 1 && proxy.hits("one seat's logs") >= 1,
        "the full read was incomplete"
    );
    assert_eq!(
        restarted.view().records[&2].endpoint,
        "192.0.2.22:51820",
        "followed by events"
    );
    proxy.remove("one seat's logs");

    // Now with every full read failing for good: a join and a revocation still arrive by events.
    proxy.fail("all full reads", |r| {
        r.calls(DstackClusterNFT::getPeersPageCall::SELECTOR)
    });
    join(&anvil, &c, &nodes[2], "192.0.2.3:51820").await;
    send(c.revoke(U256::from(1))).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        f.tick(Instant::now()).await.unwrap();
        let seats: Vec<u64> = f.view().records.keys().copied().collect();
        if seats == vec![2, 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the join and the revocation did not arrive: {seats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
