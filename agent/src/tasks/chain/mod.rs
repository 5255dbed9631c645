//! The chain task: follows the cluster contract (or, until the RPC answers, serves the cached view), finds
//! this node's seat, keeps the state file, and publishes [`ChainState`].

pub mod attest;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::Address;
use alloy::transports::http::reqwest::Url;
use backoff::Backoff;
use mesh_chain::follow::{Anchors, FollowConfig, Follower};
use mesh_chain::heads::{Head, Wake, Wakeups};
use mesh_chain::pace::BlockPace;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::rpc::Rpcs;
use mesh_chain::view::{ChainView, Seat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::attest::Attestor;
use crate::attestation::{self, Attestations, Attested};
use crate::cache;
use crate::config::RunArgs;
use crate::leadership::lease::Timing;
use crate::state::{ChainState, Failing, Fault, FaultError, SeatProblem, SeatState};
use crate::tasks::Shared;

/// How often an instance without a seat in the view asks the contract for one.
const SEAT_LOOKUP_EVERY: Duration = Duration::from_secs(5);

/// How often it asks on new heads: its seat may come in any block, but a fast chain should not be asked
/// at every one.
const SEAT_LOOKUP_ON_HEADS: Duration = Duration::from_secs(1);

/// How long one look at the chain may take before it is given up and reported: an RPC that accepts a
/// connection and never answers must not hold the state still.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// How soon the chain's pace is read again after a read of it failed.
const PACE_RETRY: Duration = Duration::from_secs(5);

/// What the chain task needs to know.
pub struct ChainTask {
    pub contract: Address,
    /// The providers the follower reads through (a quorum of them, when several).
    pub rpcs: Rpcs,
    pub rpc: RedactedUrl,
    pub follow: FollowConfig,
    pub anchors: Anchors,
    pub poll: Duration,
    /// Where new heads are followed by subscription, if anywhere.
    pub subscribe: Option<Url>,
    pub state_dir: PathBuf,
    pub instance_id: String,
    /// `--leader-timeout`'s timing, if given; else the chain's pace decides it.
    pub timing_flag: Option<Timing>,
    /// The chain's pace as the state file kept it.
    pub cached_pace: Option<BlockPace>,
    /// The daemon's root span: the seat is recorded on it as soon as it is known, so every log line after
    /// that (the registrar's included) carries it.
    pub node_span: tracing::Span,
    /// Decides which seats' records are configured.
    pub attestor: Attestor,
}

impl ChainTask {
    /// The chain task, checking seats' evidence with `attestor`.
    pub fn from_args(args: &RunArgs, shared: &Shared, attestor: Attestor) -> Self {
        Self {
            contract: shared.contract,
            rpcs: shared.cluster.rpcs().clone(),
            rpc: shared.rpc.clone(),
            follow: FollowConfig {
                confirmations: args.confirmations,
                full_read_every: Duration::from_secs(args.full_read_secs.max(1)),
            },
            anchors: Anchors {
                flags: args.kms_root.map(|root| (root, args.app_ids.clone())),
                repin: args.repin,
            },
            poll: args.poll_interval(),
            subscribe: args.subscription_url(),
            state_dir: args.state.dir.clone(),
            instance_id: shared.identity.instance_id().to_owned(),
            timing_flag: args.leader_timing(),
            cached_pace: None,
            node_span: tracing::Span::current(),
            attestor,
        }
    }
}

/// Records `seat` on `span` when it is new.
fn record_seat(span: &tracing::Span, recorded: &mut Option<u64>, seat: Option<u64>) {
    if let Some(token) = seat
        && *recorded != Some(token)
    {
        span.record("token", token);
        *recorded = Some(token);
    }
}

/// The seat of `instance_id` as the view shows it: only a seat with a record is found this way.
fn seat_in(view: &ChainView, instance_id: &str) -> Option<u64> {
    view.records
        .iter()
        .find(|(_, r)| r.instance_id == instance_id)
        .map(|(t, _)| *t)
}

struct Running {
    task: ChainTask,
    state: ChainState,
    follower: Option<Follower>,
    connect: Backoff,
    next_connect: Instant,
    last_seat_lookup: Option<Instant>,
    /// The follower's view changed since the state file was last written.
    unsaved: bool,
    /// The chain's pace, from when its head was seen to move.
    heads: mesh_chain::stall::HeadWatch,
    /// The chain's pace has been read since the start; if not, not before this.
    pace_read: bool,
    next_pace_read: Instant,
}

impl ChainTask {
    /// Runs until `cancel` fires, starting from the `cached` view if there is one.
    ///
    /// # Errors
    /// None yet: the chain being unreachable or lying is reported in the state and retried.
    pub async fn run(
        self,
        cached: Option<ChainView>,
        out: watch::Sender<ChainState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let state = ChainState {
            from_cache: cached.is_some(),
            pace: self.cached_pace,
            leader_timeout: self
                .timing_flag
                .or_else(|| self.cached_pace.map(Timing::for_pace))
                .map(|t| t.timeout),
            ..ChainState::default()
        };
        let timing = state.leader_timeout.map(Timing::for_timeout);
        match (self.timing_flag, self.cached_pace, timing) {
            (Some(_), _, Some(t)) => {
                info!(timeout = ?t.timeout, lease = ?t.lease, "the leader timeout (--leader-timeout)")
            }
            (None, Some(pace), Some(t)) => {
                info!(timeout = ?t.timeout, lease = ?t.lease, %pace, "the leader timeout, from the chain's pace as the state file kept it")
            }
            _ => info!("the leader timeout follows the chain's pace, read once the RPC answers"),
        }
        let mut wakeups = Wakeups::new(self.poll, self.subscribe.clone());
        let mut running = Running {
            state,
            follower: None,
            connect: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            next_connect: Instant::now(),
            last_seat_lookup: None,
            unsaved: false,
            heads: mesh_chain::stall::HeadWatch::default(),
            pace_read: false,
            next_pace_read: Instant::now(),
            task: self,
        };
        if let Some(view) = cached {
            if let Some(token) = seat_in(&view, &running.task.instance_id) {
                running.state.seat = SeatState::Active(token);
            }
            info!("serving the chain view from the state file until the RPC answers");
            running.publish(view, true).await;
        }
        let mut recorded = None;
        record_seat(
            &running.task.node_span,
            &mut recorded,
            running.state.seat.token(),
        );
        out.send_replace(running.state.clone());
        loop {
            let Some(wake) = cancel.run_until_cancelled(wakeups.next()).await else {
                return Ok(());
            };
            let heads = match wake {
                Wake::Heads(heads) => heads,
                Wake::Timer => Vec::new(),
            };
            let step = tokio::time::timeout(STEP_TIMEOUT, running.step(&heads));
            match cancel.run_until_cancelled(step).await {
                None => return Ok(()),
                Some(Ok(())) => {}
                // Every step leaves the follower as it was or moved on whole: dropping one midway is safe.
                Some(Err(_)) => {
                    running.rpc_failed("following the chain", FaultError::NoAnswer(STEP_TIMEOUT));
                }
            }
            running.state.subscribed = wakeups.subscribed();
            let renew = running
                .state
                .leader_timeout
                .map(|t| Timing::for_timeout(t).renew);
            wakeups.poll_at_least_every(renew.filter(|_| running.leads()));
            if let Some(follower) = &running.follower {
                wakeups.cluster_of(follower.view().records.len());
            }
            if heads.is_empty()
                && let Some(latest) = running.follower.as_ref().and_then(Follower::latest_head)
            {
                wakeups.polled(latest);
            }
            let seat = running.state.seat.token();
            record_seat(&running.task.node_span, &mut recorded, seat);
            running.judge_dependencies();
            out.send_replace(running.state.clone());
            // After the new view is out: the mesh applies it while the file is written and synced, which
            // at fifty peers, with every agent of a machine syncing at once, took longer than the rest.
            running.save_if_changed();
        }
    }
}

impl Running {
    /// Whether the view names this node's seat leader.
    fn leads(&self) -> bool {
        let own = self.state.seat.token();
        own.is_some() && self.state.view.as_deref().and_then(|v| v.leader) == own
    }

    async fn step(&mut self, heads: &[Head]) {
        match self.follower.is_some() {
            true => self.follow(heads).await,
            false => self.start_following().await,
        }
        self.read_pace().await;
        self.count();
        self.find_seat(!heads.is_empty()).await;
    }

    /// Reads the chain's pace once per run, once the follower has started (the RPC answers): kept in the
    /// state file for the next start, and the leader's timing unless it is set already.
    async fn read_pace(&mut self) {
        if self.pace_read || self.follower.is_none() || Instant::now() < self.next_pace_read {
            return;
        }
        match self.task.rpcs.block_pace().await {
            Ok(pace) => {
                self.pace_read = true;
                if self.state.pace != Some(pace) {
                    self.state.pace = Some(pace);
                    self.unsaved = true;
                }
                match self.state.leader_timeout {
                    None => {
                        let t = Timing::for_pace(pace);
                        info!(timeout = ?t.timeout, lease = ?t.lease, %pace, "the leader timeout, from the chain's pace (--leader-timeout overrides)");
                        self.state.leader_timeout = Some(t.timeout);
                    }
                    Some(t)
                        if self.task.timing_flag.is_none()
                            && Timing::for_pace(pace).timeout != t =>
                    {
                        info!(timeout = ?t, %pace, "the chain's pace changed since the state file was written; the leader timeout stays as it is until the agent restarts");
                    }
                    Some(_) => {}
                }
            }
            Err(e) => {
                self.next_pace_read = Instant::now() + PACE_RETRY;
                tracing::debug!(error = %self.task.rpc.scrub(&e.to_string()), "cannot read the chain's pace yet");
            }
        }
    }

    fn rpc_failed(&mut self, doing: impl Into<Cow<'static, str>>, e: impl Into<FaultError>) {
        self.state.rpc_errors = self.state.rpc_errors.saturating_add(1);
        super::show_fault(&mut self.state.error, &self.task.rpc, Fault::new(doing, e));
    }

    fn count(&mut self) {
        if let Some(f) = &self.follower {
            self.state.requests = f.requests;
            self.state.head_polls = f.head_polls;
            self.state.rejected = f.rejected;
        }
    }

    /// What this step showed of the chain's pace and the PCCS: whether the chain has stalled, and whether
    /// the PCCS's last fetch failed.
    fn judge_dependencies(&mut self) {
        let now = Instant::now();
        if let Some(head) = self.follower.as_ref().and_then(Follower::latest_head) {
            self.heads.observe(head, now);
        }
        self.state.stalled = self.heads.stalled(now).map(|stall| Failing {
            since: SystemTime::now() - now.saturating_duration_since(stall.since),
            why: stall.describe(now),
        });
        self.state.collateral_failing =
            self.task
                .attestor
                .collateral_failing()
                .map(|(at, why)| Failing {
                    since: UNIX_EPOCH + Duration::from_secs(at),
                    why: format!(
                        "the PCCS gave no collateral ({why}); the cached collateral serves until it expires"
                    ),
                });
    }

    /// Saves the view as read (every record, attested or not: a verdict can change with the collateral
    /// and the allowlists) with the allowlist answers, if it changed since the last save, or if the last
    /// save failed: a full or read-only volume is tried again at every step, and named meanwhile.
    fn save_if_changed(&mut self) {
        let Some(f) = self.follower.as_ref().filter(|_| self.unsaved) else {
            return;
        };
        let grants = self.task.attestor.grants();
        match cache::save(
            &self.task.state_dir,
            cache::Keep {
                view: f.view(),
                allowlists: &self.task.attestor.allowlists(),
                tcb_below: &self.task.attestor.tcb_below(),
                pace: self.state.pace,
                grants: grants.as_deref(),
            },
        ) {
            Ok(()) => {
                if self.state.save_failing.take().is_some() {
                    info!(dir = %self.task.state_dir.display(), "the state file is written again");
                }
                self.unsaved = false;
            }
            Err(e) => {
                let why = format!("cannot save the state file: {}", crate::causes::Causes(&e));
                if self
                    .state
                    .save_failing
                    .as_ref()
                    .is_none_or(|f| f.why != why)
                {
                    warn!(error = %crate::causes::Causes(&e), "cannot save the state file; trying again at every step, and running on meanwhile (a restart would start from the last file written)");
                }
                let since = self
                    .state
                    .save_failing
                    .as_ref()
                    .map_or_else(SystemTime::now, |f| f.since);
                self.state.save_failing = Some(Failing { since, why });
            }
        }
    }

    /// Attests the seats of `view` and publishes what this node may configure of it: when the view `moved`,
    /// or a verdict changed (the tasks after this one redo their work for a new view).
    async fn publish(&mut self, view: ChainView, moved: bool) {
        let attestations = self.task.attestor.pass(&view, self.follower.as_mut()).await;
        let grants = self.task.attestor.grants();
        if grants != self.state.grants {
            self.unsaved = true;
        }
        self.state.grants = grants;
        if self.task.attestor.tcb_below_changed() {
            self.unsaved = true;
        }
        if !moved
            && (Arc::ptr_eq(&attestations, &self.state.attestations)
                || attestations == self.state.attestations)
        {
            return;
        }
        log_changes(&self.state.attestations, &attestations);
        self.state.attestations = attestations;
        self.admit(view);
    }

    /// The view the mesh gets: `view` with the seats the current verdicts admit.
    fn admit(&mut self, view: ChainView) {
        self.state.view = Some(Arc::new(attestation::admitted(
            view,
            &self.state.attestations,
            &self.task.instance_id,
            self.state.view.as_deref(),
        )));
    }

    async fn start_following(&mut self) {
        if Instant::now() < self.next_connect {
            return;
        }
        let cached = self.state.view.as_deref().cloned();
        let read_whole = cached.is_none();
        let began = Instant::now();
        let started = Follower::start(
            self.task.rpcs.reader().clone(),
            self.task.contract,
            self.task.follow,
            cached,
            &self.task.anchors,
        )
        .await;
        match started {
            Ok(f) => {
                info!(
                    block = f.view().last_block,
                    peers = f.view().records.len(),
                    "following the cluster"
                );
                let view = f.view().clone();
                self.follower = Some(f);
                self.publish(view, true).await;
                self.state.from_cache = false;
                // A follower that took up the state file's view has read nothing yet: its first tick
                // confirms it.
                self.state.confirmed_at = read_whole.then_some(began);
                self.state.error = None;
                self.connect.reset();
                self.unsaved = true;
            }
            Err(e) => {
                let doing = format!(
                    "cannot follow cluster {} via {}",
                    self.task.contract, self.task.rpc
                );
                self.rpc_failed(doing, e);
                self.next_connect = Instant::now() + self.connect.next_delay();
            }
        }
    }

    async fn follow(&mut self, heads: &[Head]) {
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        let began = Instant::now();
        let ticked = f.tick_at(began, heads).await;
        self.state.poll_latency.observe(began.elapsed());
        match ticked {
            Ok(tick) => {
                if tick.confirmed {
                    self.state.confirmed_at = Some(began);
                }
                let failing = f.full_read_failing().cloned();
                let (block, hash) = (f.view().last_block, f.view().last_block_hash);
                self.state.head = block.checked_add(self.task.follow.confirmations);
                // A new view only when it moved: the tasks after this one redo their work for a new one.
                // Copied only then, since a thousand records at every block add up.
                let moved = self
                    .state
                    .view
                    .as_deref()
                    .is_none_or(|v| v.last_block != block || v.last_block_hash != hash);
                // An allowlist moved: the seats are judged again at once, on answers read anew, so that an
                // image allowed (or disallowed) takes effect at its block rather than at the next re-check.
                if tick.allowlists_changed {
                    self.task.attestor.allowlists_changed();
                    // The state file keeps the answers: this pass reads them anew.
                    self.unsaved = true;
                }
                let judged = tick.changed || self.task.attestor.due();
                let view = (judged || moved).then(|| f.view().clone());
                // The seats are judged again when the records or bindings changed, or the re-check is due:
                // a block that moved nothing else keeps the verdicts. A pass checks anew only the seats
                // whose binding or collateral changed, but it still looks at every seat.
                match view {
                    Some(view) if judged => self.publish(view, moved || tick.changed).await,
                    Some(view) => self.admit(view),
                    None => {}
                }
                if tick.full_read_error.is_some() {
                    self.state.rpc_errors = self.state.rpc_errors.saturating_add(1);
                }
                // The follower logged it; the state shows it until a full read succeeds.
                self.state.error =
                    failing.map(|e| Fault::new("following the chain", FaultError::FullRead(e)));
                self.unsaved |= tick.changed;
            }
            Err(e) => self.rpc_failed("following the chain", e),
        }
    }

    async fn find_seat(&mut self, on_head: bool) {
        let in_view = self
            .state
            .view
            .as_deref()
            .and_then(|v| seat_in(v, &self.task.instance_id));
        if let Some(token) = in_view {
            self.state.seat = SeatState::Active(token);
            self.state.seat_error = None;
            return;
        }
        let every = match on_head {
            true => SEAT_LOOKUP_ON_HEADS,
            false => SEAT_LOOKUP_EVERY,
        };
        if self
            .last_seat_lookup
            .is_some_and(|last| last.elapsed() < every)
        {
            return;
        }
        self.last_seat_lookup = Some(Instant::now());
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        let looked_up = f.seat_of(&self.task.instance_id).await;
        let before = self.state.seat;
        match looked_up {
            Ok(Seat::Active(token)) => {
                self.state.seat = SeatState::Active(token);
                self.state.seat_error = None;
            }
            Ok(Seat::Inactive(token)) => {
                self.state.seat = SeatState::Inactive(token);
                if let SeatState::Active(t) = before {
                    warn!(
                        token = t,
                        "this node's seat is deactivated: leaving the mesh"
                    );
                }
                self.report_seat(SeatProblem::Inactive { token });
            }
            Ok(Seat::None) => {
                self.state.seat = SeatState::None;
                if let SeatState::Active(t) = before {
                    warn!(token = t, "this node's seat is gone: leaving the mesh");
                }
                self.report_seat(SeatProblem::NotBound {
                    contract: self.task.contract,
                    instance_id: self.task.instance_id.clone(),
                });
            }
            Err(e) => self.rpc_failed("looking up this node's seat", e),
        }
    }

    /// Logged once per problem: the seat is looked up again every few seconds.
    fn report_seat(&mut self, problem: SeatProblem) {
        if self.state.seat_error.as_ref() != Some(&problem) {
            warn!("{problem}");
        }
        self.state.seat_error = Some(problem);
    }
}

/// Logs each seat whose attestation changed: a refusal as a warning, with its reason. The field is `seat`,
/// not `token`: `token` is the node span's own seat, which log readers look for.
fn log_changes(before: &Attestations, now: &Attestations) {
    for (token, a) in now {
        let was = before.get(token).map(AsRef::as_ref);
        match a.as_ref() {
            Attested::Refused { kind, reason } => {
                if was != Some(a.as_ref()) {
                    warn!(
                        seat = token,
                        kind,
                        reason,
                        "refused this seat's attestation: its record is not configured"
                    );
                }
            }
            Attested::Verified(v) => {
                if !was.is_some_and(Attested::is_verified) {
                    info!(seat = token, tcb_status = %v.tcb_status, compose_hash = %alloy::hex::encode(v.compose_hash), "seat attested");
                }
            }
            Attested::BelowPolicy { verdict, standing } => {
                let same_stage = matches!(was, Some(Attested::BelowPolicy { standing: s, .. }) if s.stage == standing.stage);
                if !same_stage {
                    warn!(
                        seat = token,
                        event = "tcb.stage",
                        stage = standing.stage.as_str(),
                        tcb_status = %verdict.tcb_status,
                        since = standing.since,
                        until = standing.until,
                        shortfall = %standing.shortfall,
                        "this seat's platform is below the cluster's TCB policy"
                    );
                }
            }
        }
    }
}
