//! The collateral a verifier needs besides the quote: TCB Info (TDX, version 3) and QE Identity (TD_QE),
//! both signed by the TCB signing key, and the root CA and PCK CA CRLs. Their dates come from
//! [`CollateralOptions`], so tests can make collateral that is current, expired or not yet issued.

use std::fmt;

use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pki::{CERT_NOT_BEFORE, Hierarchy, unix_time};
use crate::platform;

const SECS_PER_DAY: u64 = 86_400;
/// The latest instant X.509 and the `time` crate can express, 9999-12-31T23:59:59Z. Later dates are
/// clamped to it rather than refused: such collateral is valid "forever" either way.
const LATEST: u64 = 253_402_300_799;

/// What the TCB Info says of a TCB level, spelled as Intel spells it (`SWHardeningNeeded`, …) in
/// JSON and in [`dcap_qvl::verify::VerifiedReport::status`].
///
/// How dcap-qvl 0.7.0 treats each, when the TD runs on the level this PKI's platform is at:
/// `QuoteVerifier::verify` returns `Ok` with the status for all but `Revoked`, leaving the decision to
/// the caller (dcap-qvl's `QuotePolicy::strict` accepts only `UpToDate`). `Revoked` is refused by
/// `verify` itself, whatever the policy: the error reads "TCB status is invalid: Revoked".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    UpToDate,
    #[serde(rename = "SWHardeningNeeded")]
    SwHardeningNeeded,
    ConfigurationNeeded,
    OutOfDate,
    Revoked,
}

impl TcbStatus {
    /// Every status, as Intel spells them.
    pub const ALL: [Self; 5] = [
        Self::UpToDate,
        Self::SwHardeningNeeded,
        Self::ConfigurationNeeded,
        Self::OutOfDate,
        Self::Revoked,
    ];

    /// The status Intel spells `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "UpToDate",
            Self::SwHardeningNeeded => "SWHardeningNeeded",
            Self::ConfigurationNeeded => "ConfigurationNeeded",
            Self::OutOfDate => "OutOfDate",
            Self::Revoked => "Revoked",
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<TcbStatus> for dcap_qvl::TcbStatus {
    fn from(status: TcbStatus) -> Self {
        match status {
            TcbStatus::UpToDate => Self::UpToDate,
            TcbStatus::SwHardeningNeeded => Self::SWHardeningNeeded,
            TcbStatus::ConfigurationNeeded => Self::ConfigurationNeeded,
            TcbStatus::OutOfDate => Self::OutOfDate,
            TcbStatus::Revoked => Self::Revoked,
        }
    }
}

/// Dates and verdict of a set of collateral.
///
/// dcap-qvl accepts the collateral at `now` only if `issue_date <= now < next_update`: it checks TCB Info
/// and QE Identity against `issue_date <= now <= next_update`, but webpki already refuses the CRLs at
/// `now == next_update`. An inverted window (`next_update <= issue_date`) yields collateral that no
/// `now` accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollateralOptions {
    /// Unix seconds: the TCB Info and QE Identity `issueDate`, the CRLs' thisUpdate.
    pub issue_date: u64,
    /// Unix seconds: the TCB Info and QE Identity `nextUpdate`, the CRLs' nextUpdate.
    pub next_update: u64,
    /// What the TCB Info says of the TCB level this PKI's platform (and a [`crate::TdInput::new`] TD)
    /// is at.
    pub tcb_status: TcbStatus,
    /// The TCB Info's `tcbEvaluationDataNumber`: Intel raises it at each TCB recovery.
    pub tcb_evaluation_data_number: u32,
}

impl CollateralOptions {
    /// Up-to-date collateral issued a day before `now` and valid for `days` days after it.
    pub fn valid_from(now: u64, days: u64) -> Self {
        Self {
            issue_date: now.saturating_sub(SECS_PER_DAY),
            next_update: now.saturating_add(days.saturating_mul(SECS_PER_DAY)),
            tcb_status: TcbStatus::UpToDate,
            tcb_evaluation_data_number: platform::TCB_EVALUATION_DATA_NUMBER,
        }
    }
}

