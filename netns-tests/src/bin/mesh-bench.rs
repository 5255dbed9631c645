//! `mesh-bench`: the project's performance baseline, measured in one run on real topologies of network
//! namespaces with the release binaries, and printed as a table (and written as JSON).
//!
//! - Throughput: iperf3 TCP, 1 and 4 streams, on one LAN: through the mesh (two agents, userspace
//!   WireGuard), through a pair of each reference userspace WireGuard configured with `wg` (MTU 1420):
//!   `gotatun`, `boringtun-cli` and `wireguard-go`, and over the bare LAN link. For each: the receiver's
//!   rate, the sender's retransmits, the CPU (% of one core) and context switches of the WireGuard process
//!   on the sending and on the receiving node over the run, and the drops of both TUN interfaces and of both
//!   nodes' UDP receive buffers (where the retransmits come from). What the mesh's data path has to beat is
//!   the best of the references, not only the slowest.
//! - Offloads: the mesh's throughput with its TUN offload, its UDP GSO/GRO, or both turned off, each on a
//!   fresh pair of nodes: what each offload is worth, in the same run.
//! - Added latency: ping RTT through the mesh and each reference, minus the bare link's, with pings 20 ms
//!   apart (idle CPUs, whose wake-ups dominate on a VM) and 0.5 ms apart (busy CPUs).
//! - The relay: throughput and RTT between two agents whose UDP is blocked, through nginx as the gateway.
//! - Failover: how long until a cut-off leader is replaced on-chain, and reported by the others.
//! - Sizes (3, 10, 25, 50 and 100 nodes by default; the agents follow anvil's WebSocket at their defaults,
//!   or poll it over HTTP every 200 ms with `--follow poll`). For each size N, from the agents' event
//!   streams (so that watching them costs nothing between changes):
//!   - convergence: from the moment the chain holds node N's registration to the moment each other node
//!     lists it, and has a handshake with it (median and worst);
//!   - revocation: from the moment the chain no longer holds seat N's record to the moment each other node
//!     has dropped it;
//!   - cost: each agent's CPU and RSS over 15 s idle (mean and worst), the load average, and the JSON-RPC
//!     requests reaching anvil (it logs each), idle and per new block; and agent 1's own chain requests per
//!     block;
//!   - how long the mesh took to form.
//! - Churn loss (on 25 nodes): ping loss between two steady nodes while 10 other nodes join and leave.
//! - Trace: one join at `--trace-nodes` (50), through every node's log: when each read the block, added
//!   the peer, initiated, got a session, and showed it on its API; initiations the newcomer dropped, and
//!   WireGuard's retries.
//!
//! `--sections` picks some of them (`throughput,latency,offloads,relay,failover,sizes,trace`, all by
//! default).
//!
//! Run as root with `scripts/bench` (which builds the release binaries and installs gotatun and
//! boringtun-cli into `target/peers`), or:
//!
//! ```sh
//! cargo build --release -p p2p-agent -p meshctl -p dstack-simulator -p netns-tests --bins
//! cargo install --locked --root target/peers gotatun-cli --version 0.10.2
//! cargo install --locked --root target/peers boringtun-cli --version 0.7.1
//! sudo target/release/mesh-bench --json target/mesh-bench.json --sections throughput,latency
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::Context as _;
use clap::Parser;
use mesh_api::{self, Peer};
use netns_tests::convergence::{
    chain_watch, delays, full_mesh, healthy, lists, median_and_worst, watch_change,
};
use netns_tests::netns::in_netns;
use netns_tests::perf::{
    clock_ticks, cpu_ticks, ctx_switches, iperf3, iperf3_observed, link_dropped, ping_avg_ms,
    udp_rcvbuf_errors,
};
use netns_tests::prelude::*;
use netns_tests::process::require_root;
use netns_tests::wg::{Reference, WireguardGo, test_key};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
// A flag given twice takes the last value: scripts/bench passes the references' paths before the caller's
// arguments, which may name others.
#[command(
    about = "Measure dstack-mesh's throughput, latency, failover, convergence, revocation, churn and cost",
    args_override_self = true
)]
struct Args {
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/mesh-bench.json")]
    json: PathBuf,
    /// Mesh sizes to measure convergence, revocation and cost for.
    #[arg(long, value_delimiter = ',', default_value = "3,10,25,50,100")]
    sizes: Vec<usize>,
    /// How the agents of the sizes section follow the chain: `ws`, at the agent's defaults over anvil's
    /// WebSocket (new heads by subscription, a 2 s safety poll); `poll`, over HTTP polling every 200 ms.
    #[arg(long, value_enum, default_value = "ws")]
    follow: Follow,
    /// The mesh size whose join the trace section follows through every node's log.
    #[arg(long, default_value_t = 50)]
    trace_nodes: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Nodes that join and leave during the churn measurement.
    #[arg(long, default_value_t = 10)]
    churn: usize,
    /// The agents' --leader-timeout in the failover measurement, in seconds (the agent's default).
    #[arg(long, default_value_t = 30)]
    leader_timeout: u64,
    /// What to measure, comma-separated (the order given does not matter).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "throughput,latency,offloads,relay,failover,sizes,trace"
    )]
    sections: Vec<Section>,
    /// gotatun, a reference in the throughput and latency sections (`scripts/bench` installs it).
    #[arg(
        long,
        env = "MESH_BENCH_GOTATUN",
        default_value = "target/peers/bin/gotatun"
    )]
    gotatun: PathBuf,
    /// boringtun-cli, a reference in the throughput and latency sections (`scripts/bench` installs it).
    #[arg(
        long,
        env = "MESH_BENCH_BORINGTUN_CLI",
        default_value = "target/peers/bin/boringtun-cli"
    )]
    boringtun_cli: PathBuf,
}

/// The parts of the benchmark, for `--sections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// iperf3 through the mesh, each reference and the bare link.
    Throughput,
    /// Ping RTT through the same.
    Latency,
    /// Throughput through the mesh with each kernel offload turned off in turn: what each is worth.
    Offloads,
    /// Throughput and RTT over the relay.
    Relay,
    /// Leader failover.
    Failover,
    /// Convergence, revocation and cost for each `--sizes`; churn on 25 nodes.
    Sizes,
    /// One join at `--trace-nodes`, traced through every node's log.
    Trace,
}

/// How the agents of the sizes section follow the chain, for `--follow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Follow {
    /// The agent's defaults, with `--rpc-url ws://…`: new heads by subscription.
    Ws,
    /// `--rpc-url http://…` and `--poll-interval-ms 200`.
    Poll,
}

impl Follow {
    fn config(self, i: usize) -> AgentConfig {
        match self {
            Self::Ws => AgentConfig::lan_ws(i),
            Self::Poll => AgentConfig::lan(i),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Ws => {
                "agents follow anvil's WebSocket at their defaults (new heads by subscription, 2 s safety poll)"
            }
            Self::Poll => "agents poll anvil over HTTP every 200 ms",
        }
    }
}

