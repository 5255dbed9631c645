use super::*;
use crate::desired::tests::{own, record, view};
use crate::state::{DeviceInfo, Fault, FaultError, SeatProblem, SeatState};
use mesh_chain::error::ChainError;
use mesh_chain::follow::FullReadError;
use mesh_wg::PeerStatus;
use std::sync::Arc;

mod leader;

/// The numbers below are for a 3 s peer timeout.
const THREE: Liveness = Liveness {
    timeout: Duration::from_secs(3),
};

fn agent() -> AgentFacts {
    AgentFacts {
        mode: Mode::Wireguard,
        contract: Address::repeat_byte(1),
        rpc: RedactedUrl::new(&"https://user:secret@rpc.example/".parse().unwrap()),
        liveness: THREE,
        commit: "0123456789ab",
        started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
    }
}

/// The monotonic "now" of these tests: an hour ahead, so that ages can be taken from it.
fn mono() -> Instant {
    static MONO: std::sync::LazyLock<Instant> =
        std::sync::LazyLock::new(|| Instant::now() + Duration::from_secs(3600));
    *MONO
}

fn clock(wall: SystemTime) -> Clock {
    Clock { wall, mono: mono() }
}

/// Three members: seat 2 heard from a second ago (its handshake 5 s ago), seats 3 and 4 silent for ten
/// minutes, 3 with a gateway URL, 4 with none. Node 1, registered, with an interface.
fn states(now: SystemTime) -> (ChainState, RegState, MeshState) {
    let v = view(&[
        record(2, 0x22, ""),
        record(3, 0x33, "https://three.example"),
        record(4, 0x44, ""),
    ]);
    let (members, _) = crate::desired::members(&v, SeatState::Active(1), own(Some(1)));
    let stat = |k: u8, age: u64, heard: u64| {
        (
            Key::from_bytes([k; 32]),
            PeerStatus {
                peer_relay: None,
                health_timeout: THREE.timeout,
                public_key: Key::from_bytes([k; 32]),
                endpoint: Some(format!("198.51.100.{k}:9").parse().unwrap()),
                // Seat 2 is relayed.
                relay: (k == 0x22).then(|| mesh_wg::RelayTarget {
                    host: "two-51820.example".into(),
                    port: 443,
                }),
                path: if k == 0x22 {
                    PathKind::Relay
                } else {
                    PathKind::Direct
                },
                punch: mesh_wg::PunchStatus {
                    candidates: vec![mesh_wg::Candidate {
                        addr: format!("203.0.113.{k}:41000").parse().unwrap(),
                        source: mesh_wg::CandidateSource::Stun,
                    }],
                    attempts: u64::from(k == 0x22) * 3,
                    relay_reason: (k == 0x22).then(|| "no answer over UDP".to_owned()),
                    ..mesh_wg::PunchStatus::default()
                },
                allowed_ips: Vec::new(),
                last_handshake: Some(now - Duration::from_secs(age)),
                last_heard: Some(mono() - Duration::from_secs(heard)),
                rx_bytes: u64::from(k),
                tx_bytes: 1,
                persistent_keepalive: Some(25),
                relay_error: None,
                reach: mesh_wg::Reach::everything(),
                policy_dropped: mesh_wg::DropCounts::default(),
            },
        )
    };
    let chain = ChainState {
        view: Some(Arc::new(v)),
        head: Some(10),
        seat: SeatState::Active(1),
        requests: 7,
        head_polls: 5,
        rejected: 1,
        // A 5 s lease.
        leader_timeout: Some(Duration::from_secs(10)),
        ..ChainState::default()
    };
    let reg = RegState {
        registered: true,
        registrations: 1,
        ..RegState::default()
    };
    let mesh = MeshState {
        device: Some(DeviceInfo {
            ifname: "dm0".into(),
            listen_port: 51820,
            backend: "userspace",
        }),
        members: members.into_iter().map(|m| (m.token_id, m)).collect(),
        known: true,
        stats: [stat(0x22, 5, 1), stat(0x33, 600, 600), stat(0x44, 600, 600)]
            .into_iter()
            .collect(),
        invalid_records: 2,
        reconciles: 3,
        reconcile_latency: mesh_api::latency::Latency::default(),
        relay: mesh_api::RelayCounters::default(),
        peer_relay: None,
        policy: None,
        nat: Some(mesh_wg::NatStatus {
            report: mesh_wg::NatReport {
                mapping: mesh_wg::Mapping::EndpointIndependent,
                mapped: vec!["203.0.113.1:40000".parse().unwrap()],
                servers: vec![mesh_wg::StunResult {
                    server: "192.0.2.9:3478".parse().unwrap(),
                    mapped: Some("203.0.113.1:40000".parse().unwrap()),
                    rtt: Some(Duration::from_millis(12)),
                }],
                checked_at: Some(now),
            },
            candidates: vec![mesh_wg::Candidate {
                addr: "203.0.113.1:40000".parse().unwrap(),
                source: mesh_wg::CandidateSource::Stun,
            }],
            unanswered_since: None,
        }),
        policy_dropped: mesh_wg::DropCounts::default(),
    };
    (chain, reg, mesh)
}

