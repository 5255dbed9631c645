//! The chain task's attestation pass: each seat's evidence checked ([`crate::attestation::Checker`]) under the
//! collateral for its platform, then under the cluster's allowlists as the app auth answers them. The I/O
//! (collateral from a PCCS, the allowlist reads) is here; the decisions are in [`crate::attestation`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::B256;
use mesh_attest::collateral::CollateralSource;
use mesh_attest::{Evidence, QuoteCollateralV3, Refusal, Verdict};
use mesh_chain::follow::Follower;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::view::{Binding, ChainView};
use tracing::{info, warn};

use crate::attestation::{self, Allowlisted, Attestations, Attested, Checker};

/// One allowlist answer, and when it was read (none: from the state file, to be read again).
#[derive(Clone, Copy)]
struct Answer {
    allowed: Allowlisted,
    read_at: Option<Instant>,
}

/// What the pass keeps between runs.
pub struct Attestor {
    checker: Checker,
    collateral: CollateralSource,
    allowlists: BTreeMap<(B256, B256), Answer>,
    /// Allowlist answers older than this are read again, and a pass runs at least this often, so that
    /// fresh collateral (a revoked TCB) and allowlist changes take effect without a new record.
    refresh: Duration,
    last_pass: Option<Instant>,
    /// Scrubs the RPC's credentials from read errors.
    rpc: RedactedUrl,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Attestor {
    /// Starts from the allowlist answers the state file kept.
    pub fn new(
        checker: Checker,
        collateral: CollateralSource,
        refresh: Duration,
        saved: Vec<Allowlisted>,
        rpc: RedactedUrl,
    ) -> Self {
        Self {
            checker,
            collateral,
            allowlists: saved
                .into_iter()
                .map(|a| {
                    let answer = Answer {
                        allowed: a,
                        read_at: None,
                    };
                    ((a.compose_hash, a.os_measurement), answer)
                })
                .collect(),
            refresh,
            last_pass: None,
            rpc,
        }
    }

    /// Whether a pass is due although the view did not change.
    pub fn due(&self) -> bool {
        self.last_pass.is_none_or(|t| t.elapsed() >= self.refresh)
    }

    /// The allowlist answers, for the state file.
    pub fn allowlists(&self) -> Vec<Allowlisted> {
        self.allowlists.values().map(|a| a.allowed).collect()
    }

    /// Every seat with a record in `view`, attested or refused. The allowlists are read through `follower`;
    /// without one (the RPC has not answered yet), the answers kept from before serve.
    pub async fn pass(
        &mut self,
        view: &ChainView,
        mut follower: Option<&mut Follower>,
    ) -> Attestations {
        let now = unix_now();
        let began = Instant::now();
        let mut out = Attestations::new();
        let mut cold = 0usize;
        for token in view.records.keys() {
            let Some(binding) = view.bindings.get(token) else {
                out.insert(*token, attestation::unbound());
                continue;
            };
            let cached = self.checker.cached_len();
            let verdict = match self.collateral_for(binding, now).await {
                Ok(collateral) => self.checker.check(
                    binding,
                    &view.pins.app_ids,
                    view.chain_id(),
                    view.contract,
                    &collateral,
                    now,
                ),
                Err(refusal) => Err(refusal),
            };
            cold += usize::from(self.checker.cached_len() != cached);
            let attested = match verdict {
                Ok(v) => match self.allowed(&v, follower.as_deref_mut()).await {
                    Ok(a) => attestation::attested(Ok(v), a.compose_allowed, a.os_allowed),
                    Err(refused) => refused,
                },
                Err(r) => attestation::attested(Err(r), true, true),
            };
            out.insert(*token, attested);
        }
        if cold > 0 {
            info!(
                seats = out.len(),
                verified_now = cold,
                elapsed_ms = began.elapsed().as_millis() as u64,
                "checked the seats' attestation evidence"
            );
        }
        self.last_pass = Some(Instant::now());
        out
    }

    /// The collateral for the binding's quote.
    async fn collateral_for(
        &self,
        binding: &Binding,
        now: u64,
    ) -> Result<Arc<QuoteCollateralV3>, Refusal> {
        let evidence =
            Evidence::decode(&binding.evidence).map_err(|e| Refusal::Malformed(e.to_string()))?;
        self.collateral
            .for_quote(&evidence.quote, now)
            .await
            .map_err(|e| Refusal::BadCollateral(e.to_string()))
    }

    /// The allowlists' answer for the verdict's compose hash and OS image: as read within the refresh
    /// interval, else read now, else (the RPC failing) as last read.
    async fn allowed(
        &mut self,
        verdict: &Verdict,
        follower: Option<&mut Follower>,
    ) -> Result<Allowlisted, Attested> {
        let key = (
            B256::from(verdict.compose_hash),
            B256::from(verdict.os_measurement),
        );
        let known = self.allowlists.get(&key).copied();
        if let Some(a) = known
            && a.read_at.is_some_and(|t| t.elapsed() < self.refresh)
        {
            return Ok(a.allowed);
        }
        let read = match follower {
            Some(f) => Some(
                f.allowlisted(key.0, key.1)
                    .await
                    .map_err(|e| self.rpc.scrub(&e.to_string())),
            ),
            None => None,
        };
        match (read, known) {
            (Some(Ok((compose_allowed, os_allowed))), _) => {
                let allowed = Allowlisted {
                    compose_hash: key.0,
                    os_measurement: key.1,
                    compose_allowed,
                    os_allowed,
                };
                if known.is_none_or(|k| k.allowed != allowed) {
                    info!(compose_hash = %key.0, os_measurement = %key.1, compose_allowed, os_allowed, "read the cluster's allowlists");
                }
                self.allowlists.insert(
                    key,
                    Answer {
                        allowed,
                        read_at: Some(Instant::now()),
                    },
                );
                Ok(allowed)
            }
            (Some(Err(e)), Some(k)) => {
                warn!(error = %e, "cannot read the cluster's allowlists; using the answer read before");
                Ok(k.allowed)
            }
            (None, Some(k)) => Ok(k.allowed),
            (Some(Err(e)), None) => Err(Attested::Refused {
                kind: "allowlist-unread",
                reason: format!(
                    "the cluster's allowlists could not be read for compose hash {} and OS image {}: {e}",
                    key.0, key.1
                ),
            }),
            (None, None) => Err(Attested::Refused {
                kind: "allowlist-unread",
                reason: format!(
                    "the cluster's allowlists for compose hash {} and OS image {} are not known until the RPC answers",
                    key.0, key.1
                ),
            }),
        }
    }
}
