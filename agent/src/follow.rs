//! Following the cluster contract: a full read at start and now and then as a safety net, and in between the
//! contract's events block by block, so that the RPC load per block does not grow with the number of peers.
//!
//! Per poll with new blocks: `eth_blockNumber`, the header of the newest confirmed block (its hash, and its
//! parent's to detect a reorg), and one `eth_getLogs` for the whole range. A reorg below the last processed
//! block, or a log marked removed, triggers a full read. Records are kept with their registration events,
//! proofs included, so every one can be re-verified locally ([`crate::membership`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument, warn};

use crate::chain::{self, ChainError, DstackClusterNFT};
use crate::membership::{Pins, Prefix};
use crate::proof::SignedRegistration;

/// What this node knows of the chain: enough to bring the mesh up without the RPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainView {
    pub contract: Address,
    pub chain_id: u64,
    pub prefix: Prefix,
    pub pins: Pins,
    pub last_block: u64,
    pub last_block_hash: B256,
    /// The current record of each seat that has one, as its registration event carried it.
    pub records: BTreeMap<u64, SignedRegistration>,
}

/// The seat bound to an instance, as the contract has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// No seat is bound to the instance.
    None,
    /// Bound and active: the instance may register.
    Active(u64),
    /// Bound but deactivated by its holder: no record until it is activated again.
    Inactive(u64),
}

/// Follows one cluster contract through one RPC.
pub struct Follower {
    provider: DynProvider,
    confirmations: u64,
    view: ChainView,
    /// RPC requests made, for the benchmark of RPC load per block.
    pub requests: u64,
}

fn rpc(what: &'static str) -> impl FnOnce(alloy::transports::TransportError) -> ChainError {
    move |source| ChainError::Rpc { what, source }
}

fn call(what: &'static str) -> impl FnOnce(alloy::contract::Error) -> ChainError {
    move |e| ChainError::from_call(what, e)
}

impl Follower {
    /// Connects and reads the whole state. `pins` come from flags or the on-disk state; without them they are
    /// read from the contract (trust on first use, then persisted).
    ///
    /// # Errors
    /// [`ChainError`] when the RPC or the contract cannot be read.
    #[instrument(skip_all, fields(%contract))]
    pub async fn start(
        provider: DynProvider,
        contract: Address,
        confirmations: u64,
        pins: Option<Pins>,
    ) -> Result<Self, ChainError> {
        chain::check_cluster(&provider, contract).await?;
        let c = DstackClusterNFT::new(contract, &provider);
        let chain_id = provider.get_chain_id().await.map_err(rpc("eth_chainId"))?;
        let p = c.meshPrefix().call().await.map_err(call("meshPrefix"))?;
        let prefix = Prefix {
            network: Ipv4Addr::from(p._0),
            len: p._1,
        };
        let pins = match pins {
            Some(p) => p,
            None => {
                let kms_root = c.kmsRoot().call().await.map_err(call("kmsRoot"))?;
                let app_ids = c
                    .allowedAppIds()
                    .call()
                    .await
                    .map_err(call("allowedAppIds"))?;
                info!(%kms_root, ?app_ids, "pinned the cluster's KMS root and app ids from the contract");
                Pins { kms_root, app_ids }
            }
        };
        let view = ChainView {
            contract,
            chain_id,
            prefix,
            pins,
            last_block: 0,
            last_block_hash: B256::ZERO,
            records: BTreeMap::new(),
        };
        let mut follower = Self {
            provider,
            confirmations,
            view,
            requests: 5,
        };
        follower.full_read().await?;
        Ok(follower)
    }

    /// What the follower knows now.
    pub fn view(&self) -> &ChainView {
        &self.view
    }

    async fn confirmed_head(&mut self) -> Result<(u64, u64), ChainError> {
        self.requests += 1;
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(rpc("eth_blockNumber"))?;
        Ok((head, head.saturating_sub(self.confirmations)))
    }

    async fn header(&mut self, number: u64) -> Result<(B256, B256), ChainError> {
        self.requests += 1;
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(rpc("eth_getBlockByNumber"))?
            .ok_or(ChainError::MissingBlock { number })?;
        Ok((block.header.hash, block.header.parent_hash))
    }

