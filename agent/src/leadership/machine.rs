//! This node's part in the cluster's leadership as a sans-IO machine, after boringtun's `Tunn`: what it
//! knows comes in through `handle_*(now, …)`, what it wants done goes out through `poll_*`, and it never
//! reads a clock, a socket or the chain itself. The leader task ([`crate::tasks::leader`]) drives it; the
//! tests drive several of them on a virtual clock over an in-memory network and chain ([`super::sim`]).
//!
//! - **Heartbeats** ([`super::heartbeat`]) go out at every [`Machine::handle_tick`]: the seat named leader
//!   pings every other registered seat, the others ping the leader and their vote's target, and every ping
//!   is answered.
//! - **The lease** ([`super::lease`]): whether this node leads is worked out again after every input.
//! - **Ballots** ([`super::election`] decides): at most one chain job at a time (connect, read the vote,
//!   cast), and at most one ballot per `--leader-timeout` whatever the decision says: a safety net against a
//!   loop, whose holds are counted.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use backoff::Backoff;
use mesh_api::{AppReport, BallotOutcome, CheckSignal, HealthSignal};
use mesh_chain::election::{Ballot, Cast, ElectionError};
use mesh_chain::error::ChainError;
use tracing::{Level, debug, info, warn};

mod beats;
mod handoff;

pub use handoff::{HandOffCause, HandOffRefused};

use super::election::{self, Sighting};
use super::heartbeat::{self, Heartbeat, Kind, Promise, View};
use super::lease::{self, Claim, Timing};
use super::state::{BallotLog, LeaderState};
use crate::state::Fault;

/// After a ballot that was mined, how long an election is not called again while the view catches up.
const AFTER_ELECTING: Duration = Duration::from_secs(10);

/// A watched seat that has not answered for this many heartbeats is shown unreachable.
const UNREACHABLE_AFTER: u32 = 3;

/// What the machine knows of the chain: the chain task's state, as leadership needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// This node's seat, while the view holds its record.
    pub own: Option<u64>,
    /// Why this node's own evidence is refused (the refusal's kind), as its peers judge it.
    pub own_refused: Option<String>,
    /// The seat the contract names leader, and the term.
    pub leader: Option<u64>,
    pub term: u64,
    /// The seats with a record, in order: those this node accepts, and its own.
    pub registered: Vec<u64>,
    /// The seats with a record whose evidence this node refuses.
    pub refused: Vec<u64>,
    /// The overlay address of each registered seat, this node's own included.
    pub addresses: BTreeMap<u64, Ipv4Addr>,
    /// When the last read that confirmed the view began; none while it is only the state file's.
    pub confirmed_at: Option<Instant>,
    /// The view came from the state file: the RPC has not answered since start.
    pub from_cache: bool,
    /// The last block the view has read.
    pub block: u64,
    /// The seats marked draining on-chain.
    pub draining: Vec<u64>,
}

impl Chain {
    fn view(&self) -> View {
        View {
            leader: self.leader,
            term: self.term,
        }
    }

    /// When the view was confirmed by a read, not only by the state file.
    fn confirmed(&self) -> Option<Instant> {
        self.confirmed_at.filter(|_| !self.from_cache)
    }
}

/// A datagram for the heartbeat socket to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub bytes: [u8; heartbeat::LEN],
}

/// Work on the chain, which the driver does beside the machine and reports with [`Machine::handle_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Connect the election client.
    Connect,
    /// Read this seat's vote.
    ReadVote { seat: u64 },
    /// Send this seat's ballot.
    Cast { seat: u64, ballot: Ballot },
    /// Hand this seat's term to seat `to`.
    HandOff { seat: u64, to: u64 },
}

/// How a [`Job`] ended.
#[derive(Debug)]
pub enum JobDone {
    Connected(Result<(), ChainError>),
    VoteRead(Result<Option<u64>, ChainError>),
    Cast(Ballot, Result<Cast, ElectionError>),
    HandedOff(u64, Result<Cast, ElectionError>),
    /// The job ended without an answer (it panicked, or was cancelled).
    Lost,
}

