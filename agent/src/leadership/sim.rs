//! Several leadership machines on a virtual clock, over an in-memory network that delays, drops, freezes
//! and partitions, and an in-memory election contract that mines ballots in blocks: the leader task's
//! properties tested with no socket, no chain and no waiting.
//!
//! Time moves in steps of [`STEP`]. At each, every node that is not frozen takes, in order, the datagrams
//! and job results due to it, a read of the chain when one is due, its heartbeat when due, and its
//! deadline; what it sends goes into the network, what it asks of the chain into the contract's pending
//! transactions, mined at the next block. What each node claims is recorded as intervals, which must never
//! overlap across nodes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mesh_api::AppReport;
use mesh_chain::election::{Ballot, Cast, ElectionError};
use mesh_chain::error::{ChainError, Revert};
use mesh_chain::redact::RedactedUrl;
use proptest::prelude::*;

use super::heartbeat;
use super::lease::{Claim, Timing};
use super::machine::{Chain, Config, Job, JobDone, Machine};

const STEP: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_secs(5);
const BLOCK: Duration = Duration::from_secs(1);
const RPC_LATENCY: Duration = Duration::from_millis(20);
/// The kind of refusal a disallowed image gets.
const REFUSED: &str = "os-not-allowed";

fn timing() -> Timing {
    Timing::for_timeout(TIMEOUT)
}

fn overlay(seat: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, u8::try_from(seat).expect("a small seat"))
}

fn seat_of(addr: SocketAddr) -> Option<u64> {
    match addr {
        SocketAddr::V4(a) if a.ip().octets()[..3] == [10, 0, 1] => {
            Some(u64::from(a.ip().octets()[3]))
        }
        _ => None,
    }
}

/// The election contract, as `DstackClusterElection.sol` has it: one vote per seat, f+1 of the n active
/// seats replace the leader by the lowest active seat under the threshold, and every change of leader is a
/// new term.
#[derive(Debug, Default)]
struct Contract {
    active: BTreeSet<u64>,
    leader: Option<u64>,
    term: u64,
    vote_of: BTreeMap<u64, u64>,
    /// Seats every agent refuses: their image was disallowed.
    refused: BTreeSet<u64>,
    /// Ballots mined, with who sent them and when.
    mined: Vec<(Instant, u64, Ballot)>,
}

fn revert(name: &str) -> ElectionError {
    ElectionError::Chain(ChainError::Reverted(Revert {
        name: name.into(),
        message: name.into(),
        hint: None,
    }))
}

impl Contract {
    fn threshold(&self) -> usize {
        (self.active.len().max(1) - 1) / 2 + 1
    }

    fn votes_against(&self, seat: u64) -> usize {
        self.vote_of.values().filter(|t| **t == seat).count()
    }

    fn lowest_eligible(&self) -> Option<u64> {
        self.active
            .iter()
            .copied()
            .find(|s| self.votes_against(*s) < self.threshold())
    }

    fn set_leader(&mut self, next: Option<u64>) {
        self.leader = next;
        self.term += 1;
    }

    fn check_leader(&mut self) {
        if let Some(l) = self.leader
            && self.votes_against(l) >= self.threshold()
        {
            let next = self.lowest_eligible();
            self.set_leader(next);
        }
    }

    /// Applies a ballot; a revert is named as the contract names it.
    fn apply(&mut self, voter: u64, ballot: Ballot) -> Result<(), &'static str> {
        match ballot {
            Ballot::Elect => {
                if self.leader.is_some() {
                    return Err("LeaderAlreadyElected");
                }
                let next = self.lowest_eligible().ok_or("LeaderNoEligibleSeat")?;
                self.set_leader(Some(next));
            }
            Ballot::Vote { target } => {
                if target == voter {
                    return Err("LeaderCannotVoteForSelf");
                }
                if !self.active.contains(&target) {
                    return Err("LeaderSeatInactive");
                }
                if self.vote_of.insert(voter, target) != Some(target) {
                    self.check_leader();
                }
            }
            Ballot::Withdraw => {
                if self.vote_of.remove(&voter).is_none() {
                    return Err("LeaderNoVote");
                }
            }
        }
        Ok(())
    }
}

