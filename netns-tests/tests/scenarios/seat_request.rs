//! A node boots with no seat and joins with no shell and no restart: its agent asks the cluster's owner for a
//! seat on-chain, `mesh-ready` (`p2p-agent wait`) waits past its timeout saying why, the owner binds it with
//! `meshctl bind --instance` alone, and the same agent process takes the seat, registers and meshes.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios seat_request:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs (root, /dev/net/tun, iproute2, iputils-ping, wireguard-tools, anvil).

use std::time::{Duration, Instant};

use netns_tests::prelude::*;

/// `mesh-ready`'s timeout here: far shorter than the wait for the owner, which it must outlast.
const WAIT_TIMEOUT_SECS: u64 = 3;

#[test]
fn a_seatless_node_asks_waits_and_joins_once_bound() {
    require_mesh_prerequisites();
    let steps = Steps::new("seat_request");
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 1);
    steps.step(&format!(
        "cluster {} deployed, seat 1 minted and bound to node 1; node 2 has none",
        cluster.contract
    ));
    let builder = Agent::builder(&cluster);
    let mut one = builder.start(1);
    one.wait_ready(60);
    let mut two = builder.start(2);
    let instance = cluster.sims[1].instance_id.clone();

    wait_until(
        "node 2 to report its request for a seat on-chain",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            two.try_status()
                .is_ok_and(|s| s["status"]["node"]["seatRequest"]["onChain"] == true)
        },
        || two.tail(),
    );
    let status = two.try_status().expect("status");
    let why = status["status"]["node"]["registrationError"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let command = format!(
        "meshctl bind --contract {} --instance {instance}",
        status["status"]["chain"]["contract"]
            .as_str()
            .unwrap_or_default()
    );
    assert!(
        why.to_lowercase().contains(&command.to_lowercase()),
        "the status names the holder's command {command:?}: {why}"
    );
    assert!(
        status["status"]["node"]["tokenId"].is_null(),
        "no seat yet: {status}"
    );
    steps.step(&format!("node 2 asked for a seat: {why}"));

    // The relay's port is the agent's from its start: bound only with the interface, it could already be
    // the ephemeral source port of the agent's own RPC connections, and the agent would stop.
    let listening = two.ns().exec_ok(&["ss", "-ltnH"]);
    assert!(
        listening.contains(":51820 "),
        "node 2 holds its relay port before it has a seat: {listening}"
    );

    // mesh-ready, as the compose file runs it: it must outlast its own timeout while the seat is missing.
    let mut ready = two.start_wait(WAIT_TIMEOUT_SECS);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(WAIT_TIMEOUT_SECS * 3));
    assert!(
        !ready.has_exited(),
        "p2p-agent wait gave up after {:?} though the node only waits for its holder",
        started.elapsed()
    );
    steps.step(&format!(
        "p2p-agent wait --timeout-secs {WAIT_TIMEOUT_SECS} still waiting after {:?}",
        started.elapsed()
    ));

    let listed = cluster.meshctl(0, &["requests", "--json"]);
    assert_eq!(
        listed["requests"][0]["instanceId"], instance,
        "meshctl requests lists node 2: {listed}"
    );
    assert_eq!(listed["requests"][0]["verified"], true, "{listed}");
    let bound = cluster.meshctl(0, &["bind", "--instance", &instance]);
    let token = bound["tokenId"].as_u64().expect("a seat was minted");
    assert_eq!(token, 2, "{bound}");
    steps.step(&format!(
        "the owner bound it: seat {token}, {}",
        bound["receipt"]
    ));

    let out = two.outlive(ready, Duration::from_secs(60));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "p2p-agent wait failed: {said}");
    assert!(
        said.contains("waiting: this node has no seat yet") && said.contains("ready: seat 2"),
        "it said why it waited, then that it was ready: {said}"
    );
    steps.step("mesh-ready passed once the seat was bound, with no restart");

    let (k1, k2) = (one.key(), two.key());
    wait_until(
        "nodes 1 and 2 to see each other healthy over WireGuard",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || one.sees_healthy(2, &k2) && two.sees_healthy(1, &k1),
        || format!("{}\n{}", one.tail(), two.tail()),
    );
    // The device knows node 1 by its key alone; its log lines about it name the seat too.
    let added = two.log_lines("peer added");
    assert!(
        added.iter().any(|l| l.contains("(seat 1)")),
        "node 2's device names seat 1 when it adds it: {added:?}"
    );
    let agents = [one, two];
    assert_pings(&agents, 2, 1);
    steps.step("node 2 meshed with node 1: 2 -> 1 pings");
}