pub(crate) fn build(pki: &Hierarchy, opts: &CollateralOptions) -> QuoteCollateralV3 {
    let issue_date = rfc3339(opts.issue_date);
    let next_update = rfc3339(opts.next_update);
    let tcb_info = tcb_info_json(
        &issue_date,
        &next_update,
        opts.tcb_status,
        opts.tcb_evaluation_data_number,
    );
    let qe_identity = qe_identity_json(&issue_date, &next_update);

    // rcgen refuses a CRL whose nextUpdate is not after its thisUpdate; nudging it keeps an inverted
    // window possible (the TCB Info still carries the dates asked for, and no `now` accepts it).
    let this_update_secs = opts.issue_date.min(LATEST - 1);
    let this_update = unix_time(this_update_secs);
    let crl_next_update = unix_time(opts.next_update.clamp(this_update_secs + 1, LATEST));

    // Intel signs TCB Info and QE Identity with the same certificate, and dcap-qvl verifies that chain
    // once when both issuer chains are the same string.
    let signing_chain = pki.tcb_signing_chain_pem();
    QuoteCollateralV3 {
        pck_crl_issuer_chain: pki.pck_crl_issuer_chain_pem(),
        root_ca_crl: pki.root_crl_der(this_update, crl_next_update),
        pck_crl: pki.pck_crl_der(this_update, crl_next_update),
        tcb_info_issuer_chain: signing_chain.clone(),
        tcb_info_signature: pki.tcb_signing_key().sign_raw(tcb_info.as_bytes()).to_vec(),
        tcb_info,
        qe_identity_issuer_chain: signing_chain,
        qe_identity_signature: pki
            .tcb_signing_key()
            .sign_raw(qe_identity.as_bytes())
            .to_vec(),
        qe_identity,
        // None, as PCCS collateral has it: the verifier then takes the PCK chain from the quote.
        pck_certificate_chain: None,
    }
}

/// Intel's date format, e.g. `2024-06-03T10:10:10Z`.
fn rfc3339(secs: u64) -> String {
    let t: OffsetDateTime = unix_time(secs.min(LATEST));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The body of Intel's TCB Info for TDX, field for field (the signature covers these exact bytes).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoJson<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    fmspc: String,
    pce_id: String,
    tcb_type: u8,
    tcb_evaluation_data_number: u32,
    tdx_module: TdxModuleJson,
    tdx_module_identities: Vec<TdxModuleIdentityJson<'a>>,
    tcb_levels: Vec<TcbLevelJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleJson {
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleIdentityJson<'a> {
    id: String,
    #[serde(flatten)]
    module: TdxModuleJson,
    tcb_levels: Vec<IsvSvnLevelJson<'a>>,
}

/// A level of a TDX module identity or of the QE identity: matched by one ISV SVN.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IsvSvnLevelJson<'a> {
    tcb: IsvSvn,
    tcb_date: &'a str,
    tcb_status: TcbStatus,
}

#[derive(Serialize)]
struct IsvSvn {
    isvsvn: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevelJson<'a> {
    tcb: TcbJson,
    tcb_date: &'a str,
    tcb_status: TcbStatus,
}

#[derive(Serialize)]
struct TcbJson {
    sgxtcbcomponents: Vec<Svn>,
    pcesvn: u16,
    tdxtcbcomponents: Vec<Svn>,
}

#[derive(Serialize)]
struct Svn {
    svn: u8,
}

fn components(svns: &[u8]) -> Vec<Svn> {
    svns.iter().map(|&svn| Svn { svn }).collect()
}

fn tdx_module() -> TdxModuleJson {
    TdxModuleJson {
        mrsigner: hex::encode_upper(platform::TDX_MODULE_MRSIGNER),
        attributes: hex::encode_upper(platform::SEAM_ATTRIBUTES),
        // Every SEAM attribute bit must match (all zero).
        attributes_mask: "FF".repeat(platform::SEAM_ATTRIBUTES.len()),
    }
}

