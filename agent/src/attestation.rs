//! Whether a seat's binding is attested: its evidence (a TDX quote and its RTMR3 event log) verified with
//! `mesh-attest` for the seat's instance and node key, under the trusted root, the collateral and the
//! cluster's policy, then against the cluster's on-chain allowlists of compose hashes and OS images. Pure but
//! for the cache: time and collateral are parameters, so the chain task decides when to run it.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::Address;
use mesh_attest::seat::Seat;
use mesh_attest::{Evidence, QuoteCollateralV3, Refusal, TcbStatus, Trust, Verdict, VerdictCache};
use mesh_chain::view::{Binding, ChainView};

/// Verdicts kept: one per seat of a large cluster, and a few evidences more.
const CACHE_CAPACITY: usize = 4096;

/// A seat's attestation, as the mesh and the API see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    Verified(Box<Verdict>),
    Refused { kind: &'static str, reason: String },
}

impl Attested {
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified(_))
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
            Self::Verified(v) => mesh_api::Attestation {
                verified: true,
                tcb_status: Some(v.tcb_status.as_str().to_owned()),
                compose_hash: Some(format!("0x{}", alloy::hex::encode(v.compose_hash))),
                collateral_until: Some(v.collateral_next_update),
                kind: None,
                reason: None,
            },
            Self::Refused { kind, reason } => mesh_api::Attestation {
                verified: false,
                tcb_status: None,
                compose_hash: None,
                collateral_until: None,
                kind: Some((*kind).to_owned()),
                reason: Some(reason.clone()),
            },
        }
    }
}

/// Each seat's attestation, for the seats with a record or a binding.
pub type Attestations = BTreeMap<u64, Attested>;

/// `view` with only the records this node may configure: those of attested seats, and this node's own (it
/// does not configure itself, and must keep seeing its seat whatever its peers make of it).
pub fn admitted(view: &ChainView, attestations: &Attestations, own_instance: &str) -> ChainView {
    let mut admitted = view.clone();
    admitted.records.retain(|token, r| {
        r.instance_id == own_instance || attestations.get(token).is_some_and(Attested::is_verified)
    });
    admitted
}

/// What this node trusts evidence under, and the verdicts it reached.
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
        let evidence =
            Evidence::decode(&b.evidence).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let seat = Seat {
            instance_id: &b.instance_id,
            node: b.node,
            chain_id,
            contract,
            apps,
        };
        let (policy, expected) = seat.requirements(&evidence, self.tcb_statuses.clone())?;
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
        for kind in [UNBOUND, ALLOWLIST_UNREAD] {
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
        let attestations = Attestations::from([
            (1, attested(good, true, true)),
            (2, unbound()),
            (3, unbound()),
        ]);
        let admitted = admitted(&view, &attestations, &own);
        assert_eq!(admitted.records.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(admitted.last_block, view.last_block);
    }
}