/// One node: its machine and what stands in its way.
struct Node {
    seat: u64,
    machine: Machine,
    frozen: bool,
    /// Its RPC does not answer: no reads, and its jobs fail.
    rpc_cut: bool,
    /// Cut off the network: nothing from or to it gets through.
    cut_off: bool,
    app: Option<AppReport>,
    next_tick: Instant,
    next_read: Instant,
    /// Datagrams and job results on their way to it, and reads under way (when each began).
    inbox: VecDeque<(Instant, SocketAddr, [u8; heartbeat::LEN])>,
    results: VecDeque<(Instant, JobDone)>,
    reads: VecDeque<(Instant, Chain)>,
    /// What it claimed: closed intervals, and the one open now.
    claims: Vec<(Instant, Instant)>,
    claiming: Option<(Instant, Instant)>,
}

/// A ballot sent, waiting for its block.
struct Pending {
    node: usize,
    seat: u64,
    ballot: Ballot,
}

/// The network's faults, drawn per datagram.
#[derive(Debug, Clone, Copy)]
struct Weather {
    /// Out of 1,000 datagrams, how many are lost.
    loss_per_mille: u32,
    /// The longest a datagram takes.
    max_delay: Duration,
}

struct Sim {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    contract: Contract,
    pending: Vec<Pending>,
    next_block: Instant,
    weather: Weather,
    rng: u64,
}

impl Sim {
    /// `n` nodes, seats 1 to n, all active, none leading yet.
    fn new(n: u64, weather: Weather, seed: u64) -> Self {
        let t0 = Instant::now();
        let config = Config {
            timing: timing(),
            rpc: RedactedUrl::new(&"http://rpc.test/".parse().expect("a URL")),
            heartbeats: true,
            ballots: true,
        };
        let nodes = (1..=n)
            .map(|seat| {
                // The nodes start together, their heartbeats out of step.
                let offset = Duration::from_millis(seat * 37 % 500);
                let mut machine =
                    Machine::new(config.clone(), t0, u32::try_from(seat).unwrap() << 20);
                machine.handle_device(t0, Some("dm0".into()));
                Node {
                    seat,
                    machine,
                    frozen: false,
                    rpc_cut: false,
                    cut_off: false,
                    app: None,
                    next_tick: t0 + offset,
                    next_read: t0 + offset,
                    inbox: VecDeque::new(),
                    results: VecDeque::new(),
                    reads: VecDeque::new(),
                    claims: Vec::new(),
                    claiming: None,
                }
            })
            .collect();
        Self {
            t0,
            now: t0,
            nodes,
            contract: Contract {
                active: (1..=n).collect(),
                ..Contract::default()
            },
            pending: Vec::new(),
            next_block: t0 + BLOCK,
            weather,
            rng: seed | 1,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    /// xorshift: the same schedule for the same seed.
    fn random(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % below.max(1)
    }

    fn node(&mut self, seat: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.seat == seat)
            .expect("a node of that seat")
    }

    /// What node `i`'s chain task would publish after a read now.
    fn read(&self, i: usize) -> Chain {
        let seat = self.nodes[i].seat;
        let c = &self.contract;
        let registered: Vec<u64> = c
            .active
            .iter()
            .copied()
            .filter(|s| *s == seat || !c.refused.contains(s))
            .collect();
        Chain {
            own: c.active.contains(&seat).then_some(seat),
            own_refused: c.refused.contains(&seat).then(|| REFUSED.to_owned()),
            leader: c.leader,
            term: c.term,
            addresses: registered.iter().map(|s| (*s, overlay(*s))).collect(),
            registered,
            refused: c.refused.iter().copied().filter(|s| *s != seat).collect(),
            confirmed_at: Some(self.now),
            from_cache: false,
        }
    }

    /// Runs until `until` seconds after the start.
    fn run_until(&mut self, until: f64) {
        let end = self.at(until);
        while self.now < end {
            self.step();
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        if now >= self.next_block {
            self.mine();
            self.next_block += BLOCK;
        }
        for i in 0..self.nodes.len() {
            self.run_node(i, now);
        }
    }

    fn mine(&mut self) {
        let now = self.now;
        for p in std::mem::take(&mut self.pending) {
            let result = self
                .contract
                .apply(p.seat, p.ballot)
                .map(|()| Cast {
                    tx: Default::default(),
                    block: 0,
                    from: Default::default(),
                })
                .map_err(revert);
            if result.is_ok() {
                self.contract.mined.push((now, p.seat, p.ballot));
            }
            let node = &mut self.nodes[p.node];
            node.results
                .push_back((now + RPC_LATENCY, JobDone::Cast(p.ballot, result)));
        }
    }

    fn run_node(&mut self, i: usize, now: Instant) {
        if self.nodes[i].frozen {
            return;
        }
        if now >= self.nodes[i].next_read {
            self.nodes[i].next_read = now + timing().renew;
            if !self.nodes[i].rpc_cut {
                let chain = self.read(i);
                self.nodes[i].reads.push_back((now + RPC_LATENCY, chain));
            }
        }
        let node = &mut self.nodes[i];
        while node.reads.front().is_some_and(|(t, _)| *t <= now) {
            let (_, chain) = node.reads.pop_front().expect("a read");
            node.machine.handle_chain(now, chain);
        }
        while node.results.front().is_some_and(|(t, _)| *t <= now) {
            let (_, done) = node.results.pop_front().expect("a result");
            node.machine.handle_job(now, done);
        }
        while node.inbox.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, from, bytes) = node.inbox.pop_front().expect("a datagram");
            node.machine.handle_datagram(now, &bytes, from);
        }
        if now >= node.next_tick {
            node.next_tick = now + timing().heartbeat;
            node.machine.handle_socket(now, true);
            node.machine.handle_tick(now);
        }
        if node.machine.poll_timeout(now).is_some_and(|t| t <= now) {
            node.machine.handle_timeout(now);
        }
        self.effects(i, now);
        self.record(i, now);
    }

