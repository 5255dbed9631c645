//! Registration against a real anvil and simulated dstack instances: the agent finds its seat, registers
//! once, keeps its key across restarts, rotates it by epoch, hands its record to a relay when it cannot pay,
//! and refuses to send a proof the cluster would reject.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`: `cargo test -p netns-tests --test integration chain_registration:: -- --nocapture` (anvil comes from `scripts/bootstrap`).

use alloy::{
    network::TransactionBuilder,
    node_bindings::AnvilInstance,
    primitives::{Address, B256, U256, utils::parse_ether},
    providers::{DynProvider, Provider},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
};
use dstack_guest::ProofError;
use mesh_chain::{
    cluster::Cluster,
    contract as chain,
    membership::Pins,
    record::RecordError,
    registration::{Desired, Outcome, RegistrationError},
    rpc::Rpcs,
};
use netns_tests::{
    in_process::chain::{TestCluster, anvil, deploy_cluster, mined, mined_tx, mint},
    in_process::node::SimulatedInstance,
};
use p2p_agent::node::NodeIdentity;

fn signer(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    anvil.keys()[i].clone().into()
}

fn provider(anvil: &AnvilInstance, i: usize) -> DynProvider {
    netns_tests::in_process::chain::wallet(anvil, i)
}

async fn deploy(anvil: &AnvilInstance, kms_root: Address) -> TestCluster {
    deploy_cluster(anvil, kms_root).await
}

/// A fresh chain, instance `name`, and a cluster for its KMS root whose seat 1 is minted to anvil account
/// `holder`, bound to the instance.
async fn seat_1_bound(
    name: &str,
    holder: usize,
) -> (AnvilInstance, SimulatedInstance, TestCluster) {
    let anvil = anvil();
    let node = SimulatedInstance::start(name).await;
    let c = deploy(&anvil, node.kms_root).await;
    mint(&c, anvil.addresses()[holder], Some(&node)).await;
    (anvil, node, c)
}

/// The registration client for the cluster at `contract` via `url`, and the pins it checks records against
/// (the contract's own, as for a one-shot registration).
async fn connect(url: alloy::transports::http::reqwest::Url, contract: Address) -> (Cluster, Pins) {
    let cluster = Cluster::connect(Rpcs::one(url).unwrap(), contract)
        .await
        .unwrap();
    let pins = cluster.contract_pins().await.unwrap();
    (cluster, pins)
}

fn desired(identity: &NodeIdentity, endpoint: &str) -> Desired {
    Desired {
        wg_public_key: Some(identity.wg_public_key()),
        endpoint: endpoint.into(),
        gateway_url: String::new(),
    }
}

/// Registers `identity`'s WireGuard key at `endpoint`, paid by `tx_key` if given, as the agent would.
async fn register(
    cluster: &Cluster,
    identity: &NodeIdentity,
    endpoint: &str,
    tx_key: Option<&PrivateKeySigner>,
    pins: &Pins,
) -> Result<Outcome, RegistrationError> {
    cluster
        .register(&identity.node, &desired(identity, endpoint), tx_key, pins)
        .await
}

/// With no seat, the agent says exactly what the operator must run.
#[tokio::test(flavor = "multi_thread")]
async fn unbound_instance_is_told_the_commands_to_run() {
    let anvil = anvil();
    let node = SimulatedInstance::start("lonely").await;
    let c = deploy(&anvil, node.kms_root).await;
    let (cluster, pins) = connect(anvil.endpoint_url(), *c.address()).await;
    let identity = node.identity(0).await;
    let err = register(&cluster, &identity, "192.0.2.1:51820", None, &pins)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistrationError::NoSeat { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "meshctl bind --contract {} --instance {}",
            c.address(),
            identity.instance_id()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "p2p-agent identity --bind-holder <holder address> --contract {}",
            c.address()
        )),
        "{text}"
    );
}

