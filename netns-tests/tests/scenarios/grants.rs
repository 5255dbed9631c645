//! Grants between seats, end to end: a cluster of two apps, a web tier (nodes 1 and 2, the test app) and its
//! database (node 3, an app of its own). The owner tags each app and grants web → db on TCP 5432 only.
//!
//! - Before any policy, web reaches every port of the database.
//! - Once the policy's block is applied: web reaches 5432 and nothing else on the database; a connection to
//!   another port is dropped on arrival (the client waits, no reset) and counted as `no-grant` in the
//!   database's `/v1/status`, `/v1/peers` and metrics; the replies of web's own flows pass; the database
//!   opens nothing to web; pings and the leader's heartbeats pass (the leader keeps its term); the
//!   database's leader port refuses at once, as `not-granted`, to forward to a leader it may not reach.
//! - Removing the grant cuts web's open connection to 5432 and new ones, at its block.
//!
//! Run on the userspace device, and on `wireguard-go` (the kernel path, filtered by nftables), as root after
//! building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios grants:: -- --nocapture
//! ```

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mesh_api::PortRole;
use netns_tests::net::netns::in_netns;
use netns_tests::prelude::*;

const NODES: usize = 3;
/// The database's app: node 3 runs it.
const DB_APP: &str = "d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8";
const POSTGRES: u16 = 5432;
/// Another service on the database, which no grant names.
const ADMIN: u16 = 2222;
/// Node 3's leader port, forwarding to the leader's ADMIN service.
const LEADER_PORT: u16 = 7000;

fn overlay(seat: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, seat], port))
}

/// Whether a TCP connection from `ns` to `to` opens within `within`.
fn connects(ns: &NetNs, to: SocketAddr, within: Duration) -> bool {
    in_netns(ns, || TcpStream::connect_timeout(&to, within)).is_ok()
}

/// The `no-grant` drops node `agent` counted of seat `seat`'s packets, and in all.
fn no_grant_drops(agent: &Agent<'_>, seat: u64) -> (u64, u64) {
    let (status, peers) = agent.status();
    let total = status.policy.map_or(0, |p| p.dropped.no_grant);
    let of_seat = peers
        .iter()
        .find(|p| p.token_id == seat)
        .and_then(|p| p.policy.as_ref())
        .map_or(0, |p| p.dropped.no_grant);
    (of_seat, total)
}

/// Waits until every agent enforces the policy at `version` (in force or not); how long that took after
/// the change's transaction was mined.
fn until_every_agent_has(agents: &[Agent<'_>], version: u64, enforced: bool) -> Duration {
    let began = Instant::now();
    wait_until(
        &format!("every agent to apply policy version {version}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            agents.iter().all(|a| {
                a.status()
                    .0
                    .policy
                    .is_some_and(|p| p.version == version && p.enforced == enforced)
            })
        },
        || statuses(agents),
    );
    began.elapsed()
}

fn policy_version(cluster: &Cluster<'_>) -> u64 {
    cluster.meshctl(0, &["policy", "show"])["version"]
        .as_u64()
        .expect("meshctl policy show names the version")
}

