//! What a node believes of the chain: [`ChainView`], enough to bring the mesh up without the RPC, and kept
//! only through [`ChainView::bind`], which takes a seat's binding (its node key and evidence), and
//! [`ChainView::offer`], which lets in records signed by the seat's bound node and newer than what is known.

use std::collections::BTreeSet;
use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, keccak256};
use serde::{Deserialize, Serialize};

use crate::membership::{self, Pins, Prefix, Rejected};
use crate::record::SignedRegistration;

/// The believed records by seat. A persistent map, as are the view's other maps by seat: a copy of the view
/// shares them, a change to one seat copies a path, and two views that share most of one are compared by
/// what they do not share ([`imbl::OrdMap::diff`]), so that at 10,000 seats neither a copy nor a comparison
/// walks every seat.
pub type Records = imbl::OrdMap<u64, Arc<SignedRegistration>>;

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
    /// The believed record of each seat that has one, as its registration event carried it. Shared, so that
    /// the copies of a view each change makes (the follower's, the attestor's, the admitted one) copy no
    /// record: at a thousand seats those copies were most of what a join cost every member.
    pub records: Records,
    /// Each seat's binding, as its `InstanceBound` event carried it: the node key that alone signs the seat's
    /// records, and the evidence that ties that key to the instance's CVM. Shared as the records are: a
    /// copy of the view copies no quote, and two copies compare a seat they share without reading it.
    #[serde(default)]
    pub bindings: imbl::OrdMap<u64, Arc<Binding>>,
    /// Each listed seat's holder, as the last full read listed it and `Transfer` events since moved it: for
    /// operators' views only, never for who is a peer.
    #[serde(default)]
    pub holders: imbl::OrdMap<u64, Address>,
    /// Per seat, the highest nonce of a record ever believed. It outlives the record (a clear, a full read
    /// that no longer lists the seat, a restart), so an old record can never come back.
    pub high_water: imbl::OrdMap<u64, u64>,
    /// The seat the contract names leader (`leaderTokenId`), if any. Unlike a record it carries no proof:
    /// it is what the RPC says, as every vote and election is settled by the contract itself.
    #[serde(default)]
    pub leader: Option<u64>,
    /// The contract's `leaderTerm`: one more at every leader change (elected, replaced, cleared, handed
    /// off), so that applications can fence off the writes of an older leader with it. 0 before the first
    /// election.
    #[serde(default)]
    pub leader_term: u64,
    /// How the term began, from the event that began it; none when a full read found it begun (the
    /// contract keeps no record of why).
    #[serde(default)]
    pub term_reason: Option<TermReason>,
    /// The seats their holders drain for maintenance (`drainingSeats`).
    #[serde(default)]
    pub draining: BTreeSet<u64>,
}

/// How a leader's term began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TermReason {
    /// `electLeader`, with no leader.
    Elected,
    /// The leader handed its term over (`handOff`): a planned change.
    Handoff,
    /// f+1 no-confidence votes replaced it: a failover.
    VotedOut,
    /// Its seat was deactivated or revoked, and no leader took over.
    SeatLeft,
}

impl TermReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Elected => "elected",
            Self::Handoff => "handoff",
            Self::VotedOut => "voted-out",
            Self::SeatLeft => "seat-left",
        }
    }
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
            records: Records::new(),
            bindings: imbl::OrdMap::new(),
            holders: imbl::OrdMap::new(),
            high_water: imbl::OrdMap::new(),
            leader: None,
            leader_term: 0,
            term_reason: None,
            draining: BTreeSet::new(),
        }
    }

    pub fn chain_id(&self) -> u64 {
        self.pins.chain_id
    }

    pub fn prefix(&self) -> Prefix {
        self.pins.prefix
    }

    /// Whether `other` holds the records this view holds, seat for seat, under the same prefix: then
    /// whoever the members of one are, they are the other's, and a change that moved only bindings, holders
    /// or the leader need not be worked through them again. What the two share is not looked at.
    pub fn same_records(&self, other: &ChainView) -> bool {
        self.prefix() == other.prefix() && self.records.diff(&other.records).next().is_none()
    }

    /// Takes `reg`, filed under seat `token`, if it is authentic and newer than what is known of the seat.
    /// Returns whether the view changed.
    ///
    /// # Errors
    /// Why the record is not believed; the view is unchanged.
    pub fn offer(&mut self, token: u64, reg: SignedRegistration) -> Result<bool, Rejected> {
        let binding = self
            .bindings
            .get(&token)
            .ok_or(Rejected::Unbound { token_id: token })?;
        let bound = membership::Bound {
            instance_id: &binding.instance_id,
            node: binding.node,
        };
        membership::authenticate(&reg, token, &self.pins, self.contract, bound)?;
        let held = self.records.get(&token).map(Arc::as_ref);
        membership::admit(&reg, held, self.high_water.get(&token).copied())?;
        if held == Some(&reg) {
            return Ok(false);
        }
        let mark = self.high_water.entry(token).or_default();
        *mark = (*mark).max(reg.nonce);
        self.records.insert(token, Arc::new(reg));
        Ok(true)
    }
}

