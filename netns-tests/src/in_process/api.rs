//! An agent API served from a fixed snapshot, for tests of what reads the API (`meshctl status`, apps).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mesh_api::{
    self, Attestation, Candidate, ChainStatus, ConnectionKind, Counters, Election,
    ElectionCounters, Leader, Mode, Nat, Node, Path as PeerPath, Peer, PeerPolicy, PolicyDrops,
    PolicyStatus, Ports, Provider, RefusedPeer, RelayCounters, Snapshot, Status, StunServer,
    Verification,
};
use mesh_wg::Key;
use owned_task::Task;
use tokio::sync::watch;
use unix_socket::UnixSocket;

/// The WireGuard key of seat `token` in [`example_snapshot`]: 31 zero bytes, then the seat number, so its
/// base64 starts with a run of `A`s.
pub fn example_key(token: u8) -> Key {
    let mut bytes = [0; 32];
    bytes[31] = token;
    Key::from_bytes(bytes)
}

/// An attestation that passed.
fn verified() -> Attestation {
    Attestation {
        verified: true,
        tcb_status: Some("UpToDate".into()),
        compose_hash: Some(format!("0x{}", "c0".repeat(32))),
        collateral_until: Some(1_795_600_000),
        kind: None,
        reason: None,
        tcb_stage: None,
        tcb_stage_until: None,
    }
}

/// Seat `token` as the example node lists it: reached over `connection`, with its handshake and bytes.
fn example_peer(
    token: u64,
    connection: ConnectionKind,
    handshake: Option<u64>,
    rx: u64,
    tx: u64,
) -> Peer {
    Peer {
        token_id: token,
        instance_id: format!("{token:040x}"),
        overlay_ip: Ipv4Addr::new(10, 0, 1, token as u8),
        wg_public_key: Some(example_key(token as u8)),
        endpoint: Some(format!("192.0.2.{token}:51820")),
        gateway_url: (token == 3).then(|| format!("https://{token:040x}-8080.dstack.example")),
        connection,
        // Seat 3's tunnel is down: it is being tried through its relay.
        path: Some(if token == 3 {
            PeerPath::Relay
        } else {
            PeerPath::Direct
        }),
        relay_url: (token == 3).then(|| format!("https://{token:040x}-51820.dstack.example")),
        relay_seat: None,
        path_reason: (token == 3).then(|| {
            "no handshake answer over UDP; no answer over UDP from 1 candidate(s) in 2 attempt(s); trying again with backoff".into()
        }),
        candidates: if token == 3 {
            vec![Candidate {
                address: "203.0.113.3:40003".into(),
                source: "stun".into(),
            }]
        } else {
            Vec::new()
        },
        punch_attempts: if token == 3 { 2 } else { 0 },
        address: match connection {
            ConnectionKind::Wireguard => Some(format!("10.0.1.{token}")),
            ConnectionKind::TlsGateway => Some(format!("https://{token:040x}-8080.dstack.example")),
            ConnectionKind::Unreachable => None,
        },
        healthy: connection == ConnectionKind::Wireguard,
        draining: false,
        latest_handshake: handshake,
        last_heard: handshake.map(|h| h + 1),
        rx_bytes: rx,
        tx_bytes: tx,
        leader: token == 2,
        attestation: Some(verified()),
        holder: Some(alloy::primitives::Address::repeat_byte(token as u8)),
        policy: Some(example_peer_policy(token)),
    }
}

/// Packets dropped for want of a grant, `n` of them, and none for another reason.
fn no_grant(n: u64) -> PolicyDrops {
    PolicyDrops {
        no_grant: n,
        ..PolicyDrops::default()
    }
}

fn ports(tcp: &[&str], udp: &[&str]) -> Ports {
    let owned = |ps: &[&str]| ps.iter().map(|p| (*p).to_owned()).collect();
    Ports {
        tcp: owned(tcp),
        udp: owned(udp),
    }
}

/// What the grants (policy version 3, in force) let pass between the example node (tagged `web`) and seat
/// `token`: seat 2 may open flows to the node's TCP port 8080, and the node to seat 2's TCP ports 5432 and
/// 6000 to 6010 and UDP port 53; 7 of seat 2's packets were dropped here. No grant names the other seats.
fn example_peer_policy(token: u64) -> PeerPolicy {
    match token {
        2 => PeerPolicy {
            reaches_here: ports(&["8080"], &[]),
            reachable_there: ports(&["5432", "6000-6010"], &["53"]),
            dropped: no_grant(7),
        },
        _ => PeerPolicy::default(),
    }
}