/// A reference that `scripts/bench` installs from crates.io, pinned, into the ignored `target/peers`.
struct Installed {
    flag: &'static str,
    env: &'static str,
    krate: &'static str,
    version: &'static str,
}

const GOTATUN: Installed = Installed {
    flag: "--gotatun",
    env: "MESH_BENCH_GOTATUN",
    krate: "gotatun-cli",
    version: "0.10.2",
};

const BORINGTUN_CLI: Installed = Installed {
    flag: "--boringtun-cli",
    env: "MESH_BENCH_BORINGTUN_CLI",
    krate: "boringtun-cli",
    version: "0.7.1",
};

impl Installed {
    /// `path` made absolute, or an error naming the flag and the command that installs it: a comparison
    /// without one of the references would read as complete, so there is no skipping it.
    fn at(&self, path: &std::path::Path) -> anyhow::Result<PathBuf> {
        let path = std::path::absolute(path)
            .with_context(|| format!("{} {}", self.flag, path.display()))?;
        anyhow::ensure!(
            path.is_file(),
            "{} is missing (set with {} or ${}): install it with `cargo install --locked --root target/peers \
             {} --version {}`, as scripts/bench does",
            path.display(),
            self.flag,
            self.env,
            self.krate,
            self.version
        );
        Ok(path)
    }
}

/// The references the mesh is compared with, in the table's order.
fn references(args: &Args) -> anyhow::Result<Vec<Reference>> {
    Ok(vec![
        Reference::Gotatun(GOTATUN.at(&args.gotatun)?),
        Reference::BoringtunCli(BORINGTUN_CLI.at(&args.boringtun_cli)?),
        Reference::WireguardGo,
    ])
}

/// How long any one measurement may wait for the mesh before giving up.
const BOUND: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let on = |section| args.sections.contains(&section);
    let compared = on(Section::Throughput) || on(Section::Latency);
    let references = if compared {
        references(&args)?
    } else {
        Vec::new()
    };
    let mut tools = Vec::new();
    if compared {
        tools.extend(["ss", "iperf3", "wireguard-go"]);
    }
    if on(Section::Offloads) {
        tools.extend(["ss", "iperf3"]);
    }
    if on(Section::Relay) {
        tools.extend(["ss", "iperf3", "nginx", "nft"]);
    }
    if on(Section::Failover) {
        tools.push("nft");
    }
    require_root(&tools);
    for bin in ["p2p-agent", "meshctl", "dstack-simulator"] {
        workspace_bin(bin);
    }
    let mut report = json!({
        "machine": machine(),
        "sizesFollow": args.follow.describe(),
    });

    if compared {
        eprintln!(
            "== throughput and latency (2 agents; gotatun, boringtun-cli and wireguard-go pairs; the bare link)"
        );
        let versions: serde_json::Map<String, Value> = references
            .iter()
            .map(|r| (r.name().to_owned(), json!(r.version())))
            .collect();
        eprintln!("   references: {}", Value::Object(versions.clone()));
        report["versions"] = Value::Object(versions);
        let lan = Lan::new(2 + 2 * references.len());
        let cluster = Cluster::deploy_seats(&lan, 2);
        // The agent's own data path, whatever the kernel offers (`auto` would take a kernel module): it is
        // what is compared, and its CPU is then the agent process's.
        let (agents, _keys) = start_mesh_with(&cluster, 1..=2, &["--wg-backend", "userspace"]);
        let pairs: Vec<(&str, WireguardGo, WireguardGo)> = references
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let (a, b) = reference_pair(&lan, r, k);
                (r.name(), a, b)
            })
            .collect();
        let tunnels = tunnels(&lan, &agents, &pairs);
        // Latency first, while every tunnel has only carried pings.
        if on(Section::Latency) {
            report["latency"] = latency(&tunnels);
        }
        if on(Section::Throughput) {
            report["throughput"] = throughput(&args, &tunnels);
        }
    }
    if on(Section::Offloads) {
        eprintln!("== the mesh with its offloads turned off in turn (2 agents)");
        report["offloads"] = offloads(&args);
    }
    if on(Section::Relay) {
        eprintln!("== the relay (UDP blocked, WireGuard through nginx as the dstack gateway)");
        report["relay"] = relay(&args);
    }
    if on(Section::Failover) {
        eprintln!(
            "== failover (3 nodes; the leader's node cut off; leader timeout {} s)",
            args.leader_timeout
        );
        report["failover"] = failover(args.leader_timeout);
    }
    if on(Section::Sizes) {
        // Churn on 25 nodes when that size is measured, else on the largest.
        let largest = args.sizes.iter().copied().max().unwrap_or(0);
        let churn_at = if args.sizes.contains(&25) {
            25
        } else {
            largest
        };
        let mut sizes = Vec::new();
        for &n in &args.sizes {
            anyhow::ensure!(
                (3..=200).contains(&n),
                "--sizes: {n} nodes cannot be measured; give sizes from 3 to 200"
            );
            eprintln!(
                "== {n} nodes: convergence, cost and revocation; {}",
                args.follow.describe()
            );
            let churn = if n == churn_at { args.churn } else { 0 };
            sizes.push(size_run(n, churn, args.follow)?);
        }
        report["sizes"] = Value::Array(sizes);
    }
    if on(Section::Trace) {
        eprintln!(
            "== one join at {} nodes, traced; {}",
            args.trace_nodes,
            args.follow.describe()
        );
        report["trace"] = trace_join(args.trace_nodes, args.follow)?;
    }

    print_table(&report);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({ "cpus": cpus, "kernel": kernel.trim() })
}

/// One node's end of a tunnel: the WireGuard process (the agent for the mesh) and its interface.
struct Side<'a> {
    ns: &'a NetNs,
    pid: u32,
    ifname: String,
}

/// One implementation between two nodes of the LAN, measured from `client` (the sender) to `addr` on
/// `server`; the bare link has no WireGuard sides.
struct Tunnel<'a> {
    name: &'static str,
    client: &'a NetNs,
    server: &'a NetNs,
    addr: Ipv4Addr,
    /// The sending and the receiving side.
    sides: Option<[Side<'a>; 2]>,
}

/// What one side's WireGuard had used at one moment: its process (CPU, context switches), its TUN
/// interface (drops) and its namespace's UDP (datagrams lost to a full socket buffer).
#[derive(Clone, Copy)]
struct SideUsage {
    cpu_ticks: u64,
    ctx_switches: u64,
    tun_dropped: u64,
    udp_rcvbuf_errors: u64,
}

/// What both sides of a [`Tunnel`] had used at one moment (no sides for the bare link).
struct Usage {
    at: Instant,
    sides: Vec<SideUsage>,
}