/// `p2p-agent identity --bind-holder` prints a binding that the contract accepts from the seat's holder, whose
/// node is the one the agent then signs with (the same key file), and whose evidence commits to it.
#[tokio::test(flavor = "multi_thread")]
async fn identity_prints_a_binding_the_contract_accepts() {
    let anvil = anvil();
    let node = SimulatedInstance::start("node-1").await;
    let c = deploy(&anvil, node.kms_root).await;
    let holder = anvil.addresses()[1];
    mint(&c, holder, None).await;
    let out = std::process::Command::new(netns_tests::run::process::workspace_bin("p2p-agent"))
        .env_clear()
        .args(["identity", "--dstack-endpoint"])
        .arg(&node.socket)
        .arg("--node-key-file")
        .arg(node.key_file())
        .args(["--bind-holder", &holder.to_string()])
        .args(["--contract", &c.address().to_string()])
        .args(["--rpc-url", anvil.endpoint().as_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("instance id:"),
        "the report goes to stderr: {stderr}"
    );
    let binding: mesh_chain::record::NodeBinding = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| {
            panic!(
                "stdout is the binding alone ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    assert_eq!(
        (
            binding.holder,
            binding.contract,
            binding.chain_id,
            binding.node,
        ),
        (
            holder,
            *c.address(),
            anvil.chain_id(),
            node.identity(0).await.node.address()
        )
    );
    let evidence = mesh_attest::Evidence::decode(&binding.evidence).unwrap();
    let claims = mesh_attest::replay::claims(&evidence.events).unwrap();
    assert_eq!(alloy::hex::encode(claims.instance_id), node.instance_id);
    let as_holder = TestCluster::new(*c.address(), provider(&anvil, 1));
    mined(as_holder.bindInstance(U256::from(1), chain::binding_arg(&binding))).await;
    let bound = c
        .tokenOfInstance(node.instance_id.clone())
        .call()
        .await
        .unwrap();
    assert_eq!(bound, U256::from(1));
    let peer = c.getPeer(U256::from(1)).call().await.unwrap();
    assert_eq!(peer.node, binding.node);
    assert_eq!(
        peer.evidenceHash,
        alloy::primitives::keccak256(&binding.evidence)
    );
}

/// A registration lands once; the same instance after a restart derives the same key and sends nothing;
/// the next rotation epoch registers a new key with the next nonce.
#[tokio::test(flavor = "multi_thread")]
async fn registers_once_keeps_its_key_across_restarts_and_rotates_by_epoch() {
    let (anvil, node, c) = seat_1_bound("node-1", 1).await;
    let (cluster, pins) = connect(anvil.endpoint_url(), *c.address()).await;
    let tx_key = signer(&anvil, 1);

    let identity = node.identity(0).await;
    let want = desired(&identity, "192.0.2.1:51820");
    let outcome = cluster
        .register(&identity.node, &want, Some(&tx_key), &pins)
        .await
        .unwrap();
    let Outcome::Registered {
        token_id,
        nonce,
        from,
        ..
    } = outcome
    else {
        panic!("expected a registration: {outcome:?}")
    };
    assert_eq!(
        (token_id, nonce, from),
        (U256::from(1), 1, anvil.addresses()[1])
    );
    let peer = c.getPeer(U256::from(1)).call().await.unwrap();
    assert_eq!(peer.wgPublicKey.0, *identity.wg_public_key().as_bytes());
    assert_eq!(peer.endpoint, "192.0.2.1:51820");

    // "Restart": the identity from the same key file is the same key, so nothing is sent.
    let restarted = node.identity(0).await;
    assert_eq!(restarted.wg_public_key(), identity.wg_public_key());
    let outcome = register(
        &cluster,
        &restarted,
        "192.0.2.1:51820",
        Some(&tx_key),
        &pins,
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::UpToDate { .. }), "{outcome:?}");

    // Rotation: epoch 1 is another key, registered with the next nonce.
    let rotated = node.identity(1).await;
    assert_ne!(rotated.wg_public_key(), identity.wg_public_key());
    let outcome = register(&cluster, &rotated, "192.0.2.1:51820", Some(&tx_key), &pins)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Registered { nonce: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        c.getPeer(U256::from(1)).call().await.unwrap().wgPublicKey.0,
        *rotated.wg_public_key().as_bytes()
    );
}

/// Without funds the signed registration is handed out; anyone can relay it. Once the node address is
/// funded, the agent pays for itself.
#[tokio::test(flavor = "multi_thread")]
async fn without_funds_it_hands_out_a_relayable_registration_and_with_funds_it_pays() {
    let (anvil, node, c) = seat_1_bound("node-2", 2).await;
    let (cluster, pins) = connect(anvil.endpoint_url(), *c.address()).await;
    let identity = node.identity(0).await;

    let outcome = register(&cluster, &identity, "192.0.2.2:51820", None, &pins)
        .await
        .unwrap();
    let Outcome::NeedsRelay(reg) = outcome else {
        panic!("expected a registration to relay: {outcome:?}")
    };
    let (r, p, s) = chain::register_peer_args(&reg);
    mined(c.registerPeer(r, p, s)).await; // relayed by the owner
    assert_eq!(
        c.getPeer(U256::from(1)).call().await.unwrap().endpoint,
        "192.0.2.2:51820"
    );

    let derived = identity.node.address();
    let fund = TransactionRequest::default()
        .with_to(derived)
        .with_value(parse_ether("0.01").unwrap());
    mined_tx(&provider(&anvil, 0), fund).await;
    let outcome = register(&cluster, &identity, "192.0.2.22:51820", None, &pins)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Registered { from, nonce: 2, .. } if from == derived),
        "{outcome:?}"
    );
}

