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
use crate::view::{Binding, ChainView, TermReason};

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
    /// A seat minted, moved or burned (ERC721's `Transfer`).
    Transfer(DstackClusterNFT::Transfer),
    LeaderElected(DstackClusterElection::LeaderElected),
    LeaderReplaced(DstackClusterElection::LeaderReplaced),
    LeaderCleared(DstackClusterElection::LeaderCleared),
    LeaderHandedOff(DstackClusterElection::LeaderHandedOff),
    SeatDraining(DstackClusterElection::SeatDraining),
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
            } else if let Ok(e) = log.log_decode::<DstackClusterElection::LeaderHandedOff>() {
                Event::LeaderHandedOff(e.inner.data)
            } else if let Ok(e) = log.log_decode::<DstackClusterElection::SeatDraining>() {
                Event::SeatDraining(e.inner.data)
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
        } else if let Ok(e) = log.log_decode::<DstackClusterNFT::Transfer>() {
            Event::Transfer(e.inner.data)
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
    /// The seats draining.
    pub draining: bool,
}

impl Changes {
    pub fn between(before: &ChainView, after: &ChainView) -> Self {
        Self {
            records: before.records != after.records,
            bindings: before.bindings != after.bindings,
            leader: before.leader != after.leader || before.leader_term != after.leader_term,
            draining: before.draining != after.draining,
        }
    }

    pub fn any(&self) -> bool {
        self.records || self.bindings || self.leader || self.draining
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

impl ChainView {
    /// A term an event began: its leader, and how it began, unless the term goes back ([`term_of`]).
    fn new_term(&mut self, leader: Option<u64>, term: U256, reason: TermReason) {
        let held = self.leader_term;
        let term = term_of(term, held);
        if term > held {
            self.term_reason = Some(reason);
        }
        self.leader = leader;
        self.leader_term = term;
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
                next.new_term(leader_of(e.tokenId), e.term, TermReason::Elected);
            }
            Event::LeaderReplaced(e) => {
                next.new_term(leader_of(e.newTokenId), e.term, TermReason::VotedOut);
            }
            Event::LeaderCleared(e) => next.new_term(None, e.term, TermReason::SeatLeft),
            Event::LeaderHandedOff(e) => {
                next.new_term(leader_of(e.newTokenId), e.term, TermReason::Handoff);
            }
            Event::SeatDraining(e) => {
                if let Some(token) = seat(e.tokenId) {
                    match e.draining {
                        true => next.draining.insert(token),
                        false => next.draining.remove(&token),
                    };
                }
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
            Event::Transfer(e) => {
                if let Some(token) = seat(e.tokenId) {
                    match e.to.is_zero() {
                        true => next.holders.remove(&token),
                        false => next.holders.insert(token, e.to),
                    };
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
    /// `drainingSeats`.
    pub draining: Vec<U256>,
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
    held: crate::view::Records,
    /// The node had no view yet: whatever the read finds is better than nothing.
    fresh: bool,
    complete: bool,
    rejected: Vec<Rejection>,
}

impl ListingApply {
    /// Starts applying a listing to `view`, with the election's `leader`, `term` and `draining` seats at the
    /// listing's block.
    pub fn new(view: &ChainView, leader: U256, term: U256, draining: &[U256]) -> Self {
        let mut next = view.clone();
        let held = std::mem::take(&mut next.records);
        // The listing names the holder of every seat it lists; no other seat's holder is kept.
        next.holders.clear();
        next.leader = leader_of(leader);
        next.leader_term = term_of(term, view.leader_term);
        if next.leader_term != view.leader_term {
            // Begun since the node last looked, by what it cannot tell.
            next.term_reason = None;
        }
        next.draining = draining.iter().filter_map(|t| seat(*t)).collect();
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
        self.next.holders.insert(token, p.holder);
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
    let mut apply = ListingApply::new(view, listing.leader, listing.term, &listing.draining);
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
mod tests;

#[cfg(test)]
mod properties;
