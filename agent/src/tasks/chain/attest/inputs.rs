//! What an attestation pass's verdicts rest on, besides the time: which seats there are, each one's binding,
//! the cluster its evidence must commit to, and the TCB statuses and policy it is judged under. A pass whose
//! inputs are the last one's gives the last one's verdicts without a look at any seat, until a pass is due
//! for the time's sake ([`super::Attestor::due`]): so a block that brings a record, a vote or a new leader
//! costs no walk over a thousand seats. When only some seats' bindings moved, the others keep their verdicts
//! in the same way ([`Inputs::binding_holds`]): a newcomer's binding costs the check of its evidence alone.

use std::collections::BTreeSet;
use std::sync::Arc;

use alloy::primitives::Address;
use mesh_attest::collateral::Platform;
use mesh_attest::tcb::TcbPolicy;
use mesh_attest::{QuoteCollateralV3, TcbStatus};
use mesh_chain::view::{Binding, ChainView};

use crate::attestation::Allowlisted;

/// The inputs of one pass.
#[derive(Clone, Debug)]
pub(super) struct Inputs {
    /// Each bound seat's binding, shared with the view it came from.
    bindings: imbl::OrdMap<u64, Arc<Binding>>,
    /// The seats with a record but no binding.
    unbound: Vec<u64>,
    apps: Vec<Address>,
    chain: (u64, Address),
    policy: Option<TcbPolicy>,
    statuses: BTreeSet<TcbStatus>,
    /// What the verdicts rest on that time may change, when the pass could say ([`Timely`]).
    pub(super) timely: Option<Timely>,
}

/// What a pass's verdicts rest on besides the chain, and which time may change: the collateral each
/// platform's verdicts were reached under (the very fetch), the allowlist answers the verified seats took,
/// and the moment the first verdict lapses (its collateral's next update). While all of it holds, a pass due
/// for the time's sake finds every verdict as it was, and gives them without a walk over the seats.
#[derive(Clone, Debug)]
pub(super) struct Timely {
    pub(super) collateral: Vec<(Platform, Arc<QuoteCollateralV3>)>,
    pub(super) allowed: Vec<Allowlisted>,
    pub(super) lapses_at: u64,
}

impl Timely {
    /// What a pass rests on that judged some seats anew (`self`) and kept the others' verdicts from the last
    /// pass (`kept`, what those rest on): both together, unless they disagree (a platform's collateral
    /// fetched again, an allowlist answer changed between the two), when only a walk can tell.
    pub(super) fn with_kept(mut self, kept: &Timely) -> Option<Timely> {
        for (platform, fetched) in &kept.collateral {
            match self.collateral.iter().find(|(p, _)| p == platform) {
                Some((_, now)) if !Arc::ptr_eq(now, fetched) => return None,
                Some(_) => {}
                None => self.collateral.push((*platform, Arc::clone(fetched))),
            }
        }
        for answer in &kept.allowed {
            let key = (answer.compose_hash, answer.os_measurement);
            match (self.allowed.iter()).find(|a| (a.compose_hash, a.os_measurement) == key) {
                Some(now) if now != answer => return None,
                Some(_) => {}
                None => self.allowed.push(*answer),
            }
        }
        self.lapses_at = self.lapses_at.min(kept.lapses_at);
        Some(self)
    }
}

impl Inputs {
    /// The inputs of a pass over `view` under `policy` and `statuses`.
    pub(super) fn of(
        view: &ChainView,
        policy: Option<&TcbPolicy>,
        statuses: &BTreeSet<TcbStatus>,
    ) -> Self {
        Self {
            bindings: view.bindings.clone(),
            unbound: unbound(view).collect(),
            apps: view.pins.app_ids.clone(),
            chain: (view.chain_id(), view.contract),
            policy: policy.cloned(),
            statuses: statuses.clone(),
            timely: None,
        }
    }

    /// Whether a pass over `view` under `policy` and `statuses` has these inputs; without copying anything.
    pub(super) fn hold_for(
        &self,
        view: &ChainView,
        policy: Option<&TcbPolicy>,
        statuses: &BTreeSet<TcbStatus>,
    ) -> bool {
        self.cluster_holds(view, policy, statuses)
            && (self.bindings.diff(&view.bindings)).all(|d| match d {
                imbl::ordmap::DiffItem::Update { old, new } => same_binding(old.1, new.1),
                _ => false,
            })
            && unbound(view).eq(self.unbound.iter().copied())
    }

