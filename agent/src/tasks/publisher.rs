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

/// What the tasks published, as read for one render.
struct Values {
    chain: ChainState,
    reg: RegState,
    mesh: MeshState,
    leader: LeaderState,
    check: Option<CheckSignal>,
    dstack: Option<crate::state::Failing>,
}

impl Inputs {
    /// Each input's value, and whether any of them is one not seen before. The loop needs this besides
    /// knowing which branch woke it: a change can be ready in the same poll as the refresh tick, and
    /// `select!` may take the tick. The branch that did wake it has marked its change seen already, so
    /// neither test alone is enough.
    fn read(&mut self) -> (Values, bool) {
        let mut unseen = false;
        let mut take = |new: bool| unseen |= new;
        let values = Values {
            chain: latest(&mut self.chain, &mut take),
            reg: latest(&mut self.reg, &mut take),
            mesh: latest(&mut self.mesh, &mut take),
            leader: latest(&mut self.leader, &mut take),
            check: latest(&mut self.check, &mut take),
            dstack: latest(&mut self.dstack, &mut take),
        };
        (values, unseen)
    }
}

/// `rx`'s value, marked seen; `unseen` hears whether it was new.
fn latest<T: Clone>(rx: &mut watch::Receiver<T>, unseen: &mut impl FnMut(bool)) -> T {
    let value = rx.borrow_and_update();
    unseen(value.has_changed());
    value.clone()
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
        // The peers of the last render, and whether an input's change woke the loop since.
        let mut kept = Kept::default();
        let mut woken_by_input = true;
        loop {
            while running.try_join_next().is_some() {}
            let (mut values, unseen) = inputs.read();
            values.chain.rpcs = self.providers.report();
            let Values {
                chain,
                reg,
                mesh,
                leader,
                check,
                dstack,
            } = values;
            let tasks = snapshot::Published {
                chain: &chain,
                reg: &reg,
                mesh: &mesh,
                leader: &leader,
                check: check.as_ref(),
                dstack: dstack.as_ref(),
            };
            let clock = Clock::now();
            let (peers, reused) = match kept.reusable(woken_by_input || unseen, clock.mono) {
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
            woken_by_input = tokio::select! {
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

    /// The inputs, and the senders the tasks would hold.
    fn inputs() -> (Inputs, watch::Sender<MeshState>, watch::Sender<RegState>) {
        let (mesh_tx, mesh) = watch::channel(MeshState::default());
        let (reg_tx, reg) = watch::channel(RegState::default());
        let inputs = Inputs {
            chain: watch::channel(ChainState::default()).1,
            reg,
            mesh,
            leader: watch::channel(LeaderState::default()).1,
            check: watch::channel(None).1,
            dstack: watch::channel(None).1,
        };
        (inputs, mesh_tx, reg_tx)
    }

    /// The tick and a task's new state ready in the same poll: `select!` takes the tick, and the read after
    /// it must still count the state as new, or the last render's peers would be served beside it.
    #[test]
    fn a_change_read_after_the_tick_woke_the_loop_counts_as_new() {
        let (mut inputs, mesh_tx, _reg_tx) = inputs();
        assert!(!inputs.read().1, "nothing sent yet");
        mesh_tx.send_modify(|m| m.known = true);
        let (values, unseen) = inputs.read();
        assert!(
            unseen,
            "the mesh task's state was not seen before this read"
        );
        assert!(values.mesh.known);
        assert!(!inputs.read().1, "and is seen once read");
    }

    /// The branch that woke the loop has marked its change seen, which is why the loop remembers the
    /// branch too: the read alone cannot tell.
    #[tokio::test]
    async fn the_change_that_woke_the_loop_is_seen_before_the_read() {
        let (mut inputs, _mesh_tx, reg_tx) = inputs();
        reg_tx.send_modify(|r| r.registered = true);
        inputs.reg.changed().await.expect("the sender is alive");
        let (values, unseen) = inputs.read();
        assert!(values.reg.registered);
        assert!(!unseen);
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
