//! dstack's key hierarchy, as the KMS and the guest agent compute it (dstack `kms/src/crypto.rs`,
//! `ra-tls/src/kdf.rs`, `guest-agent/src/rpc_service.rs`):
//!
//! * app key = HKDF-SHA256(salt `RATLS`, IKM = KMS root key, info = app_id ‖ `app-key`), one per app;
//! * GetKey key = HKDF-SHA256(salt `RATLS`, IKM = app key, info = path);
//! * chain = [app key over `purpose:hex(derived pub)`, KMS root over `dstack-kms-issued:` ‖ app_id ‖ app pub].
//!
//! The messages come from [`dstack_guest::chain`], so the simulator signs exactly what verifiers check.

use std::fmt;

use alloy_primitives::Address;
use dstack_guest::DerivedKey;
use dstack_guest::chain::{app_message, compressed, kms_message, sign_dstack_message};
use hkdf::Hkdf;
use k256::ecdsa::SigningKey;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The HKDF salt of every dstack key derivation.
pub const HKDF_SALT: &[u8] = b"RATLS";

/// What goes wrong deriving or signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The hex given for a key is not 32 bytes of hex.
    #[error("a {what} must be 32 bytes of hex (64 digits, optional 0x): {reason}")]
    BadHex {
        /// Which key.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// HKDF produced zero or a value not below the curve order (probability ~2⁻¹²⁸), or a fixture key
    /// is out of range.
    #[error("{what} is not a valid secp256k1 private key")]
    InvalidScalar {
        /// Which key.
        what: String,
    },
    /// k256 refused to sign.
    #[error("signing {what} failed")]
    Signing {
        /// What was being signed.
        what: &'static str,
    },
}

/// The KMS root private key of a simulated cluster. `Debug` hides it; k256 wipes it on drop.
#[derive(Clone)]
pub struct KmsRootKey(SigningKey);

impl KmsRootKey {
    /// Parses 64 hex digits, with or without `0x`, ignoring surrounding whitespace (key files end in
    /// a newline).
    ///
    /// # Errors
    /// [`KeyError::BadHex`] or [`KeyError::InvalidScalar`]; neither repeats the input.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(parse_hex32("KMS root key", s)?);
        SigningKey::from_slice(bytes.as_slice())
            .map(Self)
            .map_err(|_| KeyError::InvalidScalar {
                what: "the KMS root key".into(),
            })
    }

    /// The root's address: what verifiers pin as `kms_root`.
    pub fn address(&self) -> Address {
        Address::from_public_key(self.0.verifying_key())
    }

    /// The secret, for further derivations.
    fn secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// A seed for the simulated KMS CA: derived from the root, so nothing downstream holds the root.
    pub(crate) fn ca_seed(&self) -> Zeroizing<[u8; 32]> {
        hkdf32(self.secret().as_slice(), &[b"dstack-simulator/kms-ca-seed"])
    }
}

impl fmt::Debug for KmsRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KmsRootKey(<redacted>)")
    }
}

/// Decodes 32 bytes of hex with an optional `0x`; the error never echoes the input (it may be a secret).
///
/// # Errors
/// [`KeyError::BadHex`].
pub fn parse_hex32(what: &'static str, s: &str) -> Result<[u8; 32], KeyError> {
    let bytes =
        Zeroizing::new(
            dstack_guest::wire::decode_hex(s.trim()).map_err(|e| KeyError::BadHex {
                what,
                reason: e.to_string(),
            })?,
        );
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::BadHex {
        what,
        reason: format!("got {} bytes", bytes.len()),
    })
}

/// HKDF-SHA256 with dstack's salt, `info` being the concatenation of the parts, 32 bytes out.
pub fn hkdf32(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm)
        .expand_multi_info(info, okm.as_mut_slice())
        // Cannot fail: 32 bytes is far below HKDF-SHA256's 255 × 32 limit.
        .unwrap_or_else(|_| unreachable!("HKDF output length 32 is always valid"));
    okm
}

/// The key a GetKey-derived Ed25519 key or secp256k1 key is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// `""`, `"secp256k1"` or `"k256"`.
    Secp256k1,
    /// `"ed25519"`: the same 32 bytes read as an Ed25519 seed.
    Ed25519,
}

