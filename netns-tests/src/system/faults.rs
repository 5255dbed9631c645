//! The fault matrix's harness: outside dependencies failed on purpose, and what each fault did to a running
//! mesh, measured as a row ([`Row`]): the pings lost through it where the data path does not need the
//! dependency, how long until every agent's status named it, and how long until none did once it ended.
//!
//! [`Providers`] gives each node three RPC providers (proxies in front of anvil, in its own namespace) that a
//! test fails one at a time, for every node alike: the first, the second, the third.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mesh_api::Status;

use crate::in_process::rpc_proxy::RpcProxy;
use crate::net::ping::BackgroundPing;
use crate::run::wait::wait_until;
use crate::system::agent::{Agent, AgentConfig};
use crate::system::cluster::Cluster;
use crate::system::lan::{Lan, rpc_url};

/// How often the agents' statuses are read while a row is measured.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The pings of a row: one every 50 ms.
const PING_EVERY: Duration = Duration::from_millis(50);

/// Three RPC providers for every node, each a proxy in front of anvil in the node's namespace.
pub struct Providers {
    /// Node i's at `per_node[i - 1]`.
    pub per_node: Vec<[RpcProxy; 3]>,
}

impl Providers {
    /// Three proxies for each of nodes `1..=n`.
    pub fn start(lan: &Lan, n: usize) -> Self {
        Self {
            per_node: (1..=n)
                .map(|i| {
                    let ns = lan.node(i);
                    [
                        RpcProxy::start_in(ns, &rpc_url()),
                        RpcProxy::start_in(ns, &rpc_url()),
                        RpcProxy::start_in(ns, &rpc_url()),
                    ]
                })
                .collect(),
        }
    }

    /// Node `i`'s `--rpc-url`: its three providers.
    pub fn urls(&self, i: usize) -> String {
        self.per_node[i - 1]
            .iter()
            .map(RpcProxy::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Does `f` to provider `p` (0, 1 or 2) of every node.
    pub fn each(&self, p: usize, f: impl Fn(&RpcProxy)) {
        for node in &self.per_node {
            f(&node[p]);
        }
    }

    /// The agents of `nodes`, each reading through its three providers, with `flags`, started together and
    /// waited for until each is ready.
    pub fn agents<'a>(
        &self,
        cluster: &'a Cluster<'a>,
        nodes: std::ops::RangeInclusive<usize>,
        flags: &[&str],
    ) -> Vec<Agent<'a>> {
        let mut agents: Vec<Agent<'a>> = nodes.map(|i| self.agent(cluster, i, flags)).collect();
        for a in &mut agents {
            a.wait_ready(60);
        }
        agents
    }

    /// Node `i`'s agent reading through its three providers, with `flags`, not waited for (a node with no
    /// seat is never ready until it has one).
    pub fn agent<'a>(&self, cluster: &'a Cluster<'a>, i: usize, flags: &[&str]) -> Agent<'a> {
        let rpc = self.urls(i);
        Agent::builder(cluster)
            .config(move |n| AgentConfig {
                rpc_url: rpc.clone(),
                ..AgentConfig::lan(n)
            })
            .flags(flags.iter().copied())
            .start(i)
    }

    /// Provider `p`'s URL as node `i`'s status names it.
    pub fn url(&self, i: usize, p: usize) -> String {
        self.per_node[i - 1][p].url().to_owned()
    }
}

/// What a fault did: its name, the pings through it, and when the statuses named it and stopped.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub sent: u32,
    pub received: u32,
    /// From the fault's start until every agent's status named it.
    pub named: Option<Duration>,
    /// From the fault's end until no agent's status named it, and what recovery asks for held.
    pub recovered: Option<Duration>,
}

impl Row {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }

    /// The row as the docs' table takes it, printed on one line that starts `fault row |`.
    pub fn line(&self) -> String {
        let secs = |d: Option<Duration>| {
            d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        format!(
            "fault row | {} | pings lost {} of {} | named within {} | recovered within {}",
            self.name,
            self.lost(),
            self.sent,
            secs(self.named),
            secs(self.recovered)
        )
    }
}

/// How a row is measured: where the pings go, and what the statuses must say.
pub struct Measure<'a, 'b> {
    pub name: String,
    pub agents: &'b [Agent<'a>],
    /// The agents whose statuses must name the fault (node numbers).
    pub watched: Vec<usize>,
    /// Pings from node `ping.0` to the overlay address `ping.1`, throughout; `None` for none.
    pub ping: Option<(usize, Ipv4Addr)>,
    /// How long the fault lasts once named (or, if it is never named, from its start).
    pub hold: Duration,
    /// The longest wait for the statuses to name it, and then to stop.
    pub within: Duration,
}

