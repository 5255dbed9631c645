//! Getting this node's peer record on-chain: find the seat bound to its instance, compare the record it wants
//! with the stored one, and when they differ sign a new one and send it, or hand it to a relay.
//!
//! A stored record that says what the node wants is only up to date if its peers will believe it: its
//! registration event is checked here exactly as they check it. Otherwise (a contract that accepted what
//! agents refuse, say) the node registers again with the next nonce.

#![deny(clippy::arithmetic_side_effects)]

use alloy::{
    primitives::{Address, B256, TxHash, U256},
    providers::Provider as _,
    signers::local::PrivateKeySigner,
};
use tracing::{info, instrument, warn};

use crate::cluster::Cluster;
use crate::contract::{self, DstackClusterNFT};
use crate::error::ChainError;
use crate::membership::{self, Pins, Rejected};
use crate::node_key::NodeKey;
use crate::record::{self, PeerRecord, RecordError, SignedRegistration};
use wg_key::Key;

/// Gas given to a registration beyond its estimate. The estimate is made against the chain as it is, and
/// when other seats register in between (a cluster starting up) this one may be the one to open a new slot
/// of the contract's list of recorded seats (eight per slot): a write from zero, 20,000 gas, where the
/// estimate saw an update of 2,900. Without it, such registrations ran out of gas at 50 nodes.
const REGISTER_GAS_HEADROOM: u64 = 25_000;

/// The record this node wants on-chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Absent in TLS mode: the record then holds zero.
    pub wg_public_key: Option<Key>,
    /// `host:port`, or empty.
    pub endpoint: String,
    /// Empty when the node has no TLS-gateway URL.
    pub gateway_url: String,
}

impl Desired {
    /// Whether `record` already says what this node wants on-chain.
    pub fn matches(&self, record: &SignedRegistration) -> bool {
        record.wg_public_key == self.wg_key_field()
            && record.endpoint == self.endpoint
            && record.gateway_url == self.gateway_url
    }