/// The snapshot of these states, `uptime` after start, at `now`.
fn snapshot(
    chain: &ChainState,
    reg: &RegState,
    mesh: &MeshState,
    uptime: Duration,
    now: SystemTime,
) -> Snapshot {
    rendered(chain, reg, mesh, &LeaderState::default(), uptime, now)
}

/// The snapshot of these states, with `election` as the leader task's.
fn rendered(
    chain: &ChainState,
    reg: &RegState,
    mesh: &MeshState,
    election: &LeaderState,
    uptime: Duration,
    now: SystemTime,
) -> Snapshot {
    let tasks = Published {
        chain,
        reg,
        mesh,
        leader: election,
        check: None,
        dstack: None,
    };
    render(&agent(), &NodeFacts::default(), tasks, uptime, clock(now))
}

fn with_leader(chain: &ChainState, seat: Option<u64>) -> ChainState {
    let mut view = chain.view.as_deref().unwrap().clone();
    view.leader = seat;
    ChainState {
        view: Some(Arc::new(view)),
        ..chain.clone()
    }
}

/// The snapshot of these states with this leader state.
fn with_election(
    chain: &ChainState,
    reg: &RegState,
    mesh: &MeshState,
    election: &LeaderState,
    now: SystemTime,
) -> Snapshot {
    rendered(chain, reg, mesh, election, Duration::ZERO, now)
}

fn no_funds() -> Fault {
    Fault::new(
        "registering this node's record",
        FaultError::NoFundedSender {
            node: Address::repeat_byte(9),
        },
    )
}

/// The registrar's reason is the node's registration error only while it is not registered.
#[test]
fn the_registration_error_is_shown_while_unregistered() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, mut reg, mesh) = states(now);
    reg.error = Some(no_funds());
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert_eq!(s.status.node.registration_error, None, "registered");
    reg.registered = false;
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    let shown = s.status.node.registration_error.unwrap();
    assert!(
        shown.starts_with("registering this node's record: no funded sender"),
        "{shown}"
    );
}

/// Why the node has no seat stays in its status between the chain task's lookups of the seat, however
/// many reads of the chain come in between (each sets the chain's own error anew).
#[test]
fn having_no_seat_is_the_registration_error_until_a_seat_is_found() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (mut chain, mut reg, mesh) = states(now);
    reg.registered = false;
    chain.error = None;
    chain.seat_error = Some(SeatProblem::Inactive { token: 3 });
    let shown = Some("seat 3 of this instance is deactivated: it has no record until its holder runs `meshctl activate --token 3`".to_owned());
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert_eq!(s.status.node.registration_error, shown);
    reg.error = Some(no_funds());
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert_eq!(
        s.status.node.registration_error, shown,
        "the seat comes first: nothing can be registered without one"
    );
}

