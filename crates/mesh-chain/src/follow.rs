//! Following the cluster contract: a full read now and then as a safety net, and in between the contract's
//! events block by block, so that the RPC load per block does not grow with the number of peers.
//!
//! Per poll with new blocks: `eth_blockNumber`, the header of the newest confirmed block (its hash, and its
//! parent's to detect a reorg), and one `eth_getLogs` for the range, unless the block's logs bloom shows that
//! it holds nothing of the cluster's. With a new-heads subscription the heads bring the hashes and blooms,
//! so a block with nothing for the cluster costs no request at all, and one with events one `eth_getLogs`.
//! A reorg below the last processed block, or a log marked removed, makes a full read due.
//!
//! The view keeps only believed records ([`crate::membership::authenticate`] and
//! [`crate::membership::admit`]), each with its registration event's proof, and every seat's nonce
//! high-water mark, so that an RPC can hide changes but never invent or undo them.
//!
//! A full read that fails, for whatever reason (an RPC error, one missing event, pruned logs), never stops
//! the follower: it is retried with backoff while the events go on being polled.
//!
//! [`Follower`] only reads; what it read does to the view is decided in [`apply`], without I/O.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256, Bloom, U256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use tracing::{debug, info, instrument, warn};

pub mod apply;
mod point_reads;

pub use point_reads::TcbPolicyRead;

use crate::budget::{self, PAGE_SIZE};
use crate::contract::{self, DstackClusterAppAuth, DstackClusterElection, DstackClusterNFT};
use crate::error::ChainError;
use crate::heads::Head;
use crate::membership::{Pins, Prefix, Rejected};
use crate::view::{ChainView, Seat};
use apply::{Blocks, Changes, ListingApply, Logged, Need, RangeApply};
use backoff::Backoff;

/// How many announced heads the follower keeps beyond its last processed block, for ranges it has not read
/// yet (a chain with confirmations, or a follower that fell behind); older ones are read from the RPC.
const ANNOUNCED_KEPT: usize = 256;

/// The widest block range one `eth_getLogs` asks for; a node that fell behind catches up over several
/// polls rather than with one request that providers refuse.
const MAX_LOG_RANGE: u64 = 2000;

/// Where the trust anchors come from when the follower starts.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    /// `--kms-root` and `--app-id`: they override what the state file pinned.
    pub flags: Option<(Address, Vec<Address>)>,
    /// `--repin`: trust what the RPC says now (chain id, prefix, and the contract's KMS root and app ids
    /// unless given as flags), and forget the high-water marks, as at a first start.
    pub repin: bool,
}

/// How the follower paces itself.
#[derive(Debug, Clone, Copy)]
pub struct FollowConfig {
    /// Blocks to wait before acting on an event.
    pub confirmations: u64,
    /// How often a full read re-checks everything.
    pub full_read_every: Duration,
}

/// What one [`Follower::tick`] did.
#[derive(Debug, Default)]
pub struct Tick {
    /// The believed records, or the leader, changed.
    pub changed: bool,
    /// The cluster's app auth changed an allowlist (a compose hash or an OS image allowed or disallowed), its
    /// TCB policy or its grants between seats, once the follower has been asked about them ([`Follower::allowlisted`],
    /// [`Follower::tcb_policy`]): what was read of them is stale now.
    pub allowlists_changed: bool,
    /// The view now holds everything up to a head that this tick asked the RPC for (`eth_blockNumber`):
    /// it is confirmed as of the tick's start, since the RPC answered with the chain as it was then or
    /// later. A head a subscription announced confirms nothing, as it may have waited on the socket.
    pub confirmed: bool,
    /// A full read was due and failed (or could not fetch every record); it is retried with backoff while
    /// events are polled. [`Follower::full_read_failing`] keeps saying so until one succeeds.
    pub full_read_error: Option<FullReadError>,
}

