//! Verdicts by evidence and collateral, so that each peer's evidence is verified once per
//! collateral rather than at every look, and verified again when new collateral (one that revokes a
//! TCB, say) arrives.

use std::collections::HashMap;

use alloy_primitives::keccak256;
use dcap_qvl::QuoteCollateralV3;

use crate::collateral::{CollateralId, CollateralInfo};
use crate::evidence::Evidence;
use crate::policy::Policy;
use crate::verify::{Expected, Refusal, Trust, Verdict, verify};

/// What a verdict was reached on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    /// [`Evidence::hash`].
    pub evidence: [u8; 32],
    pub collateral: CollateralId,
    /// A digest of the expectation, the policy and the trusted root. The same evidence is a pass
    /// for the seat it was made for and a refusal for any other, and a policy change (a compose hash
    /// allowed or dropped) must not be answered from before it.
    pub context: [u8; 32],
}

impl VerdictKey {
    pub fn new(
        evidence_hash: [u8; 32],
        collateral: CollateralId,
        expected: &Expected,
        policy: &Policy,
        trust: &Trust,
    ) -> Self {
        let mut context = Vec::with_capacity(20 + 64 + 32 + 32);
        context.extend_from_slice(&expected.instance_id);
        context.extend_from_slice(&expected.report_data);
        context.extend_from_slice(&policy.fingerprint());
        context.extend_from_slice(&trust.fingerprint());
        Self {
            evidence: evidence_hash,
            collateral,
            context: keccak256(context).0,
        }
    }
}

#[derive(Clone)]
struct Entry {
    result: Result<Verdict, Refusal>,
    last_used: u64,
}

/// A bounded map of verdicts (passes and refusals); the least recently used goes first.
#[derive(Clone)]
pub struct VerdictCache {
    capacity: usize,
    entries: HashMap<VerdictKey, Entry>,
    clock: u64,
}

impl VerdictCache {
    /// Holds at most `capacity` verdicts (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            clock: 0,
        }
    }

    /// The verdict for `key`, if one holds at `now`: a pass only until its collateral's
    /// `nextUpdate`.
    pub fn get(&mut self, key: &VerdictKey, now: u64) -> Option<Result<Verdict, Refusal>> {
        self.clock = self.clock.wrapping_add(1);
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        let lapsed = matches!(&entry.result, Ok(v) if now > v.collateral_next_update);
        if lapsed {
            self.entries.remove(key);
            return None;
        }
        entry.last_used = clock;
        Some(entry.result.clone())
    }

    /// Remembers a verdict. Refusals that depend on the time (collateral not yet valid, expired)
    /// are not remembered: the same inputs give another answer later.
    pub fn insert(&mut self, key: VerdictKey, result: Result<Verdict, Refusal>) {
        if result.as_ref().is_err_and(Refusal::depends_on_time) {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.clock = self.clock.wrapping_add(1);
        self.entries.insert(
            key,
            Entry {
                result,
                last_used: self.clock,
            },
        );
    }

    /// [`verify`], answered from the cache when it can be.
    ///
    /// # Errors
    /// The [`Refusal`], cached or fresh.
    pub fn verify(
        &mut self,
        evidence: &Evidence,
        expected: &Expected,
        policy: &Policy,
        trust: &Trust,
        collateral: &QuoteCollateralV3,
        now_unix: u64,
    ) -> Result<Verdict, Refusal> {
        let Ok(info) = CollateralInfo::of(collateral) else {
            // Unreadable collateral is refused at once, and not worth a slot.
            return verify(evidence, expected, policy, trust, collateral, now_unix);
        };
        let key = VerdictKey::new(evidence.hash(), info.id(), expected, policy, trust);
        if let Some(result) = self.get(&key, now_unix) {
            return result;
        }
        let result = verify(evidence, expected, policy, trust, collateral, now_unix);
        self.insert(key, result.clone());
        result
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TcbStatus;

    fn key(n: u8) -> VerdictKey {
        VerdictKey {
            evidence: [n; 32],
            collateral: CollateralId {
                fmspc: [0; 6],
                tcb_info_issue_date: 1,
            },
            context: [0; 32],
        }
    }

    fn pass(next_update: u64) -> Result<Verdict, Refusal> {
        Ok(Verdict {
            instance_id: [1; 20],
            app_id: [2; 20],
            compose_hash: [3; 32],
            os_measurement: [4; 32],
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            fmspc: [0; 6],
            collateral_next_update: next_update,
            evidence_hash: [5; 32],
        })
    }

    #[test]
    fn a_pass_is_served_until_its_collateral_expires() {
        let mut cache = VerdictCache::new(4);
        cache.insert(key(1), pass(100));
        assert_eq!(cache.get(&key(1), 100), Some(pass(100)));
        assert_eq!(cache.get(&key(1), 101), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn refusals_are_cached_unless_they_depend_on_the_time() {
        let mut cache = VerdictCache::new(4);
        cache.insert(key(1), Err(Refusal::Debug));
        cache.insert(key(2), Err(Refusal::CollateralExpired { next_update: 5 }));
        assert_eq!(cache.get(&key(1), u64::MAX), Some(Err(Refusal::Debug)));
        assert_eq!(cache.get(&key(2), 0), None);
    }

    #[test]
    fn another_collateral_is_another_key() {
        let mut cache = VerdictCache::new(4);
        cache.insert(key(1), pass(100));
        let mut newer = key(1);
        newer.collateral.tcb_info_issue_date = 2;
        assert_eq!(cache.get(&newer, 0), None);
    }

    #[test]
    fn the_key_depends_on_the_seat_the_policy_and_the_root() {
        let expected = Expected {
            instance_id: [1; 20],
            report_data: [2; 64],
        };
        let policy = Policy::new([3; 20]);
        let id = CollateralId {
            fmspc: [0; 6],
            tcb_info_issue_date: 1,
        };
        let base = VerdictKey::new([9; 32], id, &expected, &policy, &Trust::intel());
        let mut other_seat = expected;
        other_seat.instance_id[0] = 0;
        assert_ne!(
            VerdictKey::new([9; 32], id, &other_seat, &policy, &Trust::intel()),
            base
        );
        let mut other_node = expected;
        other_node.report_data[63] = 0;
        assert_ne!(
            VerdictKey::new([9; 32], id, &other_node, &policy, &Trust::intel()),
            base
        );
        let mut other_policy = policy.clone();
        other_policy.allow_debug = true;
        assert_ne!(
            VerdictKey::new([9; 32], id, &expected, &other_policy, &Trust::intel()),
            base
        );
        assert_eq!(
            VerdictKey::new([9; 32], id, &expected, &policy, &Trust::intel()),
            base
        );
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut cache = VerdictCache::new(2);
        cache.insert(key(1), pass(100));
        cache.insert(key(2), pass(100));
        assert!(cache.get(&key(1), 0).is_some());
        cache.insert(key(3), pass(100));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key(2), 0).is_none());
        assert!(cache.get(&key(1), 0).is_some());
        assert!(cache.get(&key(3), 0).is_some());
    }

    #[test]
    fn replacing_a_key_does_not_evict_another() {
        let mut cache = VerdictCache::new(2);
        cache.insert(key(1), pass(100));
        cache.insert(key(2), pass(100));
        cache.insert(key(2), Err(Refusal::Debug));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(2), 0), Some(Err(Refusal::Debug)));
    }
}
