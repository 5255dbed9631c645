//! Transactions that pass their estimate and fail once mined, because another transaction in the same
//! block changed what they rest on: the error names the revert the chain would give now, so the caller can
//! tell "someone did it first" from a failure worth retrying.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`:
//! `cargo test -p netns-tests --test integration chain_races:: -- --nocapture`.

use std::time::Duration;

use alloy::primitives::U256;
use alloy::providers::Provider as _;
use alloy::signers::local::PrivateKeySigner;
use mesh_chain::cluster::Cluster;
use mesh_chain::election::ElectionError;
use mesh_chain::error::ChainError;
use mesh_chain::rpc::Rpcs;
use netns_tests::in_process::chain::{anvil, deploy_cluster, mined, mint, wallet};
use netns_tests::in_process::node::SimulatedInstance;

/// A hand-off of seat 1's term to seat 3, estimated and sent while seat 3 can take the lead, mined in a block
/// where seat 3's holder marked it draining first (a higher tip goes first): it fails on-chain, and says
/// why (`LeaderHandOffIneligible`) instead of "failed".
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_that_lost_a_race_in_its_block_names_the_revert() {
    let anvil = anvil();
    let node = SimulatedInstance::start("node-1").await;
    let c = deploy_cluster(&anvil, node.kms_root).await;
    for i in 1..=3 {
        mint(&c, anvil.addresses()[i], None).await;
    }
    let address = c.election().call().await.expect("the election");
    let as_holder =
        |i| mesh_chain::contract::DstackClusterElection::new(address, wallet(&anvil, i));
    mined(as_holder(1).electLeader(U256::from(1))).await;
    let cluster = Cluster::new(
        Rpcs::new(vec![anvil.endpoint().parse().unwrap()], None).unwrap(),
        *c.address(),
    );
    let identity = node.identity(0).await;
    // Seat 1's holder sends it: the node's own address has no funds.
    let holder: PrivateKeySigner = anvil.keys()[1].clone().into();
    let chain = wallet(&anvil, 0);
    chain
        .raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (false,))
        .await
        .expect("automine off");
    let handoff = cluster.hand_off(&identity.node, Some(&holder), 1, 3);
    let drain_then_mine = async {
        // Once the hand-off is out, estimated against a chain where seat 3 may lead.
        for _ in 0..100 {
            let pool: serde_json::Value = chain
                .raw_request("txpool_status".into(), ())
                .await
                .expect("txpool_status");
            if pool["pending"] != "0x0" && pool["pending"] != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gwei = 1_000_000_000u128;
        let _drain = as_holder(3)
            .setDraining(U256::from(3), true)
            .max_priority_fee_per_gas(100 * gwei)
            .max_fee_per_gas(1_000 * gwei)
            .send()
            .await
            .expect("the drain is sent");
        chain
            .raw_request::<_, serde_json::Value>("evm_mine".into(), ())
            .await
            .expect("a block");
    };
    let (handoff, ()) = tokio::join!(handoff, drain_then_mine);
    match handoff {
        Err(ElectionError::Chain(ChainError::Reverted(r))) => {
            assert_eq!(r.name, "LeaderHandOffIneligible", "{r}");
        }
        other => panic!("the hand-off names why it failed: {other:?}"),
    }
    assert!(
        as_holder(0).draining(U256::from(3)).call().await.unwrap(),
        "the drain went first"
    );
}
