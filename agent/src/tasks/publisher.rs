//! The publisher: renders what the other tasks publish into the snapshot the API serves
//! ([`crate::snapshot`]), and tells the rest of the CVM when the peer set or the leadership changes
//! ([`crate::hooks`]). It renders again when the leader's lease or its confirmation runs out, and when a
//! peer's silence reaches the peer timeout, so that event streams and hooks hear of that as of any other
//! change.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_api::{CheckSignal, Leader, Peer, Snapshot};
use mesh_chain::roster::Members;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

use crate::config::{ModeArg, RunArgs};
use crate::hooks;
use crate::leadership::state::LeaderState;
use crate::snapshot::{self, AgentFacts, Clock, NodeFacts};
use crate::state::{ChainState, MeshState, RegState};
use crate::tasks::Shared;

/// How often the snapshot is rendered while nothing is published: uptime and handshake ages move on.
const REFRESH: Duration = Duration::from_secs(1);

/// `--on-change`, `--on-leader-change`, `--hosts-file`: who hears of changes.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub on_change: Option<String>,
    /// Run with `/v1/leader` as JSON on stdin whenever what it says changes (not its age).
    pub on_leader_change: Option<String>,
    pub timeout: Duration,
    pub hosts_file: Option<PathBuf>,
    pub hosts_suffix: String,
}

/// What the publisher needs to know.
pub struct Publisher {
    pub agent: AgentFacts,
    pub node: NodeFacts,
    pub started: Instant,
    pub hooks: Hooks,
    /// The forwarded ports' counters, shown in the status.
    pub ports: Vec<leader_port::Stats>,
    /// What each RPC provider does, read live at each render: a provider that hangs is named while the
    /// chain task still waits on it.
    pub providers: mesh_chain::quorum::QuorumWatch,
}

impl Publisher {
    /// The publisher, showing `agent`'s settings, with the hooks and hosts file the flags name.
    pub fn from_args(args: &RunArgs, shared: &Shared, agent: AgentFacts) -> Self {
        let wireguard = args.mode == ModeArg::Wireguard;
        let identity = &shared.identity;
        Self {
            node: NodeFacts {
                instance_id: identity.instance_id().to_owned(),
                app_id: identity.node.app_id,
                wg_public_key: wireguard.then(|| identity.wg_public_key()),
                endpoint: args.endpoint.map(|e| e.to_string()),
                gateway_url: args.gateway_url(identity.instance_id()),
            },
            agent,
            started: Instant::now(),
            ports: Vec::new(),
            providers: shared.cluster.rpcs().watch().clone(),
            hooks: Hooks {
                on_change: args.on_change.clone(),
                on_leader_change: args.on_leader_change.clone(),
                timeout: Duration::from_secs(args.hook_timeout_secs),
                hosts_file: args.hosts_file.clone(),
                hosts_suffix: args.hosts_suffix.clone(),
            },
        }
    }
}

/// What the tasks before the publisher send it.
pub struct Inputs {
    pub chain: watch::Receiver<ChainState>,
    pub reg: watch::Receiver<RegState>,
    pub mesh: watch::Receiver<MeshState>,
    pub leader: watch::Receiver<LeaderState>,
    pub check: watch::Receiver<Option<CheckSignal>>,
    /// dstack's guest agent, while it does not answer ([`crate::tasks::dstack`]).
    pub dstack: watch::Receiver<Option<crate::state::Failing>>,
}

