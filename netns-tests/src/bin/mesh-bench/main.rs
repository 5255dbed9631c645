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
//! - Policy: throughput and RTT with 100 grants between seats in force, against none, on one pair.
//! - Added latency: ping RTT through the mesh and each reference, minus the bare link's, with pings 20 ms
//!   apart (idle CPUs, whose wake-ups dominate on a VM), 0.5 ms apart (busy CPUs), and 10 ms apart while one
//!   iperf3 stream runs through the same tunnel (under load); and, with `perf stat`, the system calls and
//!   context switches of both WireGuard sides per busy round trip: where the time goes.
//! - UDP: the highest rate of one iperf3 UDP stream (1,372-byte datagrams) that arrives with under 1 % loss,
//!   through the mesh, each reference and the bare link, and the mesh's over its TCP rate.
//! - The relay: throughput and RTT between two agents whose UDP is blocked, through nginx as the gateway.
//! - NAT traversal: two agents behind slirp4netns with coturn for STUN: the time until they punch a direct
//!   path, throughput and RTT punched, relayed, on a plain LAN, and through slirp4netns with no tunnel; and
//!   how long a NAT that restarts cuts them off.
//! - Peer relays: two agents behind symmetric NATs through a member that relays for them, against the
//!   gateway's relay and a direct path: throughput, added RTT, the relays' CPU per Gbit forwarded, and the
//!   pings lost each time the relay in use is killed.
//! - Failover: how long until a cut-off leader is replaced on-chain, and reported by the others.
//! - The leader port: round trips (mean, p99) and one iperf3 stream to the leader's service, directly and
//!   through `--leader-port`, from a follower over the mesh and on the leader itself, with the CPU of the
//!   agent that forwards.
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
//! - Trace: one join at `--trace-nodes` (50), through every node's JSON log, by the `event` its lines name:
//!   when each read the block, added the peer, initiated, got a session, and showed it on its API;
//!   initiations the newcomer dropped, and WireGuard's retries.
//!
//! - Thousand (`--thousand`, 1,000 seats on a /16): one real agent joins a cluster whose other members are
//!   simulated in this process, each with the agent's own follower, membership, attestation and plan code
//!   on anvil's WebSocket and a boringtun peer on a UDP socket: a full read's cost, RPC requests per idle
//!   block and per join, block to each member's applied view (median, p99, worst), the join storm of
//!   handshakes toward the newcomer (cookies, retries), what verifying quotes costs (cold, kept, at the
//!   join), and the agent's RSS, idle CPU and time to handshake with all.
//!
//! `--sections` picks some of them (`throughput,latency,udp,offloads,policy,relay,nat,peer-relay,failover,leader-port,sizes,trace,thousand`,
//! all by default).
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
//!
//! Layout:
//! - one module per section: `throughput` and `latency` (on the LAN of `topology`), `offloads`, `relay`,
//!   `nat`, `failover`, `sizes` (with `cost` and `churn`), `trace` and `thousand` (with its simulated
//!   `members` and their `followers`);
//! - `tunnel`: one implementation between two nodes, measured with what a run costs its WireGuard sides;
//!   `references`: the WireGuards the mesh is compared with;
//! - `report`: what a run measured, typed, written once as the JSON; `table`: what is printed from it.

mod churn;
mod core_each;
mod cost;
mod failover;
mod latency;
mod leader_port;
mod nat;
mod offloads;
mod peer_relay;
mod policy;
mod references;
mod relay;
mod report;
mod sizes;
mod table;
mod thousand;
mod throughput;
mod topology;
mod trace;
mod tunnel;
mod udp;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use netns_tests::prelude::*;
use netns_tests::run::process::require_root;

use crate::report::{Machine, Named, Report};

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
    /// Also record both WireGuard sides of each implementation with `perf record -g` during the latency
    /// section's counted busy pings, into `<DIR>/<name>.data` (read with `perf report -i`): where a round
    /// trip's CPU time goes.
    #[arg(long, value_name = "DIR")]
    perf_record: Option<PathBuf>,
    /// The seats of the thousand section: one agent and this many less one simulated members.
    #[arg(long, default_value_t = 1000)]
    thousand: usize,
    /// The seats of the control-plane section, every one registered on the chain.
    #[arg(long, default_value_t = 10_000)]
    control_plane_seats: usize,
    /// How many of the control-plane section's members follow the cluster in this process.
    #[arg(long, default_value_t = 50)]
    control_plane_sample: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Nodes that join and leave during the churn measurement.
    #[arg(long, default_value_t = 10)]
    churn: usize,
    /// The agents' --leader-timeout in the failover measurement, in seconds (the agent's default on a chain
    /// that makes a block every second, as the bench's anvil does).
    #[arg(long, default_value_t = 10)]
    leader_timeout: u64,
    /// What to measure, comma-separated (the order given does not matter).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "throughput,latency,udp,offloads,policy,relay,nat,peer-relay,failover,leader-port,sizes,trace,thousand"
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
    /// Ping RTT through the same: idle, busy, and under one iperf3 stream.
    Latency,
    /// The highest iperf3 UDP rate carried with under 1 % loss through the same.
    Udp,
    /// Throughput through the mesh with each kernel offload turned off in turn: what each is worth.
    Offloads,
    /// Throughput and RTT with 100 grants between seats in force, against none.
    Policy,
    /// Throughput and RTT over the relay.
    Relay,
    /// Hole punching behind slirp4netns: time to direct; throughput and RTT of each way.
    Nat,
    /// A pair behind symmetric NATs through a peer relay, against the gateway's relay: throughput, RTT, the
    /// relays' CPU per Gbit, the time to move when the relay in use is killed.
    PeerRelay,
    /// Leader failover.
    Failover,
    /// The leader port against a direct connection.
    LeaderPort,
    /// Convergence, revocation and cost for each `--sizes`; churn on 25 nodes.
    Sizes,
    /// One join at `--trace-nodes`, traced through every node's log.
    Trace,
    /// One agent joining a cluster of `--thousand` seats whose other members are simulated in-process.
    Thousand,
    /// A cluster of `--control-plane-seats` seats (10,000) on the chain, `--control-plane-sample` of whose
    /// members follow it in-process with the agent's control plane and no tunnels: a join's cost at each
    /// member and at the provider. Not among the defaults: registering 10,000 seats takes a while.
    ControlPlane,
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

