//! dstack's GetKey signature chain: the proof that a key was derived inside a CVM of an app, under a KMS.
//!
//! With every derived key D, dstack's guest agent returns two signatures:
//! 1. the app key A signs raw `keccak256(purpose ‖ ":" ‖ lowercase-hex(compressed D))` ([`app_message`]);
//! 2. the KMS root K signs raw `keccak256("dstack-kms-issued:" ‖ app_id ‖ compressed A)` ([`kms_message`]).
//!
//! Both are 65 bytes `r ‖ s ‖ v` with `v ∈ {0, 1}` and no EIP-191 prefix. dstack does not return A, so a
//! [`DstackProof`] recovers it from the first signature. [`verify_chain`] checks a proof against a KMS root
//! and the app ids a verifier allows. Every signature must have low `s` and its one encoding of `v`
//! ([`parse_signature`]), as Ethereum contracts (OpenZeppelin's ECDSA) require.

use alloy_primitives::{Address, B512, FixedBytes, Signature, keccak256};
use k256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::client::{DerivedKey, GetKeyReply};

/// What the KMS root signs before the app id and app key (dstack's `kms/src/crypto.rs`).
pub const KMS_ISSUED_PREFIX: &[u8] = b"dstack-kms-issued:";

/// Why a proof could not be built or does not verify. Each check has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// A 64-byte `X ‖ Y` field is not a point on secp256k1.
    #[error("{field} is not a secp256k1 public key")]
    InvalidPublicKey {
        /// `derived_public_key` or `app_public_key`.
        field: &'static str,
    },
    /// A signature is malformed: wrong `v`, high `s`, or `r`/`s` out of range.
    #[error("{field} is malformed: {reason}")]
    InvalidSignature {
        /// Which signature.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// No public key can be recovered from a signature over its message.
    #[error("{field} does not recover to any key")]
    Unrecoverable {
        /// The signature field.
        field: &'static str,
    },
    /// The derived key is not a usable secp256k1 scalar.
    #[error("the derived key is not a valid secp256k1 private key")]
    InvalidDerivedKey,
    /// The app signature was not made by the supplied app public key.
    #[error("app signature recovers {recovered}, not the supplied app key {app_key_address}")]
    AppSignatureMismatch {
        /// Address of `app_public_key`.
        app_key_address: Address,
        /// Who actually signed.
        recovered: Address,
    },
    /// The app key was not issued by the trusted KMS root.
    #[error("KMS signature recovers {recovered}, not the trusted KMS root {expected}")]
    KmsRootMismatch {
        /// The trusted root.
        expected: Address,
        /// Who actually signed.
        recovered: Address,
    },
    /// The proof's app is not one of the allowed apps.
    #[error("app id {0} is not allowed in this cluster")]
    AppIdNotAllowed(Address),
}

/// dstack's proof that `derived_public_key` came from GetKey in a CVM of `app_id`.
/// Keys are uncompressed `X ‖ Y` (64 bytes, no `0x04`): contracts derive the compressed form and the
/// address from them cheaply, where decompressing would not be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DstackProof {
    /// The GetKey-derived public key.
    pub derived_public_key: B512,
    /// The app key, recovered from the app signature when the proof is built.
    pub app_public_key: B512,
    /// `signature_chain[0]`: the app key over [`app_message`]; `v ∈ {0, 1}`.
    pub app_signature: FixedBytes<65>,
    /// `signature_chain[1]`: the KMS root over [`kms_message`]; `v ∈ {0, 1}`.
    pub kms_signature: FixedBytes<65>,
    /// The app id from Info.
    pub app_id: Address,
    /// The GetKey purpose.
    pub purpose: String,
}

/// What a verified chain establishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The (allowed) app.
    pub app_id: Address,
    /// The app key's address.
    pub app_key_address: Address,
    /// The derived key's address: the holder's signing identity.
    pub derived_address: Address,
    /// The KMS root that issued the app key.
    pub kms_root: Address,
}

