//! Whether a seat's binding is attested: its evidence (a TDX quote and its RTMR3 event log) verified with
//! `mesh-attest` for the seat's instance and node key, under the trusted root, the collateral and the
//! cluster's policy, then against the cluster's on-chain allowlists of compose hashes and OS images. Pure but
//! for the cache: time and collateral are parameters, so the chain task decides when to run it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use alloy::primitives::Address;
use mesh_attest::seat::Seat;
use mesh_attest::{Evidence, QuoteCollateralV3, Refusal, TcbStatus, Trust, Verdict, VerdictCache};
use mesh_chain::view::{Binding, ChainView};

use crate::tcb_stages::{Stage, Standing};

/// Verdicts kept: one per seat of a large cluster, and a few evidences more.
const CACHE_CAPACITY: usize = 4096;

/// A seat's attestation, as the mesh and the API see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    Verified(Box<Verdict>),
    /// Verified, but its platform is below the cluster's TCB policy: warned, or no longer admitted. A dropped
    /// one is [`Attested::Refused`] as [`TCB_POLICY`].
    BelowPolicy {
        verdict: Box<Verdict>,
        standing: Standing,
    },
    Refused {
        kind: &'static str,
        reason: String,
    },
}

impl Attested {
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified(_))
    }

    /// Whether it is refused, as `kind` (e.g. [`ALLOWLIST_UNREAD`]).
    pub fn is_refused_as(&self, kind: &str) -> bool {
        matches!(self, Self::Refused { kind: k, .. } if *k == kind)
    }

    /// Whether its record goes to the mesh, given whether it did before: a seat no longer admitted stays only
    /// where it was configured.
    pub fn admits(&self, before: bool) -> bool {
        match self {
            Self::Verified(_) => true,
            Self::BelowPolicy { standing, .. } => match standing.stage {
                Stage::Warned => true,
                Stage::NotAdmitted => before,
                Stage::Dropped => false,
            },
            Self::Refused { .. } => false,
        }
    }

    fn refused(refusal: &Refusal) -> Self {
        Self::Refused {
            kind: refusal.kind(),
            reason: refusal.to_string(),
        }
    }

    /// As the API shows it.
    pub fn to_api(&self) -> mesh_api::Attestation {
        match self {
            Self::Verified(v) => verified_api(v),
            Self::BelowPolicy { verdict, standing } => mesh_api::Attestation {
                reason: Some(standing.shortfall.clone()),
                tcb_stage: Some(standing.stage.as_str().to_owned()),
                tcb_stage_until: standing.until,
                ..verified_api(verdict)
            },
            Self::Refused { kind, reason } => mesh_api::Attestation {
                verified: false,
                tcb_status: None,
                compose_hash: None,
                collateral_until: None,
                kind: Some((*kind).to_owned()),
                reason: Some(reason.clone()),
                tcb_stage: None,
                tcb_stage_until: None,
            },
        }
    }
}

fn verified_api(v: &Verdict) -> mesh_api::Attestation {
    mesh_api::Attestation {
        verified: true,
        tcb_status: Some(v.tcb_status.as_str().to_owned()),
        compose_hash: Some(format!("0x{}", alloy::hex::encode(v.compose_hash))),
        collateral_until: Some(v.collateral_next_update),
        kind: None,
        reason: None,
        tcb_stage: None,
        tcb_stage_until: None,
    }
}

/// Each seat's attestation, for the seats with a record or a binding. Shared, so that a pass keeps the
/// verdicts of seats whose binding did not move without copying them.
pub type Attestations = BTreeMap<u64, Arc<Attested>>;

