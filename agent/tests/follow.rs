//! Following the contract on a real anvil: the full read, events per block, removals, local re-verification
//! of every record, and an RPC load per block that does not grow with the number of peers.
//!
//! Run: `cargo test -p p2p-agent --test follow`.

use alloy::{
    network::EthereumWallet,
    node_bindings::AnvilInstance,
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use netns_tests::{
    chain::{TestCluster, anvil, deploy_cluster, mint},
    node::{APP_ID, SimulatedInstance},
};
use p2p_agent::{
    follow::Follower,
    membership::{self, InvalidRecord, Pins},
};

type Contract = TestCluster;

async fn setup(anvil: &AnvilInstance, kms_root: Address) -> Contract {
    deploy_cluster(anvil, kms_root).await
}

/// Mints a seat for `node` and registers its record with `endpoint`.
async fn join(anvil: &AnvilInstance, c: &Contract, node: &SimulatedInstance, endpoint: &str) {
    mint(c, anvil.addresses()[1], &node.instance_id).await;
    node.register(anvil, *c.address(), endpoint, "", 2).await;
}

fn reader(anvil: &AnvilInstance) -> DynProvider {
    ProviderBuilder::new()
        .connect_http(anvil.endpoint_url())
        .erased()
}

/// The follower sees joins and revocations block by block, and every record it keeps verifies locally.
#[tokio::test(flavor = "multi_thread")]
async fn follows_joins_and_revocations_and_verifies_every_record() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = setup(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;

    let mut f = Follower::start(reader(&anvil), *c.address(), 0, None)
        .await
        .unwrap();
    assert_eq!(f.view().records.len(), 1);
    assert_eq!(
        f.view().pins,
        Pins {
            kms_root: a.kms_root,
            app_ids: vec![APP_ID.parse().unwrap()]
        },
        "pinned from the contract"
    );

    join(&anvil, &c, &b, "192.0.2.2:51820").await;
    assert!(f.poll().await.unwrap(), "the join is a change");
    assert!(!f.poll().await.unwrap(), "nothing new, no change");
    let v = f.view();
    let (members, invalid) = membership::members(
        &v.records,
        Some(1),
        &v.pins,
        v.prefix,
        v.chain_id,
        v.contract,
    );
    assert!(invalid.is_empty(), "{invalid:?}");
    assert_eq!(members.len(), 1, "itself excluded");
    assert_eq!(members[0].overlay_ip.to_string(), "10.0.1.2");
    assert_eq!(members[0].endpoint.unwrap().to_string(), "192.0.2.2:51820");

    c.revoke(U256::from(2))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(f.poll().await.unwrap(), "the revocation is a change");
    assert_eq!(
        f.view().records.keys().copied().collect::<Vec<_>>(),
        vec![1]
    );

    // A full read agrees with what the events built.
    let before = f.view().clone();
    assert!(!f.full_read().await.unwrap());
    assert_eq!(f.view().records, before.records);
}

/// Records that fail this node's own checks are skipped with a reason, and the others go on.
#[tokio::test(flavor = "multi_thread")]
async fn records_failing_local_checks_are_skipped() {
    let anvil = anvil();
    let a = SimulatedInstance::start("a").await;
    let b = SimulatedInstance::start("b").await;
    let c = setup(&anvil, a.kms_root).await;
    join(&anvil, &c, &a, "192.0.2.1:51820").await;
    join(&anvil, &c, &b, "node-b.example:51820").await; // the contract allows names; agents need an IP
    let f = Follower::start(reader(&anvil), *c.address(), 0, None)
        .await
        .unwrap();
    let v = f.view();
    let (members, invalid) =
        membership::members(&v.records, None, &v.pins, v.prefix, v.chain_id, v.contract);
    assert_eq!(members.len(), 1);
    assert_eq!(
        invalid,
        vec![InvalidRecord::Endpoint {
            token_id: 2,
            endpoint: "node-b.example:51820".into()
        }]
    );

    // A node that pins another KMS root (say, the RPC or the contract owner lied) configures nobody.
    let other = Pins {
        kms_root: Address::repeat_byte(0xee),
        app_ids: v.pins.app_ids.clone(),
    };
    let (members, invalid) =
        membership::members(&v.records, None, &other, v.prefix, v.chain_id, v.contract);
    assert!(members.is_empty());
    assert!(
        invalid
            .iter()
            .all(|e| matches!(e, InvalidRecord::Proof { .. })),
        "{invalid:?}"
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
    let c = setup(&anvil, nodes[0].kms_root).await;
    for (i, n) in nodes.iter().take(2).enumerate() {
        join(&anvil, &c, n, &format!("192.0.2.{}:51820", i + 1)).await;
    }
    let mut f = Follower::start(reader(&anvil), *c.address(), 0, None)
        .await
        .unwrap();
    let with_two = requests_for_one_block(&anvil, &mut f).await;
    for (i, n) in nodes.iter().enumerate().skip(2) {
        join(&anvil, &c, n, &format!("192.0.2.{}:51820", i + 1)).await;
    }
    f.poll().await.unwrap();
    assert_eq!(f.view().records.len(), 6);
    let with_six = requests_for_one_block(&anvil, &mut f).await;
    assert_eq!(
        with_two, with_six,
        "requests per block: {with_two} with 2 peers, {with_six} with 6"
    );
    assert!(with_two <= 3, "{with_two} requests for one block");
}

/// Mines one block with no cluster event and counts the requests the next poll makes.
async fn requests_for_one_block(anvil: &AnvilInstance, f: &mut Follower) -> u64 {
    let before = f.requests;
    let signer: PrivateKeySigner = anvil.keys()[9].clone().into();
    let from9 = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(anvil.endpoint_url());
    let tx = alloy::rpc::types::TransactionRequest::default().to(anvil.addresses()[8]);
    from9
        .send_transaction(tx)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    f.poll().await.unwrap();
    f.requests - before
}
