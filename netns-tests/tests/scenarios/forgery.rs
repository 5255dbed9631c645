//! Membership cannot be forged. In a running three-node mesh (node 4 is on the LAN without a seat), an
//! attacker who can sign with some instances' dstack keys sends `registerPeer` directly (not through the
//! agent or `meshctl`, which would refuse) for seat 3:
//! - with node 1's proof (another instance's) for node 3's seat;
//! - with node 3's proof whose app signature is by another key;
//! - replaying node 3's previous record after it rotated its key.
//!
//! Each must revert with the contract's named error, mine nothing, and leave every node's peers as they
//! were. Then a `wireguard-go` node whose key is not on-chain tries node 1 from node 4's namespace, even
//! claiming node 3's overlay address: it must get no handshake and no reply, and node 1 must not learn of it.
//!
//! Last, the attack that was seen on a contract accepting two encodings per signature: a third party copies
//! node 3's next registration (as it would from the mempool), re-encodes one signature's v, and sends it
//! first. Each re-encoding reverts with `RegistryMalformedSignature`; node 3's own registration then lands
//! and node 3 stays a member.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios forgery:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs, and `wireguard-go`. `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents'
//! logs.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr as _;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use dstack_guest::chain as proof;
use mesh_chain::record::{PeerRecord, SignedRegistration};
use netns_tests::net::wg::{Reference, WireguardGo, parse_dump, test_key};
use netns_tests::prelude::*;
use netns_tests::system::attack::{
    CHAIN_ID, current_registration, node_identity, on_chain, send_registration, sibling_node_key,
};

const NODES: usize = 4;
const SEATS: usize = 3;

/// What a node has of the mesh: each peer seat's key and endpoint as its agent reports them, and the keys
/// on its interface.
#[derive(Debug, PartialEq, Eq)]
struct NodeView {
    /// Seat -> (key, endpoint).
    peers: BTreeMap<u64, (Option<Key>, Option<String>)>,
    interface_keys: BTreeSet<Key>,
}

fn view(a: &Agent<'_>) -> NodeView {
    let (_, peers) = a.status();
    NodeView {
        peers: peers
            .into_iter()
            .map(|p| (p.token_id, (p.wg_public_key, p.endpoint)))
            .collect(),
        interface_keys: a.wg_peer_keys(),
    }
}

