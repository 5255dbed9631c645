//! Connecting to the chain and the cluster contract, signing, and sending transactions with their outcome
//! reported (or their revert explained) in one place.

use std::path::PathBuf;

use alloy::{
    contract::{CallBuilder, CallDecoder},
    network::EthereumWallet,
    primitives::Address,
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionReceipt,
    signers::local::PrivateKeySigner,
};
use anyhow::{Context, bail};
use mesh_chain::contract::{
    self as chain, DstackClusterAppAuth, DstackClusterElection, DstackClusterNFT,
};
use mesh_chain::error::ChainError;
use mesh_chain::redact::RedactedUrl;
use serde_json::{Value, json};

/// Where the chain is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ChainOpts {
    /// The chain's JSON-RPC URL, http(s):// or ws(s)://. Give several providers (repeat the flag, or
    /// separate URLs with commas) to take only what a quorum of them answer alike (--rpc-quorum);
    /// transactions go through the first.
    #[arg(
        long = "rpc-url",
        env = "DSTACK_MESH_RPC_URL",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8545"
    )]
    pub(crate) rpc_urls: Vec<alloy::transports::http::reqwest::Url>,
    /// With several --rpc-url providers, how many must answer a read alike: more than half of them (the
    /// default), up to all.
    #[arg(long, env = "DSTACK_MESH_RPC_QUORUM", value_name = "N")]
    pub(crate) rpc_quorum: Option<usize>,
}

impl ChainOpts {
    /// The first provider: it sends transactions.
    pub(crate) fn rpc_url(&self) -> &alloy::transports::http::reqwest::Url {
        self.rpc_urls
            .first()
            .expect("clap gives --rpc-url a default and parses no empty list")
    }

    /// The providers, for messages: their URLs with credentials hidden.
    pub(crate) fn shown(&self) -> String {
        match self.rpcs() {
            Ok(r) => r.shown(),
            Err(_) => RedactedUrl::new(self.rpc_url()).to_string(),
        }
    }

    fn rpcs(&self) -> anyhow::Result<mesh_chain::rpc::Rpcs> {
        Ok(mesh_chain::rpc::Rpcs::new(
            self.rpc_urls.clone(),
            self.rpc_quorum,
        )?)
    }
}

/// Which cluster.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterOpts {
    #[command(flatten)]
    pub(crate) chain: ChainOpts,
    /// The cluster contract's address: the cluster's identity.
    #[arg(value_parser = crate::cluster::address, long, env = "DSTACK_MESH_CONTRACT")]
    pub(crate) contract: Address,
}

/// An address flag's value, named as every binary names a mistyped one ([`cli_env::address`]).
pub(crate) fn address(raw: &str) -> Result<Address, String> {
    cli_env::address(raw).map(Address::from)
}

/// The signer's key, when no key file is given.
pub(crate) const PRIVATE_KEY_ENV: &str = "DSTACK_MESH_PRIVATE_KEY";

/// Who signs.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SignerOpts {
    /// A file holding the signer's private key as hex. Without it, the DSTACK_MESH_PRIVATE_KEY environment
    /// variable is read. Keys never go on the command line, where other users can see them.
    #[arg(long, env = "DSTACK_MESH_PRIVATE_KEY_FILE", value_name = "PATH")]
    pub(crate) private_key_file: Option<PathBuf>,
}

impl SignerOpts {
    pub(crate) fn signer(&self) -> anyhow::Result<PrivateKeySigner> {
        let from_env = std::env::var(PRIVATE_KEY_ENV).ok();
        mesh_chain::tx_key::load(self.private_key_file.as_deref(), "--private-key-file", PRIVATE_KEY_ENV, from_env.as_deref())?.ok_or_else(|| {
            anyhow::anyhow!(
                "this command sends a transaction and needs a signer: pass --private-key-file PATH or set {PRIVATE_KEY_ENV}"
            )
        })
    }
}

/// Fails unless the RPC serves the chain `signed_for`, the one the `what` it is about to send was signed for.
pub(crate) async fn require_chain(
    provider: &impl Provider,
    signed_for: u64,
    what: &str,
) -> anyhow::Result<()> {
    let chain_id = provider
        .get_chain_id()
        .await
        .context("reading the chain id")?;
    anyhow::ensure!(
        signed_for == chain_id,
        "the {what} is signed for chain {signed_for}, but the RPC serves chain {chain_id}"
    );
    Ok(())
}

