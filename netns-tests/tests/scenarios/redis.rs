//! The Redis recipe (`examples/redis`): each node runs Debian's `redis-server` and `follow_leader.py`, which
//! makes the on-chain leader the primary and the others its replicas over the mesh (`REPLICAOF`) from the
//! SDK's leader callback. A write on the primary reaches the replicas; when the leader's node is cut off,
//! the agents vote it out and the replica set follows the new leader, which takes writes that reach the
//! replica left. And when the leader's node loses its RPC while its overlay works, every Redis's role is
//! sampled every 100 ms until the failover is done: at no moment are two of them masters, because the old
//! leader's sidecar demotes it when its lease ends, and the new one is promoted only under its newer
//! term.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (redis-server, the SDK and
//! redis-py in `.toolchain/venv`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios redis:: -- --nocapture
//! ```

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

/// Debian's `redis-server` on every node, in `dir`, and `follow_leader.py` beside it; returns once seat 1
/// is the primary and the others its replicas.
fn redis_on_every_node(
    lan: &Lan,
    agents: &[Agent<'_>],
    dir: &std::path::Path,
) -> (Vec<netns_tests::run::process::ChildGuard>, Vec<App>) {
    let mut servers = Vec::new();
    let mut followers = Vec::new();
    for i in 1..=NODES {
        let dir = dir.join(format!("n{i}"));
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
            role(lan, 1) == "master"
                && role(lan, 2) == "slave 10.0.1.1"
                && role(lan, 3) == "slave 10.0.1.1"
        },
        || format!("{}\n{}\n{}", roles(lan), followers[1].tail(), tails(agents)),
    );
    (servers, followers)
}

#[test]
fn the_replica_set_follows_the_leader_across_a_failover() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["redis-server", "redis-cli"]);
    python();
    let steps = Steps::new("redis");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (agents, _) = Agent::builder(&cluster)
        .flags(["--leader-timeout", LEADER_TIMEOUT])
        .mesh(1..=NODES);
    steps.step("mesh up");

    let data = tempfile::tempdir().expect("temp dir");
    let (_servers, mut followers) = redis_on_every_node(&lan, &agents, data.path());
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

/// One node's Redis roles: when asked, and what it said (none: no answer in time).
type Roles = Vec<(Instant, Option<String>)>;

/// Every node's Redis asked `ROLE` every `every` over a connection of its own, from inside its namespace,
/// until stopped: (when, the role of node i, or none if it did not answer in time).
struct RoleSampler {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Roles>>,
}

impl RoleSampler {
    fn start(lan: &Lan, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (1..=NODES)
            .map(|i| {
                let ns = lan.node(i).name.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    netns_tests::net::netns::enter(&ns);
                    let mut seen = Vec::new();
                    let mut conn: Option<std::net::TcpStream> = None;
                    // Bounded by the stop flag, which the test sets once the failover is done.
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let role = ask_role(&mut conn);
                        seen.push((at, role));
                        std::thread::sleep(every.saturating_sub(at.elapsed()));
                    }
                    seen
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// The samples, merged by time: at each moment, the nodes whose Redis was master.
    fn stop(self) -> Vec<Roles> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a role sampler panicked"))
            .collect()
    }
}

/// `ROLE` on `conn` (connecting first if need be): the first element of the reply.
fn ask_role(conn: &mut Option<std::net::TcpStream>) -> Option<String> {
    if conn.is_none() {
        let c = std::net::TcpStream::connect_timeout(
            &format!("127.0.0.1:{REDIS_PORT}")
                .parse()
                .expect("an address"),
            Duration::from_millis(200),
        )
        .ok()?;
        c.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        *conn = Some(c);
    }
    let c = conn.as_mut()?;
    let asked = c.write_all(b"*1\r\n$4\r\nROLE\r\n").is_ok();
    let mut buf = [0u8; 512];
    let n = if asked {
        c.read(&mut buf).unwrap_or(0)
    } else {
        0
    };
    // `*3\r\n$6\r\nmaster\r\n…` or `*5\r\n$5\r\nslave\r\n…`; anything else drops the connection.
    let reply = String::from_utf8_lossy(&buf[..n]);
    let role = reply.lines().nth(2).map(str::to_owned);
    if role.is_none() {
        *conn = None;
    }
    role
}

/// The moments at which more than one Redis was master: each node's samples are matched with the others'
/// nearest in time (each sampler asks every 100 ms; two masters in samples within 50 ms of each other
/// count).
fn two_masters(samples: &[Roles]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, mine) in samples.iter().enumerate() {
        for (at, role) in mine {
            if role.as_deref() != Some("master") {
                continue;
            }
            for (j, theirs) in samples.iter().enumerate().skip(i + 1) {
                let near = theirs.iter().find(|(t, r)| {
                    r.as_deref() == Some("master")
                        && t.max(at).duration_since(*t.min(at)) <= Duration::from_millis(50)
                });
                if let Some((t, _)) = near {
                    found.push(format!(
                        "node {} master at {at:?}, node {} at {t:?}",
                        i + 1,
                        j + 1
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn two_redis_masters_never_run_at_once_when_the_leader_loses_its_rpc() {
    require_mesh_prerequisites();
    netns_tests::run::process::require_root(&["redis-server", "redis-cli"]);
    python();
    let steps = Steps::new("redis/rpc-cut");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (agents, _) = Agent::builder(&cluster)
        .flags(["--leader-timeout", LEADER_TIMEOUT])
        .mesh(1..=NODES);
    let data = tempfile::tempdir().expect("temp dir");
    let (_servers, mut followers) = redis_on_every_node(&lan, &agents, data.path());
    steps.step("mesh up; seat 1's Redis is the primary, the others its replicas");

    let sampler = RoleSampler::start(&lan, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(500));
    let cut = lan.cut_rpc(1);
    let cut_at = Instant::now();
    steps.step("node 1's RPC blocked; its overlay works");
    wait_until(
        "seat 2's Redis to be the primary and seat 3's its replica",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || role(&lan, 2) == "master" && role(&lan, 3) == "slave 10.0.1.2",
        || {
            format!(
                "{}\n{}\n{}\n{}",
                roles(&lan),
                followers[0].tail(),
                followers[1].tail(),
                tails(&agents)
            )
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let samples = sampler.stop();
    let overlaps = two_masters(&samples);
    assert!(
        overlaps.is_empty(),
        "two Redis masters at once:\n{}\n{}",
        overlaps.join("\n"),
        followers[0].tail()
    );
    let demoted = samples[0]
        .iter()
        .find(|(at, r)| *at >= cut_at && r.as_deref() == Some("slave"))
        .map(|(at, _)| at.duration_since(cut_at))
        .expect("node 1's Redis was demoted");
    let promoted = samples[1]
        .iter()
        .find(|(at, r)| *at >= cut_at && r.as_deref() == Some("master"))
        .map(|(at, _)| at.duration_since(cut_at))
        .expect("node 2's Redis was promoted");
    assert!(demoted < promoted, "demoted after the promotion");
    let total: usize = samples.iter().map(Vec::len).sum();
    println!(
        "redis/rpc-cut: node 1's Redis demoted {:.2} s after its RPC was cut, node 2's promoted {:.2} s after it; 0 of {total} ROLE samples with two masters",
        demoted.as_secs_f64(),
        promoted.as_secs_f64()
    );
    steps.step("seat 2 primary; node 1's Redis was demoted first, never two masters");
    cut.restore();
    for f in &mut followers {
        f.assert_running();
    }
}
