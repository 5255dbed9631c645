//! The registration proof: dstack's GetKey signature chain, which shows that a key was derived inside a
//! CVM of an allowed app under a trusted KMS, plus an EIP-712 signature by that key over the peer record.
//!
//! The cluster contract checks exactly what [`verify_registration`] checks, with the same constants:
//!
//! 1. the app key signed `PURPOSE_PREFIX ‖ instance_id ‖ ":" ‖ hex(compressed derived key)`
//!    ([`app_message`]), and the supplied app public key is the one that signed;
//! 2. the KMS root signed `"dstack-kms-issued:" ‖ app_id ‖ compressed app key` ([`kms_message`]);
//! 3. the app id is allowed, and the purpose names the instance being registered;
//! 4. the derived key signed the [`PeerRecord`] under the cluster contract's EIP-712 domain.
//!
//! dstack's chain hashes with raw keccak-256 (no EIP-191 prefix) and writes `v ∈ {0, 1}`; the record
//! signature is ordinary EIP-712 with `v ∈ {27, 28}`. All three must have low `s`, as OpenZeppelin's
//! `ECDSA.recover` requires.

use alloy::primitives::{Address, B256, FixedBytes, Signature, U256};
use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};
use serde::{Deserialize, Serialize};

use dstack_guest::chain::{
    DstackProof, ProofError, SigEncoding, VerifiedChain, parse_signature, verify_chain,
};
use dstack_guest::client::DerivedKey;

/// GetKey path prefix for the record-signing key; the full path is `dstack-mesh/peer/<instance_id>`.
pub const KEY_PATH_PREFIX: &str = "dstack-mesh/peer/";

/// GetKey purpose prefix; the full purpose is `dstack-mesh-peer:<instance_id>`, which the app key signs.
/// The contract rebuilds the purpose from the instance id being registered, so a proof made for one
/// instance cannot register another.
pub const PURPOSE_PREFIX: &str = "dstack-mesh-peer:";

/// EIP-712 domain name of the cluster contract.
pub const EIP712_NAME: &str = "DstackClusterNFT";

/// EIP-712 domain version of the cluster contract.
pub const EIP712_VERSION: &str = "1";

/// The EIP-712 type string of [`PeerRecord`], as the contract hashes it.
pub const PEER_RECORD_TYPE: &str = "PeerRecord(uint256 tokenId,string instanceId,bytes32 wgPublicKey,string endpoint,string gatewayUrl,uint64 nonce)";

/// The EIP-712 type string of [`BindConsent`], as the contract hashes it.
pub const BIND_CONSENT_TYPE: &str = "BindConsent(uint256 tokenId,string instanceId,address holder)";

alloy::sol! {
    /// What a peer publishes about itself; signed by its dstack-derived key under EIP-712.
    #[derive(Debug, PartialEq, Eq)]
    struct PeerRecord {
        uint256 tokenId;
        string instanceId;
        bytes32 wgPublicKey;
        string endpoint;
        string gatewayUrl;
        uint64 nonce;
    }

    /// An instance's consent to the holder of a seat binding that seat to it; signed by the instance's
    /// dstack-derived peer key under EIP-712. Instance ids are public, so without it anyone could bind
    /// another operator's node to a seat of their own.
    #[derive(Debug, PartialEq, Eq)]
    struct BindConsent {
        uint256 tokenId;
        string instanceId;
        address holder;
    }
}

/// Why a record (or a bind consent) could not be signed, or does not verify. Each check has its own variant;
/// dstack's chain has its own in [`ProofError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// dstack's signature chain does not verify.
    #[error(transparent)]
    Chain(#[from] ProofError),
    /// The key given for signing is not the proof's derived key.
    #[error("the signing key {signing_address} is not the proof's derived key {derived_address}")]
    DerivedKeyMismatch {
        /// Address of the key given.
        signing_address: Address,
        /// Address of the proof's derived key.
        derived_address: Address,
    },
    /// The registration is for another instance than expected.
    #[error("registration is for instance {actual:?}, expected {expected:?}")]
    InstanceIdMismatch {
        /// The instance id the verifier expected.
        expected: String,
        /// The one in the registration.
        actual: String,
    },
    /// The app signature's purpose is not `PURPOSE_PREFIX ‖ instance_id`.
    #[error("proof purpose is {actual:?}, expected {expected:?}")]
    PurposeMismatch {
        /// `PURPOSE_PREFIX ‖ instance_id`.
        expected: String,
        /// The proof's purpose.
        actual: String,
    },
    /// The record was not signed by the derived key.
    #[error("record signature recovers {recovered}, not the derived key {derived_address}")]
    RecordSignatureMismatch {
        /// Address of the proof's derived key.
        derived_address: Address,
        /// Who actually signed.
        recovered: Address,
    },
}

