//! Connecting to the chain and the cluster contract, signing, and sending transactions with their outcome
//! reported (or their revert explained) in one place.

use std::path::PathBuf;

use alloy::{
    contract::{CallBuilder, CallDecoder},
    primitives::Address,
    providers::Provider,
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
};
use anyhow::Context;
use mesh_chain::contract::{
    self as chain, DstackClusterAppAuth, DstackClusterElection, DstackClusterNFT,
};
use mesh_chain::rpc::Rpcs;
use serde_json::{Value, json};

/// Where the chain is: the providers' flags, which the agent takes too.
pub(crate) type ChainOpts = mesh_chain::cli::ProviderArgs;

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

/// The one handle on the chain's providers, connected once.
pub(crate) fn rpcs(opts: &ChainOpts) -> anyhow::Result<Rpcs> {
    Ok(opts.rpcs()?)
}

/// A read-only connection to the chain: through every provider, a quorum of which must agree, when several
/// are given.
pub(crate) fn reader(opts: &ChainOpts) -> anyhow::Result<Chain> {
    Chain::reading(opts)
}

/// `meshctl`'s one handle on the chain: the providers, connected once, and the key that signs when a
/// command sends. It is the provider of every contract `meshctl` reads or sends to, so that [`send`] finds the
/// signer in the call. Its reads go through the quorum; a transaction is signed once and sent to every
/// provider.
#[derive(Clone)]
pub(crate) struct Chain {
    rpcs: Rpcs,
    signer: Option<PrivateKeySigner>,
}

impl Chain {
    /// The providers of `opts`, reading only.
    pub(crate) fn reading(opts: &ChainOpts) -> anyhow::Result<Self> {
        Ok(Self {
            rpcs: rpcs(opts)?,
            signer: None,
        })
    }

    /// The providers of `opts`, sending from `signer`.
    pub(crate) fn new(opts: &ChainOpts, signer: PrivateKeySigner) -> anyhow::Result<Self> {
        Ok(Self {
            rpcs: rpcs(opts)?,
            signer: Some(signer),
        })
    }

    /// A head a quorum of the providers has reached (`latest` with one provider): what a read that several
    /// calls make is pinned to, so that a provider a block behind answers it alike.
    pub(crate) async fn present(&self) -> anyhow::Result<alloy::eips::BlockId> {
        (self.rpcs.present().await)
            .map_err(|e| anyhow::anyhow!(self.rpcs.scrub(&format!("{e:#}"))))
            .with_context(|| format!("reading the head via {}", self.rpcs.shown()))
    }

    /// Sends `request` from the signer and waits for its receipt, read through the quorum.
    pub(crate) async fn send_request(
        &self,
        what: &'static str,
        request: TransactionRequest,
    ) -> anyhow::Result<TransactionReceipt> {
        let signer = self.signer.as_ref().with_context(|| {
            format!("{what} is a transaction: this command was given no signer")
        })?;
        self.rpcs
            .send(what, signer, request, 0)
            .await
            .map_err(|e| anyhow::anyhow!(self.rpcs.scrub(&format!("{e:#}"))))
            .with_context(|| format!("{what} via {}", self.rpcs.shown()))
    }
}

impl Provider for Chain {
    fn root(&self) -> &alloy::providers::RootProvider {
        self.rpcs.reader().root()
    }
}

/// The cluster at `opts.contract`, checked to be one before anything is sent.
pub(crate) async fn open<P: Provider>(
    opts: &ClusterOpts,
    provider: P,
) -> anyhow::Result<DstackClusterNFT::DstackClusterNFTInstance<P>> {
    chain::check_cluster(&provider, opts.contract)
        .await
        .with_context(|| format!("checking the cluster contract via {}", opts.chain.shown()))?;
    Ok(DstackClusterNFT::new(opts.contract, provider))
}

/// A read-only cluster.
pub(crate) async fn open_read(
    opts: &ClusterOpts,
) -> anyhow::Result<DstackClusterNFT::DstackClusterNFTInstance<Chain>> {
    open(opts, reader(&opts.chain)?).await
}

/// A cluster that `signer` sends to.
pub(crate) async fn open_write(
    opts: &ClusterOpts,
    signer: &SignerOpts,
) -> anyhow::Result<DstackClusterNFT::DstackClusterNFTInstance<Chain>> {
    open(opts, Chain::new(&opts.chain, signer.signer()?)?).await
}

/// The app auth of cluster `c` (its compose, device and OS allowlists), through the same provider (and so the
/// same signer).
pub(crate) async fn app_auth<P: Provider + Clone>(
    c: &DstackClusterNFT::DstackClusterNFTInstance<P>,
) -> anyhow::Result<DstackClusterAppAuth::DstackClusterAppAuthInstance<P>> {
    let address = chain::app_auth_of(c.provider(), *c.address())
        .await
        .context("finding the cluster's app-auth contract")?;
    Ok(DstackClusterAppAuth::new(address, c.provider().clone()))
}

/// The election of cluster `c`, through the same provider (and so the same signer).
pub(crate) async fn election<P: Provider + Clone>(
    c: &DstackClusterNFT::DstackClusterNFTInstance<P>,
) -> anyhow::Result<DstackClusterElection::DstackClusterElectionInstance<P>> {
    let address = chain::election_of(c.provider(), *c.address())
        .await
        .context("finding the cluster's election contract")?;
    Ok(DstackClusterElection::new(address, c.provider().clone()))
}

/// Sends a contract call from the signer of its provider ([`Chain`]) to every provider, and waits for its
/// receipt. A revert, whether at gas estimation or on-chain, comes back as the contract's error in words,
/// with a hint.
pub(crate) async fn send<P: std::borrow::Borrow<Chain>, D: CallDecoder>(
    what: &'static str,
    call: CallBuilder<P, D>,
) -> anyhow::Result<TransactionReceipt> {
    let chain = call.provider.borrow().clone();
    let request = call.into_transaction_request();
    chain.send_request(what, request).await
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
