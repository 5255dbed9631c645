//! Which bindings this node disputes (`DstackClusterElection.disputeBinding`): those whose quote shows that
//! they claim an instance or node not their own. A seat holder can bind its seat to any instance id with a
//! sibling's genuine dstack chain (dstack's `GetKey` proves the app, not the instance), which locks the genuine
//! instance out of the cluster; f + 1 members disputing it release the instance, with no owner's hand.
//!
//! Pure: the disputer task ([`crate::tasks::disputer`]) sends what [`due`] returns.

use std::collections::BTreeSet;

use mesh_attest::Refusal;
use mesh_chain::view::ChainView;

use crate::attestation::{Attestations, Attested};

/// A binding to dispute: seat `target`'s, made at block `bound_block` (which names it to the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dispute {
    pub target: u64,
    pub bound_block: u64,
    /// The refusal that shows the false claim ([`Refusal::FALSE_CLAIM_KINDS`]).
    pub kind: &'static str,
}

impl Dispute {
    /// What names the binding: a seat disputes each binding once.
    pub fn key(&self) -> (u64, u64) {
        (self.target, self.bound_block)
    }
}

/// The bindings seat `own` disputes now, given the verdicts on `view`'s seats, leaving out those in `done`
/// (sent, or given up on, by their [`Dispute::key`]).
///
/// Nothing is disputed unless this node's own seat has a record and its own evidence passes the very checks
/// it applies to others: the contract takes a dispute only from an active seat's holder or registered node,
/// and an agent whose trust or collateral is broken must not judge anyone. Only a refusal that the quote
/// itself shows counts, never one that collateral, time or policy could turn.
pub fn due(
    view: &ChainView,
    attestations: &Attestations,
    own: Option<u64>,
    done: &BTreeSet<(u64, u64)>,
) -> Vec<Dispute> {
    let Some(own) = own.filter(|s| view.records.contains_key(s)) else {
        return Vec::new();
    };
    if !attestations.get(&own).is_some_and(|a| a.is_verified()) {
        return Vec::new();
    }
    view.bindings
        .iter()
        .filter(|(token, _)| **token != own)
        .filter_map(
            |(token, binding)| match attestations.get(token).map(AsRef::as_ref) {
                Some(Attested::Refused { kind, .. })
                    if Refusal::FALSE_CLAIM_KINDS.contains(kind) =>
                {
                    Some(Dispute {
                        target: *token,
                        bound_block: binding.bound_block,
                        kind,
                    })
                }
                _ => None,
            },
        )
        .filter(|d| !done.contains(&d.key()))
        .collect()
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, B256, Bytes};
    use mesh_chain::view::Binding;

    use super::*;
    use crate::desired::tests::{record, view};

    fn binding(token: u64, bound_block: u64) -> Binding {
        Binding {
            instance_id: format!("{token:040x}"),
            node: Address::repeat_byte(u8::try_from(token).unwrap()),
            evidence_hash: B256::ZERO,
            bound_block,
            evidence: Bytes::new(),
        }
    }

    fn refused(kind: &'static str) -> Attested {
        Attested::Refused {
            kind,
            reason: String::new(),
        }
    }

    fn verified() -> Attested {
        Attested::Verified(Box::new(mesh_attest::Verdict {
            instance_id: [1; 20],
            app_id: [0xa1; 20],
            compose_hash: [0; 32],
            os_measurement: [0; 32],
            tcb_status: mesh_attest::TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            fmspc: [0; 6],
            collateral_next_update: u64::MAX,
            evidence_hash: [0; 32],
        }))
    }

    /// Seat 1 is this node's, registered and verified; seat 2 has a record and seat 3 only a binding.
    fn cluster(two: Attested, three: Attested) -> (ChainView, Attestations) {
        let mut v = view(&[record(1, 1, ""), record(2, 2, "")]);
        for (token, block) in [(1, 10), (2, 20), (3, 30)] {
            v.bindings.insert(token, binding(token, block).into());
        }
        let a = Attestations::from(
            [(1, verified()), (2, two), (3, three)].map(|(t, a)| (t, std::sync::Arc::new(a))),
        );
        (v, a)
    }

    #[test]
    fn a_binding_whose_quote_names_another_instance_is_disputed_registered_or_not() {
        let (v, a) = cluster(
            refused("instance-mismatch"),
            refused("report-data-mismatch"),
        );
        let due = due(&v, &a, Some(1), &BTreeSet::new());
        assert_eq!(
            due,
            [
                Dispute {
                    target: 2,
                    bound_block: 20,
                    kind: "instance-mismatch"
                },
                Dispute {
                    target: 3,
                    bound_block: 30,
                    kind: "report-data-mismatch"
                },
            ]
        );
    }

    #[test]
    fn what_collateral_time_or_policy_could_turn_is_never_disputed() {
        for kind in [
            "signature",
            "collateral",
            "collateral-expired",
            "tcb-status",
            "tcb-unknown",
            "os-not-allowed",
            "compose-not-allowed",
            "allowlist-unread",
            "unbound",
        ] {
            let (v, a) = cluster(refused(kind), verified());
            assert!(due(&v, &a, Some(1), &BTreeSet::new()).is_empty(), "{kind}");
        }
    }

    #[test]
    fn a_binding_is_disputed_once() {
        let (v, a) = cluster(refused("malformed"), verified());
        let done = BTreeSet::from([(2, 20)]);
        assert!(due(&v, &a, Some(1), &done).is_empty());
        // Rebound at another block, it is another binding.
        let done = BTreeSet::from([(2, 19)]);
        assert_eq!(due(&v, &a, Some(1), &done).len(), 1);
    }

    #[test]
    fn a_node_that_fails_its_own_checks_or_has_no_record_disputes_nothing() {
        let (v, mut a) = cluster(refused("instance-mismatch"), verified());
        assert!(due(&v, &a, None, &BTreeSet::new()).is_empty(), "no seat");
        assert!(
            due(&v, &a, Some(3), &BTreeSet::new()).is_empty(),
            "a seat with no record may not dispute"
        );
        a.insert(1, refused("collateral").into());
        assert!(
            due(&v, &a, Some(1), &BTreeSet::new()).is_empty(),
            "its own evidence refused: its trust or collateral may be what is broken"
        );
    }

    #[test]
    fn a_node_never_disputes_its_own_binding() {
        let (v, mut a) = cluster(verified(), verified());
        a.insert(1, refused("instance-mismatch").into());
        assert!(due(&v, &a, Some(1), &BTreeSet::new()).is_empty());
    }
}
