//! What the attacker does in the forgery and adversary scenarios: sign with a CVM's dstack keys (as an
//! attacker holding that CVM's keys would), send `registerPeer` directly rather than through an agent or
//! `meshctl` (which would refuse), and read the contract's events as anvil serves them.

use std::str::FromStr as _;

use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent as _;
use dstack_guest::{DstackClient, Endpoint};
use mesh_chain::contract::{self as chain, DstackClusterNFT};
use mesh_chain::record::{NodeBinding, SignedRegistration};
use p2p_agent::node::NodeIdentity;
use serde_json::Value;

use crate::in_process::chain::mined;
use crate::net::netns::{NetNs, in_netns};
use crate::run::runtime::block_on;
use crate::system::cluster::{Cluster, account_key};
use crate::system::lan::rpc_url;

/// The chain id of every test chain (anvil's).
pub const CHAIN_ID: u64 = 31337;

/// Runs `f` against the cluster at `contract` from inside the switch namespace (where anvil is), on a
/// fresh runtime, sending as the owner (account 0).
pub fn on_chain<T: Send>(
    switch: &NetNs,
    contract: Address,
    f: impl AsyncFnOnce(DstackClusterNFT::DstackClusterNFTInstance<DynProvider>) -> T + Send,
) -> T {
    in_netns(switch, || {
        block_on(async {
            let signer = PrivateKeySigner::from_str(&account_key(0)).expect("owner key");
            let provider = ProviderBuilder::new()
                .wallet(signer)
                .connect_http(rpc_url().parse().expect("rpc url"))
                .erased();
            f(DstackClusterNFT::new(contract, provider)).await
        })
    })
}

/// Node `i`'s dstack identity at WireGuard key `epoch`, read from its simulator.
pub fn node_identity(cluster: &Cluster<'_>, i: usize, epoch: u32) -> NodeIdentity {
    let client = DstackClient::new(Endpoint::Unix(cluster.sims[i - 1].socket.clone()));
    block_on(NodeIdentity::load(
        &client,
        &cluster.sims[i - 1].key_file,
        epoch,
    ))
    .expect("identity from the simulator")
}

/// What a sibling instance `attacker` can make for another instance's seat with its own dstack socket: its own
/// node key, with a genuine chain from the app (GetKey) whose purpose names `victim_instance` and that key.
/// dstack's GetKey is per app, so nothing stops the sibling from asking for that purpose.
pub fn sibling_node_key(
    cluster: &Cluster<'_>,
    attacker: usize,
    victim_instance: &str,
) -> mesh_chain::node_key::NodeKey {
    let client = DstackClient::new(Endpoint::Unix(cluster.sims[attacker - 1].socket.clone()));
    block_on(crate::in_process::node::sibling_node_key(
        &client,
        &cluster.sims[attacker - 1].key_file,
        victim_instance,
    ))
}

/// Sends `reg` with `registerPeer` to `contract`; returns the contract error's name (or what happened
/// instead) and the block number before and after.
pub fn send_registration(
    switch: &NetNs,
    contract: Address,
    reg: &SignedRegistration,
) -> (String, u64, u64) {
    let (record, proof, signature) = chain::register_peer_args(reg);
    on_chain(switch, contract, async move |c| {
        let before = c.provider().get_block_number().await.expect("block number");
        let sent = c.registerPeer(record, proof, signature).send().await;
        let after = c.provider().get_block_number().await.expect("block number");
        let name = match sent {
            Ok(pending) => format!("no revert: sent {}", pending.tx_hash()),
            Err(e) => mesh_chain::revert::explain_revert(&e)
                .map(|r| r.name)
                .unwrap_or_else(|| format!("not a revert: {e}")),
        };
        (name, before, after)
    })
}

/// The current record of seat `token` at `contract`, exactly as registered, from its event.
pub fn current_registration(switch: &NetNs, contract: Address, token: u64) -> SignedRegistration {
    on_chain(switch, contract, async |c| {
        let peer = c.getPeer(U256::from(token)).call().await.expect("getPeer");
        let event = chain::registration_event(&c, &peer)
            .await
            .expect("eth_getLogs")
            .unwrap_or_else(|| panic!("seat {token}'s PeerRegistered event"));
        chain::registration_from_event(&event, CHAIN_ID, contract).expect("event shape")
    })
}

/// Every `PeerRegistered` log of `contract` (of seat `token` only, if given), as JSON-RPC serves them.
pub fn registration_logs(switch: &NetNs, contract: Address, token: Option<u64>) -> Vec<Value> {
    on_chain(switch, contract, async |c| {
        let mut filter = Filter::new()
            .address(contract)
            .event_signature(DstackClusterNFT::PeerRegistered::SIGNATURE_HASH)
            .from_block(0);
        if let Some(token) = token {
            filter = filter.topic1(U256::from(token));
        }
        c.provider()
            .get_logs(&filter)
            .await
            .expect("eth_getLogs")
            .into_iter()
            .map(|l| serde_json::to_value(l).expect("log as JSON"))
            .collect()
    })
}

/// Node `i`'s evidence as its own dstack gives it: a quote whose report data commits to `node` for the cluster
/// at `contract`, with its event log.
pub fn own_evidence(cluster: &Cluster<'_>, i: usize, contract: Address, node: Address) -> Bytes {
    let client = DstackClient::new(Endpoint::Unix(cluster.sims[i - 1].socket.clone()));
    block_on(async {
        let quote = client
            .get_quote(&mesh_attest::report_data(CHAIN_ID, contract, node))
            .await
            .expect("GetQuote");
        let evidence = mesh_attest::Evidence::from_dstack(&quote.quote, &quote.event_log)
            .expect("the simulator's evidence");
        Bytes::from(evidence.encode())
    })
}

/// Mints the next seat to `holder` with `binding`, straight to the contract as the owner (`meshctl mint`
/// checks the evidence first, and would refuse a forged one).
pub fn mint_with(switch: &NetNs, contract: Address, holder: Address, binding: &NodeBinding) {
    let arg = mesh_chain::contract::binding_arg(binding);
    on_chain(switch, contract, async move |c| {
        mined(c.mintNodeAccess(holder, arg)).await;
    });
}