/// A cluster pinned to another KMS root would revert; the agent says why and sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_proof_the_cluster_would_reject_is_not_sent() {
    let (anvil, node, c) = seat_1_bound("node-3", 3).await;
    let other_root: Address = "0x000000000000000000000000000000000000dEaD"
        .parse()
        .unwrap();
    // The seat was bound under the node's KMS; the owner then pins another root.
    mined(c.setKmsRoot(other_root)).await;
    let (cluster, pins) = connect(anvil.endpoint_url(), *c.address()).await;
    let identity = node.identity(0).await;
    let block = provider(&anvil, 0).get_block_number().await.unwrap();

    let err = register(
        &cluster,
        &identity,
        "192.0.2.3:51820",
        Some(&signer(&anvil, 3)),
        &pins,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RegistrationError::WouldBeRejected(RecordError::Chain(ProofError::KmsRootMismatch { expected, recovered }))
            if expected == other_root && recovered == node.kms_root),
        "{err}"
    );
    assert_eq!(
        provider(&anvil, 0).get_block_number().await.unwrap(),
        block,
        "no transaction was sent"
    );
}

/// A stored record that says what the node wants, but that its peers would not believe (here its event is
/// served with the record signature re-encoded, as a contract that accepted both encodings stored it), is
/// not up to date: the node registers again with the next nonce and says why. Its new record is believed.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_record_peers_would_not_believe_is_registered_again() {
    let (anvil, node, c) = seat_1_bound("node-1", 1).await;
    let proxy = netns_tests::in_process::rpc_proxy::RpcProxy::start(anvil.endpoint().as_str());
    let (cluster, pins) = connect(proxy.url().parse().unwrap(), *c.address()).await;
    let identity = node.identity(0).await;
    let want = desired(&identity, "192.0.2.1:51820");
    let tx_key = signer(&anvil, 1);
    cluster
        .register(&identity.node, &want, Some(&tx_key), &pins)
        .await
        .unwrap();

    netns_tests::in_process::rpc_proxy::reencode_record_signatures(
        &proxy,
        "re-encode nonce 1",
        |nonce| nonce == 1,
    );
    let outcome = cluster
        .register(&identity.node, &want, Some(&tx_key), &pins)
        .await
        .unwrap();
    let Outcome::Registered {
        nonce,
        replaced_unbelievable: Some(why),
        ..
    } = outcome
    else {
        panic!("expected a new registration replacing the unbelievable one: {outcome:?}")
    };
    assert_eq!(nonce, 2);
    assert!(
        why.contains("record_signature") && why.contains("v must be 27 or 28"),
        "{why}"
    );
    let again = cluster
        .register(&identity.node, &want, Some(&tx_key), &pins)
        .await
        .unwrap();
    assert!(matches!(again, Outcome::UpToDate { .. }), "{again:?}");
}

