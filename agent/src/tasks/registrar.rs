//! The registrar's driver: runs [`crate::registration::machine`]'s jobs through the chain handle and dstack,
//! puts what it prints on stdout, logs its faults with the RPC's credentials scrubbed, and publishes
//! [`RegState`].
//!
//! A registration can wait minutes for its receipt; it is awaited here and nowhere else, so the chain task
//! keeps following (revocations included) and a shutdown interrupts it at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use mesh_chain::cluster::Cluster;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::registration::Desired;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, warn};

use crate::config::{ModeArg, RunArgs};
use crate::node::NodeIdentity;
use crate::registration::machine::{Chain, Config, Job, JobDone, Machine, Print};
use crate::state::{ChainState, RegState};
use crate::tasks::{Shared, sleep_until};

/// What the registrar needs to know.
pub struct Registrar {
    /// Where the record, the seat and requests are read and sent: through every provider.
    pub cluster: Cluster,
    pub rpc: RedactedUrl,
    pub identity: Arc<NodeIdentity>,
    pub desired: Desired,
    pub tx_key: Option<PrivateKeySigner>,
    /// How long an up-to-date record goes unchecked.
    pub recheck: Duration,
    /// Whether to ask for a seat while the node has none.
    pub ask: bool,
    /// Whom to ask (`--holder`; the cluster's owner when `None`).
    pub holder: Option<Address>,
    /// For the quotes of a binding and of the image this node runs.
    pub dstack: dstack_guest::DstackClient,
}

impl Registrar {
    /// The registrar: the record it keeps names this node's WireGuard key and `--endpoint` in
    /// WireGuard mode (neither in TLS mode), and its gateway URL.
    pub fn from_args(args: &RunArgs, shared: &Shared) -> Self {
        let wireguard = args.mode == ModeArg::Wireguard;
        let identity = &shared.identity;
        let desired = Desired {
            wg_public_key: wireguard.then(|| identity.wg_public_key()),
            endpoint: match (wireguard, args.endpoint) {
                (true, Some(e)) => e.to_string(),
                _ => String::new(),
            },
            gateway_url: args.gateway_url(identity.instance_id()).unwrap_or_default(),
        };
        Self {
            cluster: shared.cluster.clone(),
            rpc: shared.rpc.clone(),
            identity: Arc::clone(identity),
            desired,
            tx_key: shared.tx_key.clone(),
            recheck: Duration::from_secs(args.full_read_secs),
            ask: !args.no_seat_request,
            holder: args.holder,
            dstack: shared.dstack.clone(),
        }
    }

    fn config(&self) -> Config {
        Config {
            node: self.identity.node.address(),
            instance_id: self.identity.instance_id().to_owned(),
            recheck: self.recheck,
            ask: self.ask,
            holder: self.holder,
        }
    }

    /// Runs until `cancel` fires. A job under way is dropped with it: a registration awaiting its receipt
    /// is interrupted at once.
    ///
    /// # Errors
    /// None yet: every failure is reported in the state and retried.
    pub async fn run(
        self,
        mut chain: watch::Receiver<ChainState>,
        out: watch::Sender<RegState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut m = Machine::new(self.config(), Instant::now());
        let mut jobs: JoinSet<JobDone> = JoinSet::new();
        let mut wake = Wake::Chain;
        loop {
            let now = Instant::now();
            match wake {
                Wake::Chain => {
                    let facts = Chain::of(&chain.borrow_and_update(), &self.desired);
                    m.handle_chain(now, facts);
                }
                Wake::Done(done) => m.handle_job(now, done),
                Wake::Deadline => m.handle_timeout(now),
            }
            while let Some(p) = m.poll_print() {
                print(&p);
            }
            while let Some(fault) = m.poll_fault() {
                warn!("{}", fault.render(&self.rpc));
            }
            while let Some(job) = m.poll_job() {
                jobs.spawn(self.work(job).in_current_span());
            }
            out.send_if_modified(|published| {
                let changed = published != m.state();
                if changed {
                    published.clone_from(m.state());
                }
                changed
            });
            let deadline = m.poll_timeout().map(tokio::time::Instant::from_std);
            wake = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = chain.changed() => match changed {
                    Ok(()) => Wake::Chain,
                    // The chain task ended: the agent is stopping.
                    Err(_) => return Ok(()),
                },
                Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                    Wake::Done(done.unwrap_or_else(|e| {
                        warn!(error = %e, "a registrar job panicked");
                        JobDone::Lost
                    }))
                }
                () = sleep_until(deadline) => Wake::Deadline,
            };
        }
    }

    /// The work `job` stands for, as a task of its own.
    fn work(&self, job: Job) -> impl Future<Output = JobDone> + Send + 'static {
        let cluster = self.cluster.clone();
        let identity = Arc::clone(&self.identity);
        let desired = self.desired.clone();
        let tx_key = self.tx_key.clone();
        let dstack = self.dstack.clone();
        async move {
            let node = &identity.node;
            match job {
                Job::Register { pins } => JobDone::Registered(
                    cluster
                        .register(node, &desired, tx_key.as_ref(), &pins)
                        .await,
                ),
                Job::RunningImage => {
                    JobDone::RunningImage(crate::node::running_image(&dstack).await)
                }
                Job::HolderOf { token } => JobDone::HolderOf(cluster.holder_of(token).await),
                Job::Owner => JobDone::Owner(cluster.owner().await),
                Job::RequestedHolder => {
                    JobDone::RequestedHolder(cluster.requested_holder(node.address()).await)
                }
                Job::MakeBinding { holder, chain_id } => JobDone::Binding(
                    crate::node::binding(&dstack, node, holder, chain_id, cluster.address())
                        .await
                        .map(Box::new),
                ),
                Job::RequestBinding { binding } => JobDone::Requested(
                    cluster
                        .request_binding(node, &binding, tx_key.as_ref())
                        .await,
                ),
            }
        }
    }
}

enum Wake {
    Chain,
    Done(JobDone),
    Deadline,
}

/// Puts `p` on stdout, one JSON line, for `meshctl relay -` or `meshctl bind --binding`.
fn print(p: &Print) {
    let (json, what) = match p {
        Print::Registration(reg) => (serde_json::to_string(reg), "the registration"),
        Print::Binding(binding) => (serde_json::to_string(binding), "the binding"),
    };
    match json {
        Ok(json) => println!("{json}"),
        Err(e) => error!(error = %e, "cannot encode {what}"),
    }
}
