//! The leader task: watches the cluster's leader over the mesh and takes this node's part in the election
//! ([`crate::election`] decides), and publishes [`LeaderState`].
//!
//! A seat answers when WireGuard datagrams arrived from it since the last look, or else when a TCP
//! connection to its overlay address on [`PROBE_PORT`] is accepted or refused: either way it answered
//! through the tunnel. A fresh WireGuard handshake counts as an answer too.
//! Ballots wait for their receipts here and nowhere else, so following and the mesh go on meanwhile.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest::Url;
use mesh_chain::backoff::Backoff;
use mesh_chain::contract::ChainError;
use mesh_chain::election::{Ballot, ElectionError};
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::Cluster;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::election::{self, Facts, Sighting};
use crate::identity::NodeIdentity;
use crate::state::{ChainState, LeaderState, MeshState};

/// How often the watched seats are looked at: a tenth of the leader timeout, within these bounds, so a
/// failover takes at most a tenth longer than the timeout while a large cluster's leader is not probed by
/// every node every second.
const LOOK_EVERY_MIN: Duration = Duration::from_secs(1);
const LOOK_EVERY_MAX: Duration = Duration::from_secs(5);
/// How long a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The port probes connect to: `discard`, which nothing in a CVM should serve; a refusal (RST) is as good
/// an answer as an accept, and both come back through the tunnel.
pub const PROBE_PORT: u16 = 9;
/// After a ballot that was mined, how long an election is not called again while the view catches up.
const AFTER_ELECTING: Duration = Duration::from_secs(10);

/// What the leader task needs to know.
pub struct LeaderTask {
    pub contract: Address,
    pub rpc_url: Url,
    pub rpc: RedactedUrl,
    pub identity: Arc<NodeIdentity>,
    pub tx_key: Option<PrivateKeySigner>,
    /// `--leader-timeout`.
    pub timeout: Duration,
    /// Probing and voting: off in TLS mode (there is no mesh to probe over) and with `--no-failover`.
    pub failover: bool,
}

struct Running {
    task: LeaderTask,
    state: LeaderState,
    cluster: Option<Cluster>,
    /// The vote is read from the chain before the first ballot, and again after a failed one.
    vote_known: bool,
    sightings: BTreeMap<u64, Sighting>,
    /// Bytes received from each watched seat at the last look.
    received: BTreeMap<u64, u64>,
    leaderless_since: Option<Instant>,
    /// No ballot before this: a backoff after failures, or a pause after an election.
    quiet_until: Option<Instant>,
    backoff: Backoff,
}

impl LeaderTask {
    /// Runs until `cancel` fires.
    ///
    /// # Errors
    /// None yet: every failure is logged, counted and retried with backoff.
    pub async fn run(
        self,
        mut chain: watch::Receiver<ChainState>,
        mesh: watch::Receiver<MeshState>,
        out: watch::Sender<LeaderState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        if !self.task_enabled() {
            return Ok(());
        }
        let mut running = Running {
            task: self,
            state: LeaderState::default(),
            cluster: None,
            vote_known: false,
            sightings: BTreeMap::new(),
            received: BTreeMap::new(),
            leaderless_since: None,
            quiet_until: None,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(60)),
        };
        let every = (running.task.timeout / 10).clamp(LOOK_EVERY_MIN, LOOK_EVERY_MAX);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                Ok(()) = chain.changed() => {}
            }
            let chain_now = chain.borrow_and_update().clone();
            let mesh_now = mesh.borrow().clone();
            let step = running.step(&chain_now, &chain, &mesh_now);
            if cancel.run_until_cancelled(step).await.is_none() {
                return Ok(());
            }
            // Only a change: the publisher renders a snapshot for each.
            out.send_if_modified(|published| {
                let changed = *published != running.state;
                if changed {
                    published.clone_from(&running.state);
                }
                changed
            });
        }
    }

    fn task_enabled(&self) -> bool {
        if !self.failover {
            info!(
                "leader failover is off (--no-failover, or TLS mode): this node will not vote or elect"
            );
        }
        self.failover
    }
}

impl Running {
    /// `latest` is where the chain task's state goes on moving while this step probes and reads.
    async fn step(
        &mut self,
        chain: &ChainState,
        latest: &watch::Receiver<ChainState>,
        mesh: &MeshState,
    ) {
        // A view from the state file is as old as the last run: no ballot is cast on it.
        let Some(view) = chain.view.as_deref().filter(|_| !chain.from_cache) else {
            return;
        };
        let now = Instant::now();
        let registered: Vec<u64> = view.records.keys().copied().collect();
        let own = chain.seat.token().filter(|t| registered.contains(t));
        match view.leader {
            Some(_) => self.leaderless_since = None,
            None => {
                self.leaderless_since.get_or_insert(now);
            }
        }
        self.probe(own, view, mesh, now).await;
        let Some(seat) = own else {
            return;
        };
        let quiet = self.quiet_until.is_some_and(|t| now < t);
        if !self.vote_known && (quiet || !self.read_vote(seat).await) {
            return;
        }
        // Probes and the vote's read take a while, in which another node may have elected a leader: the
        // ballot is decided on the newest view, so that it is not cast against a settled question.
        let leader = latest
            .borrow()
            .view
            .as_deref()
            .map_or(view.leader, |v| v.leader);
        if leader.is_some() {
            self.leaderless_since = None;
        }
        let facts = Facts {
            own,
            leader,
            leaderless_since: self.leaderless_since,
            registered: &registered,
            vote: self.state.vote,
            sightings: &self.sightings,
            timeout: self.task.timeout,
            now,
        };
        let Some((ballot, reason)) = election::decide(&facts) else {
            return;
        };
        if quiet {
            debug!(%ballot, %reason, "a ballot is due, but waiting out the pause after the last one");
            return;
        }
        info!(seat, %ballot, %reason, "casting a ballot");
        self.cast(seat, ballot).await;
    }

