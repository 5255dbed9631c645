//! The leader task: drives this node's leadership machine ([`crate::leadership::machine`]) with what the
//! machine leaves to it: the heartbeat socket, the chain client and its jobs, the clock, and the `select!`
//! over its inputs. It decides nothing itself; it publishes the machine's [`LeaderState`].

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use alloy::signers::local::PrivateKeySigner;
use mesh_api::{AppReport, CheckSignal, Command};
use mesh_chain::cluster::Cluster;
use mesh_chain::redact::RedactedUrl;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Level, debug, info, warn};

use crate::attestation::Attested;
use crate::config::{ModeArg, RunArgs};
use crate::leadership::heartbeat;
use crate::leadership::lease::Timing;
use crate::leadership::machine::{
    self, Chain, HandOffCause, HandOffRefused, Job, JobDone, Machine, SocketWant,
};
use crate::leadership::state::LeaderState;
use crate::node::NodeIdentity;
use crate::state::{ChainState, MeshState};
use crate::tasks::{Shared, sleep_until};

/// What the leader task needs to know.
pub struct LeaderTask {
    /// Where ballots are read and sent: through every provider.
    pub cluster: Cluster,
    pub rpc: RedactedUrl,
    pub identity: Arc<NodeIdentity>,
    pub tx_key: Option<PrivateKeySigner>,
    /// Heartbeats over the mesh: off in TLS mode, where there is no mesh (such a node leads only a cluster
    /// of one).
    pub heartbeats: bool,
    /// Votes and elections: off in TLS mode and with `--no-failover`.
    pub ballots: bool,
}

impl LeaderTask {
    /// The leader task: heartbeats in WireGuard mode, and ballots too unless `--no-failover`.
    pub fn from_args(args: &RunArgs, shared: &Shared) -> Self {
        let wireguard = args.mode == ModeArg::Wireguard;
        Self {
            cluster: shared.cluster.clone(),
            rpc: shared.rpc.clone(),
            identity: Arc::clone(&shared.identity),
            tx_key: shared.tx_key.clone(),
            heartbeats: wireguard,
            ballots: wireguard && !args.no_failover,
        }
    }
}

/// What the leader task reads.
pub struct Inputs {
    pub chain: watch::Receiver<ChainState>,
    pub mesh: watch::Receiver<MeshState>,
    /// The application's last health report (`POST /v1/health`).
    pub app_health: watch::Receiver<Option<AppReport>>,
    /// The agent's own health check, if it runs one.
    pub check: watch::Receiver<Option<CheckSignal>>,
    /// What applications ask (a hand-off, a drain), and the stop.
    pub commands: mpsc::Receiver<Command>,
}

/// The heartbeat socket, bound to this node's overlay address on the mesh interface.
struct Bound {
    socket: UdpSocket,
    want: SocketWant,
    /// The interface's index when bound: `SO_BINDTODEVICE` holds on to it, so an interface that was
    /// removed and created again under the same name needs a new socket.
    ifindex: u32,
}

/// What woke the loop.
enum Wake {
    Cancelled,
    Tick,
    Chain,
    Mesh,
    Health,
    Datagram(Vec<u8>, SocketAddr),
    Job(JobDone),
    Command(Command),
    Deadline,
}