    /// What node `i` asked for: datagrams into the network, jobs to the chain.
    fn effects(&mut self, i: usize, now: Instant) {
        let from = SocketAddr::V4(SocketAddrV4::new(
            overlay(self.nodes[i].seat),
            heartbeat::PORT,
        ));
        while let Some(t) = self.nodes[i].machine.poll_transmit() {
            let Some(to) = seat_of(t.to) else { continue };
            let lost = self.random(1000) < u64::from(self.weather.loss_per_mille);
            let delay = Duration::from_micros(
                self.random(u64::try_from(self.weather.max_delay.as_micros()).unwrap_or(1) + 1),
            );
            let cut = self.nodes[i].cut_off || self.nodes.iter().any(|n| n.seat == to && n.cut_off);
            if lost || cut {
                continue;
            }
            if let Some(dest) = self.nodes.iter_mut().find(|n| n.seat == to) {
                // In order per destination: a later datagram never overtakes an earlier one.
                let at = dest
                    .inbox
                    .back()
                    .map_or(now + delay, |(t, _, _)| (*t).max(now + delay));
                dest.inbox.push_back((at, from, t.bytes));
            }
        }
        while let Some(job) = self.nodes[i].machine.poll_job() {
            let node = &mut self.nodes[i];
            if node.rpc_cut {
                let gone = ChainError::Implausible {
                    detail: "(simulated) the RPC does not answer".into(),
                };
                let done = match job {
                    Job::Connect => JobDone::Connected(Err(gone)),
                    Job::ReadVote { .. } => JobDone::VoteRead(Err(gone)),
                    Job::Cast { ballot, .. } => JobDone::Cast(ballot, Err(gone.into())),
                };
                node.results.push_back((now + Duration::from_secs(1), done));
                continue;
            }
            match job {
                Job::Connect => node
                    .results
                    .push_back((now + RPC_LATENCY, JobDone::Connected(Ok(())))),
                Job::ReadVote { seat } => {
                    let vote = self.contract.vote_of.get(&seat).copied();
                    node.results
                        .push_back((now + RPC_LATENCY, JobDone::VoteRead(Ok(vote))));
                }
                Job::Cast { seat, ballot } => self.pending.push(Pending {
                    node: i,
                    seat,
                    ballot,
                }),
            }
        }
    }

