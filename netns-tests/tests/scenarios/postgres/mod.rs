//! The PostgreSQL recipe (`examples/postgres`): each node runs Debian's PostgreSQL under
//! `follow_leader.py`, which makes the on-chain leader's server the primary, under the leader's term, and
//! the others its replicas over the mesh, with synchronous replication (`ANY 1`). Clients write through
//! the agents' leader port (`--leader-port 5432:5433`, the servers on 5433), as an application would: one on
//! the leader's node, one on seat 3's, each a new connection per write, each write returning the term and
//! the timeline it was committed under.
//!
//! One failover, made as hard as it gets for the new leader: seat 2's replica is held back (node 1's
//! replication traffic to it dropped) while writes go on, so only seat 3 holds the newest acknowledged
//! ones. Then seat 1's node is cut off the LAN. Seat 2 leads under a new term, catches up from seat 3
//! before it promotes, and seat 3 follows it: every write acknowledged before the cut is on the new
//! primary. When seat 1's node comes back, its old primary rejoins as a replica of seat 2 (`pg_rewind`).
//! Every server's role and term is sampled every 100 ms throughout: never two writable primaries under
//! the same term, and the old primary stops before the new one takes writes. Through the port: every
//! acknowledged write is on the new primary under the term and timeline it was acknowledged with, no write
//! is acknowledged under the old term after one under the new, and the client on the old leader's node
//! reaches the new primary once its node is back. Prints how long the port reached no primary.
//!
//! Run as root, after building the binaries it runs and `scripts/bootstrap` (postgresql, the SDK in
//! `.toolchain/venv`):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios postgres:: -- --nocapture
//! ```

mod failover;
mod planned;
mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns_tests::prelude::*;
use netns_tests::run::process::{require_root, run_timeout};

const NODES: usize = 3;
const LEADER_TIMEOUT: &str = "5";
/// Where each server listens; applications use the leader port.
const PG_PORT: &str = "5433";
const LEADER_PORT: &str = "5432:5433";
/// The application's role, which writes through the leader port (TCP, SCRAM).
const APP_PASSWORD: &str = "scenario-app-secret";
/// The replication role's password, set on every node as the recipe asks (`allowed_envs`).
const PASSWORD: &str = "scenario-replication-secret";

/// Node `i`'s PostgreSQL: its data directory and unix socket directory (the file system is shared by the
/// namespaces, so each server needs a socket directory of its own).
struct Server {
    data: PathBuf,
    socket: PathBuf,
}

/// Each node's server, stopped (immediately, by the postmaster's PID) when dropped: the sidecar stops its
/// own on SIGTERM, but not when the test kills it after 3 s, or when it never got to start one.
struct Servers {
    nodes: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Servers {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // PostgreSQL runs as postgres: it must reach its directories under the test's.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let nodes = (1..=NODES)
            .map(|i| {
                let base = dir.path().join(format!("n{i}"));
                let socket = base.join("sock");
                std::fs::create_dir_all(&socket).expect("node dir");
                let out = run_timeout(
                    &["chown", "-R", "postgres:postgres", path(&base)],
                    Duration::from_secs(10),
                );
                assert!(out.status.success(), "chown to postgres: {out:?}");
                Server {
                    data: base.join("data"),
                    socket,
                }
            })
            .collect();
        Self { nodes, _dir: dir }
    }