/// The machine's jobs, done with the chain handle.
struct Jobs {
    running: JoinSet<JobDone>,
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
        // The timing is the chain task's to settle (the flag, or the chain's pace): nothing is confirmed,
        // voted or led before it is known, as every node must keep one timeout for the lease to be safe.
        let Some(timing) = cancel
            .run_until_cancelled(timing_of(&mut inputs.chain))
            .await
        else {
            return Ok(());
        };
        let mut tick = tokio::time::interval(timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Answers to an earlier run's pings must not match this run's: start the nonces anywhere.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        let config = machine::Config {
            timing,
            heartbeats: self.heartbeats,
            ballots: self.ballots,
        };
        let mut m = Machine::new(config, Instant::now(), seed);
        let mut socket: Option<Bound> = None;
        let mut bind_warned = false;
        let mut jobs = Jobs {
            running: JoinSet::new(),
        };
        let now = Instant::now();
        let ifname = inputs
            .mesh
            .borrow_and_update()
            .device
            .as_ref()
            .map(|d| d.ifname.clone());
        m.handle_device(now, ifname);
        let app = inputs.app_health.borrow_and_update().clone();
        let check = inputs.check.borrow_and_update().clone();
        m.handle_health(now, app, check);
        let mut wake = Wake::Chain;
        // The stop's answer, once this node can stop without costing a failover.
        let mut stopping: Option<oneshot::Sender<()>> = None;
        loop {
            let now = Instant::now();
            match wake {
                Wake::Cancelled => return Ok(()),
                Wake::Tick => m.handle_tick(now),
                Wake::Chain => {
                    let chain = chain_of(&inputs.chain.borrow_and_update());
                    m.handle_chain(now, chain);
                }
                Wake::Mesh => {
                    let ifname = inputs
                        .mesh
                        .borrow_and_update()
                        .device
                        .as_ref()
                        .map(|d| d.ifname.clone());
                    m.handle_device(now, ifname);
                }
                Wake::Health => {
                    let app = inputs.app_health.borrow_and_update().clone();
                    let check = inputs.check.borrow_and_update().clone();
                    m.handle_health(now, app, check);
                }
                Wake::Datagram(bytes, from) => m.handle_datagram(now, &bytes, from),
                Wake::Job(done) => m.handle_job(now, done),
                Wake::Command(cmd) => command(&mut m, now, cmd, &mut stopping),
                Wake::Deadline => m.handle_timeout(now),
            }
            if m.stop_ready()
                && let Some(reply) = stopping.take()
            {
                let _ = reply.send(());
            }
            let want = m.wanted_socket();
            if rebind(&mut socket, want.as_ref(), &mut bind_warned) {
                m.handle_socket(Instant::now(), socket.is_some());
            }
            // Published before any heartbeat goes out: a leader that releases its term stops saying it
            // leads before its farewell can free anyone to confirm its successor. Only a change: the
            // publisher renders a snapshot for each.
            out.send_if_modified(|published| {
                let changed = published != m.state();
                if changed {
                    published.clone_from(m.state());
                }
                changed
            });
            while let Some(t) = m.poll_transmit() {
                if let Some(b) = &socket
                    && let Err(e) = b.socket.send_to(&t.bytes, t.to).await
                {
                    // A peer not configured yet, or a full buffer: the next heartbeat goes out anyway.
                    debug!(to = %t.to, error = %e, "a heartbeat could not be sent");
                }
            }
            while let Some(job) = m.poll_job() {
                self.spawn(&mut jobs, job);
            }
            while let Some((level, fault)) = m.poll_fault() {
                let error = fault.render(&self.rpc);
                match level {
                    Level::WARN => warn!("{error}"),
                    Level::INFO => info!("{error}"),
                    _ => debug!("{error}"),
                }
            }
            let deadline = m
                .poll_timeout(Instant::now())
                .map(tokio::time::Instant::from_std);
            wake = tokio::select! {
                () = cancel.cancelled() => Wake::Cancelled,
                _ = tick.tick() => Wake::Tick,
                Ok(()) = inputs.chain.changed() => Wake::Chain,
                Ok(()) = inputs.mesh.changed() => Wake::Mesh,
                Ok(()) = inputs.app_health.changed() => Wake::Health,
                Ok(()) = inputs.check.changed() => Wake::Health,
                Some((bytes, from)) = recv(socket.as_ref()) => Wake::Datagram(bytes, from),
                Some(cmd) = inputs.commands.recv() => Wake::Command(cmd),
                Some(done) = jobs.running.join_next(), if !jobs.running.is_empty() => {
                    match done {
                        Ok(done) => Wake::Job(done),
                        Err(e) => {
                            warn!(error = %e, "a leader job ended abnormally");
                            Wake::Job(JobDone::Lost)
                        }
                    }
                }
                () = sleep_until(deadline) => Wake::Deadline,
            };
        }
    }

    /// Starts `job` beside the loop; its end wakes the loop.
    fn spawn(&self, jobs: &mut Jobs, job: Job) {
        let cluster = self.cluster.clone();
        let identity = Arc::clone(&self.identity);
        let tx_key = self.tx_key.clone();
        jobs.running.spawn(async move {
            match job {
                // The election contract, read once: the handle is made without I/O.
                Job::Connect => JobDone::Connected(cluster.election().await.map(|_| ())),
                Job::ReadVote { seat } => JobDone::VoteRead(cluster.vote_of(seat).await),
                Job::Cast { seat, ballot } => JobDone::Cast(
                    ballot,
                    cluster
                        .cast(&identity.node, tx_key.as_ref(), seat, ballot)
                        .await,
                ),
                Job::HandOff { seat, to } => JobDone::HandedOff(
                    to,
                    cluster
                        .hand_off(&identity.node, tx_key.as_ref(), seat, to)
                        .await,
                ),
            }
        });
    }
}

/// Does what an application asked, and answers it.
fn command(
    m: &mut Machine,
    now: Instant,
    cmd: Command,
    stopping: &mut Option<oneshot::Sender<()>>,
) {
    match cmd {
        Command::HandOff { to, reply } => {
            let r: Result<(u64, u64), HandOffRefused> =
                m.request_handoff(now, to, HandOffCause::Asked);
            let _ = reply.send(
                r.map(|(to, term)| {
                    format!("this node released term {term} and hands it to seat {to}")
                })
                .map_err(|e| e.to_string()),
            );
        }
        Command::Drain { on, reply } => {
            let handoff = m.set_draining(now, on);
            let said = match (on, handoff) {
                (false, _) => Ok("this node is no longer drained".to_owned()),
                (true, None) => Ok("this node is drained: replica ports leave it out".to_owned()),
                (true, Some(Ok((to, term)))) => Ok(format!(
                    "this node is drained: it released term {term} and hands it to seat {to}"
                )),
                (true, Some(Err(why))) => Ok(format!(
                    "this node is drained, but it leads and cannot hand off yet ({why}); it tries again each leader timeout"
                )),
            };
            let _ = reply.send(said);
        }
        Command::Stop { reply } => {
            m.stop(now);
            *stopping = Some(reply);
        }
    }
}