/// A node upgraded in place keeps its seat, but its seat's binding is a quote of the old image, which peers
/// judge it by. Its agent sees that and asks the seat's holder for a rebind on-chain; the holder rebinds it
/// by instance id, and peers then judge the node on the image it runs: the old one can be retired.
#[test]
fn an_upgraded_node_asks_for_a_rebind_on_its_new_image() {
    require_mesh_prerequisites();
    let steps = Steps::new("seat_request/upgrade");
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (mut agents, keys) = Agent::builder(&cluster).mesh(1..=2);
    let old = cluster.identity(2)["compose_hash"]
        .as_str()
        .expect("compose hash")
        .to_owned();
    steps.step(&format!("two nodes meshed on compose hash {old}"));

    agents[1].stop();
    let new = cluster.upgrade(2, "dstack-mesh-next");
    assert_ne!(new, old, "another release, another compose hash");
    cluster.meshctl(0, &["app-auth", "allow-compose", &new]);
    let builder = Agent::builder(&cluster);
    agents[1] = builder.start(2);
    agents[1].wait_ready(60);
    steps.step(&format!(
        "node 2 upgraded in place to {new}, allowed, and back with its seat"
    ));

    let two = &agents[1];
    wait_until(
        "node 2 to ask its holder for a rebind on-chain",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            two.try_status()
                .is_ok_and(|s| s["status"]["node"]["seatRequest"]["onChain"] == true)
        },
        || two.tail(),
    );
    let instance = cluster.sims[1].instance_id.clone();
    let listed = cluster.meshctl(0, &["requests", "--json"]);
    assert_eq!(listed["requests"][0]["instanceId"], instance, "{listed}");
    assert_eq!(listed["requests"][0]["boundTo"], 2, "{listed}");
    assert_eq!(
        listed["requests"][0]["composeHash"], new,
        "a quote of the new image: {listed}"
    );
    // Seat 2 is account 2's: the holder rebinds it.
    let rebound = cluster.meshctl(2, &["bind", "--instance", &instance, "--token", "2"]);
    assert_eq!(rebound["recordCleared"], true, "{rebound}");
    steps.step("the holder rebound seat 2 with the request's fresh quote");

    wait_until(
        "node 1 to judge node 2 on its new image, over a healthy tunnel both ways",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            agents[1].sees_healthy(1, &keys[0])
                && agents[0].peers().is_ok_and(|peers| {
                    peers.iter().any(|p| {
                        p.token_id == 2
                            && p.healthy
                            && p.attestation
                                .as_ref()
                                .and_then(|a| a.compose_hash.as_deref())
                                == Some(new.as_str())
                    })
                })
        },
        || {
            format!(
                "{:?}\n{}\n{}",
                agents[0].peers(),
                agents[0].tail(),
                agents[1].tail()
            )
        },
    );
    // Node 2 clears its request when its own follower processes the new registration, which may come a
    // block after node 1 has judged it.
    wait_until(
        "node 2 to see its request answered",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            agents[1]
                .try_status()
                .is_ok_and(|s| s["status"]["node"]["seatRequest"].is_null())
        },
        || format!("{:?}\n{}", agents[1].try_status(), agents[1].tail()),
    );
    steps.step("node 1 judges node 2 on the new image; node 2's request is answered");
}