impl Tunnel<'_> {
    /// Both sides' usage now. The process counters are read next to the clock, and the others (an `ip` or
    /// `cat` in the namespace each, some 10 ms) away from the run: before the clock at its start, after it at
    /// its end, so that the wall time the CPU is divided by is the run's.
    fn usage(&self, start: bool) -> Usage {
        let sides: Vec<&Side<'_>> = self.sides.iter().flatten().collect();
        let slow = || -> Vec<(u64, u64)> {
            sides
                .iter()
                .map(|s| (link_dropped(s.ns, &s.ifname), udp_rcvbuf_errors(s.ns)))
                .collect()
        };
        let fast = || -> (Instant, Vec<(u64, u64)>) {
            let at = Instant::now();
            let counts = sides
                .iter()
                .map(|s| (cpu_ticks(s.pid), ctx_switches(s.pid)))
                .collect();
            (at, counts)
        };
        let (counters, (at, process)) = if start {
            let counters = slow();
            (counters, fast())
        } else {
            let process = fast();
            (slow(), process)
        };
        Usage {
            at,
            sides: process
                .into_iter()
                .zip(counters)
                .map(
                    |((cpu_ticks, ctx_switches), (tun_dropped, udp_rcvbuf_errors))| SideUsage {
                        cpu_ticks,
                        ctx_switches,
                        tun_dropped,
                        udp_rcvbuf_errors,
                    },
                )
                .collect(),
        }
    }

    /// One iperf3 run and what it cost each side: CPU as % of one core over the run's wall time, context
    /// switches, the drops of both TUN interfaces and of both namespaces' UDP sockets (null for the bare
    /// link).
    fn measure(&self, streams: u32, secs: u32) -> Value {
        let mut start = true;
        let (run, before, after) = iperf3_observed(
            self.client,
            self.server,
            &self.addr.to_string(),
            streams,
            secs,
            || {
                let usage = self.usage(start);
                start = false;
                usage
            },
        );
        let wall = (after.at - before.at).as_secs_f64();
        let hz = clock_ticks();
        let delta = |side: usize, field: fn(&SideUsage) -> u64| {
            before
                .sides
                .get(side)
                .zip(after.sides.get(side))
                .map(|(b, a)| field(a).saturating_sub(field(b)))
        };
        let both =
            |field: fn(&SideUsage) -> u64| delta(0, field).zip(delta(1, field)).map(|(a, b)| a + b);
        let cpu = |side| delta(side, |u| u.cpu_ticks).map(|t| t as f64 / hz / wall * 100.0);
        let out = json!({
            "gbps": run.gbps,
            "retransmits": run.retransmits,
            "cpuSenderPct": cpu(0),
            "cpuReceiverPct": cpu(1),
            "ctxSwitchesSender": delta(0, |u| u.ctx_switches),
            "ctxSwitchesReceiver": delta(1, |u| u.ctx_switches),
            "tunDrops": both(|u| u.tun_dropped),
            "tunDropsSender": delta(0, |u| u.tun_dropped),
            "tunDropsReceiver": delta(1, |u| u.tun_dropped),
            "udpRcvbufErrors": both(|u| u.udp_rcvbuf_errors),
        });
        let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}%"));
        let count = |v: &Value| v.as_u64().map_or("-".into(), |x| x.to_string());
        eprintln!(
            "   {streams} stream(s), {}: {:.2} Gbit/s, {} retransmits, CPU {} / {} (send / recv), TUN drops {}, UDP receive buffer drops {}",
            self.name,
            run.gbps,
            run.retransmits,
            pct(&out["cpuSenderPct"]),
            pct(&out["cpuReceiverPct"]),
            count(&out["tunDrops"]),
            count(&out["udpRcvbufErrors"]),
        );
        out
    }
}

/// The implementations in the table's order (mesh, the references, bare), on the throughput and latency
/// topology: the mesh between nodes 1 and 2, reference k between nodes 3 + 2k and 4 + 2k, and the bare
/// link from node 1 to node 2, all on the same bridge.
fn tunnels<'a>(
    lan: &'a Lan,
    agents: &[Agent<'_>],
    pairs: &'a [(&'static str, WireguardGo, WireguardGo)],
) -> Vec<Tunnel<'a>> {
    let agent_side = |a: &Agent<'_>| Side {
        ns: lan.node(a.index),
        pid: a
            .pid()
            .unwrap_or_else(|| panic!("agent {} is not running", a.index)),
        ifname: a.ifname.clone(),
    };
    let mut out = vec![Tunnel {
        name: "mesh",
        client: lan.node(1),
        server: lan.node(2),
        addr: overlay_ip(2),
        sides: Some([agent_side(&agents[0]), agent_side(&agents[1])]),
    }];
    for (k, (name, a, b)) in pairs.iter().enumerate() {
        let (ns_a, ns_b) = (lan.node(3 + 2 * k), lan.node(4 + 2 * k));
        out.push(Tunnel {
            name,
            client: ns_a,
            server: ns_b,
            addr: reference_ip(k, 2),
            sides: Some([
                Side {
                    ns: ns_a,
                    pid: a.pid(),
                    ifname: a.ifname.clone(),
                },
                Side {
                    ns: ns_b,
                    pid: b.pid(),
                    ifname: b.ifname.clone(),
                },
            ]),
        });
    }
    out.push(Tunnel {
        name: "bare",
        client: lan.node(1),
        server: lan.node(2),
        addr: lan_ip(2),
        sides: None,
    });
    out
}

/// Reference k's overlay address `host` (1 or 2): 10.0.(2 + k).host, apart from the mesh's 10.0.1.0/24.
fn reference_ip(k: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2 + u8::try_from(k).expect("few references"), host)
}

/// A pair of `reference` on nodes 3 + 2k and 4 + 2k, overlay [`reference_ip`]; returns once a ping goes
/// through (the handshake done), so that no measurement includes it.
fn reference_pair(lan: &Lan, reference: &Reference, k: usize) -> (WireguardGo, WireguardGo) {
    let (i, j) = (3 + 2 * k, 4 + 2 * k);
    let seed = |node: usize| u8::try_from(28 + node).expect("few references");
    // Node `node` as overlay host `host`, its peer node `peer` as `peer_host`.
    let start = |node: usize, host: u8, peer: usize, peer_host: u8| {
        WireguardGo::start(
            reference,
            lan.node(node),
            &test_key(seed(node)),
            &format!("{}/24", reference_ip(k, host)),
            &test_key(seed(peer)).public_key(),
            &format!("{}:51820", lan_ip(peer)),
            &format!("{}/32", reference_ip(k, peer_host)),
        )
    };
    let a = start(i, 1, j, 2);
    let b = start(j, 2, i, 1);
    let target = reference_ip(k, 2);
    wait_until(
        &format!("a ping through the {} pair ({i} -> {j})", reference.name()),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || ping(lan.node(i), target, 1, Duration::from_millis(200)).1 == 1,
        || lan.node(i).exec_ok(&["wg", "show", &a.ifname]),
    );
    (a, b)
}

