//! `p2p-agent wait`: blocks until this node is a working member, for docker-compose's
//! `depends_on: service_completed_successfully`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use mesh_api::{ApiArgs, ConnectionKind, Mode, Peer, Status};

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Give up after this many seconds of having a seat and not being ready. The time before this node has a
    /// seat does not count: a node's first boot waits for its holder to bind it (`meshctl bind --instance`),
    /// however long that takes, saying so every 30 s.
    #[arg(long, env = "DSTACK_MESH_WAIT_TIMEOUT_SECS", default_value_t = 120)]
    pub timeout_secs: u64,
    /// Give up after this many seconds without a seat, too. 0 means never.
    #[arg(long, env = "DSTACK_MESH_WAIT_SEAT_TIMEOUT_SECS", default_value_t = 0)]
    pub seat_timeout_secs: u64,
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

/// Why a node is not ready yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// No seat is bound to it yet: its holder has to act, so the timeout does not run.
    ForSeat(String),
    /// It has a seat, and waits for its record or its peers.
    ForMesh(String),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::ForSeat(why) | Waiting::ForMesh(why) => f.write_str(why),
        }
    }
}

/// Whether the node is ready: registered, and reaching at least one peer as `accept` allows (or having none
/// to reach). `Ok` says what it found, `Err` what it waits for.
pub fn readiness(status: &Status, peers: &[Peer], accept: Accept) -> Result<String, Waiting> {
    if status.node.token_id.is_none() && !status.node.registered {
        return Err(Waiting::ForSeat(match &status.node.registration_error {
            Some(e) => format!("this node has no seat yet: {e}"),
            None => "this node has no seat yet".into(),
        }));
    }
    mesh_readiness(status, peers, accept).map_err(Waiting::ForMesh)
}

fn mesh_readiness(status: &Status, peers: &[Peer], accept: Accept) -> Result<String, String> {
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
    use tokio::time::{Duration, Instant};
    let api = args.api.addr();
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let mut deadline = started + timeout;
    let mut last = String::from("the agent API never answered");
    let mut said: Option<(String, Instant)> = None;
    while Instant::now() < deadline {
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
            Ok(Err(Waiting::ForSeat(why))) => {
                let now = Instant::now();
                let seat_deadline = (args.seat_timeout_secs > 0)
                    .then(|| started + Duration::from_secs(args.seat_timeout_secs));
                if seat_deadline.is_some_and(|d| now >= d) {
                    eprintln!("no seat after {} s: {why}", args.seat_timeout_secs);
                    return Ok(ExitCode::FAILURE);
                }
                // The holder has to act: the time to be ready starts once the seat is there.
                deadline = now + timeout;
                let repeat = said
                    .as_ref()
                    .is_none_or(|(text, at)| *text != why || now.duration_since(*at) >= SAY_EVERY);
                if repeat {
                    eprintln!("waiting: {why}");
                    said = Some((why.clone(), now));
                }
                last = why;
            }
            Ok(Err(Waiting::ForMesh(why))) => last = why,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("not ready after {} s: {last}", args.timeout_secs);
    Ok(ExitCode::FAILURE)
}

/// How often a wait for a seat says again what it waits for.
const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

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
            election: Default::default(),
            ports: Vec::new(),
            faults: Vec::new(),
            policy: None,
            peer_relay: None,
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
            relay_seat: None,
            path_reason: None,
            candidates: Vec::new(),
            punch_attempts: 0,
            address: None,
            healthy: connection == ConnectionKind::Wireguard,
            draining: false,
            latest_handshake: None,
            last_heard: None,
            rx_bytes: 0,
            tx_bytes: 0,
            leader: false,
            attestation: None,
            holder: None,
            policy: None,
        }
    }

    /// A node with no seat waits for its holder, which the timeout does not count; one with a seat waits
    /// for the mesh.
    #[test]
    fn a_seatless_node_waits_for_its_seat_and_says_why() {
        let mut seatless = status(false);
        seatless.node.token_id = None;
        seatless.node.registration_error =
            Some("it asked 0xab for one on-chain; the holder runs `meshctl bind`".into());
        match readiness(&seatless, &[], Accept::Tunnel) {
            Err(Waiting::ForSeat(why)) => assert!(why.contains("meshctl bind"), "{why}"),
            other => panic!("a seatless node waits for its seat: {other:?}"),
        }
        assert!(matches!(
            readiness(&status(false), &[], Accept::Tunnel),
            Err(Waiting::ForMesh(_))
        ));
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
        let err = readiness(&status(true), &peers, Accept::Tunnel)
            .unwrap_err()
            .to_string();
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
        let err = readiness(&status(true), &peers, Accept::Gateway)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none of 1 peers"), "{err}");
    }
}
