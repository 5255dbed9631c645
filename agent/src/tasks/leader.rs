//! The leader task: keeps this node's part in the cluster's leadership, and publishes [`LeaderState`].
//!
//! - **Heartbeats** ([`crate::heartbeat`]) go out every [`Timing::heartbeat`] over the mesh, from and to
//!   the agents' overlay addresses: the seat named leader pings every other seat with a record, the others
//!   ping the leader and their vote's target, and every ping is answered.
//! - **The lease** ([`crate::lease`]): this node says it leads only while its view of the chain is fresh, a
//!   majority of the seats confirm it, and it is healthy. The verdict is worked out again on every event,
//!   and when the lease would end.
//! - **Ballots** ([`crate::election`] decides): a leader that sends no fit heartbeat for `--leader-timeout`
//!   gets this node's vote, and a leaderless cluster an election. Reads of the vote and ballots run as jobs
//!   beside the loop, so waiting for a receipt never holds a heartbeat up.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest::Url;
use mesh_api::{AppReport, CheckSignal, HealthSignal};
use mesh_chain::backoff::Backoff;
use mesh_chain::election::{Ballot, Cast, ElectionError};
use mesh_chain::error::ChainError;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::Cluster;
use mesh_chain::view::ChainView;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::election::{self, Facts, Sighting};
use crate::heartbeat::{self, Heartbeat, Kind, View};
use crate::identity::NodeIdentity;
use crate::lease::{self, Claim, Timing};
use crate::state::{ChainState, Fault, LeaderState, MeshState};

/// After a ballot that was mined, how long an election is not called again while the view catches up.
const AFTER_ELECTING: Duration = Duration::from_secs(10);

/// A watched seat that has not answered for this many heartbeats is shown unreachable.
const UNREACHABLE_AFTER: u32 = 3;

/// What the leader task needs to know.
pub struct LeaderTask {
    pub contract: Address,
    pub rpc_url: Url,
    pub rpc: RedactedUrl,
    pub identity: Arc<NodeIdentity>,
    pub tx_key: Option<PrivateKeySigner>,
    pub timing: Timing,
    /// Heartbeats over the mesh: off in TLS mode, where there is no mesh (such a node leads only a cluster
    /// of one).
    pub heartbeats: bool,
    /// Votes and elections: off in TLS mode and with `--no-failover`.
    pub ballots: bool,
}

/// What the leader task reads.
pub struct Inputs {
    pub chain: watch::Receiver<ChainState>,
    pub mesh: watch::Receiver<MeshState>,
    /// The application's last health report (`POST /v1/health`).
    pub app_health: watch::Receiver<Option<AppReport>>,
    /// The agent's own health check, if it runs one.
    pub check: watch::Receiver<Option<CheckSignal>>,
}

/// The heartbeat socket, bound to this node's overlay address on the mesh interface.
struct Bound {
    socket: UdpSocket,
    addr: Ipv4Addr,
    ifname: String,
    /// The interface's index when bound: `SO_BINDTODEVICE` holds on to it, so an interface that was
    /// removed and created again under the same name needs a new socket.
    ifindex: u32,
}

/// Work on the chain that runs beside the loop.
enum Job {
    Connected(Result<Cluster, ChainError>),
    VoteRead(Result<Option<u64>, ChainError>),
    Cast(Ballot, Result<Cast, ElectionError>),
}

/// What woke the loop.
enum Wake {
    Cancelled,
    Heartbeat,
    /// The chain task published: a new view, or the same one confirmed.
    Chain,
    Datagram(Vec<u8>, SocketAddr),
    Job(Job),
    Other,
}

struct Running {
    task: LeaderTask,
    state: LeaderState,
    cluster: Option<Arc<Cluster>>,
    /// The vote is read from the chain before the first ballot, and again after a failed one.
    vote_known: bool,
    sightings: BTreeMap<u64, Sighting>,
    /// When each watched seat last answered a ping of this node's (any answer), and since when it has been
    /// pinged: what `reachable` shows.
    last_pong: BTreeMap<u64, Instant>,
    pinged_since: BTreeMap<u64, Instant>,
    leaderless_since: Option<Instant>,
    /// No ballot before this: a backoff after failures, or a pause after an election.
    quiet_until: Option<Instant>,
    backoff: Backoff,
    jobs: JoinSet<Job>,
    /// The ballot being cast, while one is.
    casting: Option<Ballot>,
    socket: Option<Bound>,
    /// Pings sent within the lease: nonce → (to whom, when).
    sent: BTreeMap<u32, (u64, Instant)>,
    next_nonce: u32,
    /// What the confirmations below are for: they count only under the view they were given in.
    view: View,
    /// Seats that confirmed this node as leader: when the ping they answered so was sent.
    support: BTreeMap<u64, Instant>,
    /// A failure to bind the heartbeat socket was logged.
    bind_warned: bool,
}