/// Why a full read did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FullReadError {
    /// A read failed: the RPC did not answer, or answered with what cannot be used.
    #[error("the full read failed ({0})")]
    Read(Arc<ChainError>),
    /// Every read answered, but a changed record's event was not among them.
    #[error("the full read could not fetch every changed record's event")]
    Incomplete,
}

/// When full reads happen: every `every` after one that completes, or longer in a cluster large enough that
/// its nodes' reads together would pass the budget ([`budget::full_read_period`]); after a failure sooner,
/// backing off, while polling goes on; and at once when a reorg makes one due (unless backing off).
#[derive(Debug, Clone)]
pub struct FullReadSchedule {
    every: Duration,
    next: Instant,
    backoff: Backoff,
    failing: bool,
}

impl FullReadSchedule {
    /// A schedule whose first full read is due at `first`.
    pub fn new(every: Duration, first: Instant) -> Self {
        Self {
            every,
            next: first,
            backoff: Backoff::new(Duration::from_secs(1), every.max(Duration::from_secs(1))),
            failing: false,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// A full read that found a cluster of `nodes` completed at `now`.
    pub fn succeeded(&mut self, now: Instant, nodes: usize) {
        self.failing = false;
        self.backoff.reset();
        let every = budget::full_read_period(self.every, nodes);
        self.next = now.checked_add(every).unwrap_or(now);
    }

    pub fn failed(&mut self, now: Instant) {
        self.failing = true;
        self.next = now.checked_add(self.backoff.next_delay()).unwrap_or(now);
    }

    /// Something (a reorg, a removed log) makes a full read due now; a failing one keeps its backoff.
    pub fn request(&mut self, now: Instant) {
        if !self.failing {
            self.next = self.next.min(now);
        }
    }
}

/// What a full read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullRead {
    pub changed: bool,
    /// The event of every listed record that changed could be fetched. An incomplete read is not applied
    /// (unless the node had nothing yet): the events it could not fetch arrive by polling instead, which
    /// would skip them if the read moved the last processed block past them.
    pub complete: bool,
}

/// Follows one cluster contract through one RPC.
pub struct Follower {
    provider: DynProvider,
    config: FollowConfig,
    view: ChainView,
    schedule: FullReadSchedule,
    /// Why the last full read failed, until one succeeds.
    full_read_failing: Option<FullReadError>,
    /// Rejections already logged, so each is logged once.
    logged: BTreeSet<(u64, u64)>,
    /// RPC requests made, for the benchmark of RPC load per block.
    pub requests: u64,
    /// Of those, the polls of the chain's head (`eth_blockNumber`): the rest is what new blocks and full
    /// reads cost.
    pub head_polls: u64,
    /// Records refused because they were not authentic or were older than what was known.
    pub rejected: u64,
    /// Ranges whose `eth_getLogs` was not asked because their logs bloom holds nothing of the cluster's.
    pub log_reads_skipped: u64,
    latest_head: Option<u64>,
    /// The newest confirmed block the RPC gave (with several providers, one a quorum of them has reached):
    /// reads of the present are made at it, so that every provider is asked about the same block.
    confirmed: Option<u64>,
    /// Heads a subscription announced from the last processed block on, by number: their hashes and
    /// blooms stand in for header reads and empty log reads.
    announced: BTreeMap<u64, Head>,
    /// The cluster's app-auth contract (its allowlists of compose hashes and OS images), once asked for.
    app_auth: Option<Address>,
    /// An allowlist changed in a range read since the last tick.
    allowlists_changed: bool,
    /// The holders `getPeer` named while the range being applied read seats' bindings.
    holders_read: BTreeMap<u64, Address>,
}

fn rpc(what: &'static str) -> impl FnOnce(alloy::transports::TransportError) -> ChainError {
    move |source| ChainError::Rpc { what, source }
}

fn call(what: &'static str) -> impl FnOnce(alloy::contract::Error) -> ChainError {
    move |e| ChainError::from_call(what, e)
}

/// The logs a poll asks for: every event of the cluster and its election that the view follows, and the
/// allowlist and TCB policy changes of its app auth once that is known (`app_auth`).
fn events_filter(view: &ChainView, app_auth: Option<Address>, from: u64, to: u64) -> Filter {
    Filter::new()
        .address(watched(view, app_auth))
        .event_signature(vec![
            DstackClusterAppAuth::ComposeHashUpdated::SIGNATURE_HASH,
            DstackClusterAppAuth::OsMeasurementUpdated::SIGNATURE_HASH,
            DstackClusterAppAuth::TcbPolicyUpdated::SIGNATURE_HASH,
            DstackClusterAppAuth::TcbAdvisoryUpdated::SIGNATURE_HASH,
            DstackClusterAppAuth::PolicyUpdated::SIGNATURE_HASH,
            DstackClusterNFT::InstanceBound::SIGNATURE_HASH,
            DstackClusterNFT::InstanceUnbound::SIGNATURE_HASH,
            DstackClusterNFT::PeerRegistered::SIGNATURE_HASH,
            DstackClusterNFT::PeerCleared::SIGNATURE_HASH,
            DstackClusterNFT::Transfer::SIGNATURE_HASH,
            DstackClusterElection::LeaderElected::SIGNATURE_HASH,
            DstackClusterElection::LeaderReplaced::SIGNATURE_HASH,
            DstackClusterElection::LeaderCleared::SIGNATURE_HASH,
            DstackClusterElection::LeaderHandedOff::SIGNATURE_HASH,
            DstackClusterElection::SeatDraining::SIGNATURE_HASH,
        ])
        .from_block(from)
        .to_block(to)
}

/// The contracts whose logs a poll reads: the cluster, its election, and its app auth once known.
fn watched(view: &ChainView, app_auth: Option<Address>) -> Vec<Address> {
    let mut addresses = vec![view.contract, view.election];
    addresses.extend(app_auth);
    addresses
}

/// The RPC says something that cannot be true of a cluster contract.
fn implausible(detail: String) -> ChainError {
    ChainError::Implausible { detail }
}

impl Follower {
    /// Connects, checks the RPC against the pins, and takes up the `cached` view if there is one for this
    /// contract (a full read is then due at once, but the follower runs even if it fails). Without a cache
    /// it reads the whole state first. Pins come from `anchors`, the cache, or (at a first start) the RPC.
    ///
    /// # Errors
    /// [`ChainError::PinMismatch`] when the RPC disagrees with what this node pinned; otherwise when the RPC
    /// or the contract cannot be read.
    #[instrument(skip_all, fields(%contract))]
    pub async fn start(
        provider: DynProvider,
        contract: Address,
        config: FollowConfig,
        cached: Option<ChainView>,
        anchors: &Anchors,
    ) -> Result<Self, ChainError> {
        contract::check_cluster(&provider, contract).await?;
        let c = DstackClusterNFT::new(contract, &provider);
        let chain_id = provider.get_chain_id().await.map_err(rpc("eth_chainId"))?;
        let prefix = contract::mesh_prefix(&c).await?;
        let election = contract::election_of(&provider, contract).await?;
        let cached = cached.filter(|v| v.contract == contract && !anchors.repin);
        if let Some(mismatch) = cached
            .as_ref()
            .and_then(|v| pin_mismatch(v, chain_id, election, prefix))
        {
            return Err(mismatch);
        }
        let (kms_root, app_ids) = match (&anchors.flags, &cached) {
            (Some((root, apps)), _) => (*root, apps.clone()),
            (None, Some(v)) => (v.pins.kms_root, v.pins.app_ids.clone()),
            (None, None) => {
                let (kms_root, app_ids) = contract::trust_anchors(&c).await?;
                info!(%kms_root, ?app_ids, %chain_id, %prefix, "pinned the cluster's KMS root, app ids, chain id and prefix");
                (kms_root, app_ids)
            }
        };
        let pins = Pins {
            kms_root,
            app_ids,
            chain_id,
            prefix,
        };
        let now = Instant::now();
        let mut follower = Self {
            provider,
            config,
            view: ChainView {
                election,
                ..ChainView::new(contract, pins.clone())
            },
            schedule: FullReadSchedule::new(config.full_read_every, now),
            full_read_failing: None,
            logged: BTreeSet::new(),
            requests: 5,
            head_polls: 0,
            rejected: 0,
            log_reads_skipped: 0,
            latest_head: None,
            confirmed: None,
            announced: BTreeMap::new(),
            app_auth: None,
            allowlists_changed: false,
            holders_read: BTreeMap::new(),
        };
        match cached {
            Some(mut v) => {
                if v.pins != pins {
                    // New anchors from flags: records are re-checked against them.
                    v.pins = pins;
                    v.records.clear();
                }
                v.election = election;
                follower.view = v;
            }
            None => {
                let read = follower.full_read().await?;
                if read.complete {
                    let nodes = follower.view.records.len();
                    follower.schedule.succeeded(now, nodes);
                } else {
                    follower.schedule.failed(now);
                }
            }
        }
        Ok(follower)
    }

