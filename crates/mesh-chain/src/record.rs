//! The registration proof. A seat is bound to one node key, made from randomness inside its CVM (see
//! [`crate::node_key`]); the node key signs the seat's records under EIP-712, and dstack's GetKey signature chain
//! shows that an instance of an allowed app, under a trusted KMS, vouched for that node serving that instance.
//!
//! The cluster contract checks exactly what [`verify_registration`] checks, with the same constants:
//!
//! 1. the app key signed `PURPOSE_PREFIX ‖ instance_id ‖ ":" ‖ node ‖ ":" ‖ hex(compressed derived key)`
//!    ([`app_message`]), and the supplied app public key is the one that signed;
//! 2. the KMS root signed `"dstack-kms-issued:" ‖ app_id ‖ compressed app key` ([`kms_message`]);
//! 3. the app id is allowed, and the purpose names the instance being registered and the node that signed;
//! 4. the node key signed the [`PeerRecord`] under the cluster contract's EIP-712 domain;
//! 5. (the contract, and a reader that knows the binding) that node is the one the seat is bound to.
//!
//! dstack gives every instance of an app the same GetKey keys, so the chain proves "an instance of the app",
//! never which one: the binding (5), made by the seat's holder with the instance's TDX quote, is what keeps a
//! sibling instance out. dstack's chain hashes with raw keccak-256 (no EIP-191 prefix) and writes `v ∈ {0, 1}`;
//! the record signature is ordinary EIP-712 with `v ∈ {27, 28}`. All must have low `s`, as OpenZeppelin's
//! `ECDSA.recover` requires.
//!
//! [`app_message`]: dstack_guest::chain::app_message
//! [`kms_message`]: dstack_guest::chain::kms_message

use alloy::primitives::{Address, B256, Bytes, FixedBytes, Signature, U256};
use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};

use dstack_guest::chain::{
    DstackProof, ProofError, SigEncoding, VerifiedChain, parse_signature, verify_chain,
};

/// GetKey path whose signature chain vouches for the node key. The key dstack derives there is not used: the
/// node key is named in the purpose, which the app key signs.
pub const KEY_PATH: &str = "dstack-mesh/node";

/// GetKey purpose prefix; the full purpose is `dstack-mesh-node:<instance_id>:<node>` (40 lowercase hex
/// characters each). The contract rebuilds it from the seat's instance and bound node, so a proof made for one
/// instance or node cannot serve another.
pub const PURPOSE_PREFIX: &str = "dstack-mesh-node:";

/// EIP-712 domain name of the cluster contract.
pub const EIP712_NAME: &str = "DstackClusterNFT";

/// EIP-712 domain version of the cluster contract.
pub const EIP712_VERSION: &str = "1";

/// The EIP-712 type string of [`PeerRecord`], as the contract hashes it.
pub const PEER_RECORD_TYPE: &str = "PeerRecord(uint256 tokenId,string instanceId,bytes32 wgPublicKey,string endpoint,string gatewayUrl,uint64 nonce)";

/// The EIP-712 type string of [`BindConsent`], as the contract hashes it.
pub const BIND_CONSENT_TYPE: &str = "BindConsent(string instanceId,address node,address holder)";

alloy::sol! {
    /// What a peer publishes about itself; signed by its node key under EIP-712.
    #[derive(Debug, PartialEq, Eq)]
    struct PeerRecord {
        uint256 tokenId;
        string instanceId;
        bytes32 wgPublicKey;
        string endpoint;
        string gatewayUrl;
        uint64 nonce;
    }

    /// A node key's consent to a holder binding one of its seats to it; signed by the node key under EIP-712,
    /// so that nobody binds a seat to a key they do not hold, or another operator's node to their seat. It names
    /// no seat: the holder binds, or mints, the one it chooses, and the node finds it by its instance id.
    #[derive(Debug, PartialEq, Eq)]
    struct BindConsent {
        string instanceId;
        address node;
        address holder;
    }
}

