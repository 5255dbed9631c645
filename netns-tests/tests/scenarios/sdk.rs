//! The SDKs against real agents in namespaces, both on one cluster: the Python SDK (`sdk/python`,
//! `dstack_p2p`, through the scripts in `sdk/python/tests/live/`) and the TypeScript SDK (`sdk/typescript`,
//! `@dstack-mesh/sdk`, through `sdk/typescript/test/live/`, run with Node.js). Each does, on the same
//! events: `register()` and the peer list; a contract that is not the agent's; a node without a seat told
//! the `meshctl` command; a monitor of the peers seeing a join, coming back after its agent restarts, and
//! seeing a revocation after that; and a second node's view (Python's sync wrapper, TypeScript's leader with
//! its term).
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (the Python SDK in
//! `.toolchain/venv`, the TypeScript SDK built into `sdk/typescript/dist`), with Node.js 20 or newer on
//! `PATH` (or in `DSTACK_MESH_NODE`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios sdk:: -- --nocapture
//! ```

use std::time::Duration;

use netns_tests::prelude::*;
use netns_tests::system::apps::{node, repo_root};
use serde_json::Value;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// One SDK's live scripts.
struct Sdk {
    name: &'static str,
    dir: &'static str,
    ext: &'static str,
    /// How its monitor's peer lines start (JSON.stringify puts no space after the colon).
    peers_line: &'static str,
}

const PYTHON: Sdk = Sdk {
    name: "Python",
    dir: "sdk/python/tests/live",
    ext: "py",
    peers_line: "\"kind\": \"peers\"",
};

const TYPESCRIPT: Sdk = Sdk {
    name: "TypeScript",
    dir: "sdk/typescript/test/live",
    ext: "mjs",
    peers_line: "\"kind\":\"peers\"",
};

const BOTH: [&Sdk; 2] = [&PYTHON, &TYPESCRIPT];

impl Sdk {
    fn script(&self, stem: &str) -> String {
        format!("{}/{stem}.{}", self.dir, self.ext)
    }
}

/// Node.js, found before anything starts, and the TypeScript SDK built where its scripts import it from:
/// the scenario runs what `npm run build` made, and does not build it itself.
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

/// The end of every monitor's output, for a wait that timed out.
fn monitor_tails(monitors: &[App]) -> String {
    monitors
        .iter()
        .map(App::tail)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `sdk`'s `register_and_list` script on an agent's node, against that agent: what it printed.
fn register_and_list(sdk: &Sdk, lan: &Lan, cluster: &Cluster<'_>, agent: &Agent<'_>) -> Value {
    let (ok, mut out, text) = run_script(
        lan.node(agent.index),
        &sdk.script("register_and_list"),
        &["--contract", &cluster.contract, "--timeout", "30"],
        agent.api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(
        ok && !out.is_empty(),
        "{}: register_and_list on node {}: {text}",
        sdk.name,
        agent.index
    );
    out.swap_remove(0)
}

#[test]
fn both_sdks_register_list_and_follow_a_real_agent() {
    require_mesh_prerequisites();
    python();
    require_node_and_the_built_sdk();
    let steps = Steps::new("sdk");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (mut agents, _) = Agent::builder(&cluster).mesh(1..=2);
    steps.step("two nodes up; node 3 has an instance and no seat");

    for sdk in BOTH {
        let v = &register_and_list(sdk, &lan, &cluster, &agents[0]);
        assert_eq!(v["registered"], true, "{}: {v}", sdk.name);
        assert_eq!(
            v["peers"],
            serde_json::json!(["10.0.1.2"]),
            "{}: the peer's overlay IP while its tunnel is up: {v}",
            sdk.name
        );
        assert_eq!(
            v["detailed"][0]["connection"], "wireguard",
            "{}: {v}",
            sdk.name
        );
        assert_eq!(v["detailed"][0]["healthy"], true, "{}: {v}", sdk.name);
    }
    steps.step("each SDK: register() is true, the peer list gives the overlay IP");

    let other = "0x000000000000000000000000000000000000dEaD";
    for sdk in BOTH {
        let (_, out, text) = run_script(
            lan.node(1),
            &sdk.script("mismatch"),
            &["--contract", other],
            agents[0].api_socket(),
            SCRIPT_TIMEOUT,
        );
        let v = out
            .first()
            .unwrap_or_else(|| panic!("{}: mismatch: {text}", sdk.name));
        assert_eq!(v["error_type"], "ConfigMismatch", "{}: {v}", sdk.name);
        let message = v["message"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            message.contains(&other.to_lowercase())
                && message.contains(&cluster.contract.to_lowercase()),
            "{}: the mismatch names both contracts: {v}",
            sdk.name
        );
    }
    steps.step("each SDK: a contract that is not the agent's is a ConfigMismatch naming both");

    let mut monitors: Vec<App> = BOTH
        .iter()
        .map(|sdk| {
            App::start(
                lan.node(1),
                &sdk.script("monitor"),
                &["--seconds", "240"],
                agents[0].api_socket(),
                &[],
            )
        })
        .collect();
    for (sdk, monitor) in BOTH.iter().zip(&mut monitors) {
        monitor.wait_for(sdk.peers_line, Duration::from_secs(30));
        assert_eq!(
            monitor.peer_lists().first(),
            Some(&vec!["10.0.1.2".to_owned()]),
            "{}: the current list first\n{}",
            sdk.name,
            monitor.tail()
        );
    }
    steps.step("each SDK's monitor delivered the current list");

    let mut third = Agent::builder(&cluster).start(3);
    for sdk in BOTH {
        let (ok, out, text) = run_script(
            lan.node(3),
            &sdk.script("register_and_list"),
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
            "{}: register() must fail for a node without a seat: {text}",
            sdk.name
        );
        let v = &out[0];
        assert_eq!(v["error_type"], "RegistrationError", "{}: {v}", sdk.name);
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("meshctl bind --contract"),
            "{}: the agent's reason, with the command to run: {v}",
            sdk.name
        );
    }
    steps.step("each SDK: register() without a seat fails with the meshctl command");

    cluster.mint(3);
    third.wait_ready(60);
    agents.push(third);
    let last_is = |monitor: &App, want: &dyn Fn(&Vec<String>) -> bool| {
        monitor.peer_lists().last().is_some_and(want)
    };
    wait_until(
        "each monitor to see node 3 join",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            monitors
                .iter()
                .all(|m| last_is(m, &|l| l.contains(&"10.0.1.3".to_owned())))
        },
        || monitor_tails(&monitors),
    );
    steps.step("each monitor saw the join");

    let before: Vec<usize> = monitors.iter().map(|m| m.peer_lists().len()).collect();
    agents[0].restart(&[]);
    agents[0].wait_ready(60);
    wait_until(
        "each monitor to reconnect after the agent restarted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            monitors
                .iter()
                .all(|m| m.json_lines().iter().any(|v| v["kind"] == "reconnected"))
        },
        || monitor_tails(&monitors),
    );
    cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    wait_until(
        "each monitor to see the revocation after the restart",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            monitors
                .iter()
                .all(|m| last_is(m, &|l| l == &vec!["10.0.1.2".to_owned()]))
        },
        || monitor_tails(&monitors),
    );
    for ((sdk, monitor), before) in BOTH.iter().zip(&monitors).zip(before) {
        let lists = monitor.peer_lists();
        assert_eq!(
            lists.len(),
            before + 1,
            "{}: the restart itself, with nothing changed, calls back nothing: {lists:?}",
            sdk.name
        );
    }
    steps.step("each monitor came back after the restart and saw the revocation");

    let (ok, out, text) = run_script(
        lan.node(2),
        &PYTHON.script("sync_smoke"),
        &[],
        agents[1].api_socket(),
        SCRIPT_TIMEOUT,
    );
    assert!(ok, "sync_smoke.py: {text}");
    let v: &Value = &out[0];
    assert_eq!(v["peers"], serde_json::json!(["10.0.1.1"]), "{v}");
    let v = &register_and_list(&TYPESCRIPT, &lan, &cluster, &agents[1]);
    assert_eq!(v["peers"], serde_json::json!(["10.0.1.1"]), "{v}");
    let state = v["leader"]["state"].as_str().unwrap_or_default();
    assert!(
        ["current", "stale", "unknown"].contains(&state) && v["leader"].get("term").is_some(),
        "the leader with its state and fencing term: {v}"
    );
    steps.step(
        "node 2: Python's sync wrapper lists node 1, TypeScript reads the leader with its term",
    );
}