/// What the app key signs: `purpose ‖ ":" ‖ lowercase hex of the key` (the 33-byte compressed
/// secp256k1 key, or a 32-byte Ed25519 key), with no `0x`.
pub fn app_message(purpose: &str, derived_key: &[u8]) -> Vec<u8> {
    format!("{purpose}:{}", hex::encode(derived_key)).into_bytes()
}

/// What the KMS root signs: `"dstack-kms-issued:" ‖ app_id (20 raw bytes) ‖ compressed app key (33)`.
pub fn kms_message(app_id: Address, app_public_key_compressed: &[u8; 33]) -> Vec<u8> {
    [
        KMS_ISSUED_PREFIX,
        app_id.as_slice(),
        app_public_key_compressed.as_slice(),
    ]
    .concat()
}

/// Signs `message` as dstack does: raw keccak-256, RFC 6979, low `s`, 65 bytes `r ‖ s ‖ v`, `v ∈ {0, 1}`.
///
/// # Errors
/// Only if k256 cannot sign the digest (never for a valid key).
pub fn sign_dstack_message(key: &SigningKey, message: &[u8]) -> Result<[u8; 65], ProofError> {
    let (sig, recid) = key
        .sign_prehash_recoverable(keccak256(message).as_slice())
        .map_err(|_| ProofError::InvalidDerivedKey)?;
    Ok(Signature::from_signature_and_parity(sig, recid.is_y_odd()).as_rsy())
}

/// The 33-byte SEC1 compressed form.
pub fn compressed(key: &VerifyingKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out.copy_from_slice(key.to_encoded_point(true).as_bytes());
    out
}

/// The 64-byte uncompressed `X ‖ Y` form, without the `0x04` tag.
pub fn uncompressed_xy(key: &VerifyingKey) -> B512 {
    B512::from_slice(&key.to_encoded_point(false).as_bytes()[1..])
}

impl DstackProof {
    /// Builds the proof from a GetKey reply for `purpose`, recovering the app key from the app
    /// signature (dstack does not return it).
    ///
    /// # Errors
    /// [`ProofError::InvalidDerivedKey`], or a malformed or unrecoverable `app_signature`.
    pub fn from_get_key(
        reply: &GetKeyReply,
        app_id: Address,
        purpose: &str,
    ) -> Result<Self, ProofError> {
        let derived = derived_verifying_key(&reply.key)?;
        let app_signature = reply.signature_chain.app_signature;
        let sig = parse_signature("app_signature", &app_signature, SigEncoding::Dstack)?;
        let digest = keccak256(app_message(purpose, &compressed(&derived)));
        let app = sig
            .recover_from_prehash(&digest)
            .map_err(|_| ProofError::Unrecoverable {
                field: "app_signature",
            })?;
        Ok(Self {
            derived_public_key: uncompressed_xy(&derived),
            app_public_key: uncompressed_xy(&app),
            app_signature: app_signature.into(),
            kms_signature: reply.signature_chain.kms_signature.into(),
            app_id,
            purpose: purpose.to_owned(),
        })
    }

    /// Address of the derived key.
    ///
    /// # Errors
    /// [`ProofError::InvalidPublicKey`] when the field is not a point.
    pub fn derived_address(&self) -> Result<Address, ProofError> {
        public_key_from_xy("derived_public_key", &self.derived_public_key)
            .map(|k| Address::from_public_key(&k))
    }

    /// Who signed the app key, whoever that is: useful to learn a KMS root, never to trust one.
    ///
    /// # Errors
    /// When the app key or KMS signature is malformed or unrecoverable.
    pub fn kms_signer(&self) -> Result<Address, ProofError> {
        let app = public_key_from_xy("app_public_key", &self.app_public_key)?;
        let sig = parse_signature("kms_signature", &self.kms_signature.0, SigEncoding::Dstack)?;
        sig.recover_address_from_prehash(&keccak256(kms_message(self.app_id, &compressed(&app))))
            .map_err(|_| ProofError::Unrecoverable {
                field: "kms_signature",
            })
    }
}