/// A peer record with its proof and signature, ready for the contract or a relay (serialises to JSON
/// with `0x` hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRegistration {
    /// The cluster NFT the peer registers under.
    pub token_id: U256,
    /// 40 lowercase hex digits from Info.
    pub instance_id: String,
    /// The peer's WireGuard public key.
    pub wg_public_key: B256,
    /// The peer's WireGuard endpoint, `host:port`, or empty.
    pub endpoint: String,
    /// The peer's gateway URL, or empty.
    pub gateway_url: String,
    /// Replay counter; the contract requires it to increase.
    pub nonce: u64,
    /// The dstack chain for the derived key.
    pub proof: DstackProof,
    /// EIP-712 signature of the [`PeerRecord`] by the derived key; `v ∈ {27, 28}`.
    pub record_signature: FixedBytes<65>,
    /// EIP-712 domain chain id.
    pub chain_id: u64,
    /// EIP-712 domain verifying contract: the cluster contract.
    pub contract: Address,
}

/// An instance's signed [`BindConsent`], with the proof that the signing key is that instance's: what
/// `p2p-agent identity --bind-token` prints and `meshctl bind --consent` sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBindConsent {
    /// The seat the instance agrees to be bound to.
    pub token_id: U256,
    /// 40 lowercase hex digits from Info.
    pub instance_id: String,
    /// Who holds the seat.
    pub holder: Address,
    /// The dstack chain for the instance's peer key.
    pub proof: DstackProof,
    /// EIP-712 signature of the [`BindConsent`] by the derived key; `v ∈ {27, 28}`.
    pub signature: FixedBytes<65>,
    /// EIP-712 domain chain id.
    pub chain_id: u64,
    /// EIP-712 domain verifying contract: the cluster contract.
    pub contract: Address,
}

impl SignedBindConsent {
    /// Signs the consent with the derived key behind `proof`.
    ///
    /// # Errors
    /// [`RecordError::DerivedKeyMismatch`] when `key` is not the proof's derived key.
    pub fn sign(
        consent: BindConsent,
        proof: DstackProof,
        key: &DerivedKey,
        chain_id: u64,
        contract: Address,
    ) -> Result<Self, RecordError> {
        let hash = consent.eip712_signing_hash(&domain(chain_id, contract));
        let signature = sign_eip712(key, &proof, hash)?;
        Ok(Self {
            token_id: consent.tokenId,
            instance_id: consent.instanceId,
            holder: consent.holder,
            proof,
            signature,
            chain_id,
            contract,
        })
    }

    /// The EIP-712 digest the derived key signs.
    pub fn signing_hash(&self) -> B256 {
        BindConsent {
            tokenId: self.token_id,
            instanceId: self.instance_id.clone(),
            holder: self.holder,
        }
        .eip712_signing_hash(&domain(self.chain_id, self.contract))
    }
}

/// GetKey path of the record-signing key for `instance_id`.
pub fn key_path(instance_id: &str) -> String {
    format!("{KEY_PATH_PREFIX}{instance_id}")
}

/// GetKey purpose of the record-signing key for `instance_id`.
pub fn purpose(instance_id: &str) -> String {
    format!("{PURPOSE_PREFIX}{instance_id}")
}

/// The cluster contract's EIP-712 domain.
pub fn domain(chain_id: u64, contract: Address) -> Eip712Domain {
    eip712_domain! {
        name: EIP712_NAME,
        version: EIP712_VERSION,
        chain_id: chain_id,
        verifying_contract: contract,
    }
}

