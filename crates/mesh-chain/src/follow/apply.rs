//! What the contract's events, and a full read's listing, do to a [`ChainView`]: the follower's decisions,
//! without I/O. [`super::Follower`] reads the chain and hands over what it read; reorgs, removed logs, forged
//! and replayed events are decided here, so that they can be tested without a node.
//!
//! Each kind of read is applied by a value that is fed step by step ([`RangeApply`], [`ListingApply`]),
//! because applying may need one more read halfway (a seat's binding, a record's event) that the follower
//! makes only when it is needed; [`apply_logs`] and [`apply_listing`] run the same steps at once, with those
//! reads answered by functions.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, Bloom, BloomInput, U256};
use tracing::{debug, warn};

use crate::contract::{self, DstackClusterElection, DstackClusterNFT};
use crate::error::ChainError;
use crate::heads::Head;
use crate::membership::Rejected;
use crate::record::SignedRegistration;
use crate::view::{Binding, ChainView};

/// One log of a polled range, as far as the follower understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The RPC marked it removed by a reorg.
    pub removed: bool,
    /// Its block, when the RPC said.
    pub block: Option<u64>,
    pub event: Event,
}

/// What a log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    InstanceBound(DstackClusterNFT::InstanceBound),
    InstanceUnbound(DstackClusterNFT::InstanceUnbound),
    /// Boxed: it carries a whole proof, several times the size of the others.
    PeerRegistered(Box<DstackClusterNFT::PeerRegistered>),
    PeerCleared(DstackClusterNFT::PeerCleared),
    LeaderElected(DstackClusterElection::LeaderElected),
    LeaderReplaced(DstackClusterElection::LeaderReplaced),
    LeaderCleared(DstackClusterElection::LeaderCleared),
    /// A log from an address the follower did not ask for.
    Foreign(Address),
    /// A log of the cluster or its election that the follower has no use for.
    Other,
}

impl Logged {
    /// Decodes `log`, which the follower asked of the cluster `contract` and its `election`.
    pub fn decode(log: &alloy::rpc::types::Log, contract: Address, election: Address) -> Self {
        let address = log.address();
        let event = if address == election {
            if let Ok(e) = log.log_decode::<DstackClusterElection::LeaderElected>() {
                Event::LeaderElected(e.inner.data)
            } else if let Ok(e) = log.log_decode::<DstackClusterElection::LeaderReplaced>() {
                Event::LeaderReplaced(e.inner.data)
            } else if let Ok(e) = log.log_decode::<DstackClusterElection::LeaderCleared>() {
                Event::LeaderCleared(e.inner.data)
            } else {
                Event::Other
            }
        } else if address != contract {
            Event::Foreign(address)
        } else if let Ok(e) = log.log_decode::<DstackClusterNFT::InstanceBound>() {
            Event::InstanceBound(e.inner.data)
        } else if let Ok(e) = log.log_decode::<DstackClusterNFT::InstanceUnbound>() {
            Event::InstanceUnbound(e.inner.data)
        } else if let Ok(e) = log.log_decode::<DstackClusterNFT::PeerRegistered>() {
            Event::PeerRegistered(Box::new(e.inner.data))
        } else if let Ok(e) = log.log_decode::<DstackClusterNFT::PeerCleared>() {
            Event::PeerCleared(e.inner.data)
        } else {
            Event::Other
        };
        Self {
            removed: log.removed,
            block: log.block_number,
            event,
        }
    }
}

/// What one extra read (of a binding, or of an event) found.
#[derive(Debug)]
pub enum Read<T> {
    Found(T),
    /// There is none: the seat is unbound, or the log is pruned (or the RPC hides it).
    Missing,
    /// The read failed.
    Failed(ChainError),
}

impl<T> From<Result<Option<T>, ChainError>> for Read<T> {
    fn from(read: Result<Option<T>, ChainError>) -> Self {
        match read {
            Ok(Some(found)) => Read::Found(found),
            Ok(None) => Read::Missing,
            Err(e) => Read::Failed(e),
        }
    }
}

/// The blocks a poll read the logs of, `from..=to`, and the hashes the RPC gave for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    pub from: u64,
    pub to: u64,
    /// Block `to`'s hash: the last processed block's once the range is applied.
    pub hash: B256,
    /// The hash the RPC gives now for block `from - 1`, the view's last processed block.
    pub parent: B256,
}

/// Why a read makes a full read due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doubt {
    /// The chain no longer has the last processed block: events from the blocks that were replaced may be
    /// missing or stale.
    Reorg,
    /// The RPC marked a log removed by a reorg.
    RemovedLog,
    /// A seat registered without a binding the view knows, and its binding could not be read.
    UnknownBinding { token: u64 },
}

/// A record not believed, with the nonce it carried: the follower counts it and logs each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub why: Rejected,
    pub nonce: u64,
}

/// What a polled range did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The view with the range applied, up to its last block.
    pub view: ChainView,
    pub rejected: Vec<Rejection>,
    /// Why a full read is due, if the range gave reasons; its events are applied all the same, since the
    /// new chain's events are the best there is until the full read.
    pub doubts: Vec<Doubt>,
}

/// How two views differ in what the follower reports as a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    pub records: bool,
    pub bindings: bool,
    /// The leader, or its term.
    pub leader: bool,
}

impl Changes {
    pub fn between(before: &ChainView, after: &ChainView) -> Self {
        Self {
            records: before.records != after.records,
            bindings: before.bindings != after.bindings,
            leader: before.leader != after.leader || before.leader_term != after.leader_term,
        }
    }

    pub fn any(&self) -> bool {
        self.records || self.bindings || self.leader
    }
}

/// The leader a `leaderTokenId` or event names: 0 is none, and so is an id no seat can have.
fn leader_of(token: U256) -> Option<u64> {
    u64::try_from(token).ok().filter(|t| *t != 0)
}

/// The term an event carries, kept as `held` (and logged) if it does not fit a u64 or goes back: a term
/// that went back would let two leaders fence with one number. Only a reorg (at too few confirmations)
/// or a lying RPC can do that.
fn term_of(term: U256, held: u64) -> u64 {
    match u64::try_from(term) {
        Ok(t) if t >= held => t,
        _ => {
            warn!(%term, held, "the leader's term went back or out of range (a reorg, or a lying RPC); keeping the higher one. On chains that reorg, use --confirmations");
            held
        }
    }
}

/// A seat id from an event, if it fits a u64; the contract never makes one that does not, so one that does
/// not comes from a lying RPC.
fn seat(token: U256) -> Option<u64> {
    u64::try_from(token).ok()
}

/// Whether an announced `head` replaces the view's last processed block: at its height with another hash. At
/// 0 confirmations the last processed block is the head, so a reorg shows here before the next block comes.
pub fn head_replaces_last(view: &ChainView, head: &Head, confirmations: u64) -> bool {
    confirmations == 0 && head.number == view.last_block && head.hash != view.last_block_hash
}

/// What announced heads tell of a range of blocks: enough to apply it without asking the RPC for headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncedRange {
    /// The hash of the range's last block.
    pub hash: B256,
    /// The hash its first block names as its parent: what the view's last block must be.
    pub parent: B256,
    /// Every block's logs bloom, together.
    pub bloom: Bloom,
}

/// Blocks `from..=to` from `announced` heads (by number): when every block of the range was announced and
/// each names the one before as its parent. None when one is missing (the subscription's channel lagged, or
/// a poll went past the heads) or the run does not link (a reorg among them): the caller asks the RPC then.
pub fn announced_range(
    announced: &BTreeMap<u64, Head>,
    from: u64,
    to: u64,
) -> Option<AnnouncedRange> {
    if from > to {
        return None;
    }
    let first = announced.get(&from)?;
    let mut bloom = first.logs_bloom;
    let mut previous = first;
    // An empty range when `to == from`, which BTreeMap::range refuses to be given.
    let rest = match from.checked_add(1) {
        Some(next) if next <= to => announced.range(next..=to),
        _ => announced.range(from..from),
    };
    for (number, head) in rest {
        if Some(*number) != previous.number.checked_add(1) || head.parent_hash != previous.hash {
            return None;
        }
        bloom.accrue_bloom(&head.logs_bloom);
        previous = head;
    }
    (previous.number == to).then_some(AnnouncedRange {
        hash: previous.hash,
        parent: first.parent_hash,
        bloom,
    })
}