    /// Whether a pass over `view` judges every seat as this one did, seat by seat: the same cluster, TCB
    /// policy and statuses. Then a seat whose binding is [`Inputs::binding_holds`] keeps its verdict.
    pub(super) fn cluster_holds(
        &self,
        view: &ChainView,
        policy: Option<&TcbPolicy>,
        statuses: &BTreeSet<TcbStatus>,
    ) -> bool {
        self.chain == (view.chain_id(), view.contract)
            && self.apps == view.pins.app_ids
            && self.policy.as_ref() == policy
            && self.statuses == *statuses
    }

    /// Whether seat `token` had `binding` in these inputs.
    pub(super) fn binding_holds(&self, token: u64, binding: &Arc<Binding>) -> bool {
        self.bindings
            .get(&token)
            .is_some_and(|was| same_binding(was, binding))
    }
}

/// Whether a verdict on `a` answers for `b`: the same evidence, node key and instance. The copies of one view
/// share their bindings, so most comparisons end at the pointer.
fn same_binding(a: &Arc<Binding>, b: &Arc<Binding>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.evidence_hash == b.evidence_hash
            && a.node == b.node
            && a.instance_id == b.instance_id)
}

/// The seats of `view` with a record but no binding, in order.
fn unbound(view: &ChainView) -> impl Iterator<Item = u64> + '_ {
    (view.records.keys())
        .filter(|&t| !view.bindings.contains_key(t))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{B256, Bytes};

    fn view() -> ChainView {
        let mut v = crate::desired::tests::view(&[
            crate::desired::tests::record(1, 0x11, ""),
            crate::desired::tests::record(2, 0x22, ""),
        ]);
        v.bindings.insert(
            1,
            Binding {
                instance_id: format!("{:040x}", 1),
                node: Address::repeat_byte(1),
                evidence_hash: B256::repeat_byte(1),
                bound_block: 3,
                evidence: Bytes::new(),
            }
            .into(),
        );
        v
    }

    /// A new record of a bound seat, a new leader or new holders leave the inputs as they were; a new
    /// binding, new evidence, a seat with a record and no binding, another policy or other statuses do not.
    #[test]
    fn only_what_a_verdict_rests_on_changes_the_inputs() {
        let statuses = BTreeSet::from([TcbStatus::UpToDate]);
        let v = view();
        let inputs = Inputs::of(&v, None, &statuses);
        assert!(inputs.hold_for(&v, None, &statuses));

        let mut same = v.clone();
        same.leader = Some(1);
        same.records
            .insert(1, crate::desired::tests::record(1, 0x12, "").into());
        same.holders.insert(1, Address::repeat_byte(9));
        assert!(
            inputs.hold_for(&same, None, &statuses),
            "a record of a bound seat, a leader"
        );

        let mut rebound = v.clone();
        Arc::make_mut(rebound.bindings.get_mut(&1).unwrap()).evidence_hash = B256::repeat_byte(2);
        assert!(!inputs.hold_for(&rebound, None, &statuses), "new evidence");
        let mut moved = v.clone();
        Arc::make_mut(moved.bindings.get_mut(&1).unwrap()).node = Address::repeat_byte(2);
        assert!(!inputs.hold_for(&moved, None, &statuses), "another node");
        let mut bound = v.clone();
        let mut second = Binding::clone(&bound.bindings[&1]);
        second.instance_id = format!("{:040x}", 2);
        bound.bindings.insert(2, second.into());
        assert!(!inputs.hold_for(&bound, None, &statuses), "a seat bound");
        let mut recorded = v.clone();
        recorded
            .records
            .insert(3, crate::desired::tests::record(3, 0x33, "").into());
        assert!(
            !inputs.hold_for(&recorded, None, &statuses),
            "an unbound seat's record"
        );
        let wider = BTreeSet::from([TcbStatus::UpToDate, TcbStatus::OutOfDate]);
        assert!(!inputs.hold_for(&v, None, &wider), "other statuses");
        let mut apps = v.clone();
        apps.pins.app_ids.push(Address::repeat_byte(7));
        assert!(!inputs.hold_for(&apps, None, &statuses), "another app");
    }
}
