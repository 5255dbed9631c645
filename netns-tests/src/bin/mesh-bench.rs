//! `mesh-bench`: the project's performance baseline, measured in one run on real topologies of network
//! namespaces with the release binaries, and printed as a table (and written as JSON).
//!
//! - Throughput: iperf3 TCP, 1 and 4 streams, through the mesh (two agents), a `wireguard-go` pair
//!   configured with `wg` (MTU 1420), and the bare LAN link between the same kind of namespaces.
//! - Added latency: ping RTT through the mesh minus the bare link's.
//! - Convergence for each size N: from the moment the chain holds node N's registration to the moment
//!   every other node reports a handshake with it.
//! - Revocation for each size N: from the moment the chain no longer holds seat N's record to the moment
//!   every other node has dropped it.
//! - Agent cost: RSS and CPU of an idle agent with 25 peers, and its chain requests per idle poll and per
//!   new block.
//! - Churn loss: ping loss between two steady nodes while 10 other nodes join and leave.
//!
//! Run as root with `scripts/bench` (which builds the release binaries), or:
//!
//! ```sh
//! cargo build --release -p p2p-agent -p meshctl -p dstack-simulator -p netns-tests --bins
//! sudo target/release/mesh-bench --json target/mesh-bench.json
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::Context as _;
use clap::Parser;
use mesh_api::{self, ConnectionKind, Peer};
use mesh_chain::contract::DstackClusterNFT;
use netns_tests::netns::in_netns;
use netns_tests::perf::{iperf3, ping_avg_ms};
use netns_tests::prelude::*;
use netns_tests::process::require_root;
use netns_tests::wg::{WireguardGo, test_key};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    about = "Measure dstack-mesh's throughput, latency, failover, convergence, revocation, churn and cost"
)]
struct Args {
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/mesh-bench.json")]
    json: PathBuf,
    /// Mesh sizes to measure convergence and revocation for.
    #[arg(long, value_delimiter = ',', default_value = "3,10,25")]
    sizes: Vec<usize>,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Nodes that join and leave during the churn measurement.
    #[arg(long, default_value_t = 10)]
    churn: usize,
    /// The agents' --leader-timeout in the failover measurement, in seconds (the agent's default).
    #[arg(long, default_value_t = 30)]
    leader_timeout: u64,
}

/// How long any one measurement may wait for the mesh before giving up.
const BOUND: Duration = Duration::from_secs(120);
/// How often the chain and the agents are polled while timing (the figures' resolution).
const POLL: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    require_root(&["ss", "iperf3", "wireguard-go", "nginx", "nft"]);
    for bin in ["p2p-agent", "meshctl", "dstack-simulator"] {
        workspace_bin(bin);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = json!({
        "machine": machine(),
        "agentPollIntervalMs": 200,
    });

    eprintln!("== throughput and latency (2 agents, a wireguard-go pair, the bare link)");
    report["throughput"] = throughput(&args);
    report["latency"] = latency();
    eprintln!("== the relay (UDP blocked, WireGuard through nginx as the dstack gateway)");
    report["relay"] = relay(&args);

    eprintln!(
        "== failover (3 nodes; the leader's node cut off; leader timeout {} s)",
        args.leader_timeout
    );
    report["failover"] = failover(args.leader_timeout);

    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        assert!(n >= 2, "a mesh size must be at least 2");
        eprintln!("== {n} nodes: convergence and revocation");
        let extra = if n == largest { 1 + args.churn } else { 0 };
        sizes.push(size_run(&rt, n, extra, args.churn)?);
    }
    report["sizes"] = Value::Array(sizes);

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