/// Each peer is offered the best way it can be reached, with its live endpoint and counters.
#[test]
fn peers_are_offered_by_how_they_can_be_reached() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mesh) = states(now);
    let s = snapshot(&chain, &reg, &mesh, Duration::from_secs(9), now);
    let kinds: Vec<_> = s
        .peers
        .iter()
        .map(|p| (p.token_id, p.connection, p.address.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (2, ConnectionKind::Wireguard, Some("10.0.1.2".into())),
            (
                3,
                ConnectionKind::TlsGateway,
                Some("https://three.example".into())
            ),
            (4, ConnectionKind::Unreachable, None),
        ]
    );
    assert_eq!(
        s.peers[0].endpoint.as_deref(),
        Some("198.51.100.34:9"),
        "the live endpoint"
    );
    let paths: Vec<_> = s
        .peers
        .iter()
        .map(|p| (p.path, p.relay_url.as_deref()))
        .collect();
    assert_eq!(
        paths,
        [
            (Some(Path::Relay), Some("https://two-51820.example")),
            (Some(Path::Direct), None),
            (Some(Path::Direct), None),
        ],
        "a relayed peer is still reached at its overlay IP, and says so"
    );
    let relayed = &s.peers[0];
    assert_eq!(relayed.path_reason.as_deref(), Some("no answer over UDP"));
    assert_eq!(relayed.punch_attempts, 3);
    assert_eq!(
        relayed.candidates,
        [mesh_api::Candidate {
            address: "203.0.113.34:41000".into(),
            source: "stun".into()
        }],
        "the candidates punching tries"
    );
    assert_eq!(
        s.peers[1].path_reason, None,
        "a direct peer needs no reason"
    );
    let nat = s.status.nat.as_ref().expect("the device's NAT");
    assert_eq!(nat.mapping, "endpoint-independent");
    assert_eq!(nat.mapped, ["203.0.113.1:40000"]);
    assert_eq!(nat.servers[0].rtt_ms, Some(12));
    assert_eq!(nat.candidates[0].source, "stun");
    assert_eq!(nat.checked_at, Some(1_000_000));
    assert_eq!((s.status.peers_configured, s.status.peers_healthy), (3, 1));
}

/// A pair that goes through a third member names that member's seat; one that goes through a key no member
/// holds names none, and the others name none.
#[test]
fn a_peer_reached_through_a_member_names_its_seat() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mut mesh) = states(now);
    let relay_through = |mesh: &mut MeshState, peer: u8, relay: u8| {
        let stat = mesh.stats.get_mut(&Key::from_bytes([peer; 32])).unwrap();
        stat.path = PathKind::PeerRelay;
        stat.peer_relay = Some(Key::from_bytes([relay; 32]));
    };
    relay_through(&mut mesh, 0x33, 0x44);
    relay_through(&mut mesh, 0x22, 0x99);
    let s = snapshot(&chain, &reg, &mesh, Duration::from_secs(9), now);
    let seats: Vec<_> = s.peers.iter().map(|p| (p.token_id, p.relay_seat)).collect();
    assert_eq!(seats, [(2, None), (3, Some(4)), (4, None)]);
}

/// A peer is healthy while it was heard from within the peer timeout, whatever its session: one whose
/// handshake is seconds old but that has been silent for the timeout is not (it died, froze or was cut
/// off since), and one heard again is healthy at once. The publisher wakes when the next one dies.
#[test]
fn a_peer_is_healthy_only_while_it_was_heard_within_the_peer_timeout() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mut mesh) = states(now);
    let heard = |mesh: &mut MeshState, ms: u64| {
        let two = mesh.stats.get_mut(&Key::from_bytes([0x22; 32])).unwrap();
        two.last_heard = Some(mono() - Duration::from_millis(ms));
    };
    let two = |mesh: &MeshState| {
        let s = snapshot(&chain, &reg, mesh, Duration::ZERO, now);
        let p = s.peers.iter().find(|p| p.token_id == 2).unwrap();
        (p.healthy, p.connection, p.address.clone(), p.last_heard)
    };
    heard(&mut mesh, 2_999);
    assert_eq!(
        two(&mesh),
        (
            true,
            ConnectionKind::Wireguard,
            Some("10.0.1.2".into()),
            Some(999_997)
        )
    );
    assert_eq!(
        health_changes_at(&mesh, mono()),
        Some(mono() + Duration::from_millis(1)),
        "the publisher renders again as seat 2 dies"
    );
    heard(&mut mesh, 3_000);
    assert_eq!(
        two(&mesh),
        (false, ConnectionKind::Unreachable, None, Some(999_997)),
        "silent for the timeout, though its handshake is 5 s old"
    );
    assert_eq!(health_changes_at(&mesh, mono()), None);
    heard(&mut mesh, 0);
    assert!(two(&mesh).0, "heard again: healthy at once");
}

