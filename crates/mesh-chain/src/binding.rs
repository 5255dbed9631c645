//! A seat for a node that has none, with no shell in its CVM: the node asks on-chain (`requestBinding`) with
//! its binding, a consent for one holder; the holder finds the request by the instance id and sends it with a
//! seat (`meshctl bind --instance`). Each request names the block of the one before, so the requests are
//! walked back from `lastBindingRequestBlock`, one block's logs at a time, without scanning the chain.

use alloy::eips::BlockId;
use alloy::primitives::{Address, TxHash};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use tracing::info;

use crate::cluster::Cluster;
use crate::contract::{self, DstackClusterNFT};
use crate::error::ChainError;
use crate::node_key::NodeKey;
use crate::record::NodeBinding;

/// What asking for a seat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// The request is on-chain.
    Sent {
        tx: TxHash,
        block: u64,
        from: Address,
    },
    /// Neither the node's address nor the transaction key has funds: the binding goes to a relay (`meshctl
    /// bind --binding`) instead.
    NeedsRelay,
}

impl Cluster {
    /// The holder `node` has asked for a seat, while no seat is bound to it since.
    ///
    /// # Errors
    /// [`ChainError`] when the contract cannot be read.
    pub async fn requested_holder(&self, node: Address) -> Result<Option<Address>, ChainError> {
        let at = self.present().await?;
        let holder = self
            .read()
            .bindingRequestedOf(node)
            .block(at)
            .call()
            .await
            .map_err(|e| ChainError::from_call("bindingRequestedOf", e))?;
        Ok((!holder.is_zero()).then_some(holder))
    }

    /// Who holds seat `token`: whom its node asks for a rebind.
    ///
    /// # Errors
    /// [`ChainError`] when the contract cannot be read (a burned seat reverts).
    pub async fn holder_of(&self, token: u64) -> Result<Address, ChainError> {
        let at = self.present().await?;
        self.read()
            .ownerOf(alloy::primitives::U256::from(token))
            .block(at)
            .call()
            .await
            .map_err(|e| ChainError::from_call("ownerOf", e))
    }

    /// The cluster's owner: whom a node asks for a seat when it is told no holder.
    ///
    /// # Errors
    /// [`ChainError`] when the contract cannot be read.
    pub async fn owner(&self) -> Result<Address, ChainError> {
        let at = self.present().await?;
        self.read()
            .owner()
            .block(at)
            .call()
            .await
            .map_err(|e| ChainError::from_call("owner", e))
    }

    /// Puts `binding` on-chain as this node's request for a seat of its holder, sent from the node's address
    /// when it has funds, else from `tx_key`.
    ///
    /// # Errors
    /// [`ChainError`]: a revert in words (an app id the cluster does not allow, an instance bound already),
    /// or the RPC.
    pub async fn request_binding(
        &self,
        node: &NodeKey,
        binding: &NodeBinding,
        tx_key: Option<&PrivateKeySigner>,
    ) -> Result<Requested, ChainError> {
        let at = self.present().await?;
        let Some(sender) = self.sender(node.transaction_signer(), tx_key, at).await? else {
            return Ok(Requested::NeedsRelay);
        };
        let from = sender.address();
        let c = self.read();
        let call = c.requestBinding(binding.holder, contract::binding_arg(binding));
        let receipt = self.send("requestBinding", &sender, call, 0).await?;
        let block = receipt.block_number.unwrap_or_default();
        let tx = receipt.transaction_hash;
        info!(event = "binding.requested", holder = %binding.holder, %tx, block, %from, "asked for a seat on-chain");
        Ok(Requested::Sent { tx, block, from })
    }
}

/// A seatless node's request, as the chain holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRequest {
    pub block: u64,
    pub tx: Option<TxHash>,
    /// The binding, with the holder it is for.
    pub binding: NodeBinding,
}

/// Why a request's event could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub block: u64,
    pub reason: String,
}

/// The newest `limit` requests of the cluster as of block `at`, newest first, and those whose event could
/// not be read. `at` is a head a quorum of providers has reached ([`crate::rpc::Rpcs::present`]): at `latest`,
/// a provider a block behind the others answers `lastBindingRequestBlock` as it was before, and is named as
/// dissenting for it.
///
/// # Errors
/// [`ChainError`] when the contract or its logs cannot be read.
pub async fn binding_requests<P: Provider>(
    c: &DstackClusterNFT::DstackClusterNFTInstance<P>,
    at: BlockId,
    limit: usize,
) -> Result<(Vec<BindingRequest>, Vec<Unreadable>), ChainError> {
    let chain_id = c
        .provider()
        .get_chain_id()
        .await
        .map_err(|source| ChainError::Rpc {
            what: "eth_chainId",
            source,
        })?;
    let mut block = c
        .lastBindingRequestBlock()
        .block(at)
        .call()
        .await
        .map_err(|e| ChainError::from_call("lastBindingRequestBlock", e))?;
    let (mut found, mut unreadable) = (Vec::new(), Vec::new());
    while block != 0 && found.len() < limit {
        let events = c
            .BindingRequested_filter()
            .from_block(block)
            .to_block(block)
            .query()
            .await
            .map_err(|e| ChainError::from_call("eth_getLogs BindingRequested", e))?;
        let Some(next) = previous_block(block, events.iter().map(|(e, _)| e.previousBlock)) else {
            return Err(ChainError::Implausible {
                detail: format!(
                    "lastBindingRequestBlock or a request names block {block}, but it holds no BindingRequested event"
                ),
            });
        };
        // Newest first: the block's last event is its newest.
        for (event, log) in events.iter().rev() {
            match contract::binding_from_request(event, chain_id, *c.address()) {
                Ok(binding) if found.len() < limit => found.push(BindingRequest {
                    block,
                    tx: log.transaction_hash,
                    binding,
                }),
                Ok(_) => {}
                Err(e) => unreadable.push(Unreadable {
                    block,
                    reason: e.to_string(),
                }),
            }
        }
        block = next;
    }
    Ok((found, unreadable))
}

/// The block to read after `block`, from its events' `previousBlock`s: the first event of a block names an
/// earlier block, the others this one. `None` when the block has no event, or an event names a later
/// block (an RPC that lies, or another contract): walking on could loop.
pub fn previous_block(block: u64, previous: impl Iterator<Item = u64>) -> Option<u64> {
    let earliest = previous.min()?;
    (earliest < block).then_some(earliest)
}

#[cfg(test)]
mod tests {
    use super::previous_block;

    #[test]
    fn the_walk_goes_to_the_earliest_block_a_block_names() {
        assert_eq!(previous_block(20, [10].into_iter()), Some(10));
        // Two requests in block 20: the second names block 20 itself.
        assert_eq!(previous_block(20, [10, 20].into_iter()), Some(10));
        assert_eq!(
            previous_block(20, [0].into_iter()),
            Some(0),
            "the first request ever"
        );
    }

    #[test]
    fn a_block_that_names_no_earlier_block_stops_the_walk() {
        assert_eq!(previous_block(20, std::iter::empty()), None, "no event");
        assert_eq!(
            previous_block(20, [20].into_iter()),
            None,
            "only itself: a loop"
        );
        assert_eq!(previous_block(20, [30].into_iter()), None, "a later block");
    }
}
