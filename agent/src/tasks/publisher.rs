//! The publisher: renders what the other tasks publish into the snapshot the API serves
//! ([`crate::snapshot`]), and tells the rest of the CVM when the peer set or the leadership changes
//! ([`crate::hooks`]). It renders again when the leader's lease or its confirmation runs out, and when a
//! peer's silence reaches the peer timeout, so that event streams and hooks hear of that as of any other
//! change.

use std::path::PathBuf;
use std::sync::Arc;
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
        // The peers of the last render, and whether an input moved since.
        let mut kept = Kept::default();
        let mut moved = true;
        loop {
            while running.try_join_next().is_some() {}
            let mut chain = inputs.chain.borrow_and_update().clone();
            chain.rpcs = self.providers.report();
            let reg = inputs.reg.borrow_and_update().clone();
            let mesh = inputs.mesh.borrow_and_update().clone();
            let leader = inputs.leader.borrow_and_update().clone();
            let check = inputs.check.borrow_and_update().clone();
            let dstack = inputs.dstack.borrow_and_update().clone();
            let tasks = snapshot::Published {
                chain: &chain,
                reg: &reg,
                mesh: &mesh,
                leader: &leader,
                check: check.as_ref(),
                dstack: dstack.as_ref(),
            };
            let clock = Clock::now();
            let (peers, reused) = match kept.reusable(moved, clock.mono) {
                Some(peers) => (peers, true),
                None => {
                    let peers = snapshot::peers(&self.agent, &self.node, tasks, clock);
                    let health = snapshot::health_changes_at(&mesh, clock.mono);
                    kept = Kept::of(Arc::clone(&peers), health);
                    (peers, false)
                }
            };
            let mut snapshot = snapshot::render_with(
                &self.agent,
                &self.node,
                tasks,
                peers,
                self.started.elapsed(),
                clock,
            );
            snapshot.status.ports = self
                .ports
                .iter()
                .map(leader_port::Stats::snapshot)
                .collect();
            // Not while the list is not known yet: the hook sees what the event streams send. A list kept
            // from the last render was compared then.
            let changed = !reused
                && snapshot.peers_known
                && mesh_api::peers_changed(&published, &snapshot.peers);
            if changed {
                published = snapshot.peers.to_vec();
            }
            let now = Instant::now();
            let served = snapshot.leader.as_of(now);
            let key = format!("{:?}", served.key());
            // Not at the first render, which only says that nothing is known yet.
            let leader_changed = leadership.as_ref().is_some_and(|k| *k != key);
            leadership = Some(key);
            let wake = [snapshot.leader.changes_at(now), kept.health]
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
            moved = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => false,
                () = until(wake) => false,
                Ok(()) = inputs.chain.changed() => true,
                Ok(()) = inputs.reg.changed() => true,
                Ok(()) = inputs.mesh.changed() => true,
                Ok(()) = inputs.leader.changed() => true,
                Ok(()) = inputs.check.changed() => true,
                Ok(()) = inputs.dstack.changed() => true,
            };
        }
    }
}

/// The peers of the last render, and when one of them will be shown unhealthy unless heard from again.
#[derive(Default)]
struct Kept {
    peers: Option<Arc<[Peer]>>,
    health: Option<Instant>,
}

impl Kept {
    fn of(peers: Arc<[Peer]>, health: Option<Instant>) -> Self {
        Self {
            peers: Some(peers),
            health,
        }
    }

    /// The peers again, when a render at `now` would give the same: no input `moved` since, and no peer's
    /// silence has reached its bound. The list is a pure function of the inputs and of which peers are
    /// healthy, so a render that only uptime and the chain's ages call for need not rebuild a thousand peers.
    fn reusable(&self, moved: bool, now: Instant) -> Option<Arc<[Peer]>> {
        let peers = self.peers.as_ref().filter(|_| !moved)?;
        self.health
            .is_none_or(|at| now < at)
            .then(|| Arc::clone(peers))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn list() -> Arc<[Peer]> {
        Arc::from([])
    }

    /// A render that only the refresh tick calls for takes the last list; one after an input moved, or once
    /// a peer's silence reached its bound, does not.
    #[test]
    fn the_peers_are_kept_until_an_input_moves_or_a_peer_falls_silent() {
        let t0 = Instant::now();
        let silent_at = t0 + Duration::from_secs(3);
        let kept = Kept::of(list(), Some(silent_at));
        assert!(kept.reusable(false, t0 + Duration::from_secs(1)).is_some());
        assert!(
            kept.reusable(true, t0 + Duration::from_secs(1)).is_none(),
            "an input moved"
        );
        assert!(
            kept.reusable(false, silent_at).is_none(),
            "a peer is shown unhealthy from then on"
        );
        let nobody_heard = Kept::of(list(), None);
        assert!(
            nobody_heard
                .reusable(false, t0 + Duration::from_secs(3600))
                .is_some()
        );
        assert!(
            Kept::default().reusable(false, t0).is_none(),
            "nothing rendered yet"
        );
    }
}
