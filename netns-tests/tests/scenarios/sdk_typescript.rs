//! The TypeScript SDK (`sdk/typescript`, `@dstack-mesh/sdk`) against real agents in namespaces, through the
//! scripts in `sdk/typescript/test/live/` run with Node.js: `register()` and `getPeers()`, a contract that
//! is not the agent's, a node without a seat told the `meshctl` command, `monitorPeers` seeing a join,
//! coming back after its agent restarts, and seeing a revocation after that; and a second node's view. The
//! same scenario as the Python SDK's (`tests/scenarios/sdk.rs`).
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (which builds the SDK into
//! `sdk/typescript/dist`, what the scripts import), with Node.js 20 or newer on `PATH` (or in
//! `DSTACK_MESH_NODE`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios sdk_typescript:: -- --nocapture
//! ```

use std::time::Duration;

use netns_tests::apps::{node, repo_root};
use netns_tests::prelude::*;
use serde_json::Value;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn live(script: &str) -> String {
    format!("sdk/typescript/test/live/{script}")
}

/// Node.js, found before anything starts, and the SDK built where the scripts import it from: the
/// scenario runs what `npm run build` made, and does not build it itself.
fn require_node_and_the_built_sdk() {
    let named = std::env::var_os("DSTACK_MESH_NODE").is_some();
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join("node").is_file()));
    assert!(
        named || on_path,
        "node is not on PATH: install Node.js 20 or newer (the TypeScript SDK's floor), or set \
         DSTACK_MESH_NODE to its binary"
    );
    node();
    let dist = repo_root().join("sdk/typescript/dist/index.js");
    assert!(
        dist.is_file(),
        "{} is missing: build the TypeScript SDK first (cd sdk/typescript && npm ci && npm run build), \
         or run scripts/bootstrap, which does",
        dist.display()
    );
}

#[test]
fn the_typescript_sdk_registers_lists_and_follows_a_real_agent() {
    require_mesh_prerequisites();
    require_node_and_the_built_sdk();
    let steps = Steps::new("sdk_typescript");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (mut agents, _) = Agent::builder(&cluster).mesh(1..=2);
    steps.step("two nodes up; node 3 has an instance and no seat");

    let (ok, out, text) = run_script(
        lan.node(1),
        &live("register_and_list.mjs"),
        &["--contract", &cluster.contract, "--timeout", "30"],
        agents[0].api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(ok, "register_and_list.mjs: {text}");
    let v = &out[0];
    assert_eq!(v["registered"], true, "{v}");
    assert_eq!(
        v["peers"],
        serde_json::json!(["10.0.1.2"]),
        "the peer's overlay IP while its tunnel is up: {v}"
    );
    assert_eq!(v["detailed"][0]["connection"], "wireguard", "{v}");
    steps.step("register() is true, getPeers() gives the overlay IP");

    let other = "0x000000000000000000000000000000000000dEaD";
    let (_, out, text) = run_script(
        lan.node(1),
        &live("mismatch.mjs"),
        &["--contract", other],
        agents[0].api_socket(),
        SCRIPT_TIMEOUT,
    );
    let v = out
        .first()
        .unwrap_or_else(|| panic!("mismatch.mjs: {text}"));
    assert_eq!(v["error_type"], "ConfigMismatch", "{v}");
    let message = v["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        message.contains(&other.to_lowercase())
            && message.contains(&cluster.contract.to_lowercase()),
        "the mismatch names both contracts: {v}"
    );

    let mut monitor = App::start(
        lan.node(1),
        &live("monitor.mjs"),
        &["--seconds", "240"],
        agents[0].api_socket(),
        &[],
    );
    // JSON.stringify puts no space after the colon.
    monitor.wait_for("\"kind\":\"peers\"", Duration::from_secs(30));
    assert_eq!(
        monitor.peer_lists().first(),
        Some(&vec!["10.0.1.2".to_owned()]),
        "the current list first\n{}",
        monitor.tail()
    );
    steps.step("monitorPeers delivered the current list");

    let mut third = Agent::builder(&cluster).start(3);
    let (ok, out, text) = run_script(
        lan.node(3),
        &live("register_and_list.mjs"),
        &[
            "--contract",
            &cluster.contract,
            // The agent knows at its first lookup, within a second; a reason that flickers in and
            // out of its status would let this pass only by luck.
            "--timeout",
            "10",
            "--expect-error",
        ],
        third.api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(
        ok,
        "register() must throw for a node without a seat: {text}"
    );
    let v = &out[0];
    assert_eq!(v["error_type"], "RegistrationError", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("meshctl mint"),
        "the agent's reason, with the command to run: {v}"
    );
    steps.step("register() without a seat throws with the meshctl command");

    cluster.mint(3);
    third.wait_ready(60);
    agents.push(third);
    wait_until(
        "monitorPeers to see node 3 join",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            monitor
                .peer_lists()
                .last()
                .is_some_and(|l| l.contains(&"10.0.1.3".to_owned()))
        },
        || monitor.tail(),
    );
    steps.step("monitorPeers saw the join");

    let before = monitor.peer_lists().len();
    agents[0].restart(&[]);
    agents[0].wait_ready(60);
    wait_until(
        "monitorPeers to reconnect after the agent restarted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            monitor
                .json_lines()
                .iter()
                .any(|v| v["kind"] == "reconnected")
        },
        || monitor.tail(),
    );
    cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    wait_until(
        "monitorPeers to see the revocation after the restart",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            monitor
                .peer_lists()
                .last()
                .is_some_and(|l| l == &vec!["10.0.1.2".to_owned()])
        },
        || monitor.tail(),
    );
    let lists = monitor.peer_lists();
    assert_eq!(
        lists.len(),
        before + 1,
        "the restart itself, with nothing changed, calls back nothing: {lists:?}"
    );
    steps.step("monitorPeers came back after the restart and saw the revocation");

    let (ok, out, text) = run_script(
        lan.node(2),
        &live("register_and_list.mjs"),
        &["--contract", &cluster.contract, "--timeout", "30"],
        agents[1].api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(ok, "register_and_list.mjs on node 2: {text}");
    let v: &Value = &out[0];
    assert_eq!(v["peers"], serde_json::json!(["10.0.1.1"]), "{v}");
    let state = v["leader"]["state"].as_str().unwrap_or_default();
    assert!(
        ["current", "stale", "unknown"].contains(&state) && v["leader"].get("term").is_some(),
        "the leader with its state and fencing term: {v}"
    );
    steps.step("node 2 lists node 1, and reads the leader with its term");
}