/// The example node's status: three peers configured, one healthy, one refused.
fn example_status(now: u64) -> Status {
    Status {
        version: "0.1.0".into(),
        commit: Some("0123456789ab".into()),
        started_at: Some(1_795_000_000),
        mode: Mode::Wireguard,
        backend: Some("userspace".into()),
        node: Node {
            instance_id: format!("{:040x}", 1),
            app_id: "0x00112233445566778899aabbccddeeff00112233"
                .parse()
                .expect("address"),
            token_id: Some(1),
            overlay_ip: Some(Ipv4Addr::new(10, 0, 1, 1)),
            wg_public_key: Some(example_key(1)),
            interface: Some("dmesh0".into()),
            listen_port: Some(51820),
            endpoint: Some("192.0.2.1:51820".into()),
            gateway_url: None,
            registered: true,
            registration_error: None,
            attestation: Some(verified()),
            seat_request: None,
            draining: false,
        },
        chain: ChainStatus {
            contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3"
                .parse()
                .expect("address"),
            chain_id: Some(31337),
            rpc_url: "http://127.0.0.1:8545".into(),
            head: Some(122),
            last_processed_block: Some(120),
            lag: Some(2),
            from_cache: false,
            subscribed: false,
            prefix: Some("10.0.1.0/24".into()),
            last_error: None,
            // Three providers, two of which must agree; the third answered a range's logs otherwise.
            verification: Verification {
                verified: true,
                quorum: 2,
                providers: ["a", "b", "c"]
                    .iter()
                    .map(|p| Provider {
                        url: format!("https://{p}.rpc.example/"),
                        agreed: if *p == "c" { 90 } else { 100 },
                        dissented: if *p == "c" { 10 } else { 0 },
                        failed: 0,
                        dissenting: *p == "c",
                        last_dissent: (*p == "c").then(|| "eth_getLogs".into()),
                        dissented_from: match *p {
                            "c" => vec![
                                "https://a.rpc.example/".into(),
                                "https://b.rpc.example/".into(),
                            ],
                            _ => Vec::new(),
                        },
                        failing: None,
                        failing_secs: None,
                    })
                    .collect(),
                splits: 0,
                last_split: None,
            },
        },
        uptime_secs: 3600,
        peers_configured: 3,
        peers_healthy: 1,
        peers_refused: 1,
        nat: Some(Nat {
            mapping: "endpoint-independent".into(),
            mapped: vec!["203.0.113.1:40001".into()],
            servers: vec![
                StunServer {
                    server: "198.51.100.250:3478".into(),
                    mapped: Some("203.0.113.1:40001".into()),
                    rtt_ms: Some(3),
                },
                StunServer {
                    server: "198.51.100.251:3478".into(),
                    mapped: None,
                    rtt_ms: None,
                },
            ],
            candidates: vec![Candidate {
                address: "203.0.113.1:40001".into(),
                source: "stun".into(),
            }],
            checked_at: Some(now - 5),
        }),
        election: Election::default(),
        ports: vec![mesh_api::ForwardedPort {
            role: mesh_api::PortRole::Leader,
            listen: 5432,
            target: 5433,
            bound: vec!["127.0.0.1:5432".parse().unwrap(), "10.0.1.1:5432".parse().unwrap()],
            open: 1,
            total: mesh_api::ForwardCounts {
                opened: 5,
                fenced: 2,
                unreachable: 1,
                bytes_to_service: 4096,
                bytes_from_service: 65536,
            },
            refused: [("not-current".to_owned(), 3)].into(),
            routes: vec![mesh_api::RouteCounts {
                term: Some(8),
                seat: 2,
                counts: mesh_api::ForwardCounts {
                    opened: 3,
                    ..Default::default()
                },
            }],
        }],
        // The PCCS gave no collateral a minute ago; the cached collateral serves meanwhile.
        faults: vec![mesh_api::Fault {
            dependency: "pccs".into(),
            detail: "the PCCS gave no collateral (no answer within 10s); the cached collateral serves until it expires".into(),
            since: Some(now - 60),
        }],
        // Two grants in force; seat 2 tried ports no grant opens to it.
        policy: Some(PolicyStatus {
            enforced: true,
            version: 3,
            pending: None,
            grants: 2,
            own_tags: vec!["web".into()],
            dropped: no_grant(7),
        }),
        peer_relay: None,
    }
}

