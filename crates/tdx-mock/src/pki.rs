//! Keys and certificates of the mock Intel PKI: the root CA, the PCK Platform CA and the platform's PCK
//! certificate below it, and the TCB signing certificate that signs TCB Info and QE Identity.

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use yasna::models::ObjectIdentifier;

use crate::platform;

/// Certificates are valid from 2020-01-01 to 2100-01-01 (UTC), so callers can pin `now` anywhere in
/// between; only the collateral's own dates expire.
pub(crate) const CERT_NOT_BEFORE: u64 = 1_577_836_800;
pub(crate) const CERT_NOT_AFTER: u64 = 4_102_444_800;

/// The organisation in every subject. dcap-qvl only reads the issuer name to tell a Platform CA from a
/// Processor CA (a substring match on "Platform" / "Processor"), so the names may say plainly that this
/// is not Intel.
const ORGANIZATION: &str = "dstack-mesh mock (not Intel)";

const SGX_EXTENSION: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];

/// A P-256 key derived from the seed. rcgen signs certificates and CRLs through it, so they are signed
/// with RFC 6979 deterministic ECDSA and the same seed yields byte-identical DER (rcgen's own key pairs
/// sign with random nonces).
pub(crate) struct P256Key {
    key: SigningKey,
    /// Uncompressed SEC1 point, as an X.509 SubjectPublicKeyInfo carries it.
    public_sec1: Vec<u8>,
}

impl P256Key {
    pub(crate) fn derive(seed: &[u8; 32], label: &str) -> Self {
        // A digest is a valid scalar unless it is zero or above the group order (odds ~2^-32), hence the
        // counter; the loop ends on the first try in practice.
        let key = (0u32..)
            .find_map(|counter| {
                let digest = Sha256::new()
                    .chain_update(b"dstack-mesh tdx-mock key\0")
                    .chain_update(label.as_bytes())
                    .chain_update([0])
                    .chain_update(seed)
                    .chain_update(counter.to_be_bytes())
                    .finalize();
                SigningKey::from_slice(&digest).ok()
            })
            .expect("some counter yields a valid P-256 scalar");
        let public_sec1 = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self { key, public_sec1 }
    }

    /// The public key as DCAP quotes carry it: X ‖ Y, without the SEC1 tag.
    pub(crate) fn public_xy(&self) -> [u8; 64] {
        self.public_sec1[1..]
            .try_into()
            .expect("an uncompressed P-256 point is 65 bytes")
    }

    /// An ECDSA-P256-SHA256 signature in the raw r ‖ s form DCAP quotes and collateral use.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        let signature: Signature = self.key.sign(message);
        signature.to_bytes().into()
    }
}