    /// What the follower knows now.
    pub fn view(&self) -> &ChainView {
        &self.view
    }

    /// Why full reads fail, while they do (events are followed meanwhile).
    pub fn full_read_failing(&self) -> Option<&FullReadError> {
        self.full_read_failing.as_ref()
    }

    /// One step: the full read when one is due (backing off after failures), then the events since the last
    /// processed block.
    ///
    /// # Errors
    /// When polling fails; a failed full read is reported in [`Tick::full_read_error`] instead.
    pub async fn tick(&mut self, now: Instant) -> Result<Tick, ChainError> {
        self.tick_at(now, &[]).await
    }

    /// [`Follower::tick`] for heads that a subscription `announced` (oldest first): the events up to the
    /// newest are read without polling for the head first, and only for blocks whose bloom may hold them.
    /// With none announced, as [`Follower::tick`].
    ///
    /// # Errors
    /// As [`Follower::tick`].
    pub async fn tick_at(&mut self, now: Instant, announced: &[Head]) -> Result<Tick, ChainError> {
        self.remember(announced);
        let head = announced.last();
        let mut tick = Tick::default();
        if self.full_read_if_due(now, &mut tick).await {
            tick.confirmed = true;
            return Ok(tick);
        }
        let (changed, reached) = self.poll_to(now, head).await?;
        tick.changed |= changed;
        tick.confirmed = reached && head.is_none();
        // A range a full read skips has its allowlist changes read at the next refresh of the answers.
        tick.allowlists_changed = std::mem::take(&mut self.allowlists_changed);
        // A reorg the poll saw is sorted out now, not at the next tick, which a subscription may not
        // bring for a while.
        if tick.full_read_error.is_none() {
            self.full_read_if_due(now, &mut tick).await;
        }
        Ok(tick)
    }

