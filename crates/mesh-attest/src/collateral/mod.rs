//! Intel's collateral (CRLs, TCB info, QE identity) per FMSPC: pinned from a file, or fetched from a
//! PCCS, cached in memory and on disk, refreshed before it expires and served from the cache while
//! the PCCS is unreachable.
//!
//! Collateral is per platform family (FMSPC), not per quote, and valid for about a month, so one
//! fetch serves every peer on the same kind of machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::config::PckCa;
use der::Decode as _;
use serde::Deserialize;

use crate::time_fmt::{fmt_unix, parse_rfc3339};

mod pccs;
pub use pccs::{HttpError, Pccs, PccsError, RETRY_AFTER_FAILURE};

const DAY: u64 = 24 * 60 * 60;

/// A collateral as the verdict cache tells collaterals apart: Intel re-issues TCB info (for
/// instance to revoke a TCB level) with a new issue date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CollateralId {
    pub fmspc: [u8; 6],
    pub tcb_info_issue_date: u64,
}

/// What a collateral is for and when it is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollateralInfo {
    /// The platform family its TCB info is for.
    pub fmspc: [u8; 6],
    pub tcb_info_issue_date: u64,
    /// The TCB info's evaluation data number: Intel raises it at each TCB recovery, and a cluster's TCB policy
    /// may ask for a minimum (0 when the TCB info has none).
    pub tcb_evaluation_data_number: u32,
    /// The latest issue date of its parts (TCB info, QE identity, both CRLs): valid from here.
    pub issue_date: u64,
    /// The last second at which all its parts are valid, as dcap-qvl checks them: the earliest
    /// `nextUpdate` of the TCB info and QE identity, or the second before a CRL's `nextUpdate`.
    pub next_update: u64,
}

impl CollateralInfo {
    /// Reads the dates and the FMSPC. Signatures are not checked here; [`crate::verify`] does that.
    ///
    /// # Errors
    /// [`CollateralError::Parse`] naming the part that cannot be read.
    pub fn of(collateral: &QuoteCollateralV3) -> Result<Self, CollateralError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Dated {
            issue_date: String,
            next_update: String,
            #[serde(default)]
            fmspc: Option<String>,
            #[serde(default)]
            tcb_evaluation_data_number: u32,
        }
        fn dated(part: &'static str, json: &str) -> Result<(Dated, u64, u64), CollateralError> {
            let fail = |reason: String| CollateralError::Parse { part, reason };
            let d: Dated = serde_json::from_str(json).map_err(|e| fail(e.to_string()))?;
            let issue = parse_rfc3339(&d.issue_date)
                .ok_or_else(|| fail(format!("issueDate `{}` is not RFC 3339", d.issue_date)))?;
            let next = parse_rfc3339(&d.next_update)
                .ok_or_else(|| fail(format!("nextUpdate `{}` is not RFC 3339", d.next_update)))?;
            Ok((d, issue, next))
        }
        fn crl(part: &'static str, der: &[u8]) -> Result<(u64, Option<u64>), CollateralError> {
            let list =
                x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
                    .map_err(|e| CollateralError::Parse {
                    part,
                    reason: e.to_string(),
                })?;
            let tbs = &list.tbs_cert_list;
            Ok((
                tbs.this_update.to_unix_duration().as_secs(),
                tbs.next_update.map(|t| t.to_unix_duration().as_secs()),
            ))
        }

        let (tcb, tcb_issue, tcb_next) = dated("TCB info", &collateral.tcb_info)?;
        let (_, qe_issue, qe_next) = dated("QE identity", &collateral.qe_identity)?;
        let fmspc_hex = tcb.fmspc.ok_or(CollateralError::Parse {
            part: "TCB info",
            reason: "it has no fmspc".into(),
        })?;
        let fmspc = hex::decode(&fmspc_hex)
            .ok()
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .ok_or_else(|| CollateralError::Parse {
                part: "TCB info",
                reason: format!("fmspc `{fmspc_hex}` is not 6 bytes of hex"),
            })?;
        let mut issue_date = tcb_issue.max(qe_issue);
        let mut next_update = tcb_next.min(qe_next);
        for (part, der) in [
            ("root CA CRL", &collateral.root_ca_crl),
            ("PCK CRL", &collateral.pck_crl),
        ] {
            let (this, next) = crl(part, der)?;
            issue_date = issue_date.max(this);
            // A CRL is stale from its nextUpdate on (webpki), TCB info and QE identity only after it.
            if let Some(next) = next {
                next_update = next_update.min(next.saturating_sub(1));
            }
        }
        Ok(Self {
            fmspc,
            tcb_info_issue_date: tcb_issue,
            tcb_evaluation_data_number: tcb.tcb_evaluation_data_number,
            issue_date,
            next_update,
        })
    }

    pub fn id(&self) -> CollateralId {
        CollateralId {
            fmspc: self.fmspc,
            tcb_info_issue_date: self.tcb_info_issue_date,
        }
    }

    pub fn is_valid_at(&self, now: u64) -> bool {
        self.issue_date <= now && now <= self.next_update
    }
}