/// The heartbeat socket the machine wants: bound to this node's overlay address on the mesh interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketWant {
    pub addr: Ipv4Addr,
    pub ifname: String,
}

/// What the machine is set up with.
#[derive(Debug, Clone)]
pub struct Config {
    pub timing: Timing,
    /// Heartbeats over the mesh: off in TLS mode, where there is no mesh.
    pub heartbeats: bool,
    /// Votes and elections: off in TLS mode and with `--no-failover`.
    pub ballots: bool,
}

/// How far this node's election client has got: a ballot is decided only on the vote read since it last
/// connected, and since the last ballot that failed or lost a race (what the chain holds may differ from
/// what was believed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not connected to the election contract: connect first.
    Disconnected,
    /// Connected; this seat's vote is to be read.
    Connected,
    /// Connected, and the vote read: ballots may be decided.
    VoteKnown,
}

impl Phase {
    /// The vote read may no longer be what the chain holds: read it again before the next ballot.
    fn forget_vote(&mut self) {
        if *self == Self::VoteKnown {
            *self = Self::Connected;
        }
    }
}

/// This node's part in the cluster's leadership.
pub struct Machine {
    config: Config,
    state: LeaderState,
    chain: Chain,
    app: Option<AppReport>,
    check: Option<CheckSignal>,
    /// The mesh interface's name, while there is one.
    device: Option<String>,
    /// Since when the heartbeat socket has been bound where [`Machine::wanted_socket`] says.
    hearing: Option<Instant>,
    phase: Phase,
    /// A chain job is under way.
    job_running: bool,
    sightings: BTreeMap<u64, Sighting>,
    /// When each watched seat last answered a ping of this node's (any answer), and since when it has been
    /// pinged: what `reachable` shows.
    last_pong: BTreeMap<u64, Instant>,
    pinged_since: BTreeMap<u64, Instant>,
    leaderless_since: Option<Instant>,
    /// No ballot before this: a backoff after failures, or a pause after an election.
    quiet_until: Option<Instant>,
    backoff: Backoff,
    /// The ballot being cast, while one is.
    casting: Option<Ballot>,
    /// The block this node's last ballot was mined in: no ballot is decided on a view older than that,
    /// which cannot show what the ballot did.
    ballot_block: Option<u64>,
    /// When the last ballot was sent, for the one-per-timeout bound, and the ballot that bound holds back.
    last_ballot: Option<Instant>,
    held: Option<Ballot>,
    /// When a ballot was last held back: a second within [`election::FLAPPING_HOLDS`] timeouts is warned about.
    last_hold: Option<Instant>,
    /// Pings sent within the lease: nonce → (to whom, when).
    sent: BTreeMap<u32, (u64, Instant)>,
    next_nonce: u32,
    /// What the confirmations below are for: they count only under the view they were given in.
    view: View,
    /// Seats that confirmed this node as leader: when the ping they answered so was sent.
    support: BTreeMap<u64, Instant>,
    /// The leader this node last confirmed, and until when that binds it ([`heartbeat::Promise`]).
    promise: Promise,
    /// The hand-off under way, and the last term this node released (it never leads under it again).
    handoff: Option<handoff::HandOff>,
    released: Option<u64>,
    /// A term this node lost without releasing it, to say farewell for at the next heartbeat.
    farewell_due: Option<u64>,
    /// This node was asked to drain (SIGTERM, the API), and to stop (SIGTERM).
    drain_asked: bool,
    stopping: bool,
    /// When a drain last tried to hand off, and under which term.
    drain_tried: Option<(u64, Instant)>,
    /// The last term whose hand-off no seat would take.
    gave_up: Option<u64>,
    /// When each seat last said it was draining.
    heard_draining: BTreeMap<u64, Instant>,
    /// Whether each seat's last heartbeat said it was fit.
    fit_heard: BTreeMap<u64, bool>,
    /// Seats to ping now rather than at the next heartbeat: the view changed, a leader began to lead.
    ping_now: Vec<u64>,
    transmits: VecDeque<Transmit>,
    jobs: VecDeque<Job>,
    /// Failures to log: the driver renders them, since only it knows the RPC's credentials to scrub.
    faults: VecDeque<(Level, Fault)>,
}

