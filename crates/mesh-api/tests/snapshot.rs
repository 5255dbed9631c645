//! What the agent's API serves, written out once for every stand-in agent of the SDKs and the examples.
//!
//! `sdk/fixtures/snapshot.json` holds the bodies of `GET /v1/status`, `/v1/peers` and `/v1/leader` of node 1
//! of a three-seat cluster that seat 2 leads, and `/v1/leader` as seat 2 sees it (leading, then handing off
//! to seat 3) and as an agent that has not read the chain yet serves it. This test makes them from the
//! types the agent serves and checks the file holds exactly them. The stand-in agents of the Python SDK's
//! tests (sdk/python/tests/fake_agent.py), of the TypeScript SDK's (sdk/typescript/test/fake-agent.ts) and
//! of the examples' (examples/tests/agent_stub.py) build their answers from the file, so that a field
//! renamed, added or removed here reaches all three. After a change of the types, write the file anew with
//! `DSTACK_MESH_WRITE_FIXTURES=1 cargo test -p mesh-api --test snapshot`.

mod support;

use std::net::Ipv4Addr;

use alloy_primitives::Address;
use mesh_api::{
    Attestation, BallotKind, BallotOutcome, BallotReport, Candidate, ChainStatus, ConnectionKind,
    Election, Freshness, HandingOff, Leader, Mode, Nat, Node, Path, Peer, PeerPolicy,
    PeerRelayStatus, PolicyDrops, PolicyStatus, Ports, Provider, Status, StunServer, Verification,
};
use serde_json::json;
use wg_key::Key;

/// The cluster's contract (the first one a fresh anvil deploys).
const CONTRACT: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
/// Unix seconds the snapshot is taken at.
const NOW: u64 = 1_763_856_000;

fn ip(seat: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, seat)
}

fn endpoint(seat: u8) -> String {
    format!("192.0.2.{seat}:51820")
}

fn attestation() -> Attestation {
    Attestation {
        verified: true,
        tcb_status: Some("UpToDate".into()),
        compose_hash: Some(format!("0x{}", "ab".repeat(32))),
        collateral_until: Some(NOW + 30 * 86_400),
        kind: None,
        reason: None,
        tcb_stage: None,
        tcb_stage_until: None,
    }
}

