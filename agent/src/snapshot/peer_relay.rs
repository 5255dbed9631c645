//! This node as a peer relay, as `/v1/status` shows it.

use mesh_wg::{PeerRelayStatus, RefusedReason, RelayDropped};

/// The device's counters, by the names the API gives their reasons.
pub(super) fn status(s: &PeerRelayStatus) -> mesh_api::PeerRelayStatus {
    let stats = &s.stats;
    mesh_api::PeerRelayStatus {
        offering: s.offering,
        why: s.why.to_owned(),
        allocations: stats.allocations as u64,
        granted: stats.granted,
        forwarded_bytes: stats.forwarded_bytes,
        forwarded_datagrams: stats.forwarded_datagrams,
        refused: (RefusedReason::ALL.into_iter())
            .map(|r| (r.as_str().to_owned(), stats.refused(r)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        dropped: (RelayDropped::ALL.into_iter())
            .map(|r| (r.as_str().to_owned(), stats.dropped(r)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        malformed: s.malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_reasons_and_zeros_left_out() {
        let s = PeerRelayStatus {
            offering: true,
            why: "--relay-for-peers always",
            stats: mesh_wg::RelayStats::default(),
            malformed: 2,
        };
        let api = status(&s);
        assert!(api.offering && api.refused.is_empty() && api.dropped.is_empty());
        assert_eq!(
            (api.why.as_str(), api.malformed),
            ("--relay-for-peers always", 2)
        );
    }
}