/// A node with three peers: one healthy over WireGuard, one on its gateway URL, one never seen; and a seat
/// refused for its evidence; two grants between seats in force.
pub fn example_snapshot(now: u64) -> Snapshot {
    let peer = example_peer;
    let peers = vec![
        peer(
            2,
            ConnectionKind::Wireguard,
            Some(now - 12),
            5 * 1024 * 1024,
            1536,
        ),
        peer(3, ConnectionKind::TlsGateway, Some(now - 400), 0, 92),
        peer(4, ConnectionKind::Unreachable, None, 0, 0),
    ];
    Snapshot {
        status: example_status(now),
        peers: peers.into(),
        peers_known: true,
        // Seat 5's binding carries seat 1's quote under another node key.
        refused: vec![RefusedPeer {
            token_id: 5,
            instance_id: format!("{:040x}", 5),
            kind: "report-data-mismatch".into(),
            reason: "the quote's report data commits to another node key, chain or contract: it was made for another binding".into(),
            stage: None,
            stage_until: None,
        }],
        leader: Leader {
            token_id: Some(2),
            instance_id: Some(format!("{:040x}", 2)),
            overlay_ip: Some(Ipv4Addr::new(10, 0, 1, 2)),
            address: Some("10.0.1.2".into()),
            is_self: false,
            reachable: Some(true),
            term: Some(3),
            ..Leader::default()
        },
        counters: Counters {
            reconciles: 4,
            registrations: 1,
            rpc_errors: 0,
            invalid_records: 1,
            chain_requests: 42,
            chain_head_polls: 40,
            relay: RelayCounters {
                streams_open: 1,
                streams_dialled: 1,
                bytes_out: 1480,
                unknown_relay: 2,
                ..RelayCounters::default()
            },
            election: ElectionCounters {
                votes_cast: 1,
                votes_withdrawn: 1,
                ..ElectionCounters::default()
            },
            chain_polls: latency(&[3, 40]),
            reconcile: latency(&[120]),
        },
        check: None,
    }
}

/// Durations of `ms` milliseconds, observed.
fn latency(ms: &[u64]) -> mesh_api::latency::Latency {
    let mut l = mesh_api::latency::Latency::default();
    for &ms in ms {
        l.observe(std::time::Duration::from_millis(ms));
    }
    l
}

/// The real API server on a socket in a temp dir, serving whatever is sent on `publish`; stops on drop.
pub struct FixtureApi {
    pub socket: PathBuf,
    pub publish: watch::Sender<Snapshot>,
    _dir: tempfile::TempDir,
    server: Option<Task<()>>,
}

impl FixtureApi {
    /// Starts serving `snapshot`. Call inside a tokio runtime.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub async fn start(snapshot: Snapshot) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("api.sock");
        let bound = UnixSocket::bind(&socket).await.expect("bind API socket");
        let (publish, rx) = watch::channel(snapshot);
        Self {
            socket,
            publish,
            _dir: dir,
            server: Some(serve(bound, rx)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.socket
    }

    /// The same API on `listener` too, as `--api-listen` serves it (the status page included), until the
    /// task is dropped. Call inside a tokio runtime.
    ///
    /// # Panics
    /// When the listener cannot be handed to tokio.
    pub fn also_on(&self, listener: std::net::TcpListener) -> Task<()> {
        listener
            .set_nonblocking(true)
            .expect("a nonblocking listener");
        let tcp = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        Task::spawn(
            "fixture-api-tcp",
            mesh_api::serve(
                tcp,
                mesh_api::Routes::Api,
                self.publish.subscribe(),
                std::future::pending(),
            ),
        )
    }

    /// Stops serving, as an agent that exits does (its event streams end), and serves `snapshot` on the
    /// same socket again, as the agent does when it comes back.
    ///
    /// # Panics
    /// When the socket cannot be bound again.
    pub async fn restart(&mut self, snapshot: Snapshot) {
        // Once stopped, the old server has closed its connections (their streams end) and given the
        // socket up.
        if let Some(server) = self.server.take() {
            let _ = server.stop().await;
        }
        let (publish, rx) = watch::channel(snapshot);
        self.publish = publish;
        let bound = UnixSocket::bind(&self.socket)
            .await
            .expect("bind the API socket again");
        self.server = Some(serve(bound, rx));
    }
}

/// The whole API on `bound`, until the task is dropped.
fn serve(bound: UnixSocket, rx: watch::Receiver<Snapshot>) -> Task<()> {
    Task::spawn(
        "fixture-api",
        mesh_api::serve(bound, mesh_api::Routes::Api, rx, std::future::pending()),
    )
}