impl KeyAlgorithm {
    /// Parses GetKey's `algorithm` field.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "secp256k1" | "k256" => Some(Self::Secp256k1),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// An app's keys as the KMS hands them to a CVM: the app key and the root's signature over it.
#[derive(Clone)]
pub struct AppKeys {
    app_key: SigningKey,
    kms_signature: [u8; 65],
}

impl fmt::Debug for AppKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppKeys")
            .field("app_key", &"<redacted>")
            .field("app_address", &self.app_address())
            .finish()
    }
}

impl AppKeys {
    /// Does what a KMS does for a new app: derives its key from the root and signs it.
    ///
    /// # Errors
    /// [`KeyError`] in the (negligible) case of an invalid HKDF output.
    pub fn issue(root: &KmsRootKey, app_id: Address) -> Result<Self, KeyError> {
        let okm = hkdf32(root.secret().as_slice(), &[app_id.as_slice(), b"app-key"]);
        let app_key =
            SigningKey::from_slice(okm.as_slice()).map_err(|_| KeyError::InvalidScalar {
                what: format!("the app key for {app_id}"),
            })?;
        let kms_signature = sign_dstack_message(
            &root.0,
            &kms_message(app_id, &compressed(app_key.verifying_key())),
        )
        .map_err(|_| KeyError::Signing { what: "app key" })?;
        Ok(Self {
            app_key,
            kms_signature,
        })
    }

    /// Keys taken verbatim from a fixture, which has no root key, only the root's signature.
    ///
    /// # Errors
    /// [`KeyError::InvalidScalar`] if the fixture's key is out of range.
    pub fn from_parts(app_key: &[u8; 32], kms_signature: [u8; 65]) -> Result<Self, KeyError> {
        Ok(Self {
            app_key: SigningKey::from_slice(app_key).map_err(|_| KeyError::InvalidScalar {
                what: "the fixture app key".into(),
            })?,
            kms_signature,
        })
    }

    /// The app key's address.
    pub fn app_address(&self) -> Address {
        Address::from_public_key(self.app_key.verifying_key())
    }

    /// The KMS root's signature over the app key (`signature_chain[1]`).
    pub fn kms_signature(&self) -> [u8; 65] {
        self.kms_signature
    }

