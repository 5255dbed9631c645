//! The compose sidecar in a real container runtime: `deploy/docker-compose.yml`, the file a user copies,
//! run by Debian's docker-compose for three nodes, with `netns-tests/compose/test.yml` on top (each node's
//! dstack simulator socket in place of dstack's, and a fixed address on an internal network this test
//! creates). anvil runs in a container on that network; the mesh image is the one `scripts/image --local`
//! assembles from the release builds.
//!
//! No node has a seat at first, and nobody opens a shell in a node: each asks for a seat on-chain once the
//! operator funds the address its log names, and the owner binds it with `meshctl bind --instance`, while
//! `mesh-ready` holds the app back on the same first boot.
//!
//! It shows that every app (uid 999, as Postgres runs) reads its peers on the loopback API and pings the
//! others' overlay addresses; that the healthcheck turns healthy; that stopping one agent makes the others
//! report it unreachable; and that starting it again heals the mesh with no new transaction.
//!
//! Run as root, after `scripts/image --local --test-images` and with a docker daemon (`scripts/dockerd`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios compose:: -- --nocapture
//! ```

use std::path::PathBuf;
use std::time::Duration;

use mesh_api::{ConnectionKind, Peer};
use netns_tests::container::{
    ANVIL_IMAGE, APP_IMAGE, Container, MESH_IMAGE, Network, Project, docker, docker_output,
    require_container_runtime,
};
use netns_tests::in_process::chain::block_number;
use netns_tests::prelude::*;
use netns_tests::unique_name;

const NODES: usize = 3;
/// The API's port, moved off the file's default 8000 (vLLM's too) by its one variable, so that the test shows
/// the agent, `mesh-ready` and the app all following it.
const API_PORT: &str = "8100";
/// Where `deploy/docker-compose.yml` serves the API in the shared namespace, with [`API_PORT`].
const API: &str = "http://127.0.0.1:8100";

/// The workspace's file `rel`.
fn workspace_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// Node `i`'s mesh address on the test network.
fn mesh_host(i: usize) -> u8 {
    10 + u8::try_from(i).expect("small")
}

/// The peers that node `project`'s app reads on its loopback API, as its own user.
fn app_peers(project: &Project) -> Result<Vec<Peer>, String> {
    let out = project.exec("app", &["wget", "-qO-", &format!("{API}/v1/peers")]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The seats that node `project` reports with `connection`.
fn seats_with(project: &Project, connection: ConnectionKind) -> Vec<u64> {
    let mut seats: Vec<u64> = app_peers(project)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.connection == connection)
        .map(|p| p.token_id)
        .collect();
    seats.sort_unstable();
    seats
}

/// The node address node `project`'s agent logs at start, as an operator reads it in the platform's logs.
fn wait_for_node_address(project: &Project) -> String {
    let mut found = None;
    wait_until(
        "the agent to log its node address",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            found = node_address_in(&project.logs());
            found.is_some()
        },
        || project.logs(),
    );
    found.expect("found")
}

/// The `node` field of the agent's first JSON log line that has one.
fn node_address_in(logs: &str) -> Option<String> {
    const KEY: &str = "\"node\":\"";
    logs.lines().find_map(|line| {
        let at = line.find(KEY)? + KEY.len();
        let address = line.get(at..at + 42)?;
        (address.starts_with("0x") && address[2..].bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| address.to_owned())
    })
}

fn others(i: usize) -> Vec<u64> {
    (1..=NODES as u64).filter(|t| *t != i as u64).collect()
}

/// The agent container's health as docker reports it.
fn health(project: &Project) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{.State.Health.Status}}",
        &project.container("mesh"),
    ])
}

fn pings(project: &Project, seat: u64) -> bool {
    project
        .exec(
            "app",
            &["ping", "-c", "1", "-W", "2", &overlay_ip(seat).to_string()],
        )
        .status
        .success()
}