    fn node(&self, i: usize) -> &Server {
        &self.nodes[i - 1]
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &self.nodes {
            let pid = std::fs::read_to_string(s.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if let Some(pid) = pid {
                // SIGQUIT: PostgreSQL's immediate shutdown, which ends its children too.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
        }
    }
}

/// psql printing rows as `a|b|c` lines, with no startup file, stopping at the first error.
const PSQL: [&str; 9] = [
    "psql",
    "-X",
    "-A",
    "-t",
    "-q",
    "-F",
    "|",
    "-v",
    "ON_ERROR_STOP=1",
];

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `psql -c <sql>` on the server's unix socket as postgres (peer authentication): the last row's fields,
/// or psql's error. The socket works whatever the node's network, so a cut-off node is still asked.
fn psql(server: &Server, sql: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let out = run_timeout(
        &[
            &["runuser", "-u", "postgres", "--"][..],
            &PSQL,
            &[
                "-h",
                path(&server.socket),
                "-p",
                PG_PORT,
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        ]
        .concat(),
        timeout,
    );
    last_row(&out)
}

/// The fields of the last row psql printed (`-A -t -F |`), or its error.
fn last_row(out: &std::process::Output) -> Result<Vec<String>, String> {
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .split('|')
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A server's role as a sample sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// Takes writes, under `dstack_mesh.term` (none: not set).
    Primary(Option<u64>),
    /// In recovery, streaming from `upstream` (none: not streaming).
    Replica(Option<String>),
    /// Stopped, starting, or not answering.
    Down,
}

fn role(server: &Server) -> Role {
    let sql = "SELECT pg_is_in_recovery(), coalesce(current_setting('dstack_mesh.term', true), ''), \
               coalesce((SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'), '')";
    match psql(server, sql, Duration::from_secs(5)) {
        Ok(row) if row.len() == 3 && row[0] == "f" => Role::Primary(row[1].parse().ok()),
        Ok(row) if row.len() == 3 && row[0] == "t" => {
            Role::Replica(Some(row[2].clone()).filter(|h| !h.is_empty()))
        }
        _ => Role::Down,
    }
}

fn roles(servers: &Servers) -> String {
    (1..=NODES)
        .map(|i| format!("node {i}: {:?}", role(servers.node(i))))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The end of each server's log (`follow_leader.py` starts PostgreSQL with `-l <data>.log`): why a
/// replica stopped streaming is there, not in the sidecar's output.
fn server_logs(servers: &Servers) -> String {
    (1..=NODES)
        .map(|i| {
            let log = servers.node(i).data.with_extension("log");
            let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n  ");
            format!("node {i}'s PostgreSQL log ({}):\n  {tail}", log.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_replica_of(servers: &Servers, i: usize, host: &str) -> bool {
    role(servers.node(i)) == Role::Replica(Some(host.to_owned()))
}

/// The rows of table `acked` on node `i`'s server.
fn rows(servers: &Servers, i: usize) -> Result<Vec<u64>, String> {
    let out = psql(
        servers.node(i),
        "SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '') FROM acked",
        Duration::from_secs(10),
    )?;
    Ok(out
        .first()
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default())
}

/// Every server's role asked every `every` until stopped: (when, role) per node.
struct RoleSampler {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(Instant, Role)>>>,
}

impl RoleSampler {
    fn start(servers: &Servers, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = servers
            .nodes
            .iter()
            .map(|s| {
                let server = Server {
                    data: s.data.clone(),
                    socket: s.socket.clone(),
                };
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    // Bounded by the stop flag, which the test sets once the old primary has rejoined.
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        seen.push((at, role(&server)));
                        std::thread::sleep(every.saturating_sub(at.elapsed()));
                    }
                    seen
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn stop(self) -> Vec<Vec<(Instant, Role)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a role sampler panicked"))
            .collect()
    }
}

/// Pairs of samples of two nodes, within 100 ms of each other, both writable under the same term.
fn same_term_primaries(samples: &[Vec<(Instant, Role)>]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, mine) in samples.iter().enumerate() {
        for (at, role) in mine {
            let Role::Primary(term) = role else { continue };
            for (j, theirs) in samples.iter().enumerate().skip(i + 1) {
                let near = theirs.iter().find(|(t, r)| {
                    *r == Role::Primary(*term)
                        && t.max(at).duration_since(*t.min(at)) <= Duration::from_millis(100)
                });
                if let Some((t, _)) = near {
                    found.push(format!(
                        "node {} and node {} both writable under term {term:?}, at {at:?} and {t:?}",
                        i + 1,
                        j + 1
                    ));
                }
            }
        }
    }
    found
}

/// One write a client saw acknowledged: its number, the term and timeline it says it was committed under,
/// and when its COMMIT returned.
#[derive(Clone, Copy, Debug)]
struct Ack {
    n: u64,
    term: u64,
    timeline: u64,
    at: Instant,
}

/// Inserts `base + 1`, `base + 2`, … into table `acked` through the leader port on 127.0.0.1 of one node's
/// namespace, a new connection and one transaction each, until stopped; returns the writes whose COMMIT
/// returned (with synchronous replication: flushed on a replica too).
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<Ack>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(ns: &NetNs, base: u64) -> Self {
        let name = ns.name.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, out) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            // Bounded by the stop flag and by a count.
            for n in base + 1..=base + 100_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                // The term the server says it is primary under, and the timeline its WAL is written on.
                let sql = format!(
                    "INSERT INTO acked SELECT {n}, current_setting('dstack_mesh.term')::bigint, \
                     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
                     RETURNING term, timeline"
                );
                match app_sql(&name, &sql, Duration::from_secs(60)) {
                    Ok(row) => out.lock().unwrap().push(Ack {
                        n,
                        term: row[0].parse().expect("a term"),
                        timeline: row[1].parse().expect("a timeline"),
                        at: Instant::now(),
                    }),
                    // No primary reachable through the port, or the server stopped: nothing acknowledged.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Self {
            stop,
            acked,
            thread,
        }
    }

    fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    fn acked(&self) -> Vec<Ack> {
        self.acked.lock().unwrap().clone()
    }

    fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer panicked");
        Arc::into_inner(self.acked)
            .expect("the writer's thread ended")
            .into_inner()
            .unwrap()
    }
}

/// `psql -c <sql>` as the application's role, through the leader port on 127.0.0.1 of namespace `ns`: the
/// last row's fields, or psql's error.
fn app_sql(ns: &str, sql: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let password = format!("PGPASSWORD={APP_PASSWORD}");
    let out = run_timeout(
        &[
            &[
                "ip",
                "netns",
                "exec",
                ns,
                "env",
                &password,
                "PGCONNECT_TIMEOUT=10",
            ][..],
            &PSQL,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                "5432",
                "-U",
                "app",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        ]
        .concat(),
        timeout,
    );
    last_row(&out)
}

/// Every row of `acked` on node `i`'s server: number, term, timeline.
fn stored(servers: &Servers, i: usize) -> Result<Vec<(u64, u64, u64)>, String> {
    let out = psql(
        servers.node(i),
        "SELECT coalesce(string_agg(n || ':' || term || ':' || timeline, ',' ORDER BY n), '') FROM acked",
        Duration::from_secs(10),
    )?;
    Ok(out
        .first()
        .map(|s| {
            s.split(',')
                .filter_map(|r| {
                    let mut f = r.split(':').map(|x| x.parse::<u64>().ok());
                    Some((f.next()??, f.next()??, f.next()??))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The acknowledged writes that `rows` lacks, or holds under another term or timeline.
fn not_on(acked: &[Ack], rows: &[(u64, u64, u64)]) -> Vec<Ack> {
    acked
        .iter()
        .filter(|a| {
            rows.binary_search_by_key(&a.n, |r| r.0)
                .map_or(true, |i| (rows[i].1, rows[i].2) != (a.term, a.timeline))
        })
        .copied()
        .collect()
}

/// Writes acknowledged under an older term (or timeline) after one under a newer: a demoted primary took
/// them.
fn acked_after_newer(acks: &[Ack]) -> Vec<String> {
    let mut by_time: Vec<&Ack> = acks.iter().collect();
    by_time.sort_by_key(|a| a.at);
    let mut newest = (0, 0);
    let mut found = Vec::new();
    for a in by_time {
        if (a.term, a.timeline) < newest {
            found.push(format!(
                "write {} acknowledged under term {} timeline {} after one under term {} timeline {}",
                a.n, a.term, a.timeline, newest.0, newest.1
            ));
        }
        newest = newest.max((a.term, a.timeline));
    }
    found
}

/// Node `into`'s overlay traffic from node `from`'s PostgreSQL dropped, in `into`'s namespace: its
/// replica falls behind while the other replica acknowledges the writes.
struct HeldBack<'a> {
    ns: &'a NetNs,
}

impl<'a> HeldBack<'a> {
    fn new(lan: &'a Lan, into: usize, from: usize) -> Self {
        let ns = lan.node(into);
        ns.exec_ok(&[
            "nft",
            &format!(
                "add table inet dm_pg_lag {{ chain input {{ type filter hook input priority 0; \
                 ip saddr 10.0.1.{from} tcp sport {PG_PORT} drop; }}; }}"
            ),
        ]);
        Self { ns }
    }
}

impl Drop for HeldBack<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(
            &["nft", "delete", "table", "inet", "dm_pg_lag"],
            Duration::from_secs(10),
        );
    }
}

/// Fails, saying what to install, unless Debian's PostgreSQL server programs are there (the client, `psql`,
/// comes without them).
fn require_postgres_server() {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|v| v.path().join("bin/pg_ctl").is_file() && v.path().join("bin/pg_rewind").is_file());
    assert!(
        found,
        "the PostgreSQL scenario needs Debian's server (pg_ctl, initdb, pg_rewind under \
         /usr/lib/postgresql/N/bin): apt-get install -y postgresql (or run scripts/bootstrap)"
    );
}

fn require_postgres_prerequisites() {
    require_mesh_prerequisites();
    require_root(&["nft", "runuser", "psql"]);
    require_postgres_server();
    python();
}

fn tails_of(sidecars: &[App]) -> String {
    sidecars
        .iter()
        .map(App::tail)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every write in `acked` is on seat `primary`'s server as acknowledged, and none was acknowledged under a term
/// after a write of a newer one had been (by a demoted primary).
fn assert_every_ack_kept(servers: &Servers, primary: usize, acked: &[Ack]) {
    let lost = not_on(
        acked,
        &stored(servers, primary).expect("the primary answers"),
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not on the primary: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    let late = acked_after_newer(acked);
    assert!(
        late.is_empty(),
        "writes acknowledged by a demoted primary:\n{}",
        late.join("\n")
    );
}

/// Node `i`'s sidecar, `follow_leader.py`, on its server and its agent's API.
fn sidecar(lan: &Lan, servers: &Servers, agent: &Agent<'_>, i: usize) -> App {
    let s = servers.node(i);
    App::start(
        lan.node(i),
        "examples/postgres/follow_leader.py",
        &[
            "--data-dir",
            path(&s.data),
            "--socket-dir",
            path(&s.socket),
            "--port",
            PG_PORT,
        ],
        agent.api_socket(),
        &[("PG_REPLICATION_PASSWORD", PASSWORD)],
    )
}

/// Three meshed agents started with `flags`, each node's PostgreSQL under the recipe's sidecar, seat 1's
/// the primary and the others streaming from it, the table `acked` and the application's role made: the
/// agents, the servers, the sidecars and the primary's term.
fn primary_on_seat_1<'c>(
    lan: &Lan,
    cluster: &'c Cluster<'_>,
    flags: &[&str],
) -> (Vec<Agent<'c>>, Servers, Vec<App>, u64) {
    let steps = Steps::new("postgres");
    let (agents, _) = Agent::builder(cluster)
        .flags(flags.iter().copied())
        .mesh(1..=NODES);
    steps.step("mesh up, every agent forwarding 5432 to the leader's 5433");
    let servers = Servers::new();
    let sidecars: Vec<App> = (1..=NODES)
        .map(|i| sidecar(lan, &servers, &agents[i - 1], i))
        .collect();
    wait_until(
        "seat 1's PostgreSQL to be the primary and 2's and 3's its streaming replicas",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            matches!(role(servers.node(1)), Role::Primary(Some(_)))
                && is_replica_of(&servers, 2, "10.0.1.1")
                && is_replica_of(&servers, 3, "10.0.1.1")
        },
        || {
            format!(
                "{}\n{}\n{}",
                roles(&servers),
                tails_of(&sidecars),
                tails(&agents)
            )
        },
    );
    let Role::Primary(Some(first_term)) = role(servers.node(1)) else {
        unreachable!("checked just above")
    };
    psql(
        servers.node(1),
        &format!(
            "CREATE TABLE acked (n bigint PRIMARY KEY, term bigint NOT NULL, timeline int NOT NULL); \
             CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'; GRANT SELECT, INSERT ON acked TO app"
        ),
        Duration::from_secs(30),
    )
    .expect("the table and the application's role are created on the primary");
    (agents, servers, sidecars, first_term)
}
