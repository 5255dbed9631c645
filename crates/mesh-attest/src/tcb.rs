//! The cluster's TCB policy, as its owner sets it on-chain (`DstackClusterAppAuth.tcbPolicy`): the TCB statuses
//! it accepts, the lowest TCB evaluation data number a verdict may rest on, the advisories it accepts below
//! UpToDate, and how long a peer that falls below it is warned and then no longer admitted before it is
//! dropped. [`TcbPolicy::judge`] says whether a verdict meets it; when a peer falls below, the stages are the
//! agent's to time.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::policy::TcbStatus;
use crate::verify::Verdict;

/// The statuses one bit each, from bit 0, as the contract keeps them. Revoked has no bit: it is never
/// accepted.
pub const STATUS_BITS: [TcbStatus; 8] = [
    TcbStatus::UpToDate,
    TcbStatus::SWHardeningNeeded,
    TcbStatus::ConfigurationNeeded,
    TcbStatus::ConfigurationAndSWHardeningNeeded,
    TcbStatus::OutOfDate,
    TcbStatus::OutOfDateConfigurationNeeded,
    TcbStatus::TDRelaunchAdvised,
    TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
];

/// The statuses a bit mask names.
pub fn statuses_of(bits: u8) -> BTreeSet<TcbStatus> {
    STATUS_BITS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

/// The bit mask of `statuses` (Revoked, which has no bit, is left out).
pub fn bits_of(statuses: &BTreeSet<TcbStatus>) -> u8 {
    STATUS_BITS
        .iter()
        .enumerate()
        .filter(|(_, s)| statuses.contains(s))
        .fold(0, |bits, (i, _)| bits | (1 << i))
}

/// The owner's TCB policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcbPolicy {
    /// Always holds UpToDate.
    pub statuses: BTreeSet<TcbStatus>,
    /// 0 for any.
    pub min_evaluation_data_number: u32,
    /// Accepted when the platform is below UpToDate; an advisory not listed puts it below the policy.
    pub advisories: BTreeSet<String>,
    /// How long a peer below the policy is warned, still admitted.
    pub grace: Duration,
    /// How long after the grace it is no longer admitted, before it is dropped.
    pub drop: Duration,
}

/// Why a verdict falls below the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    Status(TcbStatus),
    Advisories(Vec<String>),
    EvaluationDataNumber { collateral: u32, required: u32 },
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s) => write!(
                f,
                "the platform's TCB status is {s}, which the cluster's TCB policy does not accept: its host updates the platform (microcode, TDX module), or the owner accepts the status with `meshctl app-auth tcb set`"
            ),
            Self::Advisories(ids) => write!(
                f,
                "the platform is affected by {}, which the cluster's TCB policy does not accept: its host updates the platform, or the owner accepts each with `meshctl app-auth tcb allow-advisory`",
                ids.join(", ")
            ),
            Self::EvaluationDataNumber {
                collateral,
                required,
            } => write!(
                f,
                "the collateral's TCB evaluation data number is {collateral}, below the {required} the cluster's TCB policy requires: the PCCS must serve TCB info of evaluation {required} or later"
            ),
        }
    }
}

impl TcbPolicy {
    /// The policy the contract returns: `None` while the owner has set none (a zero status mask), when each
    /// agent goes by its own flags.
    pub fn from_chain(
        bits: u8,
        min_evaluation_data_number: u32,
        grace_secs: u32,
        drop_secs: u32,
        advisories: impl IntoIterator<Item = String>,
    ) -> Option<Self> {
        if bits == 0 {
            return None;
        }
        let mut statuses = statuses_of(bits);
        statuses.insert(TcbStatus::UpToDate);
        Some(Self {
            statuses,
            min_evaluation_data_number,
            advisories: advisories.into_iter().collect(),
            grace: Duration::from_secs(grace_secs.into()),
            drop: Duration::from_secs(drop_secs.into()),
        })
    }