/// Why a record (or a binding) could not be signed, or does not verify. Each check has its own variant;
/// dstack's chain has its own in [`ProofError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// dstack's signature chain does not verify.
    #[error(transparent)]
    Chain(#[from] ProofError),
    /// The node key is not a valid secp256k1 scalar.
    #[error("the node key is not a valid secp256k1 key")]
    InvalidNodeKey,
    /// The registration is for another instance than expected.
    #[error("registration is for instance {actual:?}, expected {expected:?}")]
    InstanceIdMismatch {
        /// The instance id the verifier expected.
        expected: String,
        /// The one in the registration.
        actual: String,
    },
    /// The app signature's purpose is not `PURPOSE_PREFIX ‖ instance_id ‖ ":" ‖ node`.
    #[error("proof purpose is {actual:?}, expected {expected:?}")]
    PurposeMismatch {
        /// The purpose that names the instance and the signer.
        expected: String,
        /// The proof's purpose.
        actual: String,
    },
    /// The record (or consent) was not signed by the node the proof names, or the seat is bound to.
    #[error("signed by {recovered}, not by the node key {node}")]
    RecordSignatureMismatch {
        /// The node that should have signed.
        node: Address,
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
    /// dstack's chain under the purpose naming the instance and the node.
    pub proof: DstackProof,
    /// EIP-712 signature of the [`PeerRecord`] by the node key; `v ∈ {27, 28}`.
    pub record_signature: FixedBytes<65>,
    /// EIP-712 domain chain id.
    pub chain_id: u64,
    /// EIP-712 domain verifying contract: the cluster contract.
    pub contract: Address,
}

/// What binds a seat to an instance's node key: what a seatless agent requests on-chain (or prints), and
/// `p2p-agent identity --bind-holder` prints in the instance; `meshctl bind` and `meshctl mint` send it, after
/// verifying it. It names no seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBinding {
    /// 40 lowercase hex digits from Info.
    pub instance_id: String,
    /// The node key's address.
    pub node: Address,
    /// Who may bind a seat to the node: the seat's holder, or whoever a new seat is minted to.
    pub holder: Address,
    /// dstack's chain under the purpose naming the instance and the node.
    pub proof: DstackProof,
    /// The TDX quote with its RTMR3 event log (`mesh_attest::Evidence` ABI bytes); its report data commits to
    /// the chain, the contract and the node.
    pub evidence: Bytes,
    /// EIP-712 signature of the [`BindConsent`] by the node key; `v ∈ {27, 28}`.
    pub consent: FixedBytes<65>,
    /// EIP-712 domain chain id.
    pub chain_id: u64,
    /// EIP-712 domain verifying contract: the cluster contract.
    pub contract: Address,
}

impl NodeBinding {
    /// The EIP-712 digest the node key signs.
    pub fn signing_hash(&self) -> B256 {
        BindConsent {
            instanceId: self.instance_id.clone(),
            node: self.node,
            holder: self.holder,
        }
        .eip712_signing_hash(&domain(self.chain_id, self.contract))
    }
}

/// GetKey purpose under which the app vouches for `node` serving `instance_id`.
pub fn purpose(instance_id: &str, node: Address) -> String {
    format!(
        "{PURPOSE_PREFIX}{instance_id}:{}",
        alloy::hex::encode(node.as_slice())
    )
}