fn web_reaches_only_the_database_port_it_is_granted(backend: &str, name: &'static str) {
    require_mesh_prerequisites();
    if backend == "wireguard-go" {
        netns_tests::run::process::require_root(&["nft", "wireguard-go"]);
    }
    let steps = Steps::new(name);
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_layout(
        &lan,
        &Layout {
            apps: vec![(3, DB_APP)],
            ..Layout::default_for(NODES)
        },
    );
    let leader_port = format!("{LEADER_PORT}:{ADMIN}");
    let (agents, _) = Agent::builder(&cluster)
        .flags(["--wg-backend", backend, "--leader-port", &leader_port])
        .mesh(1..=NODES);
    let service = |i: usize, port| {
        TermEcho::start(
            lan.node(i),
            port,
            i as u64,
            agents[i - 1].api_socket().to_owned(),
        )
    };
    let _services = [service(3, POSTGRES), service(3, ADMIN), service(1, ADMIN)];
    let (web, db) = (lan.node(1), lan.node(3));
    wait_until(
        "a web seat to lead, as every agent sees",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            agents.iter().all(|a| {
                a.leader().is_ok_and(|l| {
                    matches!(l.token_id, Some(1 | 2)) && l.state == mesh_api::Freshness::Current
                })
            })
        },
        || statuses(&agents),
    );
    assert!(
        reaches(web, overlay(3, ADMIN)).is_some(),
        "no policy yet: web reaches any port of the database"
    );
    steps.step(&format!(
        "two apps meshed on {backend}: web reaches the database's admin port"
    ));

    let before = policy_version(&cluster);
    cluster.meshctl(
        0,
        &[
            "policy",
            "set",
            "--tags",
            "web,db",
            "--app",
            &format!("0x{APP_ID}=web"),
            "--app",
            &format!("0x{DB_APP}=db"),
            "--grant",
            "web:db:tcp:5432",
        ],
    );
    let version = policy_version(&cluster);
    assert!(version > before, "the change made a new version");
    let took = until_every_agent_has(&agents, version, true);
    steps.step(&format!(
        "web -> db tcp 5432 granted; every agent enforces version {version} within {took:?} of its receipt"
    ));

    let leader = agents[0].leader().expect("a leader");
    let mut open = LineClient::connect(web, overlay(3, POSTGRES)).expect("web reaches Postgres");
    assert!(
        open.ask("select 1").is_some(),
        "web's flow to 5432 is answered: the replies pass"
    );
    let (_, dropped_before) = no_grant_drops(&agents[2], 1);
    assert!(
        !connects(web, overlay(3, ADMIN), Duration::from_secs(2)),
        "web -> db admin port: dropped, the client waits"
    );
    wait_until(
        "the database to count web's dropped packets as no-grant",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let (of_web, total) = no_grant_drops(&agents[2], 1);
            of_web > 0 && total > dropped_before
        },
        || format!("{:?}", agents[2].status()),
    );
    let web_peer = agents[2].peer(1).expect("seat 1 is node 3's peer");
    let policy = web_peer.policy.expect("a policy between them");
    assert_eq!(policy.reaches_here.tcp, ["5432"]);
    assert!(
        policy.reachable_there.tcp.is_empty(),
        "db reaches nothing on web"
    );
    let metrics = agents[2].metrics();
    assert!(
        metrics.lines().any(|l| l
            .strip_prefix("dstack_mesh_policy_dropped_total{rule=\"no-grant\"} ")
            .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0))),
        "the metric counts the drop:\n{metrics}"
    );
    assert!(
        !connects(db, overlay(1, ADMIN), Duration::from_secs(2)),
        "db -> web: no grant, dropped at web"
    );
    for (from, to) in [(1, 3), (3, 1), (2, 3)] {
        assert_pings(&agents, from, to);
    }
    steps.step("web reaches 5432 only; other ports and db -> web dropped and counted; pings pass");

    let refused_at = Instant::now();
    let mut forwarded = LineClient::connect(db, SocketAddr::from(([127, 0, 0, 1], LEADER_PORT)))
        .expect("the leader port accepts, then closes");
    assert!(
        forwarded.closed_within(Duration::from_secs(2)),
        "db's leader port refuses to forward to a leader port it may not reach"
    );
    let closed_after = refused_at.elapsed();
    let leader_port = || {
        agents[2]
            .status()
            .0
            .ports
            .into_iter()
            .find(|p| p.role == PortRole::Leader)
            .expect("the leader port")
    };
    wait_until(
        "db's leader port to count its refusal as not-granted",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || leader_port().refused.get("not-granted") == Some(&1),
        || format!("{:?}", leader_port()),
    );
    steps.step(&format!(
        "db's leader port refuses at once ({closed_after:?}), counted as not-granted"
    ));

    // The heartbeats pass whatever the grants: the leader keeps its term.
    std::thread::sleep(Duration::from_secs(3));
    let after = agents[0].leader().expect("a leader");
    assert_eq!(
        (after.token_id, after.term),
        (leader.token_id, leader.term),
        "no failover under the policy"
    );

    cluster.meshctl(0, &["policy", "set", "--remove-grant", "0"]);
    let version = policy_version(&cluster);
    let took = until_every_agent_has(&agents, version, true);
    // The status names the version once the interface enforces it: nothing else is waited for.
    assert!(
        open.ask("select 2").is_none(),
        "the open connection to 5432 is cut with its grant"
    );
    assert!(
        !connects(web, overlay(3, POSTGRES), Duration::from_secs(2)),
        "new connections to 5432 are dropped"
    );
    steps.step(&format!(
        "the grant removed: every agent applied it within {took:?} of its receipt; web's connections to 5432 cut"
    ));
    assert_no_warnings(&agents);
}

#[test]
fn on_the_userspace_device_web_reaches_only_the_database_port_it_is_granted() {
    web_reaches_only_the_database_port_it_is_granted("userspace", "grants");
}

#[test]
fn on_the_kernel_path_web_reaches_only_the_database_port_it_is_granted() {
    web_reaches_only_the_database_port_it_is_granted("wireguard-go", "grants-kernel");
}
