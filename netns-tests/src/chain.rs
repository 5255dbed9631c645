//! A real anvil for tests, from the npm toolchain that `scripts/bootstrap` installs.

use alloy::node_bindings::{Anvil, AnvilInstance};

use crate::process::{anvil_path, cast_path};

/// A fresh chain on a free loopback port; the process is killed (by its handle) when dropped.
///
/// # Panics
/// When anvil does not start.
pub fn anvil() -> AnvilInstance {
    Anvil::at(anvil_path()).try_spawn().expect("anvil starts")
}

/// A provider that signs with anvil's development account `i`.
pub fn wallet(anvil: &AnvilInstance, i: usize) -> alloy::providers::DynProvider {
    use alloy::providers::{Provider, ProviderBuilder};
    let signer: alloy::signers::local::PrivateKeySigner = anvil.keys()[i].clone().into();
    ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer))
        .connect_http(anvil.endpoint_url())
        .erased()
}

/// The cluster contract as the tests hold it: sending as its owner, anvil account 0.
pub type TestCluster =
    mesh_chain::contract::DstackClusterNFT::DstackClusterNFTInstance<alloy::providers::DynProvider>;

/// Deploys a cluster owned by anvil account 0 that pins `kms_root` and the test app (`node::APP_ID`), with
/// prefix 10.0.1.0/24 and room for 50 active seats, and allows the image the in-process instances run
/// ([`crate::node::image`]).
///
/// # Panics
/// When the deployment fails.
pub async fn deploy_cluster(
    anvil: &AnvilInstance,
    kms_root: alloy::primitives::Address,
) -> TestCluster {
    let cluster = mesh_chain::contract::DstackClusterNFT::deploy(
        wallet(anvil, 0),
        anvil.addresses()[0],
        kms_root,
        vec![crate::node::APP_ID.parse().expect("app id")],
        0x0a00_0100,
        24,
        alloy::primitives::U256::from(50),
    )
    .await
    .expect("deploy the cluster");
    let (compose, os) = crate::node::image();
    let auth = mesh_chain::contract::DstackClusterAppAuth::new(
        cluster.appAuth().call().await.expect("appAuth"),
        // The cluster's own provider: it keeps account 0's nonces.
        cluster.provider().clone(),
    );
    auth.setComposeHash(compose, true)
        .send()
        .await
        .expect("send setComposeHash")
        .get_receipt()
        .await
        .expect("setComposeHash receipt");
    auth.setOsMeasurement(os, true)
        .send()
        .await
        .expect("send setOsMeasurement")
        .get_receipt()
        .await
        .expect("setOsMeasurement receipt");
    cluster
}

/// Mints the next seat to `to`, bound to `node` (with its binding, as `meshctl mint --binding` sends it) or
/// unbound, as the owner.
///
/// # Panics
/// When the mint reverts.
pub async fn mint(
    cluster: &TestCluster,
    to: alloy::primitives::Address,
    node: Option<&crate::node::SimulatedInstance>,
) {
    use alloy::providers::Provider as _;
    let binding = match node {
        Some(node) => {
            let next: u64 = cluster
                .lastTokenId()
                .call()
                .await
                .expect("lastTokenId")
                .to::<u64>()
                + 1;
            let chain_id = cluster.provider().get_chain_id().await.expect("chain id");
            let b = node.binding(next, to, chain_id, *cluster.address()).await;
            mesh_chain::contract::binding_arg(&b)
        }
        None => mesh_chain::contract::no_binding(),
    };
    cluster
        .mintNodeAccess(to, binding)
        .send()
        .await
        .expect("send mintNodeAccess")
        .get_receipt()
        .await
        .expect("mintNodeAccess receipt");
}

/// The chain's latest block number (`cast block-number`), or `None` while it does not answer.
pub fn block_number(rpc_url: &str) -> Option<u64> {
    let mut cmd = std::process::Command::new(cast_path());
    crate::process::clean_env(&mut cmd).args(["block-number", "--rpc-url", rpc_url]);
    let out = crate::process::run_command_timeout(
        cmd,
        "cast block-number",
        std::time::Duration::from_secs(30),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}
