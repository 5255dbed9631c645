//! The TDX quote: a v4 quote with a TD 1.0 report body, signed the way Intel's TD quoting enclave signs:
//! the attestation key signs header ‖ body, the QE report binds that key, and the PCK key signs the QE
//! report. All integers are little-endian, as in Intel's structures.

use sha2::{Digest as _, Sha256};

use crate::pki::{Hierarchy, P256Key, derive_id};
use crate::platform;

const QUOTE_VERSION: u16 = 4;
const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
const TEE_TYPE_TDX: u32 = 0x81;
/// The only QE vendor dcap-qvl accepts: Intel's.
const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9A, 0x72, 0x33, 0xF7, 0x9C, 0x4C, 0xA9, 0x94, 0x0A, 0x0D, 0xB3, 0x95, 0x7F, 0x06, 0x07,
];
const CERT_TYPE_PCK_CHAIN: u16 = 5;
const CERT_TYPE_QE_REPORT: u16 = 6;

/// TD attribute bits (TDX module ABI, TDATTRIBUTES).
const TD_ATTR_DEBUG: u64 = 1 << 0;
/// dcap-qvl refuses a TD without SEPT_VE_DISABLE: the guest could otherwise be fed #VE on pending pages.
const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// The extended CPU state a typical Linux TD enables (x87, SSE, AVX, AVX-512, PKRU, AMX).
const DEFAULT_XFAM: [u8; 8] = [0xE7, 0x02, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00];
/// A placeholder TDX module measurement: neither the TCB Info nor dcap-qvl pins MR_SEAM.
const DEFAULT_MR_SEAM: [u8; 48] = [0x5E; 48];

/// The QE measurement is not appraised (QE Identity pins MRSIGNER and ISVPRODID), so any value does.
const QE_MR_ENCLAVE: [u8; 32] = [0xE1; 32];

/// What the TD reports about itself: the measurements and the 64 bytes of report data it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdInput {
    pub mrtd: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    /// Sets the TD attributes' DEBUG bit. dcap-qvl refuses such a quote unless the verifier was built
    /// with `.allow_debug(true)`.
    pub debug: bool,
    /// The TDX module's TCB SVN. The default is the level this PKI's TCB Info describes; a lower value
    /// matches an older TCB level, which the TCB Info calls `OutOfDate`. Byte 1 is the module's major
    /// version: the TCB Info knows only `TDX_01`, so 2 and up fail verification (and 0, a TDX 1.0
    /// module, is `OutOfDate`).
    pub tee_tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub xfam: [u8; 8],
}

impl TdInput {
    /// A production (non-debug) TD on this PKI's current TCB, with zero config and owner IDs.
    pub fn new(mrtd: [u8; 48], rtmr: [[u8; 48]; 4], report_data: [u8; 64]) -> Self {
        Self {
            mrtd,
            rtmr,
            report_data,
            debug: false,
            tee_tcb_svn: platform::TEE_TCB_SVN,
            mr_seam: DEFAULT_MR_SEAM,
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            xfam: DEFAULT_XFAM,
        }
    }

    fn td_attributes(&self) -> [u8; 8] {
        let debug = if self.debug { TD_ATTR_DEBUG } else { 0 };
        (TD_ATTR_SEPT_VE_DISABLE | debug).to_le_bytes()
    }
}

/// The platform's TD quoting enclave: its attestation key and the QE ID that goes in quote headers.
pub(crate) struct QuotingEnclave {
    attestation_key: P256Key,
    qe_id: [u8; 16],
}

impl QuotingEnclave {
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            attestation_key: P256Key::derive(seed, "qe attestation"),
            qe_id: derive_id(seed, "qe id"),
        }
    }

    pub(crate) fn quote(&self, pki: &Hierarchy, td: &TdInput) -> Vec<u8> {
        let mut quote = Vec::with_capacity(6000);
        self.write_header(&mut quote);
        write_td_report(&mut quote, td);
        // Everything so far (header and TD report) is what the attestation key signs.
        let signature = self.attestation_key.sign_raw(&quote);
        let auth_data = self.auth_data(pki, &signature);
        quote.extend_from_slice(&len_u32(&auth_data));
        quote.extend_from_slice(&auth_data);
        quote
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&QUOTE_VERSION.to_le_bytes());
        out.extend_from_slice(&ATTESTATION_KEY_TYPE_ECDSA_P256.to_le_bytes());
        out.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        // QE SVN and PCE SVN: reserved (zero) in TDX quotes; the QE report carries the real SVNs.
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&INTEL_QE_VENDOR_ID);
        // User data: the QE ID, then four reserved bytes.
        out.extend_from_slice(&self.qe_id);
        out.extend_from_slice(&[0; 4]);
    }

    /// ECDSA signature, attestation key, then certification data of type 6 wrapping the QE report, its
    /// PCK signature, the QE authentication data and the PCK chain (certification data of type 5).
    fn auth_data(&self, pki: &Hierarchy, signature: &[u8; 64]) -> Vec<u8> {
        let attestation_key = self.attestation_key.public_xy();
        // Real QEs send 32 bytes here; dcap-qvl accepts no other length.
        let qe_auth_data: [u8; 32] = std::array::from_fn(|i| i as u8);
        let qe_report = qe_report(&attestation_key, &qe_auth_data);
        let qe_report_signature = pki.pck_key().sign_raw(&qe_report);
        let pck_chain = pki.pck_chain_pem().into_bytes();

        let mut qe_certification = Vec::with_capacity(600 + pck_chain.len());
        qe_certification.extend_from_slice(&qe_report);
        qe_certification.extend_from_slice(&qe_report_signature);
        qe_certification.extend_from_slice(
            &u16::try_from(qe_auth_data.len())
                .expect("32 fits")
                .to_le_bytes(),
        );
        qe_certification.extend_from_slice(&qe_auth_data);
        qe_certification.extend_from_slice(&CERT_TYPE_PCK_CHAIN.to_le_bytes());
        qe_certification.extend_from_slice(&len_u32(&pck_chain));
        qe_certification.extend_from_slice(&pck_chain);

        let mut auth = Vec::with_capacity(200 + qe_certification.len());
        auth.extend_from_slice(signature);
        auth.extend_from_slice(&attestation_key);
        auth.extend_from_slice(&CERT_TYPE_QE_REPORT.to_le_bytes());
        auth.extend_from_slice(&len_u32(&qe_certification));
        auth.extend_from_slice(&qe_certification);
        auth
    }
}

