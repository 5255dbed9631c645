//! A real anvil for tests, from the npm toolchain that `scripts/bootstrap` installs, and transactions to it
//! waited for until mined.

use alloy::contract::SolCallBuilder;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::sol_types::SolCall;

use crate::run::process::{anvil_path, cast_path};

/// A fresh chain on a free loopback port; the process is killed (by its handle) when dropped.
///
/// # Panics
/// When anvil does not start.
pub fn anvil() -> AnvilInstance {
    Anvil::at(anvil_path()).try_spawn().expect("anvil starts")
}

/// A provider that signs with anvil's development account `i`.
pub fn wallet(anvil: &AnvilInstance, i: usize) -> DynProvider {
    use alloy::providers::ProviderBuilder;
    let signer: alloy::signers::local::PrivateKeySigner = anvil.keys()[i].clone().into();
    ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer))
        .connect_http(anvil.endpoint_url())
        .erased()
}

/// A provider at `rpc_url` that signs with the hex private key `key`, for a chain that mines each
/// transaction at once (anvil's automine). alloy waits 7 s between receipt polls for an RPC that is not on
/// loopback, which the namespaces' 10.x RPC is not: hundreds of transactions would take an hour.
///
/// # Panics
/// When `rpc_url` or `key` does not parse.
pub fn signing_provider(rpc_url: &str, key: &str) -> DynProvider {
    use alloy::providers::ProviderBuilder;
    use alloy::rpc::client::RpcClient;
    let signer: alloy::signers::local::PrivateKeySigner = key.parse().expect("a hex private key");
    let client = RpcClient::new_http(rpc_url.parse().expect("the RPC URL"))
        .with_poll_interval(std::time::Duration::from_millis(20));
    ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer))
        .connect_client(client)
        .erased()
}

/// The cluster contract as the tests hold it: sending as its owner, anvil account 0.
pub type TestCluster =
    mesh_chain::contract::DstackClusterNFT::DstackClusterNFTInstance<DynProvider>;

/// Deploys a cluster owned by anvil account 0 that pins `kms_root` and the test app (`node::APP_ID`), with
/// prefix 10.0.1.0/24 and room for 50 active seats, and allows the image the in-process instances run
/// ([`crate::in_process::node::image`]).
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
        vec![crate::in_process::node::APP_ID.parse().expect("app id")],
        0x0a00_0100,
        24,
        alloy::primitives::U256::from(50),
    )
    .await
    .expect("deploy the cluster");
    let (compose, os) = crate::in_process::node::image();
    let auth = mesh_chain::contract::DstackClusterAppAuth::new(
        cluster.appAuth().call().await.expect("appAuth"),
        // The cluster's own provider: it keeps account 0's nonces.
        cluster.provider().clone(),
    );
    mined(auth.setComposeHash(compose, true)).await;
    mined(auth.setOsMeasurement(os, true)).await;
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
    node: Option<&crate::in_process::node::SimulatedInstance>,
) {
    let binding = match node {
        Some(node) => {
            let chain_id = cluster.provider().get_chain_id().await.expect("chain id");
            let b = node.binding(to, chain_id, *cluster.address()).await;
            mesh_chain::contract::binding_arg(&b)
        }
        None => mesh_chain::contract::no_binding(),
    };
    mined(cluster.mintNodeAccess(to, binding)).await;
}

/// Sends `call` and waits until it is mined; its receipt.
///
/// # Panics
/// When it cannot be sent (a call that would revert fails its gas estimate) or no receipt comes, naming
/// the function.
pub async fn mined<P: Provider, C: SolCall>(call: SolCallBuilder<P, C>) -> TransactionReceipt {
    let receipt = call
        .send()
        .await
        .unwrap_or_else(|e| panic!("send {}: {e}", C::SIGNATURE))
        .get_receipt()
        .await
        .unwrap_or_else(|e| panic!("{}'s receipt: {e}", C::SIGNATURE));
    // A call that passed its gas estimate can still revert when it is mined, after other transactions.
    assert!(
        receipt.status(),
        "{} reverted when mined: {receipt:?}",
        C::SIGNATURE
    );
    receipt
}

/// Sends `tx` from `from`'s wallet and waits until it is mined; its receipt.
///
/// # Panics
/// When it cannot be sent or no receipt comes.
pub async fn mined_tx(from: &DynProvider, tx: TransactionRequest) -> TransactionReceipt {
    from.send_transaction(tx)
        .await
        .unwrap_or_else(|e| panic!("send a transaction: {e}"))
        .get_receipt()
        .await
        .unwrap_or_else(|e| panic!("the transaction's receipt: {e}"))
}

/// The chain's latest block number (`cast block-number`), or `None` while it does not answer.
pub fn block_number(rpc_url: &str) -> Option<u64> {
    let mut cmd = std::process::Command::new(cast_path());
    crate::run::process::clean_env(&mut cmd).args(["block-number", "--rpc-url", rpc_url]);
    let out = crate::run::process::run_command_timeout(
        cmd,
        "cast block-number",
        std::time::Duration::from_secs(30),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}
