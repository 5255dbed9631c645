//! The fault matrix, the services beside the chain: the PCCS (down at a collateral refresh, down at an
//! agent's start, serving expired collateral), dstack's guest agent (gone mid-run, gone at an agent's
//! start), the state directory (full), the STUN servers (all down) and the gateway's relay (down while a
//! pair needs it). Where the data path does not need the service, a ping loses nothing; each agent's status
//! names the fault (`/v1/status` `faults`) and stops once it ends; the bounds each row keeps are in
//! docs/faults.md.
//!
//! Each row prints a line `fault row | …` with its figures, for docs/faults.md.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios faults_services:: -- --nocapture
//! ```

use std::time::Duration;

use netns_tests::net::netns::in_netns;
use netns_tests::net::uplink::StunServer;
use netns_tests::prelude::*;
use netns_tests::system::faults::{Measure, Tmpfs, assert_within, clear_of, names, wait_at_rest};
use tdx_mock::TcbStatus;
use tdx_mock::pccs::MockPccs;

const WITHIN: Duration = Duration::from_secs(5);

/// A row whose pings go from node 1 to `to`, held 3 s.
fn measure<'a, 'b>(
    agents: &'b [Agent<'a>],
    name: &str,
    watched: Vec<usize>,
    to: std::net::Ipv4Addr,
) -> Measure<'a, 'b> {
    Measure {
        name: name.into(),
        agents,
        watched,
        ping: Some((1, to)),
        hold: Duration::from_secs(3),
        within: WITHIN * 2,
    }
}

/// The PCCS fails three ways; the tunnels keep their verified peers on the collateral cached, and each
/// agent names the PCCS, then stops once it serves valid collateral again.
#[test]
fn the_pccs_down_at_a_refresh_or_a_start_or_serving_expired_collateral_keeps_the_peers() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_services/pccs");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let listener = in_netns(&lan.switch, || std::net::TcpListener::bind((SWITCH_IP, 0)))
        .expect("a port for the mock PCCS");
    // Valid for twelve hours: with less than a day left, it is fetched again at every pass.
    let pccs = MockPccs::signing(
        listener,
        cluster.mock_pki(),
        Duration::from_secs(12 * 3600),
        TcbStatus::UpToDate,
    );
    cluster.fetch_collateral_from(&pccs.url());
    // A pass every 3 s: a refresh is due at each.
    let (mut agents, keys) = Agent::builder(&cluster)
        .flags(["--full-read-secs", "3"])
        .mesh(1..=3);
    wait_at_rest(&agents);
    steps.step("3 nodes meshed on collateral from a PCCS, fetched again at every pass");

    let to = cluster.overlay_of(2);
    let row = measure(
        &agents,
        "the PCCS down at a collateral refresh",
        vec![1, 2, 3],
        to,
    )
    .run(
        || pccs.set_failing(true),
        |s| names(s, "pccs", "the cached collateral serves") && s.peers_healthy == 2,
        || pccs.set_failing(false),
        |s| clear_of(s, "pccs"),
    );
    assert_within(&row, WITHIN, &agents);
    let row = measure(
        &agents,
        "the PCCS serving expired collateral",
        vec![1, 2, 3],
        to,
    )
    .run(
        || pccs.set_expired(true),
        |s| names(s, "pccs", "expired at") && s.peers_healthy == 2,
        || pccs.set_expired(false),
        |s| clear_of(s, "pccs"),
    );
    assert_within(&row, WITHIN, &agents);
    steps.step("the PCCS down, then serving expired collateral: named, and no peer lost");

    pccs.set_failing(true);
    agents[2].stop();
    agents[2].start_again();
    let row = measure(&agents, "the PCCS down at an agent's start", vec![3], to).run(
        || {},
        |s| names(s, "pccs", "") && s.peers_healthy == 2,
        || pccs.set_failing(false),
        |s| clear_of(s, "pccs"),
    );
    assert_eq!(row.lost(), 0, "{}", row.line());
    // From the restart: the agent names it from its first answer.
    assert!(row.named.is_some_and(|d| d <= WITHIN), "{}", row.line());
    assert!(row.recovered.is_some_and(|d| d <= WITHIN), "{}", row.line());
    wait_full_mesh(&agents, &keys);
    steps.step(
        "node 3 restarted with the PCCS down: meshed on its cached collateral, the PCCS named",
    );
}

