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
    /// The newest block mined.
    block: u64,
    /// Seats marked draining.
    draining: BTreeSet<u64>,
    /// Hand-offs mined: when, from and to.
    handoffs: Vec<(Instant, u64, u64)>,
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

    fn hand_off(&mut self, from: u64, to: u64) -> Result<(), &'static str> {
        if self.leader != Some(from) {
            return Err("LeaderNotLeader");
        }
        if to == from
            || !self.active.contains(&to)
            || self.draining.contains(&to)
            || self.votes_against(to) >= self.threshold()
        {
            return Err("LeaderHandOffIneligible");
        }
        self.set_leader(Some(to));
        Ok(())
    }
}

/// A transaction sent.
#[derive(Debug, Clone, Copy)]
enum Tx {
    Ballot(Ballot),
    HandOff { to: u64 },
}

/// One node: its machine and what stands in its way.
struct Node {
    seat: u64,
    machine: Machine,
    frozen: bool,
    /// Its RPC does not answer: no reads, and its jobs fail.
    rpc_cut: bool,
    /// Its reads answer this view (confirmed anew each time), however the chain moves on: a chain task
    /// that lags far behind.
    stale: Option<Chain>,
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
    /// The failures it gave its driver to log, and how loudly.
    logged: Vec<(tracing::Level, crate::state::Fault)>,
}

/// A ballot sent, waiting for its block.
struct Pending {
    node: usize,
    seat: u64,
    tx: Tx,
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
                    stale: None,
                    cut_off: false,
                    app: None,
                    next_tick: t0 + offset,
                    next_read: t0 + offset,
                    inbox: VecDeque::new(),
                    results: VecDeque::new(),
                    reads: VecDeque::new(),
                    claims: Vec::new(),
                    claiming: None,
                    logged: Vec::new(),
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
            block: c.block,
            draining: c.draining.iter().copied().collect(),
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
        self.contract.block += 1;
        let block = self.contract.block;
        for p in std::mem::take(&mut self.pending) {
            let cast = Cast {
                tx: Default::default(),
                block,
                from: Default::default(),
            };
            let node = p.node;
            let done = match p.tx {
                Tx::Ballot(ballot) => {
                    let result = self.contract.apply(p.seat, ballot);
                    if result.is_ok() {
                        self.contract.mined.push((now, p.seat, ballot));
                    }
                    JobDone::Cast(ballot, result.map(|()| cast).map_err(revert))
                }
                Tx::HandOff { to } => {
                    let result = self.contract.hand_off(p.seat, to);
                    if result.is_ok() {
                        self.contract.handoffs.push((now, p.seat, to));
                    }
                    JobDone::HandedOff(to, result.map(|()| cast).map_err(revert))
                }
            };
            self.nodes[node]
                .results
                .push_back((now + RPC_LATENCY, done));
        }
    }

    fn run_node(&mut self, i: usize, now: Instant) {
        if self.nodes[i].frozen {
            return;
        }
        if now >= self.nodes[i].next_read {
            self.nodes[i].next_read = now + timing().renew;
            if !self.nodes[i].rpc_cut {
                let chain = match &self.nodes[i].stale {
                    Some(view) => Chain {
                        confirmed_at: Some(now),
                        ..view.clone()
                    },
                    None => self.read(i),
                };
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
        while let Some(fault) = self.nodes[i].machine.poll_fault() {
            self.nodes[i].logged.push(fault);
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
                    Job::HandOff { to, .. } => JobDone::HandedOff(to, Err(gone.into())),
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
                    tx: Tx::Ballot(ballot),
                }),
                Job::HandOff { seat, to } => self.pending.push(Pending {
                    node: i,
                    seat,
                    tx: Tx::HandOff { to },
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

#[cfg(test)]
mod tests;