impl rcgen::PublicKeyData for P256Key {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for P256Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: Signature = self.key.sign(message);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

/// Seed-derived bytes for identifiers that differ per platform (PPID, QE ID, platform instance ID).
pub(crate) fn derive_id(seed: &[u8; 32], label: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"dstack-mesh tdx-mock id\0")
        .chain_update(label.as_bytes())
        .chain_update([0])
        .chain_update(seed)
        .finalize();
    digest[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// The certificate hierarchy. Shaped like Intel's, because dcap-qvl walks it the same way:
///
/// ```text
/// Intel SGX Root CA ─┬─ Intel SGX PCK Platform CA ── Intel SGX PCK Certificate (in the quote)
///                    └─ Intel SGX TCB Signing (signs TCB Info and QE Identity)
/// ```
pub(crate) struct Hierarchy {
    root: CertifiedIssuer<'static, P256Key>,
    pck_ca: CertifiedIssuer<'static, P256Key>,
    pck: Certificate,
    pck_key: P256Key,
    tcb_signing: Certificate,
    tcb_signing_key: P256Key,
}

impl Hierarchy {
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        let root = CertifiedIssuer::self_signed(
            ca_params("Intel SGX Root CA", 1, 1),
            P256Key::derive(seed, "root ca"),
        )
        .expect("root CA parameters are valid");
        let pck_ca = CertifiedIssuer::signed_by(
            ca_params("Intel SGX PCK Platform CA", 0, 2),
            P256Key::derive(seed, "pck platform ca"),
            &root,
        )
        .expect("PCK CA parameters are valid");

        let pck_key = P256Key::derive(seed, "pck");
        let mut pck_params = leaf_params("Intel SGX PCK Certificate", 3);
        pck_params.custom_extensions.push(sgx_extension(
            &derive_id(seed, "ppid"),
            &derive_id(seed, "platform instance"),
        ));
        let pck = pck_params
            .signed_by(&pck_key, &pck_ca)
            .expect("PCK certificate parameters are valid");

        let tcb_signing_key = P256Key::derive(seed, "tcb signing");
        let tcb_signing = leaf_params("Intel SGX TCB Signing", 4)
            .signed_by(&tcb_signing_key, &root)
            .expect("TCB signing certificate parameters are valid");

        Self {
            root,
            pck_ca,
            pck,
            pck_key,
            tcb_signing,
            tcb_signing_key,
        }
    }

    pub(crate) fn root_der(&self) -> &[u8] {
        self.root.der()
    }

    pub(crate) fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// What a quote's certification data (type 5) carries: PCK leaf, its CA, the root, as PEM.
    pub(crate) fn pck_chain_pem(&self) -> String {
        [self.pck.pem(), self.pck_ca.pem(), self.root.pem()].concat()
    }

    pub(crate) fn pck_crl_issuer_chain_pem(&self) -> String {
        [self.pck_ca.pem(), self.root.pem()].concat()
    }

    pub(crate) fn tcb_signing_chain_pem(&self) -> String {
        [self.tcb_signing.pem(), self.root.pem()].concat()
    }

    /// The PCK key signs the QE report, vouching that the QE runs on the certified platform.
    pub(crate) fn pck_key(&self) -> &P256Key {
        &self.pck_key
    }

    pub(crate) fn tcb_signing_key(&self) -> &P256Key {
        &self.tcb_signing_key
    }

    /// The root CA's CRL (it covers the PCK CA and the TCB signing certificate, and the root itself).
    pub(crate) fn root_crl_der(
        &self,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Vec<u8> {
        empty_crl(&self.root, this_update, next_update)
    }

    /// The PCK Platform CA's CRL, which covers the PCK certificate.
    pub(crate) fn pck_crl_der(
        &self,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Vec<u8> {
        empty_crl(&self.pck_ca, this_update, next_update)
    }
}

fn empty_crl(
    issuer: &Issuer<'_, P256Key>,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .expect("CRL dates are ordered and the issuer may sign CRLs")
    .der()
    .to_vec()
}

fn base_params(common_name: &str, serial: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(&[serial]));
    params.not_before = unix_time(CERT_NOT_BEFORE);
    params.not_after = unix_time(CERT_NOT_AFTER);
    params.use_authority_key_identifier_extension = true;
    params
}

fn ca_params(common_name: &str, path_len: u8, serial: u8) -> CertificateParams {
    let mut params = base_params(common_name, serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    // webpki refuses a CRL whose issuer's key usage lacks cRLSign.
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// No extended key usage, like Intel's: dcap-qvl asks webpki for serverAuth, which a certificate without
/// the extension satisfies.
fn leaf_params(common_name: &str, serial: u8) -> CertificateParams {
    let mut params = base_params(common_name, serial);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    params
}

pub(crate) fn unix_time(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(
        i64::try_from(secs).expect("callers clamp times into time's range"),
    )
    .expect("callers clamp times into time's range")
}

/// Intel's SGX extension (OID 1.2.840.113741.1.13.1), from which dcap-qvl reads the platform's FMSPC,
/// CPUSVN and PCESVN to pick the TCB level. Laid out as in a PCK certificate issued by the Platform CA:
/// a SEQUENCE of (OID, value) pairs, with the TCB and the configuration as nested SEQUENCEs.
fn sgx_extension(ppid: &[u8; 16], platform_instance_id: &[u8; 16]) -> CustomExtension {
    let oid = |suffix: &[u64]| ObjectIdentifier::from_slice(&[SGX_EXTENSION, suffix].concat());
    let content = yasna::construct_der(|writer| {
        writer.write_sequence(|entries| {
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[1]));
                w.next().write_bytes(ppid);
            });
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[2]));
                w.next().write_sequence(|tcb| {
                    for (index, svn) in (1u64..).zip(platform::CPU_SVN) {
                        tcb.next().write_sequence(|w| {
                            w.next().write_oid(&oid(&[2, index]));
                            w.next().write_u8(svn);
                        });
                    }
                    tcb.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 17]));
                        w.next().write_u16(platform::PCE_SVN);
                    });
                    tcb.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 18]));
                        w.next().write_bytes(&platform::CPU_SVN);
                    });
                });
            });
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[3]));
                w.next().write_bytes(&platform::PCE_ID);
            });
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[4]));
                w.next().write_bytes(&platform::FMSPC);
            });
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[5]));
                w.next().write_enum(platform::SGX_TYPE);
            });
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[6]));
                w.next().write_bytes(platform_instance_id);
            });
            // All three flags false, so dcap-qvl's strict QuotePolicy (which refuses dynamic platforms,
            // cached keys and SMT by default) accepts the platform.
            entries.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[7]));
                w.next().write_sequence(|flags| {
                    for flag in 1..=3 {
                        flags.next().write_sequence(|w| {
                            w.next().write_oid(&oid(&[7, flag]));
                            w.next().write_bool(false);
                        });
                    }
                });
            });
        });
    });
    CustomExtension::from_oid_content(SGX_EXTENSION, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_depend_on_seed_and_label() {
        let a = P256Key::derive(&[1; 32], "x").public_xy();
        assert_eq!(a, P256Key::derive(&[1; 32], "x").public_xy());
        assert_ne!(a, P256Key::derive(&[2; 32], "x").public_xy());
        assert_ne!(a, P256Key::derive(&[1; 32], "y").public_xy());
    }

    #[test]
    fn sgx_extension_parses_as_dcap_qvl_reads_it() {
        let hierarchy = Hierarchy::from_seed(&[7; 32]);
        let ext = dcap_qvl::intel::parse_pck_extension(hierarchy.pck.der()).unwrap();
        assert_eq!(ext.fmspc, platform::FMSPC);
        assert_eq!(ext.cpu_svn, platform::CPU_SVN);
        assert_eq!(ext.pce_svn, platform::PCE_SVN);
        assert_eq!(ext.pce_id, platform::PCE_ID);
        assert_eq!(ext.ppid, derive_id(&[7; 32], "ppid"));
        assert_eq!(ext.sgx_type, 1);
        assert_eq!(ext.smt_enabled, Some(false));
        assert_eq!(
            dcap_qvl::intel::pck_ca(hierarchy.pck.der()).unwrap(),
            dcap_qvl::config::PckCa::Platform
        );
    }
}
