//! The disputer task: sends, one at a time, the disputes [`crate::disputes::due`] decides from the chain
//! task's verdicts, so that a seat bound to an instance id its quote does not show is released by the
//! cluster's members within a few blocks of its binding, with no owner's hand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use mesh_chain::cluster::Cluster;
use mesh_chain::election::ElectionError;
use mesh_chain::error::ChainError;
use mesh_chain::redact::RedactedUrl;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::disputes::{self, Dispute};
use crate::node::NodeIdentity;
use crate::state::ChainState;
use crate::tasks::Shared;

/// How long a dispute that could not be sent (no funds, the RPC failing) waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the disputer needs to know.
pub struct Disputer {
    /// Where disputes are sent: through every provider.
    pub cluster: Cluster,
    pub rpc: RedactedUrl,
    pub identity: Arc<NodeIdentity>,
    pub tx_key: Option<PrivateKeySigner>,
}

impl Disputer {
    pub fn from_args(shared: &Shared) -> Self {
        Self {
            cluster: shared.cluster.clone(),
            rpc: shared.rpc.clone(),
            identity: Arc::clone(&shared.identity),
            tx_key: shared.tx_key.clone(),
        }
    }

    /// Runs until `cancel` fires.
    ///
    /// # Errors
    /// None yet: a dispute that fails is logged and tried again.
    pub async fn run(
        self,
        mut chain: watch::Receiver<ChainState>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut sent = Sent::default();
        let mut retry = tokio::time::interval(RETRY_AFTER);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = chain.changed() => if changed.is_err() { return Ok(()) },
                _ = retry.tick() => {}
            }
            let due = {
                let state = chain.borrow_and_update();
                let Some(view) = state.view.as_deref() else {
                    continue;
                };
                disputes::due(
                    view,
                    &state.attestations,
                    state.seat.token(),
                    &sent.skipped(Instant::now()),
                )
            };
            let Some(voter) = chain.borrow().seat.token() else {
                continue;
            };
            for d in due {
                let outcome = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    outcome = self.send(voter, d) => outcome,
                };
                sent.record(d, outcome, &self.rpc);
            }
        }
    }

    async fn send(&self, voter: u64, d: Dispute) -> Result<u64, ElectionError> {
        info!(
            target_seat = d.target,
            bound_block = d.bound_block,
            kind = d.kind,
            "disputing a binding whose quote does not show what it claims"
        );
        let cast = self
            .cluster
            .dispute(
                &self.identity.node,
                self.tx_key.as_ref(),
                voter,
                d.target,
                d.bound_block,
            )
            .await?;
        Ok(cast.block)
    }
}

/// The disputes this node sent or gave up on, and those that failed and wait to be tried again.
#[derive(Default)]
struct Sent {
    done: BTreeSet<(u64, u64)>,
    failed: BTreeMap<(u64, u64), Instant>,
}

impl Sent {
    /// The disputes not to send now.
    fn skipped(&self, now: Instant) -> BTreeSet<(u64, u64)> {
        let waiting = self
            .failed
            .iter()
            .filter(|(_, at)| now.duration_since(**at) < RETRY_AFTER)
            .map(|(k, _)| *k);
        self.done.iter().copied().chain(waiting).collect()
    }

    fn record(&mut self, d: Dispute, outcome: Result<u64, ElectionError>, rpc: &RedactedUrl) {
        let (target, bound_block) = d.key();
        match outcome {
            Ok(block) => {
                info!(target_seat = target, bound_block, block, "dispute mined");
                self.done.insert(d.key());
            }
            // Other members' disputes released it first, or its holder bound the seat again: settled.
            Err(ElectionError::Chain(ChainError::Reverted(r)))
                if r.name == "DisputeSeatNotBound" || r.name == "DisputeBindingChanged" =>
            {
                info!(target_seat = target, bound_block, reason = %r, "the disputed binding is gone already");
                self.done.insert(d.key());
            }
            Err(ElectionError::Chain(ChainError::Reverted(r))) => {
                warn!(target_seat = target, bound_block, reason = %r, "the contract refused the dispute; not sending it again");
                self.done.insert(d.key());
            }
            Err(e) => {
                let error = rpc.scrub(&crate::causes::Causes(&e).to_string());
                if self.failed.insert(d.key(), Instant::now()).is_none() {
                    warn!(target_seat = target, bound_block, %error, "cannot send the dispute; trying again every {}s", RETRY_AFTER.as_secs());
                } else {
                    debug!(target_seat = target, bound_block, %error, "the dispute failed again");
                }
            }
        }
    }
}
