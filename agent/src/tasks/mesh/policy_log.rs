//! What the log says of the grants between seats: each change of the policy once, and the packets it
//! dropped at most once a minute.

use std::time::{Duration, Instant};

use mesh_chain::policy::ClusterPolicy;
use mesh_wg::DropCounts;
use tracing::info;

/// What the log said last of the grants between seats, so that it says each change once and drops at most
/// once a [`DROPS_LOGGED_EVERY`].
#[derive(Default)]
pub(super) struct PolicyLog {
    version: Option<(u64, bool)>,
    dropped: DropCounts,
    at: Option<Instant>,
}

/// How often at most the log counts the packets the policy dropped.
const DROPS_LOGGED_EVERY: Duration = Duration::from_secs(60);

impl PolicyLog {
    pub(super) fn note(
        &mut self,
        policy: Option<&ClusterPolicy>,
        dropped: DropCounts,
        now: Instant,
    ) {
        if let Some(p) = policy {
            let version = (p.rules.version, p.rules.enforced);
            if self.version != Some(version) {
                if p.rules.enforced {
                    info!(
                        version = p.rules.version,
                        grants = p.rules.grants.len(),
                        "grants between seats in force: each peer reaches here only what a grant allows it"
                    );
                } else if self.version.is_some_and(|(_, enforced)| enforced) {
                    info!(
                        version = p.rules.version,
                        "grants between seats no longer in force: every seat reaches every port"
                    );
                }
                self.version = Some(version);
            }
        }
        let due = self
            .at
            .is_none_or(|at| now.saturating_duration_since(at) >= DROPS_LOGGED_EVERY);
        if dropped != self.dropped && due {
            let new = |n: u64, was: u64| n.saturating_sub(was);
            info!(
                no_grant = new(dropped.no_grant, self.dropped.no_grant),
                protocol = new(dropped.protocol, self.dropped.protocol),
                malformed = new(dropped.malformed, self.dropped.malformed),
                total = dropped.total(),
                "peers' packets dropped by the grants between seats since the last count (by rule); /v1/peers names each peer's"
            );
            self.dropped = dropped;
            self.at = Some(now);
        }
    }
}