/// How long any one measurement may wait for the mesh before giving up.
const BOUND: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let on = |section| args.sections.contains(&section);
    let compared = on(Section::Throughput) || on(Section::Latency) || on(Section::Udp);
    let references = if compared {
        references::installed(&args)?
    } else {
        Vec::new()
    };
    let mut tools = Vec::new();
    if compared {
        tools.extend(["ss", "iperf3", "wireguard-go"]);
    }
    if on(Section::Latency) {
        tools.push("perf");
    }
    if on(Section::Offloads) || on(Section::Policy) {
        tools.extend(["ss", "iperf3"]);
    }
    if on(Section::Relay) {
        tools.extend(["ss", "iperf3", "nginx", "nft"]);
    }
    if on(Section::Nat) {
        tools.extend(["ss", "iperf3", "nginx", "nft", "slirp4netns", "turnserver"]);
    }
    if on(Section::PeerRelay) {
        tools.extend(["ss", "iperf3", "nginx", "nft", "turnserver"]);
    }
    if on(Section::Failover) {
        tools.push("nft");
    }
    if on(Section::LeaderPort) {
        tools.extend(["ss", "iperf3"]);
    }
    require_root(&tools);
    for bin in ["p2p-agent", "meshctl", "dstack-simulator"] {
        workspace_bin(bin);
    }
    let mut report = Report {
        machine: Machine::this(),
        sizes_follow: args.follow.describe(),
        ..Report::default()
    };

    if compared {
        eprintln!(
            "== throughput and latency (2 agents; gotatun, boringtun-cli and wireguard-go pairs; the bare link)"
        );
        let versions = Named(references.iter().map(|r| (r.name(), r.version())).collect());
        eprintln!("   references: {versions}");
        report.versions = Some(versions);
        (report.latency, report.throughput, report.udp) = topology::measure(
            &args,
            &references,
            &topology::Compared {
                latency: on(Section::Latency),
                throughput: on(Section::Throughput),
                udp: on(Section::Udp),
            },
        );
    }
    if on(Section::Offloads) {
        eprintln!("== the mesh with its offloads turned off in turn (2 agents)");
        report.offloads = Some(offloads::offloads(&args));
    }
    if on(Section::Policy) {
        eprintln!(
            "== grants between seats: {} rules in force against none (2 agents)",
            policy::RULES
        );
        report.policy = Some(policy::policy(&args));
    }
    if on(Section::Relay) {
        eprintln!("== the relay (UDP blocked, WireGuard through nginx as the dstack gateway)");
        report.relay = Some(relay::relay(&args));
    }
    if on(Section::Nat) {
        eprintln!(
            "== NAT traversal (2 agents behind slirp4netns, coturn for STUN, nginx as the gateway)"
        );
        report.nat = Some(nat::nat(&args));
    }
    if on(Section::PeerRelay) {
        eprintln!(
            "== peer relays (2 agents behind symmetric NATs, 2 relaying on the switch, nginx as the gateway)"
        );
        report.peer_relay = Some(peer_relay::peer_relay(&args));
    }
    if on(Section::Failover) {
        eprintln!(
            "== failover (3 nodes; the leader's node cut off; leader timeout {} s)",
            args.leader_timeout
        );
        report.failover = Some(failover::failover(args.leader_timeout));
    }
    if on(Section::LeaderPort) {
        eprintln!("== the leader port against a direct connection (2 agents, seat 1 leading)");
        report.leader_port = Some(leader_port::leader_port(&args));
    }
    if on(Section::Sizes) {
        report.sizes = Some(sizes::measure_all(&args)?);
    }
    if on(Section::Trace) {
        eprintln!(
            "== one join at {} nodes, traced; {}",
            args.trace_nodes,
            args.follow.describe()
        );
        report.trace = Some(trace::join(args.trace_nodes, args.follow)?);
    }
    if on(Section::Thousand) {
        eprintln!(
            "== {} seats on a /16: one agent, and simulated members in this process",
            args.thousand
        );
        report.thousand = Some(thousand::measure(args.thousand)?);
    }
    if on(Section::ControlPlane) {
        eprintln!(
            "== {} seats on the chain, {} of whose members follow it in this process (no tunnels)",
            args.control_plane_seats, args.control_plane_sample
        );
        report.control_plane = Some(thousand::control_plane::measure(
            args.control_plane_seats,
            args.control_plane_sample,
        )?);
    }

    table::print_table(&report);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