impl Publisher {
    /// Runs until `cancel` fires.
    ///
    /// # Errors
    /// None yet: a failing hook is logged.
    pub async fn run(
        self,
        mut inputs: Inputs,
        api: watch::Sender<Snapshot>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut published: Vec<Peer> = Vec::new();
        let mut leadership: Option<String> = None;
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Hooks still running; they stop with the publisher.
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let mut chain = inputs.chain.borrow_and_update().clone();
            chain.rpcs = self.providers.report();
            let reg = inputs.reg.borrow_and_update().clone();
            let mesh = inputs.mesh.borrow_and_update().clone();
            let leader = inputs.leader.borrow_and_update().clone();
            let check = inputs.check.borrow_and_update().clone();
            let dstack = inputs.dstack.borrow_and_update().clone();
            let mut snapshot = snapshot::render(
                &self.agent,
                &self.node,
                snapshot::Published {
                    chain: &chain,
                    reg: &reg,
                    mesh: &mesh,
                    leader: &leader,
                    check: check.as_ref(),
                    dstack: dstack.as_ref(),
                },
                self.started.elapsed(),
                Clock::now(),
            );
            snapshot.status.ports = self
                .ports
                .iter()
                .map(leader_port::Stats::snapshot)
                .collect();
            // Not while the list is not known yet: the hook sees what the event streams send.
            let changed =
                snapshot.peers_known && mesh_api::peers_changed(&published, &snapshot.peers);
            if changed {
                published.clone_from(&snapshot.peers);
            }
            let now = Instant::now();
            let served = snapshot.leader.as_of(now);
            let key = format!("{:?}", served.key());
            // Not at the first render, which only says that nothing is known yet.
            let leader_changed = leadership.as_ref().is_some_and(|k| *k != key);
            leadership = Some(key);
            let wake = [
                snapshot.leader.changes_at(now),
                snapshot::health_changes_at(&mesh, now),
            ]
            .into_iter()
            .flatten()
            .min();
            api.send_replace(snapshot);
            if changed {
                self.hooks.run(&published, &mesh.members, &mut running);
            }
            if leader_changed {
                self.hooks.leader_changed(&served, &mut running);
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                () = until(wake) => {}
                Ok(()) = inputs.chain.changed() => {}
                Ok(()) = inputs.reg.changed() => {}
                Ok(()) = inputs.mesh.changed() => {}
                Ok(()) = inputs.leader.changed() => {}
                Ok(()) = inputs.check.changed() => {}
                Ok(()) = inputs.dstack.changed() => {}
            }
        }
    }
}

/// Sleeps until `at`; forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Runs `cmd` with `input` in `running`, bounded by `limit`; a failure is logged as `what`.
fn spawn_hook(
    running: &mut JoinSet<()>,
    cmd: &str,
    input: Vec<u8>,
    limit: Duration,
    what: &'static str,
) {
    let cmd = cmd.to_owned();
    // In the background: a slow hook must not hold up the snapshot; it is bounded instead.
    running.spawn(
        async move {
            if let Err(e) = hooks::run(&cmd, &input, limit).await {
                warn!(hook = %cmd, error = %e, "the {what} hook failed");
            }
        }
        .in_current_span(),
    );
}

impl Hooks {
    fn limit(&self) -> Duration {
        self.timeout.max(Duration::from_secs(1))
    }

    fn leader_changed(&self, leader: &Leader, running: &mut JoinSet<()>) {
        let Some(cmd) = &self.on_leader_change else {
            return;
        };
        match serde_json::to_vec(leader) {
            Ok(json) => spawn_hook(running, cmd, json, self.limit(), "on-leader-change"),
            Err(e) => warn!(error = %e, "cannot encode the leader for the hook"),
        }
    }

    fn run(&self, peers: &[Peer], members: &Members, running: &mut JoinSet<()>) {
        if let Some(path) = &self.hosts_file
            && let Err(e) = hooks::write_hosts(path, members, &self.hosts_suffix)
        {
            warn!(path = %path.display(), error = %format!("{e:#}"), "cannot update the hosts file");
        }
        if let Some(cmd) = &self.on_change {
            match serde_json::to_vec(peers) {
                Ok(json) => spawn_hook(running, cmd, json, self.limit(), "on-change"),
                Err(e) => warn!(error = %e, "cannot encode the peer list for the hook"),
            }
        }
    }
}
