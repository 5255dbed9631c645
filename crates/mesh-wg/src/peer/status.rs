//! What the device shows of a peer ([`PeerStatus`]).

use super::*;

impl Peer {
    /// The peer's status; `own_mapping` is this node's NAT mapping, which says whether punching is tried.
    pub(crate) fn status(
        &self,
        allowed_ips: Vec<Ipv4Network>,
        own_mapping: mesh_path::nat::Mapping,
    ) -> PeerStatus {
        let mut g = self.lock_quietly();
        g.refresh_handshake();
        let (candidates, mapping) = g.punch.theirs();
        let relay_reason = (g.path.on() == PathKind::Relay).then(|| {
            let session = g
                .tunn
                .time_since_last_handshake()
                .is_some_and(|since| since < REJECT_AFTER);
            format!(
                "{}; {}",
                g.path.reason(),
                g.punch.relay_reason(session, own_mapping, g.endpoint)
            )
        });
        let punch = PunchStatus {
            candidates: candidates.to_vec(),
            mapping,
            attempts: g.punch.attempts(),
            malformed: g.malformed,
            relay_reason,
        };
        let peer_relay = g.peer_relay().map(|u| u.relay);
        PeerStatus {
            public_key: self.public_key,
            endpoint: g.endpoint,
            relay: g.relay.clone(),
            path: if peer_relay.is_some() {
                PathKind::PeerRelay
            } else {
                g.path.on()
            },
            peer_relay,
            punch,
            allowed_ips,
            last_handshake: g.last_handshake,
            last_heard: g.last_heard,
            rx_bytes: g.rx_bytes,
            tx_bytes: g.tx_bytes,
            persistent_keepalive: g.keepalive,
            relay_error: g.relay_error.clone(),
            health_timeout: g.health_timeout(Instant::now()),
            reach: g.filter.reach().clone(),
            policy_dropped: g.dropped,
        }
    }
}