/// Checks dstack's chain: the app id is allowed, the app key signed the derived key for `purpose`,
/// and `kms_root` signed the app key for `app_id`.
///
/// # Errors
/// The [`ProofError`] of the first check that fails.
pub fn verify_chain(
    proof: &DstackProof,
    kms_root: Address,
    allowed_app_ids: &[Address],
) -> Result<VerifiedChain, ProofError> {
    if !allowed_app_ids.contains(&proof.app_id) {
        return Err(ProofError::AppIdNotAllowed(proof.app_id));
    }
    let derived = public_key_from_xy("derived_public_key", &proof.derived_public_key)?;
    let app = public_key_from_xy("app_public_key", &proof.app_public_key)?;
    let app_key_address = Address::from_public_key(&app);

    let app_sig = parse_signature("app_signature", &proof.app_signature.0, SigEncoding::Dstack)?;
    let recovered = app_sig
        .recover_address_from_prehash(&keccak256(app_message(
            &proof.purpose,
            &compressed(&derived),
        )))
        .map_err(|_| ProofError::Unrecoverable {
            field: "app_signature",
        })?;
    if recovered != app_key_address {
        return Err(ProofError::AppSignatureMismatch {
            app_key_address,
            recovered,
        });
    }

    let recovered = proof.kms_signer()?;
    if recovered != kms_root {
        return Err(ProofError::KmsRootMismatch {
            expected: kms_root,
            recovered,
        });
    }
    Ok(VerifiedChain {
        app_id: proof.app_id,
        app_key_address,
        derived_address: Address::from_public_key(&derived),
        kms_root,
    })
}

/// How a signature writes its recovery id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigEncoding {
    /// dstack's chain: `v ∈ {0, 1}`.
    Dstack,
    /// Ethereum / EIP-712: `v ∈ {27, 28}`.
    Ethereum,
}

/// Parses a 65-byte `r ‖ s ‖ v` signature written in `encoding`, refusing every other encoding of it: another
/// `v`, a high `s` (the malleated twin of a valid signature), and `r` or `s` out of range.
///
/// # Errors
/// [`ProofError::InvalidSignature`] naming `field` and what is wrong.
pub fn parse_signature(
    field: &'static str,
    bytes: &[u8; 65],
    encoding: SigEncoding,
) -> Result<Signature, ProofError> {
    let invalid = |reason| ProofError::InvalidSignature { field, reason };
    let parity = match (encoding, bytes[64]) {
        (SigEncoding::Dstack, v @ (0 | 1)) => v == 1,
        (SigEncoding::Ethereum, v @ (27 | 28)) => v == 28,
        (SigEncoding::Dstack, _) => return Err(invalid("v must be 0 or 1")),
        (SigEncoding::Ethereum, _) => return Err(invalid("v must be 27 or 28")),
    };
    let sig = Signature::from_bytes_and_parity(&bytes[..64], parity);
    // The contract (OpenZeppelin ECDSA) refuses high s, so the off-chain check must too.
    if sig.normalize_s().is_some() {
        return Err(invalid("s is in the upper half of the curve order"));
    }
    sig.to_k256()
        .map_err(|_| invalid("r or s is zero or not below the curve order"))?;
    Ok(sig)
}

/// The public key of a 64-byte `X ‖ Y` field.
///
/// # Errors
/// [`ProofError::InvalidPublicKey`] naming `field` when it is not a point.
pub fn public_key_from_xy(field: &'static str, xy: &B512) -> Result<VerifyingKey, ProofError> {
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[1..].copy_from_slice(xy.as_slice());
    VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| ProofError::InvalidPublicKey { field })
}