impl LeaderTask {
    /// Runs until `cancel` fires.
    ///
    /// # Errors
    /// None yet: every failure is logged, counted and retried with backoff.
    pub async fn run(
        self,
        mut inputs: Inputs,
        out: watch::Sender<LeaderState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        if !self.ballots {
            info!(
                "leader failover is off (--no-failover, or TLS mode): this node will not vote or elect"
            );
        }
        let mut tick = tokio::time::interval(self.timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running = Running::new(self);
        loop {
            let deadline = running
                .next_change(&inputs)
                .map(tokio::time::Instant::from_std);
            let wake = tokio::select! {
                () = cancel.cancelled() => Wake::Cancelled,
                _ = tick.tick() => Wake::Heartbeat,
                Ok(()) = inputs.chain.changed() => Wake::Chain,
                Ok(()) = inputs.mesh.changed() => Wake::Other,
                Ok(()) = inputs.app_health.changed() => Wake::Other,
                Ok(()) = inputs.check.changed() => Wake::Other,
                Some((bytes, from)) = recv(running.socket.as_ref()) => Wake::Datagram(bytes, from),
                Some(done) = running.jobs.join_next(), if !running.jobs.is_empty() => match done {
                    Ok(job) => Wake::Job(job),
                    Err(e) => {
                        warn!(error = %e, "a leader job ended abnormally");
                        running.casting = None;
                        Wake::Other
                    }
                },
                () = sleep_until(deadline) => Wake::Other,
            };
            match wake {
                Wake::Cancelled => return Ok(()),
                Wake::Heartbeat => running.round(&inputs).await,
                // Ballots are decided on the newest view, and chain work goes on as soon as the step
                // before it is done: an election does not wait a heartbeat per read.
                Wake::Chain => running.decide_ballot(&inputs),
                Wake::Datagram(bytes, from) => running.on_datagram(&bytes, from, &inputs).await,
                Wake::Job(job) => {
                    running.job_done(job);
                    running.decide_ballot(&inputs);
                }
                Wake::Other => {}
            }
            running.decide_claim(&inputs, Instant::now());
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
}

/// The next datagram on the heartbeat socket; never, without one.
async fn recv(socket: Option<&Bound>) -> Option<(Vec<u8>, SocketAddr)> {
    let Some(b) = socket else {
        return std::future::pending().await;
    };
    // Room for one byte more than a heartbeat, so that an over-long datagram is seen as such.
    let mut buf = [0u8; heartbeat::LEN + 1];
    let (n, from) = b.socket.recv_from(&mut buf).await.ok()?;
    Some((buf[..n].to_vec(), from))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Binds the heartbeat socket to `addr` on `ifname` only: a datagram that claims an overlay source but
/// arrives on another interface (spoofed from the LAN) never reaches it.
fn bind(addr: Ipv4Addr, ifname: &str) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, setsockopt, socket, sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(ifname))?;
    nix::sys::socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(addr, heartbeat::PORT)),
    )?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// What this node knows now, read off its inputs.
struct Now<'a> {
    view: Option<&'a ChainView>,
    chain: &'a ChainState,
    health: HealthSignal,
    lapses_at: Option<Instant>,
}

impl Now<'_> {
    /// This node's seat, while it has a record.
    fn own(&self) -> Option<u64> {
        let view = self.view?;
        self.chain
            .seat
            .token()
            .filter(|t| view.records.contains_key(t))
    }

    fn registered(&self) -> Vec<u64> {
        self.view
            .map(|v| v.records.keys().copied().collect())
            .unwrap_or_default()
    }

    fn view_key(&self) -> View {
        View {
            leader: self.view.and_then(|v| v.leader),
            term: self.view.map_or(0, |v| v.leader_term),
        }
    }
}