/// Nodes 1 and 2 run agents; nodes 3 and 4 a wireguard-go pair; the bare link is node 1 to node 2 on the LAN.
fn throughput(args: &Args) -> Value {
    let lan = Lan::new(4);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (_agents, _keys) = start_mesh(&cluster, 1..=2);
    let (_wg3, _wg4) = wireguard_go_pair(&lan);
    let mut out = json!({});
    for streams in [1u32, 4] {
        let bare = iperf3(
            lan.node(1),
            lan.node(2),
            &lan_ip(2).to_string(),
            streams,
            args.seconds,
        );
        let mesh = iperf3(
            lan.node(1),
            lan.node(2),
            &overlay_ip(2).to_string(),
            streams,
            args.seconds,
        );
        let go = iperf3(lan.node(3), lan.node(4), "10.0.2.2", streams, args.seconds);
        eprintln!(
            "   {streams} stream(s): mesh {mesh:.2}, wireguard-go {go:.2}, bare {bare:.2} Gbit/s"
        );
        out[format!("streams{streams}")] = json!({
            "meshGbps": mesh,
            "wireguardGoGbps": go,
            "bareGbps": bare,
            "meshOverWireguardGo": mesh / go,
            "meshOverBare": mesh / bare,
        });
    }
    out
}

/// A wireguard-go pair on LAN nodes 3 and 4, overlay 10.0.2.0/24.
fn wireguard_go_pair(lan: &Lan) -> (WireguardGo, WireguardGo) {
    let (k3, k4) = (test_key(31), test_key(32));
    let a = WireguardGo::start(
        lan.node(3),
        &k3,
        "10.0.2.1/24",
        &k4.public_key(),
        &format!("{}:51820", lan_ip(4)),
        "10.0.2.2/32",
    );
    let b = WireguardGo::start(
        lan.node(4),
        &k4,
        "10.0.2.2/24",
        &k3.public_key(),
        &format!("{}:51820", lan_ip(3)),
        "10.0.2.1/32",
    );
    (a, b)
}

/// Ping RTTs on the bare link, through the mesh, and through wireguard-go, on a fresh topology.
fn latency() -> Value {
    let lan = Lan::new(4);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (_agents, _keys) = start_mesh(&cluster, 1..=2);
    let (_wg3, _wg4) = wireguard_go_pair(&lan);
    let every = Duration::from_millis(20);
    // Warm up sessions and caches first.
    let go_peer = Ipv4Addr::new(10, 0, 2, 2);
    ping_avg_ms(lan.node(1), overlay_ip(2), 5, every);
    ping_avg_ms(lan.node(3), go_peer, 5, every);
    let bare = ping_avg_ms(lan.node(1), lan_ip(2), 200, every);
    let mesh = ping_avg_ms(lan.node(1), overlay_ip(2), 200, every);
    let go = ping_avg_ms(lan.node(3), go_peer, 200, every);
    eprintln!("   RTT: bare {bare:.3} ms, mesh {mesh:.3} ms, wireguard-go {go:.3} ms");
    json!({
        "bareRttMs": bare,
        "meshRttMs": mesh,
        "wireguardGoRttMs": go,
        "meshAddedMs": mesh - bare,
        "wireguardGoAddedMs": go - bare,
    })
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
        let gbps = iperf3(
            lan.node(1),
            lan.node(2),
            &overlay_ip(2).to_string(),
            streams,
            args.seconds,
        );
        out[format!("streams{streams}Gbps")] = json!(gbps);
    }
    eprintln!(
        "   relay: {:.2} Gbit/s (1 stream), {:.2} (4), RTT {rtt:.3} ms (+{:.3} over the bare link)",
        out["streams1Gbps"].as_f64().unwrap_or(0.0),
        out["streams4Gbps"].as_f64().unwrap_or(0.0),
        rtt - bare
    );
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

/// A cluster reader in the switch namespace (where anvil listens), polled from its own thread.
fn chain_watch(
    lan: &Lan,
    contract: Address,
    token: u64,
    want_record: bool,
) -> std::thread::JoinHandle<Instant> {
    let path = PathBuf::from("/var/run/netns").join(&lan.switch.name);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("switch namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let provider = ProviderBuilder::new()
                .connect_http(rpc_url().parse().expect("rpc url"))
                .erased();
            let c = DstackClusterNFT::new(contract, provider);
            let deadline = Instant::now() + BOUND;
            loop {
                let has = c
                    .getPeer(U256::from(token))
                    .call()
                    .await
                    .is_ok_and(|p| p.nonce > 0 && !p.wgPublicKey.is_zero());
                if has == want_record {
                    return Instant::now();
                }
                assert!(
                    Instant::now() < deadline,
                    "seat {token}'s record never {} on-chain",
                    if want_record { "appeared" } else { "left" }
                );
                tokio::time::sleep(POLL).await;
            }
        })
    })
}