/// The leader's timing, once the chain task has settled it.
async fn timing_of(chain: &mut watch::Receiver<ChainState>) -> Timing {
    loop {
        if let Some(t) = chain.borrow_and_update().leader_timeout {
            return Timing::for_timeout(t);
        }
        if chain.changed().await.is_err() {
            // The chain task is gone: the agent is stopping.
            return std::future::pending().await;
        }
    }
}

/// What leadership needs of the chain task's state: this node's seat and how its peers judge it, the
/// leader and term, the seats this node accepts (with their overlay addresses) and those it refuses.
fn chain_of(state: &ChainState) -> Chain {
    let Some(view) = state.view.as_deref() else {
        return Chain::default();
    };
    let own = state.seat.token().filter(|t| view.records.contains_key(t));
    let refused_kind = |seat: u64| match state.attestations.get(&seat).map(AsRef::as_ref) {
        Some(Attested::Refused { kind, .. }) => Some((*kind).to_owned()),
        _ => None,
    };
    let registered: Vec<u64> = view.records.keys().copied().collect();
    let addresses = registered
        .iter()
        .filter_map(|s| Some((*s, view.prefix().address(*s)?)))
        .collect();
    Chain {
        own,
        own_refused: own.and_then(refused_kind),
        leader: view.leader,
        term: view.leader_term,
        refused: state
            .attestations
            .keys()
            .copied()
            .filter(|s| Some(*s) != own && refused_kind(*s).is_some())
            .collect(),
        registered,
        addresses,
        confirmed_at: state.confirmed_at,
        from_cache: state.from_cache,
        block: view.last_block,
        draining: view.draining.iter().copied().collect(),
    }
}

/// Binds (or drops) the heartbeat socket as `want` says, when it differs from what is bound: another
/// address or interface, or the same interface created again (a new index). Returns whether anything
/// changed.
fn rebind(socket: &mut Option<Bound>, want: Option<&SocketWant>, warned: &mut bool) -> bool {
    let Some(want) = want else {
        return socket.take().is_some();
    };
    let ifindex = nix::net::if_::if_nametoindex(want.ifname.as_str()).unwrap_or(0);
    if socket
        .as_ref()
        .is_some_and(|b| &b.want == want && b.ifindex == ifindex)
    {
        return false;
    }
    let had = socket.take().is_some();
    match bind(want.addr, &want.ifname) {
        Ok(s) => {
            info!(addr = %want.addr, port = heartbeat::PORT, ifname = %want.ifname, "heartbeats on the overlay");
            *warned = false;
            *socket = Some(Bound {
                socket: s,
                want: want.clone(),
                ifindex,
            });
            true
        }
        Err(e) if not_yet(&e) => {
            debug!(addr = %want.addr, error = %e, "cannot bind the heartbeat socket yet");
            had
        }
        Err(e) => {
            if !*warned {
                warn!(
                    addr = %want.addr,
                    port = heartbeat::PORT,
                    error = %e,
                    "cannot bind the leader's heartbeat socket: without it this node can neither lead nor be heard by the leader. Is another process using UDP {} on this address?",
                    heartbeat::PORT
                );
                *warned = true;
            }
            had
        }
    }
}

/// Whether a bind failed only because the interface (`ENODEV`, while the device is created or made
/// again) or its address (`EADDRNOTAVAIL`) is not there yet: the next input tries again, and nothing is
/// wrong to warn about.
fn not_yet(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EADDRNOTAVAIL | nix::libc::ENODEV)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_or_address_is_waited_for_and_a_port_in_use_is_not() {
        let errno = std::io::Error::from_raw_os_error;
        assert!(not_yet(&errno(nix::libc::ENODEV)));
        assert!(not_yet(&errno(nix::libc::EADDRNOTAVAIL)));
        assert!(!not_yet(&errno(nix::libc::EADDRINUSE)));
        assert!(!not_yet(&errno(nix::libc::EACCES)));
    }

    #[test]
    fn binding_on_an_interface_that_is_not_there_is_not_yet_an_error() {
        let e = bind(Ipv4Addr::LOCALHOST, "dm-absent0").expect_err("no such interface");
        assert!(
            not_yet(&e),
            "binding on a missing interface must be waited for, got {e}"
        );
    }
}