    /// The full read when one is due; returns whether one completed.
    async fn full_read_if_due(&mut self, now: Instant, tick: &mut Tick) -> bool {
        if !self.schedule.due(now) {
            return false;
        }
        let error = match self.full_read().await {
            Ok(read) => {
                tick.changed |= read.changed;
                if read.complete {
                    self.schedule.succeeded(now, self.view.records.len());
                    self.full_read_failing = None;
                    return true;
                }
                FullReadError::Incomplete
            }
            Err(e) => FullReadError::Read(Arc::new(e)),
        };
        self.schedule.failed(now);
        warn!(error = %error, "the full read failed; following events meanwhile, and retrying it with backoff");
        self.full_read_failing = Some(error.clone());
        tick.full_read_error = Some(error);
        false
    }

    /// Keeps the `announced` heads above the last processed block (a head at a height already kept replaces
    /// it: a reorg), at most [`ANNOUNCED_KEPT`] of them.
    fn remember(&mut self, announced: &[Head]) {
        for head in announced {
            self.announced.insert(head.number, *head);
        }
        self.forget_announced();
    }

    fn forget_announced(&mut self) {
        self.announced = self
            .announced
            .split_off(&self.view.last_block.saturating_add(1));
        while self.announced.len() > ANNOUNCED_KEPT {
            self.announced.pop_first();
        }
    }