/// An RPC that claims the seat's nonce is at its maximum gets a clear error, not an overflow.
#[tokio::test(flavor = "multi_thread")]
async fn a_seat_nonce_at_its_maximum_is_a_clear_error() {
    use alloy::sol_types::SolCall;
    use mesh_chain::contract::DstackClusterNFT::seatInfoCall;
    let (anvil, node, c) = seat_1_bound("node-1", 1).await;
    let proxy = netns_tests::in_process::rpc_proxy::RpcProxy::start(anvil.endpoint().as_str());
    proxy.rewrite("nonce at u64::MAX", |req, response| {
        if !req.calls(seatInfoCall::SELECTOR) {
            return;
        }
        let bytes = alloy::hex::decode(response["result"].as_str().unwrap()).unwrap();
        let mut info = seatInfoCall::abi_decode_returns(&bytes).unwrap();
        info.nonce = u64::MAX;
        response["result"] = format!(
            "0x{}",
            alloy::hex::encode(seatInfoCall::abi_encode_returns(&info))
        )
        .into();
    });
    let (cluster, pins) = connect(proxy.url().parse().unwrap(), *c.address()).await;
    let identity = node.identity(0).await;
    let err = register(
        &cluster,
        &identity,
        "192.0.2.1:51820",
        Some(&signer(&anvil, 1)),
        &pins,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RegistrationError::NonceExhausted { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nonce is at its maximum"), "{err}");
}

/// An instance that lost its volume (and so its keys) makes new ones: its seat is still bound to the old node
/// key, so the agent sends nothing and says how the holder re-binds; after the re-bind it registers with the
/// next nonce, and the old key can no longer sign for the seat.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_key_store_needs_a_rebind_which_the_agent_explains() {
    let (anvil, node, c) = seat_1_bound("node-1", 1).await;
    let holder = anvil.addresses()[1];
    let (cluster, pins) = connect(anvil.endpoint_url(), *c.address()).await;
    let tx_key = signer(&anvil, 1);
    let before = node.identity(0).await;
    register(&cluster, &before, "192.0.2.1:51820", Some(&tx_key), &pins)
        .await
        .unwrap();

    std::fs::remove_file(node.key_file()).unwrap();
    let after = node.identity(0).await;
    assert_ne!(after.node.address(), before.node.address(), "new keys");
    let err = register(&cluster, &after, "192.0.2.1:51820", Some(&tx_key), &pins)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistrationError::BoundToAnotherNode { bound, node, .. }
            if bound == before.node.address() && node == after.node.address()),
        "{err}"
    );
    let text = err.to_string();
    for want in [
        "lost its key store",
        "meshctl bind --instance <this instance> --token 1",
    ] {
        assert!(text.contains(want), "{want:?} in: {text}");
    }

    let binding = node.binding(holder, anvil.chain_id(), *c.address()).await;
    mined(
        TestCluster::new(*c.address(), provider(&anvil, 1))
            .bindInstance(U256::from(1), chain::binding_arg(&binding)),
    )
    .await;
    let outcome = register(&cluster, &after, "192.0.2.1:51820", Some(&tx_key), &pins)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Registered { nonce: 2, .. }),
        "{outcome:?}"
    );
    let stale = before
        .node
        .sign(
            mesh_chain::record::PeerRecord {
                tokenId: U256::from(1),
                instanceId: node.instance_id.clone(),
                wgPublicKey: B256::repeat_byte(1),
                endpoint: "192.0.2.9:51820".into(),
                gatewayUrl: String::new(),
                nonce: 3,
            },
            anvil.chain_id(),
            *c.address(),
        )
        .unwrap();
    let (r, p, sig) = chain::register_peer_args(&stale);
    let refused = c.registerPeer(r, p, sig).call().await.unwrap_err();
    assert_eq!(
        mesh_chain::revert::explain_revert(&refused)
            .map(|r| r.name)
            .as_deref(),
        Some("RegistryPurposeMismatch"),
        "the old node key no longer signs for the seat"
    );
}
