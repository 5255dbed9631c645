//! The `p2p-agent` daemon on a real anvil, in TLS mode so that it needs no root (it creates no interface):
//! it registers its gateway URL only, lists peers by gateway URL, and comes back from its state cache when
//! the RPC is gone. The WireGuard mode is tested in namespaces (`netns-tests`).
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`: `cargo test -p netns-tests --test integration agent_daemon:: -- --nocapture`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{B256, U256};
use mesh_api::{self, ConnectionKind, Peer, Status};
use netns_tests::{
    in_process::chain::{TestCluster, anvil, deploy_cluster, mined, mint},
    in_process::node::SimulatedInstance,
};

/// The agent process, killed by its PID when dropped.
struct AgentProcess(Child);

/// Starts `p2p-agent --mode tls` for `node` with its state and API socket in `dir`, logging to `dir/agent.log`.
//
// Not the harness's `AgentBuilder`, which starts a seat of a `Cluster` in its node's namespace (root, a
// `dstack-simulator` per node, `meshctl`): this agent runs here without root, on the in-process anvil and
// instances; it is killed rather than stopped, comes back as a new process on the same state directory,
// may exit on its own (a bad state file), and its log holds only its own lines (one test reads each as JSON).
fn start_tls_agent(
    dir: &std::path::Path,
    rpc: &str,
    contract: &str,
    node: &SimulatedInstance,
    tx_key: &str,
) -> AgentProcess {
    let key_file = dir.join("tx.key");
    std::fs::write(&key_file, tx_key).unwrap();
    start_tls_agent_with(
        dir,
        rpc,
        contract,
        node,
        &["--tx-key-file", key_file.to_str().unwrap()],
        &[],
    )
}

/// Like [`start_tls_agent`], with `extra` flags instead of a tx key file, and only `env` (plus PATH) for
/// environment.
fn start_tls_agent_with(
    dir: &std::path::Path,
    rpc: &str,
    contract: &str,
    node: &SimulatedInstance,
    extra: &[&str],
    env: &[(&str, &str)],
) -> AgentProcess {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    AgentProcess(
        Command::new(netns_tests::run::process::workspace_bin("p2p-agent"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .args(["--mode", "tls", "--contract", contract, "--rpc-url", rpc])
            .args(["--dstack-endpoint", node.socket.to_str().unwrap()])
            .args([
                "--gateway-domain",
                "dstack.example",
                "--gateway-port",
                "8443",
            ])
            .args(["--state-dir", dir.join("state").to_str().unwrap()])
            .arg("--node-key-file")
            .arg(node.key_file())
            .args(netns_tests::in_process::node::trust_args(dir))
            .args([
                "--api-socket",
                dir.join("api.sock").to_str().unwrap(),
                "--poll-interval-ms",
                "200",
            ])
            .args(extra)
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
            mesh_api::get::<Status>(&socket, "/v1/status").await,
            mesh_api::get::<Vec<Peer>>(&socket, "/v1/peers").await,
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

/// A cluster with seat 1 bound to `peer` and seat 2 to `node`, both held by anvil account 1, and `peer`
/// registered as a WireGuard node with a gateway URL too, which is returned.
async fn cluster_with_a_registered_peer(
    anvil: &AnvilInstance,
    peer: &SimulatedInstance,
    node: &SimulatedInstance,
) -> (TestCluster, String) {
    let c = deploy_cluster(anvil, peer.kms_root).await;
    for n in [peer, node] {
        mint(&c, anvil.addresses()[1], Some(n)).await;
    }
    let url = format!("https://{}-8080.dstack.example", peer.instance_id);
    peer.register(anvil, *c.address(), "192.0.2.1:51820", &url, 2)
        .await;
    (c, url)
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
    let (c, wg_url) = cluster_with_a_registered_peer(&anvil, &wg_node, &tls_node).await;

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
    assert_eq!(status.mode, mesh_api::Mode::Tls);
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
    let (c, url) = cluster_with_a_registered_peer(&anvil, &other, &node).await;

    let dir = tempfile::tempdir().unwrap();
    let rpc = anvil.endpoint();
    let key = alloy::hex::encode(anvil.keys()[3].to_bytes());
    let agent = start_tls_agent(dir.path(), &rpc, &c.address().to_string(), &node, &key);
    wait_until(dir.path(), "registered, with a peer", |s, p| {
        s.node.registered && p.len() == 1
    })
    .await;
    // Its own record reaches the cache once the agent has followed the block that holds it.
    let cache = dir.path().join("state").join(p2p_agent::cache::FILE_NAME);
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
    drop(_agent);

    // A damaged state file falls back to its last good copy: still up without the RPC.
    std::fs::write(&cache, b"\x8f\x00 not json").unwrap();
    let agent = start_tls_agent(dir.path(), &rpc, &c.address().to_string(), &node, &key);
    wait_until(dir.path(), "peers from the last good copy", |s, p| {
        s.chain.from_cache && p.len() == 1
    })
    .await;
    drop(agent);

    // With neither usable, the agent does not re-pin by itself: it stops, naming the file and --repin.
    std::fs::write(&cache, b"").unwrap();
    std::fs::write(
        p2p_agent::cache::last_good_path(cache.parent().unwrap()),
        b"{",
    )
    .unwrap();
    let mut agent = start_tls_agent(dir.path(), &rpc, &c.address().to_string(), &node, &key);
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = agent.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the agent started on an unusable state file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let last = log.lines().last().unwrap_or_default();
    assert!(!exit.success(), "{log}");
    for named in [
        p2p_agent::cache::FILE_NAME,
        ".last-good",
        "empty",
        "--repin",
    ] {
        assert!(last.contains(named), "the error names {named}: {last}");
    }

    // --repin starts afresh, as asked.
    let _agent = start_tls_agent_with(
        dir.path(),
        &rpc,
        &c.address().to_string(),
        &node,
        &[
            "--repin",
            "--tx-key-file",
            dir.path().join("tx.key").to_str().unwrap(),
        ],
        &[],
    );
    let (status, peers) = wait_until(dir.path(), "started afresh, with --repin", |s, _| {
        s.chain.last_error.is_some()
    })
    .await;
    assert!(!status.chain.from_cache && peers.is_empty(), "{status:?}");
}

/// While every full read fails (the RPC refuses the record list), the agent goes on following events: a
/// node that joins meanwhile appears in its peers, and one that is revoked leaves them.
#[tokio::test(flavor = "multi_thread")]
async fn joins_and_revocations_arrive_while_full_reads_fail() {
    use alloy::sol_types::SolCall;
    use mesh_chain::contract::DstackClusterNFT::{getPeersCall, getPeersPageCall};
    let anvil = anvil();
    let first = SimulatedInstance::start("first").await;
    let late = SimulatedInstance::start("late").await;
    let node = SimulatedInstance::start("node").await;
    let c = deploy_cluster(&anvil, node.kms_root).await;
    for n in [&first, &node, &late] {
        mint(&c, anvil.addresses()[1], Some(n)).await;
    }
    first
        .register(&anvil, *c.address(), "192.0.2.1:51820", "", 2)
        .await;
    let proxy = netns_tests::in_process::rpc_proxy::RpcProxy::start(anvil.endpoint().as_str());
    let dir = tempfile::tempdir().unwrap();
    let key = alloy::hex::encode(anvil.keys()[3].to_bytes());
    let key_file = dir.path().join("tx.key");
    std::fs::write(&key_file, &key).unwrap();
    let _agent = start_tls_agent_with(
        dir.path(),
        proxy.url(),
        &c.address().to_string(),
        &node,
        &[
            "--tx-key-file",
            key_file.to_str().unwrap(),
            "--full-read-secs",
            "1",
        ],
        &[],
    );
    wait_until(dir.path(), "registered, with the first peer", |s, p| {
        s.node.registered && p.len() == 1
    })
    .await;

    proxy.fail("full reads", |r| {
        r.calls(getPeersCall::SELECTOR) || r.calls(getPeersPageCall::SELECTOR)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.hits("full reads") == 0 {
        assert!(Instant::now() < deadline, "no full read within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    late.register(&anvil, *c.address(), "192.0.2.3:51820", "", 2)
        .await;
    mined(c.revoke(U256::from(1))).await;
    let (status, peers) = wait_until(
        dir.path(),
        "the join and the revocation, by events",
        |_, p| p.iter().map(|p| p.token_id).collect::<Vec<_>>() == vec![3],
    )
    .await;
    let error = status.chain.last_error.unwrap_or_default();
    assert!(error.contains("following events meanwhile"), "{error}");
    assert_eq!(peers[0].instance_id, late.instance_id);
}

/// With no dstack socket, the agent retries, and each warning says why: the socket's path and what to
/// check, not only which call failed.
#[tokio::test]
async fn a_missing_dstack_socket_is_logged_with_its_path_and_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-such-dstack.sock");
    let log = dir.path().join("agent.log");
    let _agent = AgentProcess(
        Command::new(netns_tests::run::process::workspace_bin("p2p-agent"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args([
                "--mode",
                "tls",
                "--contract",
                "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            ])
            .args([
                "--gateway-domain",
                "dstack.example",
                "--gateway-port",
                "8443",
            ])
            .args(["--rpc-url", "http://127.0.0.1:9", "--dstack-endpoint"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .args(netns_tests::in_process::node::trust_args(dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let want = format!(
        "no dstack socket at {}: is this running in a dstack CVM",
        socket.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&want))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning with `{want}`:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A variable stays readable in `/proc/<pid>/environ` for the process's whole life, so the agent (and its
/// `register`) refuses a transaction key in the environment, naming the variable and `--tx-key-file`, and
/// never the key.
#[test]
fn a_transaction_key_in_the_environment_is_refused() {
    const KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    for name in ["DSTACK_MESH_PRIVATE_KEY", "PRIVATE_KEY"] {
        for command in [None, Some("register")] {
            let mut cmd = Command::new(netns_tests::run::process::workspace_bin("p2p-agent"));
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env(name, KEY)
                .args(command)
                .args(["--contract", "0x5FbDB2315678afecb367f032d93F642f64180aa3"])
                .args(["--rpc-url", "http://127.0.0.1:9", "--state-dir", state]);
            let what = format!("p2p-agent {} with {name}", command.unwrap_or("(daemon)"));
            let out =
                netns_tests::run::process::run_command_timeout(cmd, &what, Duration::from_secs(20));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what} started:\n{stderr}");
            assert!(
                stderr.contains(&format!("{name} is set")) && stderr.contains("--tx-key-file"),
                "{what}: the error must name the variable and --tx-key-file:\n{stderr}"
            );
            assert!(!stderr.contains(KEY), "{what} printed the key:\n{stderr}");
        }
    }
}

/// The transaction key and the RPC's credentials stay in the agent: the on-change hook gets a cleaned
/// environment, and neither the API nor the log shows them, even when the RPC fails and its error quotes
/// the URL.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_hooks_the_api_and_the_log() {
    let anvil = anvil();
    let other = SimulatedInstance::start("other").await;
    let node = SimulatedInstance::start("node").await;
    let c = deploy_cluster(&anvil, node.kms_root).await;
    for n in [&other, &node] {
        mint(&c, anvil.addresses()[1], Some(n)).await;
    }
    other
        .register(&anvil, *c.address(), "192.0.2.1:51820", "", 2)
        .await;
    let proxy = netns_tests::in_process::rpc_proxy::RpcProxy::start(anvil.endpoint().as_str());
    const PASSWORD: &str = "hunter2hunter2";
    const API_KEY: &str = "0123456789abcdef0123456789abcdef";
    let rpc = format!(
        "http://operator:{PASSWORD}@{}v3/{API_KEY}",
        proxy.url().trim_start_matches("http://")
    );
    let tx_key = alloy::hex::encode(anvil.keys()[3].to_bytes());
    let dir = tempfile::tempdir().unwrap();
    let tx_key_file = dir.path().join("tx.key");
    std::fs::write(&tx_key_file, &tx_key).unwrap();
    let hook_env = dir.path().join("hook.env");
    let hook = format!("env > {}", hook_env.display());
    let _agent = start_tls_agent_with(
        dir.path(),
        &rpc,
        &c.address().to_string(),
        &node,
        &[
            "--on-change",
            &hook,
            "--tx-key-file",
            tx_key_file.to_str().unwrap(),
        ],
        &[("RPC_URL", &rpc)],
    );
    let (status, _) = wait_until(
        dir.path(),
        "registered, with a peer, paying with the --tx-key-file",
        |s, p| s.node.registered && p.len() == 1,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hook_env.exists() {
        assert!(Instant::now() < deadline, "the hook never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let env = std::fs::read_to_string(&hook_env).unwrap();
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in &names {
        assert!(
            ["PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(name),
            "the hook inherited {name}: {env}"
        );
    }
    for secret in [tx_key.as_str(), PASSWORD, API_KEY] {
        assert!(
            !env.contains(secret),
            "the hook's environment holds a secret: {env}"
        );
    }
    assert!(
        status.chain.rpc_url.contains("***") && !status.chain.rpc_url.contains(PASSWORD),
        "{}",
        status.chain.rpc_url
    );

    // Now the RPC fails, with errors that quote the URL.
    drop(proxy);
    let (status, _) = wait_until(dir.path(), "the RPC failure reported", |s, _| {
        s.chain.last_error.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let shown = format!("{status:?}\n{log}");
    for secret in [tx_key.as_str(), PASSWORD, API_KEY] {
        assert!(
            !shown.contains(secret),
            "a secret in the API or the log:\n{shown}"
        );
    }
    assert!(
        log.contains("***"),
        "the failure is logged, redacted:\n{log}"
    );
}

/// Runs the daemon with a contract and `args`, which it must refuse before anything starts; returns what it
/// said.
fn refused(args: &[&str]) -> String {
    let out = Command::new(netns_tests::run::process::workspace_bin("p2p-agent"))
        .env_clear()
        .args(["--contract", "0x0000000000000000000000000000000000000001"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Pinning app ids without a KMS root (or the reverse) is refused before anything starts.
#[test]
fn app_ids_without_a_kms_root_are_refused() {
    for args in [
        vec!["--app-id", "0x00112233445566778899aabbccddeeff00112233"],
        vec!["--kms-root", "0x00112233445566778899aabbccddeeff00112233"],
    ] {
        let stderr = refused(&args);
        assert!(
            stderr.contains("--kms-root") && stderr.contains("--app-id"),
            "{args:?}: {stderr}"
        );
    }
}

/// RPC URLs that cannot work are refused before anything starts, with the flag to fix and without quoting
/// the URL (its key): a subscription URL that is not a WebSocket, one beside a WebSocket --rpc-url, and a
/// scheme neither HTTP nor WebSocket.
#[test]
fn rpc_urls_that_cannot_work_are_refused_without_quoting_them() {
    for (args, names) in [
        (
            vec!["--rpc-ws-url", "https://rpc.example/v3/k3y0f16charsormore"],
            "--rpc-ws-url",
        ),
        (
            vec![
                "--rpc-url",
                "wss://rpc.example/v3/k3y0f16charsormore",
                "--rpc-ws-url",
                "wss://rpc.example/v3/k3y0f16charsormore",
            ],
            "--rpc-ws-url",
        ),
        (vec!["--rpc-url", "ipc:///k3y0f16charsormore"], "--rpc-url"),
    ] {
        let stderr = refused(&args);
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("k3y0f16charsormore"),
            "{args:?} quoted the key: {stderr}"
        );
    }
}

/// The agent and `meshctl` take the chain's providers with one flag group, worded alike: the same
/// `--rpc-url` and `--rpc-quorum`, under one heading, with the same variables.
#[test]
fn the_agent_and_meshctl_share_one_provider_flag_group() {
    // The group's lines: from its heading to the next heading.
    let group = |bin: &str, args: &[&str]| {
        let out = Command::new(netns_tests::run::process::workspace_bin(bin))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = help
            .lines()
            .skip_while(|l| *l != "Chain providers:")
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with(' '))
            .collect();
        let group = lines.join("\n");
        assert!(
            group.contains("--rpc-url <URL>") && group.contains("--rpc-quorum <N>"),
            "{bin} {args:?} has no provider group with both flags:\n{help}"
        );
        group
    };
    let agent = group("p2p-agent", &["run", "--help"]);
    let meshctl = group("meshctl", &["peers", "--help"]);
    assert_eq!(agent, meshctl, "worded alike");
    assert!(
        agent.contains("every transaction is signed once and sent to all of them"),
        "{agent}"
    );
}

/// Settings of the leadership that cannot work are refused before anything starts, naming the flag: a
/// WireGuard port that is the heartbeats' port, a health URL that is not plain HTTP in the CVM, and both
/// kinds of health check at once.
#[test]
fn leadership_settings_that_cannot_work_are_refused() {
    let port = p2p_agent::leadership::heartbeat::PORT.to_string();
    for (args, says) in [
        (vec!["--listen-port", port.as_str()], "--listen-port"),
        (
            vec!["--health-url", "https://127.0.0.1:8080/health"],
            "--health-url must be an http:// URL",
        ),
        (
            vec![
                "--health-url",
                "http://127.0.0.1:1/",
                "--health-cmd",
                "true",
            ],
            "--health-cmd",
        ),
    ] {
        let stderr = refused(&args);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The API where applications are: on loopback TCP with `--api-listen` (what `p2p-agent wait` and
/// `meshctl status --check` read too), the socket with the mode and group asked for, `/metrics` alone on
/// `--metrics-listen`, and JSON log lines that carry the node's instance and seat.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_served_on_loopback_tcp_with_health_and_json_logs() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let anvil = anvil();
    let wg_node = SimulatedInstance::start("wg-node").await;
    let tls_node = SimulatedInstance::start("tls-node").await;
    let (c, _) = cluster_with_a_registered_peer(&anvil, &wg_node, &tls_node).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("tx.key");
    std::fs::write(&key_file, alloy::hex::encode(anvil.keys()[3].to_bytes())).unwrap();
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = start_tls_agent_with(
        dir.path(),
        anvil.endpoint().as_str(),
        &c.address().to_string(),
        &tls_node,
        &[
            "--tx-key-file",
            key_file.to_str().unwrap(),
            "--api-listen",
            &api.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
            "--api-socket-mode",
            "0666",
            "--api-socket-group",
            "999",
            "--log-format",
            "json",
        ],
        &[],
    );
    let (status, _) = wait_until(dir.path(), "registered, with a peer", |s, p| {
        s.node.registered && p.len() == 1
    })
    .await;

    let meta = std::fs::metadata(dir.path().join("api.sock")).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o666,
        "--api-socket-mode"
    );
    assert_eq!(meta.gid(), 999, "--api-socket-group");

    let over_tcp: Status = mesh_api::get(api, "/v1/status").await.unwrap();
    assert_eq!(over_tcp.node, status.node, "TCP serves the same API");
    // A TLS node reaches its WireGuard peer by URL: registered and every peer reachable is healthy.
    let health: mesh_api::Health = mesh_api::get(api, "/healthz").await.unwrap();
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.token_id, Some(2));

    let text = mesh_api::get_text(metrics, "/metrics").await.unwrap();
    assert!(text.contains("dstack_mesh_peers_configured 1"), "{text}");
    let err = mesh_api::get_text(metrics, "/v1/peers").await.unwrap_err();
    assert!(err.to_string().contains("serves /metrics only"), "{err}");

    for (bin, args) in [
        (
            "p2p-agent",
            vec!["wait", "--timeout-secs", "10", "--accept", "gateway"],
        ),
        ("meshctl", vec!["status", "--check"]),
    ] {
        let out = Command::new(netns_tests::run::process::workspace_bin(bin))
            .env_clear()
            .env("DSTACK_MESH_API_LISTEN", api.to_string())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?} over DSTACK_MESH_API_LISTEN: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let with_seat = lines
        .iter()
        .find(|l| l["spans"][0]["token"] == 2)
        .unwrap_or_else(|| panic!("no log line carries token 2:\n{log}"));
    assert_eq!(
        with_seat["spans"][0]["instance"], tls_node.instance_id,
        "{with_seat}"
    );
}