    /// Whether `verdict` (reached under collateral of TCB evaluation data number `evaluation`) meets the
    /// policy.
    ///
    /// # Errors
    /// The [`Shortfall`]: the status first, then the advisories, then the evaluation number.
    pub fn judge(&self, verdict: &Verdict, evaluation: u32) -> Result<(), Shortfall> {
        if !self.statuses.contains(&verdict.tcb_status) {
            return Err(Shortfall::Status(verdict.tcb_status));
        }
        if verdict.tcb_status != TcbStatus::UpToDate {
            let unaccepted: Vec<String> = verdict
                .advisory_ids
                .iter()
                .filter(|id| !self.advisories.contains(*id))
                .cloned()
                .collect();
            if !unaccepted.is_empty() {
                return Err(Shortfall::Advisories(unaccepted));
            }
        }
        if evaluation < self.min_evaluation_data_number {
            return Err(Shortfall::EvaluationDataNumber {
                collateral: evaluation,
                required: self.min_evaluation_data_number,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: TcbStatus, advisories: &[&str]) -> Verdict {
        Verdict {
            instance_id: [1; 20],
            app_id: [2; 20],
            compose_hash: [3; 32],
            os_measurement: [4; 32],
            tcb_status: status,
            advisory_ids: advisories.iter().map(|s| (*s).to_owned()).collect(),
            fmspc: [0; 6],
            collateral_next_update: 0,
            evidence_hash: [5; 32],
        }
    }

    fn policy(bits: u8, min: u32, advisories: &[&str]) -> TcbPolicy {
        TcbPolicy::from_chain(
            bits,
            min,
            60,
            120,
            advisories.iter().map(|s| (*s).to_owned()),
        )
        .expect("a policy")
    }

    #[test]
    fn the_bits_are_the_contracts_order_and_round_trip() {
        assert_eq!(
            statuses_of(0b1_0001),
            BTreeSet::from([TcbStatus::UpToDate, TcbStatus::OutOfDate])
        );
        for bits in 0..=u8::MAX {
            assert_eq!(bits_of(&statuses_of(bits)), bits);
        }
        assert_eq!(
            bits_of(&BTreeSet::from([TcbStatus::Revoked])),
            0,
            "Revoked has no bit"
        );
    }

    #[test]
    fn no_status_bits_means_no_policy() {
        assert_eq!(TcbPolicy::from_chain(0, 18, 60, 60, []), None);
    }

    #[test]
    fn an_up_to_date_platform_meets_any_policy_its_collateral_is_recent_enough_for() {
        let p = policy(1, 18, &[]);
        assert_eq!(
            p.judge(&verdict(TcbStatus::UpToDate, &["INTEL-SA-1"]), 18),
            Ok(())
        );
        assert_eq!(
            p.judge(&verdict(TcbStatus::UpToDate, &[]), 17),
            Err(Shortfall::EvaluationDataNumber {
                collateral: 17,
                required: 18
            })
        );
    }

    #[test]
    fn a_status_the_policy_does_not_accept_falls_below_it() {
        let p = policy(0b11, 0, &[]);
        assert_eq!(
            p.judge(&verdict(TcbStatus::OutOfDate, &[]), 20),
            Err(Shortfall::Status(TcbStatus::OutOfDate))
        );
        assert_eq!(
            p.judge(&verdict(TcbStatus::SWHardeningNeeded, &[]), 20),
            Ok(())
        );
    }

    #[test]
    fn below_up_to_date_every_advisory_must_be_accepted() {
        let p = policy(0b11, 0, &["INTEL-SA-00837"]);
        assert_eq!(
            p.judge(
                &verdict(TcbStatus::SWHardeningNeeded, &["INTEL-SA-00837"]),
                1
            ),
            Ok(())
        );
        assert_eq!(
            p.judge(
                &verdict(
                    TcbStatus::SWHardeningNeeded,
                    &["INTEL-SA-00837", "INTEL-SA-00615"]
                ),
                1
            ),
            Err(Shortfall::Advisories(vec!["INTEL-SA-00615".into()]))
        );
    }
}