#[test]
fn forged_registrations_revert_and_unknown_keys_get_no_handshake() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["wireguard-go"]);
    let steps = Steps::new("forgery");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_seats(&lan, SEATS);
    let contract = Address::from_str(&cluster.contract).expect("contract address");
    let (mut agents, mut keys) = Agent::builder(&cluster).mesh(1..=SEATS);
    steps.step("3-node mesh healthy");

    // Node 3's current record, exactly as registered, from its event: the replay to come.
    let old_record = current_registration(&lan.switch, contract, 3);
    assert_eq!(Key::from_bytes(old_record.wg_public_key.0), keys[2]);
    agents[2].restart(&["--wg-key-epoch", "1"]);
    agents[2].wait_ready(60);
    keys[2] = agents[2].key();
    wait_full_mesh(&agents, &keys);
    let nonce = on_chain(&lan.switch, contract, async |c| {
        c.getPeer(U256::from(3))
            .call()
            .await
            .expect("getPeer(3)")
            .nonce
    });
    assert!(nonce > old_record.nonce);
    steps.step(&format!(
        "node 3 rotated its key (nonce {} -> {nonce}); every node follows",
        old_record.nonce
    ));

    let before: Vec<_> = agents.iter().map(view).collect();
    let attacker_wg = B256::from(*test_key(66).public_key().as_bytes());
    let record_for_seat_3 = |nonce: u64| PeerRecord {
        tokenId: U256::from(3),
        instanceId: cluster.sims[2].instance_id.clone(),
        wgPublicKey: attacker_wg,
        endpoint: format!("{}:{WG_PORT}", lan_ip(4)),
        gatewayUrl: String::new(),
        nonce,
    };

    // 1. Node 1's proof (its instance, its node key) on a record for node 3's seat.
    let node1 = node_identity(&cluster, 1, 0);
    let node3 = node_identity(&cluster, 3, 0);
    let mut with_node1_proof = node3
        .node
        .sign(record_for_seat_3(nonce + 1), CHAIN_ID, contract)
        .expect("node 3 signs");
    with_node1_proof.proof = node1.node.proof.clone();
    // 2. The sibling attack: node 1 asks its own dstack for a chain naming node 3's instance and its own node
    //    key (dstack's GetKey is per app, so it gets one), and signs a record for seat 3 with that key.
    let sibling = sibling_node_key(&cluster, 1, &cluster.sims[2].instance_id)
        .sign(record_for_seat_3(nonce + 1), CHAIN_ID, contract)
        .expect("the sibling signs");
    // 3. Node 3's own proof, but the app key and its signature are the attacker's.
    let mut fake_app = node3
        .node
        .sign(record_for_seat_3(nonce + 1), CHAIN_ID, contract)
        .expect("node 3 signs");
    let attacker = k256::ecdsa::SigningKey::from_slice(&[0x5a; 32]).expect("attacker key");
    let derived = k256::ecdsa::VerifyingKey::from_sec1_bytes(
        &[&[4u8][..], fake_app.proof.derived_public_key.as_slice()].concat(),
    )
    .expect("derived key");
    let message = proof::app_message(&fake_app.proof.purpose, &proof::compressed(&derived));
    fake_app.proof.app_signature = proof::sign_dstack_message(&attacker, &message)
        .expect("attacker signs")
        .into();
    fake_app.proof.app_public_key = proof::uncompressed_xy(attacker.verifying_key());

    for (what, reg, want) in [
        (
            "another instance's proof",
            &with_node1_proof,
            "RegistryPurposeMismatch",
        ),
        (
            "a sibling instance's own node key with a genuine chain for seat 3's instance",
            &sibling,
            "RegistryPurposeMismatch",
        ),
        (
            "an app signature by another key",
            &fake_app,
            "RegistryKmsSignatureInvalid",
        ),
        (
            "node 3's replayed previous record",
            &old_record,
            "RegistryStaleNonce",
        ),
    ] {
        let (error, block_before, block_after) = send_registration(&lan.switch, contract, reg);
        assert_eq!(error, want, "{what}: registerPeer must revert with {want}");
        assert_eq!(block_before, block_after, "{what}: a block was mined");
        steps.step(&format!("{what}: reverted with {error}, nothing mined"));
    }
    // Give the agents several polls to (wrongly) react, then compare.
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<_> = agents.iter().map(view).collect();
    assert_eq!(before, after, "a node's peers changed after the forgeries");
    assert_eq!(cluster.onchain_key(3), Some(keys[2]));
    steps.step("every node's peers and seat 3's record are unchanged");

    // A WireGuard peer that is not on-chain: wireguard-go in node 4's namespace, claiming node 3's address.
    let node1_key = agents[0].key();
    let mut impostor = WireguardGo::start(
        &Reference::WireguardGo,
        lan.node(4),
        &test_key(66),
        "10.0.1.3/24",
        &node1_key,
        &format!("{}:{WG_PORT}", lan_ip(1)),
        "10.0.1.0/24",
    );
    let got = ping(lan.node(4), overlay_ip(1), 5, Duration::from_millis(200));
    impostor.assert_running();
    assert_eq!(got.1, 0, "the impostor got replies from node 1: {got:?}");
    let (_, dump) = parse_dump(
        &lan.node(4)
            .exec_ok(&["wg", "show", &impostor.ifname, "dump"]),
    );
    assert_eq!(dump.len(), 1);
    assert!(
        dump[0].latest_handshake == 0 && dump[0].rx == 0 && dump[0].tx > 0,
        "the impostor sent initiations and must have had no handshake and nothing back: {dump:?}"
    );
    let impostor_key = impostor.public_key;
    assert!(
        !agents[0].wg_peer_keys().contains(&impostor_key),
        "node 1 added the impostor"
    );
    assert_eq!(view(&agents[0]), before[0], "node 1's peers changed");
    assert_pings(&agents, 1, 3);
    steps.step(&format!(
        "wireguard-go with an unregistered key: {} bytes of initiations sent, no handshake, no reply",
        dump[0].tx
    ));

    drop(impostor);

    // The front-run with a re-encoded copy of node 3's next registration (its key epoch 2).
    let next_nonce = nonce + 1;
    let genuine = node_identity(&cluster, 3, 2)
        .node
        .sign(
            PeerRecord {
                tokenId: U256::from(3),
                instanceId: cluster.sims[2].instance_id.clone(),
                wgPublicKey: node_identity(&cluster, 3, 2)
                    .wg_public_key()
                    .as_bytes()
                    .into(),
                endpoint: format!("{}:{WG_PORT}", lan_ip(3)),
                gatewayUrl: String::new(),
                nonce: next_nonce,
            },
            CHAIN_ID,
            contract,
        )
        .expect("node 3 signs its next record");
    for (field, reencode) in [
        (
            "recordSignature",
            (|r: &mut SignedRegistration| r.record_signature.0[64] -= 27)
                as fn(&mut SignedRegistration),
        ),
        ("appSignature", |r| r.proof.app_signature.0[64] += 27),
        ("kmsSignature", |r| r.proof.kms_signature.0[64] += 27),
    ] {
        let mut copy = genuine.clone();
        reencode(&mut copy);
        let (error, block_before, block_after) = send_registration(&lan.switch, contract, &copy);
        assert_eq!(
            error, "RegistryMalformedSignature",
            "node 3's registration with its {field} re-encoded must revert"
        );
        assert_eq!(block_before, block_after, "{field}: a block was mined");
    }
    steps.step("node 3's next registration, re-encoded three ways and sent first: each reverted with RegistryMalformedSignature");
    agents[2].restart(&["--wg-key-epoch", "2"]);
    agents[2].wait_ready(60);
    keys[2] = agents[2].key();
    assert_eq!(
        keys[2],
        Key::from_bytes(genuine.wg_public_key.0),
        "node 3 registered the genuine record"
    );
    wait_full_mesh(&agents, &keys);
    let record3 = current_registration(&lan.switch, contract, 3);
    assert_eq!(
        record3, genuine,
        "seat 3 holds node 3's genuine record, byte for byte"
    );
    assert!(
        cluster
            .peers()
            .iter()
            .all(|p| p["proofVerified"].as_bool() == Some(true)),
        "every on-chain record verifies off-chain"
    );
    assert_pings(&agents, 1, 3);
    assert_pings(&agents, 2, 3);
    steps.step("node 3's own registration landed: it is still a member, and every node reaches it");

    for a in &mut agents {
        a.stop();
    }
    assert_no_warnings(&agents);
}
