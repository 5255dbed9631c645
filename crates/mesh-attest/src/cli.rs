//! The flags that say what evidence is verified under, shared by the agent and `meshctl` so that both read
//! them alike: the root CA, where collateral comes from, and which TCB statuses pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::collateral::{CollateralError, CollateralSource, Pccs, PinnedCollateral};
use crate::policy::{PolicyError, TcbStatus};
use crate::verify::{Trust, TrustError};

/// Intel's Provisioning Certification Service, the PCCS of last resort.
pub const INTEL_PCS: &str = "https://api.trustedservices.intel.com";

/// What quotes are verified under.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The root CA that quotes must chain to, a PEM or DER file. Without it, Intel's SGX/TDX root (built
    /// in), the only root in production; tests and the local demo pin the dstack simulator's mock root here.
    #[arg(long, env = "DSTACK_MESH_TDX_ROOT_CA", value_name = "FILE")]
    pub tdx_root_ca: Option<PathBuf>,
    /// Verify with the collateral in this file (dcap-qvl's QuoteCollateralV3 JSON, one object or an array,
    /// one per platform FMSPC) and never fetch any: for air-gapped clusters. Refresh it before its
    /// nextUpdate, or quotes are refused as `collateral-expired`.
    #[arg(
        long,
        env = "DSTACK_MESH_TDX_COLLATERAL_FILE",
        value_name = "FILE",
        conflicts_with = "pccs_url"
    )]
    pub tdx_collateral_file: Option<PathBuf>,
    /// The PCCS that collateral is fetched from (Intel's PCS, Phala's, or your own), per platform; it is
    /// cached and refreshed before its nextUpdate.
    #[arg(long, env = "DSTACK_MESH_PCCS_URL", value_name = "URL", default_value = INTEL_PCS)]
    pub pccs_url: String,
    /// Also accept quotes from platforms with this TCB status (UpToDate always passes): for example
    /// SWHardeningNeeded. Repeat, or separate with commas. Revoked is never accepted.
    #[arg(long = "allow-tcb-status", env = "DSTACK_MESH_ALLOW_TCB_STATUS", value_name = "STATUS", value_delimiter = ',', value_parser = parse_allowed_tcb_status)]
    pub allow_tcb_status: Vec<TcbStatus>,
}

fn parse_allowed_tcb_status(text: &str) -> Result<TcbStatus, PolicyError> {
    match text.parse()? {
        TcbStatus::Revoked => Err(PolicyError::RevokedNeverAllowed),
        status => Ok(status),
    }
}

/// Why the flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustArgsError {
    #[error("--tdx-root-ca {path}: {reason}")]
    RootFile { path: PathBuf, reason: String },
    #[error("--tdx-root-ca {path}: {source}")]
    Root { path: PathBuf, source: TrustError },
    #[error("--tdx-collateral-file: {0}")]
    Collateral(CollateralError),
    #[error("--pccs-url: {0}")]
    Pccs(CollateralError),
}

impl TrustArgs {
    /// The root CA.
    ///
    /// # Errors
    /// [`TrustArgsError`] when the file cannot be read or holds no certificate.
    pub fn trust(&self) -> Result<Trust, TrustArgsError> {
        let Some(path) = &self.tdx_root_ca else {
            return Ok(Trust::intel());
        };
        let bytes = std::fs::read(path).map_err(|e| TrustArgsError::RootFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let root = match std::str::from_utf8(&bytes) {
            Ok(pem) if pem.contains("-----BEGIN") => Trust::from_pem(pem),
            _ => Trust::from_der(bytes),
        };
        root.map_err(|source| TrustArgsError::Root {
            path: path.clone(),
            source,
        })
    }

    /// The TCB statuses that pass.
    pub fn tcb_statuses(&self) -> BTreeSet<TcbStatus> {
        let mut statuses = BTreeSet::from([TcbStatus::UpToDate]);
        statuses.extend(self.allow_tcb_status.iter().copied());
        statuses
    }

    /// Where collateral comes from: the pinned file, else the PCCS, caching in `cache_dir` when given and
    /// giving up on an answer after `timeout` when given.
    ///
    /// # Errors
    /// [`TrustArgsError`] when the file cannot be read, or the URL or the cache directory not used.
    pub fn collateral(
        &self,
        cache_dir: Option<&Path>,
        timeout: Option<std::time::Duration>,
    ) -> Result<CollateralSource, TrustArgsError> {
        match &self.tdx_collateral_file {
            Some(path) => PinnedCollateral::load(path)
                .map(CollateralSource::Pinned)
                .map_err(TrustArgsError::Collateral),
            None => Pccs::new(&self.pccs_url, cache_dir.map(Path::to_owned))
                .map(|p| match timeout {
                    Some(t) => p.with_timeout(t),
                    None => p,
                })
                .map(|p| CollateralSource::Pccs(std::sync::Arc::new(p)))
                .map_err(TrustArgsError::Pccs),
        }
    }
}
