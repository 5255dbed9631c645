//! What a node believes of the chain: [`ChainView`], enough to bring the mesh up without the RPC, and kept
//! only through [`ChainView::offer`], which lets in authentic records newer than what is known.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use crate::membership::{self, Pins, Prefix, Rejected};
use crate::record::SignedRegistration;

/// What this node knows of the chain: enough to bring the mesh up without the RPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainView {
    pub contract: Address,
    /// The cluster's election contract, where the leader and the ballots live (zero in a state file written
    /// before there was one: the next start reads it).
    #[serde(default)]
    pub election: Address,
    pub pins: Pins,
    pub last_block: u64,
    pub last_block_hash: B256,
    /// The believed record of each seat that has one, as its registration event carried it.
    pub records: BTreeMap<u64, SignedRegistration>,
    /// Per seat, the highest nonce of a record ever believed. It outlives the record (a clear, a full read
    /// that no longer lists the seat, a restart), so an old record can never come back.
    pub high_water: BTreeMap<u64, u64>,
    /// The seat the contract names leader (`leaderTokenId`), if any. Unlike a record it carries no proof:
    /// it is what the RPC says, as every vote and election is settled by the contract itself.
    #[serde(default)]
    pub leader: Option<u64>,
    /// The contract's `leaderTerm`: one more at every leader change (elected, replaced, cleared), so that
    /// applications can fence off the writes of an older leader with it. 0 before the first election.
    #[serde(default)]
    pub leader_term: u64,
}

impl ChainView {
    /// An empty view of `contract` under `pins`.
    pub fn new(contract: Address, pins: Pins) -> Self {
        Self {
            contract,
            election: Address::ZERO,
            pins,
            last_block: 0,
            last_block_hash: B256::ZERO,
            records: BTreeMap::new(),
            high_water: BTreeMap::new(),
            leader: None,
            leader_term: 0,
        }
    }

    pub fn chain_id(&self) -> u64 {
        self.pins.chain_id
    }

    pub fn prefix(&self) -> Prefix {
        self.pins.prefix
    }

    /// Takes `reg`, filed under seat `token`, if it is authentic and newer than what is known of the seat.
    /// Returns whether the view changed.
    ///
    /// # Errors
    /// Why the record is not believed; the view is unchanged.
    pub fn offer(&mut self, token: u64, reg: SignedRegistration) -> Result<bool, Rejected> {
        membership::authenticate(&reg, token, &self.pins, self.contract)?;
        let held = self.records.get(&token);
        membership::admit(&reg, held, self.high_water.get(&token).copied())?;
        if held == Some(&reg) {
            return Ok(false);
        }
        let mark = self.high_water.entry(token).or_default();
        *mark = (*mark).max(reg.nonce);
        self.records.insert(token, reg);
        Ok(true)
    }
}

/// The seat bound to an instance, as the contract has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// No seat is bound to the instance.
    None,
    /// Bound and active: the instance may register.
    Active(u64),
    /// Bound but deactivated by its holder: no record until it is activated again.
    Inactive(u64),
}
