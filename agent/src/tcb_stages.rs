//! The stages of a peer whose platform falls below the cluster's TCB policy ([`mesh_attest::tcb`]): warned and
//! still admitted for the policy's grace, then no longer admitted (the nodes that configured it keep it, no
//! other node adds it) for its drop period, then dropped by every node. A fleet-wide microcode advisory so
//! gives the hosts the owner's grace to update, instead of dropping the whole cluster in one collateral
//! refresh, and the owner sees it coming in the API, the status page, the metrics and the log.
//!
//! Pure: the attestation pass ([`crate::tasks::chain::attest`]) feeds [`Staging::observe`] each verdict with the
//! time, and schedules a pass at [`Staging::next_change`].

use std::collections::BTreeMap;

use mesh_attest::tcb::{Shortfall, TcbPolicy};

/// Where a peer below the policy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Admitted, with a warning.
    Warned,
    /// No node adds it; those that have it keep it.
    NotAdmitted,
    /// Refused by every node.
    Dropped,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warned => "warned",
            Self::NotAdmitted => "not-admitted",
            Self::Dropped => "dropped",
        }
    }
}

/// A peer below the policy: its stage, since when it is below, when the next stage begins (none once
/// dropped), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub stage: Stage,
    pub since: u64,
    pub until: Option<u64>,
    pub shortfall: String,
}

/// The stage of a peer below `policy` since `since`, at `now` (Unix seconds), and when the next begins.
pub fn stage_at(since: u64, now: u64, policy: &TcbPolicy) -> (Stage, Option<u64>) {
    let admitted_until = since.saturating_add(policy.grace.as_secs());
    let dropped_at = admitted_until.saturating_add(policy.drop.as_secs());
    if now < admitted_until {
        (Stage::Warned, Some(admitted_until))
    } else if now < dropped_at {
        (Stage::NotAdmitted, Some(dropped_at))
    } else {
        (Stage::Dropped, None)
    }
}

/// Since when seat `seat`'s evidence (of hash `evidence_hash`) has been below the policy: what the state file
/// keeps, so that a restart does not give a peer its grace again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BelowSince {
    pub seat: u64,
    pub evidence_hash: alloy::primitives::B256,
    pub since: u64,
}

/// Since when each seat's evidence has been below the policy, as this node saw it. A new binding (other
/// evidence) starts afresh; evidence that meets the policy again is forgotten.
#[derive(Debug, Clone, Default)]
pub struct Staging {
    below: BTreeMap<(u64, [u8; 32]), u64>,
    /// Changed since [`Staging::take_changed`] last said so.
    changed: bool,
}

impl Staging {
    /// From what the state file kept.
    pub fn from_saved(saved: &[BelowSince]) -> Self {
        Self {
            below: saved
                .iter()
                .map(|b| ((b.seat, b.evidence_hash.0), b.since))
                .collect(),
            changed: false,
        }
    }

    /// What the state file keeps.
    pub fn saved(&self) -> Vec<BelowSince> {
        self.below
            .iter()
            .map(|((seat, evidence), since)| BelowSince {
                seat: *seat,
                evidence_hash: (*evidence).into(),
                since: *since,
            })
            .collect()
    }

    /// Whether a seat fell below or came back since the last call: the state file is due.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Takes seat `seat`'s judgement under `policy` at `now`, for its evidence of hash `evidence`: its
    /// standing when below.
    pub fn observe(
        &mut self,
        seat: u64,
        evidence: [u8; 32],
        judged: Result<(), Shortfall>,
        policy: &TcbPolicy,
        now: u64,
    ) -> Option<Standing> {
        let key = (seat, evidence);
        let shortfall = match judged {
            Ok(()) => {
                self.changed |= self.below.remove(&key).is_some();
                return None;
            }
            Err(s) => s,
        };
        let since = *self.below.entry(key).or_insert_with(|| {
            self.changed = true;
            now
        });
        let (stage, until) = stage_at(since, now, policy);
        Some(Standing {
            stage,
            since,
            until,
            shortfall: shortfall.to_string(),
        })
    }