    /// Keeps node `i`'s claim intervals up to date: a claim holds until its `until`, or until the node
    /// stops claiming, whichever is first.
    fn record(&mut self, i: usize, now: Instant) {
        let node = &mut self.nodes[i];
        let until = match &node.machine.state().claim {
            Claim::Leads { until } if *until > now => Some(*until),
            _ => None,
        };
        match (node.claiming, until) {
            (Some((start, end)), Some(until)) if end >= now => node.claiming = Some((start, until)),
            (Some((start, end)), Some(until)) => {
                node.claims.push((start, end));
                node.claiming = Some((now, until));
            }
            (None, Some(until)) => node.claiming = Some((now, until)),
            (Some((start, end)), None) => {
                node.claims.push((start, end.min(now)));
                node.claiming = None;
            }
            (None, None) => {}
        }
    }

    /// Every node's claims, closed at `now`.
    fn claims(&self) -> Vec<(u64, Instant, Instant)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.claims
                    .iter()
                    .copied()
                    .chain(n.claiming.map(|(s, e)| (s, e.min(self.now))))
                    .map(move |(s, e)| (n.seat, s, e))
            })
            .filter(|(_, s, e)| s < e)
            .collect()
    }

    /// Two claims of different nodes that overlap, if any.
    fn overlap(&self) -> Option<String> {
        let claims = self.claims();
        for (i, a) in claims.iter().enumerate() {
            for b in &claims[i + 1..] {
                if a.0 != b.0 && a.1 < b.2 && b.1 < a.2 {
                    let s = |t: Instant| (t - self.t0).as_secs_f64();
                    return Some(format!(
                        "seat {} claimed {:.2}–{:.2} s and seat {} {:.2}–{:.2} s",
                        a.0,
                        s(a.1),
                        s(a.2),
                        b.0,
                        s(b.1),
                        s(b.2)
                    ));
                }
            }
        }
        None
    }

    /// The seat that claims to lead now, if exactly one does.
    fn claimant(&self) -> Option<u64> {
        let now: Vec<u64> = self
            .nodes
            .iter()
            .filter(
                |n| matches!(n.machine.state().claim, Claim::Leads { until } if until > self.now),
            )
            .map(|n| n.seat)
            .collect();
        (now.len() == 1).then(|| now[0])
    }

    /// Runs until a node claims to lead, at most `within` more seconds; when, in seconds from the start.
    fn until_someone_leads(&mut self, within: f64) -> Option<(u64, f64)> {
        self.until_led(within, |_| true)
    }

    /// Runs until a node other than `old` claims to lead, at most `within` more seconds.
    fn until_new_leader(&mut self, old: u64, within: f64) -> Option<(u64, f64)> {
        self.until_led(within, |seat| seat != old)
    }

    fn until_led(&mut self, within: f64, wanted: impl Fn(u64) -> bool) -> Option<(u64, f64)> {
        let end = self.now + Duration::from_secs_f64(within);
        while self.now < end {
            self.step();
            let claiming = self.nodes.iter().find(|n| {
                wanted(n.seat)
                    && matches!(n.machine.state().claim, Claim::Leads { until } if until > self.now)
            });
            if let Some(n) = claiming {
                return Some((n.seat, (self.now - self.t0).as_secs_f64()));
            }
        }
        None
    }

    fn ballots_of(&self, seat: u64) -> usize {
        self.contract
            .mined
            .iter()
            .filter(|(_, s, _)| *s == seat)
            .count()
    }

    fn set_health(&mut self, seat: u64, healthy: bool) {
        let now = self.now;
        let node = self.node(seat);
        node.app = Some(AppReport {
            healthy,
            reason: (!healthy).then(|| "the database is down".into()),
            expires_at: None,
        });
        let app = node.app.clone();
        node.machine.handle_health(now, app, None);
    }
}