/// dstack's guest agent goes away under a running agent, then is gone when another starts: the first keeps
/// its tunnels and names it; the second names it while it waits for its identity, and meshes once it is back.
#[test]
fn dstack_gone_mid_run_or_at_a_start_is_named_and_waited_for() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_services/dstack");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let (mut agents, keys) = Agent::builder(&cluster).mesh(1..=3);
    wait_at_rest(&agents);
    steps.step("3 nodes meshed");

    let row = Measure {
        name: "dstack's guest agent gone mid-run".into(),
        agents: &agents,
        watched: vec![3],
        ping: Some((1, cluster.overlay_of(3))),
        hold: Duration::from_secs(3),
        within: WITHIN * 2,
    }
    .run(
        || cluster.stop_simulator(3),
        |s| names(s, "dstack", "does not answer") && s.peers_healthy == 2,
        || cluster.start_simulator(3),
        |s| clear_of(s, "dstack"),
    );
    assert_within(&row, WITHIN, &agents);
    steps.step("node 3's dstack gone and back under a running agent: named, nothing lost");

    agents[2].stop();
    cluster.stop_simulator(3);
    agents[2].start_again();
    let row = Measure {
        name: "dstack's guest agent gone at an agent's start".into(),
        agents: &agents,
        watched: vec![3],
        ping: Some((1, cluster.overlay_of(2))),
        hold: Duration::from_secs(3),
        within: WITHIN * 2,
    }
    .run(
        || {},
        |s| names(s, "dstack", "waiting for dstack's guest agent"),
        || cluster.start_simulator(3),
        |s| clear_of(s, "dstack") && s.node.registered && s.peers_healthy == 2,
    );
    assert_eq!(row.lost(), 0, "{}", row.line());
    assert!(row.named.is_some_and(|d| d <= WITHIN), "{}", row.line());
    // Registered and meshed, too, within the bound.
    assert!(row.recovered.is_some_and(|d| d <= WITHIN), "{}", row.line());
    wait_full_mesh(&agents, &keys);
    steps.step(
        "node 3 started with dstack gone: named while it waited, meshed once dstack was back",
    );
}

/// The state directory fills up: the agent cannot write its state file, names it, and keeps the mesh; freed,
/// it writes the file again at its next step.
#[test]
fn a_full_state_directory_is_named_and_the_mesh_runs_on() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_services/state_dir");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let (mut agents, keys) = Agent::builder(&cluster).mesh(1..=3);
    // Node 3's state directory on a tmpfs of its own, the agent started afresh on it.
    agents[2].stop();
    let state_dir = agents[2].state_dir.clone();
    let tmpfs = Tmpfs::mount(&state_dir, "2m");
    agents[2].start_again();
    agents[2].wait_ready(60);
    wait_full_mesh(&agents, &keys);
    wait_at_rest(&agents);
    steps.step("3 nodes meshed, node 3's state directory on a 2 MiB tmpfs");

    let filler = std::cell::RefCell::new(None);
    let hash = format!("0x{:064x}", 0x5747_u64);
    let row = Measure {
        name: "the state directory full".into(),
        agents: &agents,
        watched: vec![3],
        ping: Some((1, cluster.overlay_of(3))),
        hold: Duration::from_secs(3),
        within: WITHIN * 2,
    }
    .run(
        || {
            *filler.borrow_mut() = Some(tmpfs.fill());
            // Something to write: a block that moves an allowlist.
            cluster.meshctl(0, &["app-auth", "allow-compose", &hash]);
        },
        |s| names(s, "state-dir", "cannot save the state file") && s.peers_healthy == 2,
        || {
            if let Some(f) = filler.borrow_mut().take() {
                std::fs::remove_file(f).expect("remove the filler");
            }
        },
        |s| clear_of(s, "state-dir"),
    );
    assert_within(&row, WITHIN, &agents);
    assert!(
        state_dir.join(p2p_agent::cache::FILE_NAME).exists(),
        "the state file is written again"
    );
    steps.step("node 3's state directory full: named, nothing lost, written again once freed");
    drop(agents);
    drop(tmpfs);
}

