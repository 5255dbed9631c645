//! What a cluster asks of a seat's evidence, in one place for the agents and `meshctl`: the seat's bound
//! instance, a `report_data` that commits to this chain, this contract and the seat's bound node key, and
//! one of the cluster's apps. The compose hash and OS image are left to the cluster's on-chain allowlists,
//! which the caller asks after verification.

use std::collections::BTreeSet;

use alloy_primitives::Address;

use crate::{Allowed, Evidence, Expected, Policy, Refusal, TcbStatus, report_data};

/// A seat as the chain binds it.
#[derive(Debug, Clone, Copy)]
pub struct Seat<'a> {
    /// The bound instance, 40 hex digits (with or without `0x`).
    pub instance_id: &'a str,
    /// The bound node key's address.
    pub node: Address,
    pub chain_id: u64,
    pub contract: Address,
    /// The apps the cluster allows.
    pub apps: &'a [Address],
}

impl Seat<'_> {
    /// The policy and expected values to verify `evidence` under, with `tcb_statuses` allowed.
    ///
    /// The policy names one app: the evidence's own when the cluster allows it, else the first allowed, so
    /// that a refusal says what is really wrong rather than naming an app mismatch.
    ///
    /// # Errors
    /// [`Refusal::Malformed`] when the seat's instance id is not 20 bytes.
    pub fn requirements(
        &self,
        evidence: &Evidence,
        tcb_statuses: BTreeSet<TcbStatus>,
    ) -> Result<(Policy, Expected), Refusal> {
        let instance_id: [u8; 20] = alloy_primitives::hex::decode(self.instance_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                Refusal::Malformed(format!(
                    "the seat's instance id {:?} is not 20 bytes",
                    self.instance_id
                ))
            })?;
        let claimed = crate::replay::claims(&evidence.events)
            .ok()
            .map(|c| Address::from(c.app_id))
            .filter(|a| self.apps.contains(a));
        let app = claimed
            .or_else(|| self.apps.first().copied())
            .unwrap_or_default();
        let mut policy = Policy::new(app.into_array());
        policy.compose_hashes = Allowed::Any;
        policy.os = Allowed::Any;
        policy.tcb_statuses = tcb_statuses;
        let expected = Expected {
            instance_id,
            report_data: report_data(self.chain_id, self.contract, self.node),
        };
        Ok((policy, expected))
    }
}
