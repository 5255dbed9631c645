//! The `p2p-agent` daemon on a real anvil, in TLS mode so that it needs no root (it creates no interface):
//! it registers its gateway URL only, lists peers by gateway URL, and comes back from its state cache when
//! the RPC is gone. The WireGuard mode is tested in namespaces (`netns-tests`).
//!
//! Run: `cargo test -p p2p-agent --test daemon`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use netns_tests::{
    chain::{anvil, deploy_cluster, mint},
    node::SimulatedInstance,
};
use p2p_agent::api::{self, ConnectionKind, Peer, Status};

/// The agent process, killed by its PID when dropped.
struct AgentProcess(Child);

/// Starts `p2p-agent --mode tls` for `node` with its state and API socket in `dir`, logging to `dir/agent.log`.
fn start_tls_agent(
    dir: &std::path::Path,
    rpc: &str,
    contract: &str,
    node: &SimulatedInstance,
    tx_key: &str,
) -> AgentProcess {
    let key_file = dir.join("tx.key");
    std::fs::write(&key_file, tx_key).unwrap();
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    AgentProcess(
        Command::new(env!("CARGO_BIN_EXE_p2p-agent"))
            .args(["--mode", "tls", "--contract", contract, "--rpc-url", rpc])
            .args(["--dstack-endpoint", node.socket.to_str().unwrap()])
            .args([
                "--gateway-domain",
                "dstack.example",
                "--gateway-port",
                "8443",
            ])
            .args(["--state-dir", dir.join("state").to_str().unwrap()])
            .args([
                "--api-socket",
                dir.join("api.sock").to_str().unwrap(),
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
    )
}

/// Polls the agent's API until `ready` holds for its status and peers, failing after 30 s with its log.
async fn wait_until(
    dir: &std::path::Path,
    what: &str,
    ready: impl Fn(&Status, &[Peer]) -> bool,
) -> (Status, Vec<Peer>) {
    let socket = dir.join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let (Ok(s), Ok(p)) = (
            api::get::<Status>(&socket, "/v1/status").await,
            api::get::<Vec<Peer>>(&socket, "/v1/peers").await,
        ) && ready(&s, &p)
        {
            return (s, p);
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not get to: {what} within 30 s:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
        mint(&c, anvil.addresses()[1], &n.instance_id).await;
    }
    // A WireGuard node with a gateway URL too, registered directly.
    let wg_url = format!("https://{}-8080.dstack.example", wg_node.instance_id);
    wg_node
        .register(&anvil, *c.address(), "192.0.2.1:51820", &wg_url, 2)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let _agent = start_tls_agent(
        dir.path(),
        anvil.endpoint().as_str(),
        &c.address().to_string(),
        &tls_node,
        &alloy::hex::encode(anvil.keys()[3].to_bytes()),
    );
    let (status, peers) = wait_until(dir.path(), "registered, with a peer", |s, p| {
        s.node.registered && !p.is_empty()
    })
    .await;
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

/// With the RPC gone, a restarted agent brings its peers back from the state cache and says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_without_the_rpc_comes_up_from_the_cache() {
    let anvil = anvil();
    let other = SimulatedInstance::start("other").await;
    let node = SimulatedInstance::start("node").await;
    let c = deploy_cluster(&anvil, node.kms_root).await;
    for n in [&other, &node] {
        mint(&c, anvil.addresses()[1], &n.instance_id).await;
    }
    let url = format!("https://{}-8080.dstack.example", other.instance_id);
    other
        .register(&anvil, *c.address(), "192.0.2.1:51820", &url, 2)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let rpc = anvil.endpoint();
    let key = alloy::hex::encode(anvil.keys()[3].to_bytes());
    let agent = start_tls_agent(dir.path(), &rpc, &c.address().to_string(), &node, &key);
    wait_until(dir.path(), "registered, with a peer", |s, p| {
        s.node.registered && p.len() == 1
    })
    .await;
    // Its own record reaches the cache once the agent has followed the block that holds it.
    let cache = dir.path().join("state").join(p2p_agent::state::FILE_NAME);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&cache).is_ok_and(|t| t.contains(&node.instance_id)) {
        assert!(
            Instant::now() < deadline,
            "the agent's own record never reached {}",
            cache.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
    drop(anvil); // the RPC is gone

    let _agent = start_tls_agent(dir.path(), &rpc, &c.address().to_string(), &node, &key);
    let (status, peers) = wait_until(dir.path(), "peers from the cache", |s, p| {
        s.chain.from_cache && p.len() == 1
    })
    .await;
    assert_eq!(
        peers[0].address.as_deref(),
        Some(url.as_str()),
        "the cached peer is served"
    );
    assert!(
        status.chain.last_error.is_some(),
        "the RPC failure is reported: {status:?}"
    );
    assert!(
        status.node.registered,
        "the cached record is this node's current one, so it counts as registered: {status:?}"
    );
    assert_eq!(status.node.token_id, Some(2), "{status:?}");
}