impl SignedRegistration {
    /// Signs `record` with the derived key behind `proof`, under the cluster contract's domain.
    ///
    /// # Errors
    /// [`RecordError::DerivedKeyMismatch`] when `key` is not the proof's derived key.
    pub fn sign(
        record: PeerRecord,
        proof: DstackProof,
        key: &DerivedKey,
        chain_id: u64,
        contract: Address,
    ) -> Result<Self, RecordError> {
        let hash = record.eip712_signing_hash(&domain(chain_id, contract));
        let record_signature = sign_eip712(key, &proof, hash)?;
        Ok(Self {
            token_id: record.tokenId,
            instance_id: record.instanceId,
            wg_public_key: record.wgPublicKey,
            endpoint: record.endpoint,
            gateway_url: record.gatewayUrl,
            nonce: record.nonce,
            proof,
            record_signature,
            chain_id,
            contract,
        })
    }

    /// The signed record.
    pub fn peer_record(&self) -> PeerRecord {
        PeerRecord {
            tokenId: self.token_id,
            instanceId: self.instance_id.clone(),
            wgPublicKey: self.wg_public_key,
            endpoint: self.endpoint.clone(),
            gatewayUrl: self.gateway_url.clone(),
            nonce: self.nonce,
        }
    }

    /// The EIP-712 digest the derived key signs.
    pub fn signing_hash(&self) -> B256 {
        self.peer_record()
            .eip712_signing_hash(&domain(self.chain_id, self.contract))
    }
}

/// Checks a registration as the contract does: it is for `expected_instance_id`, its proof's purpose
/// names that instance, the chain verifies ([`verify_chain`]), and the derived key signed the record
/// under the registration's domain. Callers must also compare `reg.chain_id` and `reg.contract` with
/// their own cluster; the contract does so by using its own address.
///
/// # Errors
/// The [`RecordError`] of the first check that fails.
pub fn verify_registration(
    reg: &SignedRegistration,
    kms_root: Address,
    allowed_app_ids: &[Address],
    expected_instance_id: &str,
) -> Result<VerifiedChain, RecordError> {
    if reg.instance_id != expected_instance_id {
        return Err(RecordError::InstanceIdMismatch {
            expected: expected_instance_id.to_owned(),
            actual: reg.instance_id.clone(),
        });
    }
    let expected_purpose = purpose(&reg.instance_id);
    if reg.proof.purpose != expected_purpose {
        return Err(RecordError::PurposeMismatch {
            expected: expected_purpose,
            actual: reg.proof.purpose.clone(),
        });
    }
    let chain = verify_chain(&reg.proof, kms_root, allowed_app_ids)?;
    let recovered = recover_eip712(
        "record_signature",
        &reg.record_signature,
        reg.signing_hash(),
    )?;
    if recovered != chain.derived_address {
        return Err(RecordError::RecordSignatureMismatch {
            derived_address: chain.derived_address,
            recovered,
        });
    }
    Ok(chain)
}

/// Checks a bind consent as the contract does: its proof names the instance and verifies, and the derived
/// key signed the consent under the consent's domain. Callers compare `consent.chain_id`,
/// `consent.contract`, the seat and the holder with what they are about to send.
///
/// # Errors
/// The [`RecordError`] of the first check that fails.
pub fn verify_bind_consent(
    consent: &SignedBindConsent,
    kms_root: Address,
    allowed_app_ids: &[Address],
) -> Result<VerifiedChain, RecordError> {
    let expected_purpose = purpose(&consent.instance_id);
    if consent.proof.purpose != expected_purpose {
        return Err(RecordError::PurposeMismatch {
            expected: expected_purpose,
            actual: consent.proof.purpose.clone(),
        });
    }
    let chain = verify_chain(&consent.proof, kms_root, allowed_app_ids)?;
    let recovered = recover_eip712("signature", &consent.signature, consent.signing_hash())?;
    if recovered != chain.derived_address {
        return Err(RecordError::RecordSignatureMismatch {
            derived_address: chain.derived_address,
            recovered,
        });
    }
    Ok(chain)
}

/// Signs an EIP-712 digest with `key`, which must be the derived key of `proof`.
fn sign_eip712(
    key: &DerivedKey,
    proof: &DstackProof,
    hash: B256,
) -> Result<FixedBytes<65>, RecordError> {
    let signing = key
        .signing_key()
        .map_err(|_| ProofError::InvalidDerivedKey)?;
    let signing_address = Address::from_public_key(signing.verifying_key());
    let derived_address = proof.derived_address()?;
    if signing_address != derived_address {
        return Err(RecordError::DerivedKeyMismatch {
            signing_address,
            derived_address,
        });
    }
    let (sig, recid) = signing
        .sign_prehash_recoverable(hash.as_slice())
        .map_err(|_| ProofError::InvalidDerivedKey)?;
    Ok(Signature::from_signature_and_parity(sig, recid.is_y_odd())
        .as_bytes()
        .into())
}

