//! `p2p-agent wait`: blocks until this node is a working member, for docker-compose's
//! `depends_on: service_completed_successfully`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use mesh_api::{ApiArgs, ConnectionKind, Mode, Peer, Status};

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Give up after this many seconds.
    #[arg(long, env = "DSTACK_MESH_WAIT_TIMEOUT_SECS", default_value_t = 120)]
    pub timeout_secs: u64,
    /// What counts as reaching a peer.
    #[arg(
        long,
        env = "DSTACK_MESH_WAIT_ACCEPT",
        value_enum,
        default_value = "tunnel"
    )]
    pub accept: Accept,
}

/// `--accept`: what counts as reaching a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accept {
    /// A WireGuard tunnel with a fresh handshake.
    Tunnel,
    /// A tunnel, or the peer's gateway URL when its tunnel cannot come up (UDP blocked).
    Gateway,
}

/// Whether the node is ready: registered, and reaching at least one peer as `accept` allows (or having none
/// to reach). `Ok` says what it found, `Err` what it waits for.
pub fn readiness(status: &Status, peers: &[Peer], accept: Accept) -> Result<String, String> {
    if !status.node.registered {
        return Err(match &status.chain.last_error {
            Some(e) => format!("this node's record is not on-chain yet: {e}"),
            None => "this node's record is not on-chain yet".into(),
        });
    }
    let seat = status
        .node
        .token_id
        .map_or_else(|| "-".into(), |t| t.to_string());
    let by = |kind| peers.iter().filter(|p| p.connection == kind).count();
    let (tunnels, gateways) = (
        by(ConnectionKind::Wireguard),
        by(ConnectionKind::TlsGateway),
    );
    let ready = format!(
        "ready: seat {seat} registered; of {} peers, {tunnels} by tunnel, {gateways} by gateway URL",
        peers.len()
    );
    // Peers without a WireGuard key (TLS nodes) are reached by URL: no tunnel to wait for.
    let wireguard_peers = peers.iter().filter(|p| p.wg_public_key.is_some()).count();
    let reached = match accept {
        Accept::Tunnel => tunnels > 0 || wireguard_peers == 0 || status.mode == Mode::Tls,
        Accept::Gateway => tunnels + gateways > 0 || peers.is_empty(),
    };
    if reached {
        return Ok(ready);
    }
    Err(match accept {
        Accept::Tunnel if gateways > 0 => format!(
            "no tunnel is up yet (0 of {wireguard_peers} WireGuard peers); {gateways} peers are reachable by gateway URL: pass --accept gateway to accept that"
        ),
        Accept::Tunnel => format!("no tunnel is up yet (0 of {wireguard_peers} WireGuard peers)"),
        Accept::Gateway => format!(
            "none of {} peers is reachable yet, by tunnel or by gateway URL",
            peers.len()
        ),
    })
}

/// Polls the API until the node is ready or the timeout passes.
///
/// # Errors
/// None: not being ready in time is the failure exit code.
pub async fn run(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let api = args.api.addr();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
    let mut last = String::from("the agent API never answered");
    while tokio::time::Instant::now() < deadline {
        let answer = match mesh_api::get::<Status>(&api, "/v1/status").await {
            Ok(s) => mesh_api::get::<Vec<Peer>>(&api, "/v1/peers")
                .await
                .map(|p| (s, p)),
            Err(e) => Err(e),
        };
        match answer.map(|(s, p)| readiness(&s, &p, args.accept)) {
            Ok(Ok(ready)) => {
                eprintln!("{ready}");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Err(waiting)) => last = waiting,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    eprintln!("not ready after {} s: {last}", args.timeout_secs);
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use mesh_api::{ChainStatus, Node};

    use super::*;

    fn status(registered: bool) -> Status {
        Status {
            version: "0".into(),
            commit: None,
            started_at: None,
            mode: Mode::Wireguard,
            backend: None,
            node: Node {
                token_id: Some(1),
                registered,
                ..Node::default()
            },
            chain: ChainStatus::default(),
            uptime_secs: 0,
            peers_configured: 0,
            peers_healthy: 0,
            peers_refused: 0,
            nat: None,
        }
    }

    fn peer(token: u8, connection: ConnectionKind) -> Peer {
        Peer {
            token_id: token.into(),
            instance_id: String::new(),
            overlay_ip: Ipv4Addr::new(10, 0, 1, token),
            wg_public_key: Some(mesh_wg::Key::from_bytes([token; 32])),
            endpoint: None,
            gateway_url: Some("https://x".into()),
            connection,
            path: None,
            relay_url: None,
            path_reason: None,
            candidates: Vec::new(),
            punch_attempts: 0,
            address: None,
            healthy: connection == ConnectionKind::Wireguard,
            latest_handshake: None,
            last_heard: None,
            rx_bytes: 0,
            tx_bytes: 0,
            leader: false,
            attestation: None,
        }
    }

    #[test]
    fn an_unregistered_node_is_never_ready() {
        let peers = [peer(2, ConnectionKind::Wireguard)];
        for accept in [Accept::Tunnel, Accept::Gateway] {
            assert!(readiness(&status(false), &peers, accept).is_err());
        }
    }

    #[test]
    fn peers_reachable_only_by_gateway_pass_with_accept_gateway_alone() {
        let peers = [
            peer(2, ConnectionKind::TlsGateway),
            peer(3, ConnectionKind::TlsGateway),
        ];
        let err = readiness(&status(true), &peers, Accept::Tunnel).unwrap_err();
        assert!(err.contains("--accept gateway"), "{err}");
        let ok = readiness(&status(true), &peers, Accept::Gateway).unwrap();
        assert!(ok.contains("2 by gateway URL"), "{ok}");
    }

    #[test]
    fn one_tunnel_is_enough_and_a_lone_node_is_ready() {
        let peers = [
            peer(2, ConnectionKind::Wireguard),
            peer(3, ConnectionKind::Unreachable),
        ];
        for accept in [Accept::Tunnel, Accept::Gateway] {
            assert!(readiness(&status(true), &peers, accept).is_ok());
            assert!(readiness(&status(true), &[], accept).is_ok());
        }
    }

    #[test]
    fn nothing_reachable_is_not_ready_either_way() {
        let peers = [peer(2, ConnectionKind::Unreachable)];
        assert!(readiness(&status(true), &peers, Accept::Tunnel).is_err());
        let err = readiness(&status(true), &peers, Accept::Gateway).unwrap_err();
        assert!(err.contains("none of 1 peers"), "{err}");
    }
}