/// A connection to the first provider, over HTTP or WebSocket as the URL says.
async fn client(opts: &ChainOpts) -> anyhow::Result<alloy::rpc::client::RpcClient> {
    mesh_chain::rpc::client(opts.rpc_url())
        .await
        .with_context(|| format!("connecting to {}", RedactedUrl::new(opts.rpc_url())))
}

/// A read-only connection to the chain: through every provider, a quorum of which must agree, when several
/// are given.
pub(crate) async fn reader(opts: &ChainOpts) -> anyhow::Result<DynProvider> {
    opts.rpcs()?
        .reader()
        .await
        .with_context(|| format!("connecting to {}", opts.shown()))
}

/// A signing connection to the chain.
pub(crate) async fn writer(
    opts: &ChainOpts,
    signer: PrivateKeySigner,
) -> anyhow::Result<DynProvider> {
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_client(client(opts).await?);
    // alloy polls receipts every 7 s on non-loopback hosts; a person waiting at a prompt wants less.
    provider
        .client()
        .set_poll_interval(std::time::Duration::from_millis(250));
    Ok(provider.erased())
}

/// The cluster at `opts.contract`, checked to be one before anything is sent.
pub(crate) async fn open(
    opts: &ClusterOpts,
    provider: DynProvider,
) -> anyhow::Result<DstackClusterNFT::DstackClusterNFTInstance<DynProvider>> {
    chain::check_cluster(&provider, opts.contract)
        .await
        .with_context(|| format!("checking the cluster contract via {}", opts.chain.shown()))?;
    Ok(DstackClusterNFT::new(opts.contract, provider))
}

/// A read-only cluster.
pub(crate) async fn open_read(
    opts: &ClusterOpts,
) -> anyhow::Result<DstackClusterNFT::DstackClusterNFTInstance<DynProvider>> {
    open(opts, reader(&opts.chain).await?).await
}

/// A cluster that `signer` sends to.
pub(crate) async fn open_write(
    opts: &ClusterOpts,
    signer: &SignerOpts,
) -> anyhow::Result<DstackClusterNFT::DstackClusterNFTInstance<DynProvider>> {
    open(opts, writer(&opts.chain, signer.signer()?).await?).await
}

/// The app auth of cluster `c` (its compose, device and OS allowlists), through the same provider (and so the
/// same signer).
pub(crate) async fn app_auth(
    c: &DstackClusterNFT::DstackClusterNFTInstance<DynProvider>,
) -> anyhow::Result<DstackClusterAppAuth::DstackClusterAppAuthInstance<DynProvider>> {
    let address = chain::app_auth_of(c.provider(), *c.address())
        .await
        .context("finding the cluster's app-auth contract")?;
    Ok(DstackClusterAppAuth::new(address, c.provider().clone()))
}

/// The election of cluster `c`, through the same provider (and so the same signer).
pub(crate) async fn election(
    c: &DstackClusterNFT::DstackClusterNFTInstance<DynProvider>,
) -> anyhow::Result<DstackClusterElection::DstackClusterElectionInstance<DynProvider>> {
    let address = chain::election_of(c.provider(), *c.address())
        .await
        .context("finding the cluster's election contract")?;
    Ok(DstackClusterElection::new(address, c.provider().clone()))
}

/// Sends a contract call and waits for its receipt. A revert, whether at gas estimation or on-chain, comes
/// back as the contract's error in words, with a hint.
pub(crate) async fn send<D: CallDecoder>(
    what: &'static str,
    call: CallBuilder<&DynProvider, D>,
) -> anyhow::Result<TransactionReceipt> {
    let pending = call
        .send()
        .await
        .map_err(|e| ChainError::from_call(what, e))
        .with_context(|| what)?;
    let hash = *pending.tx_hash();
    let receipt = pending
        .get_receipt()
        .await
        .with_context(|| format!("{what}: waiting for the receipt of {hash}"))?;
    if !receipt.status() {
        bail!(
            "{what}: transaction {hash} reverted in block {}",
            receipt.block_number.unwrap_or_default()
        );
    }
    Ok(receipt)
}

/// Where a transaction landed.
pub(crate) fn tx_json(receipt: &TransactionReceipt) -> Value {
    json!({ "tx": receipt.transaction_hash, "block": receipt.block_number })
}

pub(crate) fn tx_text(receipt: &TransactionReceipt) -> String {
    format!(
        "tx {} in block {}",
        receipt.transaction_hash,
        receipt.block_number.unwrap_or_default()
    )
}

/// The events of type `E` that a receipt carries.
pub(crate) fn events<E: alloy::sol_types::SolEvent>(receipt: &TransactionReceipt) -> Vec<E> {
    receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<E>().ok().map(|l| l.inner.data))
        .collect()
}