/// Whether blocks whose logs have `bloom` may hold an event from one of `addresses`. A bloom may say yes
/// wrongly, never no: when it says no, `eth_getLogs` would return nothing, and is not asked.
pub fn may_hold_events(bloom: &Bloom, addresses: &[Address]) -> bool {
    addresses
        .iter()
        .any(|a| bloom.contains_input(BloomInput::Raw(a.as_slice())))
}

/// A polled range being applied to a copy of the view, log by log, in the order the chain has them.
#[derive(Debug)]
pub struct RangeApply {
    next: ChainView,
    blocks: Blocks,
    rejected: Vec<Rejection>,
    doubts: Vec<Doubt>,
}

/// Whether the chain no longer has `view`'s last processed block, as `blocks` (the range after it) shows.
pub fn reorganised(view: &ChainView, blocks: &Blocks) -> bool {
    blocks.parent != view.last_block_hash
}

/// Moves `view` on over `blocks`, a range that holds none of the cluster's logs: only the last processed
/// block changes. Whether the chain reorganised below it is [`reorganised`], asked before. What a
/// [`RangeApply`] of no logs does, without copying the view, which a node of a thousand peers would
/// otherwise do at every block.
pub fn move_on(view: &mut ChainView, blocks: &Blocks) {
    view.last_block = blocks.to;
    view.last_block_hash = blocks.hash;
}

impl RangeApply {
    /// Starts applying `blocks` to `view`; whether the chain still has the view's last block is known from
    /// here ([`RangeApply::doubts`]), before any log is read.
    pub fn new(view: &ChainView, blocks: Blocks) -> Self {
        let mut doubts = Vec::new();
        if reorganised(view, &blocks) {
            warn!(
                block = view.last_block,
                "the chain reorganised below the last processed block; a full read is due"
            );
            doubts.push(Doubt::Reorg);
        }
        Self {
            next: view.clone(),
            blocks,
            rejected: Vec::new(),
            doubts,
        }
    }

    /// Why a full read is due, as far as the range has been applied.
    pub fn doubts(&self) -> &[Doubt] {
        &self.doubts
    }

    /// The seat whose binding must be read (at the range's last block) before `log` can be applied: a seat
    /// bound before the node's last full read, while it had no record, is not in the view.
    pub fn binding_wanted(&self, log: &Logged) -> Option<u64> {
        match &log.event {
            Event::PeerRegistered(e) if !log.removed => {
                seat(e.tokenId).filter(|t| !self.next.bindings.contains_key(t))
            }
            _ => None,
        }
    }

    /// Applies `log`. `binding` is the seat's binding when [`RangeApply::binding_wanted`] named one: none
    /// when the seat is unbound (or it was not read), an error when it could not be read.
    pub fn apply(&mut self, log: &Logged, binding: Option<Read<Binding>>) {
        if log.removed {
            warn!("a log was removed by a reorg; a full read is due");
            self.doubts.push(Doubt::RemovedLog);
            return;
        }
        let next = &mut self.next;
        match &log.event {
            Event::LeaderElected(e) => {
                next.leader = leader_of(e.tokenId);
                next.leader_term = term_of(e.term, next.leader_term);
            }
            Event::LeaderReplaced(e) => {
                next.leader = leader_of(e.newTokenId);
                next.leader_term = term_of(e.term, next.leader_term);
            }
            Event::LeaderCleared(e) => {
                next.leader = None;
                next.leader_term = term_of(e.term, next.leader_term);
            }
            Event::Foreign(address) => {
                // The filter named two addresses: an RPC that answers with others is not to be believed.
                warn!(%address, "skipping a log from an address this node did not ask for");
            }
            Event::InstanceBound(e) => {
                let Some(token) = seat(e.tokenId) else {
                    warn!(token = %e.tokenId, "skipping an event whose seat id is out of range");
                    return;
                };
                let block = log.block.unwrap_or(self.blocks.to);
                if let Err(rejected) = next.bind(token, contract::binding_from_event(e, block)) {
                    warn!(token, reason = %rejected, "skipping a binding event");
                }
            }
            Event::InstanceUnbound(e) => {
                if let Some(token) = seat(e.tokenId)
                    && next
                        .bindings
                        .get(&token)
                        .is_some_and(|b| b.instance_id == e.instanceId)
                {
                    next.bindings.remove(&token);
                    next.records.remove(&token);
                }
            }
            Event::PeerRegistered(e) => {
                let Some(token) = seat(e.tokenId) else {
                    warn!(token = %e.tokenId, "skipping an event whose seat id is out of range");
                    return;
                };
                if !next.bindings.contains_key(&token) {
                    match binding {
                        Some(Read::Found(binding)) => {
                            if let Err(rejected) = next.bind(token, binding) {
                                warn!(token, reason = %rejected, "skipping a binding");
                            }
                        }
                        Some(Read::Missing) | None => {}
                        Some(Read::Failed(err)) => {
                            debug!(token, error = %err, "cannot fetch a seat's binding; a full read is due");
                            self.doubts.push(Doubt::UnknownBinding { token });
                        }
                    }
                }
                match contract::registration_from_event(e, next.chain_id(), next.contract) {
                    Ok(reg) => {
                        offer(next, token, reg, &mut self.rejected);
                    }
                    Err(err) => warn!(token, %err, "skipping a malformed registration event"),
                }
            }
            Event::PeerCleared(e) => {
                if let Some(token) = seat(e.tokenId) {
                    next.records.remove(&token);
                }
            }
            Event::Other => {}
        }
    }

    /// The view with every log applied, now at the range's last block.
    pub fn finish(self) -> Applied {
        let mut view = self.next;
        view.last_block = self.blocks.to;
        view.last_block_hash = self.blocks.hash;
        Applied {
            view,
            rejected: self.rejected,
            doubts: self.doubts,
        }
    }
}

/// Offers `reg` to `view`, noting why if it is not believed. Returns whether it was.
fn offer(
    view: &mut ChainView,
    token: u64,
    reg: SignedRegistration,
    rejected: &mut Vec<Rejection>,
) -> bool {
    let nonce = reg.nonce;
    match view.offer(token, reg) {
        Ok(_) => true,
        Err(why) => {
            rejected.push(Rejection { why, nonce });
            false
        }
    }
}

/// Applies the logs of `blocks` to `view`, in order, reading a seat's binding with `binding` when the view
/// lacks it ([`RangeApply`] step by step).
pub fn apply_logs(
    view: &ChainView,
    blocks: Blocks,
    logs: &[Logged],
    mut binding: impl FnMut(u64) -> Read<Binding>,
) -> Applied {
    let mut apply = RangeApply::new(view, blocks);
    for log in logs {
        let read = apply.binding_wanted(log).map(&mut binding);
        apply.apply(log, read);
    }
    apply.finish()
}

/// What a full read read before it looks at single records: the records listed at one block, and the
/// election's state there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub block: u64,
    pub hash: B256,
    pub peers: Vec<DstackClusterNFT::Peer>,
    /// `leaderTokenId`.
    pub leader: U256,
    /// `leaderTerm`.
    pub term: U256,
}

/// What a listed record needs before it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// The seat's `InstanceBound` event ([`contract::binding_event`]).
    BindingEvent,
    /// The record's `PeerRegistered` event ([`contract::registration_event`]).
    RegistrationEvent,
}

/// What a full read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingApplied {
    /// The view as the listing has it, at the listing's block.
    pub view: ChainView,
    /// The event of every listed record that changed could be read.
    pub complete: bool,
    /// Whether `view` is to replace the node's: only when complete, unless the node had nothing yet. The
    /// events an incomplete read could not read arrive by polling instead, which would skip them if the
    /// read moved the last processed block past them.
    pub applies: bool,
    pub rejected: Vec<Rejection>,
}

