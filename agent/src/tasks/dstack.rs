//! The dstack watch: asks dstack's guest agent who this instance is every few seconds, and publishes whether
//! it answers. The agent needs dstack at start (its identity) and for each seat request or rebind (a fresh
//! quote); a socket that goes away mid-run stops neither the tunnels nor the chain, but the next restart or
//! request would fail, so the status names it within seconds rather than then.

use std::time::{Duration, SystemTime};

use dstack_guest::DstackClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::state::Failing;

/// How often dstack is asked.
const EVERY: Duration = Duration::from_secs(2);

/// How long one answer may take: a guest agent busy with quotes for a whole cluster starting at once is
/// not down.
const WITHIN: Duration = Duration::from_secs(4);

/// What the dstack watch needs.
pub struct DstackWatch {
    pub client: DstackClient,
}

impl DstackWatch {
    /// Runs until `cancel` fires, publishing whether dstack fails now.
    ///
    /// # Errors
    /// None: a dstack that does not answer is published, not an error.
    pub async fn run(
        self,
        out: watch::Sender<Option<Failing>>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let client = self.client.with_timeout(WITHIN);
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut misses = 0u32;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let answered = client.info().await;
            let failing = out.borrow().clone();
            match (answered, failing) {
                (Ok(_), Some(_)) => {
                    if misses >= 2 {
                        info!(endpoint = %client.endpoint(), "dstack's guest agent answers again");
                    }
                    misses = 0;
                    out.send_replace(None);
                }
                (Ok(_), None) => misses = 0,
                (Err(e), was) => {
                    misses = misses.saturating_add(1);
                    let why = format!(
                        "dstack's guest agent at {} does not answer: {}",
                        client.endpoint(),
                        crate::causes::Causes(&e)
                    );
                    // Named in the status at once; logged once it has missed twice running.
                    if misses == 2 {
                        warn!(%why, "the tunnels and the chain go on; a restart, a seat request or a rebind would fail until it answers");
                    }
                    let since = was.map_or_else(SystemTime::now, |f| f.since);
                    out.send_replace(Some(Failing { since, why }));
                }
            }
        }
    }
}