    /// The key as the record's `bytes32` holds it.
    fn wg_key_field(&self) -> B256 {
        self.wg_public_key
            .map_or(B256::ZERO, |k| B256::from(*k.as_bytes()))
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The stored record already is the desired one; nothing was sent.
    UpToDate { token_id: U256 },
    /// A new record was registered.
    Registered {
        token_id: U256,
        nonce: u64,
        tx: TxHash,
        block: u64,
        from: Address,
        /// Why the stored record, though it said what the node wants, was replaced: peers would not
        /// have believed it.
        replaced_unbelievable: Option<String>,
    },
    /// No funded sender: the signed registration, for `meshctl relay`.
    NeedsRelay(Box<SignedRegistration>),
}

/// Why registration cannot proceed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    #[error(
        "no seat of cluster {contract} is bound to this instance ({instance_id}). A running agent asks for one on-chain by itself (from --holder, by default the cluster's owner); the holder then runs:\n    meshctl bind --contract {contract} --instance {instance_id}\nWithout funds to ask, the agent prints its binding on stdout instead; or make one in the instance:\n    p2p-agent identity --bind-holder <holder address> --contract {contract} --rpc-url <rpc> > binding.json\nthen, where the holder's key is, `meshctl bind --contract {contract} --binding binding.json` mints a seat with it (or binds seat N with --token N)"
    )]
    NoSeat {
        contract: Address,
        instance_id: String,
    },
    #[error(
        "seat {token_id} is bound to node key {bound}, but this instance's node key is {node}: this instance lost its key store (a new volume makes a new key) or the seat was bound from another copy of it. The agent asks the holder ({holder}) on-chain to bind the seat to this node again; the holder runs `meshctl bind --instance <this instance> --token {token_id}`"
    )]
    BoundToAnotherNode {
        token_id: U256,
        bound: Address,
        node: Address,
        holder: Address,
    },
    #[error(
        "seat {token_id} of cluster {contract} is deactivated: its holder runs `meshctl activate --contract {contract} --token {token_id}`"
    )]
    SeatInactive { contract: Address, token_id: U256 },
    #[error("the cluster would reject this node's proof, so nothing was sent: {0}")]
    WouldBeRejected(#[source] RecordError),
    #[error("this node's peers would not believe its record, so nothing was sent: {0}")]
    PeersWouldReject(#[source] Rejected),
    #[error(
        "seat {token_id}'s record nonce is at its maximum, so no newer record can be registered; if the RPC is honest, the seat needs a rebind"
    )]
    NonceExhausted { token_id: U256 },
    #[error("signing the record failed")]
    Sign(#[source] RecordError),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl Cluster {
    /// The pins a one-shot registration checks records against: the contract's own.
    ///
    /// # Errors
    /// [`ChainError`] when they cannot be read.
    pub async fn contract_pins(&self) -> Result<Pins, ChainError> {
        let c = self.read();
        let (kms_root, app_ids) = contract::trust_anchors(&c).await?;
        Ok(Pins {
            kms_root,
            app_ids,
            chain_id: self.chain_id().await?,
            prefix: contract::mesh_prefix(&c).await?,
        })
    }

    async fn chain_id(&self) -> Result<u64, ChainError> {
        self.reader()
            .get_chain_id()
            .await
            .map_err(|source| ChainError::Rpc {
                what: "eth_chainId",
                source,
            })
    }

    /// Why peers holding `pins` would not believe the stored record of seat `token_id`, if they would not.
    async fn unbelievable(
        &self,
        token_id: u64,
        current: &DstackClusterNFT::Peer,
        pins: &Pins,
    ) -> Result<Option<String>, ChainError> {
        let Some(event) = contract::registration_event(&self.read(), current).await? else {
            return Ok(Some(format!(
                "no registration event for it in block {}",
                current.registeredBlock
            )));
        };
        if let Err(why) = contract::event_matches_record(&event, current) {
            return Ok(Some(why));
        }
        let reg = match contract::registration_from_event(&event, pins.chain_id, self.address()) {
            Ok(reg) => reg,
            Err(e) => return Ok(Some(e.to_string())),
        };
        let bound = membership::Bound {
            instance_id: &current.instanceId,
            node: current.node,
        };
        Ok(
            membership::authenticate(&reg, token_id, pins, self.address(), bound)
                .err()
                .map(|e| e.to_string()),
        )
    }

    /// Makes the chain hold `desired` for this node's seat: nothing if it already does and peers holding
    /// `pins` would believe it, else a freshly signed record, sent from the node's address when it has
    /// funds, else from `tx_key`, else returned for a relay.
    ///
    /// # Errors
    /// [`RegistrationError`]: no seat, an inactive seat, a proof the cluster or the peers would reject, or a
    /// chain error.
    #[instrument(skip_all, fields(contract = %self.address(), instance = %node.instance_id))]
    pub async fn register(
        &self,
        node: &NodeKey,
        desired: &Desired,
        tx_key: Option<&PrivateKeySigner>,
        pins: &Pins,
    ) -> Result<Outcome, RegistrationError> {
        let c = self.read();
        let call = |what: &'static str| move |e| ChainError::from_call(what, e);
        let at = self.present().await?;
        let token_id = c
            .tokenOfInstance(node.instance_id.clone())
            .block(at)
            .call()
            .await
            .map_err(call("tokenOfInstance"))?;
        if token_id.is_zero() {
            return Err(RegistrationError::NoSeat {
                contract: self.address(),
                instance_id: node.instance_id.clone(),
            });
        }
        let seat = c
            .seatInfo(token_id)
            .block(at)
            .call()
            .await
            .map_err(call("seatInfo"))?;
        if !seat.active {
            return Err(RegistrationError::SeatInactive {
                contract: self.address(),
                token_id,
            });
        }
        let token = u64::try_from(token_id).map_err(|_| ChainError::Implausible {
            detail: format!("seat id {token_id} is out of range"),
        })?;
        let chain_id = self.chain_id().await?;
        if chain_id != pins.chain_id {
            return Err(ChainError::PinMismatch {
                what: "chain id",
                pinned: pins.chain_id.to_string(),
                rpc: chain_id.to_string(),
            }
            .into());
        }
        let current = c
            .getPeer(token_id)
            .block(at)
            .call()
            .await
            .map_err(call("getPeer"))?;
        if current.node != node.address() {
            return Err(RegistrationError::BoundToAnotherNode {
                token_id,
                bound: current.node,
                node: node.address(),
                holder: seat.holder,
            });
        }
        let mut replaced_unbelievable = None;
        if seat.registeredBlock != 0
            && current.wgPublicKey == desired.wg_key_field()
            && current.endpoint == desired.endpoint
            && current.gatewayUrl == desired.gateway_url
        {
            match self.unbelievable(token, &current, pins).await? {
                None => return Ok(Outcome::UpToDate { token_id }),
                Some(why) => {
                    warn!(%token_id, nonce = current.nonce, reason = %why, "this node's record on-chain says what it wants, but its peers would not believe it; registering it again with the next nonce");
                    replaced_unbelievable = Some(why);
                }
            }
        }
        let nonce = seat
            .nonce
            .checked_add(1)
            .ok_or(RegistrationError::NonceExhausted { token_id })?;
        let record = PeerRecord {
            tokenId: token_id,
            instanceId: node.instance_id.clone(),
            wgPublicKey: desired.wg_key_field(),
            endpoint: desired.endpoint.clone(),
            gatewayUrl: desired.gateway_url.clone(),
            nonce,
        };
        let reg = node
            .sign(record, chain_id, self.address())
            .map_err(RegistrationError::Sign)?;

        // Check against the cluster's own pins first: a KMS-root or app-id mismatch should be a clear message,
        // not a reverted transaction that someone paid for.
        let (kms_root, app_ids) = contract::trust_anchors_at(&c, at).await?;
        record::verify_registration(
            &reg,
            kms_root,
            &app_ids,
            &node.instance_id,
            Some(current.node),
        )
        .map_err(RegistrationError::WouldBeRejected)?;
        // And against the node's own pins, which its peers hold too: the contract may have moved on.
        let bound = membership::Bound {
            instance_id: &node.instance_id,
            node: current.node,
        };
        membership::authenticate(&reg, token, pins, self.address(), bound)
            .map_err(RegistrationError::PeersWouldReject)?;

        let Some(sender) = self.sender(node.transaction_signer(), tx_key, at).await? else {
            return Ok(Outcome::NeedsRelay(Box::new(reg)));
        };
        let from = sender.address();
        let (r, p, s) = contract::register_peer_args(&reg);
        let receipt = self
            .send(
                "registerPeer",
                &sender,
                c.registerPeer(r, p, s),
                REGISTER_GAS_HEADROOM,
            )
            .await?;
        let block = receipt.block_number.unwrap_or_default();
        info!(event = "record.registered", token_id = %token_id, nonce = reg.nonce, tx = %receipt.transaction_hash, block, %from, "registered peer record");
        Ok(Outcome::Registered {
            token_id,
            nonce: reg.nonce,
            tx: receipt.transaction_hash,
            block,
            from,
            replaced_unbelievable,
        })
    }
}