/// A full read's listing being applied, record by record, to what the node knew: a record it already
/// believes is kept without its event being read again; one whose event cannot be had keeps what was known
/// of the seat and makes the read incomplete; one whose event lies (another seat's, another record's, not
/// authentic) is skipped and the seat kept as known.
#[derive(Debug)]
pub struct ListingApply {
    next: ChainView,
    /// The records believed before the read.
    held: BTreeMap<u64, SignedRegistration>,
    /// The node had no view yet: whatever the read finds is better than nothing.
    fresh: bool,
    complete: bool,
    rejected: Vec<Rejection>,
}

impl ListingApply {
    /// Starts applying a listing to `view`, with the election's `leader` and `term` at the listing's block.
    pub fn new(view: &ChainView, leader: U256, term: U256) -> Self {
        let mut next = view.clone();
        let held = std::mem::take(&mut next.records);
        next.leader = leader_of(leader);
        next.leader_term = term_of(term, view.leader_term);
        Self {
            next,
            held,
            fresh: view.last_block_hash == B256::ZERO,
            complete: true,
            rejected: Vec::new(),
        }
    }

    fn keep_held(&mut self, token: u64) {
        if let Some(held) = self.held.get(&token) {
            self.next.records.insert(token, held.clone());
        }
    }

    /// Takes listed record `p`: settled at once if the view knows its binding and holds it already, else the
    /// event to read next.
    pub fn list(&mut self, p: &DstackClusterNFT::Peer) -> Need {
        let Some(token) = seat(p.tokenId) else {
            warn!(token = %p.tokenId, "skipping a listed record whose seat id is out of range");
            return Need::Nothing;
        };
        let bound = self.next.bindings.get(&token).is_some_and(|b| {
            b.node == p.node && b.evidence_hash == p.evidenceHash && b.bound_block == p.boundBlock
        });
        if bound {
            self.after_binding(p, token)
        } else {
            Need::BindingEvent
        }
    }

    /// Goes on with listed record `p` given its seat's binding event as read: none when it could not be
    /// found.
    pub fn binding_event(&mut self, p: &DstackClusterNFT::Peer, read: Read<Binding>) -> Need {
        let Some(token) = seat(p.tokenId) else {
            return Need::Nothing;
        };
        match read {
            Read::Found(binding) => {
                if let Err(why) = self.next.bind(token, binding) {
                    self.rejected.push(Rejection {
                        why,
                        nonce: p.nonce,
                    });
                    self.keep_held(token);
                    return Need::Nothing;
                }
                self.after_binding(p, token)
            }
            Read::Missing => {
                self.complete = false;
                warn!(
                    token,
                    block = p.boundBlock,
                    "no binding event for a listed seat (pruned logs, or a lying RPC); keeping what was known of the seat"
                );
                self.keep_held(token);
                Need::Nothing
            }
            Read::Failed(e) => {
                self.complete = false;
                debug!(token, error = %e, "cannot fetch a binding event");
                self.keep_held(token);
                Need::Nothing
            }
        }
    }

    fn after_binding(&mut self, p: &DstackClusterNFT::Peer, token: u64) -> Need {
        if let Some(held) = self.held.get(&token)
            && held.nonce == p.nonce
            && self
                .next
                .bindings
                .get(&token)
                .is_some_and(|b| b.node == p.node)
        {
            self.next.records.insert(token, held.clone());
            return Need::Nothing;
        }
        Need::RegistrationEvent
    }

    /// Settles listed record `p` given its registration event as read: none when it could not be found.
    pub fn registration_event(
        &mut self,
        p: &DstackClusterNFT::Peer,
        read: Read<DstackClusterNFT::PeerRegistered>,
    ) {
        let Some(token) = seat(p.tokenId) else {
            return;
        };
        let event = match read {
            Read::Found(event) => event,
            Read::Missing => {
                self.complete = false;
                warn!(
                    token,
                    nonce = p.nonce,
                    block = p.registeredBlock,
                    "no registration event for a listed record (pruned logs, or a lying RPC); keeping what was known of the seat"
                );
                self.keep_held(token);
                return;
            }
            Read::Failed(e) => {
                self.complete = false;
                debug!(token, error = %e, "cannot fetch a registration event");
                self.keep_held(token);
                return;
            }
        };
        if let Err(why) = contract::event_matches_record(&event, p) {
            warn!(token, reason = %why, "skipping a listed record whose event does not match it");
            self.keep_held(token);
            return;
        }
        let reg = match contract::registration_from_event(
            &event,
            self.next.chain_id(),
            self.next.contract,
        ) {
            Ok(reg) => reg,
            Err(e) => {
                warn!(token, %e, "skipping a record whose event is malformed");
                self.keep_held(token);
                return;
            }
        };
        if !offer(&mut self.next, token, reg, &mut self.rejected) {
            self.keep_held(token);
        }
    }

    /// The view the listing makes, at its `block` of hash `hash`.
    pub fn finish(self, block: u64, hash: B256) -> ListingApplied {
        let mut view = self.next;
        view.last_block = block;
        view.last_block_hash = hash;
        ListingApplied {
            view,
            complete: self.complete,
            applies: self.complete || self.fresh,
            rejected: self.rejected,
        }
    }
}

