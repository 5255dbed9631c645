//! This node's key: a secp256k1 key made from randomness inside the CVM and kept sealed on its own volume (the
//! agent's key store holds it), with dstack's chain in which an instance of the app vouches for it serving this
//! instance. It signs the node's records, its consent to a seat binding and its ballots, and can pay for its own
//! transactions once funded. It never leaves the process.
//!
//! dstack's GetKey gives every instance of an app the same key for the same path, so a key derived there could
//! be derived by any sibling instance; this one cannot, because it never came from GetKey. GetKey only supplies
//! the chain, whose purpose names the node.

use alloy::primitives::Bytes;
use alloy_primitives::Address;
use dstack_guest::{DstackClient, DstackError, DstackProof, Info, ProofError};
use k256::ecdsa::SigningKey;

use crate::record::{self, NodeBinding, PeerRecord, RecordError, SignedRegistration};

/// Why the node key's chain could not be had from dstack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeKeyError {
    #[error("dstack {call} failed")]
    Dstack {
        call: &'static str,
        #[source]
        source: DstackError,
    },
    #[error(
        "this CVM has no instance id (its app-compose sets no_instance_id): dstack-mesh binds seats to instance ids"
    )]
    NoInstanceId,
    #[error("dstack's GetKey reply does not make a proof")]
    Proof(#[source] ProofError),
}

/// The node key of one instance, with the chain that vouches for it.
#[derive(Clone)]
pub struct NodeKey {
    /// 40 lowercase hex characters.
    pub instance_id: String,
    pub app_id: Address,
    /// dstack's chain under the purpose naming the instance and this node.
    pub proof: DstackProof,
    key: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("instance_id", &self.instance_id)
            .field("app_id", &self.app_id)
            .field("node", &self.address())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Asks dstack for the chain that vouches for `key` as the node of the instance `info` describes.
    ///
    /// # Errors
    /// [`NodeKeyError`]: GetKey failed, the instance has no id, or the reply makes no proof.
    pub async fn load(
        client: &DstackClient,
        info: &Info,
        key: SigningKey,
    ) -> Result<Self, NodeKeyError> {
        if info.instance_id.is_empty() {
            return Err(NodeKeyError::NoInstanceId);
        }
        let purpose = record::purpose(&info.instance_id, record::node_address(&key));
        let reply = client
            .get_key(record::KEY_PATH, &purpose)
            .await
            .map_err(|source| NodeKeyError::Dstack {
                call: "GetKey",
                source,
            })?;
        let proof = DstackProof::from_get_key(&reply, info.app_id, &purpose)
            .map_err(NodeKeyError::Proof)?;
        Ok(Self {
            instance_id: info.instance_id.clone(),
            app_id: info.app_id,
            proof,
            key,
        })
    }

    /// The node's address: what the seat is bound to, and what pays for its transactions once funded.
    pub fn address(&self) -> Address {
        record::node_address(&self.key)
    }

    /// Signs `record` for the cluster at `contract` on `chain_id`.
    ///
    /// # Errors
    /// [`RecordError`] when the proof does not name this node (never, for a key loaded here).
    pub fn sign(
        &self,
        record: PeerRecord,
        chain_id: u64,
        contract: Address,
    ) -> Result<SignedRegistration, RecordError> {
        SignedRegistration::sign(record, self.proof.clone(), &self.key, chain_id, contract)
    }

    /// This node's binding to a seat of the cluster at `contract` that `holder` holds or will be minted, with
    /// this instance's `evidence`.
    ///
    /// # Errors
    /// [`RecordError`] when the proof does not name this node (never, for a key loaded here).
    pub fn bind(
        &self,
        holder: Address,
        evidence: Bytes,
        chain_id: u64,
        contract: Address,
    ) -> Result<NodeBinding, RecordError> {
        NodeBinding::sign(
            self.instance_id.clone(),
            holder,
            self.proof.clone(),
            evidence,
            &self.key,
            chain_id,
            contract,
        )
    }

    /// A signer for transactions from the node's address.
    pub fn transaction_signer(&self) -> alloy::signers::local::PrivateKeySigner {
        alloy::signers::local::PrivateKeySigner::from_signing_key(self.key.clone())
    }
}