    /// The newest head this follower has heard of, by a poll or from a subscription.
    pub fn latest_head(&self) -> Option<u64> {
        self.latest_head
    }

    /// The newest block with enough confirmations: `head` when a subscription announced it (no request),
    /// else the RPC's head, polled.
    async fn confirmed_head(&mut self, head: Option<&Head>) -> Result<u64, ChainError> {
        let head = match head {
            Some(h) => h.number,
            None => {
                self.count();
                self.head_polls = self.head_polls.saturating_add(1);
                self.provider
                    .get_block_number()
                    .await
                    .map_err(rpc("eth_blockNumber"))?
            }
        };
        self.latest_head = Some(self.latest_head.unwrap_or(0).max(head));
        let confirmed = head.saturating_sub(self.config.confirmations);
        // The head as it is now, even lower than before: a chain that went back (a reorg to a shorter
        // branch, a reset devnet) has no state at the old height to read.
        self.confirmed = Some(confirmed);
        Ok(confirmed)
    }

    /// Block `number`'s hash, its parent's, and its logs bloom.
    async fn header(&mut self, number: u64) -> Result<(B256, B256, Bloom), ChainError> {
        self.count();
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(rpc("eth_getBlockByNumber"))?
            .ok_or(ChainError::MissingBlock { number })?;
        Ok((
            block.header.hash,
            block.header.parent_hash,
            block.header.logs_bloom,
        ))
    }

    fn count(&mut self) {
        self.requests = self.requests.saturating_add(1);
    }

    fn reject(&mut self, rejected: &Rejected, nonce: u64) {
        self.rejected = self.rejected.saturating_add(1);
        if self.logged.insert((rejected.token_id(), nonce)) {
            warn!(token = rejected.token_id(), nonce, reason = %rejected, "refusing a record");
        }
    }

    /// Every record at the confirmed head, in pages at one block number.
    async fn read_records(
        &mut self,
        block: u64,
    ) -> Result<Vec<DstackClusterNFT::Peer>, ChainError> {
        let c = DstackClusterNFT::new(self.view.contract, self.provider.clone());
        // A lying RPC could page forever: no cluster has more records than its prefix has seats.
        let capacity = self.view.prefix().capacity();
        let mut peers = Vec::new();
        let mut offset = 0u64;
        loop {
            self.count();
            let page = c
                .getPeersPage(U256::from(offset), U256::from(PAGE_SIZE))
                .block(block.into())
                .call()
                .await
                .map_err(call("getPeersPage"))?;
            let total = u64::try_from(page.total)
                .ok()
                .filter(|t| *t <= capacity)
                .ok_or_else(|| {
                    implausible(format!(
                        "getPeersPage reports {} records, more than the prefix's {capacity} seats",
                        page.total
                    ))
                })?;
            let n = u64::try_from(page.page.len()).unwrap_or(u64::MAX);
            peers.extend(page.page);
            offset = offset.saturating_add(n);
            if n == 0 || offset >= total {
                return Ok(peers);
            }
        }
    }