/// Applies `listing` to `view`, reading seats' binding events with `binding_event` and records' registration
/// events with `registration_event` when they are needed ([`ListingApply`] step by step).
pub fn apply_listing(
    view: &ChainView,
    listing: &Listing,
    mut binding_event: impl FnMut(&DstackClusterNFT::Peer) -> Read<Binding>,
    mut registration_event: impl FnMut(
        &DstackClusterNFT::Peer,
    ) -> Read<DstackClusterNFT::PeerRegistered>,
) -> ListingApplied {
    let mut apply = ListingApply::new(view, listing.leader, listing.term);
    for p in &listing.peers {
        let mut need = apply.list(p);
        if need == Need::BindingEvent {
            need = apply.binding_event(p, binding_event(p));
        }
        if need == Need::RegistrationEvent {
            apply.registration_event(p, registration_event(p));
        }
    }
    apply.finish(listing.block, listing.hash)
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use alloy::primitives::{Bytes, keccak256};
    use alloy::sol_types::SolEvent;

    use super::*;
    use crate::record::RecordError;
    use crate::testing::Cluster;

    static CLUSTER: LazyLock<Cluster> = LazyLock::new(Cluster::new);

    /// A block hash of block `n` on the chain as it is.
    fn hash(n: u64) -> B256 {
        keccak256(n.to_be_bytes())
    }

    /// A node of the cluster that has processed block 10, where each of `seats` (seat, node) is bound.
    fn view_at_10(seats: &[(u64, u8)]) -> ChainView {
        let mut view = CLUSTER.view();
        for &(token, node) in seats {
            view.bind(
                token,
                contract::binding_from_event(&Cluster::bound(token, node), 5),
            )
            .unwrap();
        }
        view.last_block = 10;
        view.last_block_hash = hash(10);
        view
    }

    /// Blocks 11 to 12, on the chain the view followed.
    fn next_blocks(view: &ChainView) -> Blocks {
        Blocks {
            from: 11,
            to: 12,
            hash: hash(12),
            parent: view.last_block_hash,
        }
    }

    /// Blocks 13 to 14: the two after [`next_blocks`], on the same chain.
    fn blocks_13_to_14() -> Blocks {
        Blocks {
            from: 13,
            to: 14,
            hash: hash(14),
            parent: hash(12),
        }
    }

    fn log(event: Event) -> Logged {
        Logged {
            removed: false,
            block: Some(11),
            event,
        }
    }

    fn registered(reg: &SignedRegistration) -> Logged {
        log(Event::PeerRegistered(Box::new(Cluster::registered(reg))))
    }

    fn bound(token: u64, node: u8) -> Logged {
        log(Event::InstanceBound(Cluster::bound(token, node)))
    }

    /// For polls that must not need a binding read.
    fn no_binding_read(token: u64) -> Read<Binding> {
        panic!("seat {token}'s binding was read, but the view had it")
    }

    fn poll(view: &ChainView, logs: &[Logged]) -> Applied {
        apply_logs(view, next_blocks(view), logs, no_binding_read)
    }

    fn is_proof_rejection(r: &Rejection, token: u64) -> bool {
        matches!(&r.why, Rejected::Proof { token_id, .. } if *token_id == token)
    }

    /// The honest case: a bound seat's record is believed, and the view moves to the range's last block.
    #[test]
    fn a_bound_seats_record_is_believed_and_the_view_moves_to_the_ranges_end() {
        let view = view_at_10(&[(3, 0x33)]);
        let reg = CLUSTER.record(3, 0x33, 1);
        let out = poll(&view, &[registered(&reg)]);
        assert_eq!(out.view.records.get(&3), Some(&reg));
        assert_eq!(out.view.high_water.get(&3), Some(&1));
        assert_eq!(
            (out.view.last_block, out.view.last_block_hash),
            (12, hash(12))
        );
        assert!(out.rejected.is_empty() && out.doubts.is_empty(), "{out:?}");
        assert!(Changes::between(&view, &out.view).records);
    }

    /// The chain no longer has the last processed block (the range's parent hash differs): a full read is
    /// due, and the new chain's events are applied meanwhile, as the best there is.
    #[test]
    fn a_parent_hash_that_no_longer_matches_is_a_reorg_and_the_range_is_still_applied() {
        let view = view_at_10(&[(3, 0x33)]);
        let reg = CLUSTER.record(3, 0x33, 1);
        let blocks = Blocks {
            parent: keccak256(b"another block 10"),
            ..next_blocks(&view)
        };
        let apply = RangeApply::new(&view, blocks);
        assert_eq!(
            apply.doubts(),
            &[Doubt::Reorg],
            "known before any log is read"
        );
        let out = apply_logs(&view, blocks, &[registered(&reg)], no_binding_read);
        assert_eq!(out.doubts, vec![Doubt::Reorg]);
        assert_eq!(out.view.records.get(&3), Some(&reg));
        assert_eq!(out.view.last_block_hash, hash(12));
    }

    /// A range without logs, moved over in place, ends where applying it would: at the range's last block,
    /// with nothing else changed, and the same doubt about a reorg.
    #[test]
    fn a_range_without_logs_moves_the_view_on_as_applying_it_would() {
        let view = view_at_10(&[(3, 0x33)]);
        let reorged = Blocks {
            parent: keccak256(b"another block 10"),
            ..next_blocks(&view)
        };
        for blocks in [next_blocks(&view), reorged] {
            let applied = apply_logs(&view, blocks, &[], no_binding_read);
            let mut moved = view.clone();
            move_on(&mut moved, &blocks);
            assert_eq!(moved, applied.view);
            assert_eq!(
                reorganised(&view, &blocks),
                applied.doubts == [Doubt::Reorg],
                "{blocks:?}"
            );
        }
        assert!(!reorganised(&view, &next_blocks(&view)));
        assert!(reorganised(&view, &reorged));
    }

    /// A log the RPC marks removed is not applied, even an authentic one, and makes a full read due; nor is
    /// a binding read for it.
    #[test]
    fn a_removed_log_is_skipped_and_makes_a_full_read_due() {
        let view = view_at_10(&[(3, 0x33)]);
        let mut removed = registered(&CLUSTER.record(4, 0x44, 1));
        removed.removed = true;
        let apply = RangeApply::new(&view, next_blocks(&view));
        assert_eq!(apply.binding_wanted(&removed), None);
        let mut unbinding = log(Event::InstanceUnbound(DstackClusterNFT::InstanceUnbound {
            tokenId: U256::from(3),
            instanceId: Cluster::instance(3),
        }));
        unbinding.removed = true;
        let out = poll(&view, &[removed, unbinding]);
        assert_eq!(out.doubts, vec![Doubt::RemovedLog, Doubt::RemovedLog]);
        assert!(out.view.records.is_empty() && out.view.bindings.contains_key(&3));
        assert!(!Changes::between(&view, &out.view).any());
    }

    /// The contract has no seat id beyond a u64: events naming one are skipped, and the rest goes on.
    #[test]
    fn events_whose_seat_id_is_out_of_range_are_skipped() {
        let view = view_at_10(&[(3, 0x33)]);
        let reg = CLUSTER.record(3, 0x33, 1);
        let mut binding = Cluster::bound(3, 0x33);
        binding.tokenId = U256::MAX;
        let mut registration = Cluster::registered(&reg);
        registration.tokenId = U256::MAX;
        let clear = DstackClusterNFT::PeerCleared {
            tokenId: U256::MAX,
            reason: 0,
        };
        let logs = [
            registered(&reg),
            log(Event::InstanceBound(binding)),
            log(Event::PeerRegistered(Box::new(registration))),
            log(Event::PeerCleared(clear)),
        ];
        let apply = RangeApply::new(&view, next_blocks(&view));
        assert_eq!(apply.binding_wanted(&logs[2]), None);
        let out = poll(&view, &logs);
        assert_eq!(out.view.records.get(&3), Some(&reg));
        assert_eq!(out.view.bindings, view.bindings);
        assert!(out.rejected.is_empty());
    }

    /// A sibling instance's node, with a genuine chain naming the seat's instance, signs a record for the
    /// seat: it is not the bound node, so the record is refused.
    #[test]
    fn a_record_signed_by_another_node_than_the_bound_one_is_refused() {
        let view = view_at_10(&[(3, 0x33)]);
        let forged = CLUSTER.record(3, 0x55, 1);
        let out = poll(&view, &[registered(&forged)]);
        assert!(out.view.records.is_empty());
        assert_eq!(out.rejected.len(), 1);
        assert!(
            matches!(
                &out.rejected[0].why,
                Rejected::Proof { token_id: 3, source: RecordError::RecordSignatureMismatch { node, .. } }
                    if *node == Cluster::node(0x33)
            ),
            "{:?}",
            out.rejected
        );
    }

    /// A record changed after it was signed (here its endpoint), or signed for another cluster, is refused.
    #[test]
    fn a_tampered_record_or_one_for_another_cluster_is_refused() {
        let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
        let mut tampered = Cluster::registered(&CLUSTER.record(3, 0x33, 1));
        tampered.endpoint = "203.0.113.9:51820".into();
        let mut elsewhere = Cluster::new();
        elsewhere.contract = Address::repeat_byte(0xc1);
        let out = poll(
            &view,
            &[
                log(Event::PeerRegistered(Box::new(tampered))),
                registered(&elsewhere.record(4, 0x44, 1)),
            ],
        );
        assert!(out.view.records.is_empty());
        assert!(
            is_proof_rejection(&out.rejected[0], 3),
            "{:?}",
            out.rejected
        );
        // Read as this cluster's, its signature is over another domain: it does not verify.
        assert!(
            is_proof_rejection(&out.rejected[1], 4),
            "{:?}",
            out.rejected
        );
    }

    /// An RPC replays a seat's older registration, then its last one after the seat was cleared: neither comes
    /// back, and each refusal carries its nonce.
    #[test]
    fn a_replayed_registration_is_refused_even_after_a_clear() {
        let view = view_at_10(&[(3, 0x33)]);
        let (old, new) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(3, 0x33, 2));
        let moved = poll(&view, &[registered(&old), registered(&new)]).view;
        let clear = log(Event::PeerCleared(DstackClusterNFT::PeerCleared {
            tokenId: U256::from(3),
            reason: 1,
        }));
        let out = apply_logs(
            &moved,
            blocks_13_to_14(),
            &[registered(&old), clear, registered(&new)],
            no_binding_read,
        );
        assert!(out.view.records.is_empty(), "{:?}", out.view.records);
        assert_eq!(out.view.high_water.get(&3), Some(&2));
        assert_eq!(
            out.rejected,
            vec![
                Rejection {
                    why: Rejected::Rollback {
                        token_id: 3,
                        nonce: 1,
                        high_water: 2
                    },
                    nonce: 1
                },
                Rejection {
                    why: Rejected::Rollback {
                        token_id: 3,
                        nonce: 2,
                        high_water: 2
                    },
                    nonce: 2
                },
            ]
        );
    }

    /// A seat bound before the node's last full read, while it had no record, is not in the view: its first
    /// registration reads the binding, at the range's last block, and is then believed.
    #[test]
    fn a_registration_of_a_seat_the_view_has_no_binding_of_reads_the_binding() {
        let view = view_at_10(&[]);
        let reg = CLUSTER.record(3, 0x33, 1);
        let mut asked = Vec::new();
        let out = apply_logs(&view, next_blocks(&view), &[registered(&reg)], |token| {
            asked.push(token);
            Read::Found(contract::binding_from_event(
                &Cluster::bound(token, 0x33),
                4,
            ))
        });
        assert_eq!(asked, vec![3]);
        assert_eq!(out.view.records.get(&3), Some(&reg));
        assert_eq!(out.view.bindings[&3].node, Cluster::node(0x33));
        assert!(out.doubts.is_empty());
    }

    /// When that binding cannot be read, the record cannot be believed (no key may sign for an unbound
    /// seat) and a full read is due to sort it out; when the seat turns out unbound, it is merely refused.
    #[test]
    fn a_binding_that_cannot_be_read_makes_a_full_read_due() {
        let view = view_at_10(&[]);
        let logs = [registered(&CLUSTER.record(3, 0x33, 1))];
        let out = apply_logs(&view, next_blocks(&view), &logs, |number| {
            Read::Failed(ChainError::MissingBlock { number })
        });
        assert_eq!(out.doubts, vec![Doubt::UnknownBinding { token: 3 }]);
        assert_eq!(out.rejected[0].why, Rejected::Unbound { token_id: 3 });
        assert!(out.view.records.is_empty());

        let out = apply_logs(&view, next_blocks(&view), &logs, |_| Read::Missing);
        assert!(out.doubts.is_empty());
        assert_eq!(out.rejected[0].why, Rejected::Unbound { token_id: 3 });
    }

    /// A binding event whose evidence does not hash to the hash it names is skipped: the seat keeps its
    /// binding and its record.
    #[test]
    fn a_binding_event_with_the_wrong_evidence_is_skipped() {
        let view = view_at_10(&[(3, 0x33)]);
        let reg = CLUSTER.record(3, 0x33, 1);
        let mut forged = Cluster::bound(3, 0x55);
        forged.evidence = Bytes::from_static(b"another quote");
        let out = poll(
            &view,
            &[registered(&reg), log(Event::InstanceBound(forged))],
        );
        assert_eq!(out.view.bindings, view.bindings);
        assert_eq!(out.view.records.get(&3), Some(&reg));
    }

    /// Rebinding a seat to another node drops its record; unbinding it drops both. The high-water mark
    /// stays, so the old node's record cannot come back; an unbinding of another instance changes nothing.
    #[test]
    fn rebinding_or_unbinding_a_seat_drops_its_record_but_not_its_high_water_mark() {
        let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
        let (three, four) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(4, 0x44, 1));
        let unbound = |token: u64, instance: String| {
            log(Event::InstanceUnbound(DstackClusterNFT::InstanceUnbound {
                tokenId: U256::from(token),
                instanceId: instance,
            }))
        };
        let out = poll(
            &view,
            &[
                registered(&three),
                registered(&four),
                bound(3, 0x35),
                unbound(4, "another instance".into()),
            ],
        );
        assert_eq!(out.view.records.keys().collect::<Vec<_>>(), vec![&4]);
        assert_eq!(out.view.bindings[&3].node, Cluster::node(0x35));
        assert_eq!(out.view.bindings[&3].bound_block, 11, "the log's block");

        let out = apply_logs(
            &out.view,
            blocks_13_to_14(),
            &[unbound(4, Cluster::instance(4)), registered(&four)],
            |_| Read::Missing,
        );
        assert!(out.view.records.is_empty() && !out.view.bindings.contains_key(&4));
        assert_eq!(out.view.high_water, [(3, 1), (4, 1)].into());
    }

    /// The filter names the cluster and its election: a log from elsewhere is skipped, whatever it says.
    #[test]
    fn a_log_from_an_address_not_asked_for_is_skipped() {
        let view = view_at_10(&[(3, 0x33)]);
        let out = poll(&view, &[log(Event::Foreign(Address::repeat_byte(9)))]);
        assert!(!Changes::between(&view, &out.view).any());
    }

    /// The leader follows the election's events, in order; its term never goes back, nor past a u64.
    #[test]
    fn the_leader_follows_the_election_and_its_term_never_goes_back() {
        let view = view_at_10(&[]);
        let elected = |token: u64, term: U256| {
            log(Event::LeaderElected(DstackClusterElection::LeaderElected {
                tokenId: U256::from(token),
                term,
            }))
        };
        let out = poll(&view, &[elected(3, U256::from(5))]);
        assert_eq!((out.view.leader, out.view.leader_term), (Some(3), 5));
        assert!(Changes::between(&view, &out.view).leader);

        let replaced = log(Event::LeaderReplaced(
            DstackClusterElection::LeaderReplaced {
                oldTokenId: U256::from(3),
                newTokenId: U256::from(4),
                votes: U256::from(2),
                term: U256::from(4),
            },
        ));
        let out = poll(&out.view, &[replaced, elected(0, U256::MAX)]);
        assert_eq!(
            (out.view.leader, out.view.leader_term),
            (None, 5),
            "seat 0 is no leader, and terms 4 and 2^256-1 are not taken"
        );

        let cleared = log(Event::LeaderCleared(DstackClusterElection::LeaderCleared {
            oldTokenId: U256::from(4),
            term: U256::from(6),
        }));
        let out = poll(&view_at_10(&[]), &[elected(3, U256::from(5)), cleared]);
        assert_eq!((out.view.leader, out.view.leader_term), (None, 6));
    }

    /// At 0 confirmations the last processed block is the head: a head announced at its height with another
    /// hash replaces it. With confirmations, or at another height, it does not.
    #[test]
    fn a_head_at_the_last_block_with_another_hash_replaces_it_at_zero_confirmations() {
        let view = view_at_10(&[]);
        let other = Head {
            hash: keccak256(b"another block 10"),
            ..announced(10, Bloom::ZERO)
        };
        assert!(head_replaces_last(&view, &other, 0));
        assert!(!head_replaces_last(&view, &other, 2));
        assert!(!head_replaces_last(&view, &announced(10, Bloom::ZERO), 0));
        assert!(!head_replaces_last(&view, &announced(11, Bloom::ZERO), 0));
    }

    /// Head `n` of the chain whose block hashes are `hash(n)`, with `bloom`.
    fn announced(n: u64, bloom: Bloom) -> Head {
        Head {
            number: n,
            hash: hash(n),
            parent_hash: hash(n.saturating_sub(1)),
            logs_bloom: bloom,
        }
    }

    fn heads(heads: impl IntoIterator<Item = Head>) -> BTreeMap<u64, Head> {
        heads.into_iter().map(|h| (h.number, h)).collect()
    }

    /// The test cluster's contract and election: what a poll reads the logs of.
    fn cluster() -> [Address; 2] {
        let view = CLUSTER.view();
        [view.contract, view.election]
    }

    fn bloom_of(addresses: &[Address]) -> Bloom {
        let mut bloom = Bloom::ZERO;
        for a in addresses {
            bloom.accrue(BloomInput::Raw(a.as_slice()));
        }
        bloom
    }

    /// A run of announced heads gives the range's last hash, its first parent, and every block's bloom
    /// together: the cluster's event in any block of it shows.
    #[test]
    fn announced_heads_that_link_give_a_range_without_the_rpc() {
        let [contract, _] = cluster();
        let event = bloom_of(&[contract]);
        let run = heads([
            announced(11, Bloom::ZERO),
            announced(12, event),
            announced(13, Bloom::ZERO),
        ]);
        let r = announced_range(&run, 11, 13).expect("the run links");
        assert_eq!((r.hash, r.parent), (hash(13), hash(10)));
        assert!(may_hold_events(&r.bloom, &cluster()));
        let quiet = announced_range(&run, 13, 13).expect("one block");
        assert!(!may_hold_events(&quiet.bloom, &cluster()));
        assert_eq!(
            announced_range(&run, 11, 11).map(|r| r.hash),
            Some(hash(11))
        );
    }

    /// A block missing from the run, one that names another parent (a reorg among the heads), or a range
    /// past the newest head: the RPC is asked instead.
    #[test]
    fn a_gap_or_a_fork_among_the_heads_gives_no_range() {
        let gap = heads([announced(11, Bloom::ZERO), announced(13, Bloom::ZERO)]);
        assert_eq!(announced_range(&gap, 11, 13), None);
        let forked = heads([
            announced(11, Bloom::ZERO),
            Head {
                parent_hash: keccak256(b"another block 11"),
                ..announced(12, Bloom::ZERO)
            },
        ]);
        assert_eq!(announced_range(&forked, 11, 12), None);
        let short = heads([announced(11, Bloom::ZERO)]);
        assert_eq!(announced_range(&short, 11, 12), None);
        assert_eq!(announced_range(&short, 12, 11), None);
        assert_eq!(announced_range(&BTreeMap::new(), 11, 11), None);
    }

    /// Another contract's logs leave the cluster's blocks skippable; the election's do not.
    #[test]
    fn only_the_cluster_and_its_election_in_a_bloom_make_logs_worth_reading() {
        let [_, election] = cluster();
        let other = Address::repeat_byte(0x77);
        assert!(!may_hold_events(&bloom_of(&[other]), &cluster()));
        assert!(may_hold_events(&bloom_of(&[other, election]), &cluster()));
        assert!(!may_hold_events(&Bloom::ZERO, &cluster()));
    }

    fn rpc_log(address: Address, data: alloy::primitives::LogData) -> alloy::rpc::types::Log {
        alloy::rpc::types::Log {
            inner: alloy::primitives::Log { address, data },
            block_number: Some(11),
            ..Default::default()
        }
    }

    /// Logs are read as the address they come from allows: the cluster's events only from the cluster, the
    /// leader's only from the election, and anything from another address is foreign.
    #[test]
    fn logs_are_decoded_as_their_address_allows() {
        let c = &*CLUSTER;
        let registration = Cluster::registered(&c.record(3, 0x33, 1));
        let data = registration.encode_log_data();
        let decode =
            |address| Logged::decode(&rpc_log(address, data.clone()), c.contract, c.election);
        assert_eq!(
            decode(c.contract),
            Logged {
                removed: false,
                block: Some(11),
                event: Event::PeerRegistered(Box::new(registration.clone()))
            }
        );
        assert_eq!(decode(c.election).event, Event::Other);
        let stranger = Address::repeat_byte(9);
        assert_eq!(decode(stranger).event, Event::Foreign(stranger));

        let elected = DstackClusterElection::LeaderElected {
            tokenId: U256::from(3),
            term: U256::from(1),
        };
        let log = rpc_log(c.election, elected.encode_log_data());
        assert_eq!(
            Logged::decode(&log, c.contract, c.election).event,
            Event::LeaderElected(elected.clone())
        );
        let log = rpc_log(c.contract, elected.encode_log_data());
        assert_eq!(
            Logged::decode(&log, c.contract, c.election).event,
            Event::Other
        );
    }

    /// A full read's listing of `records`, each registered at block 9 and bound (as [`Cluster::bound`]
    /// with the record's node) at block 5, at block 20, with seat `leader` leading in `term`.
    fn listing(records: &[(&SignedRegistration, u8)], leader: u64, term: u64) -> Listing {
        Listing {
            block: 20,
            hash: hash(20),
            peers: records
                .iter()
                .map(|(reg, node)| {
                    let token = u64::try_from(reg.token_id).unwrap();
                    Cluster::listed(reg, 9, &Cluster::bound(token, *node), 5)
                })
                .collect(),
            leader: U256::from(leader),
            term: U256::from(term),
        }
    }

    /// Answers binding events as the chain has them: each listed seat bound to the node the listing names.
    fn binding_events(p: &DstackClusterNFT::Peer) -> Read<Binding> {
        let token = u64::try_from(p.tokenId).unwrap();
        let node = (1..=0x7f)
            .find(|n| Cluster::node(*n) == p.node)
            .expect("a test node");
        Read::Found(contract::binding_from_event(
            &Cluster::bound(token, node),
            p.boundBlock,
        ))
    }

    /// Answers registration events with `events`, whatever the listing says.
    fn registration_events(
        events: &[DstackClusterNFT::PeerRegistered],
    ) -> impl FnMut(&DstackClusterNFT::Peer) -> Read<DstackClusterNFT::PeerRegistered> {
        |p| match events.iter().find(|e| e.tokenId == p.tokenId) {
            Some(e) => Read::Found(e.clone()),
            None => Read::Missing,
        }
    }

    fn no_event_read(p: &DstackClusterNFT::Peer) -> Read<DstackClusterNFT::PeerRegistered> {
        panic!("seat {}'s event was read, but the node holds it", p.tokenId)
    }

    /// A node with nothing believes every authentic listed record, takes the leader, and moves to the
    /// listing's block.
    #[test]
    fn a_first_full_read_believes_every_authentic_listed_record() {
        let fresh = CLUSTER.view();
        let (three, four) = (CLUSTER.record(3, 0x33, 2), CLUSTER.record(4, 0x44, 1));
        let events = [Cluster::registered(&three), Cluster::registered(&four)];
        let read = apply_listing(
            &fresh,
            &listing(&[(&three, 0x33), (&four, 0x44)], 4, 7),
            binding_events,
            registration_events(&events),
        );
        assert!(read.complete && read.applies && read.rejected.is_empty());
        assert_eq!(read.view.records, [(3, three), (4, four)].into());
        assert_eq!(read.view.high_water, [(3, 2), (4, 1)].into());
        assert_eq!((read.view.leader, read.view.leader_term), (Some(4), 7));
        assert_eq!(
            (read.view.last_block, read.view.last_block_hash),
            (20, hash(20))
        );
    }

    /// A record the node believes, listed again with the same nonce and node, is kept without any read: a
    /// full read of an unchanged chain costs no events.
    #[test]
    fn a_believed_record_listed_again_is_kept_without_reading_its_events() {
        let view = view_at_10(&[(3, 0x33)]);
        let three = CLUSTER.record(3, 0x33, 2);
        let view = poll(&view, &[registered(&three)]).view;
        let read = apply_listing(
            &view,
            &listing(&[(&three, 0x33)], 0, 0),
            |p| panic!("seat {}'s binding was read, but the view has it", p.tokenId),
            no_event_read,
        );
        assert!(read.complete && read.applies);
        assert_eq!(read.view.records, view.records);
        assert!(!Changes::between(&view, &read.view).any());
    }

    /// The RPC answers a listed record with an event that is not its own (another nonce, another endpoint):
    /// the record is skipped and what was known of the seat kept. The read is complete all the same: the
    /// lie is known, there is nothing to wait for.
    #[test]
    fn an_event_that_does_not_match_the_listed_record_keeps_what_was_known() {
        let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
        let (three, four) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(4, 0x44, 1));
        let view = poll(&view, &[registered(&three), registered(&four)]).view;
        let (three2, four2) = (CLUSTER.record(3, 0x33, 2), CLUSTER.record(4, 0x44, 2));
        let mut other_endpoint = Cluster::registered(&four2);
        other_endpoint.endpoint = "203.0.113.9:51820".into();
        let events = [Cluster::registered(&three), other_endpoint];
        let read = apply_listing(
            &view,
            &listing(&[(&three2, 0x33), (&four2, 0x44)], 0, 0),
            binding_events,
            registration_events(&events),
        );
        assert!(read.complete && read.applies && read.rejected.is_empty());
        assert_eq!(read.view.records, view.records);
    }

    /// A listed record whose event is not signed by the seat's bound node is refused, and the seat keeps
    /// what was known of it; the other seats go on.
    #[test]
    fn a_listed_record_not_signed_by_the_bound_node_is_refused() {
        let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
        let three = CLUSTER.record(3, 0x33, 1);
        let view = poll(&view, &[registered(&three)]).view;
        let forged = CLUSTER.record(3, 0x55, 2);
        let four = CLUSTER.record(4, 0x44, 1);
        let events = [Cluster::registered(&forged), Cluster::registered(&four)];
        // The listing names the bound node, as the seat does; only the record's signature is another's.
        let listed = listing(&[(&forged, 0x33), (&four, 0x44)], 0, 0);
        let read = apply_listing(&view, &listed, binding_events, registration_events(&events));
        assert!(read.complete && read.applies);
        assert_eq!(read.view.records, [(3, three), (4, four)].into());
        assert_eq!(read.rejected.len(), 1);
        assert!(
            is_proof_rejection(&read.rejected[0], 3),
            "{:?}",
            read.rejected
        );
        assert_eq!(read.rejected[0].nonce, 2);
    }

    /// An RPC lists a seat's older record, with its genuine event: it is refused, and the newer one kept.
    #[test]
    fn a_listed_record_older_than_the_believed_one_is_refused() {
        let view = view_at_10(&[(3, 0x33)]);
        let (old, new) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(3, 0x33, 2));
        let view = poll(&view, &[registered(&old), registered(&new)]).view;
        let events = [Cluster::registered(&old)];
        let read = apply_listing(
            &view,
            &listing(&[(&old, 0x33)], 0, 0),
            binding_events,
            registration_events(&events),
        );
        assert_eq!(read.view.records.get(&3), Some(&new));
        assert_eq!(
            read.rejected,
            vec![Rejection {
                why: Rejected::Rollback {
                    token_id: 3,
                    nonce: 1,
                    high_water: 2
                },
                nonce: 1
            }]
        );
    }

    /// A listed record whose events cannot be had (an RPC error, a pruned log) makes the read incomplete:
    /// the node keeps its own view, unless it had none, when the partial one is better than nothing.
    #[test]
    fn a_read_missing_an_event_is_incomplete_and_applies_only_to_a_node_with_nothing() {
        let three = CLUSTER.record(3, 0x33, 1);
        let listed = listing(&[(&three, 0x33)], 0, 0);
        let failing = |p: &DstackClusterNFT::Peer| -> Read<DstackClusterNFT::PeerRegistered> {
            Read::Failed(ChainError::MissingBlock {
                number: p.registeredBlock,
            })
        };
        let view = view_at_10(&[(3, 0x33)]);
        for read in [
            apply_listing(&view, &listed, binding_events, failing),
            apply_listing(&view, &listed, binding_events, |_| Read::Missing),
            apply_listing(&view_at_10(&[]), &listed, |_| Read::Missing, no_event_read),
        ] {
            assert!(!read.complete && !read.applies, "{read:?}");
        }
        let read = apply_listing(&CLUSTER.view(), &listed, |_| Read::Missing, no_event_read);
        assert!(!read.complete && read.applies);
        assert!(read.view.records.is_empty());
    }

    /// A seat the listing no longer names loses its record but not its high-water mark; one whose seat id
    /// does not fit a u64 is skipped.
    #[test]
    fn a_seat_no_longer_listed_loses_its_record_but_not_its_high_water_mark() {
        let view = view_at_10(&[(3, 0x33)]);
        let three = CLUSTER.record(3, 0x33, 1);
        let view = poll(&view, &[registered(&three)]).view;
        let mut listed = listing(&[(&three, 0x33)], 0, 0);
        listed.peers[0].tokenId = U256::MAX;
        let read = apply_listing(&view, &listed, binding_events, no_event_read);
        assert!(read.complete && read.applies);
        assert!(read.view.records.is_empty());
        assert_eq!(read.view.high_water.get(&3), Some(&1));
        assert!(Changes::between(&view, &read.view).records);
    }

    /// A listed seat's binding event whose evidence does not hash to the hash it names is refused: the seat
    /// keeps its binding and its record.
    #[test]
    fn a_listed_binding_with_the_wrong_evidence_is_refused() {
        let view = view_at_10(&[(3, 0x33)]);
        let three = CLUSTER.record(3, 0x33, 1);
        let view = poll(&view, &[registered(&three)]).view;
        let rebound = CLUSTER.record(3, 0x35, 2);
        let listed = listing(&[(&rebound, 0x35)], 0, 0);
        let read = apply_listing(
            &view,
            &listed,
            |p| {
                let Read::Found(mut binding) = binding_events(p) else {
                    unreachable!("every listed seat is bound")
                };
                binding.evidence = Bytes::from_static(b"another quote");
                Read::Found(binding)
            },
            no_event_read,
        );
        assert_eq!(read.view.bindings, view.bindings);
        assert_eq!(read.view.records, view.records);
        assert_eq!(read.rejected[0].why, Rejected::Evidence { token_id: 3 });
    }
}

