//! What the log says of the grants between seats: each change of the policy once, and the packets it
//! dropped at most once a minute.

use std::time::{Duration, Instant};

use mesh_chain::policy::ClusterPolicy;
use mesh_wg::DropCounts;
use tracing::{info, warn};

/// What the log said last of the grants between seats, so that it says each change once and drops at most
/// once a [`DROPS_LOGGED_EVERY`].
#[derive(Default)]
pub(super) struct PolicyLog {
    version: Option<(u64, bool)>,
    dropped: DropCounts,
    at: Option<Instant>,
    /// The last refusal to put the grants in force, and when it was logged.
    refused: Option<(String, Instant)>,
}

/// How often at most the log counts the packets the policy dropped.
const DROPS_LOGGED_EVERY: Duration = Duration::from_secs(60);

impl PolicyLog {
    /// The backend could not put the grants in force for `peers` peers: logged when the reason changes,
    /// else at most once a [`DROPS_LOGGED_EVERY`], since each refresh tries again. Returns whether it was.
    pub(super) fn refused(
        &mut self,
        error: &mesh_wg::Error,
        peers: usize,
        version: Option<u64>,
        now: Instant,
    ) -> bool {
        let text = error.to_string();
        let due = self.refused.as_ref().is_none_or(|(was, at)| {
            *was != text || now.saturating_duration_since(*at) >= DROPS_LOGGED_EVERY
        });
        if due {
            warn!(
                peers,
                version,
                error = %text,
                "the grants between seats are not in force here: the interface judges by those before; tried again at each refresh"
            );
            self.refused = Some((text, now));
        }
        due
    }

    /// The grants were put in force: a later refusal is logged at once.
    pub(super) fn in_force(&mut self) {
        self.refused = None;
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refresh tries a refused change again: the log says so once a minute, at once for another
    /// reason, and at once again after the grants were put in force.
    #[test]
    fn a_refusal_tried_at_every_refresh_is_logged_once_a_minute() {
        let t0 = Instant::now();
        let nft = |detail: &str| mesh_wg::Error::Policy {
            ifname: "dm0".into(),
            detail: detail.into(),
        };
        let mut log = PolicyLog::default();
        let mut logged = |detail: &str, secs: u64| {
            log.refused(&nft(detail), 3, Some(2), t0 + Duration::from_secs(secs))
        };
        assert!(logged("nft not found", 0));
        assert!(!logged("nft not found", 2), "the same, within the minute");
        assert!(logged("permission denied", 4), "another reason");
        assert!(!logged("permission denied", 30));
        assert!(logged("permission denied", 64), "a minute on");
        log.in_force();
        assert!(
            log.refused(
                &nft("permission denied"),
                1,
                Some(3),
                t0 + Duration::from_secs(66)
            ),
            "refused again after it was in force"
        );
    }
}