/// `view` with only the records this node may configure: those of attested seats, and this node's own (it
/// does not configure itself, and must keep seeing its seat whatever its peers make of it).
///
/// A seat no longer admitted under the cluster's TCB policy stays only if `before` (the view admitted last
/// time) had it: the nodes that configured it keep its sessions, and no other node (a new one, one restarted)
/// adds it.
pub fn admitted(
    view: ChainView,
    attestations: &Attestations,
    own_instance: &str,
    before: Option<&ChainView>,
) -> ChainView {
    let mut admitted = view;
    // Removed one by one: the records map stays shared with the view's, but for the paths to them.
    let refused: Vec<u64> = (admitted.records.iter())
        .filter(|&(token, r)| {
            let had = before.is_some_and(|b| b.records.contains_key(token));
            r.instance_id != own_instance && !attestations.get(token).is_some_and(|a| a.admits(had))
        })
        .map(|(token, _)| *token)
        .collect();
    for token in refused {
        admitted.records.remove(&token);
    }
    admitted
}

/// What this node trusts evidence under, and the verdicts it reached.
#[derive(Clone)]
pub struct Checker {
    trust: Trust,
    tcb_statuses: BTreeSet<TcbStatus>,
    cache: VerdictCache,
}

impl Checker {
    /// Evidence must chain to `trust` and its platform's TCB status be one of `tcb_statuses`.
    pub fn new(trust: Trust, tcb_statuses: BTreeSet<TcbStatus>) -> Self {
        Self {
            trust,
            tcb_statuses,
            cache: VerdictCache::new(CACHE_CAPACITY),
        }
    }

    /// The TCB statuses the flags accept.
    pub fn tcb_statuses(&self) -> &BTreeSet<TcbStatus> {
        &self.tcb_statuses
    }

    /// Verdicts cached: it grows by one for each evidence verified anew.
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// The quote's verdict for binding `b` of the cluster at `contract` on `chain_id`, whose app ids are
    /// `apps`: the evidence must name the binding's instance and one of those apps, and its report data commit
    /// to the chain, the contract and the binding's node key. The compose hash and OS image are left to
    /// [`allowlisted`], which needs the chain.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub fn check(
        &mut self,
        b: &Binding,
        apps: &[Address],
        chain_id: u64,
        contract: Address,
        collateral: &QuoteCollateralV3,
        now: u64,
    ) -> Result<Verdict, Refusal> {
        let statuses = self.tcb_statuses.clone();
        self.check_with(b, apps, chain_id, contract, collateral, now, statuses)
    }

    /// [`Checker::check`], accepting the TCB statuses `statuses` rather than the flags': all but Revoked
    /// under an on-chain TCB policy, which judges the status after.
    ///
    /// # Errors
    /// The [`Refusal`].
    #[allow(clippy::too_many_arguments)]
    pub fn check_with(
        &mut self,
        b: &Binding,
        apps: &[Address],
        chain_id: u64,
        contract: Address,
        collateral: &QuoteCollateralV3,
        now: u64,
        statuses: BTreeSet<TcbStatus>,
    ) -> Result<Verdict, Refusal> {
        let evidence =
            Evidence::decode(&b.evidence).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let seat = Seat {
            instance_id: &b.instance_id,
            node: b.node,
            chain_id,
            contract,
            apps,
        };
        let (policy, expected) = seat.requirements(&evidence, statuses)?;
        self.cache
            .verify(&evidence, &expected, &policy, &self.trust, collateral, now)
    }
}

/// The cluster's on-chain answer for one compose hash and OS image: whether the app auth allows each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allowlisted {
    pub compose_hash: alloy::primitives::B256,
    pub os_measurement: alloy::primitives::B256,
    pub compose_allowed: bool,
    pub os_allowed: bool,
}

/// A verdict under the cluster's on-chain allowlists: its compose hash and its OS image must be allowed.
///
/// # Errors
/// [`Refusal::ComposeNotAllowed`] or [`Refusal::OsNotAllowed`].
pub fn allowlisted(
    verdict: &Verdict,
    compose_allowed: bool,
    os_allowed: bool,
) -> Result<(), Refusal> {
    if !os_allowed {
        return Err(Refusal::OsNotAllowed {
            measurement: verdict.os_measurement,
        });
    }
    if !compose_allowed {
        return Err(Refusal::ComposeNotAllowed {
            hash: verdict.compose_hash,
        });
    }
    Ok(())
}