fn calm() -> Weather {
    Weather {
        loss_per_mille: 0,
        max_delay: Duration::from_millis(2),
    }
}

/// Three nodes elect seat 1, which leads under its lease once a majority confirms it (and its first lease,
/// after its start, has run).
fn led_by_seat_1(n: u64) -> Sim {
    let mut sim = Sim::new(n, calm(), 7);
    let (seat, at) = sim.until_someone_leads(30.0).expect("a leader");
    assert_eq!(seat, 1);
    assert!(
        at < 2.0 * timing().lease.as_secs_f64() + 2.0,
        "led at {at:.2} s"
    );
    sim
}

#[test]
fn a_cluster_elects_its_lowest_seat_which_leads_alone() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(30.0);
    assert_eq!(sim.contract.leader, Some(1));
    assert_eq!(sim.claimant(), Some(1));
    assert_eq!(sim.overlap(), None);
    assert_eq!(
        sim.contract.mined.len(),
        1,
        "one election: {:?}",
        sim.contract.mined
    );
}

/// The leader's node is frozen (its process stopped: nothing in, nothing out, its clock running on); the
/// others vote it out after the timeout, seat 2 leads, and seat 1, resumed with its old state and the
/// datagrams that waited for it, never claims beside seat 2.
#[test]
fn a_frozen_leader_is_replaced_and_never_claims_beside_its_successor_when_it_resumes() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    let frozen_at = sim.now;
    sim.node(1).frozen = true;
    let (seat, at) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    let took = at - (frozen_at - sim.t0).as_secs_f64();
    assert!(
        took > timing().lease.as_secs_f64() && took < TIMEOUT.as_secs_f64() + 4.0,
        "seat 2 led {took:.2} s after the freeze"
    );
    sim.run_until(at + 3.0);
    sim.node(1).frozen = false;
    sim.run_until(at + 20.0);
    assert_eq!(sim.overlap(), None);
    assert_eq!(sim.claimant(), Some(2));
    assert_eq!(sim.contract.leader, Some(2));
}

/// The same, resumed without its RPC: its view is never confirmed again, so it never claims again.
#[test]
fn a_frozen_leader_resumed_without_its_rpc_never_claims_again() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    sim.node(1).frozen = true;
    let (_, at) = sim.until_new_leader(1, 30.0).expect("a new leader");
    sim.node(1).rpc_cut = true;
    sim.node(1).frozen = false;
    let resumed = sim.now;
    sim.run_until(at + 30.0);
    assert_eq!(sim.overlap(), None);
    let claimed_after = sim.nodes[0]
        .claims
        .iter()
        .chain(sim.nodes[0].claiming.as_ref())
        .any(|(_, end)| *end > resumed);
    assert!(
        !claimed_after,
        "seat 1 claimed after it resumed without its RPC"
    );
}

/// A node that ran without a seat for longer than the timeout gets one: it counts the leader's silence from
/// when it could first hear it, so it casts no ballot against a leader that answers it.
#[test]
fn a_node_that_joins_late_casts_no_ballot_against_a_leader_that_answers_it() {
    let mut sim = Sim::new(3, calm(), 11);
    sim.contract.active.remove(&3);
    sim.until_someone_leads(30.0).expect("a leader");
    sim.run_until(20.0);
    sim.contract.active.insert(3);
    sim.run_until(60.0);
    assert_eq!(sim.ballots_of(3), 0, "{:?}", sim.contract.mined);
    assert_eq!(sim.claimant(), Some(1));
    assert_eq!(sim.overlap(), None);
}