    /// Hears from the seats to watch: datagrams received from a seat since the last look are an answer
    /// that costs nothing; a seat that sent none is probed. Handshakes count as answers too.
    async fn probe(
        &mut self,
        own: Option<u64>,
        view: &mesh_chain::view::ChainView,
        mesh: &MeshState,
        now: Instant,
    ) {
        let watched = election::to_watch(own, view.leader, self.state.vote);
        self.sightings.retain(|seat, _| watched.contains(seat));
        self.state
            .answering
            .retain(|seat, _| watched.contains(seat));
        self.received.retain(|seat, _| watched.contains(seat));
        let stat = |seat: u64| {
            mesh.members
                .iter()
                .find(|m| m.token_id == seat)
                .and_then(|m| m.wg_public_key)
                .and_then(|k| mesh.stats.get(&k))
        };
        let mut heard = Vec::new();
        let mut probes = tokio::task::JoinSet::new();
        for &seat in &watched {
            let rx = stat(seat).map_or(0, |s| s.rx_bytes);
            let before = self.received.insert(seat, rx);
            if before.is_some_and(|b| rx > b) {
                heard.push((seat, true));
            } else if let Some(ip) = view.prefix().address(seat) {
                probes.spawn(async move { (seat, answers(ip).await) });
            }
        }
        heard.extend(probes.join_all().await);
        let wall = SystemTime::now();
        for (seat, answered) in heard {
            let sighting = self
                .sightings
                .entry(seat)
                .or_insert_with(|| Sighting::new(now));
            if answered {
                sighting.seen(Instant::now());
            }
            let handshake = stat(seat)
                .and_then(|s| s.last_handshake)
                .and_then(|t| wall.duration_since(t).ok())
                .and_then(|age| now.checked_sub(age));
            if let Some(at) = handshake {
                sighting.seen(at);
            }
            let was = self.state.answering.insert(seat, answered);
            if was.is_some_and(|w| w != answered) {
                info!(seat, answered, "the leader watch's probe result changed");
            }
        }
    }

    /// Whether there is a client of the contract, connecting one if not.
    async fn connect(&mut self) -> bool {
        if self.cluster.is_none() {
            match Cluster::connect(self.task.rpc_url.clone(), self.task.contract).await {
                Ok(c) => self.cluster = Some(c),
                Err(e) => {
                    self.failed("connecting the election client", e);
                    return false;
                }
            }
        }
        true
    }

    async fn read_vote(&mut self, seat: u64) -> bool {
        if !self.connect().await {
            return false;
        }
        let Some(cluster) = &self.cluster else {
            return false;
        };
        match cluster.vote_of(seat).await {
            Ok(vote) => {
                self.state.vote = vote;
                self.vote_known = true;
                true
            }
            Err(e) => {
                self.failed("reading this seat's vote", e);
                false
            }
        }
    }

    async fn cast(&mut self, seat: u64, ballot: Ballot) {
        if !self.connect().await {
            return;
        }
        let Some(cluster) = &self.cluster else {
            return;
        };
        let result = cluster
            .cast(
                &self.task.identity.peer,
                self.task.tx_key.as_ref(),
                seat,
                ballot,
            )
            .await;
        match result {
            Ok(_) => {
                // Cluster::cast logged it, with the transaction and the sender.
                self.backoff.reset();
                self.state.error = None;
                let counters = &mut self.state.counters;
                match ballot {
                    Ballot::Elect => {
                        counters.elections = counters.elections.saturating_add(1);
                        self.quiet_until = Some(Instant::now() + AFTER_ELECTING);
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
                // Another node's election landed first: the question is settled, nothing failed.
                self.vote_known = false;
                info!(seat, "another node elected a leader first: {revert}");
            }
            Err(e) => {
                // What the chain holds may differ from what was believed (another node elected first, the
                // vote went with a cleared record): read it again before the next ballot.
                self.vote_known = false;
                let delay = self.backoff.next_delay();
                self.quiet_until = Some(Instant::now() + delay);
                self.state.counters.failures = self.state.counters.failures.saturating_add(1);
                let text = match &e {
                    ElectionError::Chain(c) => self.task.rpc.scrub(&c.to_string()),
                    other => other.to_string(),
                };
                warn!(seat, %ballot, error = %text, retry_in = ?delay, "the ballot failed");
                self.state.error = Some(format!("{ballot} failed: {text}"));
            }
        }
    }

    /// A read failed: shown in the state and logged at debug level only, since the chain task already
    /// warns when the RPC is down; a ballot's failure is what this task warns of.
    fn failed(&mut self, what: &str, e: impl std::fmt::Display) {
        self.cluster = None;
        let delay = self.backoff.next_delay();
        self.quiet_until = Some(Instant::now() + delay);
        let text = format!("{what}: {}", self.task.rpc.scrub(&e.to_string()));
        debug!(error = %text, retry_in = ?delay, "the election client failed");
        self.state.error = Some(text);
    }
}

/// Whether the node at `ip` answers over the mesh: a TCP connection to it is accepted or refused in time.
async fn answers(ip: Ipv4Addr) -> bool {
    let addr = SocketAddr::from((ip, PROBE_PORT));
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Err(_) => false,
    }
}