impl Measure<'_, '_> {
    /// Starts the pings, does `start`, waits until every watched status satisfies `named` (or `within`
    /// passes: then `named` is `None`), holds the fault, does `end`, and waits until every watched status
    /// satisfies `recovered`.
    pub fn run(
        &self,
        start: impl FnOnce(),
        named: impl Fn(&Status) -> bool,
        end: impl FnOnce(),
        recovered: impl Fn(&Status) -> bool,
    ) -> Row {
        let pinger = self.ping.map(|(from, to)| {
            let count =
                u32::try_from((self.hold + self.within * 2).as_millis() / PING_EVERY.as_millis())
                    .unwrap_or(u32::MAX);
            (
                BackgroundPing::start(self.agents[from - 1].ns(), to, count, PING_EVERY),
                from,
            )
        });
        // The pings are under way before the fault begins.
        std::thread::sleep(Duration::from_millis(300));
        let began = Instant::now();
        start();
        let named_at = self.first(began, &named);
        let hold_from = named_at.map_or(began, |_| Instant::now());
        std::thread::sleep(self.hold.saturating_sub(hold_from.elapsed()));
        let ended = Instant::now();
        end();
        let recovered_at = self.first(ended, &recovered);
        let (sent, received) = match pinger {
            Some((ping, _)) => {
                let (sent, received, _) = ping.interrupt();
                (sent, received)
            }
            None => (0, 0),
        };
        let row = Row {
            name: self.name.clone(),
            sent,
            received,
            named: named_at,
            recovered: recovered_at,
        };
        println!("{}", row.line());
        row
    }

    /// How long after `from` every watched agent's status first satisfied `pred`, within `self.within`.
    fn first(&self, from: Instant, pred: &impl Fn(&Status) -> bool) -> Option<Duration> {
        loop {
            let all = self.watched.iter().all(|i| {
                self.agents[*i - 1]
                    .try_status()
                    .ok()
                    .and_then(|v| serde_json::from_value::<Status>(v["status"].clone()).ok())
                    .is_some_and(|s| pred(&s))
            });
            if all {
                return Some(from.elapsed());
            }
            if from.elapsed() >= self.within {
                return None;
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }
}

/// Whether `status` names a fault of `dependency` whose words contain `needle`.
pub fn names(status: &Status, dependency: &str, needle: &str) -> bool {
    status
        .faults
        .iter()
        .any(|f| f.dependency == dependency && f.detail.contains(needle))
}

/// Whether `status` names no fault of `dependency`.
pub fn clear_of(status: &Status, dependency: &str) -> bool {
    !status.faults.iter().any(|f| f.dependency == dependency)
}

/// Asserts the row's bounds: no ping lost, named and recovered within `bound` each; shows the row if not.
pub fn assert_within(row: &Row, bound: Duration, agents: &[Agent<'_>]) {
    let tails = || {
        agents
            .iter()
            .map(|a| a.tail())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(row.lost(), 0, "{}\n{}", row.line(), tails());
    assert!(
        row.named.is_some_and(|d| d <= bound),
        "named within {bound:?}: {}\n{}",
        row.line(),
        tails()
    );
    assert!(
        row.recovered.is_some_and(|d| d <= bound),
        "recovered within {bound:?}: {}\n{}",
        row.line(),
        tails()
    );
}

/// Waits (bounded) until every agent's status names no fault at all: a row starts from a mesh at rest.
pub fn wait_at_rest(agents: &[Agent<'_>]) {
    wait_until(
        "every agent to name no fault",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            agents.iter().all(|a| {
                a.try_status()
                    .is_ok_and(|s| s["status"]["faults"].as_array().is_none_or(Vec::is_empty))
            })
        },
        || {
            agents
                .iter()
                .map(|a| {
                    a.try_status()
                        .map(|s| s["status"]["faults"].to_string())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
}

/// A small tmpfs mounted over a directory (an agent's state directory) for a test to fill: unmounted when
/// dropped, whatever happens. Mounted in the machine's mount namespace, which the node namespaces share.
pub struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, say `1m`) over `path`, which must exist.
    ///
    /// # Panics
    /// When `mount` fails.
    pub fn mount(path: &std::path::Path, size: &str) -> Self {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount a tmpfs over {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// Fills it: a file that takes whatever room is left, so that the next write fails with ENOSPC.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        // Bounded by the tmpfs's size: the write that finds it full ends it.
        for _ in 0..1_000_000 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output();
    }
}