/// Another node's election lands in the block before seat 1's own: seat 1's `electLeader` reverts with
/// `LeaderAlreadyElected`, while its view of the chain still shows no leader. It waits for the view to catch
/// up rather than finding the same ballot due again at once (which the one-ballot-per-timeout rule would
/// hold back, and log as a loop).
#[test]
fn a_node_whose_election_lost_the_race_waits_for_its_view_and_casts_nothing_more() {
    let mut sim = Sim::new(3, calm(), 5);
    let deadline = sim.at(10.0);
    while sim.pending.is_empty() {
        assert!(sim.now < deadline, "seat 1 never elected");
        sim.step();
    }
    assert!(
        sim.pending
            .iter()
            .all(|p| p.seat == 1 && p.ballot == Ballot::Elect),
        "only seat 1 elects at first"
    );
    // As if another node's electLeader was mined first, in the same block: seat 1 last read the chain
    // before it, and reads it again only after its own ballot's revert.
    while sim.now + STEP < sim.next_block {
        sim.step();
    }
    sim.contract.set_leader(Some(1));
    let (seat, _) = sim.until_someone_leads(30.0).expect("a leader");
    assert_eq!(seat, 1);
    sim.run_until(30.0);
    assert!(sim.contract.mined.is_empty(), "{:?}", sim.contract.mined);
    assert_eq!(sim.overlap(), None);
    for n in &sim.nodes {
        assert_eq!(
            n.machine.state().counters.ballots_held,
            0,
            "seat {}: no ballot was due again",
            n.seat
        );
    }
}

/// The leader's RPC is cut while the mesh works: it stops claiming within the lease (its view is no longer
/// confirmed), says so in its heartbeats, and is replaced after the timeout.
#[test]
fn a_leader_that_cannot_read_the_chain_stops_claiming_within_the_lease_and_is_replaced() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    let cut_at = sim.now;
    sim.node(1).rpc_cut = true;
    sim.run_until(10.0 + timing().lease.as_secs_f64() + 0.1);
    assert_ne!(
        sim.claimant(),
        Some(1),
        "seat 1 still claims a lease after its RPC was cut"
    );
    let last = sim.nodes[0].claims.last().expect("seat 1 claimed").1;
    assert!(
        last - cut_at <= timing().lease,
        "claimed until {:?} after the cut",
        last - cut_at
    );
    let (seat, _) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    sim.run_until(60.0);
    assert_eq!(sim.overlap(), None);
    assert_eq!(
        sim.ballots_of(1),
        1,
        "seat 1 elected, and cast nothing without its RPC"
    );
}

/// The leader's application reports itself unhealthy: it stops claiming at once, is voted out after the
/// timeout, casts no ballot while unhealthy, and once healthy again takes part as before.
#[test]
fn an_unhealthy_leader_steps_down_at_once_and_casts_nothing_until_healthy() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    sim.set_health(1, false);
    assert_eq!(
        sim.nodes[0].machine.state().claim.until(),
        None,
        "stepped down at once"
    );
    let (seat, _) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    let ballots = sim.ballots_of(1);
    sim.run_until(40.0);
    assert_eq!(sim.ballots_of(1), ballots, "no ballot while unhealthy");
    sim.set_health(1, true);
    sim.run_until(60.0);
    assert_eq!(sim.overlap(), None);
    assert_eq!(
        sim.claimant(),
        Some(2),
        "seat 2 leads on; seat 1 answers again"
    );
}