impl Machine {
    /// A machine that starts at `now`, its nonces from `seed` (answers to an earlier run's pings must not
    /// match this run's). It confirms nothing, and claims nothing, for a lease: it may have confirmed another
    /// leader just before it started.
    pub fn new(config: Config, now: Instant, seed: u32) -> Self {
        Self {
            state: LeaderState::default(),
            chain: Chain::default(),
            app: None,
            check: None,
            device: None,
            hearing: None,
            phase: Phase::Disconnected,
            job_running: false,
            sightings: BTreeMap::new(),
            last_pong: BTreeMap::new(),
            pinged_since: BTreeMap::new(),
            leaderless_since: None,
            quiet_until: None,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(60)),
            casting: None,
            ballot_block: None,
            last_ballot: None,
            held: None,
            last_hold: None,
            sent: BTreeMap::new(),
            next_nonce: seed,
            view: View {
                leader: None,
                term: 0,
            },
            support: BTreeMap::new(),
            promise: Promise {
                seat: 0,
                term: 0,
                until: now + config.timing.lease,
            },
            handoff: None,
            released: None,
            farewell_due: None,
            drain_asked: false,
            stopping: false,
            drain_tried: None,
            gave_up: None,
            heard_draining: BTreeMap::new(),
            fit_heard: BTreeMap::new(),
            ping_now: Vec::new(),
            config,
            transmits: VecDeque::new(),
            jobs: VecDeque::new(),
            faults: VecDeque::new(),
        }
    }

    /// What the leader task publishes.
    pub fn state(&self) -> &LeaderState {
        &self.state
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next chain job to start.
    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// The next failure to log, and how loudly.
    pub fn poll_fault(&mut self) -> Option<(Level, Fault)> {
        self.faults.pop_front()
    }

    /// Where the heartbeat socket should be bound now, if anywhere.
    pub fn wanted_socket(&self) -> Option<SocketWant> {
        if !self.config.heartbeats {
            return None;
        }
        let own = self.chain.own?;
        Some(SocketWant {
            addr: *self.chain.addresses.get(&own)?,
            ifname: self.device.clone()?,
        })
    }

    /// When the verdict may change by itself: the claim or the view's confirmation runs out, the
    /// application's health report lapses, or this node's promise ends. The driver calls
    /// [`Machine::handle_timeout`] then (heartbeats come from [`Machine::handle_tick`] besides).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        [
            self.state.claim.until(),
            self.chain
                .confirmed_at
                .map(|t| t + self.config.timing.lease),
            self.app.as_ref().and_then(|r| r.expires_at),
            Some(self.promise.until),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    }

    /// A new state of the chain task: a new view, or the same one confirmed.
    pub fn handle_chain(&mut self, now: Instant, chain: Chain) {
        self.chain = chain;
        self.settle(now, true);
    }

    /// The mesh interface, by name, or none.
    pub fn handle_device(&mut self, now: Instant, ifname: Option<String>) {
        self.device = ifname;
        self.settle(now, false);
    }

    /// Whether the heartbeat socket is bound as [`Machine::wanted_socket`] says.
    pub fn handle_socket(&mut self, now: Instant, bound: bool) {
        self.hearing = bound.then(|| self.hearing.unwrap_or(now));
        self.settle(now, false);
    }

    /// The application's last health report, and the agent's own check.
    pub fn handle_health(
        &mut self,
        now: Instant,
        app: Option<AppReport>,
        check: Option<CheckSignal>,
    ) {
        self.app = app;
        self.check = check;
        self.settle(now, false);
    }

    /// A deadline from [`Machine::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle(now, false);
    }

    /// One heartbeat: pings out, stale bookkeeping dropped, and this node's ballot decided.
    pub fn handle_tick(&mut self, now: Instant) {
        self.follow_view(now);
        if let (Some(term), Some(own)) = (self.farewell_due.take(), self.own()) {
            self.farewell_for(own, term, now);
        }
        let registered = self.chain.registered.clone();
        let lease = self.config.timing.lease;
        self.sent
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < lease);
        self.support.retain(|seat, _| registered.contains(seat));
        let own = self.own();
        let watched = election::silence_counted(
            own,
            self.hearing.is_some(),
            self.view.leader,
            self.state.vote,
        );
        self.sightings.retain(|seat, _| watched.contains(seat));
        // A tunnel that has only just come up may not reach anyone yet (UDP blocked, the relay still to
        // come): silence before its first path could form says nothing about the seat.
        let first_path = self
            .hearing
            .map_or(now, |t| t + mesh_wg::FIRST_PATH_WITHIN)
            .max(now);
        for seat in &watched {
            self.sightings
                .entry(*seat)
                .or_insert_with(|| Sighting::new(first_path));
        }
        if let Some(own) = own {
            let targets = self.targets(own);
            self.pinged_since.retain(|s, _| targets.contains(s));
            self.last_pong.retain(|s, _| targets.contains(s));
            for seat in &targets {
                self.pinged_since.entry(*seat).or_insert(now);
            }
            if self.config.heartbeats && self.hearing.is_some() {
                self.ping(own, &targets, now);
            }
        } else {
            self.pinged_since.clear();
            self.last_pong.clear();
        }
        self.settle(now, true);
    }

    /// A datagram on the heartbeat socket: answered if a ping, taken in if a pong.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) {
        if self.chain.registered.is_empty() {
            // No view of the chain yet: nothing to judge a heartbeat by.
            return;
        }
        self.follow_view(now);
        let hb = match Heartbeat::decode(bytes) {
            Ok(hb) => hb,
            Err(why) => {
                self.refuse(from, &format!("malformed: {why}"));
                return self.settle(now, false);
            }
        };
        let expected = self
            .chain
            .addresses
            .get(&hb.seat)
            .filter(|_| self.chain.registered.contains(&hb.seat));
        if expected.map(|ip| std::net::IpAddr::V4(*ip)) != Some(from.ip()) {
            self.refuse(
                from,
                &format!(
                    "it names seat {}, whose overlay address it does not come from",
                    hb.seat
                ),
            );
            return self.settle(now, false);
        }
        if heartbeat::answers(&hb, self.view)
            && let Some(s) = self.sightings.get_mut(&hb.seat)
        {
            s.seen(now);
        }
        if heartbeat::disowns(&hb, self.view) {
            // The leader says it does not lead now: nothing this node heard before says it does.
            self.state.leader_confirmed_at = None;
        }
        if self.promise.released_by(&hb) {
            debug!(
                seat = hb.seat,
                term = hb.term,
                "the leader this node promised released its term"
            );
            self.promise.until = self.promise.until.min(now);
        }
        self.heard_drain(hb.seat, hb.draining, now);
        self.fit_heard.insert(hb.seat, hb.fit);
        self.catch_up(&hb);
        match hb.kind {
            Kind::Ping => self.answer(&hb, from, now),
            Kind::Pong => self.take_pong(&hb, now),
        }
        self.settle(now, false);
    }

    /// A chain job ended.
    pub fn handle_job(&mut self, now: Instant, done: JobDone) {
        self.job_running = false;
        match done {
            JobDone::Connected(Ok(())) => self.phase = Phase::Connected,
            JobDone::Connected(Err(e)) => self.failed(now, "connecting the election client", e),
            JobDone::VoteRead(Ok(vote)) => {
                self.state.vote = vote;
                self.phase = Phase::VoteKnown;
            }
            JobDone::VoteRead(Err(e)) => self.failed(now, "reading this seat's vote", e),
            JobDone::Cast(ballot, result) => {
                self.casting = None;
                self.cast_done(now, ballot, result);
            }
            JobDone::HandedOff(to, result) => self.handoff_sent(now, to, result),
            JobDone::Lost => {
                warn!("a leader job ended abnormally");
                self.casting = None;
                self.phase.forget_vote();
            }
        }
        self.settle(now, true);
    }

    /// This node's seat, while it has a record.
    fn own(&self) -> Option<u64> {
        self.chain.own
    }

    fn health(&self, now: Instant) -> HealthSignal {
        HealthSignal::of(self.app.as_ref(), self.check.as_ref(), now)
    }

    /// After any input: the view followed, the ballot decided (`ballots`: on the inputs that bring news to
    /// decide on), and the claim worked out.
    fn settle(&mut self, now: Instant, ballots: bool) {
        self.follow_view(now);
        if ballots {
            self.decide_ballot(now);
        }
        let was_leading = matches!(self.state.claim, Claim::Leads { .. });
        self.decide_claim(now);
        if let Some(own) = self.own() {
            if !was_leading && matches!(self.state.claim, Claim::Leads { .. }) {
                // The followers learn it leads now, not at the next heartbeat.
                self.ping_now = self.others(own);
            }
            let now_due = std::mem::take(&mut self.ping_now);
            if !now_due.is_empty() && self.config.heartbeats && self.hearing.is_some() {
                self.ping(own, &now_due, now);
            }
        }
        if self.drain_handoff(now).is_none() {
            self.drive_handoff(now);
        }
        self.state.draining = self.draining();
        self.state.draining_peers = self.draining_peers(now);
    }

    /// The facts the lease is decided on.
    fn lease_facts<'a>(&'a self, health: &'a HealthSignal, now: Instant) -> lease::Facts<'a> {
        lease::Facts {
            own: self.own(),
            leader: self.chain.leader,
            registered: &self.chain.registered,
            confirmed_at: self.chain.confirmed(),
            unhealthy: (!health.healthy).then(|| health.reasons.first().map_or("", String::as_str)),
            refused: self.chain.own_refused.as_deref(),
            promised_until: Some(self.promise.until),
            health_lapses_at: HealthSignal::lapses_at(self.app.as_ref(), now),
            released: self.released_now(),
            support: &self.support,
            timing: self.config.timing,
            now,
        }
    }

    /// Works out whether this node leads now, logging a change.
    fn decide_claim(&mut self, now: Instant) {
        let health = self.health(now);
        let claim = lease::claim(&self.lease_facts(&health, now));
        let was = &self.state.claim;
        match (was, &claim) {
            (Claim::Leads { .. }, Claim::Leads { .. }) => {}
            (_, Claim::Leads { .. }) => info!(
                seat = ?self.own(),
                term = self.view.term,
                "this node leads, under its lease"
            ),
            (Claim::Leads { .. }, Claim::Declines(why)) => {
                self.state.counters.stepdowns = self.state.counters.stepdowns.saturating_add(1);
                let view_age = self
                    .chain
                    .confirmed_at
                    .map(|t| now.saturating_duration_since(t));
                // Info, not a warning: what caused it (the RPC down, the health check failing, the mesh
                // cut) is warned of where it is seen; this is the cluster doing the right thing about it.
                info!(reason = %why, ?view_age, "this node stops reporting itself leader");
            }
            (Claim::Leads { .. }, Claim::NotNamed) => info!(
                leader = ?self.view.leader,
                term = self.view.term,
                "this node no longer leads: the contract names another"
            ),
            (_, Claim::Declines(why)) if !matches!(was, Claim::Declines(_)) => {
                info!(reason = %why, "the contract names this node leader, but it does not lead yet");
            }
            _ => {}
        }
        self.state.claim = claim;
        self.state.health = health;
        // Answered lately; or not, once asked for long enough; unknown before that.
        let window = self.config.timing.heartbeat * UNREACHABLE_AFTER;
        self.state.answering = self
            .pinged_since
            .iter()
            .filter_map(|(seat, since)| {
                let answered = self
                    .last_pong
                    .get(seat)
                    .is_some_and(|t| now.saturating_duration_since(*t) < window);
                let asked_long_enough = now.saturating_duration_since(*since) >= window;
                (answered || asked_long_enough).then_some((*seat, answered))
            })
            .collect();
    }

    /// Confirmations count only under the view they were given in: a new leader or term starts afresh.
    fn follow_view(&mut self, now: Instant) {
        let view = self.chain.view();
        if view == self.view {
            return;
        }
        debug!(?view, was = ?self.view, "the leader or its term changed");
        let was = self.view;
        self.view = view;
        self.support.clear();
        self.state.leader_confirmed_at = None;
        self.handoff_view_changed(now, was);
        if let Some(own) = self.own() {
            // A new leader claims, and its followers confirm it, without waiting for the next heartbeat.
            self.ping_now = self.targets(own);
        }
        match view.leader {
            Some(_) => self.leaderless_since = None,
            None => {
                self.leaderless_since.get_or_insert(now);
            }
        }
    }

    /// Decides this node's ballot, and asks for the chain work it needs.
    fn decide_ballot(&mut self, now: Instant) {
        let Some(own) = self.own() else { return };
        if !self.config.ballots || self.chain.from_cache || self.job_running {
            return;
        }
        let quiet = self.quiet_until.is_some_and(|t| now < t);
        let needed = match self.phase {
            Phase::Disconnected => Some(Job::Connect),
            Phase::Connected => Some(Job::ReadVote { seat: own }),
            Phase::VoteKnown => None,
        };
        if let Some(job) = needed {
            if !quiet {
                self.start(job);
            }
            return;
        }
        if self.ballot_block.is_some_and(|b| self.chain.block < b) {
            return;
        }
        let attested: Vec<u64> = self
            .chain
            .registered
            .iter()
            .copied()
            .filter(|s| !(*s == own && self.chain.own_refused.is_some()))
            .collect();
        let facts = election::Facts {
            own: Some(own),
            own_attested: self.chain.own_refused.is_none(),
            leader: self.view.leader,
            leaderless_since: self.leaderless_since,
            attested: &attested,
            refused: &self.chain.refused,
            vote: self.state.vote,
            sightings: &self.sightings,
            healthy: self.health(now).healthy,
            timeout: self.config.timing.timeout,
            now,
        };
        let Some((ballot, reason)) = election::decide(&facts) else {
            self.held = None;
            return;
        };
        if quiet {
            debug!(%ballot, %reason, "a ballot is due, but waiting out the pause after the last one");
            return;
        }
        let bound = self.config.timing.timeout;
        // Whatever the decision says, at most one ballot per timeout: a loop of them (each mined, each
        // costing gas) is a bug, and this bounds it.
        if let Some(last) = self
            .last_ballot
            .filter(|t| now.saturating_duration_since(*t) < bound)
        {
            if self.held != Some(ballot) {
                self.held = Some(ballot);
                let c = &mut self.state.counters;
                c.ballots_held = c.ballots_held.saturating_add(1);
                let last_ago = now.saturating_duration_since(last);
                if election::flapping(self.last_hold, now, bound) {
                    warn!(%ballot, %reason, ?last_ago, held = c.ballots_held, "a ballot is due, but this node sent one less than a leader timeout ago, and held one back lately too: held back (one per timeout at most; a node that keeps holding ballots back has a bug)");
                } else {
                    info!(%ballot, %reason, ?last_ago, "a ballot is due, but this node sent one less than a leader timeout ago: held back (one per timeout at most)");
                }
                self.last_hold = Some(now);
            }
            return;
        }
        self.held = None;
        info!(seat = own, %ballot, %reason, "casting a ballot");
        self.state.last_ballot = Some(BallotLog {
            ballot,
            withdrawn: self.state.vote.filter(|_| ballot == Ballot::Withdraw),
            reason: reason.to_string(),
            sent: now,
            outcome: BallotOutcome::Pending,
            error: None,
        });
        self.casting = Some(ballot);
        self.last_ballot = Some(now);
        self.start(Job::Cast { seat: own, ballot });
    }

    fn start(&mut self, job: Job) {
        self.job_running = true;
        self.jobs.push_back(job);
    }

    fn cast_done(&mut self, now: Instant, ballot: Ballot, result: Result<Cast, ElectionError>) {
        if let Some(sent) = self.last_ballot {
            let took = now.saturating_duration_since(sent);
            self.state.counters.ballots.observe(took);
        }
        match result {
            Ok(cast) => {
                // Cluster::cast logged it, with the transaction and the sender.
                self.ballot_came_to(BallotOutcome::Mined, None);
                self.ballot_block = Some(cast.block);
                self.backoff.reset();
                self.state.error = None;
                let counters = &mut self.state.counters;
                match ballot {
                    Ballot::Elect => {
                        counters.elections = counters.elections.saturating_add(1);
                        self.quiet_until = Some(now + AFTER_ELECTING);
                    }
                    Ballot::Vote { target } => {
                        counters.votes_cast = counters.votes_cast.saturating_add(1);
                        self.state.vote = Some(target);
                        self.quiet_until = None;
                    }
                    Ballot::Withdraw => {
                        counters.votes_withdrawn = counters.votes_withdrawn.saturating_add(1);
                        self.state.vote = None;
                        self.quiet_until = None;
                    }
                }
            }
            Err(ElectionError::Chain(ChainError::Reverted(revert)))
                if ballot == Ballot::Elect && revert.name == "LeaderAlreadyElected" =>
            {
                // Another node's election landed first: the question is settled, nothing failed. As after
                // an election of its own, the view is given time to show the leader: read before that,
                // it still shows none, and the same ballot would be due again at once.
                self.phase.forget_vote();
                self.quiet_until = Some(now + AFTER_ELECTING);
                self.ballot_came_to(BallotOutcome::Preempted, None);
                info!("another node elected a leader first: {revert}");
            }
            Err(e) => {
                // What the chain holds may differ from what was believed (another node elected first, the
                // vote went with a cleared record): read it again before the next ballot.
                self.phase.forget_vote();
                let delay = self.backoff.next_delay();
                self.quiet_until = Some(now + delay);
                self.state.counters.failures = self.state.counters.failures.saturating_add(1);
                let fault = Fault::new(
                    format!(
                        "{ballot} failed; deciding again in {:.1} s",
                        delay.as_secs_f64()
                    ),
                    e,
                );
                self.faults.push_back((Level::WARN, fault.clone()));
                self.ballot_came_to(BallotOutcome::Failed, Some(fault.clone()));
                self.state.error = Some(fault);
            }
        }
    }

    fn ballot_came_to(&mut self, outcome: BallotOutcome, error: Option<Fault>) {
        if let Some(log) = &mut self.state.last_ballot {
            log.outcome = outcome;
            log.error = error;
        }
    }

    /// A read failed: shown in the state and logged at debug level only, since the chain task already
    /// warns when the RPC is down; a ballot's failure is what this machine warns of.
    fn failed(&mut self, now: Instant, doing: &'static str, e: ChainError) {
        self.phase = Phase::Disconnected;
        let delay = self.backoff.next_delay();
        self.quiet_until = Some(now + delay);
        let fault = Fault::new(doing, e);
        self.faults.push_back((Level::DEBUG, fault.clone()));
        self.state.error = Some(fault);
    }
}
