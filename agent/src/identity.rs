//! Who this node is, as dstack attests it: its instance and app, the proof for its record-signing key, and
//! its WireGuard key.
//!
//! The WireGuard key is **derived** from dstack (GetKey at `dstack-mesh/wireguard/<instance_id>`), not
//! generated and sealed. The same instance gets the same key after every restart, so a restart needs no new
//! transaction; nothing secret is ever written to disk; and only this app's code in this instance can obtain
//! it, because dstack's KMS releases the app key only to attested instances and the path names the instance.
//! Rotating means moving to the next epoch (`…/<instance_id>/<epoch>`) and registering the new public key.

use std::fmt;

use alloy::primitives::{Address, B256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::dstack::{DerivedKey, DstackClient, DstackError};
use crate::proof::{
    self, BindConsent, DstackProof, PeerRecord, ProofError, SignedBindConsent, SignedRegistration,
};

/// GetKey path prefix of the WireGuard key; the instance id (and a rotation epoch above 0) follow.
pub const WG_KEY_PATH_PREFIX: &str = "dstack-mesh/wireguard/";

/// GetKey purpose of the WireGuard key. It only enters the app signature, which nobody checks for this key.
pub const WG_KEY_PURPOSE: &str = "dstack-mesh-wireguard";

/// Errors establishing the node's identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
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

/// The WireGuard private key; its `Debug` never shows it.
#[derive(Clone)]
pub struct WgSecret(StaticSecret);

impl WgSecret {
    /// The key for the WireGuard data plane. Callers must not log or persist it.
    pub fn expose_secret(&self) -> &StaticSecret {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgSecret(<redacted>)")
    }
}

/// GetKey path of the WireGuard key for `instance_id` at rotation `epoch`.
pub fn wg_key_path(instance_id: &str, epoch: u32) -> String {
    if epoch == 0 {
        format!("{WG_KEY_PATH_PREFIX}{instance_id}")
    } else {
        format!("{WG_KEY_PATH_PREFIX}{instance_id}/{epoch}")
    }
}

/// This node's identity, loaded from dstack.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// 40 lowercase hex characters.
    pub instance_id: String,
    pub app_id: Address,
    pub app_name: String,
    /// dstack's proof for the record-signing key.
    pub proof: DstackProof,
    signing_key: DerivedKey,
    wg_secret: WgSecret,
}

impl NodeIdentity {
    /// Reads Info, then the record-signing key and the WireGuard key (at rotation `wg_epoch`) from GetKey.
    ///
    /// # Errors
    /// [`IdentityError`] naming the dstack call that failed, or a missing instance id.
    pub async fn load(client: &DstackClient, wg_epoch: u32) -> Result<Self, IdentityError> {
        let info = client
            .info()
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "Info",
                source,
            })?;
        if info.instance_id.is_empty() {
            return Err(IdentityError::NoInstanceId);
        }
        let purpose = proof::purpose(&info.instance_id);
        let reply = client
            .get_key(&proof::key_path(&info.instance_id), &purpose)
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "GetKey",
                source,
            })?;
        let proof = DstackProof::from_get_key(&reply, info.app_id, &purpose)
            .map_err(IdentityError::Proof)?;
        let wg = client
            .get_key(&wg_key_path(&info.instance_id, wg_epoch), WG_KEY_PURPOSE)
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "GetKey",
                source,
            })?;
        let wg_secret = WgSecret(StaticSecret::from(*wg.key.expose_secret()));
        Ok(Self {
            instance_id: info.instance_id,
            app_id: info.app_id,
            app_name: info.app_name,
            proof,
            signing_key: reply.key,
            wg_secret,
        })
    }

    /// The address of the record-signing key: it can pay for its own registrations once funded.
    ///
    /// # Errors
    /// When the proof's derived key is not a curve point (dstack never returns such a key).
    pub fn derived_address(&self) -> Result<Address, ProofError> {
        self.proof.derived_address()
    }

    /// The WireGuard public key.
    pub fn wg_public_key(&self) -> B256 {
        B256::from(self.wg_secret.public_key())
    }

    /// The WireGuard private key, for the data plane.
    pub fn wg_secret(&self) -> &WgSecret {
        &self.wg_secret
    }

    /// Signs `record` for the cluster at `contract` on `chain_id`.
    ///
    /// # Errors
    /// [`ProofError`] when the signing key does not match the proof.
    pub fn sign(
        &self,
        record: PeerRecord,
        chain_id: u64,
        contract: Address,
    ) -> Result<SignedRegistration, ProofError> {
        SignedRegistration::sign(
            record,
            self.proof.clone(),
            &self.signing_key,
            chain_id,
            contract,
        )
    }

    /// This instance's consent to `holder` binding seat `token_id` of the cluster at `contract` to it.
    ///
    /// # Errors
    /// [`ProofError`] when the signing key does not match the proof.
    pub fn sign_bind_consent(
        &self,
        token_id: alloy::primitives::U256,
        holder: Address,
        chain_id: u64,
        contract: Address,
    ) -> Result<SignedBindConsent, ProofError> {
        let consent = BindConsent {
            tokenId: token_id,
            instanceId: self.instance_id.clone(),
            holder,
        };
        SignedBindConsent::sign(
            consent,
            self.proof.clone(),
            &self.signing_key,
            chain_id,
            contract,
        )
    }

    /// A signer for transactions from the derived address.
    ///
    /// # Errors
    /// When the derived key is not a valid secp256k1 scalar.
    pub fn transaction_signer(
        &self,
    ) -> Result<alloy::signers::local::PrivateKeySigner, ProofError> {
        alloy::signers::local::PrivateKeySigner::from_slice(self.signing_key.expose_secret())
            .map_err(|_| ProofError::InvalidDerivedKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch 0 is the plain instance path; later epochs append the epoch, so each rotation is a new key.
    #[test]
    fn wg_key_paths_name_the_instance_and_epoch() {
        let id = "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a";
        assert_eq!(
            wg_key_path(id, 0),
            "dstack-mesh/wireguard/59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a"
        );
        assert_eq!(
            wg_key_path(id, 2),
            "dstack-mesh/wireguard/59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a/2"
        );
    }

    /// The secret's Debug output never contains key material.
    #[test]
    fn wg_secret_debug_is_redacted() {
        let s = WgSecret(StaticSecret::from([7u8; 32]));
        assert_eq!(format!("{s:?}"), "WgSecret(<redacted>)");
    }
}