    /// The app key's secret, for deterministic simulator-only derivations (the TLS CA of fixtures).
    pub(crate) fn secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.app_key.to_bytes().into())
    }

    /// GetKey's key for `path`.
    pub fn derive(&self, path: &str) -> DerivedKey {
        DerivedKey::from_bytes(*hkdf32(self.secret().as_slice(), &[path.as_bytes()]))
    }

    /// GetKey: the key for `path` and its chain `[app signature, KMS signature]`, `purpose` bound into
    /// the app signature. For Ed25519 the app signs the 32-byte Ed25519 public key instead.
    ///
    /// # Errors
    /// [`KeyError`] when the derived bytes are not a valid secp256k1 scalar.
    pub fn get_key(
        &self,
        path: &str,
        purpose: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<(DerivedKey, [[u8; 65]; 2]), KeyError> {
        let key = self.derive(path);
        let public = match algorithm {
            KeyAlgorithm::Secp256k1 => {
                let sk = key.signing_key().map_err(|_| KeyError::InvalidScalar {
                    what: format!("the key for path {path:?}"),
                })?;
                compressed(sk.verifying_key()).to_vec()
            }
            KeyAlgorithm::Ed25519 => ed25519_dalek::SigningKey::from_bytes(key.expose_secret())
                .verifying_key()
                .to_bytes()
                .to_vec(),
        };
        let app_signature = self.sign_app_message(purpose, &public)?;
        Ok((key, [app_signature, self.kms_signature]))
    }

    /// The app key's signature over `purpose:hex(public_key)`.
    ///
    /// # Errors
    /// [`KeyError::Signing`].
    pub fn sign_app_message(&self, purpose: &str, public_key: &[u8]) -> Result<[u8; 65], KeyError> {
        sign_dstack_message(&self.app_key, &app_message(purpose, public_key)).map_err(|_| {
            KeyError::Signing {
                what: "derived key",
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{FIXTURE_A, FIXTURE_B};
    use alloy_primitives::{address, hex};
    use dstack_guest::GetKeyReply;
    use dstack_guest::{DstackProof, verify_chain};

    fn keys(f: &crate::fixture::Fixture) -> AppKeys {
        AppKeys::from_parts(&f.app_key, f.kms_signature).unwrap()
    }

    fn proof(k: &AppKeys, app_id: Address, path: &str, purpose: &str) -> DstackProof {
        let (key, [app_signature, kms_signature]) =
            k.get_key(path, purpose, KeyAlgorithm::Secp256k1).unwrap();
        let reply = GetKeyReply::new(key, app_signature, kms_signature);
        DstackProof::from_get_key(&reply, app_id, purpose).unwrap()
    }

    /// Fixture A's `wallet/ethereum` key is the documented one, and its app signature is the documented sig0.
    #[test]
    fn fixture_a_wallet_key_and_sig0_match_vectors() {
        let k = keys(&FIXTURE_A);
        let (key, chain) = k
            .get_key("wallet/ethereum", "ethereum", KeyAlgorithm::Secp256k1)
            .unwrap();
        assert_eq!(
            key.expose_secret(),
            &hex!("7c019ee7f279e47ef73ebf7dcb6844f398db2e06ea0dc4e45e528483ab924b57")
        );
        assert_eq!(
            chain[0],
            hex!(
                "056a0a85cb9b7c9e3fbef59c4f9d59cea7b53cb290815a91fb1c076623750c3f5a92c02fe0bce0a62b666a6269f5dc9ad6a4e3ca437cfaecceee75abceb5c76400"
            )
        );
        assert_eq!(chain[1], FIXTURE_A.kms_signature);
    }

    /// Fixture A's `/test/path` key (the dstack Go test's path) is the documented one.
    #[test]
    fn fixture_a_test_path_key_matches_vector() {
        assert_eq!(
            keys(&FIXTURE_A).derive("/test/path").expose_secret(),
            &hex!("50e62363110ce0c1ec0546671fd06c6b8a2c71a2af6467d34ac56d57170c9581")
        );
    }

    /// Fixture B's `wallet/ethereum` key is the documented one.
    #[test]
    fn fixture_b_wallet_key_matches_vector() {
        assert_eq!(
            keys(&FIXTURE_B).derive("wallet/ethereum").expose_secret(),
            &hex!("abc24a0a6485cfceb30932bcfc9c3b918eab2216d8619c423a0d1017390938ef")
        );
    }

    /// The purpose changes the app signature but never the key.
    #[test]
    fn purpose_does_not_change_the_key() {
        let k = keys(&FIXTURE_A);
        let (a, ca) = k.get_key("p", "one", KeyAlgorithm::Secp256k1).unwrap();
        let (b, cb) = k.get_key("p", "two", KeyAlgorithm::Secp256k1).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_ne!(ca[0], cb[0]);
    }

    /// Both fixtures' chains verify against their KMS roots.
    #[test]
    fn fixture_chains_verify() {
        for f in [&FIXTURE_A, &FIXTURE_B] {
            let app_id = Address::from(f.app_id);
            let p = proof(&keys(f), app_id, "wallet/ethereum", "ethereum");
            verify_chain(&p, f.kms_root, &[app_id]).unwrap();
        }
        assert_eq!(
            FIXTURE_A.kms_root,
            address!("8f2cF602C9695b23130367ed78d8F557554de7C5")
        );
    }

    /// A cluster issued from a root key verifies against that root, and two issues agree (same app key).
    #[test]
    fn issued_app_keys_verify_and_are_deterministic() {
        let root = KmsRootKey::from_hex(&format!("0x{}", "07".repeat(32))).unwrap();
        let app_id = address!("00112233445566778899aabbccddeeff00112233");
        let a = AppKeys::issue(&root, app_id).unwrap();
        let b = AppKeys::issue(&root, app_id).unwrap();
        assert_eq!(a.kms_signature(), b.kms_signature());
        assert_eq!(a.app_address(), b.app_address());
        let p = proof(&a, app_id, "x", "y");
        assert_eq!(
            verify_chain(&p, root.address(), &[app_id])
                .unwrap()
                .kms_root,
            root.address()
        );
        let other =
            AppKeys::issue(&root, address!("00112233445566778899aabbccddeeff00112234")).unwrap();
        assert_ne!(other.app_address(), a.app_address());
    }

    /// The root key parser hides the input in errors and in Debug.
    #[test]
    fn root_key_is_never_echoed() {
        let err = KmsRootKey::from_hex("deadbeefzz").unwrap_err().to_string();
        assert!(!err.contains("deadbeef"), "{err}");
        let k = KmsRootKey::from_hex(&"07".repeat(32)).unwrap();
        assert!(!format!("{k:?}").contains("0707"));
        assert!(KmsRootKey::from_hex(&"00".repeat(32)).is_err());
    }
}