    /// Reads every record at the confirmed head, fetching the registration event of each record that is
    /// new or changed, and applies the result if it is complete or the node had nothing yet
    /// ([`apply::ListingApply`] decides).
    ///
    /// # Errors
    /// [`ChainError`] when the head or the record list cannot be read; the view is left as it was.
    #[instrument(skip_all)]
    pub async fn full_read(&mut self) -> Result<FullRead, ChainError> {
        let target = self.confirmed_head(None).await?;
        let (hash, _, _) = self.header(target).await?;
        let peers = self.read_records(target).await?;
        let c = DstackClusterNFT::new(self.view.contract, self.provider.clone());
        let e = DstackClusterElection::new(self.view.election, self.provider.clone());
        self.count();
        let leader = e
            .leaderTokenId()
            .block(target.into())
            .call()
            .await
            .map_err(call("leaderTokenId"))?;
        self.count();
        let term = e
            .leaderTerm()
            .block(target.into())
            .call()
            .await
            .map_err(call("leaderTerm"))?;
        self.count();
        let draining = e
            .drainingSeats()
            .block(target.into())
            .call()
            .await
            .map_err(call("drainingSeats"))?;
        let mut apply = ListingApply::new(&self.view, leader, term, &draining);
        for p in &peers {
            let mut need = apply.list(p);
            if need == Need::BindingEvent {
                self.count();
                need = apply.binding_event(p, contract::binding_event(&c, p).await.into());
            }
            if need == Need::RegistrationEvent {
                self.count();
                apply.registration_event(p, contract::registration_event(&c, p).await.into());
            }
        }
        let read = apply.finish(target, hash);
        for r in &read.rejected {
            self.reject(&r.why, r.nonce);
        }
        let changed = Changes::between(&self.view, &read.view).any();
        debug!(
            block = target,
            peers = read.view.records.len(),
            changed,
            complete = read.complete,
            "full read"
        );
        if !read.applies {
            return Ok(FullRead {
                changed: false,
                complete: read.complete,
            });
        }
        self.view = read.view;
        Ok(FullRead {
            changed,
            complete: read.complete,
        })
    }

    /// Applies the contract's events since the last processed block, at most [`MAX_LOG_RANGE`] blocks at a
    /// time. Returns whether the believed records or the leader changed.
    ///
    /// # Errors
    /// [`ChainError`] when a read fails; the view is left as it was and the next poll retries the range.
    pub async fn poll(&mut self, now: Instant) -> Result<bool, ChainError> {
        Ok(self.poll_to(now, None).await?.0)
    }

    /// [`Follower::poll`] up to `head` when a subscription announced it. A head at the last processed
    /// height with another hash is a reorg seen at once, rather than when the next block comes. Returns
    /// whether the view changed, and whether it now reaches the confirmed head (not when a long gap is
    /// read in parts).
    async fn poll_to(
        &mut self,
        now: Instant,
        head: Option<&Head>,
    ) -> Result<(bool, bool), ChainError> {
        let target = self.confirmed_head(head).await?;
        let last = self.view.last_block;
        if head.is_some_and(|h| apply::head_replaces_last(&self.view, h, self.config.confirmations))
        {
            warn!(
                block = last,
                "a new head replaced the last processed block; a full read is due"
            );
            self.schedule.request(now);
        }
        if target <= last {
            return Ok((false, true));
        }
        let from = last
            .checked_add(1)
            .ok_or_else(|| implausible(format!("block number {last} cannot advance")))?;
        let to = target.min(last.saturating_add(MAX_LOG_RANGE));
        // The range's hashes and bloom from announced heads, else from the RPC: a header per end, and a
        // bloom only for a range of one block (one header's bloom covers no more).
        let (hash, parent, bloom) = match apply::announced_range(&self.announced, from, to) {
            Some(r) => (r.hash, r.parent, Some(r.bloom)),
            None => {
                let (hash, parent, bloom) = self.header(to).await?;
                if to == from {
                    (hash, parent, Some(bloom))
                } else {
                    (hash, self.header(last).await?.0, None)
                }
            }
        };
        let blocks = Blocks {
            from,
            to,
            hash,
            parent,
        };
        // Requested before the logs are read, so that a failing eth_getLogs does not put it off.
        let reorganised = apply::reorganised(&self.view, &blocks);
        if reorganised {
            self.schedule.request(now);
        }
        let cluster = watched(&self.view, self.app_auth);
        let logs = if bloom.is_some_and(|b| !apply::may_hold_events(&b, &cluster)) {
            self.log_reads_skipped = self.log_reads_skipped.saturating_add(1);
            Vec::new()
        } else {
            self.count();
            self.provider
                .get_logs(&events_filter(&self.view, self.app_auth, from, to))
                .await
                .map_err(rpc("eth_getLogs"))?
        };
        // The app auth's logs say only that an allowlist moved: what it allows now is read again when asked.
        let (allowlist_logs, logs): (Vec<_>, Vec<_>) = logs
            .into_iter()
            .partition(|l| self.app_auth.is_some_and(|a| l.address() == a));
        if !allowlist_logs.is_empty() {
            info!(
                event = "allowlists.changed",
                from, to, "the cluster's app auth changed its allowlists"
            );
            self.allowlists_changed = true;
        }
        // Most blocks: nothing of the cluster's, so nothing to apply, check or compare.
        if logs.is_empty() {
            if reorganised {
                warn!(
                    block = last,
                    "the chain reorganised below the last processed block; a full read is due"
                );
            }
            apply::move_on(&mut self.view, &blocks);
            self.forget_announced();
            return Ok((false, to == target));
        }
        let mut apply = RangeApply::new(&self.view, blocks);
        self.holders_read.clear();
        for log in &logs {
            let log = Logged::decode(log, self.view.contract, self.view.election);
            let binding = match apply.binding_wanted(&log) {
                Some(token) => Some(self.fetch_binding(token, to).await.into()),
                None => None,
            };
            apply.apply(&log, binding);
        }
        let applied = apply.finish();
        if !applied.doubts.is_empty() {
            self.schedule.request(now);
        }
        for r in &applied.rejected {
            self.reject(&r.why, r.nonce);
        }
        let changes = Changes::between(&self.view, &applied.view);
        if changes.leader {
            info!(from, to, leader = ?applied.view.leader, term = applied.view.leader_term, "the leader changed");
        }
        self.view = applied.view;
        // The holders of the seats whose bindings this range read come with them, at no extra read.
        self.view
            .holders
            .extend(std::mem::take(&mut self.holders_read));
        self.forget_announced();
        if changes.records {
            info!(
                event = "records.changed",
                from,
                to,
                peers = self.view.records.len(),
                "peer records changed"
            );
        }
        Ok((changes.any(), to == target))
    }