impl ChainView {
    /// Takes seat `token`'s binding, if its evidence hashes to the hash it names. A binding to another node
    /// drops the seat's record: only the new node may sign for the seat (the contract cleared the record too).
    /// Returns whether the view changed.
    ///
    /// # Errors
    /// [`Rejected::Evidence`]; the view is unchanged.
    pub fn bind(&mut self, token: u64, binding: Binding) -> Result<bool, Rejected> {
        if keccak256(&binding.evidence) != binding.evidence_hash {
            return Err(Rejected::Evidence { token_id: token });
        }
        if self.bindings.get(&token).is_some_and(|b| **b == binding) {
            return Ok(false);
        }
        if self
            .bindings
            .get(&token)
            .is_some_and(|b| b.node != binding.node || b.instance_id != binding.instance_id)
        {
            self.records.remove(&token);
        }
        self.bindings.insert(token, Arc::new(binding));
        Ok(true)
    }
}

/// A seat's binding: the instance, its node key, and the evidence (the TDX quote and its RTMR3 log) that ties
/// the key to the instance's CVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub instance_id: String,
    pub node: Address,
    pub evidence_hash: B256,
    pub bound_block: u64,
    pub evidence: Bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ChainView {
        crate::testing::empty_view()
    }

    fn binding(node: u8, evidence: &'static [u8]) -> Binding {
        Binding {
            instance_id: format!("{:040x}", 3),
            node: Address::repeat_byte(node),
            evidence_hash: keccak256(evidence),
            bound_block: 7,
            evidence: Bytes::from_static(evidence),
        }
    }

    /// Without a binding, no record of the seat is believed, whoever signed it.
    #[test]
    fn a_record_of_an_unbound_seat_is_not_believed() {
        let mut v = view();
        let reg = crate::testing::believed_record(3, 1, 7, &format!("{:040x}", 3));
        assert_eq!(v.offer(3, reg), Err(Rejected::Unbound { token_id: 3 }));
        assert!(v.records.is_empty());
    }

    /// Evidence that does not hash to the hash it names (what the seat keeps) is refused, and changes nothing.
    #[test]
    fn a_binding_whose_evidence_is_not_the_hashed_one_is_refused() {
        let mut v = view();
        let mut b = binding(1, b"quote");
        b.evidence = Bytes::from_static(b"another quote");
        assert_eq!(v.bind(3, b), Err(Rejected::Evidence { token_id: 3 }));
        assert!(v.bindings.is_empty());
    }

    /// A binding to another node drops the seat's record (only the new node signs for it); the same binding
    /// again changes nothing.
    #[test]
    fn a_rebind_to_another_node_drops_the_record() {
        let mut v = view();
        assert_eq!(v.bind(3, binding(1, b"quote")), Ok(true));
        v.records.insert(
            3,
            crate::testing::believed_record(3, 1, 7, &format!("{:040x}", 3)).into(),
        );
        assert_eq!(v.bind(3, binding(1, b"quote")), Ok(false));
        assert_eq!(v.records.len(), 1, "the same binding keeps the record");
        assert_eq!(v.bind(3, binding(2, b"new quote")), Ok(true));
        assert!(v.records.is_empty(), "a new node's seat has no record yet");
        assert_eq!(v.bindings[&3].node, Address::repeat_byte(2));
    }

    /// A copy with a new binding and a new leader holds the same records, and so does one with an equal
    /// record read anew; a changed record or a seat gone does not.
    #[test]
    fn same_records_means_the_same_shared_records_seat_for_seat() {
        let mut v = view();
        assert_eq!(v.bind(3, binding(1, b"quote")), Ok(true));
        let record = crate::testing::believed_record(3, 1, 7, &format!("{:040x}", 3));
        v.records.insert(3, Arc::new(record.clone()));
        let mut moved = v.clone();
        assert_eq!(moved.bind(4, binding(2, b"other quote")), Ok(true));
        moved.leader = Some(3);
        assert!(moved.same_records(&v) && v.same_records(&moved));
        let mut reread = v.clone();
        reread.records.insert(3, Arc::new(record.clone()));
        assert!(reread.same_records(&v), "an equal record read anew");
        let mut renewed = v.clone();
        let newer = SignedRegistration { nonce: 2, ..record };
        renewed.records.insert(3, Arc::new(newer));
        assert!(!renewed.same_records(&v), "a newer record");
        let mut gone = v.clone();
        gone.records.clear();
        assert!(!gone.same_records(&v) && !v.same_records(&gone));
    }
}