/// Whether a collateral valid from `issue` to `next_update` should be fetched again at `now`: once
/// three quarters of its window have passed, or less than a day is left. Early enough that a PCCS
/// outage of days does not let it lapse; late enough not to ask every hour.
pub fn refresh_due(issue: u64, next_update: u64, now: u64) -> bool {
    let Some(left) = next_update.checked_sub(now) else {
        return true;
    };
    if left < DAY {
        return true;
    }
    let window = next_update.saturating_sub(issue);
    let elapsed = now.saturating_sub(issue);
    elapsed.saturating_mul(4) >= window.saturating_mul(3)
}

/// The platform a quote comes from, as a PCCS is asked about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    pub fmspc: [u8; 6],
    /// Which Intel CA issued its PCK certificate: it picks the PCK CRL.
    pub ca: PckCa,
}

/// Reads the FMSPC and the PCK CA from the PCK certificate inside a quote (dstack's quotes carry
/// their chain: certification data type 5).
///
/// # Errors
/// [`CollateralError::Quote`] when the quote is not a readable TDX quote or its certificate names no
/// platform.
pub fn quote_platform(quote: &[u8]) -> Result<Platform, CollateralError> {
    let parsed =
        dcap_qvl::quote::Quote::parse(quote).map_err(|e| QuoteError::Parse(format!("{e:#}")))?;
    // Before any PCCS is asked: only TDX collateral is fetched, so an SGX quote's would be wrong.
    if parsed.report.as_td10().is_none() {
        return Err(QuoteError::NotTdx.into());
    }
    let fmspc =
        dcap_qvl::intel::quote_fmspc(&parsed).map_err(|e| QuoteError::Fmspc(format!("{e:#}")))?;
    let ca = dcap_qvl::intel::quote_ca(&parsed).map_err(|e| QuoteError::PckCa(format!("{e:#}")))?;
    Ok(Platform { fmspc, ca })
}

/// Why a quote names no platform: it is not one the node's guest agent made. dcap-qvl's errors are
/// anyhow's, so their text is kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("the quote cannot be parsed: {0}")]
    Parse(String),
    #[error("the quote is an SGX quote, not a TDX one")]
    NotTdx,
    #[error("the quote's PCK certificate names no FMSPC: {0}")]
    Fmspc(String),
    #[error("the quote's PCK certificate names no issuing CA: {0}")]
    PckCa(String),
}

/// Why no collateral could be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CollateralError {
    #[error("the collateral's {part} cannot be read: {reason}")]
    Parse { part: &'static str, reason: String },
    #[error("the collateral file {path} cannot be read: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "no pinned collateral is for FMSPC {}: pin collateral fetched for this platform too",
        hex::encode(fmspc)
    )]
    NoneForFmspc { fmspc: [u8; 6] },
    #[error("the quote does not name its platform: {0}")]
    Quote(QuoteError),
    #[error("the PCCS URL `{url}` is not usable: {reason}")]
    PccsUrl { url: String, reason: PccsError },
    #[error(
        "the PCCS answered with collateral for FMSPC {} when asked for {}",
        hex::encode(got),
        hex::encode(asked)
    )]
    WrongFmspc { asked: [u8; 6], got: [u8; 6] },
    #[error(
        "no collateral for FMSPC {}: the PCCS is unreachable ({reason}){}",
        hex::encode(fmspc),
        match expired_at {
            Some(at) => format!(" and the cached collateral expired at {}", fmt_unix(*at)),
            None => " and nothing is cached".to_owned(),
        }
    )]
    Unavailable {
        fmspc: [u8; 6],
        reason: PccsError,
        expired_at: Option<u64>,
    },
    #[error("the collateral cache directory {path} cannot be used: {reason}")]
    CacheDir { path: PathBuf, reason: String },
}

// By hand, not `#[from]`: that would also make it the source, and a report of the chain would say it
// twice.
impl From<QuoteError> for CollateralError {
    fn from(error: QuoteError) -> Self {
        Self::Quote(error)
    }
}

fn read_collateral_json(json: &str) -> Result<Vec<QuoteCollateralV3>, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| serde_json::from_value(item).map_err(|e| format!("entry {i}: {e}")))
            .collect(),
        one => Ok(vec![
            serde_json::from_value(one).map_err(|e| e.to_string())?,
        ]),
    }
}

/// Collateral an operator pinned: one `QuoteCollateralV3` JSON object, or an array of them.
#[derive(Clone, Debug, Default)]
pub struct PinnedCollateral {
    by_fmspc: BTreeMap<[u8; 6], (Arc<QuoteCollateralV3>, CollateralInfo)>,
}

impl PinnedCollateral {
    /// # Errors
    /// [`CollateralError`] when the JSON or any collateral in it cannot be read.
    pub fn from_json(json: &str) -> Result<Self, CollateralError> {
        let list = read_collateral_json(json).map_err(|reason| CollateralError::Parse {
            part: "JSON",
            reason,
        })?;
        let mut pinned = Self::default();
        for collateral in list {
            pinned.insert(collateral)?;
        }
        Ok(pinned)
    }

