//! Which peers are held to the peer timeout ([`mesh_path::liveness`]): those that carry an application's
//! traffic, and those the device is told something watches ([`Watching`]). The others are probed only once
//! their keepalive is overdue, and their health has the idle bound.

use super::*;

use crate::Watching;

/// How long a peer counts as carrying traffic after an application's last packet to or from it.
pub(crate) const TRAFFIC_WATCHED: Duration = Duration::from_secs(60);

impl Watching {
    /// Whether `key` is watched, as told.
    pub(crate) fn contains(&self, key: &Key) -> bool {
        match self {
            Self::All => true,
            Self::Only(keys) => keys.contains(key),
        }
    }
}

impl PeerInner {
    /// Whether the peer is watched now, noting since when.
    pub(super) fn watch(&mut self, key: &Key, now: Instant, ctx: &TickContext) -> bool {
        let traffic =
            (self.app_traffic).is_some_and(|t| now.saturating_duration_since(t) < TRAFFIC_WATCHED);
        let watched = traffic || ctx.watching.contains(key);
        match (watched, self.watched_since) {
            (true, None) => self.watched_since = Some(now),
            (false, Some(_)) => self.watched_since = None,
            _ => {}
        }
        watched
    }

    /// How long the peer may be silent and be shown alive: the peer timeout once it has been watched that
    /// long (its probes have had their time), else the idle bound.
    pub(super) fn health_timeout(&self, now: Instant) -> Duration {
        let liveness = mesh_path::Liveness {
            timeout: self.liveness_timeout,
        };
        let held = self
            .watched_since
            .is_some_and(|t| now.saturating_duration_since(t) >= liveness.timeout);
        liveness.bound(held)
    }
}

impl Session<'_> {
    /// A packet of an application's went to or came from the peer.
    pub(crate) fn note_app_traffic(&mut self) {
        self.g.app_traffic = Some(self.now);
    }
}
