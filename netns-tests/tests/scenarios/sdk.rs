//! The Python SDK (`sdk/python`, `dstack_p2p`) against real agents in namespaces, through the scripts in
//! `sdk/python/tests/live/`: `register()` and `get_peers()`, a contract that is not the agent's, a node
//! without a seat told the `meshctl` command, `monitor_peers` seeing a join, coming back after its agent
//! restarts, and seeing a revocation after that; and the sync wrapper.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (the SDK in
//! `.toolchain/venv`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios sdk:: -- --nocapture
//! ```

use std::time::Duration;

use netns_tests::prelude::*;
use serde_json::Value;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn live(script: &str) -> String {
    format!("sdk/python/tests/live/{script}")
}

#[test]
fn the_sdk_registers_lists_and_follows_a_real_agent() {
    require_mesh_prerequisites();
    python();
    let steps = Steps::new("sdk");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (mut agents, _) = Agent::builder(&cluster).mesh(1..=2);
    steps.step("two nodes up; node 3 has an instance and no seat");

    let (ok, out, text) = run_script(
        lan.node(1),
        &live("register_and_list.py"),
        &["--contract", &cluster.contract, "--timeout", "30"],
        agents[0].api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(ok, "register_and_list.py: {text}");
    let v = &out[0];
    assert_eq!(v["registered"], true, "{v}");
    assert_eq!(
        v["peers"],
        serde_json::json!(["10.0.1.2"]),
        "the peer's overlay IP while its tunnel is up: {v}"
    );
    assert_eq!(v["detailed"][0]["connection"], "wireguard", "{v}");
    steps.step("register() is true, get_peers() gives the overlay IP");

    let other = "0x000000000000000000000000000000000000dEaD";
    let (_, out, text) = run_script(
        lan.node(1),
        &live("mismatch.py"),
        &["--contract", other],
        agents[0].api_socket(),
        SCRIPT_TIMEOUT,
    );
    let v = out.first().unwrap_or_else(|| panic!("mismatch.py: {text}"));
    assert_eq!(v["error_type"], "ConfigMismatch", "{v}");
    let message = v["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        message.contains(&other.to_lowercase())
            && message.contains(&cluster.contract.to_lowercase()),
        "the mismatch names both contracts: {v}"
    );

    let mut monitor = App::start(
        lan.node(1),
        &live("monitor.py"),
        &["--seconds", "240"],
        agents[0].api_socket(),
        &[],
    );
    monitor.wait_for("\"kind\": \"peers\"", Duration::from_secs(30));
    assert_eq!(
        monitor.peer_lists().first(),
        Some(&vec!["10.0.1.2".to_owned()]),
        "the current list first\n{}",
        monitor.tail()
    );
    steps.step("monitor_peers delivered the current list");

    let mut third = Agent::builder(&cluster).start(3);
    let (ok, out, text) = run_script(
        lan.node(3),
        &live("register_and_list.py"),
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
        "register() must raise for a node without a seat: {text}"
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
    steps.step("register() without a seat raises with the meshctl command");

    cluster.mint(3);
    third.wait_ready(60);
    agents.push(third);
    wait_until(
        "monitor_peers to see node 3 join",
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
    steps.step("monitor_peers saw the join");

    let before = monitor.peer_lists().len();
    agents[0].restart(&[]);
    agents[0].wait_ready(60);
    wait_until(
        "monitor_peers to reconnect after the agent restarted",
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
        "monitor_peers to see the revocation after the restart",
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
    steps.step("monitor_peers came back after the restart and saw the revocation");

    let (ok, out, text) = run_script(
        lan.node(2),
        &live("sync_smoke.py"),
        &[],
        agents[1].api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(ok, "sync_smoke.py: {text}");
    let v: &Value = &out[0];
    assert_eq!(v["peers"], serde_json::json!(["10.0.1.1"]), "{v}");
    steps.step("the sync wrapper lists the peers");
}