/// Every STUN server stops answering: the nodes, reached directly, lose nothing, and name the servers at
/// their next round (a round a second, each waiting 3 s for answers); back, they are seen at the next round.
#[test]
fn every_stun_server_down_is_named_within_seconds_and_the_direct_paths_stay() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_services/stun");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let stun = StunServer::start(&lan.switch, "br0");
    let flags: Vec<String> = stun.agent_flags();
    let builder = Agent::builder(&cluster).flags(flags.iter().map(String::as_str));
    let agents: Vec<Agent<'_>> = (1..=3)
        .map(|i| {
            // Given --stun-server, the harness leaves out its --no-stun.
            let mut a = builder.start(i);
            a.wait_ready(60);
            a
        })
        .collect();
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    wait_full_mesh(&agents, &keys);
    wait_at_rest(&agents);
    steps.step("3 nodes meshed, asking coturn on the switch");

    let blocked = std::cell::RefCell::new(false);
    let row = Measure {
        name: "every STUN server down".into(),
        agents: &agents,
        watched: vec![1, 2, 3],
        ping: Some((1, cluster.overlay_of(2))),
        hold: Duration::from_secs(2),
        within: WITHIN * 2,
    }
    .run(
        || {
            lan.switch.exec_ok(&[
                "nft",
                "add table inet dm_stun_down { chain input { type filter hook input priority 0; udp dport 3478-3479 drop; }; }",
            ]);
            *blocked.borrow_mut() = true;
        },
        |s| names(s, "stun", "STUN servers answered") && s.peers_healthy == 2,
        || {
            lan.switch.exec_ok(&["nft", "delete", "table", "inet", "dm_stun_down"]);
            *blocked.borrow_mut() = false;
        },
        |s| clear_of(s, "stun"),
    );
    if *blocked.borrow() {
        let _ = lan.switch.exec(
            &["nft", "delete", "table", "inet", "dm_stun_down"],
            Duration::from_secs(5),
        );
    }
    assert_within(&row, WITHIN, &agents);
    steps.step(
        "every STUN server down: named within seconds, nothing lost, seen back at the next round",
    );
}

/// UDP between the nodes blocked, so that every pair goes through the gateway's relay; then the gateway
/// refuses connections. The pairs need it, so pings are lost while it is down (counted, not bounded); each
/// agent names the relay of the seat it cannot reach. The outage lasts long enough for the redial's backoff
/// to reach its cap, and still the pairs are back on the relay within seconds of the gateway's return.
#[test]
fn a_gateway_relay_down_while_pairs_need_it_is_named_and_redialled() {
    require_mesh_prerequisites();
    let steps = Steps::new("faults_services/relay");
    let lan = Lan::new(3);
    let cluster = Cluster::deploy_seats(&lan, 3);
    let gateway = Gateway::for_cluster(&cluster, 51820);
    let _udp = UdpBlock::on(&lan);
    let (agents, _) = Agent::builder(&cluster)
        .flags(gateway.agent_flags())
        .mesh(1..=3);
    wait_until(
        "every pair on the relay",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || all_healthy_on(&agents, mesh_api::Path::Relay),
        || path_table(&agents),
    );
    wait_at_rest(&agents);
    steps.step("3 nodes meshed over the gateway's relay, UDP between them blocked");

    let refuse = "add table inet dm_gateway_down { chain input { type filter hook input priority 0; tcp dport 443 reject with tcp reset; }; }";
    let row = Measure {
        name: "the gateway relay down while pairs need it".into(),
        agents: &agents,
        watched: vec![1, 2],
        ping: Some((1, cluster.overlay_of(2))),
        hold: Duration::from_secs(20),
        within: WITHIN * 2,
    }
    .run(
        || {
            lan.switch.exec_ok(&["nft", refuse]);
        },
        |s| names(s, "relay", "cannot be reached"),
        || {
            lan.switch
                .exec_ok(&["nft", "delete", "table", "inet", "dm_gateway_down"]);
        },
        |s| clear_of(s, "relay") && s.peers_healthy == 2,
    );
    let _ = lan.switch.exec(
        &["nft", "delete", "table", "inet", "dm_gateway_down"],
        Duration::from_secs(5),
    );
    assert!(row.named.is_some_and(|d| d <= WITHIN), "{}", row.line());
    assert!(
        row.recovered.is_some_and(|d| d <= WITHIN),
        "back on the relay within {WITHIN:?} of the gateway's return, after a 20 s outage: {}",
        row.line()
    );
    steps.step(&format!(
        "the gateway refused connections: {} of {} pings lost, named in {:.1?}, back in {:.1?}",
        row.lost(),
        row.sent,
        row.named.unwrap_or_default(),
        row.recovered.unwrap_or_default()
    ));
}