#[cfg(test)]
mod properties {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::sync::LazyLock;

    use alloy::primitives::keccak256;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    use super::*;
    use crate::testing::Cluster;

    /// The seats, and each one's two node keys: the one it starts bound to, and another it may be rebound to
    /// (whose records, while the seat is bound to the first, are forgeries).
    const SEATS: [(u64, [u8; 2]); 3] = [(1, [0x41, 0x51]), (2, [0x42, 0x52]), (3, [0x43, 0x53])];
    const NONCES: std::ops::RangeInclusive<u64> = 1..=4;

    static CLUSTER: LazyLock<Cluster> = LazyLock::new(Cluster::new);

    /// Every record the steps can register, signed once: signing is what costs.
    static RECORDS: LazyLock<BTreeMap<(u64, u8, u64), SignedRegistration>> = LazyLock::new(|| {
        let mut records = BTreeMap::new();
        for (seat, nodes) in SEATS {
            for node in nodes {
                for nonce in NONCES {
                    records.insert((seat, node, nonce), CLUSTER.record(seat, node, nonce));
                }
            }
        }
        records
    });

    fn node(seat: u64, which: usize) -> u8 {
        SEATS
            .iter()
            .find(|(s, _)| *s == seat)
            .map(|(_, nodes)| nodes[which])
            .expect("a test seat")
    }