/// Node 1, as its `GET /v1/status` shows it: registered, following the chain, nothing failing, under grants
/// between seats in force.
fn status() -> Status {
    let contract: Address = CONTRACT.parse().expect("an address");
    Status {
        version: "0.1.0".into(),
        commit: Some("b4d7702".into()),
        started_at: Some(NOW - 12),
        mode: Mode::Wireguard,
        backend: Some("userspace".into()),
        node: Node {
            instance_id: "ab12cd34".into(),
            app_id: Address::repeat_byte(0x11),
            token_id: Some(1),
            overlay_ip: Some(ip(1)),
            wg_public_key: Some(Key::from_bytes([0x11; 32])),
            interface: Some("dsm0".into()),
            listen_port: Some(51820),
            endpoint: Some(endpoint(1)),
            gateway_url: None,
            registered: true,
            registration_error: None,
            attestation: Some(attestation()),
            seat_request: None,
            draining: false,
        },
        chain: ChainStatus {
            contract,
            chain_id: Some(31337),
            rpc_url: "http://127.0.0.1:8545".into(),
            head: Some(120),
            last_processed_block: Some(118),
            lag: Some(2),
            from_cache: false,
            subscribed: false,
            prefix: Some("10.0.1.0/24".into()),
            last_error: None,
            verification: Verification {
                verified: false,
                quorum: 1,
                providers: vec![Provider {
                    url: "http://127.0.0.1:8545".into(),
                    agreed: 40,
                    ..Provider::default()
                }],
                splits: 0,
                last_split: None,
            },
        },
        uptime_secs: 12,
        peers_configured: 2,
        peers_healthy: 2,
        peers_refused: 0,
        nat: Some(Nat {
            mapping: "endpoint-independent".into(),
            mapped: vec![endpoint(1)],
            servers: vec![StunServer {
                server: "stun.example:3478".into(),
                mapped: Some(endpoint(1)),
                rtt_ms: Some(12),
            }],
            candidates: vec![Candidate {
                address: endpoint(1),
                source: "local".into(),
            }],
            checked_at: Some(NOW - 5),
        }),
        election: Election {
            vote: None,
            last_ballot: Some(BallotReport {
                kind: BallotKind::Elect,
                seat: None,
                reason: "the cluster has no leader".into(),
                outcome: BallotOutcome::Preempted,
                error: None,
                sent_at: NOW - 10,
            }),
        },
        ports: Vec::new(),
        faults: Vec::new(),
        policy: Some(PolicyStatus {
            enforced: true,
            version: 3,
            pending: None,
            grants: 2,
            own_tags: vec!["web".into()],
            dropped: no_grant(7),
        }),
        peer_relay: Some(PeerRelayStatus {
            offering: true,
            why: "--relay-for-peers always".into(),
            allocations: 1,
            granted: 3,
            forwarded_bytes: 9_437_184,
            forwarded_datagrams: 6_912,
            refused: [("peer-not-on-udp".to_owned(), 2)].into(),
            dropped: [("stranger".to_owned(), 1)].into(),
            malformed: 0,
        }),
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

/// What the grants (policy version 3, in force) let pass between node 1 (tagged `web`) and seat `seat`:
/// seat 2 may open flows to node 1's TCP port 8080, and node 1 to seat 2's TCP ports 5432 and 6000 to 6010
/// and UDP port 53; 7 of seat 2's packets were dropped here. No grant names seat 3 either way.
fn peer_policy(seat: u8) -> PeerPolicy {
    match seat {
        2 => PeerPolicy {
            reaches_here: ports(&["8080"], &[]),
            reachable_there: ports(&["5432", "6000-6010"], &["53"]),
            dropped: no_grant(7),
        },
        _ => PeerPolicy::default(),
    }
}

/// Seat `seat` as node 1 sees it: over its tunnel, directly, healthy.
fn peer(seat: u8, leader: bool) -> Peer {
    Peer {
        token_id: seat.into(),
        instance_id: format!("inst{seat}"),
        overlay_ip: ip(seat),
        wg_public_key: Some(Key::from_bytes([seat * 0x11; 32])),
        endpoint: Some(endpoint(seat)),
        gateway_url: None,
        connection: ConnectionKind::Wireguard,
        path: Some(Path::Direct),
        relay_url: None,
        relay_seat: None,
        path_reason: None,
        candidates: vec![Candidate {
            address: endpoint(seat),
            source: "local".into(),
        }],
        punch_attempts: 0,
        address: Some(ip(seat).to_string()),
        healthy: true,
        draining: false,
        latest_handshake: Some(NOW),
        last_heard: Some(NOW + 1),
        rx_bytes: 123,
        tx_bytes: 456,
        leader,
        attestation: Some(attestation()),
        holder: None,
        policy: Some(peer_policy(seat)),
    }
}

/// Seat 2 leads under term 2, elected; as node 1 sees it, confirmed by seat 2 itself.
fn leader() -> Leader {
    Leader {
        token_id: Some(2),
        instance_id: Some("inst2".into()),
        overlay_ip: Some(ip(2)),
        address: Some(ip(2).to_string()),
        is_self: false,
        reachable: Some(true),
        term: Some(2),
        state: Freshness::Current,
        age_ms: Some(412),
        lease_ms: None,
        timeout_ms: Some(8_000),
        healthy: true,
        reason: None,
        term_reason: Some("elected".into()),
        ..Leader::default()
    }
}

/// The same, as seat 2 sees it: it holds the lease.
fn leader_self() -> Leader {
    Leader {
        is_self: true,
        reachable: None,
        lease_ms: Some(2_100),
        ..leader()
    }
}

/// Seat 2 draining (SIGTERM): it released term 2 and asked the contract to give the lead to seat 3. Its
/// lease ended when it released the term, before the transaction: it no longer says it leads.
fn leader_handing_off() -> Leader {
    Leader {
        is_self: false,
        lease_ms: None,
        reason: Some(
            "this node is handing its term to another seat, and does not lead under it again"
                .into(),
        ),
        handing_off: Some(HandingOff {
            term: 2,
            to: 3,
            cause: "drain".into(),
            since_ms: 150,
            error: None,
        }),
        draining: vec![2],
        ..leader_self()
    }
}

fn rendered() -> serde_json::Value {
    json!({
        "about": "What the agent's API serves, for the stand-in agents of the SDKs' and the examples' tests: GET /v1/status, /v1/peers and /v1/leader of node 1 of a three-seat cluster that seat 2 leads; /v1/leader as seat 2 sees it (leaderSelf), as it hands off to seat 3 (leaderHandingOff), and before the agent has read the chain (leaderUnknown). Written by crates/mesh-api/tests/snapshot.rs from the Rust types. Do not edit by hand: DSTACK_MESH_WRITE_FIXTURES=1 cargo test -p mesh-api --test snapshot",
        "status": status(),
        "peers": [peer(2, true), peer(3, false)],
        "leader": leader(),
        "leaderSelf": leader_self(),
        "leaderHandingOff": leader_handing_off(),
        "leaderUnknown": Leader::default(),
    })
}

#[test]
fn the_stand_in_agents_fixture_is_what_the_api_serves() {
    support::check_fixture("snapshot.json", "snapshot", &rendered());
}

#[test]
fn the_fixture_reads_back_as_the_types_it_was_made_of() {
    let doc = rendered();
    let status: Status = serde_json::from_value(doc["status"].clone()).expect("a status");
    assert_eq!(status, self::status());
    let peers: Vec<Peer> = serde_json::from_value(doc["peers"].clone()).expect("peers");
    assert_eq!(peers, vec![peer(2, true), peer(3, false)]);
    for (name, want) in [
        ("leader", leader()),
        ("leaderSelf", leader_self()),
        ("leaderHandingOff", leader_handing_off()),
        ("leaderUnknown", Leader::default()),
    ] {
        let got: Leader = serde_json::from_value(doc[name].clone()).expect("a leader");
        assert_eq!(got, want, "{name}");
    }
}