    /// # Errors
    /// [`CollateralError::File`] when the file cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, CollateralError> {
        let file = |reason: String| CollateralError::File {
            path: path.to_owned(),
            reason,
        };
        let json = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Self::from_json(&json).map_err(|e| file(e.to_string()))
    }

    /// Adds one; of two for the same FMSPC the one with the later TCB info stays.
    ///
    /// # Errors
    /// [`CollateralError::Parse`] when it cannot be read.
    pub fn insert(
        &mut self,
        collateral: QuoteCollateralV3,
    ) -> Result<CollateralInfo, CollateralError> {
        let info = CollateralInfo::of(&collateral)?;
        let newer = self
            .by_fmspc
            .get(&info.fmspc)
            .is_none_or(|(_, old)| old.tcb_info_issue_date <= info.tcb_info_issue_date);
        if newer {
            self.by_fmspc
                .insert(info.fmspc, (Arc::new(collateral), info));
        }
        Ok(info)
    }

    pub fn get(&self, fmspc: &[u8; 6]) -> Option<Arc<QuoteCollateralV3>> {
        self.by_fmspc.get(fmspc).map(|(c, _)| Arc::clone(c))
    }

    pub fn fmspcs(&self) -> impl Iterator<Item = &[u8; 6]> {
        self.by_fmspc.keys()
    }
}

/// Where the agent gets collateral. A copy shares the PCCS client and what it has fetched.
#[derive(Clone)]
pub enum CollateralSource {
    Pinned(PinnedCollateral),
    Pccs(Arc<Pccs>),
}

impl CollateralSource {
    /// Whether the PCCS's last fetch failed: when (Unix seconds) and why. Never for pinned collateral.
    pub fn failing(&self) -> Option<(u64, PccsError)> {
        match self {
            Self::Pinned(_) => None,
            Self::Pccs(pccs) => pccs.failing(),
        }
    }

    /// How long after a failed fetch the PCCS is asked again ([`Pccs::set_retry_after`]).
    pub fn set_retry_after(&self, after: std::time::Duration) {
        if let Self::Pccs(pccs) = self {
            pccs.set_retry_after(after);
        }
    }

    /// The collateral for the platform `quote` comes from.
    ///
    /// # Errors
    /// [`CollateralError`]: the quote names no platform, nothing is pinned for it, or the PCCS is
    /// unreachable and nothing valid is cached.
    pub async fn for_quote(
        &self,
        quote: &[u8],
        now: u64,
    ) -> Result<Arc<QuoteCollateralV3>, CollateralError> {
        self.for_platform(quote_platform(quote)?, now).await
    }

    /// The collateral for `platform`: the same `Arc` until new collateral is pinned or fetched, so that
    /// a verdict reached on it can be kept while it is.
    ///
    /// # Errors
    /// [`CollateralError`]: nothing is pinned for the platform, or the PCCS is unreachable and nothing
    /// valid is cached.
    pub async fn for_platform(
        &self,
        platform: Platform,
        now: u64,
    ) -> Result<Arc<QuoteCollateralV3>, CollateralError> {
        match self {
            Self::Pinned(pinned) => {
                pinned
                    .get(&platform.fmspc)
                    .ok_or(CollateralError::NoneForFmspc {
                        fmspc: platform.fmspc,
                    })
            }
            Self::Pccs(pccs) => pccs.for_platform(platform, now).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE: u64 = 1_750_000_000;
    const NEXT: u64 = ISSUE + 30 * DAY;

    #[test]
    fn fresh_collateral_is_not_refreshed() {
        assert!(!refresh_due(ISSUE, NEXT, ISSUE));
        assert!(!refresh_due(ISSUE, NEXT, ISSUE + 10 * DAY));
        assert!(!refresh_due(ISSUE, NEXT, ISSUE + 22 * DAY));
    }

    #[test]
    fn collateral_is_refreshed_after_three_quarters_of_its_window() {
        assert!(refresh_due(ISSUE, NEXT, ISSUE + 22 * DAY + DAY / 2));
        assert!(refresh_due(ISSUE, NEXT, ISSUE + 29 * DAY));
    }

    #[test]
    fn collateral_is_refreshed_with_less_than_a_day_left_even_in_a_short_window() {
        let next = ISSUE + 2 * DAY;
        assert!(!refresh_due(ISSUE, next, ISSUE + DAY / 2));
        assert!(refresh_due(ISSUE, next, ISSUE + DAY + 1));
    }

    #[test]
    fn expired_collateral_is_due() {
        assert!(refresh_due(ISSUE, NEXT, NEXT));
        assert!(refresh_due(ISSUE, NEXT, NEXT + 1));
        assert!(refresh_due(ISSUE, NEXT, u64::MAX));
    }

    #[test]
    fn a_clock_before_the_issue_date_does_not_force_a_refresh() {
        assert!(!refresh_due(ISSUE, NEXT, ISSUE - DAY));
        assert!(!refresh_due(ISSUE, NEXT, 0));
    }
}