    /// Forgets every seat's evidence but those `keep` names: the seats of the current view, with their
    /// current evidence.
    pub fn retain(&mut self, keep: impl Fn(u64, &[u8; 32]) -> bool) {
        let before = self.below.len();
        self.below
            .retain(|(seat, evidence), _| keep(*seat, evidence));
        self.changed |= self.below.len() != before;
    }

    /// The next time a seat below the policy changes stage, after `now`.
    pub fn next_change(&self, policy: &TcbPolicy, now: u64) -> Option<u64> {
        self.below
            .values()
            .filter_map(|since| stage_at(*since, now, policy).1)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use mesh_attest::TcbStatus;

    use super::*;

    fn policy(grace: u64, drop: u64) -> TcbPolicy {
        TcbPolicy {
            statuses: BTreeSet::from([TcbStatus::UpToDate]),
            min_evaluation_data_number: 0,
            advisories: BTreeSet::new(),
            grace: Duration::from_secs(grace),
            drop: Duration::from_secs(drop),
        }
    }

    const BELOW: Result<(), Shortfall> = Err(Shortfall::Status(TcbStatus::OutOfDate));

    #[test]
    fn a_peer_below_is_warned_then_not_admitted_then_dropped_at_the_policys_times() {
        let p = policy(60, 120);
        assert_eq!(stage_at(1000, 1000, &p), (Stage::Warned, Some(1060)));
        assert_eq!(stage_at(1000, 1059, &p), (Stage::Warned, Some(1060)));
        assert_eq!(stage_at(1000, 1060, &p), (Stage::NotAdmitted, Some(1180)));
        assert_eq!(stage_at(1000, 1179, &p), (Stage::NotAdmitted, Some(1180)));
        assert_eq!(stage_at(1000, 1180, &p), (Stage::Dropped, None));
    }

    #[test]
    fn no_grace_and_no_drop_period_drop_at_once() {
        assert_eq!(stage_at(1000, 1000, &policy(0, 0)), (Stage::Dropped, None));
        assert_eq!(
            stage_at(1000, 1000, &policy(0, 30)),
            (Stage::NotAdmitted, Some(1030))
        );
    }

    #[test]
    fn the_stages_count_from_when_the_peer_was_first_seen_below() {
        let p = policy(60, 60);
        let mut s = Staging::default();
        let first = s.observe(3, [1; 32], BELOW, &p, 1000).unwrap();
        assert_eq!((first.stage, first.since), (Stage::Warned, 1000));
        assert!(first.shortfall.contains("OutOfDate"), "{}", first.shortfall);
        let later = s.observe(3, [1; 32], BELOW, &p, 1070).unwrap();
        assert_eq!(
            (later.stage, later.since, later.until),
            (Stage::NotAdmitted, 1000, Some(1120))
        );
        assert_eq!(s.next_change(&p, 1070), Some(1120));
    }

    #[test]
    fn a_restart_keeps_when_a_peer_fell_below() {
        let p = policy(60, 60);
        let mut s = Staging::default();
        s.observe(3, [1; 32], BELOW, &p, 1000);
        assert!(s.take_changed(), "a seat fell below: the state file is due");
        s.observe(3, [1; 32], BELOW, &p, 1010);
        assert!(!s.take_changed(), "nothing new");
        let mut restarted = Staging::from_saved(&s.saved());
        let after = restarted.observe(3, [1; 32], BELOW, &p, 1070).unwrap();
        assert_eq!(
            (after.stage, after.since),
            (Stage::NotAdmitted, 1000),
            "no second grace"
        );
    }

    #[test]
    fn meeting_the_policy_again_or_a_new_binding_starts_afresh() {
        let p = policy(60, 60);
        let mut s = Staging::default();
        s.observe(3, [1; 32], BELOW, &p, 1000);
        assert_eq!(s.observe(3, [1; 32], Ok(()), &p, 1030), None);
        let again = s.observe(3, [1; 32], BELOW, &p, 1100).unwrap();
        assert_eq!((again.stage, again.since), (Stage::Warned, 1100));

        let rebound = s.observe(3, [2; 32], BELOW, &p, 1150).unwrap();
        assert_eq!(rebound.since, 1150, "other evidence is another binding");
        s.retain(|seat, evidence| seat == 3 && *evidence == [2; 32]);
        assert_eq!(s.next_change(&p, 1150), Some(1210));
    }
}