pub(crate) fn derived_verifying_key(key: &DerivedKey) -> Result<VerifyingKey, ProofError> {
    key.signing_key()
        .map(|k| *k.verifying_key())
        .map_err(|_| ProofError::InvalidDerivedKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{U256, address, b256, hex};

    // dstack simulator fixture A (Aug 2025), reference §2.7.
    const A_APP_ID: Address = address!("ea549f02e1a25fabd1cb788380e033ec5461b2ff");
    const A_APP_KEY: [u8; 32] =
        hex!("e0e5d254fb944dcc370a2e5288b336a1e809871545a73ee645368957fefa31f9");
    const A_APP_PUB: [u8; 33] =
        hex!("02b85cceca0c02d878f0ebcda72a97469a472416eb6faf3c4807642132f9786810");
    const A_APP_ADDRESS: Address = address!("5e5132F15a9aa4AA91A6bCaE35Adf34e27A13516");
    const A_SIG1: [u8; 65] = hex!(
        "2f431c7956869a4fe3e028c5f9518a935e2d01e81a3628f8b1d178fc2fac7b6d2405ace433624e5568e23c4ed291dbaf60dac79b756837c0fe745154ebfdc0a601"
    );
    const A_KMS_ROOT: Address = address!("8f2cF602C9695b23130367ed78d8F557554de7C5");
    const A_KMS_ROOT_PUB: [u8; 33] =
        hex!("02cad3a8bb11c5c0858fb3e402048b5137457039d577986daade678ed4b4ab1b9b");
    const A_DERIVED_KEY: [u8; 32] =
        hex!("7c019ee7f279e47ef73ebf7dcb6844f398db2e06ea0dc4e45e528483ab924b57");
    const A_DERIVED_PUB: [u8; 33] =
        hex!("03c52b1959f112a1414aa6e0167923134e42363f1ded7418723ba0fbcdc4efd266");
    const A_DERIVED_ADDRESS: Address = address!("9087e5b4fa2b87c53a10f6459f7ff84f590bba0c");
    const A_SIG0: [u8; 65] = hex!(
        "056a0a85cb9b7c9e3fbef59c4f9d59cea7b53cb290815a91fb1c076623750c3f5a92c02fe0bce0a62b666a6269f5dc9ad6a4e3ca437cfaecceee75abceb5c76400"
    );

    // Fixture B (2026).
    const B_APP_ID: Address = address!("5bb4ff9a3837357f19dc176407a5709c62eb6c56");
    const B_APP_KEY: [u8; 32] =
        hex!("d6e88992cdeeee35fe70b5db61ab66cdb191fb9b6ec9313757ef162dd7214d5d");
    const B_APP_PUB: [u8; 33] =
        hex!("02818494263695e8839122dbd88e281d7380622999df4e60a14befa0f2d096fc7c");
    const B_APP_ADDRESS: Address = address!("D508660Da170d8b162779698A64E6707d5Aa217A");
    const B_SIG1: [u8; 65] = hex!(
        "9e618603e72d01fedb82deff6daf2d62a572becf0059eec3f89c1ab40e1f2e594d2a283f843f34e8f39e4cc49a612496ce67223a12ac923f8efe330346dfc6c500"
    );
    const B_KMS_ROOT: Address = address!("A7F6043C29f9cc1d9D6aCF554c53E0c6792AaEAf");
    const B_KMS_ROOT_PUB: [u8; 33] =
        hex!("0321529e458424ab1f710a3a57ec4dad2fb195ddca572f7469242ba6c7563085b6");
    const B_DERIVED_KEY: [u8; 32] =
        hex!("abc24a0a6485cfceb30932bcfc9c3b918eab2216d8619c423a0d1017390938ef");
    const B_DERIVED_PUB: [u8; 33] =
        hex!("03d11dee20a15caa0edfbb1e6cb36dad2447a5fdb2bfd745f3dcce1b7fbdfd84cf");

    fn sk(bytes: [u8; 32]) -> SigningKey {
        SigningKey::from_slice(&bytes).unwrap()
    }

    fn reply(key: [u8; 32], app_signature: [u8; 65], kms_signature: [u8; 65]) -> GetKeyReply {
        GetKeyReply::new(DerivedKey::from_bytes(key), app_signature, kms_signature)
    }

    fn recover(sig: &[u8; 65], message: &[u8]) -> VerifyingKey {
        parse_signature("t", sig, SigEncoding::Dstack)
            .unwrap()
            .recover_from_prehash(&keccak256(message))
            .unwrap()
    }

    /// Fixture A's app key has the documented public key and address.
    #[test]
    fn fixture_a_app_key_matches_vector() {
        let k = sk(A_APP_KEY);
        assert_eq!(compressed(k.verifying_key()), A_APP_PUB);
        assert_eq!(Address::from_public_key(k.verifying_key()), A_APP_ADDRESS);
    }

    /// Fixture B's app key has the documented public key and address.
    #[test]
    fn fixture_b_app_key_matches_vector() {
        let k = sk(B_APP_KEY);
        assert_eq!(compressed(k.verifying_key()), B_APP_PUB);
        assert_eq!(Address::from_public_key(k.verifying_key()), B_APP_ADDRESS);
    }

    /// The KMS message is the 71 documented bytes, with the documented keccak for both fixtures.
    #[test]
    fn kms_message_matches_vectors() {
        let m = kms_message(A_APP_ID, &A_APP_PUB);
        assert_eq!(m.len(), 71);
        assert_eq!(
            hex::encode(&m),
            "64737461636b2d6b6d732d6973737565643a\
             ea549f02e1a25fabd1cb788380e033ec5461b2ff\
             02b85cceca0c02d878f0ebcda72a97469a472416eb6faf3c4807642132f9786810"
        );
        assert_eq!(
            keccak256(&m),
            b256!("3c55b4e0efaca928c9c29944c17889a61c7ba1c56dea9e8dce9e4f3224dba8ba")
        );
        assert_eq!(
            keccak256(kms_message(B_APP_ID, &B_APP_PUB)),
            b256!("1f1acc59bf7234477601c8abf24b462777d69b8497e91189bb4c4c0568308bf5")
        );
    }

    /// sig1 recovers the documented KMS root key and address for both fixtures.
    #[test]
    fn kms_signature_recovers_root() {
        let a = recover(&A_SIG1, &kms_message(A_APP_ID, &A_APP_PUB));
        assert_eq!(compressed(&a), A_KMS_ROOT_PUB);
        assert_eq!(Address::from_public_key(&a), A_KMS_ROOT);
        let b = recover(&B_SIG1, &kms_message(B_APP_ID, &B_APP_PUB));
        assert_eq!(compressed(&b), B_KMS_ROOT_PUB);
        assert_eq!(Address::from_public_key(&b), B_KMS_ROOT);
    }

    /// The derived keys of the vectors have the documented public keys and address.
    #[test]
    fn derived_public_keys_match_vectors() {
        let a = sk(A_DERIVED_KEY);
        assert_eq!(compressed(a.verifying_key()), A_DERIVED_PUB);
        assert_eq!(
            Address::from_public_key(a.verifying_key()),
            A_DERIVED_ADDRESS
        );
        assert_eq!(compressed(sk(B_DERIVED_KEY).verifying_key()), B_DERIVED_PUB);
    }

    /// The app messages and their hashes match the `ethereum:`, `mainnet:` and `test-purpose:` vectors.
    #[test]
    fn app_message_hashes_match_vectors() {
        let m = app_message("ethereum", &A_DERIVED_PUB);
        assert_eq!(
            m,
            b"ethereum:03c52b1959f112a1414aa6e0167923134e42363f1ded7418723ba0fbcdc4efd266"
        );
        assert_eq!(
            keccak256(&m),
            b256!("f2b949b8933d65fdde39e295edaf105ed6ab2c2da5cfe3ac170c305872fc2449")
        );
        assert_eq!(
            keccak256(app_message("mainnet", &A_DERIVED_PUB)),
            b256!("8b3cfb7578bf821a003500fe9fe64cfa5d190aaf8c877380ca2352cbc74935b5")
        );
        let test_path_pub =
            hex!("039aa5e9849930bb46f72bc6a06bf569546cf116795da0a679b98ff54627285fac");
        assert_eq!(
            keccak256(app_message("test-purpose", &test_path_pub)),
            b256!("538d93c761fee074a50f25d6d5300df11a26ee72dca8140e6c48ed26a9edf227")
        );
        assert_eq!(
            keccak256(app_message("ethereum", &B_DERIVED_PUB)),
            b256!("e721e3a110da09542b23491992b67fbead99470a5b6fc4b5b44ed92481d34250")
        );
    }

    /// The documented sig0 recovers fixture A's app address, and signing reproduces it byte for byte.
    #[test]
    fn sig0_recovers_app_key_and_is_reproduced() {
        let m = app_message("ethereum", &A_DERIVED_PUB);
        assert_eq!(
            Address::from_public_key(&recover(&A_SIG0, &m)),
            A_APP_ADDRESS
        );
        assert_eq!(sign_dstack_message(&sk(A_APP_KEY), &m).unwrap(), A_SIG0);
    }

    /// Fixture A's whole chain (derived key, sig0, sig1) verifies against its KMS root.
    #[test]
    fn fixture_a_chain_verifies() {
        let proof =
            DstackProof::from_get_key(&reply(A_DERIVED_KEY, A_SIG0, A_SIG1), A_APP_ID, "ethereum")
                .unwrap();
        assert_eq!(
            &proof.app_public_key,
            &uncompressed_xy(sk(A_APP_KEY).verifying_key())
        );
        let v = verify_chain(&proof, A_KMS_ROOT, &[A_APP_ID]).unwrap();
        assert_eq!(v.derived_address, A_DERIVED_ADDRESS);
        assert_eq!(v.app_key_address, A_APP_ADDRESS);
    }

    /// Fixture B's chain verifies, with sig0 made by its app key as the simulator makes it.
    #[test]
    fn fixture_b_chain_verifies() {
        let sig0 =
            sign_dstack_message(&sk(B_APP_KEY), &app_message("ethereum", &B_DERIVED_PUB)).unwrap();
        let proof =
            DstackProof::from_get_key(&reply(B_DERIVED_KEY, sig0, B_SIG1), B_APP_ID, "ethereum")
                .unwrap();
        let v = verify_chain(&proof, B_KMS_ROOT, &[A_APP_ID, B_APP_ID]).unwrap();
        assert_eq!(v.app_key_address, B_APP_ADDRESS);
        assert_eq!(proof.kms_signer().unwrap(), B_KMS_ROOT);
    }

    /// A high-s (malleated) app signature is refused, as the contract refuses it.
    #[test]
    fn high_s_signature_is_rejected() {
        let sig = Signature::from_raw_array(&A_SIG0).unwrap();
        let n = U256::from_be_bytes(hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        let flipped = Signature::new(sig.r(), n - sig.s(), !sig.v()).as_rsy();
        let err =
            DstackProof::from_get_key(&reply(A_DERIVED_KEY, flipped, A_SIG1), A_APP_ID, "ethereum")
                .unwrap_err();
        assert!(
            matches!(
                err,
                ProofError::InvalidSignature {
                    field: "app_signature",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Chain signatures must use dstack's v ∈ {0, 1}; 27/28 there is a malformed proof.
    #[test]
    fn chain_signature_with_ethereum_v_is_rejected() {
        let mut sig1 = A_SIG1;
        sig1[64] += 27;
        let proof =
            DstackProof::from_get_key(&reply(A_DERIVED_KEY, A_SIG0, sig1), A_APP_ID, "ethereum")
                .unwrap();
        let err = verify_chain(&proof, A_KMS_ROOT, &[A_APP_ID]).unwrap_err();
        assert!(
            matches!(
                err,
                ProofError::InvalidSignature {
                    field: "kms_signature",
                    ..
                }
            ),
            "{err}"
        );
    }
}