/// Who made an EIP-712 signature (`v ∈ {27, 28}`, low `s`) over `hash`.
fn recover_eip712(
    field: &'static str,
    signature: &FixedBytes<65>,
    hash: B256,
) -> Result<Address, RecordError> {
    parse_signature(field, &signature.0, SigEncoding::Ethereum)?
        .recover_address_from_prehash(&hash)
        .map_err(|_| ProofError::Unrecoverable { field }.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::address;
    use dstack_guest::chain::{
        app_message, compressed, kms_message, public_key_from_xy, sign_dstack_message,
        uncompressed_xy,
    };
    use dstack_guest::client::GetKeyReply;
    use k256::ecdsa::SigningKey;

    // dstack simulator fixture A (Aug 2025), reference §2.7: an app id and KMS root these tests do not use.
    const A_APP_ID: Address = address!("ea549f02e1a25fabd1cb788380e033ec5461b2ff");
    const A_KMS_ROOT: Address = address!("8f2cF602C9695b23130367ed78d8F557554de7C5");

    fn sk(bytes: [u8; 32]) -> SigningKey {
        SigningKey::from_slice(&bytes).unwrap()
    }

    fn reply(key: [u8; 32], app_signature: [u8; 65], kms_signature: [u8; 65]) -> GetKeyReply {
        GetKeyReply::new(DerivedKey::from_bytes(key), app_signature, kms_signature)
    }

    /// A test cluster: a KMS root, an app key it issued, and a derived key for one instance.
    struct Cluster {
        kms: SigningKey,
        app: SigningKey,
        app_id: Address,
    }

    const INSTANCE: &str = "1111111111111111111111111111111111111111";
    const OTHER_INSTANCE: &str = "2222222222222222222222222222222222222222";
    const CONTRACT: Address = address!("00000000000000000000000000000000c0ffee00");

    impl Cluster {
        fn new() -> Self {
            Self {
                kms: sk([0x11; 32]),
                app: sk([0x22; 32]),
                app_id: address!("abababababababababababababababababababab"),
            }
        }

        fn kms_root(&self) -> Address {
            Address::from_public_key(self.kms.verifying_key())
        }

        fn get_key(&self, derived: [u8; 32], purpose: &str) -> GetKeyReply {
            let d = sk(derived);
            let sig0 = sign_dstack_message(
                &self.app,
                &app_message(purpose, &compressed(d.verifying_key())),
            )
            .unwrap();
            let sig1 = sign_dstack_message(
                &self.kms,
                &kms_message(self.app_id, &compressed(self.app.verifying_key())),
            )
            .unwrap();
            reply(derived, sig0, sig1)
        }

        fn registration(&self, derived: [u8; 32], instance: &str) -> SignedRegistration {
            let r = self.get_key(derived, &purpose(instance));
            let proof = DstackProof::from_get_key(&r, self.app_id, &purpose(instance)).unwrap();
            SignedRegistration::sign(record(instance), proof, &r.key, 31337, CONTRACT).unwrap()
        }
    }

    fn record(instance: &str) -> PeerRecord {
        PeerRecord {
            tokenId: U256::from(7),
            instanceId: instance.to_owned(),
            wgPublicKey: B256::repeat_byte(0x42),
            endpoint: "203.0.113.7:51820".into(),
            gatewayUrl: String::new(),
            nonce: 1,
        }
    }

    /// The sol! structs hash the exact type strings the contract uses.
    #[test]
    fn eip712_type_strings_are_the_contracts() {
        assert_eq!(PeerRecord::eip712_encode_type(), PEER_RECORD_TYPE);
        assert_eq!(BindConsent::eip712_encode_type(), BIND_CONSENT_TYPE);
    }

    fn consent(
        c: &Cluster,
        derived: [u8; 32],
        instance: &str,
        holder: Address,
    ) -> SignedBindConsent {
        let r = c.get_key(derived, &purpose(instance));
        let proof = DstackProof::from_get_key(&r, c.app_id, &purpose(instance)).unwrap();
        let consent = BindConsent {
            tokenId: U256::from(7),
            instanceId: instance.to_owned(),
            holder,
        };
        SignedBindConsent::sign(consent, proof, &r.key, 31337, CONTRACT).unwrap()
    }

    /// An instance's consent verifies; moved to another holder or instance, or re-encoded, it does not.
    #[test]
    fn bind_consent_verifies_only_as_signed() {
        let c = Cluster::new();
        let holder = Address::repeat_byte(0x0a);
        let good = consent(&c, [0x33; 32], INSTANCE, holder);
        let back: SignedBindConsent =
            serde_json::from_str(&serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(
            back, good,
            "JSON round trip (what meshctl bind --consent reads)"
        );
        verify_bind_consent(&good, c.kms_root(), &[c.app_id]).unwrap();

        let mut other_holder = good.clone();
        other_holder.holder = Address::repeat_byte(0x0b);
        let err = verify_bind_consent(&other_holder, c.kms_root(), &[c.app_id]).unwrap_err();
        assert!(
            matches!(err, RecordError::RecordSignatureMismatch { .. }),
            "{err}"
        );

        let mut other_instance = good.clone();
        other_instance.instance_id = OTHER_INSTANCE.into();
        let err = verify_bind_consent(&other_instance, c.kms_root(), &[c.app_id]).unwrap_err();
        assert!(matches!(err, RecordError::PurposeMismatch { .. }), "{err}");

        let mut re_encoded = good;
        re_encoded.signature.0[64] -= 27;
        let err = verify_bind_consent(&re_encoded, c.kms_root(), &[c.app_id]).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Chain(ProofError::InvalidSignature {
                    field: "signature",
                    ..
                })
            ),
            "{err}"
        );
    }

    /// An honest registration verifies, and survives a JSON round trip (the relay format).
    #[test]
    fn honest_registration_verifies_after_json_round_trip() {
        let c = Cluster::new();
        let reg = c.registration([0x33; 32], INSTANCE);
        let json = serde_json::to_string(&reg).unwrap();
        assert!(json.contains("\"record_signature\":\"0x"), "{json}");
        let back: SignedRegistration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reg);
        let v = verify_registration(&back, c.kms_root(), &[c.app_id], INSTANCE).unwrap();
        assert_eq!(
            v.derived_address,
            Address::from_public_key(sk([0x33; 32]).verifying_key())
        );
        assert!(matches!(reg.record_signature[64], 27 | 28));
    }

    /// A chain checked against another KMS root fails with the recovered root named.
    #[test]
    fn wrong_kms_root_is_rejected() {
        let c = Cluster::new();
        let reg = c.registration([0x33; 32], INSTANCE);
        let err = verify_registration(&reg, A_KMS_ROOT, &[c.app_id], INSTANCE).unwrap_err();
        assert_eq!(
            err,
            RecordError::Chain(ProofError::KmsRootMismatch {
                expected: A_KMS_ROOT,
                recovered: c.kms_root()
            })
        );
    }

    /// An app id outside the allowed list is rejected even though its chain is genuine.
    #[test]
    fn disallowed_app_id_is_rejected() {
        let c = Cluster::new();
        let reg = c.registration([0x33; 32], INSTANCE);
        let err = verify_registration(&reg, c.kms_root(), &[A_APP_ID], INSTANCE).unwrap_err();
        assert_eq!(
            err,
            RecordError::Chain(ProofError::AppIdNotAllowed(c.app_id))
        );
    }

    /// Claiming an allowed app id that the KMS did not sign for breaks the KMS signature.
    #[test]
    fn swapped_app_id_breaks_kms_signature() {
        let c = Cluster::new();
        let mut reg = c.registration([0x33; 32], INSTANCE);
        reg.proof.app_id = A_APP_ID;
        let err = verify_registration(&reg, c.kms_root(), &[A_APP_ID], INSTANCE).unwrap_err();
        assert!(
            matches!(err, RecordError::Chain(ProofError::KmsRootMismatch { expected, .. }) if expected == c.kms_root()),
            "{err}"
        );
    }

    /// An app signature made by a key other than the supplied app key is rejected, naming both.
    #[test]
    fn app_signature_by_another_key_is_rejected() {
        let c = Cluster::new();
        let mut reg = c.registration([0x33; 32], INSTANCE);
        let impostor = sk([0x44; 32]);
        let derived = public_key_from_xy("d", &reg.proof.derived_public_key).unwrap();
        reg.proof.app_signature = sign_dstack_message(
            &impostor,
            &app_message(&reg.proof.purpose, &compressed(&derived)),
        )
        .unwrap()
        .into();
        let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE).unwrap_err();
        assert_eq!(
            err,
            RecordError::Chain(ProofError::AppSignatureMismatch {
                app_key_address: Address::from_public_key(c.app.verifying_key()),
                recovered: Address::from_public_key(impostor.verifying_key()),
            })
        );
    }

    /// Passing off an impostor app key (which did sign) fails at the KMS, which never issued it.
    #[test]
    fn impostor_app_key_fails_at_kms() {
        let c = Cluster::new();
        let mut reg = c.registration([0x33; 32], INSTANCE);
        let impostor = sk([0x44; 32]);
        let derived = public_key_from_xy("d", &reg.proof.derived_public_key).unwrap();
        reg.proof.app_public_key = uncompressed_xy(impostor.verifying_key());
        reg.proof.app_signature = sign_dstack_message(
            &impostor,
            &app_message(&reg.proof.purpose, &compressed(&derived)),
        )
        .unwrap()
        .into();
        let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE).unwrap_err();
        assert!(
            matches!(err, RecordError::Chain(ProofError::KmsRootMismatch { .. })),
            "{err}"
        );
    }

    /// A genuine proof made for another instance cannot register this one.
    #[test]
    fn proof_for_another_instance_is_rejected() {
        let c = Cluster::new();
        let other = c.registration([0x33; 32], OTHER_INSTANCE);
        let r = other.proof.clone();
        let key = DerivedKey::from_bytes([0x33; 32]);
        let forged = SignedRegistration::sign(record(INSTANCE), r, &key, 31337, CONTRACT).unwrap();
        let err = verify_registration(&forged, c.kms_root(), &[c.app_id], INSTANCE).unwrap_err();
        assert_eq!(
            err,
            RecordError::PurposeMismatch {
                expected: purpose(INSTANCE),
                actual: purpose(OTHER_INSTANCE)
            }
        );
        let err = verify_registration(&other, c.kms_root(), &[c.app_id], INSTANCE).unwrap_err();
        assert!(
            matches!(err, RecordError::InstanceIdMismatch { .. }),
            "{err}"
        );
    }

    /// A record signed by a key other than the derived one is rejected.
    #[test]
    fn record_signed_by_another_key_is_rejected() {
        let c = Cluster::new();
        let mut reg = c.registration([0x33; 32], INSTANCE);
        let other = sk([0x55; 32]);
        let (sig, recid) = other
            .sign_prehash_recoverable(reg.signing_hash().as_slice())
            .unwrap();
        reg.record_signature = Signature::from_signature_and_parity(sig, recid.is_y_odd())
            .as_bytes()
            .into();
        let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE).unwrap_err();
        assert_eq!(
            err,
            RecordError::RecordSignatureMismatch {
                derived_address: Address::from_public_key(sk([0x33; 32]).verifying_key()),
                recovered: Address::from_public_key(other.verifying_key()),
            }
        );
    }

    /// Changing any record field after signing breaks the record signature.
    #[test]
    fn tampered_record_is_rejected() {
        let c = Cluster::new();
        let mut reg = c.registration([0x33; 32], INSTANCE);
        reg.endpoint = "198.51.100.1:51820".into();
        let err = verify_registration(&reg, c.kms_root(), &[c.app_id], INSTANCE).unwrap_err();
        assert!(
            matches!(err, RecordError::RecordSignatureMismatch { .. }),
            "{err}"
        );
    }

    /// Signing a record with a key that is not the proof's derived key is refused up front.
    #[test]
    fn signing_with_the_wrong_key_is_refused() {
        let c = Cluster::new();
        let reg = c.registration([0x33; 32], INSTANCE);
        let err = SignedRegistration::sign(
            record(INSTANCE),
            reg.proof,
            &DerivedKey::from_bytes([0x66; 32]),
            31337,
            CONTRACT,
        )
        .unwrap_err();
        assert!(
            matches!(err, RecordError::DerivedKeyMismatch { .. }),
            "{err}"
        );
    }

    /// The key path and purpose are built from the fixed prefixes.
    #[test]
    fn key_path_and_purpose_use_the_prefixes() {
        assert_eq!(key_path(INSTANCE), format!("dstack-mesh/peer/{INSTANCE}"));
        assert_eq!(purpose(INSTANCE), format!("dstack-mesh-peer:{INSTANCE}"));
    }
}
