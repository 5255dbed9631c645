//! Whether a node is a working member, from what the API serves: the answer of `GET /healthz` and of
//! `meshctl status --check`. Pure, so both say the same and tests need no agent.

use serde::{Deserialize, Serialize};

use crate::types::{ConnectionKind, Mode, Peer, Status};

/// `GET /healthz`: healthy when this node's record is on-chain and every peer is reachable somehow, by
/// tunnel or by gateway URL; otherwise each reason, naming the seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub healthy: bool,
    pub registered: bool,
    pub token_id: Option<u64>,
    pub peers_configured: usize,
    /// Peers reachable by tunnel or gateway URL.
    pub peers_reachable: usize,
    /// The seats of the peers that are not.
    pub unreachable: Vec<u64>,
    /// Why it is not healthy, one line each; empty when it is.
    pub reasons: Vec<String>,
}

/// Judges `status` and `peers` as `/v1/status` and `/v1/peers` serve them.
pub fn assess(status: &Status, peers: &[Peer]) -> Health {
    let node = &status.node;
    let mut reasons = Vec::new();
    if !node.registered {
        let why = match node.token_id {
            None => format!(
                "no seat is bound to this instance ({}) yet: it asks for one on-chain, and the holder binds it with `meshctl bind --instance <this instance>`",
                node.instance_id
            ),
            Some(t) => format!("this node's record for seat {t} is not on-chain yet"),
        };
        let last = node
            .registration_error
            .as_ref()
            .or(status.chain.last_error.as_ref());
        reasons.push(match last {
            Some(e) => format!("{why} (last error: {e})"),
            None => why,
        });
    }
    let mut unreachable: Vec<u64> = peers
        .iter()
        .filter(|p| p.connection == ConnectionKind::Unreachable)
        .map(|p| p.token_id)
        .collect();
    unreachable.sort_unstable();
    for p in peers
        .iter()
        .filter(|p| p.connection == ConnectionKind::Unreachable)
    {
        let tunnel = match (status.mode, p.last_heard) {
            (Mode::Tls, _) => "this node runs no tunnel",
            (Mode::Wireguard, None | Some(0)) => "nothing has come from it over its tunnel",
            (Mode::Wireguard, Some(_)) => {
                "it has stopped answering over its tunnel (silent for longer than the peer timeout)"
            }
        };
        reasons.push(format!(
            "seat {} ({}) is unreachable: {tunnel}, and it registered no gateway URL",
            p.token_id, p.overlay_ip
        ));
    }
    // Every other seat refused (a node restarted while its peers' platforms are below the TCB policy, say):
    // no peer is unreachable, yet it reaches nobody.
    if node.token_id.is_some() && unreachable.len() == peers.len() && status.peers_refused > 0 {
        reasons.push(format!(
            "this node reaches none of the cluster's other seats: {} configured, {} refused (`meshctl status` or /v1/peers/refused says why)",
            peers.len(),
            status.peers_refused
        ));
    }
    Health {
        healthy: reasons.is_empty(),
        registered: node.registered,
        token_id: node.token_id,
        peers_configured: peers.len(),
        peers_reachable: peers.len() - unreachable.len(),
        unreachable,
        reasons,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::types::{ChainStatus, Node};

    pub(crate) fn status(registered: bool, token: Option<u64>) -> Status {
        Status {
            version: "0".into(),
            commit: None,
            started_at: None,
            mode: Mode::Wireguard,
            backend: Some("userspace".into()),
            node: Node {
                instance_id: "inst-1".into(),
                token_id: token,
                registered,
                ..Node::default()
            },
            chain: ChainStatus::default(),
            uptime_secs: 1,
            peers_configured: 0,
            peers_healthy: 0,
            peers_refused: 0,
            nat: None,
            election: Default::default(),
            ports: Vec::new(),
            faults: Vec::new(),
            policy: None,
            peer_relay: None,
        }
    }

    pub(crate) fn peer(token: u64, connection: ConnectionKind, handshake: Option<u64>) -> Peer {
        Peer {
            token_id: token,
            instance_id: format!("inst-{token}"),
            overlay_ip: Ipv4Addr::new(10, 0, 1, u8::try_from(token).unwrap()),
            wg_public_key: None,
            endpoint: None,
            gateway_url: None,
            connection,
            path: None,
            relay_url: None,
            relay_seat: None,
            path_reason: None,
            candidates: Vec::new(),
            punch_attempts: 0,
            address: None,
            healthy: connection == ConnectionKind::Wireguard,
            latest_handshake: handshake,
            last_heard: handshake,
            rx_bytes: 0,
            tx_bytes: 0,
            leader: false,
            draining: false,
            attestation: None,
            holder: None,
            policy: None,
        }
    }

    #[test]
    fn a_seat_that_reaches_none_of_the_others_because_all_are_refused_is_unhealthy() {
        let mut s = status(true, Some(1));
        s.peers_refused = 2;
        let h = assess(&s, &[]);
        assert!(!h.healthy, "{h:?}");
        assert!(
            h.reasons[0]
                .contains("reaches none of the cluster's other seats: 0 configured, 2 refused"),
            "{h:?}"
        );
        // One peer reached is enough: a refused seat beside it is the refusal's business.
        let h = assess(&s, &[peer(2, ConnectionKind::Wireguard, Some(10))]);
        assert!(h.healthy, "{h:?}");
        // A node with no seat yet is unhealthy for that, not for this.
        let mut seatless = status(false, None);
        seatless.peers_refused = 2;
        assert_eq!(assess(&seatless, &[]).reasons.len(), 1);
    }

    #[test]
    fn registered_with_every_peer_reachable_somehow_is_healthy() {
        let peers = [
            peer(2, ConnectionKind::Wireguard, Some(10)),
            peer(3, ConnectionKind::TlsGateway, None),
        ];
        let h = assess(&status(true, Some(1)), &peers);
        assert!(h.healthy, "{h:?}");
        assert_eq!((h.peers_configured, h.peers_reachable), (2, 2));
        assert!(h.reasons.is_empty() && h.unreachable.is_empty());
    }

    #[test]
    fn alone_and_registered_is_healthy() {
        assert!(assess(&status(true, Some(1)), &[]).healthy);
    }

    #[test]
    fn each_unreachable_peer_is_named_with_why() {
        let peers = [
            peer(4, ConnectionKind::Unreachable, Some(5)),
            peer(2, ConnectionKind::Wireguard, Some(10)),
            peer(3, ConnectionKind::Unreachable, None),
        ];
        let h = assess(&status(true, Some(1)), &peers);
        assert!(!h.healthy);
        assert_eq!(h.unreachable, vec![3, 4]);
        assert_eq!(h.peers_reachable, 1);
        assert_eq!(h.reasons.len(), 2, "{:?}", h.reasons);
        assert!(
            h.reasons[0].contains("seat 4 (10.0.1.4)")
                && h.reasons[0].contains("stopped answering")
        );
        assert!(h.reasons[1].contains("seat 3") && h.reasons[1].contains("nothing has come"));
    }

    #[test]
    fn an_unregistered_node_says_whether_it_lacks_a_seat_or_a_record() {
        let mut s = status(false, None);
        s.chain.last_error = Some("rpc down".into());
        let h = assess(&s, &[]);
        assert!(!h.healthy);
        assert!(h.reasons[0].contains("no seat is bound to this instance (inst-1)"));
        assert!(h.reasons[0].contains("rpc down"));
        let h = assess(&status(false, Some(2)), &[]);
        assert!(h.reasons[0].contains("record for seat 2 is not on-chain"));
    }

    /// The agent's own reason (what to run) comes before the chain's.
    #[test]
    fn an_unregistered_node_gives_the_agents_reason_first() {
        let mut s = status(false, None);
        s.chain.last_error = Some("rpc down".into());
        s.node.registration_error = Some("meshctl bind --token 1 --binding binding.json".into());
        let h = assess(&s, &[]);
        assert!(
            h.reasons[0].contains("meshctl bind --token 1 --binding binding.json"),
            "{h:?}"
        );
    }
}