    /// One thing the chain can say.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Step {
        /// The seat's record at `nonce`, signed by its node `node` (0 or 1).
        Register {
            seat: u64,
            node: usize,
            nonce: u64,
        },
        Clear {
            seat: u64,
        },
        Bind {
            seat: u64,
            node: usize,
        },
        Unbind {
            seat: u64,
        },
        Elect {
            seat: u64,
            term: u64,
        },
    }

    impl Step {
        fn logged(self) -> Logged {
            let event = match self {
                Step::Register { seat, node, nonce } => Event::PeerRegistered(Box::new(
                    Cluster::registered(&RECORDS[&(seat, self::node(seat, node), nonce)]),
                )),
                Step::Clear { seat } => Event::PeerCleared(DstackClusterNFT::PeerCleared {
                    tokenId: U256::from(seat),
                    reason: 0,
                }),
                Step::Bind { seat, node } => {
                    Event::InstanceBound(Cluster::bound(seat, self::node(seat, node)))
                }
                Step::Unbind { seat } => {
                    Event::InstanceUnbound(DstackClusterNFT::InstanceUnbound {
                        tokenId: U256::from(seat),
                        instanceId: Cluster::instance(seat),
                    })
                }
                Step::Elect { seat, term } => {
                    Event::LeaderElected(DstackClusterElection::LeaderElected {
                        tokenId: U256::from(seat),
                        term: U256::from(term),
                    })
                }
            };
            Logged {
                removed: false,
                block: None,
                event,
            }
        }
    }

    fn logged(steps: &[Step]) -> Vec<Logged> {
        steps.iter().map(|s| s.logged()).collect()
    }

    fn registration(seat: u64) -> impl Strategy<Value = Step> {
        (0..2usize, NONCES).prop_map(move |(node, nonce)| Step::Register { seat, node, nonce })
    }

    /// What the chain can say of `seat` alone.
    fn seat_step(seat: u64) -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => registration(seat),
            1 => Just(Step::Clear { seat }),
            1 => (0..2usize).prop_map(move |node| Step::Bind { seat, node }),
            1 => Just(Step::Unbind { seat }),
        ]
    }

    fn any_seat() -> impl Strategy<Value = u64> {
        proptest::sample::select(SEATS.map(|(seat, _)| seat).to_vec())
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => any_seat().prop_flat_map(seat_step),
            1 => (0..=3u64, 0..8u64).prop_map(|(seat, term)| Step::Elect { seat, term }),
        ]
    }

    fn hash(n: u64) -> B256 {
        keccak256(n.to_be_bytes())
    }

    /// A node at block 10 with every seat bound to its first node.
    fn start() -> ChainView {
        let mut view = CLUSTER.view();
        for (seat, nodes) in SEATS {
            view.bind(
                seat,
                contract::binding_from_event(&Cluster::bound(seat, nodes[0]), 5),
            )
            .expect("a right evidence hash");
        }
        view.last_block = 10;
        view.last_block_hash = hash(10);
        view
    }

    /// `logs` as the one block after the view's last, on the chain it followed; every seat the view has no
    /// binding of is unbound.
    fn poll(view: &ChainView, logs: &[Logged]) -> Applied {
        let to = view
            .last_block
            .checked_add(1)
            .expect("a small block number");
        let blocks = Blocks {
            from: to,
            to,
            hash: hash(to),
            parent: view.last_block_hash,
        };
        apply_logs(view, blocks, logs, |_| Read::Missing)
    }

    fn seat_of(p: &DstackClusterNFT::Peer) -> (u64, u8) {
        let seat = u64::try_from(p.tokenId).expect("a test seat");
        let node = (0..2)
            .map(|which| node(seat, which))
            .find(|n| Cluster::node(*n) == p.node)
            .expect("a test node");
        (seat, node)
    }

    /// The seat's binding event, as the chain has it.
    fn honest_binding(p: &DstackClusterNFT::Peer) -> Read<Binding> {
        let (seat, node) = seat_of(p);
        Read::Found(contract::binding_from_event(
            &Cluster::bound(seat, node),
            p.boundBlock,
        ))
    }

    /// The record's registration event, as the chain has it.
    fn honest_event(p: &DstackClusterNFT::Peer) -> Read<DstackClusterNFT::PeerRegistered> {
        let (seat, node) = seat_of(p);
        Read::Found(Cluster::registered(&RECORDS[&(seat, node, p.nonce)]))
    }

    /// A listing at block 50 of seats with their node (0 or 1) and record nonce.
    fn listing(listed: &BTreeMap<u64, (usize, u64)>, leader: u64, term: u64) -> Listing {
        Listing {
            block: 50,
            hash: hash(50),
            peers: listed
                .iter()
                .map(|(&seat, &(which, nonce))| {
                    let node = node(seat, which);
                    Cluster::listed(
                        &RECORDS[&(seat, node, nonce)],
                        40,
                        &Cluster::bound(seat, node),
                        30,
                    )
                })
                .collect(),
            leader: U256::from(leader),
            term: U256::from(term),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the node knew, a full read of a chain that has not moved since the last one changes
        /// nothing; and when the first believed every listed record, the second reads no event at all.
        #[test]
        fn a_second_full_read_of_an_unchanged_chain_changes_nothing(
            history in vec(step(), 0..12),
            listed in btree_map(any_seat(), (0..2usize, NONCES), 0..=3),
            leader in 0..=3u64,
            term in 0..8u64,
        ) {
            let known = poll(&start(), &logged(&history)).view;
            let listing = listing(&listed, leader, term);
            let first = apply_listing(&known, &listing, honest_binding, honest_event);
            prop_assert!(first.complete && first.applies);
            let reads = Cell::new(0u32);
            let second = apply_listing(
                &first.view,
                &listing,
                |p| {
                    reads.set(reads.get().saturating_add(1));
                    honest_binding(p)
                },
                |p| {
                    reads.set(reads.get().saturating_add(1));
                    honest_event(p)
                },
            );
            prop_assert!(second.complete && second.applies);
            prop_assert_eq!(&second.view, &first.view);
            if first.rejected.is_empty() {
                prop_assert_eq!(reads.get(), 0);
            }
        }

        /// A range's registrations and elections, applied again, change nothing: each record is refused as
        /// older or taken as the one held, and the leader ends where it did. (Clears and unbindings are
        /// left out: replayed, they would drop a record the replay does not bring back, which is why a
        /// reorg makes a full read due rather than re-reading logs.)
        #[test]
        fn registrations_and_elections_applied_again_change_nothing(
            steps in vec(
                prop_oneof![
                    4 => any_seat().prop_flat_map(registration),
                    1 => (0..=3u64, 0..8u64).prop_map(|(seat, term)| Step::Elect { seat, term }),
                ],
                0..16,
            ),
        ) {
            let logs = logged(&steps);
            let once = poll(&start(), &logs).view;
            let twice = poll(&once, &logs).view;
            prop_assert!(!Changes::between(&once, &twice).any());
            prop_assert_eq!(&twice.high_water, &once.high_water);
        }

        /// Whatever logs come, in whatever order, no seat's high-water mark goes back, and a believed record
        /// is always the newest the node ever believed for its seat.
        #[test]
        fn a_seats_nonce_never_goes_back_whatever_the_order_of_logs(steps in vec(step(), 0..24)) {
            let mut view = start();
            for step in steps {
                let next = poll(&view, &[step.logged()]).view;
                for (seat, _) in SEATS {
                    let (before, after) = (view.high_water.get(&seat), next.high_water.get(&seat));
                    prop_assert!(after >= before, "seat {}: {:?} after {:?}, on {:?}", seat, after, before, step);
                    if let Some(record) = next.records.get(&seat) {
                        prop_assert_eq!(Some(&record.nonce), after);
                    }
                }
                view = next;
            }
        }

        /// Logs of different seats do not depend on each other: however they interleave, as long as each
        /// seat's own come in order, the view and the refusals (seat by seat) are the same.
        #[test]
        fn the_order_of_different_seats_logs_does_not_change_the_result(
            (per_seat, schedule) in (
                vec(seat_step(1), 0..6),
                vec(seat_step(2), 0..6),
                vec(seat_step(3), 0..6),
            )
                .prop_flat_map(|(a, b, c)| {
                    let schedule: Vec<usize> = [&a, &b, &c]
                        .iter()
                        .enumerate()
                        .flat_map(|(i, steps)| std::iter::repeat_n(i, steps.len()))
                        .collect();
                    (Just(vec![a, b, c]), Just(schedule).prop_shuffle())
                }),
        ) {
            let in_turn = logged(&per_seat.concat());
            let mut each = per_seat.iter().map(|steps| steps.iter()).collect::<Vec<_>>();
            let interleaved: Vec<Step> = schedule
                .iter()
                .filter_map(|&seat| each[seat].next().copied())
                .collect();
            let interleaved = logged(&interleaved);
            let (a, b) = (poll(&start(), &in_turn), poll(&start(), &interleaved));
            prop_assert_eq!(&a.view, &b.view);
            let by_seat = |mut r: Vec<Rejection>| {
                r.sort_by_key(|r| r.why.token_id());
                r
            };
            prop_assert_eq!(by_seat(a.rejected), by_seat(b.rejected));
        }
    }
}
