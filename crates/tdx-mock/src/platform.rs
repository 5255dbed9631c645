//! What the mock platform and its quoting enclave claim to be. The PCK certificate, the quote and the
//! collateral all read these constants, so a quote always matches the TCB Info and QE Identity of its PKI.
//! Every PKI (every seed) describes the same platform model; only keys and per-platform IDs differ.

/// Family-Model-Stepping-Platform-CustomSKU. Sapphire Rapids' value, so logs look familiar.
pub(crate) const FMSPC: [u8; 6] = [0x90, 0xC0, 0x6F, 0x00, 0x00, 0x00];
pub(crate) const PCE_ID: [u8; 2] = [0x00, 0x00];

/// The platform's SGX TCB: CPUSVN components and PCESVN, as certified by the PCK certificate.
pub(crate) const CPU_SVN: [u8; 16] = [3, 3, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
pub(crate) const PCE_SVN: u16 = 13;

/// The TEE TCB SVN of a TD on this platform's current TDX module. Byte 1 is the module's major version:
/// when non-zero, dcap-qvl appraises bytes 0 and 1 against the `TDX_01` module identity instead of the
/// TCB level, as Intel's QVL does for TDX 1.5 modules.
pub(crate) const TEE_TCB_SVN: [u8; 16] = [5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub(crate) const TDX_MODULE_MAJOR_VERSION: u8 = TEE_TCB_SVN[1];
pub(crate) const TDX_MODULE_SVN: u8 = TEE_TCB_SVN[0];
/// Intel's TCB Info lists an all-zero MRSIGNER and SEAM attributes for its TDX modules.
pub(crate) const TDX_MODULE_MRSIGNER: [u8; 48] = [0; 48];
pub(crate) const SEAM_ATTRIBUTES: [u8; 8] = [0; 8];

/// `sgx_type` in the PCK certificate: 1 = Scalable, what TDX-capable Xeons report.
pub(crate) const SGX_TYPE: i64 = 1;

/// The TD quoting enclave, with the public values of Intel's TD_QE identity.
pub(crate) const QE_MRSIGNER: [u8; 32] = [
    0xDC, 0x9E, 0x2A, 0x7C, 0x6F, 0x94, 0x8F, 0x17, 0x47, 0x4E, 0x34, 0xA7, 0xFC, 0x43, 0xED, 0x03,
    0x0F, 0x7C, 0x15, 0x63, 0xF1, 0xBA, 0xBD, 0xDF, 0x63, 0x40, 0xC8, 0x2E, 0x0E, 0x54, 0xA8, 0xC5,
];
pub(crate) const QE_ISV_PROD_ID: u16 = 2;
pub(crate) const QE_ISV_SVN: u16 = 4;
pub(crate) const QE_MISCSELECT: u32 = 0;
pub(crate) const QE_MISCSELECT_MASK: u32 = 0xFFFF_FFFF;
/// INIT | MODE64BIT, and an XFRM the mask ignores. The DEBUG bit (0x02) must stay clear: dcap-qvl refuses
/// a debug QE whatever the verifier allows.
pub(crate) const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0xE7, 0, 0, 0, 0, 0, 0, 0];
pub(crate) const QE_ATTRIBUTES_MASK: [u8; 16] = [
    0xFB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Intel publishes a new TCB evaluation roughly twice a year; the number only orders them.
pub(crate) const TCB_EVALUATION_DATA_NUMBER: u32 = 17;