/// The kind of a seat with a record and no binding read ([`unbound`]).
pub const UNBOUND: &str = "unbound";
/// The kind of a seat whose image the allowlists could not yet be read for.
pub const ALLOWLIST_UNREAD: &str = "allowlist-unread";
/// The kind of a seat dropped for its platform: below the cluster's TCB policy past the grace and drop
/// periods.
pub const TCB_POLICY: &str = "tcb-policy";

/// Verdict `v` under the TCB policy, whose judgement gave `standing` (none: it meets the policy).
pub fn under_tcb_policy(v: Box<Verdict>, standing: Option<Standing>) -> Attested {
    match standing {
        None => Attested::Verified(v),
        Some(s) if s.stage == Stage::Dropped => Attested::Refused {
            kind: TCB_POLICY,
            reason: format!(
                "{}; below the cluster's TCB policy since {} (Unix seconds), past its grace and drop periods",
                s.shortfall, s.since
            ),
        },
        Some(standing) => Attested::BelowPolicy {
            verdict: v,
            standing,
        },
    }
}

/// The attestation of a seat with a record and no binding this node has read: its record is not believed
/// ([`mesh_chain::view::Rejected::Unbound`]), so this only shows up for a view from an old state file.
pub fn unbound() -> Attested {
    Attested::Refused {
        kind: UNBOUND,
        reason: "the seat has no binding with evidence: its holder binds the instance with `meshctl bind --instance`".into(),
    }
}

