//! The chain task's attestation pass: each seat's evidence checked ([`crate::attestation::Checker`]) under the
//! collateral for its platform, then under the cluster's allowlists as the app auth answers them. The I/O
//! (collateral from a PCCS, the allowlist reads) is here; the decisions are in [`crate::attestation`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::B256;
use mesh_attest::collateral::CollateralSource;
use mesh_attest::tcb::TcbPolicy;
use mesh_attest::{CollateralInfo, Evidence, QuoteCollateralV3, Refusal, Verdict};
use mesh_chain::budget;
use mesh_chain::follow::Follower;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::view::{Binding, ChainView};
use tracing::{info, warn};

use crate::attestation::{self, Allowlisted, Attestations, Attested, Checker};
use crate::tcb_stages::{BelowSince, Staging};

/// One allowlist answer, and when it was read (none: from the state file, to be read again).
#[derive(Clone, Copy)]
struct Answer {
    allowed: Allowlisted,
    read_at: Option<Instant>,
}

/// The cluster's TCB policy as last read (none: the owner set none, and the flags' statuses apply), and when.
struct PolicyAnswer {
    policy: Option<TcbPolicy>,
    read_at: Option<Instant>,
}

/// What the pass keeps between runs.
pub struct Attestor {
    checker: Checker,
    collateral: CollateralSource,
    allowlists: BTreeMap<(B256, B256), Answer>,
    /// None until first read: until then each agent's flags decide, as with no policy.
    tcb: Option<PolicyAnswer>,
    /// Since when each seat below the TCB policy has been.
    staging: Staging,
    /// A pass runs at least this often, so that fresh collateral (a revoked TCB) takes effect without a new
    /// record; allowlist answers and the TCB policy older than this are read again, or older than the
    /// cluster's budget allows ([`Attestor::reread_after`]).
    refresh: Duration,
    /// The cluster's nodes, as of the last pass.
    nodes: usize,
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
    /// Starts from the allowlist answers the state file kept (and, with [`Attestor::with_tcb_below`], from
    /// when each seat below the TCB policy fell below).
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
            tcb: None,
            staging: Staging::default(),
            refresh,
            nodes: 1,
            last_pass: None,
            rpc,
        }
    }

    /// Starts the TCB stages from what the state file kept.
    pub fn with_tcb_below(mut self, saved: &[BelowSince]) -> Self {
        self.staging = Staging::from_saved(saved);
        self
    }

    /// When each seat below the TCB policy fell below, for the state file.
    pub fn tcb_below(&self) -> Vec<BelowSince> {
        self.staging.saved()
    }

    /// Whether a seat fell below the TCB policy or came back since the last call: the state file is due.
    pub fn tcb_below_changed(&mut self) -> bool {
        self.staging.take_changed()
    }

    /// Whether a pass is due although the view did not change: every refresh interval, and when a seat below
    /// the TCB policy changes stage.
    pub fn due(&self) -> bool {
        let stage_changes = self
            .policy()
            .and_then(|p| self.staging.next_change(p, unix_now()))
            .is_some_and(|at| unix_now() >= at);
        stage_changes || self.last_pass.is_none_or(|t| t.elapsed() >= self.refresh)
    }

    /// The cluster's allowlists or TCB policy changed on-chain: every answer is read again, at a pass that is
    /// due now.
    pub fn allowlists_changed(&mut self) {
        for answer in self.allowlists.values_mut() {
            answer.read_at = None;
        }
        if let Some(t) = self.tcb.as_mut() {
            t.read_at = None;
        }
        self.last_pass = None;
    }

    /// How old an allowlist answer or the TCB policy may be before it is read again: `refresh`, stretched
    /// in a large cluster so that the nodes' rereads together stay within [`budget::RECHECKS_PER_SECOND`].
    /// A change on-chain does not wait for it: the follower reports it at its block
    /// ([`Attestor::allowlists_changed`]); this is the safety net for an event missed.
    fn reread_after(&self) -> Duration {
        // Two calls per allowlist answer (the compose hash, the OS image), and the policy's.
        let requests = 2 * self.allowlists.len().max(1) as u64 + 2;
        budget::recheck_period(self.refresh, self.nodes, requests)
    }

    fn policy(&self) -> Option<&TcbPolicy> {
        self.tcb.as_ref().and_then(|t| t.policy.as_ref())
    }

    /// Reads the TCB policy again when the last read is older than the refresh interval; on failure, the one
    /// read before serves.
    async fn read_policy(&mut self, follower: Option<&mut Follower>) {
        if self.tcb.as_ref().is_some_and(|t| {
            t.read_at
                .is_some_and(|at| at.elapsed() < self.reread_after())
        }) {
            return;
        }
        let Some(f) = follower else {
            return;
        };
        match f.tcb_policy().await {
            Ok(read) => {
                let policy = read.and_then(|r| {
                    TcbPolicy::from_chain(
                        r.statuses,
                        r.min_evaluation_data_number,
                        r.grace_secs,
                        r.drop_secs,
                        r.advisories,
                    )
                });
                if self.tcb.as_ref().is_none_or(|t| t.policy != policy) {
                    match &policy {
                        Some(p) => info!(
                            statuses = ?p.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                            min_evaluation_data_number = p.min_evaluation_data_number,
                            advisories = ?p.advisories,
                            grace_secs = p.grace.as_secs(),
                            drop_secs = p.drop.as_secs(),
                            "read the cluster's TCB policy"
                        ),
                        None => info!(
                            "the cluster sets no TCB policy: this agent's --allow-tcb-status flags decide"
                        ),
                    }
                }
                self.tcb = Some(PolicyAnswer {
                    policy,
                    read_at: Some(Instant::now()),
                });
            }
            Err(e) => {
                let error = self.rpc.scrub(&e.to_string());
                warn!(%error, "cannot read the cluster's TCB policy; keeping the one read before");
            }
        }
    }

    /// The allowlist answers, for the state file.
    pub fn allowlists(&self) -> Vec<Allowlisted> {
        self.allowlists.values().map(|a| a.allowed).collect()
    }

    /// Every seat with a record or a binding in `view`, attested or refused: a bound seat with no record is
    /// checked too, so that a binding whose quote shows another instance is disputed
    /// ([`crate::disputes`]) before it ever registers. The allowlists are read through `follower`; without
    /// one (the RPC has not answered yet), the answers kept from before serve.
    pub async fn pass(
        &mut self,
        view: &ChainView,
        mut follower: Option<&mut Follower>,
    ) -> Attestations {
        let now = unix_now();
        let began = Instant::now();
        self.nodes = view.records.len();
        self.read_policy(follower.as_deref_mut()).await;
        let policy = self.policy().cloned();
        // Under an on-chain policy every status but Revoked verifies, and the policy judges it after.
        let statuses = policy.as_ref().map(|_| {
            mesh_attest::TcbStatus::ALL
                .into_iter()
                .filter(|s| *s != mesh_attest::TcbStatus::Revoked)
                .collect::<std::collections::BTreeSet<_>>()
        });
        let mut out = Attestations::new();
        let mut cold = 0usize;
        let seats: std::collections::BTreeSet<u64> = view
            .records
            .keys()
            .chain(view.bindings.keys())
            .copied()
            .collect();
        for token in &seats {
            let Some(binding) = view.bindings.get(token) else {
                out.insert(*token, attestation::unbound());
                continue;
            };
            let cached = self.checker.cached_len();
            let mut evaluation = 0;
            let verdict = match self.collateral_for(binding, now).await {
                Ok(collateral) => {
                    evaluation =
                        CollateralInfo::of(&collateral).map_or(0, |i| i.tcb_evaluation_data_number);
                    let statuses = statuses
                        .clone()
                        .unwrap_or_else(|| self.checker.tcb_statuses().clone());
                    self.checker.check_with(
                        binding,
                        &view.pins.app_ids,
                        view.chain_id(),
                        view.contract,
                        &collateral,
                        now,
                        statuses,
                    )
                }
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
            let attested = match (attested, &policy) {
                (Attested::Verified(v), Some(p)) => {
                    let judged = p.judge(&v, evaluation);
                    let standing = self
                        .staging
                        .observe(*token, v.evidence_hash, judged, p, now);
                    attestation::under_tcb_policy(v, standing)
                }
                (other, _) => other,
            };
            out.insert(*token, attested);
        }
        // A seat gone, or bound to other evidence, starts afresh if it ever falls below again.
        self.staging.retain(|seat, evidence| {
            view.bindings
                .get(&seat)
                .is_some_and(|b| b.evidence_hash.0 == *evidence)
        });
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

    /// The collateral for the binding's quote. A quote that names no platform is refused as `malformed`, not
    /// `collateral` ([`Refusal`]'s `From<CollateralError>`).
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
            .map_err(Refusal::from)
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
            && a.read_at.is_some_and(|t| t.elapsed() < self.reread_after())
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
                kind: attestation::ALLOWLIST_UNREAD,
                reason: format!(
                    "the cluster's allowlists could not be read for compose hash {} and OS image {}: {e}",
                    key.0, key.1
                ),
            }),
            (None, None) => Err(Attested::Refused {
                kind: attestation::ALLOWLIST_UNREAD,
                reason: format!(
                    "the cluster's allowlists for compose hash {} and OS image {} are not known until the RPC answers",
                    key.0, key.1
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use alloy::primitives::{Address, Bytes, keccak256};
    use mesh_attest::collateral::PinnedCollateral;
    use mesh_attest::testing::boot_log;
    use mesh_attest::{TcbStatus, Trust};
    use tdx_mock::{MockPki, TdInput};

    use super::*;
    use crate::desired::tests::{record, view};

    /// Seat `token`'s binding, its evidence made of `quote` and a boot log.
    fn binding(token: u8, quote: Vec<u8>) -> Binding {
        let instance = [token; 20];
        let evidence = Bytes::from(
            Evidence {
                quote,
                events: boot_log([0xa1; 20], [0xc0; 32], instance),
            }
            .encode(),
        );
        Binding {
            instance_id: alloy::hex::encode(instance),
            node: Address::repeat_byte(token),
            evidence_hash: keccak256(&evidence),
            bound_block: 1,
            evidence,
        }
    }

    /// A seat whose quote is cut short is refused as `malformed`, naming the quote, not as `collateral`
    /// (which would send the operator to the PCCS); a genuine quote with no collateral for its platform is
    /// still a `collateral` refusal.
    #[tokio::test]
    async fn a_truncated_quote_is_refused_as_malformed_and_missing_collateral_as_collateral() {
        let pki = MockPki::from_seed([0x3b; 32]);
        let genuine = pki.quote(&TdInput::new([1; 48], [[2; 48]; 4], [3; 64]));
        let truncated = genuine[..genuine.len() / 2].to_vec();
        let mut chain = view(&[record(1, 1, ""), record(2, 2, "")]);
        chain.bindings.insert(1, binding(1, truncated));
        chain.bindings.insert(2, binding(2, genuine));
        let mut attestor = Attestor::new(
            Checker::new(
                Trust::from_der(pki.root_ca_der()).unwrap(),
                BTreeSet::from([TcbStatus::UpToDate]),
            ),
            CollateralSource::Pinned(PinnedCollateral::default()),
            Duration::from_secs(60),
            Vec::new(),
            RedactedUrl::new(&"http://127.0.0.1:8545".parse().unwrap()),
        );

        let got = attestor.pass(&chain, None).await;

        match &got[&1] {
            Attested::Refused { kind, reason } => {
                assert_eq!(*kind, "malformed", "{reason}");
                assert!(reason.contains("the quote cannot be parsed"), "{reason}");
                assert!(
                    !reason.contains("collateral") && !reason.contains("PCCS"),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            matches!(
                &got[&2],
                Attested::Refused {
                    kind: "collateral",
                    ..
                }
            ),
            "{:?}",
            got[&2]
        );
    }

    /// In a small cluster an allowlist answer is read again after `--full-read-secs`; at a thousand nodes,
    /// with one answer (two calls) and the policy (two), after 4,000 s, so that the nodes' rereads together
    /// are one request a second. The pass itself still runs every `--full-read-secs`.
    #[test]
    fn allowlists_are_read_again_less_often_in_a_large_cluster() {
        let pki = MockPki::from_seed([0x3c; 32]);
        let refresh = Duration::from_secs(60);
        let mut attestor = Attestor::new(
            Checker::new(
                Trust::from_der(pki.root_ca_der()).unwrap(),
                BTreeSet::from([TcbStatus::UpToDate]),
            ),
            CollateralSource::Pinned(PinnedCollateral::default()),
            refresh,
            vec![Allowlisted {
                compose_hash: B256::repeat_byte(1),
                os_measurement: B256::repeat_byte(2),
                compose_allowed: true,
                os_allowed: true,
            }],
            RedactedUrl::new(&"http://127.0.0.1:8545".parse().unwrap()),
        );
        attestor.nodes = 10;
        assert_eq!(attestor.reread_after(), refresh);
        attestor.nodes = 1000;
        assert_eq!(attestor.reread_after(), Duration::from_secs(4000));
        attestor.last_pass = Some(Instant::now() - refresh);
        assert!(attestor.due(), "a pass still runs every refresh");
    }
}