/// The owner disallows the image that only the leader runs: every node refuses seat 1, the others vote
/// against it at once, with one ballot each, which is all one replacement needs, and seat 2, attested,
/// leads; seat 1 casts nothing, never claims beside seat 2, and nobody votes in a loop.
#[test]
fn a_refused_leader_is_replaced_at_once_with_the_ballots_one_replacement_needs() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    let mined_before = sim.contract.mined.len();
    let refused_at = sim.now;
    sim.contract.refused.insert(1);
    let (seat, at) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    let took = at - (refused_at - sim.t0).as_secs_f64();
    assert!(
        took < TIMEOUT.as_secs_f64(),
        "replaced {took:.2} s after the refusal: sooner than a silent leader's timeout"
    );
    sim.run_until(60.0);
    let ballots: Vec<_> = sim.contract.mined[mined_before..].to_vec();
    assert_eq!(
        ballots.len(),
        2,
        "f + 1 = 2 votes, nothing else: {ballots:?}"
    );
    assert!(
        ballots
            .iter()
            .all(|(_, s, b)| *s != 1 && matches!(b, Ballot::Vote { target: 1 }))
    );
    assert_eq!(sim.contract.leader, Some(2));
    assert_eq!(sim.overlap(), None);
    assert!(
        sim.nodes
            .iter()
            .all(|n| n.machine.state().counters.ballots_held == 0),
        "no ballot was even due twice"
    );
}

/// A change that needs no silence: the leader's RPC is cut (so it cannot learn what follows), and the owner
/// disallows its image a moment later. The others refuse it and vote at once, and seat 2 is leader on-chain
/// within a block or two, long before seat 1's lease runs out on its own clock. Seat 2 claims only once the
/// confirmations of seat 1 that it and seat 3 gave have run out: never beside seat 1.
#[test]
fn a_successor_waits_out_the_confirmations_of_a_leader_that_does_not_know_it_is_replaced() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    sim.node(1).rpc_cut = true;
    sim.run_until(10.2);
    sim.contract.refused.insert(1);
    let (seat, at) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    let last = sim.nodes[0]
        .claims
        .iter()
        .chain(sim.nodes[0].claiming.as_ref())
        .map(|(_, end)| (*end - sim.t0).as_secs_f64())
        .fold(0.0, f64::max);
    assert!(
        last <= at,
        "seat 1 claimed until {last:.2} s, seat 2 from {at:.2} s"
    );
    sim.run_until(40.0);
    assert_eq!(sim.overlap(), None);
}

/// A leader cut off the network (its RPC still up) loses its majority and stops claiming within the lease;
/// the others replace it; brought back, it follows, and the votes against it are withdrawn.
#[test]
fn a_partitioned_leader_stops_claiming_and_the_votes_are_withdrawn_once_it_answers() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    sim.node(1).cut_off = true;
    let (seat, _) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    sim.node(1).cut_off = false;
    sim.run_until(60.0);
    assert_eq!(sim.overlap(), None);
    assert_eq!(sim.claimant(), Some(2));
    assert!(
        sim.contract.vote_of.is_empty(),
        "the votes against seat 1 are withdrawn once it answers: {:?}",
        sim.contract.vote_of
    );
}

/// What happens to the cluster at a moment of a schedule.
#[derive(Debug, Clone, Copy)]
enum Event {
    Freeze(u64),
    Resume(u64),
    CutRpc(u64),
    RestoreRpc(u64),
    CutOff(u64),
    Reconnect(u64),
    Unhealthy(u64),
    Healthy(u64),
    /// Every node refuses this seat from the next read on (its image is disallowed), or accepts it again.
    Refuse(u64),
    Accept(u64),
}

/// An event for a seat; seat 0, half the time, stands for whichever seat leads when it happens.
fn event(nodes: u64) -> impl Strategy<Value = Event> {
    let seat = prop_oneof![Just(0), 1..=nodes];
    prop_oneof![
        seat.clone().prop_map(Event::Freeze),
        seat.clone().prop_map(Event::Resume),
        seat.clone().prop_map(Event::CutRpc),
        seat.clone().prop_map(Event::RestoreRpc),
        seat.clone().prop_map(Event::CutOff),
        seat.clone().prop_map(Event::Reconnect),
        seat.clone().prop_map(Event::Unhealthy),
        seat.clone().prop_map(Event::Healthy),
        seat.clone().prop_map(Event::Refuse),
        seat.prop_map(Event::Accept),
    ]
}