/// The TD 1.0 report body (584 bytes), in TDREPORT order.
fn write_td_report(out: &mut Vec<u8>, td: &TdInput) {
    let start = out.len();
    out.extend_from_slice(&td.tee_tcb_svn);
    out.extend_from_slice(&td.mr_seam);
    // The TCB Info pins the module's signer and SEAM attributes; a TD cannot choose them.
    out.extend_from_slice(&platform::TDX_MODULE_MRSIGNER);
    out.extend_from_slice(&platform::SEAM_ATTRIBUTES);
    out.extend_from_slice(&td.td_attributes());
    out.extend_from_slice(&td.xfam);
    out.extend_from_slice(&td.mrtd);
    out.extend_from_slice(&td.mr_config_id);
    out.extend_from_slice(&td.mr_owner);
    out.extend_from_slice(&td.mr_owner_config);
    for rtmr in &td.rtmr {
        out.extend_from_slice(rtmr);
    }
    out.extend_from_slice(&td.report_data);
    debug_assert_eq!(out.len() - start, 584);
}

/// The QE's SGX report (384 bytes). Its report data binds the attestation key:
/// SHA-256(attestation key ‖ QE authentication data) ‖ 32 zero bytes.
fn qe_report(attestation_key: &[u8; 64], qe_auth_data: &[u8]) -> Vec<u8> {
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(
        &Sha256::new()
            .chain_update(attestation_key)
            .chain_update(qe_auth_data)
            .finalize(),
    );

    let mut report = Vec::with_capacity(384);
    report.extend_from_slice(&platform::CPU_SVN);
    report.extend_from_slice(&platform::QE_MISCSELECT.to_le_bytes());
    report.extend_from_slice(&[0; 28]);
    report.extend_from_slice(&platform::QE_ATTRIBUTES);
    report.extend_from_slice(&QE_MR_ENCLAVE);
    report.extend_from_slice(&[0; 32]);
    report.extend_from_slice(&platform::QE_MRSIGNER);
    report.extend_from_slice(&[0; 96]);
    report.extend_from_slice(&platform::QE_ISV_PROD_ID.to_le_bytes());
    report.extend_from_slice(&platform::QE_ISV_SVN.to_le_bytes());
    report.extend_from_slice(&[0; 60]);
    report.extend_from_slice(&report_data);
    debug_assert_eq!(report.len(), 384);
    report
}

fn len_u32(data: &[u8]) -> [u8; 4] {
    u32::try_from(data.len())
        .expect("quote sections are a few kilobytes")
        .to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_parses_as_dcap_qvl_reads_it() {
        let seed = [3; 32];
        let pki = Hierarchy::from_seed(&seed);
        let qe = QuotingEnclave::from_seed(&seed);
        let mut td = TdInput::new([1; 48], [[2; 48], [3; 48], [4; 48], [5; 48]], [6; 64]);
        td.mr_owner = [7; 48];
        let raw = qe.quote(&pki, &td);

        let quote = dcap_qvl::quote::Quote::parse(&raw).unwrap();
        assert_eq!(quote.header.version, 4);
        assert_eq!(quote.header.tee_type, TEE_TYPE_TDX);
        assert_eq!(quote.qeid(), &qe.qe_id);
        let report = quote.report.as_td10().unwrap();
        assert_eq!(report.mr_td, [1; 48]);
        assert_eq!(report.rt_mr0, [2; 48]);
        assert_eq!(report.rt_mr3, [5; 48]);
        assert_eq!(report.mr_owner, [7; 48]);
        assert_eq!(report.report_data, [6; 64]);
        assert_eq!(report.tee_tcb_svn, platform::TEE_TCB_SVN);
        assert_eq!(quote.inner_cert_type(), CERT_TYPE_PCK_CHAIN);
        assert_eq!(quote.inner_cert_data(), pki.pck_chain_pem().as_bytes());
        // The attestation key signs the header and the TD report, nothing more.
        assert_eq!(quote.signed_length(), 48 + 584);
        assert_eq!(
            dcap_qvl::intel::quote_fmspc(&quote).unwrap(),
            platform::FMSPC
        );
    }
}