/// The node a purpose names, if it has the shape `PURPOSE_PREFIX ‖ instance ‖ ":" ‖ node`.
fn node_in_purpose(purpose: &str, instance_id: &str) -> Option<Address> {
    let rest = purpose.strip_prefix(PURPOSE_PREFIX)?;
    let hex = rest.strip_prefix(instance_id)?.strip_prefix(':')?;
    (hex.len() == 40
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| hex.parse().ok())
    .flatten()
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

/// The address of a node key.
pub fn node_address(key: &SigningKey) -> Address {
    Address::from_public_key(key.verifying_key())
}

/// Checks that `proof` names `instance_id` and the node `key`, as the contract will.
fn check_purpose(proof: &DstackProof, instance_id: &str, node: Address) -> Result<(), RecordError> {
    let expected = purpose(instance_id, node);
    if proof.purpose == expected {
        Ok(())
    } else {
        Err(RecordError::PurposeMismatch {
            expected,
            actual: proof.purpose.clone(),
        })
    }
}

impl SignedRegistration {
    /// Signs `record` with the node key, under the cluster contract's domain.
    ///
    /// # Errors
    /// [`RecordError::PurposeMismatch`] when `proof` does not name the record's instance and this node key.
    pub fn sign(
        record: PeerRecord,
        proof: DstackProof,
        key: &SigningKey,
        chain_id: u64,
        contract: Address,
    ) -> Result<Self, RecordError> {
        check_purpose(&proof, &record.instanceId, node_address(key))?;
        let hash = record.eip712_signing_hash(&domain(chain_id, contract));
        let record_signature = sign_eip712(key, hash)?;
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

    /// The EIP-712 digest the node key signs.
    pub fn signing_hash(&self) -> B256 {
        self.peer_record()
            .eip712_signing_hash(&domain(self.chain_id, self.contract))
    }
}

impl NodeBinding {
    /// The node key's binding for `holder`, with `proof` (which must name the instance and this node) and the
    /// instance's `evidence`.
    ///
    /// # Errors
    /// [`RecordError::PurposeMismatch`] when `proof` does not name the instance and this node key.
    pub fn sign(
        instance_id: String,
        holder: Address,
        proof: DstackProof,
        evidence: Bytes,
        key: &SigningKey,
        chain_id: u64,
        contract: Address,
    ) -> Result<Self, RecordError> {
        let node = node_address(key);
        check_purpose(&proof, &instance_id, node)?;
        let mut binding = Self {
            instance_id,
            node,
            holder,
            proof,
            evidence,
            consent: FixedBytes::ZERO,
            chain_id,
            contract,
        };
        binding.consent = sign_eip712(key, binding.signing_hash())?;
        Ok(binding)
    }
}

/// What a verified registration establishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedRecord {
    /// The node key that signed the record, which the proof names.
    pub node: Address,
    /// The chain that vouched for it.
    pub chain: VerifiedChain,
}

/// Checks a registration as the contract does: it is for `expected_instance_id`, it was signed by the node its
/// proof's purpose names together with that instance (and by `bound_node`, when the reader knows the seat's
/// binding), and the chain verifies ([`verify_chain`]). Callers must also compare `reg.chain_id` and
/// `reg.contract` with their own cluster; the contract does so by using its own address.
///
/// # Errors
/// The [`RecordError`] of the first check that fails.
pub fn verify_registration(
    reg: &SignedRegistration,
    kms_root: Address,
    allowed_app_ids: &[Address],
    expected_instance_id: &str,
    bound_node: Option<Address>,
) -> Result<VerifiedRecord, RecordError> {
    if reg.instance_id != expected_instance_id {
        return Err(RecordError::InstanceIdMismatch {
            expected: expected_instance_id.to_owned(),
            actual: reg.instance_id.clone(),
        });
    }
    let signer = recover_eip712(
        "record_signature",
        &reg.record_signature,
        reg.signing_hash(),
    )?;
    if let Some(node) = bound_node.or_else(|| node_in_purpose(&reg.proof.purpose, &reg.instance_id))
        && node != signer
    {
        return Err(RecordError::RecordSignatureMismatch {
            node,
            recovered: signer,
        });
    }
    check_purpose(&reg.proof, &reg.instance_id, signer)?;
    let chain = verify_chain(&reg.proof, kms_root, allowed_app_ids)?;
    Ok(VerifiedRecord {
        node: signer,
        chain,
    })
}

/// Checks a binding as the contract does: its proof names the instance and the node and verifies, and the node
/// key signed the consent under the binding's domain. It does not verify the evidence (`mesh_attest` does).
/// Callers compare `binding.chain_id`, `binding.contract` and the holder with what they are about to send.
///
/// # Errors
/// The [`RecordError`] of the first check that fails.
pub fn verify_binding(
    binding: &NodeBinding,
    kms_root: Address,
    allowed_app_ids: &[Address],
) -> Result<VerifiedChain, RecordError> {
    check_purpose(&binding.proof, &binding.instance_id, binding.node)?;
    let chain = verify_chain(&binding.proof, kms_root, allowed_app_ids)?;
    let recovered = recover_eip712("consent", &binding.consent, binding.signing_hash())?;
    if recovered != binding.node {
        return Err(RecordError::RecordSignatureMismatch {
            node: binding.node,
            recovered,
        });
    }
    Ok(chain)
}

/// Signs an EIP-712 digest with the node key.
fn sign_eip712(key: &SigningKey, hash: B256) -> Result<FixedBytes<65>, RecordError> {
    let (sig, recid) = key
        .sign_prehash_recoverable(hash.as_slice())
        .map_err(|_| RecordError::InvalidNodeKey)?;
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
mod tests;