    /// Reads every active record at the confirmed head, fetching the registration event of each record that
    /// is new or changed. Returns whether the record set changed.
    ///
    /// # Errors
    /// [`ChainError`] when a read fails; the view is left as it was.
    #[instrument(skip_all)]
    pub async fn full_read(&mut self) -> Result<bool, ChainError> {
        let (_, target) = self.confirmed_head().await?;
        let (hash, _) = self.header(target).await?;
        let c = DstackClusterNFT::new(self.view.contract, &self.provider);
        self.requests += 1;
        let peers = c
            .getPeers()
            .block(target.into())
            .call()
            .await
            .map_err(call("getPeers"))?;
        let mut records = BTreeMap::new();
        for p in peers {
            let token = u64::try_from(p.tokenId).unwrap_or(u64::MAX);
            if let Some(known) = self.view.records.get(&token)
                && known.nonce == p.nonce
            {
                records.insert(token, known.clone());
                continue;
            }
            self.requests += 1;
            match chain::registration_event(&c, &p).await? {
                Some(event) => match chain::registration_from_event(
                    &event,
                    self.view.chain_id,
                    self.view.contract,
                ) {
                    Ok(reg) => {
                        records.insert(token, reg);
                    }
                    Err(e) => warn!(token, %e, "skipping a record whose event is malformed"),
                },
                None => warn!(
                    token,
                    block = p.registeredBlock,
                    "no registration event for a stored record; skipping it"
                ),
            }
        }
        let changed = records != self.view.records;
        self.view.records = records;
        self.view.last_block = target;
        self.view.last_block_hash = hash;
        debug!(
            block = target,
            peers = self.view.records.len(),
            changed,
            "full read"
        );
        Ok(changed)
    }

    /// Applies the contract's events since the last processed block. Returns whether the record set changed.
    ///
    /// # Errors
    /// [`ChainError`] when a read fails; the view is left as it was and the next poll retries the range.
    pub async fn poll(&mut self) -> Result<bool, ChainError> {
        let (_, target) = self.confirmed_head().await?;
        let last = self.view.last_block;
        if target <= last {
            return Ok(false);
        }
        let (hash, parent) = self.header(target).await?;
        let last_hash = if target == last + 1 {
            parent
        } else {
            self.header(last).await?.0
        };
        if last_hash != self.view.last_block_hash {
            warn!(
                block = last,
                "the chain reorganised below the last processed block; reading it whole"
            );
            return self.full_read().await;
        }
        self.requests += 1;
        let filter = Filter::new()
            .address(self.view.contract)
            .event_signature(vec![
                DstackClusterNFT::PeerRegistered::SIGNATURE_HASH,
                DstackClusterNFT::PeerCleared::SIGNATURE_HASH,
            ])
            .from_block(last + 1)
            .to_block(target);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(rpc("eth_getLogs"))?;
        let mut records = self.view.records.clone();
        for log in &logs {
            if log.removed {
                warn!("a log was removed by a reorg; reading the chain whole");
                return self.full_read().await;
            }
            if let Ok(e) = log.log_decode::<DstackClusterNFT::PeerRegistered>() {
                let token = u64::try_from(e.inner.data.tokenId).unwrap_or(u64::MAX);
                match chain::registration_from_event(
                    &e.inner.data,
                    self.view.chain_id,
                    self.view.contract,
                ) {
                    Ok(reg) => {
                        // Events arrive in order; a lower nonce could only come from a duplicate delivery.
                        if records
                            .get(&token)
                            .is_none_or(|known| known.nonce < reg.nonce)
                        {
                            records.insert(token, reg);
                        }
                    }
                    Err(err) => warn!(token, %err, "skipping a malformed registration event"),
                }
            } else if let Ok(e) = log.log_decode::<DstackClusterNFT::PeerCleared>() {
                records.remove(&u64::try_from(e.inner.data.tokenId).unwrap_or(u64::MAX));
            }
        }
        let changed = records != self.view.records;
        self.view.records = records;
        self.view.last_block = target;
        self.view.last_block_hash = hash;
        if changed {
            info!(
                from = last + 1,
                to = target,
                peers = self.view.records.len(),
                "peer records changed"
            );
        }
        Ok(changed)
    }

    /// The seat bound to `instance_id`, if any.
    ///
    /// # Errors
    /// [`ChainError`] when the read fails.
    pub async fn seat_of(&mut self, instance_id: &str) -> Result<Seat, ChainError> {
        self.requests += 1;
        let cluster = DstackClusterNFT::new(self.view.contract, &self.provider);
        let token: U256 = cluster
            .tokenOfInstance(instance_id.to_owned())
            .call()
            .await
            .map_err(call("tokenOfInstance"))?;
        if token.is_zero() {
            return Ok(Seat::None);
        }
        self.requests += 1;
        let info = cluster
            .seatInfo(token)
            .call()
            .await
            .map_err(call("seatInfo"))?;
        let id = u64::try_from(token).unwrap_or(u64::MAX);
        Ok(if info.active {
            Seat::Active(id)
        } else {
            Seat::Inactive(id)
        })
    }
}