/// A seat's attestation from its verdict and the allowlists' answers.
pub fn attested(
    verdict: Result<Verdict, Refusal>,
    compose_allowed: bool,
    os_allowed: bool,
) -> Attested {
    match verdict.and_then(|v| allowlisted(&v, compose_allowed, os_allowed).map(|()| v)) {
        Ok(v) => Attested::Verified(Box::new(v)),
        Err(r) => Attested::refused(&r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` shows a sample for each kind mesh-api lists: the kinds the agent adds to the
    /// attestation's (whose own are checked in mesh-attest) must be among them.
    #[test]
    fn the_kinds_of_refusal_the_agent_adds_are_ones_the_api_lists() {
        for kind in [UNBOUND, ALLOWLIST_UNREAD, TCB_POLICY] {
            assert!(mesh_api::REFUSAL_KINDS.contains(&kind), "{kind}");
        }
    }
    use alloy::primitives::{Bytes, keccak256};
    use mesh_attest::report_data;
    use mesh_attest::testing::boot_log;
    use tdx_mock::{CollateralOptions, MockPki, TdInput};

    const NOW: u64 = 1_760_000_000;
    const CHAIN: u64 = 31337;
    const CONTRACT: Address = Address::repeat_byte(0xcc);
    const APP: [u8; 20] = [0xa1; 20];
    const A: [u8; 20] = [0x1a; 20];
    const B: [u8; 20] = [0x1b; 20];
    const NODE_A: Address = Address::repeat_byte(0x0a);
    const NODE_B: Address = Address::repeat_byte(0x0b);

    /// The evidence instance `instance` publishes after quoting for `node`, as the binding of `seat_instance`.
    fn binding(
        pki: &MockPki,
        instance: [u8; 20],
        node: Address,
        seat_instance: [u8; 20],
    ) -> Binding {
        let events = boot_log(APP, [0xc0; 32], instance);
        let rtmr3 = mesh_attest::replay::replay_rtmr3(&events).unwrap();
        let quote = pki.quote(&TdInput::new(
            [1; 48],
            [[2; 48], [3; 48], [4; 48], rtmr3],
            report_data(CHAIN, CONTRACT, node),
        ));
        let evidence = Bytes::from(Evidence { quote, events }.encode());
        Binding {
            instance_id: alloy::hex::encode(seat_instance),
            node,
            evidence_hash: keccak256(&evidence),
            bound_block: 1,
            evidence,
        }
    }

    fn world() -> (MockPki, Checker, QuoteCollateralV3) {
        let pki = MockPki::from_seed([9; 32]);
        let checker = Checker::new(
            Trust::from_der(pki.root_ca_der()).unwrap(),
            BTreeSet::from([TcbStatus::UpToDate]),
        );
        let collateral = pki.collateral(&CollateralOptions::valid_from(NOW - 86_400, 30));
        (pki, checker, collateral)
    }

    fn kind(r: &Result<Verdict, Refusal>) -> &'static str {
        r.as_ref().map_or_else(Refusal::kind, |_| "verified")
    }

    /// A's own binding verifies, and under the allowlists it is attested; with its compose hash or OS image not
    /// allowed it is refused, naming which.
    #[test]
    fn an_instances_own_binding_is_attested_under_the_allowlists() {
        let (pki, mut checker, collateral) = world();
        let b = binding(&pki, A, NODE_A, A);
        let apps = [Address::from(APP)];
        let v = checker.check(&b, &apps, CHAIN, CONTRACT, &collateral, NOW);
        assert_eq!(kind(&v), "verified");
        assert!(attested(v.clone(), true, true).is_verified());
        assert!(matches!(
            attested(v.clone(), false, true),
            Attested::Refused {
                kind: "compose-not-allowed",
                ..
            }
        ));
        assert!(matches!(
            attested(v, true, false),
            Attested::Refused {
                kind: "os-not-allowed",
                ..
            }
        ));
    }

    /// The sibling attack at the agent: B's genuine evidence (B's instance, B's node) offered as seat A's
    /// binding is refused for the instance; A's evidence replayed under B's node key (stolen evidence) for the
    /// report data; and a quote under another root for its signature.
    #[test]
    fn a_siblings_or_stolen_evidence_is_refused() {
        let (pki, mut checker, collateral) = world();
        let apps = [Address::from(APP)];
        let siblings = binding(&pki, B, NODE_B, A);
        let got = checker.check(&siblings, &apps, CHAIN, CONTRACT, &collateral, NOW);
        assert_eq!(kind(&got), "instance-mismatch");

        let mut stolen = binding(&pki, A, NODE_A, A);
        stolen.node = NODE_B;
        let got = checker.check(&stolen, &apps, CHAIN, CONTRACT, &collateral, NOW);
        assert_eq!(kind(&got), "report-data-mismatch");

        let other_root = MockPki::from_seed([8; 32]);
        let forged = binding(&other_root, A, NODE_A, A);
        let got = checker.check(&forged, &apps, CHAIN, CONTRACT, &collateral, NOW);
        assert_eq!(kind(&got), "signature");
    }

    /// Evidence for another cluster (or chain) does not pass here, and garbage is named as malformed.
    #[test]
    fn evidence_for_another_cluster_or_garbage_is_refused() {
        let (pki, mut checker, collateral) = world();
        let apps = [Address::from(APP)];
        let b = binding(&pki, A, NODE_A, A);
        let got = checker.check(
            &b,
            &apps,
            CHAIN,
            Address::repeat_byte(0xdd),
            &collateral,
            NOW,
        );
        assert_eq!(kind(&got), "report-data-mismatch");
        let mut garbage = b;
        garbage.evidence = Bytes::from_static(b"not evidence");
        let got = checker.check(&garbage, &apps, CHAIN, CONTRACT, &collateral, NOW);
        assert_eq!(kind(&got), "malformed");
    }

    /// Only attested seats' records are configured, but this node's own record stays whatever its peers make
    /// of it: it must keep seeing its seat.
    #[test]
    fn only_attested_seats_and_this_node_are_admitted() {
        let (pki, mut checker, collateral) = world();
        let apps = [Address::from(APP)];
        let view = crate::desired::tests::view(&[
            crate::desired::tests::record(1, 1, ""),
            crate::desired::tests::record(2, 2, ""),
            crate::desired::tests::record(3, 3, ""),
        ]);
        let own = view.records[&3].instance_id.clone();
        let good = checker.check(
            &binding(&pki, A, NODE_A, A),
            &apps,
            CHAIN,
            CONTRACT,
            &collateral,
            NOW,
        );
        let attestations = Attestations::from(
            [
                (1, attested(good, true, true)),
                (2, unbound()),
                (3, unbound()),
            ]
            .map(|(t, a)| (t, Arc::new(a))),
        );
        let admitted = admitted(view.clone(), &attestations, &own, None);
        assert_eq!(admitted.records.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(admitted.last_block, view.last_block);
    }

    /// Under an on-chain TCB policy, an OutOfDate platform verifies (every status but Revoked does), and the
    /// policy's stages decide: warned, it is admitted everywhere; not admitted, only where it was before (no
    /// node adds it); dropped, it is refused as `tcb-policy`, naming the shortfall.
    #[test]
    fn a_platform_below_the_tcb_policy_is_admitted_then_kept_only_where_it_was_then_dropped() {
        use crate::tcb_stages::Staging;
        use mesh_attest::tcb::TcbPolicy;

        let (pki, mut checker, _) = world();
        let out_of_date = pki.collateral(&CollateralOptions {
            tcb_status: tdx_mock::TcbStatus::OutOfDate,
            ..CollateralOptions::valid_from(NOW - 86_400, 30)
        });
        let apps = [Address::from(APP)];
        let b = binding(&pki, A, NODE_A, A);
        let flags = checker.check(&b, &apps, CHAIN, CONTRACT, &out_of_date, NOW);
        assert_eq!(
            kind(&flags),
            "tcb-status",
            "without a policy, the flags refuse it at once"
        );
        let all: BTreeSet<TcbStatus> = TcbStatus::ALL
            .into_iter()
            .filter(|s| *s != TcbStatus::Revoked)
            .collect();
        let v = checker
            .check_with(&b, &apps, CHAIN, CONTRACT, &out_of_date, NOW, all)
            .expect("every status but Revoked verifies");
        let policy = TcbPolicy::from_chain(1, 0, 600, 3600, []).unwrap();
        let mut staging = Staging::default();
        let mut at = |now: u64| {
            let standing = staging.observe(1, v.evidence_hash, policy.judge(&v, 17), &policy, now);
            under_tcb_policy(Box::new(v.clone()), standing)
        };
        let view = crate::desired::tests::view(&[crate::desired::tests::record(1, 1, "")]);
        let had_it = view.clone();
        let mut without = view.clone();
        without.records.clear();
        let seats = |a: Attested, before: &ChainView| {
            let attestations = Attestations::from([(1, a)].map(|(t, a)| (t, Arc::new(a))));
            admitted(view.clone(), &attestations, "own", Some(before))
                .records
                .len()
        };

        let warned = at(NOW);
        assert!(
            matches!(&warned, Attested::BelowPolicy { standing, .. } if standing.stage == Stage::Warned && standing.until == Some(NOW + 600)),
            "{warned:?}"
        );
        assert_eq!(warned.to_api().tcb_stage.as_deref(), Some("warned"));
        assert_eq!(
            (seats(warned.clone(), &had_it), seats(warned, &without)),
            (1, 1)
        );

        let not_admitted = at(NOW + 600);
        assert_eq!(
            not_admitted.to_api().tcb_stage_until,
            Some(NOW + 600 + 3600)
        );
        assert_eq!(
            (
                seats(not_admitted.clone(), &had_it),
                seats(not_admitted, &without)
            ),
            (1, 0),
            "kept where it was, added nowhere"
        );

        let dropped = at(NOW + 4200);
        match &dropped {
            Attested::Refused { kind, reason } => {
                assert_eq!(*kind, TCB_POLICY);
                assert!(reason.contains("OutOfDate"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(seats(dropped, &had_it), 0);
    }
}