    /// Seat `token`'s binding at block `block`, from the seat (`getPeer`) and its `InstanceBound` event; none
    /// when the seat is unbound or the event cannot be found.
    async fn fetch_binding(
        &mut self,
        token: u64,
        block: u64,
    ) -> Result<Option<crate::view::Binding>, ChainError> {
        let c = DstackClusterNFT::new(self.view.contract, self.provider.clone());
        self.count();
        let peer = c
            .getPeer(U256::from(token))
            .block(block.into())
            .call()
            .await
            .map_err(call("getPeer"))?;
        self.holders_read.insert(token, peer.holder);
        if peer.node.is_zero() {
            return Ok(None);
        }
        self.count();
        contract::binding_event(&c, &peer).await
    }
}

/// What the RPC says of the cluster now (its chain id, election contract and mesh prefix) against what this
/// node pinned at its first start, from the state file: the first value that differs, as the error that
/// refuses the RPC naming both values (unless the operator restarts with `--repin`), or `None`.
fn pin_mismatch(
    pinned: &ChainView,
    chain_id: u64,
    election: Address,
    prefix: Prefix,
) -> Option<ChainError> {
    let mismatch = |what, pinned: &dyn std::fmt::Display, rpc: &dyn std::fmt::Display| {
        Some(ChainError::PinMismatch {
            what,
            pinned: pinned.to_string(),
            rpc: rpc.to_string(),
        })
    };
    if pinned.pins.chain_id != chain_id {
        return mismatch("chain id", &pinned.pins.chain_id, &chain_id);
    }
    // A cluster makes its election once, at deployment: another one now is the RPC's invention. A state
    // file written before there was an election holds zero, and the RPC's is taken.
    if pinned.election != Address::ZERO && pinned.election != election {
        return mismatch("election contract", &pinned.election, &election);
    }
    if pinned.pins.prefix != prefix {
        return mismatch("mesh prefix", &pinned.pins.prefix, &prefix);
    }
    None
}

#[cfg(test)]
mod tests;
