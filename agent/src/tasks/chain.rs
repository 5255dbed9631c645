//! The chain task: follows the cluster contract (or, until the RPC answers, serves the cached view), finds
//! this node's seat, keeps the state file, and publishes [`ChainState`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::providers::{Provider as _, ProviderBuilder};
use alloy::transports::http::reqwest::Url;
use mesh_chain::backoff::Backoff;
use mesh_chain::follow::{Anchors, FollowConfig, Follower};
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::RegistrationError;
use mesh_chain::view::{ChainView, Seat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache;
use crate::state::{ChainState, SeatState};

/// How often an instance without a seat in the view asks the contract for one.
const SEAT_LOOKUP_EVERY: Duration = Duration::from_secs(5);

/// What the chain task needs to know.
pub struct ChainTask {
    pub contract: Address,
    pub rpc_url: Url,
    pub rpc: RedactedUrl,
    pub follow: FollowConfig,
    pub anchors: Anchors,
    pub poll: Duration,
    pub state_dir: PathBuf,
    pub instance_id: String,
    /// The daemon's root span: the seat is recorded on it as soon as it is known, so every log line after
    /// that (the registrar's included) carries it.
    pub node_span: tracing::Span,
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
    next_seat_lookup: Instant,
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
        let mut state = ChainState {
            from_cache: cached.is_some(),
            ..ChainState::default()
        };
        if let Some(view) = cached {
            if let Some(token) = seat_in(&view, &self.instance_id) {
                state.seat = SeatState::Active(token);
            }
            info!("serving the chain view from the state file until the RPC answers");
            state.view = Some(Arc::new(view));
        }
        let mut recorded = None;
        record_seat(&self.node_span, &mut recorded, state.seat.token());
        out.send_replace(state.clone());
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running = Running {
            state,
            follower: None,
            connect: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            next_connect: Instant::now(),
            next_seat_lookup: Instant::now(),
            task: self,
        };
        loop {
            if cancel.run_until_cancelled(tick.tick()).await.is_none() {
                return Ok(());
            }
            if cancel.run_until_cancelled(running.step()).await.is_none() {
                return Ok(());
            }
            let seat = running.state.seat.token();
            record_seat(&running.task.node_span, &mut recorded, seat);
            out.send_replace(running.state.clone());
        }
    }
}

impl Running {
    async fn step(&mut self) {
        match self.follower.is_some() {
            true => self.follow().await,
            false => self.start_following().await,
        }
        self.count();
        self.find_seat().await;
    }

    fn report(&mut self, what: &str, e: impl std::fmt::Display) {
        super::report(&mut self.state.error, &self.task.rpc, what, e);
    }

    fn rpc_failed(&mut self, what: &str, e: impl std::fmt::Display) {
        self.state.rpc_errors = self.state.rpc_errors.saturating_add(1);
        self.report(what, e);
    }

    fn count(&mut self) {
        if let Some(f) = &self.follower {
            self.state.requests = f.requests;
            self.state.head_polls = f.head_polls;
            self.state.rejected = f.rejected;
        }
    }

    fn save(&self) {
        if let Some(v) = &self.state.view
            && let Err(e) = cache::save(&self.task.state_dir, v)
        {
            warn!(error = %e, "cannot save the state file");
        }
    }

    async fn start_following(&mut self) {
        if Instant::now() < self.next_connect {
            return;
        }
        let provider = ProviderBuilder::new()
            .connect_http(self.task.rpc_url.clone())
            .erased();
        let cached = self.state.view.as_deref().cloned();
        let started = Follower::start(
            provider,
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
                self.state.view = Some(Arc::new(f.view().clone()));
                self.state.from_cache = false;
                self.state.error = None;
                self.follower = Some(f);
                self.connect.reset();
                self.save();
            }
            Err(e) => {
                let what = format!(
                    "cannot follow cluster {} via {}",
                    self.task.contract, self.task.rpc
                );
                self.rpc_failed(&what, e);
                self.next_connect = Instant::now() + self.connect.next_delay();
            }
        }
    }

    async fn follow(&mut self) {
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        match f.tick(Instant::now()).await {
            Ok(tick) => {
                let view = f.view();
                let failing = f.full_read_failing().map(str::to_owned);
                self.state.head = view.last_block.checked_add(self.task.follow.confirmations);
                // A new view only when it moved: the tasks after this one redo their work for a new one.
                let moved = self.state.view.as_deref().is_none_or(|v| {
                    v.last_block != view.last_block || v.last_block_hash != view.last_block_hash
                });
                if moved || tick.changed {
                    self.state.view = Some(Arc::new(view.clone()));
                }
                if tick.full_read_error.is_some() {
                    self.state.rpc_errors = self.state.rpc_errors.saturating_add(1);
                }
                // The follower logged it; the state shows it until a full read succeeds.
                self.state.error = failing.map(|e| {
                    self.task.rpc.scrub(&format!(
                        "the full read failed ({e}); following events meanwhile"
                    ))
                });
                if tick.changed {
                    self.save();
                }
            }
            Err(e) => self.rpc_failed("following the chain", e),
        }
    }

    async fn find_seat(&mut self) {
        let in_view = self
            .state
            .view
            .as_deref()
            .and_then(|v| seat_in(v, &self.task.instance_id));
        if let Some(token) = in_view {
            self.state.seat = SeatState::Active(token);
            return;
        }
        if Instant::now() < self.next_seat_lookup {
            return;
        }
        self.next_seat_lookup = Instant::now() + SEAT_LOOKUP_EVERY;
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        let looked_up = f.seat_of(&self.task.instance_id).await;
        let before = self.state.seat;
        match looked_up {
            Ok(Seat::Active(token)) => self.state.seat = SeatState::Active(token),
            Ok(Seat::Inactive(token)) => {
                self.state.seat = SeatState::Inactive(token);
                if let SeatState::Active(t) = before {
                    warn!(
                        token = t,
                        "this node's seat is deactivated: leaving the mesh"
                    );
                }
                let text = format!(
                    "seat {token} of this instance is deactivated: it has no record until its holder runs `meshctl activate --token {token}`"
                );
                self.report_seat(text);
            }
            Ok(Seat::None) => {
                self.state.seat = SeatState::None;
                if let SeatState::Active(t) = before {
                    warn!(token = t, "this node's seat is gone: leaving the mesh");
                }
                let text = RegistrationError::NoSeat {
                    contract: self.task.contract,
                    instance_id: self.task.instance_id.clone(),
                }
                .to_string();
                self.report_seat(text);
            }
            Err(e) => self.rpc_failed("looking up this node's seat", e),
        }
    }

    fn report_seat(&mut self, text: String) {
        super::show_error(&mut self.state.error, text);
    }
}