#[test]
fn the_compose_sidecar_meshes_three_nodes_and_heals_after_a_restart() {
    require_container_runtime();
    let steps = Steps::new("compose");
    let run = unique_name("dmc");
    let third = 10 + u8::try_from(std::process::id() % 200).expect("< 200");
    let net = Network::create(&format!("{run}-net"), third);
    steps.step(&format!("network {} on 198.18.{third}.0/24", net.name));

    let anvil_ip = net.ip(2).to_string();
    let anvil = Container::run(
        &format!("{run}-anvil"),
        &["--network", &net.name, "--ip", &anvil_ip, ANVIL_IMAGE],
    );
    let rpc = format!("http://{anvil_ip}:8545");
    wait_until(
        &format!("anvil to answer at {rpc}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || block_number(&rpc).is_some(),
        || anvil.logs(),
    );
    let cluster = Cluster::deploy_at(rpc.clone(), NODES);
    steps.step(&format!(
        "cluster {} deployed, no seat minted: each node asks for its own",
        cluster.contract
    ));

    let files = [
        workspace_file("deploy/docker-compose.yml"),
        workspace_file("netns-tests/compose/test.yml"),
    ];
    let projects: Vec<Project> = (1..=NODES)
        .map(|i| {
            let ip = net.ip(mesh_host(i));
            let env = [
                ("DSTACK_MESH_IMAGE", MESH_IMAGE.to_owned()),
                ("APP_IMAGE", APP_IMAGE.to_owned()),
                ("DSTACK_MESH_CONTRACT", cluster.contract.clone()),
                ("DSTACK_MESH_RPC_URL", rpc.clone()),
                ("DSTACK_MESH_ENDPOINT", format!("{ip}:51820")),
                // The default STUN servers are on the internet, which the test never reaches.
                ("DSTACK_MESH_NO_STUN", "true".to_owned()),
                ("DSTACK_MESH_API_PORT", API_PORT.to_owned()),
                // Published on loopback only: the test's traffic stays on its network.
                ("DSTACK_MESH_WG_PUBLISH", format!("127.0.0.1:{}", 52000 + i)),
                (
                    "DSTACK_MESH_RELAY_PUBLISH",
                    format!("127.0.0.1:{}", 52000 + i),
                ),
                ("TEST_NETWORK", net.name.clone()),
                ("TEST_MESH_IP", ip.to_string()),
                (
                    "TEST_DSTACK_SOCKET",
                    cluster.sims[i - 1].socket.display().to_string(),
                ),
                (
                    "TEST_TDX_ROOT_CA",
                    cluster.tdx_root_ca.display().to_string(),
                ),
                (
                    "TEST_TDX_COLLATERAL",
                    cluster.tdx_collateral.display().to_string(),
                ),
            ];
            Project::new(
                &format!("{run}n{i}"),
                &files,
                env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            )
        })
        .collect();
    // As on Phala Cloud, with no shell in any CVM: each project comes up whole at once. Its agent has no seat,
    // says its node address in its log, and `mesh-ready` holds the app back, past its 300 s timeout if need
    // be. The operator funds the node from the log, the agent asks for a seat on-chain, and the owner binds it
    // by its instance id alone; the same boot then goes on to start the app.
    std::thread::scope(|scope| {
        let ups: Vec<_> = projects
            .iter()
            .map(|project| scope.spawn(move || project.compose(&["up", "-d"])))
            .collect();
        for (i, project) in projects.iter().enumerate() {
            let i = i + 1;
            let node = wait_for_node_address(project);
            cluster.meshctl(0, &["fund", &node, "--amount", "1"]);
            let instance = cluster.sims[i - 1].instance_id.clone();
            wait_until(
                &format!("node {i}'s request for a seat to be on-chain"),
                Duration::from_secs(60),
                Duration::from_millis(500),
                || {
                    cluster.meshctl(0, &["requests", "--json"])["requests"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["instanceId"] == instance))
                },
                || project.logs(),
            );
            let bound = cluster.meshctl(0, &["bind", "--instance", &instance]);
            assert_eq!(
                bound["tokenId"].as_u64(),
                Some(i as u64),
                "node {i} gets the next seat: {bound}"
            );
            steps.step(&format!(
                "node {i}: funded {node} from its log, its request bound as seat {i}"
            ));
        }
        for (i, up) in ups.into_iter().enumerate() {
            // `up` returns once mesh-ready has exited 0 and the app has started.
            up.join().expect("docker-compose up");
            steps.step(&format!(
                "node {} up: mesh-ready passed on its first boot",
                i + 1
            ));
        }
    });

    let everyone = || {
        projects
            .iter()
            .map(|p| format!("{}\n", p.logs()))
            .collect::<String>()
    };
    for (i, project) in projects.iter().enumerate() {
        let i = i + 1;
        let uid = project.exec("app", &["id", "-u"]);
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "999",
            "node {i}'s app runs as uid 999"
        );
        wait_until(
            &format!(
                "node {i}'s app to see seats {:?} over WireGuard on its loopback API",
                others(i)
            ),
            Duration::from_secs(90),
            Duration::from_millis(500),
            || seats_with(project, ConnectionKind::Wireguard) == others(i),
            everyone,
        );
    }
    steps.step("every app reads the other two on its loopback API, as uid 999");
    for (i, project) in projects.iter().enumerate() {
        for seat in others(i + 1) {
            wait_until(
                &format!("node {}'s app to ping {}", i + 1, overlay_ip(seat)),
                Duration::from_secs(30),
                Duration::from_millis(200),
                || pings(project, seat),
                everyone,
            );
        }
    }
    steps.step("every app pings the others' overlay addresses");
    for (i, project) in projects.iter().enumerate() {
        wait_until(
            &format!("node {}'s healthcheck to turn healthy", i + 1),
            Duration::from_secs(90),
            Duration::from_secs(1),
            || health(project) == "healthy",
            everyone,
        );
    }
    steps.step("every healthcheck is healthy");

    let blocks = block_number(&rpc).expect("anvil answers");
    let stopped = &projects[2];
    stopped.compose(&["stop", "-t", "10", "mesh"]);
    steps.step("node 3's agent container stopped");
    for (i, project) in projects.iter().take(2).enumerate() {
        // Its last handshake must go stale (mesh_wg::FRESH_HANDSHAKE): up to three minutes.
        wait_until(
            &format!("node {} to report seat 3 unreachable", i + 1),
            Duration::from_secs(240),
            Duration::from_secs(2),
            || seats_with(project, ConnectionKind::Unreachable) == vec![3],
            everyone,
        );
        let check = project.exec("mesh", &["meshctl", "status", "--check"]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(
            !check.status.success() && stderr.contains("seat 3 (10.0.1.3) is unreachable"),
            "meshctl status --check on node {} must fail naming seat 3: {stderr}",
            i + 1
        );
    }
    steps.step("nodes 1 and 2 report seat 3 unreachable, and their check names it");

    // The app kept the namespace (the `net` service holds it): only the agent comes back.
    stopped.compose(&["start", "mesh"]);
    for (i, project) in projects.iter().enumerate() {
        wait_until(
            &format!("node {} to see both others over WireGuard again", i + 1),
            Duration::from_secs(90),
            Duration::from_millis(500),
            || seats_with(project, ConnectionKind::Wireguard) == others(i + 1),
            everyone,
        );
    }
    for seat in [1, 2] {
        wait_until(
            &format!("node 3's app to ping {} again", overlay_ip(seat)),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || pings(stopped, seat),
            everyone,
        );
    }
    assert_eq!(
        block_number(&rpc),
        Some(blocks),
        "a restart with its state volume must need no transaction (anvil mines a block per transaction)"
    );
    let logs = docker_output(&["logs", &stopped.container("mesh")]);
    let first = String::from_utf8_lossy(&logs.stderr)
        .lines()
        .find(|l| l.contains("\"token\""))
        .map(str::to_owned)
        .unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("the agent logs JSON lines with its token ({e}): {first:?}"));
    assert_eq!(
        line["spans"][0]["token"], 3,
        "the node span carries the seat: {line}"
    );
    assert_eq!(
        line["spans"][0]["instance"], cluster.sims[2].instance_id,
        "and the instance: {line}"
    );
    steps.step("node 3 healed with no new transaction; its JSON logs carry seat and instance");
    drop(projects);
    for name in [format!("{run}n1_mesh-state"), format!("{run}n3_mesh-state")] {
        assert!(
            !docker_output(&["volume", "inspect", &name])
                .status
                .success(),
            "docker-compose down -v removes volume {name}"
        );
    }
}
