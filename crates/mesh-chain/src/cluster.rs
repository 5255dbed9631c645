//! The cluster contract as a node acts on it: the chain's providers ([`Rpcs`]) and the contract's address,
//! made once and shared by every task. Its reads are made at the head a quorum reached, through the quorum;
//! its transactions go to every provider. What it reads and sends is in [`crate::registration`],
//! [`crate::election`] and [`crate::binding`].

use std::sync::Arc;

use alloy::eips::BlockId;
use alloy::primitives::Address;
use alloy::providers::{DynProvider, Provider as _};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;

use crate::contract::{self, DstackClusterNFT};
use crate::error::ChainError;
use crate::rpc::Rpcs;

/// The cluster contract and its election, read and written through the chain's providers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    rpcs: Rpcs,
    contract: Address,
    /// The election contract, read once (which checks that `contract` is a cluster).
    election: Arc<tokio::sync::OnceCell<Address>>,
}

impl Cluster {
    /// The cluster at `contract`, through `rpcs`. Nothing is read yet.
    pub fn new(rpcs: Rpcs, contract: Address) -> Self {
        Self {
            rpcs,
            contract,
            election: Arc::default(),
        }
    }

    /// The cluster at `contract`, checked to be one, with its election read.
    ///
    /// # Errors
    /// [`ChainError`] when the RPC does not answer or the address holds no cluster.
    pub async fn connect(rpcs: Rpcs, contract: Address) -> Result<Self, ChainError> {
        let cluster = Self::new(rpcs, contract);
        cluster.election().await?;
        Ok(cluster)
    }

    pub fn address(&self) -> Address {
        self.contract
    }

    /// The providers it goes through.
    pub fn rpcs(&self) -> &Rpcs {
        &self.rpcs
    }

    /// Reads through the quorum.
    pub fn reader(&self) -> &DynProvider {
        self.rpcs.reader()
    }

    /// The cluster's election contract, read at the first call (after checking that the address holds a
    /// cluster) and kept.
    ///
    /// # Errors
    /// [`ChainError`] when it cannot be read, or the address holds no cluster.
    pub async fn election(&self) -> Result<Address, ChainError> {
        self.election
            .get_or_try_init(|| async {
                contract::check_cluster(self.reader(), self.contract).await?;
                contract::election_of(self.reader(), self.contract).await
            })
            .await
            .copied()
    }

    pub(crate) fn read(&self) -> DstackClusterNFT::DstackClusterNFTInstance<&DynProvider> {
        DstackClusterNFT::new(self.contract, self.reader())
    }

    /// The block reads of the present are made at ([`Rpcs::present`]).
    pub(crate) async fn present(&self) -> Result<BlockId, ChainError> {
        self.rpcs.present().await
    }

    /// Who sends a transaction of this node: its derived key when that has funds, else `tx_key`, else
    /// nobody.
    pub(crate) async fn sender(
        &self,
        derived: PrivateKeySigner,
        tx_key: Option<&PrivateKeySigner>,
        at: BlockId,
    ) -> Result<Option<PrivateKeySigner>, ChainError> {
        let balance = self
            .reader()
            .get_balance(derived.address())
            .block_id(at)
            .await
            .map_err(|source| ChainError::Rpc {
                what: "eth_getBalance",
                source,
            })?;
        Ok(if !balance.is_zero() {
            Some(derived)
        } else {
            tx_key.cloned()
        })
    }

    /// Sends `call` from `signer` to every provider, with `headroom` gas over its estimate, and waits for
    /// its receipt ([`Rpcs::send`]).
    pub(crate) async fn send<P: alloy::providers::Provider, D: alloy::contract::CallDecoder>(
        &self,
        what: &'static str,
        signer: &PrivateKeySigner,
        call: alloy::contract::CallBuilder<P, D>,
        headroom: u64,
    ) -> Result<TransactionReceipt, ChainError> {
        let request: TransactionRequest = call.into_transaction_request();
        self.rpcs.send(what, signer, request, headroom).await
    }
}