fn now_of<'a>(inputs: &Inputs, chain: &'a ChainState, at: Instant) -> Now<'a> {
    let app = inputs.app_health.borrow().clone();
    let check = inputs.check.borrow().clone();
    Now {
        view: chain.view.as_deref(),
        chain,
        health: HealthSignal::of(app.as_ref(), check.as_ref(), at),
        lapses_at: HealthSignal::lapses_at(app.as_ref(), at),
    }
}

impl Running {
    fn new(task: LeaderTask) -> Self {
        // Answers to an earlier run's pings must not match this run's: start the nonces anywhere.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Self {
            task,
            state: LeaderState::default(),
            cluster: None,
            vote_known: false,
            sightings: BTreeMap::new(),
            last_pong: BTreeMap::new(),
            pinged_since: BTreeMap::new(),
            leaderless_since: None,
            quiet_until: None,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(60)),
            jobs: JoinSet::new(),
            casting: None,
            socket: None,
            sent: BTreeMap::new(),
            next_nonce: seed,
            view: View {
                leader: None,
                term: 0,
            },
            support: BTreeMap::new(),
            bind_warned: false,
        }
    }

    /// The facts the lease is decided on.
    fn lease_facts<'a>(
        &'a self,
        now: &'a Now<'_>,
        registered: &'a [u64],
        at: Instant,
    ) -> lease::Facts<'a> {
        lease::Facts {
            own: now.own(),
            leader: now.view.and_then(|v| v.leader),
            registered,
            confirmed_at: now.chain.confirmed_at.filter(|_| !now.chain.from_cache),
            unhealthy: (!now.health.healthy)
                .then(|| now.health.reasons.first().map_or("", String::as_str)),
            health_lapses_at: now.lapses_at,
            support: &self.support,
            timing: self.task.timing,
            now: at,
        }
    }

    /// When the verdict may change by itself: the claim or the view's confirmation runs out, or the
    /// application's health report lapses.
    fn next_change(&self, inputs: &Inputs) -> Option<Instant> {
        let now = Instant::now();
        let lease = self.task.timing.lease;
        let chain = inputs.chain.borrow();
        [
            self.state.claim.until(),
            chain.confirmed_at.map(|t| t + lease),
            inputs
                .app_health
                .borrow()
                .as_ref()
                .and_then(|r| r.expires_at),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    }

    /// Works out whether this node leads now, logging a change.
    fn decide_claim(&mut self, inputs: &Inputs, at: Instant) {
        let chain = inputs.chain.borrow().clone();
        let now = now_of(inputs, &chain, at);
        self.follow_view(now.view_key(), at);
        let registered = now.registered();
        let claim = lease::claim(&self.lease_facts(&now, &registered, at));
        let was = &self.state.claim;
        match (was, &claim) {
            (Claim::Leads { .. }, Claim::Leads { .. }) => {}
            (_, Claim::Leads { .. }) => info!(
                seat = ?now.own(),
                term = self.view.term,
                "this node leads, under its lease"
            ),
            (Claim::Leads { .. }, Claim::Declines(why)) => {
                self.state.counters.stepdowns = self.state.counters.stepdowns.saturating_add(1);
                let view_age = chain.confirmed_at.map(|t| at.saturating_duration_since(t));
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
        self.state.health = now.health;
        // Answered lately; or not, once asked for long enough; unknown before that.
        let window = self.task.timing.heartbeat * UNREACHABLE_AFTER;
        self.state.answering = self
            .pinged_since
            .iter()
            .filter_map(|(seat, since)| {
                let answered = self
                    .last_pong
                    .get(seat)
                    .is_some_and(|t| at.saturating_duration_since(*t) < window);
                let asked_long_enough = at.saturating_duration_since(*since) >= window;
                (answered || asked_long_enough).then_some((*seat, answered))
            })
            .collect();
    }

    /// Confirmations count only under the view they were given in: a new leader or term starts afresh.
    fn follow_view(&mut self, view: View, at: Instant) {
        if view == self.view {
            return;
        }
        debug!(?view, was = ?self.view, "the leader or its term changed");
        self.view = view;
        self.support.clear();
        self.state.leader_confirmed_at = None;
        match view.leader {
            Some(_) => self.leaderless_since = None,
            None => {
                self.leaderless_since.get_or_insert(at);
            }
        }
    }

    /// The seats this node pings: every other registered seat if the contract names it leader, else the
    /// leader and its vote's target.
    fn targets(&self, own: u64, registered: &[u64]) -> Vec<u64> {
        match self.view.leader == Some(own) {
            true => registered.iter().copied().filter(|s| *s != own).collect(),
            false => election::to_watch(Some(own), self.view.leader, self.state.vote),
        }
    }

    /// One heartbeat: pings out, stale bookkeeping dropped, and this node's ballot decided.
    async fn round(&mut self, inputs: &Inputs) {
        self.heartbeat(inputs).await;
        self.decide_ballot(inputs);
    }

    /// Pings out, and what no longer needs watching dropped.
    async fn heartbeat(&mut self, inputs: &Inputs) {
        let at = Instant::now();
        let chain = inputs.chain.borrow().clone();
        let mesh = inputs.mesh.borrow().clone();
        let now = now_of(inputs, &chain, at);
        self.follow_view(now.view_key(), at);
        let registered = now.registered();
        let lease = self.task.timing.lease;
        self.sent
            .retain(|_, (_, t)| at.saturating_duration_since(*t) < lease);
        self.support.retain(|seat, _| registered.contains(seat));
        if let (Some(own), true) = (now.own(), self.task.heartbeats) {
            self.ensure_socket(own, now.view, &mesh);
        }
        let watched = election::silence_counted(
            now.own(),
            self.socket.is_some(),
            self.view.leader,
            self.state.vote,
        );
        self.sightings.retain(|seat, _| watched.contains(seat));
        for seat in &watched {
            self.sightings
                .entry(*seat)
                .or_insert_with(|| Sighting::new(at));
        }
        if let Some(own) = now.own() {
            let targets = self.targets(own, &registered);
            self.pinged_since.retain(|s, _| targets.contains(s));
            self.last_pong.retain(|s, _| targets.contains(s));
            for seat in &targets {
                self.pinged_since.entry(*seat).or_insert(at);
            }
            if self.task.heartbeats {
                self.ping(own, &targets, &now, &registered, at).await;
            }
        } else {
            self.pinged_since.clear();
            self.last_pong.clear();
        }
    }

    /// Binds the heartbeat socket once this node has an overlay address on an interface, and again when
    /// either changes.
    fn ensure_socket(&mut self, own: u64, view: Option<&ChainView>, mesh: &MeshState) {
        let (Some(addr), Some(device)) = (view.and_then(|v| v.prefix().address(own)), &mesh.device)
        else {
            self.socket = None;
            return;
        };
        let ifindex = nix::net::if_::if_nametoindex(device.ifname.as_str()).unwrap_or(0);
        if self
            .socket
            .as_ref()
            .is_some_and(|b| b.addr == addr && b.ifname == device.ifname && b.ifindex == ifindex)
        {
            return;
        }
        // The old one first: it may hold the very address and port.
        self.socket = None;
        match bind(addr, &device.ifname) {
            Ok(socket) => {
                info!(%addr, port = heartbeat::PORT, ifname = %device.ifname, "heartbeats on the overlay");
                self.bind_warned = false;
                self.socket = Some(Bound {
                    socket,
                    addr,
                    ifname: device.ifname.clone(),
                    ifindex,
                });
            }
            // The address may not be on the interface yet: the next heartbeat tries again.
            Err(e) if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) => {
                debug!(%addr, error = %e, "cannot bind the heartbeat socket yet");
            }
            Err(e) => {
                if !self.bind_warned {
                    warn!(
                        %addr,
                        port = heartbeat::PORT,
                        error = %e,
                        "cannot bind the leader's heartbeat socket: without it this node can neither lead nor be heard by the leader. Is another process using UDP {} on this address?",
                        heartbeat::PORT
                    );
                    self.bind_warned = true;
                }
            }
        }
    }

    /// What this node says of itself in a heartbeat.
    fn me(&self, own: u64, now: &Now<'_>, registered: &[u64], at: Instant) -> Heartbeat {
        let facts = self.lease_facts(now, registered, at);
        Heartbeat {
            kind: Kind::Ping,
            seat: own,
            leader: self.view.leader,
            term: self.view.term,
            fit: lease::fit(&facts),
            leads: matches!(lease::claim(&facts), Claim::Leads { .. }),
            supports: false,
            nonce: 0,
        }
    }

    async fn ping(
        &mut self,
        own: u64,
        targets: &[u64],
        now: &Now<'_>,
        registered: &[u64],
        at: Instant,
    ) {
        let (Some(bound), Some(view)) = (&self.socket, now.view) else {
            return;
        };
        let me = self.me(own, now, registered, at);
        for seat in targets {
            let Some(ip) = view.prefix().address(*seat) else {
                continue;
            };
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            let ping = Heartbeat { nonce, ..me };
            self.sent.insert(nonce, (*seat, at));
            // A peer not configured yet, or a full buffer: the next heartbeat goes out anyway.
            if let Err(e) = bound
                .socket
                .send_to(&ping.encode(), SocketAddrV4::new(ip, heartbeat::PORT))
                .await
            {
                debug!(seat, error = %e, "a heartbeat could not be sent");
            }
        }
    }

    /// A datagram on the heartbeat socket: answered if a ping, taken in if a pong.
    async fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr, inputs: &Inputs) {
        let at = Instant::now();
        let chain = inputs.chain.borrow().clone();
        let now = now_of(inputs, &chain, at);
        self.follow_view(now.view_key(), at);
        let hb = match Heartbeat::decode(bytes) {
            Ok(hb) => hb,
            Err(why) => return self.refuse(from, &format!("malformed: {why}")),
        };
        let Some(view) = now.view else { return };
        let expected = view
            .records
            .contains_key(&hb.seat)
            .then(|| view.prefix().address(hb.seat))
            .flatten();
        if expected.map(std::net::IpAddr::V4) != Some(from.ip()) {
            return self.refuse(
                from,
                &format!(
                    "it names seat {}, whose overlay address it does not come from",
                    hb.seat
                ),
            );
        }
        if heartbeat::answers(&hb, self.view)
            && let Some(s) = self.sightings.get_mut(&hb.seat)
        {
            s.seen(at);
        }
        match hb.kind {
            Kind::Ping => self.answer(&hb, from, &now, at).await,
            Kind::Pong => self.take_pong(&hb, now.own()),
        }
    }

    fn refuse(&mut self, from: SocketAddr, why: &str) {
        let c = &mut self.state.counters;
        c.heartbeats_refused = c.heartbeats_refused.saturating_add(1);
        debug!(%from, reason = why, "refusing a heartbeat");
    }

    async fn answer(&mut self, ping: &Heartbeat, from: SocketAddr, now: &Now<'_>, at: Instant) {
        let Some(own) = now.own() else { return };
        let registered = now.registered();
        let voting_against: Vec<u64> = self
            .state
            .vote
            .into_iter()
            .chain(match self.casting {
                Some(Ballot::Vote { target }) => Some(target),
                _ => None,
            })
            .collect();
        let pong = Heartbeat {
            kind: Kind::Pong,
            supports: heartbeat::supports(ping, self.view, &voting_against),
            nonce: ping.nonce,
            ..self.me(own, now, &registered, at)
        };
        if let Some(bound) = &self.socket
            && let Err(e) = bound.socket.send_to(&pong.encode(), from).await
        {
            debug!(seat = ping.seat, error = %e, "a heartbeat could not be answered");
        }
    }

    fn take_pong(&mut self, pong: &Heartbeat, own: Option<u64>) {
        let Some((to, sent_at)) = self.sent.get(&pong.nonce).copied() else {
            return;
        };
        if to != pong.seat {
            return;
        }
        let latest = |t: &mut Instant| *t = (*t).max(sent_at);
        self.last_pong
            .entry(pong.seat)
            .and_modify(|t| *t = (*t).max(Instant::now()))
            .or_insert_with(Instant::now);
        if let Some(own) = own.filter(|o| self.view.leader == Some(*o)) {
            if heartbeat::confirms(pong, own, self.view.term) {
                self.support
                    .entry(pong.seat)
                    .and_modify(latest)
                    .or_insert(sent_at);
            } else if self.support.get(&pong.seat).is_some_and(|t| *t <= sent_at) {
                // A newer answer that no longer confirms this node outweighs an older one that did.
                self.support.remove(&pong.seat);
            }
        }
        if self.view.leader == Some(pong.seat)
            && pong.leads
            && pong.leader == Some(pong.seat)
            && pong.term == self.view.term
        {
            let confirmed = self.state.leader_confirmed_at.get_or_insert(sent_at);
            latest(confirmed);
        }
    }

    /// [`Running::elect`] on what is known now, if this node takes part.
    fn decide_ballot(&mut self, inputs: &Inputs) {
        let at = Instant::now();
        let chain = inputs.chain.borrow().clone();
        let now = now_of(inputs, &chain, at);
        self.follow_view(now.view_key(), at);
        if let Some(own) = now.own()
            && self.task.ballots
            && !chain.from_cache
        {
            let registered = now.registered();
            self.elect(own, &now, &registered, at);
        }
    }

    /// Decides this node's ballot, and starts the chain work it needs.
    fn elect(&mut self, own: u64, now: &Now<'_>, registered: &[u64], at: Instant) {
        if !self.jobs.is_empty() {
            return;
        }
        let quiet = self.quiet_until.is_some_and(|t| at < t);
        let Some(cluster) = self.cluster.clone() else {
            if !quiet {
                let (url, contract) = (self.task.rpc_url.clone(), self.task.contract);
                self.jobs
                    .spawn(async move { Job::Connected(Cluster::connect(url, contract).await) });
            }
            return;
        };
        if !self.vote_known {
            if !quiet {
                self.jobs
                    .spawn(async move { Job::VoteRead(cluster.vote_of(own).await) });
            }
            return;
        }
        let facts = Facts {
            own: Some(own),
            leader: self.view.leader,
            leaderless_since: self.leaderless_since,
            registered,
            vote: self.state.vote,
            sightings: &self.sightings,
            healthy: now.health.healthy,
            timeout: self.task.timing.timeout,
            now: at,
        };
        let Some((ballot, reason)) = election::decide(&facts) else {
            return;
        };
        if quiet {
            debug!(%ballot, %reason, "a ballot is due, but waiting out the pause after the last one");
            return;
        }
        info!(seat = own, %ballot, %reason, "casting a ballot");
        self.casting = Some(ballot);
        let identity = Arc::clone(&self.task.identity);
        let tx_key = self.task.tx_key.clone();
        self.jobs.spawn(async move {
            let cast = cluster
                .cast(&identity.node, tx_key.as_ref(), own, ballot)
                .await;
            Job::Cast(ballot, cast)
        });
    }

    fn job_done(&mut self, job: Job) {
        match job {
            Job::Connected(Ok(c)) => self.cluster = Some(Arc::new(c)),
            Job::Connected(Err(e)) => self.failed("connecting the election client", e),
            Job::VoteRead(Ok(vote)) => {
                self.state.vote = vote;
                self.vote_known = true;
            }
            Job::VoteRead(Err(e)) => self.failed("reading this seat's vote", e),
            Job::Cast(ballot, result) => {
                self.casting = None;
                self.cast_done(ballot, result);
            }
        }
    }

    fn cast_done(&mut self, ballot: Ballot, result: Result<Cast, ElectionError>) {
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
                info!("another node elected a leader first: {revert}");
            }
            Err(e) => {
                // What the chain holds may differ from what was believed (another node elected first, the
                // vote went with a cleared record): read it again before the next ballot.
                self.vote_known = false;
                let delay = self.backoff.next_delay();
                self.quiet_until = Some(Instant::now() + delay);
                self.state.counters.failures = self.state.counters.failures.saturating_add(1);
                let fault = Fault::new(format!("{ballot} failed"), e);
                warn!(%ballot, error = %fault.render(&self.task.rpc), retry_in = ?delay, "the ballot failed");
                self.state.error = Some(fault);
            }
        }
    }

    /// A read failed: shown in the state and logged at debug level only, since the chain task already
    /// warns when the RPC is down; a ballot's failure is what this task warns of.
    fn failed(&mut self, doing: &'static str, e: ChainError) {
        self.cluster = None;
        let delay = self.backoff.next_delay();
        self.quiet_until = Some(Instant::now() + delay);
        let fault = Fault::new(doing, e);
        debug!(error = %fault.render(&self.task.rpc), retry_in = ?delay, "the election client failed");
        self.state.error = Some(fault);
    }
}