/// Two TCB levels: the platform's own, with the status asked for, and a floor (all SVNs zero) that is
/// `OutOfDate`, so a TD with an older TEE TCB SVN than the platform's still matches a level, as on real
/// hardware running an old TDX module. The module identity likewise calls an older module SVN `OutOfDate`.
fn tcb_info_json(
    issue_date: &str,
    next_update: &str,
    status: TcbStatus,
    evaluation: u32,
) -> String {
    let floor_date = rfc3339(CERT_NOT_BEFORE);
    let tcb_info = TcbInfoJson {
        id: "TDX",
        version: 3,
        issue_date,
        next_update,
        fmspc: hex::encode_upper(platform::FMSPC),
        pce_id: hex::encode_upper(platform::PCE_ID),
        tcb_type: 0,
        tcb_evaluation_data_number: evaluation,
        tdx_module: tdx_module(),
        tdx_module_identities: vec![TdxModuleIdentityJson {
            id: format!("TDX_{:02X}", platform::TDX_MODULE_MAJOR_VERSION),
            module: tdx_module(),
            tcb_levels: vec![
                IsvSvnLevelJson {
                    tcb: IsvSvn {
                        isvsvn: platform::TDX_MODULE_SVN.into(),
                    },
                    tcb_date: issue_date,
                    tcb_status: TcbStatus::UpToDate,
                },
                IsvSvnLevelJson {
                    tcb: IsvSvn { isvsvn: 0 },
                    tcb_date: &floor_date,
                    tcb_status: TcbStatus::OutOfDate,
                },
            ],
        }],
        tcb_levels: vec![
            TcbLevelJson {
                tcb: TcbJson {
                    sgxtcbcomponents: components(&platform::CPU_SVN),
                    pcesvn: platform::PCE_SVN,
                    tdxtcbcomponents: components(&platform::TEE_TCB_SVN),
                },
                tcb_date: issue_date,
                tcb_status: status,
            },
            TcbLevelJson {
                tcb: TcbJson {
                    sgxtcbcomponents: components(&[0; 16]),
                    pcesvn: 0,
                    tdxtcbcomponents: components(&[0; 16]),
                },
                tcb_date: &floor_date,
                tcb_status: TcbStatus::OutOfDate,
            },
        ],
    };
    serde_json::to_string(&tcb_info).expect("TCB Info serializes")
}

/// The body of Intel's QE Identity for the TD quoting enclave.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentityJson<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    tcb_evaluation_data_number: u32,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<IsvSvnLevelJson<'a>>,
}

fn qe_identity_json(issue_date: &str, next_update: &str) -> String {
    let qe_identity = QeIdentityJson {
        id: "TD_QE",
        version: 2,
        issue_date,
        next_update,
        tcb_evaluation_data_number: platform::TCB_EVALUATION_DATA_NUMBER,
        // dcap-qvl reads these four bytes as a little-endian u32.
        miscselect: hex::encode_upper(platform::QE_MISCSELECT.to_le_bytes()),
        miscselect_mask: hex::encode_upper(platform::QE_MISCSELECT_MASK.to_le_bytes()),
        attributes: hex::encode_upper(platform::QE_ATTRIBUTES),
        attributes_mask: hex::encode_upper(platform::QE_ATTRIBUTES_MASK),
        mrsigner: hex::encode_upper(platform::QE_MRSIGNER),
        isvprodid: platform::QE_ISV_PROD_ID,
        tcb_levels: vec![IsvSvnLevelJson {
            tcb: IsvSvn {
                isvsvn: platform::QE_ISV_SVN,
            },
            tcb_date: issue_date,
            tcb_status: TcbStatus::UpToDate,
        }],
    };
    serde_json::to_string(&qe_identity).expect("QE Identity serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_formatted_as_intel_does() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_717_409_410), "2024-06-03T10:10:10Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn statuses_serialize_as_intel_spells_them() {
        for status in [
            TcbStatus::UpToDate,
            TcbStatus::SwHardeningNeeded,
            TcbStatus::ConfigurationNeeded,
            TcbStatus::OutOfDate,
            TcbStatus::Revoked,
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(
                dcap_qvl::TcbStatus::from(status).to_string(),
                status.as_str()
            );
            assert_eq!(serde_json::from_str::<TcbStatus>(&json).unwrap(), status);
        }
    }

    #[test]
    fn tcb_info_and_qe_identity_parse_as_dcap_qvl_reads_them() {
        let tcb_info: dcap_qvl::TcbInfo = serde_json::from_str(&tcb_info_json(
            "2024-01-01T00:00:00Z",
            "2024-02-01T00:00:00Z",
            TcbStatus::SwHardeningNeeded,
            21,
        ))
        .unwrap();
        assert_eq!(tcb_info.id, "TDX");
        assert_eq!(tcb_info.fmspc, "90C06F000000");
        assert_eq!(
            tcb_info.tcb_levels[0].tcb_status,
            dcap_qvl::TcbStatus::SWHardeningNeeded
        );
        assert_eq!(tcb_info.tcb_levels[0].tcb.tdx_components[0].svn, 5);
        assert_eq!(tcb_info.tdx_module_identities[0].id, "TDX_01");

        let qe: dcap_qvl::QeIdentity = serde_json::from_str(&qe_identity_json(
            "2024-01-01T00:00:00Z",
            "2024-02-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!(qe.id, "TD_QE");
        assert_eq!(qe.mrsigner, platform::QE_MRSIGNER);
        assert_eq!(qe.miscselect_mask, [0xFF; 4]);
    }
}
