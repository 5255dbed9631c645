//! The publisher: renders what the other tasks publish into the snapshot the API serves
//! ([`crate::snapshot`]), and tells the rest of the CVM when the peer set changes ([`crate::hooks`]).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mesh_api::{Peer, Snapshot};
use mesh_chain::membership::Member;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

use crate::hooks;
use crate::snapshot::{self, AgentFacts, NodeFacts};
use crate::state::{ChainState, LeaderState, MeshState, RegState};

/// How often the snapshot is rendered while nothing is published: uptime and handshake ages move on.
const REFRESH: Duration = Duration::from_secs(1);

/// `--on-change`, `--hosts-file`: who hears of peer-set changes.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub on_change: Option<String>,
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
}

/// What the tasks before the publisher send it.
pub struct Inputs {
    pub chain: watch::Receiver<ChainState>,
    pub reg: watch::Receiver<RegState>,
    pub mesh: watch::Receiver<MeshState>,
    pub leader: watch::Receiver<LeaderState>,
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
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let chain = inputs.chain.borrow_and_update().clone();
            let reg = inputs.reg.borrow_and_update().clone();
            let mesh = inputs.mesh.borrow_and_update().clone();
            let leader = inputs.leader.borrow_and_update().clone();
            let snapshot = snapshot::render(
                &self.agent,
                &self.node,
                snapshot::Published {
                    chain: &chain,
                    reg: &reg,
                    mesh: &mesh,
                    leader: &leader,
                },
                self.started.elapsed(),
                SystemTime::now(),
            );
            let changed = snapshot::peer_set_changed(&published, &snapshot.peers);
            if changed {
                published.clone_from(&snapshot.peers);
            }
            api.send_replace(snapshot);
            if changed {
                self.hooks.run(&published, &mesh.members);
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                Ok(()) = inputs.chain.changed() => {}
                Ok(()) = inputs.reg.changed() => {}
                Ok(()) = inputs.mesh.changed() => {}
                Ok(()) = inputs.leader.changed() => {}
            }
        }
    }
}

impl Hooks {
    fn run(&self, peers: &[Peer], members: &[Member]) {
        if let Some(path) = &self.hosts_file
            && let Err(e) = hooks::write_hosts(path, members, &self.hosts_suffix)
        {
            warn!(path = %path.display(), error = %format!("{e:#}"), "cannot update the hosts file");
        }
        if let Some(cmd) = &self.on_change {
            let json = match serde_json::to_vec(peers) {
                Ok(json) => json,
                Err(e) => return warn!(error = %e, "cannot encode the peer list for the hook"),
            };
            let cmd = cmd.clone();
            let limit = self.timeout.max(Duration::from_secs(1));
            // Owned by nobody on purpose: a slow hook must not hold up the snapshot; it is bounded instead.
            tokio::spawn(
                async move {
                    if let Err(e) = hooks::run(&cmd, &json, limit).await {
                        warn!(hook = %cmd, error = %e, "the on-change hook failed");
                    }
                }
                .in_current_span(),
            );
        }
    }
}
