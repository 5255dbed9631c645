//! The Redis recipe (`examples/redis`): each node runs Debian's `redis-server` and `follow_leader.py`, which
//! makes the on-chain leader the primary and the others its replicas over the mesh (`REPLICAOF`) from the
//! SDK's leader callback. A write on the primary reaches the replicas; when the leader's node is cut off,
//! the agents vote it out and the replica set follows the new leader, which takes writes that reach the
//! replica left.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (redis-server, the SDK and
//! redis-py in `.toolchain/venv`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test redis -- --nocapture
//! ```

use std::time::Duration;

use netns_tests::prelude::*;

const NODES: usize = 3;
const LEADER_TIMEOUT: &str = "5";
const REDIS_PORT: &str = "6379";

/// `redis-cli <args>` against node `i`'s own server: its reply, trimmed, or why there was none.
fn redis(lan: &Lan, i: usize, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["redis-cli", "-h", "127.0.0.1", "-p", REDIS_PORT];
    full.extend_from_slice(args);
    let out = lan.node(i).exec(&full, Duration::from_secs(5));
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(reply)
    } else {
        Err(format!(
            "{reply} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Node `i`'s replication role: `master`, or `slave <primary's host>`.
fn role(lan: &Lan, i: usize) -> String {
    match redis(lan, i, &["role"]) {
        Ok(reply) => {
            let lines: Vec<&str> = reply.lines().collect();
            match lines.first() {
                Some(&"slave") => format!("slave {}", lines.get(1).unwrap_or(&"?")),
                Some(first) => (*first).to_owned(),
                None => "?".into(),
            }
        }
        Err(e) => format!("error: {e}"),
    }
}

fn roles(lan: &Lan) -> String {
    (1..=NODES)
        .map(|i| format!("node {i}: {}", role(lan, i)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn the_replica_set_follows_the_leader_across_a_failover() {
    require_mesh_prerequisites();
    netns_tests::process::require_root(&["redis-server", "redis-cli"]);
    python();
    let steps = Steps::new("redis");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (agents, _) = start_mesh_with(&cluster, 1..=NODES, &["--leader-timeout", LEADER_TIMEOUT]);
    steps.step("mesh up");

    let data = tempfile::tempdir().expect("temp dir");
    let mut servers = Vec::new();
    let mut followers = Vec::new();
    for i in 1..=NODES {
        let dir = data.path().join(format!("n{i}"));
        std::fs::create_dir(&dir).expect("redis dir");
        // Only the mesh and loopback reach it: the node's namespace has no other way in.
        servers.push(lan.node(i).spawn(&[
            "redis-server",
            "--port",
            REDIS_PORT,
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().expect("utf-8 path"),
        ]));
        followers.push(App::start(
            lan.node(i),
            "examples/redis/follow_leader.py",
            &["--redis-port", REDIS_PORT],
            agents[i - 1].api_socket(),
            &[],
        ));
    }
    wait_until(
        "seat 1 to be the primary and 2 and 3 its replicas",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            role(&lan, 1) == "master"
                && role(&lan, 2) == "slave 10.0.1.1"
                && role(&lan, 3) == "slave 10.0.1.1"
        },
        || {
            format!(
                "{}\n{}\n{}",
                roles(&lan),
                followers[1].tail(),
                tails(&agents)
            )
        },
    );
    assert_eq!(
        redis(&lan, 1, &["set", "greeting", "from-seat-1"]).as_deref(),
        Ok("OK")
    );
    wait_until(
        "the write on the primary to reach both replicas over the mesh",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || (2..=3).all(|i| redis(&lan, i, &["get", "greeting"]).as_deref() == Ok("from-seat-1")),
        || roles(&lan),
    );
    steps.step("seat 1 is the primary; its write reached both replicas");

    let _cut = lan.cut_off(1);
    steps.step("node 1 cut off");
    wait_until(
        "seat 2 to become the primary and seat 3 its replica",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || role(&lan, 2) == "master" && role(&lan, 3) == "slave 10.0.1.2",
        || {
            format!(
                "{}\n{}\n{}\n{}",
                roles(&lan),
                followers[1].tail(),
                followers[2].tail(),
                tails(&agents)
            )
        },
    );
    assert_eq!(
        redis(&lan, 2, &["get", "greeting"]).as_deref(),
        Ok("from-seat-1"),
        "the new primary kept what it replicated"
    );
    assert_eq!(
        redis(&lan, 2, &["set", "greeting", "from-seat-2"]).as_deref(),
        Ok("OK")
    );
    wait_until(
        "the new primary's write to reach seat 3",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || redis(&lan, 3, &["get", "greeting"]).as_deref() == Ok("from-seat-2"),
        || roles(&lan),
    );
    steps.step("the replica set followed the failover: seat 2 primary, its write on seat 3");
    for f in &mut followers[1..] {
        f.assert_running();
    }
}