impl Sim {
    fn apply(&mut self, event: Event) {
        let leader = self.contract.leader.unwrap_or(1);
        let seat = |s: u64| if s == 0 { leader } else { s };
        let event = match event {
            Event::Freeze(s) => Event::Freeze(seat(s)),
            Event::Resume(s) => Event::Resume(seat(s)),
            Event::CutRpc(s) => Event::CutRpc(seat(s)),
            Event::RestoreRpc(s) => Event::RestoreRpc(seat(s)),
            Event::CutOff(s) => Event::CutOff(seat(s)),
            Event::Reconnect(s) => Event::Reconnect(seat(s)),
            Event::Unhealthy(s) => Event::Unhealthy(seat(s)),
            Event::Healthy(s) => Event::Healthy(seat(s)),
            Event::Refuse(s) => Event::Refuse(seat(s)),
            Event::Accept(s) => Event::Accept(seat(s)),
        };
        match event {
            Event::Freeze(s) => self.node(s).frozen = true,
            Event::Resume(s) => self.node(s).frozen = false,
            Event::CutRpc(s) => self.node(s).rpc_cut = true,
            Event::RestoreRpc(s) => self.node(s).rpc_cut = false,
            Event::CutOff(s) => self.node(s).cut_off = true,
            Event::Reconnect(s) => self.node(s).cut_off = false,
            Event::Unhealthy(s) => self.set_health(s, false),
            Event::Healthy(s) => self.set_health(s, true),
            Event::Refuse(s) => {
                self.contract.refused.insert(s);
            }
            Event::Accept(s) => {
                self.contract.refused.remove(&s);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Under any schedule of freezes, RPC cuts, partitions, health reports and refusals, over a network that
    /// loses and delays datagrams, no two nodes ever claim to lead over overlapping intervals.
    /// Under any schedule of freezes, RPC cuts, partitions, health reports and refusals, over a network that
    /// loses and delays datagrams, no two nodes ever claim to lead over overlapping intervals. Events come in
    /// pairs a little apart (a cut RPC, then a refusal it hides), often aimed at whichever seat leads.
    #[test]
    fn no_two_nodes_ever_claim_to_lead_at_once(
        nodes in 3u64..=5,
        loss in 0u32..300,
        delay_ms in 0u64..200,
        seed: u64,
        pairs in proptest::collection::vec(
            (1u64..40_000, event(5), event(5), 0u64..3_000),
            0..8,
        ),
    ) {
        let weather = Weather {
            loss_per_mille: loss,
            max_delay: Duration::from_millis(delay_ms),
        };
        let mut sim = Sim::new(nodes, weather, seed);
        let mut events: Vec<(u64, Event)> = pairs
            .iter()
            .flat_map(|(at, first, second, gap)| [(*at, *first), (at + gap, *second)])
            .filter(|(_, e)| match e {
                Event::Freeze(s) | Event::Resume(s) | Event::CutRpc(s) | Event::RestoreRpc(s)
                | Event::CutOff(s) | Event::Reconnect(s) | Event::Unhealthy(s) | Event::Healthy(s)
                | Event::Refuse(s) | Event::Accept(s) => *s <= nodes,
            })
            .collect();
        events.sort_by_key(|(at, _)| *at);
        for (at_ms, e) in events {
            sim.run_until(at_ms as f64 / 1000.0);
            sim.apply(e);
            prop_assert_eq!(sim.overlap(), None);
        }
        sim.run_until(100.0);
        prop_assert_eq!(sim.overlap(), None);
        for n in &sim.nodes {
            // The safety net holds whatever the schedule: one ballot per timeout at most.
            let times: Vec<Instant> = sim
                .contract
                .mined
                .iter()
                .filter(|(_, s, _)| *s == n.seat)
                .map(|(t, _, _)| *t)
                .collect();
            for w in times.windows(2) {
                prop_assert!(
                    w[1] - w[0] >= TIMEOUT - BLOCK,
                    "seat {}'s ballots mined {:?} apart", n.seat, w[1] - w[0]
                );
            }
        }
    }
}