/// The status and counters gather what each task published.
#[test]
fn status_and_counters_gather_every_task() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (mut chain, mut reg, mesh) = states(now);
    let s = snapshot(&chain, &reg, &mesh, Duration::from_secs(9), now);
    assert_eq!(s.status.node.token_id, Some(1));
    assert_eq!(s.status.node.overlay_ip, Some("10.0.1.1".parse().unwrap()));
    assert_eq!(s.status.node.interface.as_deref(), Some("dm0"));
    assert_eq!(s.status.backend.as_deref(), Some("userspace"));
    assert!(s.status.node.registered);
    assert_eq!(s.status.chain.lag, Some(10), "the view is at block 0");
    assert_eq!(s.status.uptime_secs, 9);
    assert_eq!(s.status.started_at, Some(1_795_000_000));
    assert_eq!(s.status.commit.as_deref(), Some("0123456789ab"));
    assert_eq!(
        (
            s.counters.reconciles,
            s.counters.registrations,
            s.counters.invalid_records,
            s.counters.chain_requests,
            s.counters.chain_head_polls
        ),
        (3, 1, 3, 7, 5)
    );
    // The chain's error is shown before the registrar's, with its causes and no credentials.
    reg.error = Some(no_funds());
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert!(
        s.status
            .chain
            .last_error
            .unwrap()
            .contains("no funded sender")
    );
    chain.error = Some(Fault::new(
        "following the chain",
        FaultError::FullRead(FullReadError::Read(Arc::new(ChainError::Implausible {
            detail: "https://user:secret@rpc.example/ refused".into(),
        }))),
    ));
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert_eq!(
        s.status.chain.last_error.as_deref(),
        Some(
            "following the chain: the full read failed (the RPC's answer cannot be true of a cluster contract: https://***:***@rpc.example/ refused); following events meanwhile"
        )
    );
}

/// Counters and handshake ages are not a change for applications; a new address or key is.
#[test]
fn only_what_applications_use_is_a_change() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mesh) = states(now);
    let a = snapshot(&chain, &reg, &mesh, Duration::ZERO, now).peers;
    let mut b = a.to_vec();
    b[0].rx_bytes += 100;
    b[0].latest_handshake = Some(1);
    assert!(!mesh_api::peers_changed(&a, &b));
    b[1].address = None;
    assert!(mesh_api::peers_changed(&a, &b));
    assert!(mesh_api::peers_changed(&a, &a[1..]));
}

/// `/v1/status` shows this node's vote and its last ballot: a withdrawal names the seat of the vote it
/// takes back, and the time it was sent is on the wall clock.
#[test]
fn the_status_shows_the_vote_and_the_last_ballot_with_its_time() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mesh) = states(now);
    let election = LeaderState {
        vote: None,
        last_ballot: Some(crate::leadership::state::BallotLog {
            ballot: Ballot::Withdraw,
            withdrawn: Some(2),
            reason: "seat 2 answers again".into(),
            sent: mono() - Duration::from_secs(7),
            outcome: mesh_api::BallotOutcome::Mined,
            error: None,
        }),
        ..LeaderState::default()
    };
    let s = with_election(&chain, &reg, &mesh, &election, now);
    assert_eq!(
        serde_json::to_value(&s.status.election).unwrap(),
        serde_json::json!({
            "vote": null,
            "lastBallot": {
                "kind": "withdraw",
                "seat": 2,
                "reason": "seat 2 answers again",
                "outcome": "mined",
                "sentAt": 999_993,
            }
        })
    );
    let none = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert_eq!(
        serde_json::to_value(&none.status.election).unwrap(),
        serde_json::json!({ "vote": null })
    );
}

/// A seat below the TCB policy and no longer admitted is kept where it was configured, and shown as a peer;
/// one this node never configured (it restarted meanwhile) is a refusal with its stage, not left out of
/// every list.
#[test]
fn a_not_admitted_seat_this_node_never_had_is_a_refusal_with_its_stage() {
    use crate::tcb_stages::{Stage, Standing};
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (mut chain, reg, mesh) = states(now);
    let verdict = mesh_attest::Verdict {
        instance_id: [2; 20],
        app_id: [0; 20],
        compose_hash: [0; 32],
        os_measurement: [0; 32],
        tcb_status: mesh_attest::TcbStatus::OutOfDate,
        advisory_ids: Vec::new(),
        fmspc: [0; 6],
        collateral_next_update: 2_000_000,
        evidence_hash: [0; 32],
    };
    let below = |seat: u64| {
        (
            seat,
            Attested::BelowPolicy {
                verdict: Box::new(verdict.clone()),
                standing: Standing {
                    stage: Stage::NotAdmitted,
                    since: 999_000,
                    until: Some(1_000_600),
                    shortfall: "the platform's TCB status is OutOfDate".into(),
                },
            },
        )
    };
    // Seat 2 was configured before (it is in the admitted view); seat 5 was not.
    chain.attestations = Arc::new([below(2), below(5)].map(|(t, a)| (t, Arc::new(a))).into());
    let s = rendered(
        &chain,
        &reg,
        &mesh,
        &LeaderState::default(),
        Duration::ZERO,
        now,
    );
    assert!(s.peers.iter().any(|p| p.token_id == 2), "kept where it was");
    assert_eq!(s.refused.len(), 1, "{:?}", s.refused);
    let r = &s.refused[0];
    assert_eq!(
        (
            r.token_id,
            r.kind.as_str(),
            r.stage.as_deref(),
            r.stage_until
        ),
        (5, "tcb-policy", Some("not-admitted"), Some(1_000_600))
    );
    assert!(
        r.reason
            .starts_with("the platform's TCB status is OutOfDate; not admitted"),
        "{}",
        r.reason
    );
    assert_eq!(s.status.peers_refused, 1);
}

