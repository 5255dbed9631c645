//! One three-node mesh, read the three ways an operator watches it: `wg show` on every interface
//! (`wg_show`), a real Prometheus evaluating the Grafana dashboard (`prometheus`), and the status page in a
//! headless Chromium (`status_page`). None of the first two changes the mesh, so they share it; the status
//! page's check goes last, since it revokes seat 3.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (prometheus, chromium,
//! playwright-core):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios observers:: -- --nocapture
//! ```
//!
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::Duration;

use netns_tests::prelude::*;
use netns_tests::run::process::require_root;

use super::{prometheus, status_page, wg_show};

const NODES: usize = 3;

#[test]
fn wg_show_prometheus_and_the_status_page_each_see_the_mesh_as_it_is() {
    require_mesh_prerequisites();
    require_root(&["prometheus", "curl"]);
    require_chromium();
    let steps = Steps::new("observers");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let metrics = format!("0.0.0.0:{}", prometheus::METRICS_PORT);
    let (agents, keys) = Agent::builder(&cluster)
        .flags([
            "--metrics-listen",
            &metrics,
            "--api-listen",
            status_page::API,
        ])
        .mesh(1..=NODES);
    wait_until(
        "a node to hold the leader's lease",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || agents.iter().any(|a| a.leader().is_ok_and(|l| l.is_self)),
        || tails(&agents),
    );
    steps.step(&format!(
        "cluster {} deployed, three nodes meshed, one leading; each serves /metrics on its LAN address and its API on loopback",
        cluster.contract
    ));

    wg_show::every_peer_is_listed_with_handshake_and_transfer(
        &steps, &lan, &cluster, &agents, &keys,
    );
    prometheus::every_dashboard_expression_returns_series(&steps, &lan, &agents);
    status_page::shows_the_mesh_and_the_leader_and_drops_a_revoked_seat_without_a_reload(
        &steps, &lan, &cluster, &agents,
    );
}