/// Polls the agents' APIs until `done` holds for every one; returns when the last one first did.
async fn until_all(agents: &[&Agent<'_>], what: &str, done: impl Fn(&[Peer]) -> bool) -> Instant {
    let mut seen: Vec<Option<Instant>> = vec![None; agents.len()];
    let deadline = Instant::now() + BOUND;
    while seen.iter().any(Option::is_none) {
        let replies = futures::future::join_all(
            agents
                .iter()
                .map(|a| mesh_api::get::<Vec<Peer>>(&a.api_socket, "/v1/peers")),
        )
        .await;
        let now = Instant::now();
        for (s, r) in seen.iter_mut().zip(replies) {
            if s.is_none() && r.is_ok_and(|p| done(&p)) {
                *s = Some(now);
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every node got to: {what} within {BOUND:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    seen.into_iter()
        .flatten()
        .max()
        .expect("at least one agent")
}

fn healthy(peers: &[Peer], token: u64) -> bool {
    peers
        .iter()
        .any(|p| p.token_id == token && p.healthy && p.connection == ConnectionKind::Wireguard)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A mesh of `n`: nodes 1..n-1 converge, then node n joins (convergence) and is revoked (revocation). On
/// the largest size, `extra` more namespaces give the idle-cost node its 25th peer and the churn nodes.
fn size_run(
    rt: &tokio::runtime::Runtime,
    n: usize,
    extra: usize,
    churn: usize,
) -> anyhow::Result<Value> {
    let lan = Lan::new(n + extra);
    let cluster = Cluster::deploy_seats(&lan, n);
    let contract = Address::from_str(&cluster.contract)?;
    let (mut agents, mut keys) = start_mesh(&cluster, 1..n);
    eprintln!("   {} agents meshed", n - 1);

    // Convergence: node n joins.
    let watch = chain_watch(&lan, contract, n as u64, true);
    agents.push(Agent::start(&cluster, n, &[]));
    let token = n as u64;
    let done = rt.block_on(until_all(
        &agents.iter().filter(|a| a.index != n).collect::<Vec<_>>(),
        &format!("a handshake with node {n}"),
        |p| healthy(p, token),
    ));
    let in_block = watch.join().expect("chain watch");
    let convergence = done.saturating_duration_since(in_block);
    keys.push(agents[n - 1].key());
    eprintln!("   convergence: {:.0} ms", ms(convergence));
    let mut out = json!({
        "nodes": n,
        "convergenceMs": ms(convergence),
    });

    if extra > 0 {
        out["agentCost"] = agent_cost(rt, &lan, &cluster, &mut agents, n + 1)?;
        out["churn"] = churn_loss(rt, &lan, &cluster, &agents, n + 2, churn);
    }

    // Revocation of seat n.
    let watch = chain_watch(&lan, contract, token, false);
    cluster.meshctl(0, &["revoke", "--token", &token.to_string(), "--yes"]);
    let others: Vec<&Agent<'_>> = agents.iter().filter(|a| a.index != n).collect();
    let done = rt.block_on(until_all(&others, &format!("dropping seat {n}"), |p| {
        p.iter().all(|p| p.token_id != token)
    }));
    let cleared = watch.join().expect("chain watch");
    let revocation = done.saturating_duration_since(cleared);
    eprintln!("   revocation: {:.0} ms", ms(revocation));
    out["revocationMs"] = json!(ms(revocation));
    Ok(out)
}

/// Node `extra` joins so that node 1 has 25 peers (with the default sizes); then node 1 idles: its RSS,
/// CPU over 10 s, and chain requests per idle poll and per block (10 blocks mined 1 s apart).
fn agent_cost<'a>(
    rt: &tokio::runtime::Runtime,
    lan: &Lan,
    cluster: &'a Cluster<'a>,
    agents: &mut Vec<Agent<'a>>,
    extra: usize,
) -> anyhow::Result<Value> {
    cluster.mint(extra);
    agents.push(Agent::start(cluster, extra, &[]));
    let keys: Vec<Key> = agents.iter().map(Agent::key).collect();
    let index: Vec<usize> = agents.iter().map(|a| a.index).collect();
    // wait_full_mesh indexes keys by node; nodes are 1..=extra here, so that holds.
    assert_eq!(index, (1..=extra).collect::<Vec<_>>());
    wait_full_mesh(agents, &keys);
    let a = &agents[0];
    let peers = a.status().1.len();
    let pid = a.pid().context("agent 1 runs")?;
    std::thread::sleep(Duration::from_secs(2));

    let requests = |a: &Agent<'_>| -> anyhow::Result<u64> {
        let text = rt.block_on(mesh_api::get_text(&a.api_socket, "/metrics"))?;
        text.lines()
            .find_map(|l| l.strip_prefix("dstack_mesh_chain_requests_total "))
            .and_then(|v| v.trim().parse().ok())
            .context("no dstack_mesh_chain_requests_total in /metrics")
    };
    let idle_secs = 10.0;
    let (cpu0, req0, t0) = (cpu_ticks(pid)?, requests(a)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let (cpu1, req1, t1) = (cpu_ticks(pid)?, requests(a)?, Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let cpu_pct = (cpu1 - cpu0) as f64 / clock_ticks()? / secs * 100.0;
    let idle_rate = (req1 - req0) as f64 / secs;
    let rss_kib = rss_kib(pid)?;

    let blocks = 10u64;
    let (req2, t2) = (requests(a)?, Instant::now());
    for _ in 0..blocks {
        mine(lan);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (req3, t3) = (requests(a)?, Instant::now());
    let with_blocks = (req3 - req2) as f64;
    let per_block = (with_blocks - idle_rate * (t3 - t2).as_secs_f64()) / blocks as f64;
    eprintln!(
        "   idle agent with {peers} peers: RSS {rss_kib} KiB, CPU {cpu_pct:.2}%, {idle_rate:.1} chain requests/s idle, {per_block:.1} more per block"
    );
    Ok(json!({
        "peers": peers,
        "rssKiB": rss_kib,
        "cpuPercent": cpu_pct,
        "chainRequestsPerSecondIdle": idle_rate,
        "chainRequestsPerBlock": per_block,
    }))
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

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks() -> anyhow::Result<f64> {
    Ok(nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK unknown")? as f64)
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
    rt: &tokio::runtime::Runtime,
    lan: &Lan,
    cluster: &'a Cluster<'a>,
    steady: &[Agent<'a>],
    first: usize,
    count: usize,
) -> Value {
    let pinger = BackgroundPing::start(
        lan.node(1),
        overlay_ip(2),
        100_000,
        Duration::from_millis(20),
    );
    let t0 = Instant::now();
    let mut joiners = Vec::new();
    for i in first..first + count {
        cluster.mint(i);
        joiners.push(Agent::start(cluster, i, &[]));
    }
    let pair: Vec<&Agent<'_>> = steady.iter().filter(|a| a.index <= 2).collect();
    let tokens: Vec<u64> = (first..first + count).map(|i| i as u64).collect();
    rt.block_on(until_all(&pair, "adopting every churn node", |p| {
        tokens.iter().all(|&t| healthy(p, t))
    }));
    let joined = t0.elapsed();
    for &t in &tokens {
        cluster.meshctl(0, &["revoke", "--token", &t.to_string(), "--yes"]);
    }
    rt.block_on(until_all(&pair, "dropping every churn node", |p| {
        p.iter().all(|p| !tokens.contains(&p.token_id))
    }));
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

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    println!(
        "\n=== dstack-mesh benchmark ({} CPUs, kernel {}; agents poll every {} ms) ===",
        r["machine"]["cpus"],
        r["machine"]["kernel"].as_str().unwrap_or("?"),
        r["agentPollIntervalMs"]
    );
    println!("\nThroughput, iperf3 TCP (Gbit/s)");
    println!(
        "{:<10} {:>8} {:>14} {:>8} {:>16} {:>11}",
        "streams", "mesh", "wireguard-go", "bare", "mesh/wg-go", "mesh/bare"
    );
    for s in [1, 4] {
        let t = &r["throughput"][format!("streams{s}")];
        println!(
            "{:<10} {:>8} {:>14} {:>8} {:>16} {:>11}",
            s,
            f(&t["meshGbps"]),
            f(&t["wireguardGoGbps"]),
            f(&t["bareGbps"]),
            f(&t["meshOverWireguardGo"]),
            f(&t["meshOverBare"])
        );
    }
    let l = &r["latency"];
    println!(
        "\nLatency, ping RTT (ms): bare {:.3}, mesh {:.3} (+{:.3}), wireguard-go {:.3} (+{:.3})",
        l["bareRttMs"].as_f64().unwrap_or(0.0),
        l["meshRttMs"].as_f64().unwrap_or(0.0),
        l["meshAddedMs"].as_f64().unwrap_or(0.0),
        l["wireguardGoRttMs"].as_f64().unwrap_or(0.0),
        l["wireguardGoAddedMs"].as_f64().unwrap_or(0.0)
    );
    let relay = &r["relay"];
    let direct = |s: &str| r["throughput"][s]["meshGbps"].as_f64().unwrap_or(0.0);
    println!(
        "\nThe relay (UDP blocked; through nginx as the gateway): {} Gbit/s with 1 stream ({:.0}% of direct), {} with 4 ({:.0}%); RTT {} ms (+{} over the bare link; direct +{:.3})",
        f(&relay["streams1Gbps"]),
        100.0 * relay["streams1Gbps"].as_f64().unwrap_or(0.0) / direct("streams1"),
        f(&relay["streams4Gbps"]),
        100.0 * relay["streams4Gbps"].as_f64().unwrap_or(0.0) / direct("streams4"),
        f(&relay["rttMs"]),
        f(&relay["addedMs"]),
        l["meshAddedMs"].as_f64().unwrap_or(0.0)
    );
    let fo = &r["failover"];
    println!(
        "\nFailover (3 nodes, the leader's node cut off, leader timeout {} s): seat 2 leads on-chain after {:.0} ms ({:.0} ms beyond the timeout); both agents report it after {:.0} ms",
        fo["leaderTimeoutSecs"],
        fo["onChainMs"].as_f64().unwrap_or(0.0),
        fo["beyondTimeoutMs"].as_f64().unwrap_or(0.0),
        fo["reportedMs"].as_f64().unwrap_or(0.0)
    );
    println!(
        "\n{:<8} {:>18} {:>16}",
        "nodes", "convergence (ms)", "revocation (ms)"
    );
    for s in r["sizes"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:>18.0} {:>16.0}",
            s["nodes"],
            s["convergenceMs"].as_f64().unwrap_or(0.0),
            s["revocationMs"].as_f64().unwrap_or(0.0)
        );
        if let Some(c) = s.get("agentCost") {
            println!(
                "  idle agent with {} peers: RSS {} KiB, CPU {}%, chain requests {}/s idle and {} per new block",
                c["peers"],
                c["rssKiB"],
                f(&c["cpuPercent"]),
                f(&c["chainRequestsPerSecondIdle"]),
                f(&c["chainRequestsPerBlock"])
            );
        }
        if let Some(c) = s.get("churn") {
            println!(
                "  churn: {} nodes joined and left; ping between two steady nodes {}/{} ({}% loss)",
                c["nodes"],
                c["pingsReceived"],
                c["pingsSent"],
                f(&c["lossPercent"])
            );
        }
    }
}
