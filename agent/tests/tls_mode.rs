//! `p2p-agent --mode tls` on a real anvil: no interface, the node registers its gateway URL only, and its
//! API lists every peer by gateway URL. Needs no root: TLS mode creates no interface.
//!
//! Run: `cargo test -p p2p-agent --test tls_mode`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use netns_tests::{
    chain::{anvil, deploy_cluster},
    node::SimulatedInstance,
};
use p2p_agent::{
    api::{self, ConnectionKind, Peer, Status},
    identity::NodeIdentity,
    registration::{Cluster, Desired},
};

/// The agent process, killed by its PID when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_node_registers_its_url_and_lists_peers_by_url() {
    let anvil = anvil();
    let wg_node = SimulatedInstance::start("wg-node").await;
    let tls_node = SimulatedInstance::start("tls-node").await;
    let c = deploy_cluster(&anvil, wg_node.kms_root).await;
    for n in [&wg_node, &tls_node] {
        c.mintNodeAccess(anvil.addresses()[1], n.instance_id.clone())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }
    // A WireGuard node with a gateway URL too, registered directly.
    let id = NodeIdentity::load(&wg_node.client, 0).await.unwrap();
    let wg_url = format!("https://{}-8080.dstack.example", wg_node.instance_id);
    let cluster = Cluster::connect(anvil.endpoint_url(), *c.address())
        .await
        .unwrap();
    let want = Desired {
        wg_public_key: id.wg_public_key(),
        endpoint: "192.0.2.1:51820".into(),
        gateway_url: wg_url.clone(),
    };
    let payer: alloy::signers::local::PrivateKeySigner = anvil.keys()[2].clone().into();
    cluster.register(&id, &want, Some(&payer)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let api_socket = dir.path().join("api.sock");
    let key_file = dir.path().join("tx.key");
    std::fs::write(&key_file, alloy::hex::encode(anvil.keys()[3].to_bytes())).unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = AgentProcess(
        Command::new(env!("CARGO_BIN_EXE_p2p-agent"))
            .args([
                "--mode",
                "tls",
                "--contract",
                &c.address().to_string(),
                "--rpc-url",
                anvil.endpoint().as_str(),
            ])
            .args(["--dstack-endpoint", tls_node.socket.to_str().unwrap()])
            .args([
                "--gateway-domain",
                "dstack.example",
                "--gateway-port",
                "8443",
            ])
            .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
            .args([
                "--api-socket",
                api_socket.to_str().unwrap(),
                "--poll-interval-ms",
                "200",
            ])
            .args(["--tx-key-file", key_file.to_str().unwrap()])
            .env_remove("PRIVATE_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let log_tail = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, peers) = loop {
        assert!(
            Instant::now() < deadline,
            "the TLS agent did not register within 30 s:\n{}",
            log_tail()
        );
        if let (Ok(s), Ok(p)) = (
            api::get::<Status>(&api_socket, "/v1/status").await,
            api::get::<Vec<Peer>>(&api_socket, "/v1/peers").await,
        ) && s.node.registered
            && !p.is_empty()
        {
            break (s, p);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.mode, api::Mode::Tls);
    assert_eq!(status.node.interface, None, "TLS mode creates no interface");
    let own_url = format!("https://{}-8443.dstack.example", tls_node.instance_id);
    assert_eq!(status.node.gateway_url.as_deref(), Some(own_url.as_str()));

    // On-chain: the TLS node's record has a URL and no key.
    let record = c.getPeer(U256::from(2)).call().await.unwrap();
    assert_eq!(record.gatewayUrl, own_url);
    assert_eq!(record.wgPublicKey, B256::ZERO);
    assert_eq!(record.endpoint, "");

    // Its API reports the WireGuard node by its gateway URL: a TLS node has no tunnel.
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].token_id, 1);
    assert_eq!(peers[0].connection, ConnectionKind::TlsGateway);
    assert_eq!(peers[0].address.as_deref(), Some(wg_url.as_str()));
    assert!(!peers[0].healthy);
}