/// With a policy in force, the status names it, this node's tags and what it dropped here, and each peer
/// says what it reaches here (as the interface enforces it), what this node reaches there, and its drops.
/// Not in force, the status says so and no peer carries a policy. The status follows the interface: a
/// version read but not yet planned is named apart, as pending.
#[test]
fn the_policy_in_force_is_shown_with_each_peers_reach_and_drops() {
    use mesh_policy::{Grant, Policy, Protocol};
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mut mesh) = states(now);
    let (web, db) = (1, 2);
    let policy = mesh_chain::policy::ClusterPolicy {
        rules: Policy {
            enforced: true,
            version: 7,
            tag_names: vec!["web".into(), "db".into()],
            grants: vec![Grant {
                from: web,
                to: db,
                protocol: Some(Protocol::Tcp),
                ports: 5432..=5432,
            }],
        },
        seat_tags: [(1, db), (2, web)].into(),
        app_tags: Default::default(),
    };
    let postgres = mesh_wg::Reach {
        all: false,
        tcp: vec![5432..=5432],
        udp: Vec::new(),
    };
    let keys: Vec<Key> = mesh.stats.keys().copied().collect();
    for key in keys {
        let stat = mesh.stats.get_mut(&key).unwrap();
        stat.reach = if key == Key::from_bytes([0x22; 32]) {
            postgres.clone()
        } else {
            mesh_wg::Reach::default()
        };
    }
    let two = mesh.stats.get_mut(&Key::from_bytes([0x22; 32])).unwrap();
    two.policy_dropped.no_grant = 4;
    mesh.policy_dropped.no_grant = 6;
    mesh.policy_dropped.protocol = 1;
    let enforced = ChainState {
        grants: Some(Arc::new(policy.clone())),
        ..chain.clone()
    };
    mesh.policy.clone_from(&enforced.grants);
    let s = snapshot(&enforced, &reg, &mesh, Duration::ZERO, now);
    let status = s.status.policy.expect("the policy is shown once read");
    assert!(status.enforced);
    assert_eq!((status.version, status.grants), (7, 1));
    assert_eq!(status.own_tags, ["db"]);
    assert_eq!((status.dropped.no_grant, status.dropped.protocol), (6, 1));
    let peer = |seat: u64| s.peers.iter().find(|p| p.token_id == seat).unwrap();
    let two = peer(2).policy.as_ref().expect("a policy between us");
    assert_eq!(two.reaches_here.tcp, ["5432"]);
    assert!(two.reaches_here.udp.is_empty());
    assert!(
        two.reachable_there.tcp.is_empty(),
        "no grant from db to web"
    );
    assert_eq!(two.dropped.no_grant, 4);
    let three = peer(3).policy.as_ref().unwrap();
    assert!(
        three.reaches_here.tcp.is_empty(),
        "an untagged seat reaches nothing here"
    );

    assert_eq!(status.pending, None, "the interface holds what was read");

    let relaxed = ChainState {
        grants: Some(Arc::new(mesh_chain::policy::ClusterPolicy {
            rules: Policy {
                enforced: false,
                version: 8,
                ..policy.rules.clone()
            },
            ..policy
        })),
        ..chain
    };
    // Read, not yet planned: the status says what the interface still enforces, and names the new version.
    let s = snapshot(&relaxed, &reg, &mesh, Duration::ZERO, now);
    let status = s.status.policy.expect("applied");
    assert!(status.enforced, "the interface still enforces version 7");
    assert_eq!((status.version, status.pending), (7, Some(8)));

    mesh.policy.clone_from(&relaxed.grants);
    let s = snapshot(&relaxed, &reg, &mesh, Duration::ZERO, now);
    let status = s.status.policy.expect("applied");
    assert!(!status.enforced);
    assert_eq!((status.version, status.pending), (8, None));
    assert!(
        s.peers.iter().all(|p| p.policy.is_none()),
        "no policy in force"
    );
}
