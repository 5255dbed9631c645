//! A seat's attestation evidence checked as every agent checks it, for `mint`, `bind` and `peers`: the quote
//! under the trusted root and collateral with a TCB status the cluster's TCB policy accepts (or, with none,
//! `--allow-tcb-status`), its RTMR3 log replayed to the quote and
//! naming the seat's instance and an allowed app, its report data committing to this chain, cluster and node,
//! and the cluster's allowlists of compose hashes and OS images.

use alloy::primitives::B256;
use anyhow::{Context, bail};
use mesh_attest::cli::TrustArgs;
use mesh_attest::tcb::TcbPolicy;
use mesh_attest::{Evidence, Refusal, TcbStatus, Verdict};
use mesh_chain::contract::DstackClusterNFT;
use mesh_chain::error::ChainError;

use crate::cluster;

pub(crate) use mesh_attest::seat::Seat;

/// Why evidence is refused, with the refusal's kind in parentheses, as `meshctl` reports it. Kept typed in the
/// error so that a caller can tell a refusal of the evidence from one of `meshctl`'s own trust settings
/// ([`Refusal::depends_on_trust`]).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) Refusal);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.0.kind())
    }
}

impl std::error::Error for Refused {}

fn refused(r: Refusal) -> anyhow::Error {
    anyhow::Error::new(Refused(r))
}

/// The verdict on `evidence` for `seat`, or why it is refused (the refusal's kind in parentheses).
///
/// # Errors
/// The refusal, no collateral for the quote's platform, or a failed read of the allowlists.
pub(crate) async fn check(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
    trust: &TrustArgs,
    evidence: &[u8],
    seat: &Seat<'_>,
) -> anyhow::Result<Verdict> {
    let verdict = match tcb_policy(c).await? {
        None => verify_quote(trust, evidence, seat).await?,
        // Under the cluster's TCB policy every status but Revoked verifies, and the policy judges it, as
        // agents do.
        Some(policy) => {
            let all = TcbStatus::ALL
                .into_iter()
                .filter(|s| *s != TcbStatus::Revoked)
                .collect();
            let (verdict, evaluation) = verify_quote_with(trust, evidence, seat, all).await?;
            if let Err(shortfall) = policy.judge(&verdict, evaluation) {
                bail!(
                    "{shortfall}; agents admit such a node for the policy's grace period only, and then drop it (tcb-policy)"
                );
            }
            verdict
        }
    };
    let listed = Listed::read(c, &verdict).await?;
    listed.require()?;
    Ok(verdict)
}

/// The cluster's TCB policy, if its owner set one.
///
/// # Errors
/// When the app auth cannot be read.
async fn tcb_policy(
    c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
) -> anyhow::Result<Option<TcbPolicy>> {
    let p = cluster::app_auth(c)
        .await?
        .tcbPolicy()
        .call()
        .await
        .map_err(|e| ChainError::from_call("tcbPolicy", e))?;
    Ok(TcbPolicy::from_chain(
        p.statuses,
        p.minEvaluationDataNumber,
        p.graceSeconds,
        p.dropSeconds,
        p.advisoryIds,
    ))
}

/// The verdict on `evidence` for `seat` without the cluster's allowlists: the quote, its collateral and TCB
/// status, its RTMR3 log and its report data.
///
/// # Errors
/// The refusal (its kind in parentheses), or no collateral for the quote's platform.
pub(crate) async fn verify_quote(
    trust: &TrustArgs,
    evidence: &[u8],
    seat: &Seat<'_>,
) -> anyhow::Result<Verdict> {
    Ok(
        verify_quote_with(trust, evidence, seat, trust.tcb_statuses())
            .await?
            .0,
    )
}

/// [`verify_quote`] accepting the TCB statuses `statuses`, with the TCB evaluation data number of the
/// collateral it was verified under.
///
/// # Errors
/// The refusal (its kind in parentheses), or no collateral for the quote's platform.
async fn verify_quote_with(
    trust: &TrustArgs,
    evidence: &[u8],
    seat: &Seat<'_>,
    statuses: std::collections::BTreeSet<TcbStatus>,
) -> anyhow::Result<(Verdict, u32)> {
    let evidence = Evidence::decode(evidence)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let collateral = trust
        .collateral(None, None)?
        .for_quote(&evidence.quote, now)
        .await
        // A quote that does not parse is the node's to fix, not the collateral's.
        .map_err(|e| refused(Refusal::from(e)))?;
    let (policy, expected) = seat.requirements(&evidence, statuses).map_err(refused)?;
    let evaluation =
        mesh_attest::CollateralInfo::of(&collateral).map_or(0, |i| i.tcb_evaluation_data_number);
    let verdict = mesh_attest::verify(
        &evidence,
        &expected,
        &policy,
        &trust.trust()?,
        &collateral,
        now,
    )
    .map_err(refused)?;
    Ok((verdict, evaluation))
}

/// What a verified quote measures, and whether the cluster allows each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listed {
    pub(crate) compose: B256,
    pub(crate) compose_allowed: bool,
    pub(crate) os: B256,
    pub(crate) os_allowed: bool,
}

impl Listed {
    /// Reads the cluster's allowlists for `verdict`'s compose hash and OS image.
    ///
    /// # Errors
    /// When the app auth cannot be read.
    pub(crate) async fn read(
        c: &DstackClusterNFT::DstackClusterNFTInstance<crate::cluster::Chain>,
        verdict: &Verdict,
    ) -> anyhow::Result<Self> {
        let auth = cluster::app_auth(c).await?;
        let compose = B256::from(verdict.compose_hash);
        let os = B256::from(verdict.os_measurement);
        let read = |what: &'static str| move |e| ChainError::from_call(what, e);
        Ok(Self {
            compose,
            compose_allowed: auth
                .isComposeHashAllowed(compose)
                .call()
                .await
                .map_err(read("isComposeHashAllowed"))?,
            os,
            os_allowed: auth
                .isOsAllowed(os)
                .call()
                .await
                .map_err(read("isOsAllowed"))?,
        })
    }

    /// Both allowed, or what to run.
    ///
    /// # Errors
    /// The first that is not allowed, with the command that allows it.
    pub(crate) fn require(&self) -> anyhow::Result<()> {
        let Self { compose, os, .. } = self;
        if !self.compose_allowed {
            bail!(
                "the cluster does not allow its compose hash {compose}: allow it with `meshctl app-auth allow-compose {compose}` (compose-not-allowed)"
            );
        }
        if !self.os_allowed {
            bail!(
                "the cluster does not allow its OS image {os}: allow it with `meshctl app-auth allow-os {os}`, or bind with --allow-os (os-not-allowed)"
            );
        }
        Ok(())
    }
}