/// iperf3 through each of `tunnels` with 1 and 4 streams, and the mesh's rate over the best
/// reference's and over the bare link's.
fn throughput(args: &Args, tunnels: &[Tunnel<'_>]) -> Value {
    let mut out = json!({ "seconds": args.seconds });
    for streams in [1u32, 4] {
        let mut runs = json!({});
        for p in tunnels {
            runs[p.name] = p.measure(streams, args.seconds);
        }
        let gbps = |name: &str| runs[name]["gbps"].as_f64().unwrap_or(0.0);
        let best = tunnels
            .iter()
            .map(|p| p.name)
            .filter(|&n| n != "mesh" && n != "bare")
            .max_by(|a, b| gbps(a).total_cmp(&gbps(b)))
            .expect("at least one reference");
        let (over_best, over_bare) = (gbps("mesh") / gbps(best), gbps("mesh") / gbps("bare"));
        eprintln!(
            "   {streams} stream(s): mesh / {best} {over_best:.2}, mesh / bare {over_bare:.2}"
        );
        runs["bestPeer"] = json!(best);
        runs["meshOverBest"] = json!(over_best);
        runs["meshOverBare"] = json!(over_bare);
        out[format!("streams{streams}")] = runs;
    }
    out
}

/// The average of 200 pings 20 ms apart through each of `tunnels`, and what each adds over the bare link's.
fn latency(tunnels: &[Tunnel<'_>]) -> Value {
    // Warm up sessions and caches first.
    for p in tunnels {
        ping_avg_ms(p.client, p.addr, 5, Duration::from_millis(20));
    }
    // Pings 20 ms apart find every CPU idle, and on a VM waking a CPU dominates: each WireGuard side wakes
    // twice a round trip, and even the bare link's RTT is ten times what it is on busy CPUs. Pings 0.5 ms
    // apart keep the CPUs awake and show what the tunnel itself adds.
    let mut out = json!({});
    for (key, every, count) in [
        ("", Duration::from_millis(20), 200),
        ("busy", Duration::from_micros(500), 2000),
    ] {
        let rtts: Vec<(&str, f64)> = tunnels
            .iter()
            .map(|p| (p.name, ping_avg_ms(p.client, p.addr, count, every)))
            .collect();
        let bare = rtts
            .iter()
            .find(|(name, _)| *name == "bare")
            .map(|r| r.1)
            .expect("the bare link is measured");
        let field = |name: &str| {
            if key.is_empty() {
                name.to_owned()
            } else {
                format!("{key}{}{}", &name[..1].to_uppercase(), &name[1..])
            }
        };
        for (name, rtt) in &rtts {
            out[*name][field("rttMs")] = json!(rtt);
            out[*name][field("addedMs")] = json!(rtt - bare);
        }
        eprintln!(
            "   RTT, pings {} ms apart: {}",
            every.as_secs_f64() * 1000.0,
            rtts.iter()
                .map(|(name, rtt)| format!("{name} {rtt:.3} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

/// Two agents whose UDP is dropped, meshed through the stand-in gateway: throughput and RTT over the relay.
fn relay(args: &Args) -> Value {
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let gateway = Gateway::for_cluster(&cluster, WG_PORT);
    let _block = UdpBlock::on(&lan);
    let mut flags = gateway.agent_flags();
    flags.extend(["--wg-backend".to_owned(), "userspace".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agents: Vec<Agent<'_>> = (1..=2).map(|i| Agent::start(&cluster, i, &flags)).collect();
    wait_until(
        "both agents to reach each other over the relay",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            agents.iter().all(|a| {
                let other = 3 - a.index as u64;
                a.try_status().is_ok()
                    && a.peer(other)
                        .is_some_and(|p| p.healthy && p.path == Some(mesh_api::Path::Relay))
            })
        },
        || tails(&agents),
    );
    let every = Duration::from_millis(20);
    ping_avg_ms(lan.node(1), overlay_ip(2), 5, every);
    let bare = ping_avg_ms(lan.node(1), lan_ip(2), 200, every);
    let rtt = ping_avg_ms(lan.node(1), overlay_ip(2), 200, every);
    let mut out = json!({ "rttMs": rtt, "bareRttMs": bare, "addedMs": rtt - bare });
    for streams in [1u32, 4] {
        let run = iperf3(
            lan.node(1),
            lan.node(2),
            &overlay_ip(2).to_string(),
            streams,
            args.seconds,
        );
        out[format!("streams{streams}Gbps")] = json!(run.gbps);
        out[format!("streams{streams}Retransmits")] = json!(run.retransmits);
    }
    eprintln!(
        "   relay: {:.2} Gbit/s (1 stream), {:.2} (4), RTT {rtt:.3} ms (+{:.3} over the bare link)",
        out["streams1Gbps"].as_f64().unwrap_or(0.0),
        out["streams4Gbps"].as_f64().unwrap_or(0.0),
        rtt - bare
    );
    out
}

/// The mesh's variants with offloads turned off, by name and the agents' flags.
const OFFLOAD_VARIANTS: [(&str, &[&str]); 3] = [
    ("no offloads", &["--no-tun-offload", "--no-udp-offload"]),
    ("TUN offload only", &["--no-udp-offload"]),
    ("UDP GSO/GRO only", &["--no-tun-offload"]),
];

/// Throughput and its cost through the mesh for each of [`OFFLOAD_VARIANTS`], each on a fresh two-node
/// topology (the full mesh is the throughput section's `mesh`).
fn offloads(args: &Args) -> Value {
    let mut out = json!({});
    for (name, flags) in OFFLOAD_VARIANTS {
        let lan = Lan::new(2);
        let cluster = Cluster::deploy_seats(&lan, 2);
        let mut all = vec!["--wg-backend", "userspace"];
        all.extend(flags);
        let (agents, _keys) = start_mesh_with(&cluster, 1..=2, &all);
        let mut tunnel = tunnels(&lan, &agents, &[]).remove(0);
        tunnel.name = name;
        for streams in [1u32, 4] {
            out[name][format!("streams{streams}")] = tunnel.measure(streams, args.seconds);
        }
    }
    out
}

/// Three agents elect seat 1; its node is cut off the LAN: how long until the others' votes replace it
/// on-chain, and until both of them report the new leader on their APIs.
fn failover(timeout: u64) -> Value {
    let lan = Lan::new(3);
    let cluster = Cluster::deploy(&lan);
    let flag = timeout.to_string();
    let (agents, _) = start_mesh_with(&cluster, 1..=3, &["--leader-timeout", &flag]);
    let leads = |a: &Agent<'_>, seat: u64| a.leader().ok().and_then(|l| l.token_id) == Some(seat);
    wait_until(
        "every agent to report seat 1 as leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || agents.iter().all(|a| leads(a, 1)),
        || tails(&agents),
    );
    let on_chain = || cluster.meshctl(0, &["leader", "show"])["leaderTokenId"].as_u64();
    let _cut = lan.cut_off(1);
    let t0 = Instant::now();
    let bound = Duration::from_secs(timeout) + BOUND;
    wait_until(
        "seat 2 to lead on-chain",
        bound,
        Duration::from_millis(100),
        || on_chain() == Some(2),
        || tails(&agents),
    );
    let chain = t0.elapsed();
    wait_until(
        "nodes 2 and 3 to report seat 2",
        bound,
        Duration::from_millis(20),
        || agents[1..].iter().all(|a| leads(a, 2)),
        || tails(&agents),
    );
    let reported = t0.elapsed();
    eprintln!(
        "   failover: on-chain {:.1} s, reported by both {:.1} s after the cut (timeout {timeout} s)",
        chain.as_secs_f64(),
        reported.as_secs_f64()
    );
    json!({
        "leaderTimeoutSecs": timeout,
        "onChainMs": ms(chain),
        "reportedMs": ms(reported),
        "beyondTimeoutMs": ms(chain) - ms(Duration::from_secs(timeout)),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A size's run: `n` nodes; nodes 1..n-1 form the mesh, then node n joins (convergence), the mesh idles
/// (cost), blocks are mined (cost per block), `churn` more nodes join and leave if asked, and seat n is
/// revoked (revocation).
fn size_run(n: usize, churn: usize, follow: Follow) -> anyhow::Result<Value> {
    let lan = Lan::new(n + churn);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let ready = Instant::now();
    let mut agents = start_agents_as(&cluster, 1..n, |i| follow.config(i), 300);
    let started = ready.elapsed();
    let t0 = Instant::now();
    let all: Vec<&Agent<'_>> = agents.iter().collect();
    full_mesh(&all, BOUND)
        .map_err(|e| anyhow::anyhow!("the mesh of {} did not form: {e}", n - 1))?;
    let formed = t0.elapsed();
    eprintln!(
        "   {} agents started in {started:.1?}, meshed {formed:.1?} after",
        n - 1
    );

    // Convergence: node n joins; when does each other node list it, and have a handshake with it?
    let token = n as u64;
    let listed = |p: &[Peer]| lists(p, token);
    let handshaken = |p: &[Peer]| healthy(p, token);
    let watch = chain_watch(&lan, contract, token, true, BOUND);
    let (newcomer, times) = watch_change(
        &all,
        BOUND,
        &[("lists it", &listed), ("handshaken", &handshaken)],
        || Agent::start_with(&cluster, n, follow.config(n), &[]),
    )
    .map_err(|e| anyhow::anyhow!("node {n}'s join was not applied: {e}"))?;
    let block = watch.join().expect("chain watch");
    let (listed_median, listed_worst) = median_and_worst(&delays(block, &times[0]));
    let (hs_median, hs_worst) = median_and_worst(&delays(block, &times[1]));
    agents.push(newcomer);
    eprintln!(
        "   join: listed by all {:.0} ms after its block (median {:.0}), handshaken by all {:.0} ms after (median {:.0})",
        ms(listed_worst),
        ms(listed_median),
        ms(hs_worst),
        ms(hs_median)
    );
    let mut out = json!({
        "nodes": n,
        "startSecs": started.as_secs_f64(),
        "formedSecs": formed.as_secs_f64(),
        "listedMs": ms(listed_worst),
        "listedMedianMs": ms(listed_median),
        "convergenceMs": ms(hs_worst),
        "handshakeMedianMs": ms(hs_median),
    });
    out["cost"] = cost(&lan, &agents)?;
    if churn > 0 {
        out["churn"] = churn_loss(&lan, &cluster, &agents, n + 1, churn, follow);
    }

    // Revocation of seat n: when has each other node dropped it?
    let dropped = |p: &[Peer]| !lists(p, token);
    let watch = chain_watch(&lan, contract, token, false, BOUND);
    let others: Vec<&Agent<'_>> = agents.iter().filter(|a| a.index != n).collect();
    let (_, times) = watch_change(&others, BOUND, &[("dropped it", &dropped)], || {
        cluster.meshctl(0, &["revoke", "--token", &token.to_string(), "--yes"])
    })
    .map_err(|e| anyhow::anyhow!("seat {n}'s revocation was not applied: {e}"))?;
    let cleared = watch.join().expect("chain watch");
    let (dropped_median, dropped_worst) = median_and_worst(&delays(cleared, &times[0]));
    eprintln!(
        "   revocation: dropped by all {:.0} ms after its block (median {:.0})",
        ms(dropped_worst),
        ms(dropped_median)
    );
    out["revocationMs"] = json!(ms(dropped_worst));
    out["revocationMedianMs"] = json!(ms(dropped_median));
    Ok(out)
}

/// What the mesh of `agents` costs: over 15 s of idling, each agent's CPU and RSS, the load average and
/// the requests reaching anvil; then over 10 blocks mined 1 s apart, the requests per block, at anvil and
/// by agent 1 (its own counters: all its chain requests, less its head polls).
fn cost(lan: &Lan, agents: &[Agent<'_>]) -> anyhow::Result<Value> {
    let pids: Vec<u32> = agents.iter().filter_map(Agent::pid).collect();
    anyhow::ensure!(pids.len() == agents.len(), "an agent has exited");
    std::thread::sleep(Duration::from_secs(2));
    let cpu0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let (rpc0, t0) = (lan.rpc_requests(), Instant::now());
    // One whole safety-poll period: agents that started together poll together, every 15 s.
    std::thread::sleep(mesh_chain::heads::SAFETY_POLL);
    let cpu1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let (rpc1, t1) = (lan.rpc_requests(), Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let cpu: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) as f64 / clock_ticks() / secs * 100.0)
        .collect();
    let rss: Vec<u64> = pids
        .iter()
        .map(|p| rss_kib(*p))
        .collect::<anyhow::Result<_>>()?;
    let idle_rate = (rpc1 - rpc0) as f64 / secs;
    let load = std::fs::read_to_string("/proc/loadavg")?
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .context("no load average")?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let rss_f: Vec<f64> = rss.iter().map(|r| *r as f64).collect();

    let counters = |a: &Agent<'_>| -> anyhow::Result<(u64, u64)> {
        let text = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mesh_api::get_text(&a.api_socket, "/metrics"))?;
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {name} in /metrics"))
        };
        Ok((
            counter("dstack_mesh_chain_requests_total")?,
            counter("dstack_mesh_chain_head_polls_total")?,
        ))
    };
    let blocks = 10u64;
    let (req0, polls0) = counters(&agents[0])?;
    let (rpc2, t2) = (lan.rpc_requests(), Instant::now());
    for _ in 0..blocks {
        mine(lan);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (rpc3, t3) = (lan.rpc_requests(), Instant::now());
    let (req1, polls1) = counters(&agents[0])?;
    // Beyond the idle rate, and not counting the evm_mine calls themselves.
    let at_anvil = ((rpc3 - rpc2) as f64 - blocks as f64 - idle_rate * (t3 - t2).as_secs_f64())
        / blocks as f64;
    let agent1 = ((req1 - req0) - (polls1 - polls0)) as f64 / blocks as f64;
    eprintln!(
        "   cost: CPU {:.2}% mean / {:.2}% max per agent, RSS {:.1} / {:.1} MiB, load {load:.1}; anvil {idle_rate:.1} requests/s idle and {at_anvil:.0} per block; agent 1 {agent1:.2} per block",
        mean(&cpu),
        max(&cpu),
        mean(&rss_f) / 1024.0,
        max(&rss_f) / 1024.0,
    );
    Ok(json!({
        "peers": agents.len() - 1,
        "cpuPercentMean": mean(&cpu),
        "cpuPercentMax": max(&cpu),
        "rssKiBMean": mean(&rss_f),
        "rssKiBMax": max(&rss_f),
        "loadAverage": load,
        "anvilRequestsPerSecondIdle": idle_rate,
        "anvilRequestsPerBlock": at_anvil,
        "agentRequestsPerBlock": agent1,
    }))
}

/// The agents' log filter in the trace: their default, with mesh_wg's handshake events at debug.
const TRACE_FILTER: &str = "warn,boringtun::noise::timers=off,p2p_agent=info,mesh_chain=info,mesh_wg=debug,mesh_api=info,dstack_guest=info,unix_socket=info";

/// The stages of a join as each existing node goes through them, by the line its log has for each (the
/// first after the block; for the newcomer's key where the line names a peer).
const STAGES: [(&str, &str, bool); 5] = [
    ("chain", "peer records changed", false),
    ("added", "peer added", true),
    ("initiated", "handshake initiation at once", true),
    ("session", "handshake response received", true),
    ("answered", "handshake initiation received", true),
];

/// One join at `n` nodes, traced: the block that holds the newcomer's record, and for every other node
/// when it read the block, added the peer, sent its first initiation, got a session (by its own initiation's
/// response, or by answering the newcomer's), and showed the handshake on its API; the initiations the
/// newcomer dropped because they came before it knew the sender, and WireGuard's retries.
fn trace_join(n: usize, follow: Follow) -> anyhow::Result<Value> {
    let lan = Lan::new(n);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let config = |i| AgentConfig {
        log_filter: Some(TRACE_FILTER.to_owned()),
        ..follow.config(i)
    };
    let agents = start_agents_as(&cluster, 1..n, config, 300);
    let all: Vec<&Agent<'_>> = agents.iter().collect();
    full_mesh(&all, BOUND)
        .map_err(|e| anyhow::anyhow!("the mesh of {} did not form: {e}", n - 1))?;
    std::thread::sleep(Duration::from_secs(2));
    let token = n as u64;
    let handshaken = |p: &[Peer]| healthy(p, token);
    let watch = chain_watch(&lan, contract, token, true, BOUND);
    let (newcomer, times) = watch_change(&all, BOUND, &[("handshaken", &handshaken)], || {
        Agent::start_with(&cluster, n, config(n), &[])
    })
    .map_err(|e| anyhow::anyhow!("node {n}'s join was not applied: {e}"))?;
    let block = watch.join().expect("chain watch");
    let block_wall = unix_secs(std::time::SystemTime::now()) - block.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let key = format!("{:?}", newcomer.key());
    let key = key.trim_end_matches('…');

    let since = |t: f64| (t - block_wall) * 1000.0;
    let mut rows = Vec::new();
    for (a, api) in agents.iter().zip(&times[0]) {
        let log = std::fs::read_to_string(&a.log)?;
        let mut row = serde_json::Map::new();
        row.insert("node".into(), json!(a.index));
        for (name, text, keyed) in STAGES {
            let at = log_lines(&log, block_wall - 1.0)
                .find(|(_, l)| l.contains(text) && (!keyed || l.contains(key)))
                .map(|(t, _)| since(t));
            row.insert(name.into(), json!(at));
        }
        let retries = log_lines(&log, block_wall)
            .filter(|(_, l)| l.contains("initiation from WireGuard's timers") && l.contains(key))
            .count();
        row.insert("timerRetries".into(), json!(retries));
        row.insert(
            "api".into(),
            json!(ms(api.saturating_duration_since(block))),
        );
        rows.push(Value::Object(row));
    }
    let log = std::fs::read_to_string(&newcomer.log)?;
    let dropped: Vec<f64> = log_lines(&log, block_wall - 1.0)
        .filter(|(_, l)| l.contains("not a peer (yet)"))
        .map(|(t, _)| since(t))
        .collect();
    let added: Vec<f64> = log_lines(&log, block_wall - 1.0)
        .filter(|(_, l)| l.contains("peer added"))
        .map(|(t, _)| since(t))
        .collect();
    let registered = log_lines(&log, block_wall - 60.0)
        .find(|(_, l)| l.contains("registered peer record"))
        .map(|(t, _)| since(t));
    let newcomer_retries = log_lines(&log, block_wall)
        .filter(|(_, l)| l.contains("initiation from WireGuard's timers"))
        .count();

    let stat = |name: &str| -> Value {
        let mut v: Vec<f64> = rows.iter().filter_map(|r| r[name].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        json!({ "nodes": v.len(), "medianMs": at(0.5), "p90Ms": at(0.9), "maxMs": at(1.0) })
    };
    let stages: serde_json::Map<String, Value> = STAGES
        .iter()
        .map(|(name, _, _)| *name)
        .chain(["api"])
        .map(|name| (name.to_owned(), stat(name)))
        .collect();
    let retries: usize = rows
        .iter()
        .filter_map(|r| r["timerRetries"].as_u64())
        .sum::<u64>() as usize;
    eprintln!(
        "   trace of node {n}'s join (ms after the block that holds its record; over the {} other nodes):",
        n - 1
    );
    eprintln!(
        "     the newcomer's registration receipt: {}",
        registered.map_or("-".into(), |t| format!("{t:.0}"))
    );
    for (name, s) in &stages {
        eprintln!(
            "     {name:<10} median {:>6} p90 {:>6} max {:>6}  ({} nodes)",
            s["medianMs"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            s["p90Ms"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            s["maxMs"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            s["nodes"]
        );
    }
    eprintln!(
        "     the newcomer added its {} peers from {} to {} ms; dropped {} initiations from keys it did not know yet (the last at {} ms); WireGuard retries: {retries} by the others, {newcomer_retries} by the newcomer",
        added.len(),
        added.first().map_or("-".into(), |t| format!("{t:.0}")),
        added.last().map_or("-".into(), |t| format!("{t:.0}")),
        dropped.len(),
        dropped.last().map_or("-".into(), |t| format!("{t:.0}")),
    );
    Ok(json!({
        "nodes": n,
        "follow": follow.describe(),
        "registrationReceiptMs": registered,
        "stages": stages,
        "newcomerPeersAdded": added.len(),
        "newcomerFirstAddMs": added.first(),
        "newcomerLastAddMs": added.last(),
        "initiationsDroppedByNewcomer": dropped.len(),
        "timerRetriesByOthers": retries,
        "timerRetriesByNewcomer": newcomer_retries,
        "perNode": rows,
    }))
}

/// The lines of an agent's text log at or after `from` (unix seconds), with their time.
fn log_lines(log: &str, from: f64) -> impl Iterator<Item = (f64, &str)> {
    log.lines()
        .filter_map(|l| Some((rfc3339_secs(l.split_whitespace().next()?)?, l)))
        .filter(move |(t, _)| *t >= from)
}

fn unix_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A log line's RFC 3339 timestamp (the agent logs in UTC) as unix seconds.
fn rfc3339_secs(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// One empty block, mined by anvil on request (`evm_mine`).
fn mine(lan: &Lan) {
    in_netns(&lan.switch, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let provider = ProviderBuilder::new()
                    .connect_http(rpc_url().parse().expect("rpc url"))
                    .erased();
                provider
                    .raw_request::<_, String>("evm_mine".into(), ())
                    .await
                    .expect("evm_mine")
            })
    });
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Node 1 pings node 2 every 20 ms while nodes `first..first + count` join (mint, start, adopted by nodes 1
/// and 2) and then leave (revoked, dropped by nodes 1 and 2).
fn churn_loss<'a>(
    lan: &Lan,
    cluster: &'a Cluster<'a>,
    steady: &[Agent<'a>],
    first: usize,
    count: usize,
    follow: Follow,
) -> Value {
    let pinger = BackgroundPing::start(
        lan.node(1),
        overlay_ip(2),
        100_000,
        Duration::from_millis(20),
    );
    let t0 = Instant::now();
    let pair: Vec<&Agent<'_>> = steady.iter().filter(|a| a.index <= 2).collect();
    let tokens: Vec<u64> = (first..first + count).map(|i| i as u64).collect();
    let adopted = |p: &[Peer]| tokens.iter().all(|&t| healthy(p, t));
    let (joiners, _) = watch_change(
        &pair,
        BOUND,
        &[("adopted every churn node", &adopted)],
        || {
            (first..first + count)
                .map(|i| {
                    cluster.mint(i);
                    Agent::start_with(cluster, i, follow.config(i), &[])
                })
                .collect::<Vec<_>>()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let joined = t0.elapsed();
    let gone = |p: &[Peer]| p.iter().all(|p| !tokens.contains(&p.token_id));
    watch_change(&pair, BOUND, &[("dropped every churn node", &gone)], || {
        for &t in &tokens {
            cluster.meshctl(0, &["revoke", "--token", &t.to_string(), "--yes"]);
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let left = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (sent, received, _) = pinger.interrupt();
    drop(joiners);
    let loss = if sent == 0 {
        100.0
    } else {
        f64::from(sent - received) / f64::from(sent) * 100.0
    };
    eprintln!(
        "   churn: {count} nodes joined in {joined:.1?} and left by {left:.1?}; ping 1 -> 2 {received}/{sent} ({loss:.2}% loss)"
    );
    json!({
        "nodes": count,
        "joinedSecs": joined.as_secs_f64(),
        "leftSecs": left.as_secs_f64(),
        "pingsSent": sent,
        "pingsReceived": received,
        "lossPercent": loss,
    })
}

/// The implementations' keys in the throughput and latency sections, in the table's order.
const IMPLEMENTATIONS: [&str; 5] = ["mesh", "gotatun", "boringtun-cli", "wireguard-go", "bare"];

/// Prints what the report holds; a section that was not run is left out.
fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    println!(
        "\n=== dstack-mesh benchmark ({} CPUs, kernel {}) ===",
        r["machine"]["cpus"],
        r["machine"]["kernel"].as_str().unwrap_or("?"),
    );
    if r.get("throughput").is_some() || r.get("latency").is_some() {
        print_compared(r);
    }
    if let Some(o) = r.get("offloads") {
        println!(
            "\nThe mesh with offloads turned off (Gbit/s, retransmits, CPU send / recv; 1 stream, then 4)"
        );
        let mut rows: Vec<(&str, [&Value; 2])> = OFFLOAD_VARIANTS
            .iter()
            .map(|(name, _)| (*name, [&o[*name]["streams1"], &o[*name]["streams4"]]))
            .collect();
        if let Some(t) = r.get("throughput") {
            rows.push((
                "all offloads (mesh above)",
                [&t["streams1"]["mesh"], &t["streams4"]["mesh"]],
            ));
        }
        let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}"));
        for (name, runs) in rows {
            let mut row = format!("{name:<28}");
            for run in runs {
                row += &format!(
                    " {:>7} {:>8} {:>10}",
                    f(&run["gbps"]),
                    run["retransmits"]
                        .as_u64()
                        .map_or("-".into(), |x| x.to_string()),
                    format!(
                        "{} / {}",
                        pct(&run["cpuSenderPct"]),
                        pct(&run["cpuReceiverPct"])
                    )
                );
            }
            println!("{row}");
        }
    }
    if let Some(relay) = r.get("relay") {
        // Shares of the direct path's figures, when those were measured too.
        let direct = |s: &str| {
            let relayed = relay[format!("{s}Gbps")].as_f64()?;
            let direct = r.get("throughput")?[s]["mesh"]["gbps"].as_f64()?;
            Some(format!(" ({:.0}% of direct)", 100.0 * relayed / direct))
        };
        let direct_added = r
            .get("latency")
            .and_then(|l| l["mesh"]["addedMs"].as_f64())
            .map_or(String::new(), |a| format!("; direct +{a:.3}"));
        println!(
            "\nThe relay (UDP blocked; through nginx as the gateway): {} Gbit/s with 1 stream{}, {} with 4{}; RTT {} ms (+{} over the bare link{direct_added})",
            f(&relay["streams1Gbps"]),
            direct("streams1").unwrap_or_default(),
            f(&relay["streams4Gbps"]),
            direct("streams4").unwrap_or_default(),
            f(&relay["rttMs"]),
            f(&relay["addedMs"]),
        );
    }
    if let Some(fo) = r.get("failover") {
        println!(
            "\nFailover (3 nodes, the leader's node cut off, leader timeout {} s): seat 2 leads on-chain after {:.0} ms ({:.0} ms beyond the timeout); both agents report it after {:.0} ms",
            fo["leaderTimeoutSecs"],
            fo["onChainMs"].as_f64().unwrap_or(0.0),
            fo["beyondTimeoutMs"].as_f64().unwrap_or(0.0),
            fo["reportedMs"].as_f64().unwrap_or(0.0)
        );
    }
    let Some(sizes) = r.get("sizes") else {
        return;
    };
    println!(
        "\nSizes ({}): from the block that holds a change to the last node's API showing it",
        r["sizesFollow"].as_str().unwrap_or("?")
    );
    let num = |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
    println!(
        "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
        "nodes",
        "listed ms",
        "handshake ms",
        "revoked ms",
        "agent CPU %",
        "agent RSS MiB",
        "load",
        "anvil req/s",
        "req/block",
        "formed s"
    );
    println!(
        "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
        "", "worst", "median / worst", "worst", "mean / max", "mean / max", "", "idle", "anvil", ""
    );
    for s in sizes.as_array().into_iter().flatten() {
        let c = &s["cost"];
        let mib = |v: &Value| {
            v.as_f64()
                .map_or("-".into(), |x| format!("{:.1}", x / 1024.0))
        };
        println!(
            "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
            s["nodes"],
            num(&s["listedMs"], 0),
            format!(
                "{} / {}",
                num(&s["handshakeMedianMs"], 0),
                num(&s["convergenceMs"], 0)
            ),
            num(&s["revocationMs"], 0),
            format!(
                "{} / {}",
                num(&c["cpuPercentMean"], 2),
                num(&c["cpuPercentMax"], 2)
            ),
            format!("{} / {}", mib(&c["rssKiBMean"]), mib(&c["rssKiBMax"])),
            num(&c["loadAverage"], 1),
            num(&c["anvilRequestsPerSecondIdle"], 1),
            num(&c["anvilRequestsPerBlock"], 0),
            num(&s["formedSecs"], 1),
        );
    }
    for s in sizes.as_array().into_iter().flatten() {
        if let Some(c) = s.get("churn") {
            println!(
                "churn at {} nodes: {} nodes joined and left; ping between two steady nodes {}/{} ({}% loss)",
                s["nodes"],
                c["nodes"],
                c["pingsReceived"],
                c["pingsSent"],
                num(&c["lossPercent"], 2)
            );
        }
    }
    if let Some(a) = sizes
        .as_array()
        .and_then(|s| s.first())
        .and_then(|s| s["cost"]["agentRequestsPerBlock"].as_f64())
    {
        println!("chain requests per new block, by one agent's own counters: {a:.2}");
    }
}

/// The throughput and latency table: one row per implementation, 1 and 4 streams side by side, then the
/// RTT; the mesh's ratios; and a second table with each run's context switches and drops.
fn print_compared(r: &Value) {
    let num = |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
    let t = r.get("throughput");
    let l = r.get("latency");
    let run = |name: &str, s: u32| t.map_or(&Value::Null, |t| &t[format!("streams{s}")][name]);
    if let Some(v) = r.get("versions").and_then(Value::as_object) {
        let versions: Vec<String> = v
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
            .collect();
        println!("\nReferences: {}", versions.join("; "));
    }
    let secs = t.map_or("-".into(), |t| t["seconds"].to_string());
    println!(
        "\nThroughput, iperf3 TCP, {secs} s a run (CPU: the WireGuard process on the sending / receiving node, % of one core); ping RTT"
    );
    println!("{:<14} {:-^31} {:-^31}", "", " 1 stream ", " 4 streams ");
    println!(
        "{:<14}{} {:>18} {:>18}",
        "",
        format!(" {:>7} {:>8} {:>14}", "Gbit/s", "retrans", "CPU send/recv").repeat(2),
        "RTT idle (added)",
        "RTT busy (added)"
    );
    for name in IMPLEMENTATIONS {
        let mut row = format!("{name:<14}");
        for s in [1, 4] {
            let v = run(name, s);
            let cpu = format!(
                "{} / {}",
                num(&v["cpuSenderPct"], 0),
                num(&v["cpuReceiverPct"], 0)
            );
            row += &format!(
                " {:>7} {:>8} {:>14}",
                num(&v["gbps"], 2),
                v["retransmits"]
                    .as_u64()
                    .map_or("-".into(), |x| x.to_string()),
                cpu
            );
        }
        let rtt = l.map_or(&Value::Null, |l| &l[name]);
        for (rtt_key, added_key) in [("rttMs", "addedMs"), ("busyRttMs", "busyAddedMs")] {
            let added = match name {
                "bare" => String::new(),
                _ => rtt[added_key]
                    .as_f64()
                    .map_or(String::new(), |a| format!(" (+{a:.3})")),
            };
            row += &format!(" {:>18}", format!("{}{added}", num(&rtt[rtt_key], 3)));
        }
        println!("{row}");
    }
    let Some(t) = t else {
        return;
    };
    let ratio = |key: &str, s: u32| {
        let v = &t[format!("streams{s}")];
        let best = v["bestPeer"]
            .as_str()
            .filter(|_| key == "meshOverBest")
            .map_or(String::new(), |b| format!(" ({b})"));
        format!("{}{best}", num(&v[key], 2))
    };
    println!(
        "mesh / best peer: {} with 1 stream, {} with 4",
        ratio("meshOverBest", 1),
        ratio("meshOverBest", 4)
    );
    println!(
        "mesh / bare:      {} with 1 stream, {} with 4",
        ratio("meshOverBare", 1),
        ratio("meshOverBare", 4)
    );
    println!(
        "\nPer run: context switches of the WireGuard process (send / recv); drops on both sides, of the TUN interfaces and of UDP receive buffers"
    );
    println!("{:<14} {:-^39} {:-^39}", "", " 1 stream ", " 4 streams ");
    println!(
        "{:<14}{}",
        "",
        format!(" {:>19} {:>8} {:>10}", "ctx send / recv", "TUN", "UDP").repeat(2)
    );
    let count = |v: &Value| v.as_u64().map_or("-".into(), |x| x.to_string());
    for name in IMPLEMENTATIONS.into_iter().filter(|&n| n != "bare") {
        let mut row = format!("{name:<14}");
        for s in [1, 4] {
            let v = run(name, s);
            row += &format!(
                " {:>19} {:>8} {:>10}",
                format!(
                    "{} / {}",
                    count(&v["ctxSwitchesSender"]),
                    count(&v["ctxSwitchesReceiver"])
                ),
                count(&v["tunDrops"]),
                count(&v["udpRcvbufErrors"])
            );
        }
        println!("{row}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trace reads the agents' log timestamps as unix seconds, to the microsecond.
    #[test]
    fn log_timestamps_are_read_as_unix_seconds() {
        let t = rfc3339_secs("2026-11-23T06:54:56.179762Z").expect("a timestamp");
        assert!((t - 1_795_416_896.179_762).abs() < 1e-5, "{t}");
        assert_eq!(rfc3339_secs("INFO"), None);
    }
}
