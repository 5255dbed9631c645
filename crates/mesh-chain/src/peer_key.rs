//! This node's peer key: the key dstack derives for its instance at `dstack-mesh/peer/<instance_id>`, with
//! dstack's proof that it belongs to an instance of the app. It signs the node's records and its consents to
//! being bound to a seat, and can pay for its own registrations once funded. It never leaves the process.

use alloy_primitives::{Address, U256};
use dstack_guest::{DerivedKey, DstackClient, DstackError, DstackProof, Info, ProofError};

use crate::record::{
    self, BindConsent, PeerRecord, RecordError, SignedBindConsent, SignedRegistration,
};

/// Why the peer key could not be had from dstack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerKeyError {
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

/// The peer key of one instance.
#[derive(Debug, Clone)]
pub struct PeerKey {
    /// 40 lowercase hex characters.
    pub instance_id: String,
    pub app_id: Address,
    /// dstack's proof for the key.
    pub proof: DstackProof,
    key: DerivedKey,
}

impl PeerKey {
    /// Asks dstack for the peer key of the instance `info` describes.
    ///
    /// # Errors
    /// [`PeerKeyError`]: GetKey failed, the instance has no id, or the reply makes no proof.
    pub async fn load(client: &DstackClient, info: &Info) -> Result<Self, PeerKeyError> {
        if info.instance_id.is_empty() {
            return Err(PeerKeyError::NoInstanceId);
        }
        let purpose = record::purpose(&info.instance_id);
        let reply = client
            .get_key(&record::key_path(&info.instance_id), &purpose)
            .await
            .map_err(|source| PeerKeyError::Dstack {
                call: "GetKey",
                source,
            })?;
        let proof = DstackProof::from_get_key(&reply, info.app_id, &purpose)
            .map_err(PeerKeyError::Proof)?;
        Ok(Self {
            instance_id: info.instance_id.clone(),
            app_id: info.app_id,
            proof,
            key: reply.key,
        })
    }

    /// The key's address: it can pay for its own registrations once funded.
    ///
    /// # Errors
    /// When the proof's key is not a curve point (dstack never returns such a key).
    pub fn address(&self) -> Result<Address, ProofError> {
        self.proof.derived_address()
    }

    /// Signs `record` for the cluster at `contract` on `chain_id`.
    ///
    /// # Errors
    /// [`RecordError`] when the key does not match the proof.
    pub fn sign(
        &self,
        record: PeerRecord,
        chain_id: u64,
        contract: Address,
    ) -> Result<SignedRegistration, RecordError> {
        SignedRegistration::sign(record, self.proof.clone(), &self.key, chain_id, contract)
    }

    /// This instance's consent to `holder` binding seat `token_id` of the cluster at `contract` to it.
    ///
    /// # Errors
    /// [`RecordError`] when the key does not match the proof.
    pub fn sign_bind_consent(
        &self,
        token_id: U256,
        holder: Address,
        chain_id: u64,
        contract: Address,
    ) -> Result<SignedBindConsent, RecordError> {
        let consent = BindConsent {
            tokenId: token_id,
            instanceId: self.instance_id.clone(),
            holder,
        };
        SignedBindConsent::sign(consent, self.proof.clone(), &self.key, chain_id, contract)
    }

    /// A signer for transactions from the key's address.
    ///
    /// # Errors
    /// When the key is not a valid secp256k1 scalar.
    pub fn transaction_signer(
        &self,
    ) -> Result<alloy::signers::local::PrivateKeySigner, ProofError> {
        alloy::signers::local::PrivateKeySigner::from_slice(self.key.expose_secret())
            .map_err(|_| ProofError::InvalidDerivedKey)
    }
}
