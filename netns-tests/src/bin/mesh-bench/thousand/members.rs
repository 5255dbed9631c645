//! The cluster's other members, without agents: each a simulated CVM of the cluster's app in this process,
//! its seat minted and bound to it, and its record registered by the agent's own registration code, with the
//! WireGuard key and endpoint of one simulated peer of the swarm.

use std::time::Instant;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use anyhow::Context as _;
use dstack_simulator::platform::SimulatorConfig;
use mesh_chain::contract::DstackClusterNFT;
use mesh_chain::registration::{Desired, Outcome};
use mesh_wg::Key;
use netns_tests::in_process::chain::{mint, signing_provider};
use netns_tests::in_process::node::SimulatedInstance;
use netns_tests::in_process::swarm::SwarmPeer;
use netns_tests::system::cluster::account_key;
use netns_tests::system::lan::rpc_url;

/// One member: its seat, its instance, and the WireGuard key its record holds.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) token: u64,
    pub(crate) instance_id: String,
    pub(crate) wg_key: Key,
}

/// Mints and registers a member per simulated peer of `peers`, one after another (seats 1, 2, … in order),
/// each from an instance of `configs` (one per peer). Call on a runtime inside the namespace of the chain.
///
/// # Errors
/// When a registration fails; a mint that reverts panics, as in the harness.
pub(crate) async fn register_all(
    configs: Vec<SimulatorConfig>,
    peers: &[SwarmPeer],
    contract: Address,
) -> anyhow::Result<Vec<Member>> {
    let owner = signing_provider(&rpc_url(), &account_key(0));
    let holder =
        PrivateKeySigner::from_slice(alloy::hex::decode(account_key(0))?.as_slice())?.address();
    let cluster = DstackClusterNFT::new(contract, owner);
    // Not the owner: its provider caches the owner's nonce, which these transactions would move.
    let payer: PrivateKeySigner = account_key(1).parse()?;
    let registrar = mesh_chain::cluster::Cluster::connect(
        mesh_chain::rpc::Rpcs::one(rpc_url().parse()?)?,
        contract,
    )
    .await
    .context("connecting the registrations to the chain")?;
    let pins = registrar.contract_pins().await?;
    let began = Instant::now();
    let mut members = Vec::with_capacity(peers.len());
    for (i, (config, peer)) in configs.into_iter().zip(peers).enumerate() {
        let instance = SimulatedInstance::start_with(config).await;
        mint(&cluster, holder, Some(&instance)).await;
        let identity = instance.identity(0).await;
        let desired = Desired {
            wg_public_key: Some(Key::from_bytes(peer.public_key)),
            endpoint: peer.endpoint.to_string(),
            gateway_url: String::new(),
        };
        let outcome = registrar
            .register(&identity.node, &desired, Some(&payer), &pins)
            .await
            .with_context(|| format!("registering member {}", i + 1))?;
        let Outcome::Registered { token_id, .. } = outcome else {
            anyhow::bail!("member {} was not registered: {outcome:?}", i + 1);
        };
        members.push(Member {
            token: token_id.to(),
            instance_id: instance.instance_id.clone(),
            wg_key: Key::from_bytes(peer.public_key),
        });
        if (i + 1) % 100 == 0 {
            eprintln!(
                "   {} members minted and registered ({:.0?})",
                i + 1,
                began.elapsed()
            );
        }
    }
    Ok(members)
}
