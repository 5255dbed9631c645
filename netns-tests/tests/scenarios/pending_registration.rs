//! A registration whose transaction is never mined holds nothing else up. Nodes 1 and 2 form a mesh; then
//! anvil stops mining on its own (`evm_setAutomine false`) and node 3 starts: it finds its seat, brings its
//! interface up and sends its registration, which waits in anvil's pool. The pool is then emptied
//! (`anvil_dropAllTransactions`), so that transaction can never be mined, and mining resumes:
//!
//! - the owner revokes seat 2, and node 3, still waiting for its receipt, drops seat 2 from its status
//!   and its interface within the bound `revoke` uses;
//! - with mining off again, node 3 is restarted and sends its registration anew; SIGTERM while that
//!   transaction waits in the pool ends it within 3 s, its interface removed.
//!
//! Prints the measured times ("seat 2 dropped … after the revoke", "stopped in …").
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios pending_registration:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs (root, /dev/net/tun, iproute2, iputils-ping, wireguard-tools, anvil,
//! cast). `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;

/// As in `revoke`: removal must take well under this with the agents polling every 200 ms.
const PROPAGATION_BOUND: Duration = Duration::from_secs(15);
/// What the issue asks of a shutdown, whatever the registrar is waiting for.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// Whether node `a`'s status lists seat `token` (an error counts as "listed").
fn lists_seat(a: &Agent<'_>, token: u64) -> bool {
    a.try_status().map_or(true, |v| {
        v["peers"]
            .as_array()
            .is_none_or(|peers| peers.iter().any(|p| p["tokenId"].as_u64() == Some(token)))
    })
}

/// Whether node `a` says its record is on-chain.
fn registered(a: &Agent<'_>) -> bool {
    a.status().0.node.registered
}

/// Waits (30 s) until node 3's registration is in anvil's pool.
fn wait_for_pending_registration(lan: &Lan, a: &Agent<'_>) {
    wait_until(
        "node 3's registration to wait in anvil's pool",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || lan.pending_transactions() >= 1,
        || a.tail(),
    );
}

#[test]
fn a_pending_registration_holds_up_neither_following_nor_shutdown() {
    require_mesh_prerequisites();
    let steps = Steps::new("pending_registration");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy(&lan);
    let (_agents, keys) = Agent::builder(&cluster).mesh(1..=2);
    steps.step("nodes 1 and 2 meshed; seat 3 minted, node 3 not started");

    lan.anvil_rpc("evm_setAutomine", &["false"]);
    let mut node3 = Agent::builder(&cluster).start(3);
    wait_for_pending_registration(&lan, &node3);
    wait_until(
        "node 3 to follow the chain to seats 1 and 2 and put them on its interface",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            lists_seat(&node3, 1)
                && lists_seat(&node3, 2)
                && node3.wg_peer_keys().contains(&keys[1])
        },
        || node3.tail(),
    );
    assert!(
        !registered(&node3),
        "node 3's record cannot be on-chain yet"
    );
    lan.anvil_rpc("anvil_dropAllTransactions", &[]);
    lan.anvil_rpc("evm_setAutomine", &["true"]);
    assert_eq!(lan.pending_transactions(), 0);
    steps.step("node 3 waits for the receipt of a registration that was dropped from the pool");

    let revoked = cluster.meshctl(0, &["revoke", "--token", "2", "--yes"]);
    let t_rev = Instant::now();
    assert_eq!(revoked["revoked"].as_bool(), Some(true), "{revoked}");
    wait_until(
        "node 3 to drop seat 2 from its status and interface",
        PROPAGATION_BOUND,
        Duration::from_millis(50),
        || !lists_seat(&node3, 2) && !node3.wg_peer_keys().contains(&keys[1]),
        || format!("{}\n{}", node3.wg_dump_text(), node3.tail()),
    );
    let dropped = t_rev.elapsed();
    assert!(
        !registered(&node3),
        "node 3's registration must still be pending: the test proves nothing otherwise\n{}",
        node3.tail()
    );
    steps.step(&format!(
        "seat 2 dropped by node 3 {dropped:.2?} after the revoke, its own registration still pending"
    ));

    lan.anvil_rpc("evm_setAutomine", &["false"]);
    node3.restart(&[]);
    wait_for_pending_registration(&lan, &node3);
    assert!(
        node3.ns().ip(&["link", "show"]).contains(&node3.ifname),
        "node 3's interface is up while it registers\n{}",
        node3.tail()
    );
    // Agent::stop requires exit status 0 and the interface and UAPI socket gone.
    let stopped = node3.stop();
    assert!(
        stopped < STOP_BOUND,
        "node 3 took {stopped:.2?} to stop with its registration pending; the bound is {STOP_BOUND:?}\n{}",
        node3.tail()
    );
    assert_eq!(
        lan.pending_transactions(),
        1,
        "the registration was still unmined when node 3 stopped"
    );
    steps.step(&format!(
        "SIGTERM with the registration unmined: stopped in {stopped:.2?}, interface removed"
    ));
    lan.anvil_rpc("evm_setAutomine", &["true"]);
}
