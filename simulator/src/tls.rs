//! The simulated "Dstack KMS CA" and the certificates it issues (GetTlsKey, Tappd DeriveKey, Info's
//! `app_cert`). The CA key is derived from a seed so it is stable across restarts; certificate bytes
//! still differ per run because ECDSA signatures are randomised.

use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::keys::hkdf32;

/// What goes wrong issuing certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A subject alternative name or other parameter is not acceptable to rcgen.
    #[error("invalid certificate parameters: {0}")]
    Params(#[source] rcgen::Error),
    /// `not_before`/`not_after` is not a representable time.
    #[error("{field} = {value} is not a valid time")]
    BadTime {
        /// The field.
        field: &'static str,
        /// Its value in seconds.
        value: u64,
    },
    /// Key generation or signing failed inside the crypto backend.
    #[error("certificate crypto failed")]
    Crypto(#[source] rcgen::Error),
    /// The derived seed is not a valid P-256 scalar (probability ~2⁻¹²⁸).
    #[error("derived P-256 key is out of range")]
    DerivedKey,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    /// Subject common name; none when empty.
    pub subject: String,
    /// DNS names or IP addresses.
    pub alt_names: Vec<String>,
    /// Add the serverAuth EKU.
    pub server_auth: bool,
    /// Add the clientAuth EKU.
    pub client_auth: bool,
    /// Seconds since the epoch; default: rcgen's (1975).
    pub not_before: Option<u64>,
    /// Seconds since the epoch; default: rcgen's (4096).
    pub not_after: Option<u64>,
}

/// A leaf key (PEM PKCS#8) and its chain `[leaf, CA]` (PEM).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PKCS#8 PEM of the P-256 private key.
    pub key_pem: String,
    /// Leaf first, then the CA.
    pub chain: Vec<String>,
}

/// The simulated KMS CA.
pub struct KmsCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for KmsCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsCa").finish_non_exhaustive()
    }
}

impl KmsCa {
    /// The CA whose key is derived from `seed` (the KMS root key, or a fixture's app key).
    ///
    /// # Errors
    /// [`TlsError`] when the key or certificate cannot be built.
    pub fn derive(seed: &[u8]) -> Result<Self, TlsError> {
        let key = p256_key_pair(&hkdf32(seed, &[b"dstack-simulator/kms-ca"]))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Dstack KMS CA");
        params.distinguished_name.push(
            DnType::OrganizationName,
            "dstack-simulator (not a real KMS)",
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(TlsError::Crypto)?;
        let public_key_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        Ok(Self {
            cert_pem: cert.pem(),
            public_key_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's SubjectPublicKeyInfo, DER: what a real KMS puts in `key_provider_info.id`.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// Issues a certificate for a fresh random P-256 key.
    ///
    /// # Errors
    /// [`TlsError`].
    pub fn issue_random(&self, spec: &LeafSpec) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Crypto)?;
        self.issue(key, spec)
    }

    /// Issues a certificate for a P-256 key derived from `seed` and `path` (Tappd DeriveKey).
    ///
    /// # Errors
    /// [`TlsError`].
    pub fn issue_derived(
        &self,
        seed: &[u8],
        path: &str,
        spec: &LeafSpec,
    ) -> Result<IssuedCert, TlsError> {
        let key = p256_key_pair(&hkdf32(seed, &[path.as_bytes()]))?;
        self.issue(key, spec)
    }

    fn issue(&self, key: KeyPair, spec: &LeafSpec) -> Result<IssuedCert, TlsError> {
        let mut params =
            CertificateParams::new(spec.alt_names.clone()).map_err(TlsError::Params)?;
        if !spec.subject.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, spec.subject.as_str());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if let Some(t) = spec.not_before {
            params.not_before = to_time("not_before", t)?;
        }
        if let Some(t) = spec.not_after {
            params.not_after = to_time("not_after", t)?;
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::Crypto)?;
        Ok(IssuedCert {
            key_pem: key.serialize_pem(),
            chain: vec![cert.pem(), self.cert_pem.clone()],
        })
    }
}

fn to_time(field: &'static str, value: u64) -> Result<OffsetDateTime, TlsError> {
    i64::try_from(value)
        .ok()
        .and_then(|v| OffsetDateTime::from_unix_timestamp(v).ok())
        .ok_or(TlsError::BadTime { field, value })
}

fn p256_key_pair(secret: &[u8; 32]) -> Result<KeyPair, TlsError> {
    let sk = p256::SecretKey::from_slice(secret).map_err(|_| TlsError::DerivedKey)?;
    let der = sk.to_pkcs8_der().map_err(|_| TlsError::DerivedKey)?;
    KeyPair::try_from(der.as_bytes()).map_err(TlsError::Crypto)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CA key depends only on the seed, so a restarted simulator keeps its CA.
    #[test]
    fn ca_key_is_deterministic() {
        let a = KmsCa::derive(b"seed").unwrap();
        let b = KmsCa::derive(b"seed").unwrap();
        let c = KmsCa::derive(b"other").unwrap();
        assert_eq!(a.public_key_der(), b.public_key_der());
        assert_ne!(a.public_key_der(), c.public_key_der());
    }

    /// Issued leaves come with a PKCS#8 key and a two-element chain ending in the CA.
    #[test]
    fn issued_chain_is_leaf_then_ca() {
        let ca = KmsCa::derive(b"seed").unwrap();
        let spec = LeafSpec {
            subject: "node".into(),
            alt_names: vec!["node.example".into(), "127.0.0.1".into()],
            server_auth: true,
            ..LeafSpec::default()
        };
        let one = ca.issue_random(&spec).unwrap();
        let two = ca.issue_random(&spec).unwrap();
        assert!(one.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(one.chain.len(), 2);
        assert_eq!(one.chain[1], ca.cert_pem());
        assert_ne!(
            one.key_pem, two.key_pem,
            "GetTlsKey keys are random per call"
        );
        let d1 = ca.issue_derived(b"app", "p", &spec).unwrap();
        let d2 = ca.issue_derived(b"app", "p", &spec).unwrap();
        assert_eq!(d1.key_pem, d2.key_pem, "DeriveKey keys are deterministic");
    }
}
