//! The one definition of "a peer changed" ([`Peer::change_key`]), written out as cases for the SDKs.
//!
//! `sdk/fixtures/peer_changes.json` holds pairs of peers as `GET /v1/peers` shows them, each with whether
//! applications see a change. This test makes every case from the Rust definition and checks the file
//! holds exactly them; the Python and TypeScript SDKs' tests read the same file and check their own
//! definitions against it, so the three cannot drift apart. After a change of the definition, write the
//! file anew with `DSTACK_MESH_WRITE_FIXTURES=1 cargo test -p mesh-api --test peer_changes`.

mod support;

use std::net::Ipv4Addr;

use mesh_api::{Attestation, Candidate, ConnectionKind, Path, Peer};
use serde_json::json;
use wg_key::Key;

fn base() -> Peer {
    Peer {
        token_id: 2,
        instance_id: "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c".into(),
        overlay_ip: Ipv4Addr::new(10, 0, 1, 2),
        wg_public_key: Some(Key::from_bytes([0x22; 32])),
        endpoint: Some("192.0.2.2:51820".into()),
        gateway_url: Some("https://1f2e3d4c-8090.gateway.example:443".into()),
        connection: ConnectionKind::Wireguard,
        path: Some(Path::Direct),
        relay_url: Some("wss://1f2e3d4c-8090.gateway.example:443".into()),
        relay_seat: None,
        path_reason: None,
        candidates: vec![Candidate {
            address: "192.0.2.2:51820".into(),
            source: "local".into(),
        }],
        punch_attempts: 0,
        address: Some("10.0.1.2".into()),
        healthy: true,
        draining: false,
        latest_handshake: Some(1_795_000_000),
        last_heard: Some(1_795_000_001),
        rx_bytes: 1_000,
        tx_bytes: 2_000,
        leader: false,
        attestation: Some(Attestation {
            verified: true,
            tcb_status: Some("UpToDate".into()),
            compose_hash: Some(format!("0x{}", "ab".repeat(32))),
            collateral_until: None,
            kind: None,
            reason: None,
            tcb_stage: None,
            tcb_stage_until: None,
        }),
        holder: None,
        policy: None,
    }
}

/// Each case: what happened to the peer, and the peer after it.
fn cases() -> Vec<(&'static str, Peer)> {
    let with = |f: fn(&mut Peer)| {
        let mut p = base();
        f(&mut p);
        p
    };
    vec![
        ("nothing moved", base()),
        (
            "only its traffic counters moved",
            with(|p| {
                p.rx_bytes += 5_000;
                p.tx_bytes += 7_000;
            }),
        ),
        (
            "a new handshake",
            with(|p| p.latest_handshake = Some(1_795_000_120)),
        ),
        (
            "it was heard again",
            with(|p| p.last_heard = Some(1_795_000_002)),
        ),
        (
            "hole punching tried once more",
            with(|p| p.punch_attempts = 3),
        ),
        (
            "it published another candidate",
            with(|p| {
                p.candidates.push(Candidate {
                    address: "198.51.100.7:40000".into(),
                    source: "stun".into(),
                })
            }),
        ),
        (
            "its attestation was checked under newer collateral",
            with(|p| {
                if let Some(a) = &mut p.attestation {
                    a.tcb_status = Some("SWHardeningNeeded".into());
                }
            }),
        ),
        (
            "its gateway URL changed, while the tunnel carries it",
            with(|p| p.gateway_url = Some("https://1f2e3d4c-8090.other.example:443".into())),
        ),
        ("another seat", with(|p| p.token_id = 3)),
        (
            "another instance in the seat",
            with(|p| p.instance_id = "9a8b7c6d5e4f30211f2e3d4c5b6a79881f2e3d4c".into()),
        ),
        (
            "a new WireGuard key",
            with(|p| p.wg_public_key = Some(Key::from_bytes([0x33; 32]))),
        ),
        ("its key was withdrawn", with(|p| p.wg_public_key = None)),
        (
            "it roamed to another endpoint",
            with(|p| p.endpoint = Some("192.0.2.9:51820".into())),
        ),
        (
            "its tunnel went down and the gateway URL is the address",
            with(|p| {
                p.connection = ConnectionKind::TlsGateway;
                p.address = p.gateway_url.clone();
            }),
        ),
        (
            "it moved to its relay",
            with(|p| {
                p.path = Some(Path::Relay);
                p.path_reason = Some("no answer over UDP".into());
            }),
        ),
        (
            "hole punching brought it back over UDP",
            with(|p| p.path = Some(Path::Punched)),
        ),
        ("it stopped answering", with(|p| p.healthy = false)),
        ("it became the leader", with(|p| p.leader = true)),
        ("it is being drained", with(|p| p.draining = true)),
        (
            "nothing reaches it any more",
            with(|p| {
                p.connection = ConnectionKind::Unreachable;
                p.address = None;
                p.healthy = false;
            }),
        ),
    ]
}

fn rendered() -> serde_json::Value {
    let base = base();
    let cases: Vec<_> = cases()
        .into_iter()
        .map(|(name, new)| {
            json!({
                "name": name,
                "old": base,
                "new": new,
                "changed": base.change_key() != new.change_key(),
            })
        })
        .collect();
    json!({
        "about": "Pairs of peers as GET /v1/peers shows them, and whether applications see a change (Peer::change_key). Written by crates/mesh-api/tests/peer_changes.rs from the Rust definition; the Python and TypeScript SDKs' tests check theirs against it. Do not edit by hand: DSTACK_MESH_WRITE_FIXTURES=1 cargo test -p mesh-api --test peer_changes",
        "cases": cases,
    })
}

#[test]
fn the_sdks_fixture_holds_every_case_of_the_rust_definition() {
    support::check_fixture("peer_changes.json", "peer_changes", &rendered());
}

#[test]
fn the_cases_tell_changes_from_movement_both_ways() {
    let base = base();
    let changed: Vec<bool> = cases()
        .iter()
        .map(|(_, new)| base.change_key() != new.change_key())
        .collect();
    assert!(changed.iter().filter(|c| **c).count() >= 5);
    assert!(changed.iter().filter(|c| !**c).count() >= 5);
}
