//! The thousand section: a cluster of `--thousand` seats (1,000) on a /16, measured on two cores without
//! running a thousand agents. One real agent (node 1, the last seat) joins a cluster whose other members
//! each are, in this process:
//! - a simulated CVM whose seat is minted, bound and registered as an agent's would be ([`members`]);
//! - the agent's follower, membership, attestation and plan code on anvil's WebSocket ([`followers`]);
//! - a simulated WireGuard peer, a boringtun `Tunn` on its own UDP socket ([`netns_tests::in_process::swarm`]), which
//!   initiates toward the newcomer as soon as its member's plan holds it: the join storm.
//!
//! It reports what a full read of the cluster costs, the RPC requests per idle block and per join, the time
//! from the newcomer's block to each member's applied view (median, p99, worst), how the newcomer absorbs
//! the storm (cookie replies, retried initiations, time to each handshake), and what the agent with 999
//! peers costs (RSS, idle CPU, time to configure and handshake with all of them).

pub(crate) mod control_plane;
mod followers;
mod members;

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider as _;
use anyhow::Context as _;
use mesh_attest::cli::TrustArgs;
use mesh_chain::contract::DstackClusterNFT;
use mesh_chain::follow::{Anchors, FollowConfig, Follower};
use mesh_chain::heads::Heads;
use mesh_chain::redact::RedactedUrl;
use netns_tests::in_process::swarm::{Swarm, SwarmPeer};
use netns_tests::measure::perf::{clock_ticks, cpu_ticks};
use netns_tests::prelude::*;
use netns_tests::system::cluster::Layout;
use netns_tests::system::lan::{SWITCH_IP, rpc_url, ws_url};
use p2p_agent::attestation::Checker;
use p2p_agent::tasks::chain::attest::Attestor;

use crate::cost::{chain_counters, mine, rss_kib};
use crate::report::{Stat, Thousand, ThousandAttestation};
use crate::{BOUND, ms};

/// The first port of the swarm's peers, on the switch's address.
const SWARM_PORTS: u16 = 20_000;

/// Blocks mined for the idle measurements, one a second.
const IDLE_BLOCKS: u64 = 10;

/// Measures a cluster of `nodes` seats: `nodes - 1` simulated members and one agent.
pub(crate) fn measure(nodes: usize) -> anyhow::Result<Thousand> {
    anyhow::ensure!(
        (3..=10_000).contains(&nodes),
        "--thousand: {nodes} seats cannot be measured; give 3 to 10000"
    );
    let others = nodes - 1;
    let lan = Lan::new(1);
    let cluster = Cluster::deploy_unminted(&lan, &layout(nodes));
    let contract = Address::from_str(&cluster.contract)?;
    let rt = switch_runtime(&lan.switch.name)?;
    let swarm = Arc::new(run_on(&rt, Swarm::bind(SWITCH_IP, SWARM_PORTS, others))?);
    let (members, register_secs) = register(&rt, &cluster, contract, swarm.peers())?;

    let (view, attestor, reads) = read_and_attest(&rt, &cluster, contract, others)?;
    eprintln!(
        "   {others} followers: the agent's follower, membership, attestation and plan code, on anvil's WebSocket"
    );
    let t = Instant::now();
    let ws: alloy::transports::http::reqwest::Url = ws_url().parse()?;
    let fleet = {
        let _entered = rt.enter();
        followers::Fleet::start(&members, &view, &attestor, contract, &ws, Some(&swarm))
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let seen = fleet.seen();
        if let Some(failed) = seen.iter().find_map(|s| s.failed.as_ref()) {
            anyhow::bail!("a follower stopped: {failed}");
        }
        let ready = seen.iter().filter(|s| s.ready).count();
        if ready == others {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ready} of {others} followers were following after 900 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let followers_secs = t.elapsed().as_secs_f64();
    eprintln!("   followers following {followers_secs:.0} s after they started");

    let idle = idle_requests(&lan, &fleet);
    eprintln!(
        "   idle: anvil {:.1} requests/s without blocks (the followers' safety polls), {:.1} per block beyond that; each follower {:.3} per block, and {:.3} ms of CPU",
        idle.anvil_per_second,
        idle.anvil_per_block,
        idle.follower_per_block,
        idle.cpu_ms_per_member_per_block
    );

    let joined = join(&rt, &lan, &cluster, &fleet, &swarm, contract, nodes)?;
    drop(fleet);
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(figures(
        nodes,
        register_secs,
        &reads,
        followers_secs,
        &idle,
        joined,
    ))
}

/// A cluster of `seats` seats on a /16, none minted yet.
fn layout(seats: usize) -> Layout {
    Layout {
        prefix: "10.1.0.0/16",
        tokens: vec![seats as u64],
        releases: Vec::new(),
        apps: Vec::new(),
    }
}

/// Mints and registers a member of `cluster` per record of `peers`, each a simulated CVM: the members, and
/// the seconds it took.
fn register(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster<'_>,
    contract: Address,
    peers: Vec<SwarmPeer>,
) -> anyhow::Result<(Vec<members::Member>, f64)> {
    let others = peers.len();
    eprintln!(
        "   {others} members: simulated CVMs, each minted, bound and registered, {} at once",
        members::AT_ONCE
    );
    let t = Instant::now();
    let configs = (1..=others)
        .map(|i| cluster.instance_config(&format!("member-{i}")))
        .collect();
    let members = run_on(rt, async move {
        members::register_all(configs, &peers, contract).await
    })?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!("   {others} members registered in {secs:.0} s");
    Ok((members, secs))
}

/// What a full read costs at this size, and what judging every seat's evidence costs an agent.
struct Reads {
    first_read: (Duration, u64),
    later_read: (Duration, u64),
    cold: Duration,
    kept: Duration,
    checked: u64,
    verified: usize,
}

impl Reads {
    /// Milliseconds per seat checked anew, of a pass that took `d`.
    fn per_seat(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0 / self.checked.max(1) as f64
    }
}

/// Reads the cluster as a newcomer's follower does, twice, and judges every seat's evidence twice: the
/// view, the attestor that judged it, and what each cost.
fn read_and_attest(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster<'_>,
    contract: Address,
    others: usize,
) -> anyhow::Result<(mesh_chain::view::ChainView, Attestor, Reads)> {
    // What a full read costs at this size: the first, which checks every record's proof, and a later one,
    // which finds nothing new. Then what judging every seat's evidence costs an agent, as it does it: the
    // first pass verifies each quote, a later one finds every verdict kept.
    let trust = TrustArgs {
        tdx_root_ca: Some(cluster.tdx_root_ca.clone()),
        tdx_collateral_file: Some(cluster.tdx_collateral.clone()),
        pccs_url: String::new(),
        allow_tcb_status: Vec::new(),
    };
    let attestor = Attestor::new(
        Checker::new(trust.trust()?, trust.tcb_statuses()),
        trust.collateral(None, None)?,
        Duration::from_secs(60),
        Vec::new(),
        RedactedUrl::new(&rpc_url().parse()?),
    );
    let (view, first_read, later_read, attestor, passes) = run_on(rt, async move {
        let reader = mesh_chain::rpc::reader(&rpc_url().parse()?).await?;
        let t = Instant::now();
        let config = FollowConfig {
            confirmations: 0,
            full_read_every: Duration::from_secs(3600),
        };
        let mut f = Follower::start(reader, contract, config, None, &Anchors::default()).await?;
        let first = (t.elapsed(), f.requests);
        let (t, before) = (Instant::now(), f.requests);
        f.full_read().await?;
        let later = (t.elapsed(), f.requests - before);
        let view = f.view().clone();
        let mut attestor = attestor;
        let t = Instant::now();
        let verdicts = attestor.pass(&view, Some(&mut f)).await;
        let cold = t.elapsed();
        let checked = attestor.checked_anew();
        let t = Instant::now();
        let same = attestor.pass(&view, Some(&mut f)).await;
        let same_inputs = t.elapsed();
        attestor.walk_next_pass();
        let t = Instant::now();
        let again = attestor.pass(&view, Some(&mut f)).await;
        let kept = t.elapsed();
        anyhow::ensure!(
            again == verdicts && same == verdicts && attestor.checked_anew() == checked,
            "a second pass over the same seats checked {} anew",
            attestor.checked_anew() - checked
        );
        eprintln!(
            "   attestation: a pass whose inputs are the last one's (a block with no new binding) {:.3} ms",
            ms(same_inputs)
        );
        let admitted = verdicts.values().filter(|a| a.is_verified()).count();
        anyhow::Ok((
            view,
            first,
            later,
            attestor,
            (cold, kept, checked, admitted),
        ))
    })?;
    anyhow::ensure!(
        view.records.len() == others,
        "the first full read believed {} records of {others}",
        view.records.len()
    );
    eprintln!(
        "   a full read of {others} records: the first {:.0} ms ({} requests, every proof checked), a later one {:.0} ms ({} requests)",
        ms(first_read.0),
        first_read.1,
        ms(later_read.0),
        later_read.1
    );
    let (cold, kept, checked, verified) = passes;
    let reads = Reads {
        first_read,
        later_read,
        cold,
        kept,
        checked,
        verified,
    };
    anyhow::ensure!(
        verified == others,
        "only {verified} of {others} members' evidence verified"
    );
    let per_seat = |d: Duration| reads.per_seat(d);
    eprintln!(
        "   attestation: the first pass over {others} seats {:.0} ms ({:.3} ms a seat, {checked} quotes verified), a later one {:.1} ms ({:.1} µs a seat, every verdict kept)",
        ms(cold),
        per_seat(cold),
        ms(kept),
        per_seat(kept) * 1000.0
    );

    Ok((view, attestor, reads))
}

/// What the newcomer's join cost the members and the agent.
struct Joined {
    mint: Window,
    bound_by_all: bool,
    join: Window,
    heard: Stat,
    heard_to_applied: Stat,
    applied: Stat,
    applied_by_all: bool,
    cpu_ms_per_member: f64,
    subscribed: usize,
    tick_errors: u64,
    handshake: Stat,
    handshaken_by_all: bool,
    cookie_replies: u64,
    retries: u64,
    unknown: u64,
    listed: Option<f64>,
    handshaken: Option<f64>,
    cost: AgentCost,
    binding_pass: Stat,
    admitting: Stat,
    checked_anew: u64,
    agent_first_pass: Option<(f64, u64)>,
}

/// The newcomer (seat `nodes`) is minted and bound, then its agent starts and registers: what each step
/// cost the members, how fast they applied it, and what the agent costs once it meshed with all.
fn join(
    rt: &tokio::runtime::Runtime,
    lan: &Lan,
    cluster: &Cluster<'_>,
    fleet: &followers::Fleet,
    swarm: &Swarm,
    contract: Address,
    nodes: usize,
) -> anyhow::Result<Joined> {
    let others = nodes - 1;
    // The newcomer's seat is minted and bound: one block with its binding.
    let token = nodes as u64;
    fleet.watch(token);
    let url: alloy::transports::http::reqwest::Url = rpc_url().parse()?;
    let reader = run_on(rt, async move { mesh_chain::rpc::reader(&url).await })?;
    let head = || {
        let reader = reader.clone();
        run_on(rt, async move { reader.get_block_number().await })
    };
    let (before, block0) = (follower_requests(fleet), head()?);
    cluster.mint(1);
    let bound_by_all = wait_for(BOUND, || fleet.seen().iter().all(|s| s.bound.is_some()));
    std::thread::sleep(Duration::from_secs(1));
    let mint = Window {
        requests: (follower_requests(fleet) - before) as f64 / others as f64,
        blocks: head()? - block0,
    };

    // Its agent starts, configures its peers, registers: the block every member reacts to.
    let (before, block0) = (follower_requests(fleet), head()?);
    let cpu0 = cpu_ticks(std::process::id());
    let block = rt.spawn(record_block(contract, token));
    let started = Instant::now();
    let agent = Agent::builder(cluster)
        .config(AgentConfig::lan_ws)
        .ready_within(600)
        .start(1);
    let block = rt
        .block_on(block)
        .expect("the block watch panicked")
        .context("the newcomer's record never came in a block")?;
    let applied_by_all = wait_for(BOUND, || fleet.seen().iter().all(|s| s.applied.is_some()));
    let handshaken_by_all = wait_for(BOUND, || {
        swarm.stats().iter().all(|s| s.handshake_at.is_some())
    });
    let cpu = cpu_ticks(std::process::id()) - cpu0;
    let (listed, handshaken) = agent_progress(&agent, others, started);
    std::thread::sleep(Duration::from_secs(1));
    let join = Window {
        requests: (follower_requests(fleet) - before) as f64 / others as f64,
        blocks: head()? - block0,
    };
    // The bench's process: every member's follower, plan and simulated peer, and the block watch.
    let cpu_ms_per_member = cpu as f64 / clock_ticks() * 1000.0 / others as f64;
    let seen = fleet.seen();
    let subscribed = seen.iter().filter(|s| s.subscribed).count();
    let tick_errors: u64 = seen.iter().map(|s| s.tick_errors).sum();
    let storm = swarm.stats();
    // The block's moment: when the first of its announcements arrived, at a member or at the watch. anvil
    // announces a block to a thousand subscriptions one after another, so the last hears it later: a
    // delay a node pays at a busy RPC, measured here rather than hidden.
    let block = seen
        .iter()
        .filter_map(|s| s.heard)
        .fold(block, Instant::min);
    let after = |at: Option<Instant>| at.map(|a| ms(a.saturating_duration_since(block)));
    let heard = Stat::of(seen.iter().map(|s| after(s.heard)));
    let heard_to_applied = Stat::of(seen.iter().map(|s| match (s.heard, s.applied) {
        (Some(heard), Some(applied)) => Some(ms(applied.saturating_duration_since(heard))),
        _ => None,
    }));
    let applied = Stat::of(seen.iter().map(|s| after(s.applied)));
    let handshake = Stat::of(storm.iter().map(|s| after(s.handshake_at)));
    let cookie_replies: u64 = storm.iter().map(|s| u64::from(s.cookie_replies)).sum();
    let unknown: u64 = storm.iter().map(|s| u64::from(s.unknown_initiations)).sum();
    let retries: u64 = storm
        .iter()
        .map(|s| u64::from(s.initiations_sent.saturating_sub(1)))
        .sum();
    eprintln!(
        "   join: applied by {} of {others} members after its block, {}, {cpu_ms_per_member:.2} ms of CPU each; per member {:.2} requests for the mint ({} blocks), {:.2} for the agent's start ({} blocks); {subscribed} members subscribed, {tick_errors} ticks failed",
        applied.nodes,
        applied.brief(),
        mint.requests,
        mint.blocks,
        join.requests,
        join.blocks,
    );
    eprintln!(
        "   heard: the block announced to each member after the first, {}; from there to its applied view, {}",
        heard.brief(),
        heard_to_applied.brief()
    );
    eprintln!(
        "   storm: {} of {others} peers handshaken with the newcomer after its block, {}; {cookie_replies} cookie replies, {retries} retried initiations; {unknown} of the newcomer's initiations dropped before its peers knew it",
        handshake.nodes,
        handshake.brief()
    );

    let pass_ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let binding_pass = Stat::of(seen.iter().map(|s| pass_ms(s.binding_pass)));
    let admitting = Stat::of(seen.iter().map(|s| pass_ms(s.admitting_pass)));
    let checked_anew: u64 = seen
        .iter()
        .map(|s| s.binding_checked_anew + s.admitting_checked_anew)
        .sum();
    let agent_first_pass = agent_first_pass(&agent);
    eprintln!(
        "   attestation at the join: each member's pass that checked the newcomer's binding: {}; the one that admitted its record: {}; {checked_anew} quotes checked anew in the two ({:.2} a member); the agent's first pass over its {} peers {:.0} ms",
        binding_pass.brief(),
        admitting.brief(),
        checked_anew as f64 / others as f64,
        agent_first_pass.map_or(0, |p| p.1),
        agent_first_pass.map_or(f64::NAN, |p| p.0)
    );
    let cost = agent_cost(lan, &agent, swarm)?;
    report_cost(others, listed, handshaken, &cost);
    Ok(Joined {
        mint,
        bound_by_all,
        join,
        heard,
        heard_to_applied,
        applied,
        applied_by_all,
        cpu_ms_per_member,
        subscribed,
        tick_errors,
        handshake,
        handshaken_by_all,
        cookie_replies,
        retries,
        unknown,
        listed,
        handshaken,
        cost,
        binding_pass,
        admitting,
        checked_anew,
        agent_first_pass,
    })
}

/// The section's figures, from each step's.
fn figures(
    nodes: usize,
    register_secs: f64,
    reads: &Reads,
    followers_secs: f64,
    idle: &Idle,
    j: Joined,
) -> Thousand {
    let others = nodes - 1;
    let (first_read, later_read) = (reads.first_read, reads.later_read);
    let (cold, kept, verified) = (reads.cold, reads.kept, reads.verified);
    let per_seat = |d: Duration| reads.per_seat(d);
    let Joined {
        mint,
        bound_by_all,
        join,
        heard,
        heard_to_applied,
        applied,
        applied_by_all,
        cpu_ms_per_member,
        subscribed,
        tick_errors,
        handshake,
        handshaken_by_all,
        cookie_replies,
        retries,
        unknown,
        listed,
        handshaken,
        cost,
        binding_pass,
        admitting,
        checked_anew,
        agent_first_pass,
    } = j;
    Thousand {
        nodes,
        register_secs,
        first_full_read_ms: ms(first_read.0),
        first_full_read_requests: first_read.1,
        full_read_ms: ms(later_read.0),
        full_read_requests: later_read.1,
        followers_start_secs: followers_secs,
        idle_anvil_requests_per_second: idle.anvil_per_second,
        idle_anvil_requests_per_block: idle.anvil_per_block,
        idle_requests_per_follower_per_block: idle.follower_per_block,
        idle_cpu_ms_per_member_per_block: idle.cpu_ms_per_member_per_block,
        mint_requests_per_follower: mint.requests,
        mint_blocks: mint.blocks,
        bound_by_all,
        join_requests_per_follower: join.requests,
        join_blocks: join.blocks,
        heard,
        heard_to_applied,
        applied,
        applied_by_all,
        cpu_ms_per_member,
        subscribed_at_end: subscribed,
        tick_errors,
        handshake,
        handshaken_by_all,
        cookie_replies,
        retried_initiations: retries,
        unknown_initiations: unknown,
        agent_listed_secs: listed,
        agent_handshaken_secs: handshaken,
        agent_rss_kib: cost.rss_kib,
        agent_cpu_percent_idle: cost.cpu_percent,
        agent_probes_per_second_idle: cost.probes_per_second,
        agent_cpu_percent_watched: cost.watched_cpu_percent,
        agent_probes_per_second_watched: cost.watched_probes_per_second,
        agent_requests_per_block: cost.requests_per_block,
        attestation: ThousandAttestation {
            first_pass_ms: ms(cold),
            first_pass_ms_per_seat: per_seat(cold),
            verified,
            kept_pass_ms: ms(kept),
            kept_pass_us_per_seat: per_seat(kept) * 1000.0,
            binding_pass_ms: binding_pass,
            admitting_pass_ms: admitting,
            checked_anew_per_member: checked_anew as f64 / others as f64,
            agent_first_pass_ms: agent_first_pass.map(|p| p.0),
            agent_first_pass_seats: agent_first_pass.map(|p| p.1),
        },
    }
}

/// The agent's first attestation pass that verified quotes, from its log: how long it took, and the seats
/// it judged.
fn agent_first_pass(agent: &Agent<'_>) -> Option<(f64, u64)> {
    let line = agent
        .log_lines("checked the seats' attestation evidence")
        .into_iter()
        .next()?;
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("elapsed_ms")? as f64, field("seats")?))
}

/// A runtime whose threads all live in the namespace `ns` (where anvil and the swarm's addresses are): every
/// socket its tasks open is there. Work goes to it with `spawn`, never `block_on` on the caller's thread.
fn switch_runtime(ns: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    let ns = ns.to_owned();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || netns_tests::net::netns::enter(&ns))
        .build()?)
}

/// Runs `f` on one of `rt`'s threads, and waits for it here.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).expect("the task panicked")
}

/// Whether `done` came true within `bound`, looking every 50 ms.
fn wait_for(bound: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// When the first head whose block holds seat `token`'s record was announced on a subscription of its own:
/// the moment the members' subscriptions announced it too.
async fn record_block(contract: Address, token: u64) -> anyhow::Result<Instant> {
    let mut heads = Heads::subscribe(&ws_url().parse()?).await?;
    let reader = mesh_chain::rpc::reader(&rpc_url().parse()?).await?;
    let cluster = DstackClusterNFT::new(contract, reader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    loop {
        let announced = tokio::time::timeout_at(deadline, heads.next())
            .await
            .context("no head")?
            .context("the subscription dropped")?;
        let at = Instant::now();
        for head in announced {
            let peer = cluster
                .getPeer(U256::from(token))
                .block(head.number.into())
                .call()
                .await?;
            if peer.nonce > 0 && !peer.wgPublicKey.is_zero() {
                return Ok(at);
            }
        }
    }
}

/// The followers' chain requests so far, less their head polls (the safety poll's, by time, not by block).
fn follower_requests(fleet: &followers::Fleet) -> u64 {
    fleet.seen().iter().map(|s| s.requests - s.head_polls).sum()
}

/// The followers' requests over some blocks, per follower.
struct Window {
    requests: f64,
    blocks: u64,
}

/// How long the idle rate is counted: a safety poll every 500 s at a thousand members makes 2 a second, so
/// 30 s holds about 60 of them.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

struct Idle {
    anvil_per_second: f64,
    anvil_per_block: f64,
    follower_per_block: f64,
    /// The bench process's CPU per empty block, per member: what following one costs a node.
    cpu_ms_per_member_per_block: f64,
}

/// The requests reaching anvil over [`IDLE_WINDOW`] without blocks (once the members' one poll into the
/// silence has landed), then over [`IDLE_BLOCKS`] empty blocks beyond that rate; and the followers' own count
/// per block, less their head polls (the safety poll's, by time).
fn idle_requests(lan: &Lan, fleet: &followers::Fleet) -> Idle {
    // Each member looks into the silence after the last block once, a poll 15 s after it
    // (`mesh_chain::heads::Pace`): those land first, and the window counts what goes on after.
    std::thread::sleep(mesh_chain::heads::SAFETY_POLL + Duration::from_secs(2));
    let (rpc0, t0) = (lan.rpc_requests(), Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let (rpc1, t1) = (lan.rpc_requests(), Instant::now());
    let per_second = (rpc1 - rpc0) as f64 / (t1 - t0).as_secs_f64();
    let before = follower_requests(fleet);
    let cpu0 = cpu_ticks(std::process::id());
    let (rpc2, t2) = (lan.rpc_requests(), Instant::now());
    for _ in 0..IDLE_BLOCKS {
        mine(lan);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (rpc3, t3) = (lan.rpc_requests(), Instant::now());
    let cpu = cpu_ticks(std::process::id()) - cpu0;
    let followers = fleet.seen().len().max(1) as f64;
    Idle {
        anvil_per_second: per_second,
        anvil_per_block: ((rpc3 - rpc2) as f64
            - IDLE_BLOCKS as f64
            - per_second * (t3 - t2).as_secs_f64())
            / IDLE_BLOCKS as f64,
        follower_per_block: (follower_requests(fleet) - before) as f64
            / IDLE_BLOCKS as f64
            / followers,
        cpu_ms_per_member_per_block: cpu as f64 / clock_ticks() * 1000.0
            / IDLE_BLOCKS as f64
            / followers,
    }
}

/// Seconds from `started` until the agent's API listed `peers` peers, and until it had a handshake with
/// each; none when that did not happen within [`BOUND`].
fn agent_progress(agent: &Agent<'_>, peers: usize, started: Instant) -> (Option<f64>, Option<f64>) {
    let (mut listed, mut handshaken) = (None, None);
    let deadline = Instant::now() + BOUND;
    while handshaken.is_none() && Instant::now() < deadline {
        if let Ok(status) = agent.try_status() {
            let list = status["peers"].as_array().map_or(&[][..], Vec::as_slice);
            let at = started.elapsed().as_secs_f64();
            if list.len() >= peers {
                listed.get_or_insert(at);
            }
            let healthy = list
                .iter()
                .filter(|p| p["healthy"].as_bool() == Some(true))
                .count();
            if healthy >= peers {
                handshaken = Some(at);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (listed, handshaken)
}

struct AgentCost {
    rss_kib: u64,
    /// Idle, nothing reading its API: idle peers held to the idle bound.
    cpu_percent: f64,
    /// The agent's liveness probes the swarm answered, a second: what keeping 999 idle peers' health
    /// true costs in datagrams.
    probes_per_second: f64,
    /// The same while an application reads the API: every peer held to the peer timeout.
    watched_cpu_percent: f64,
    watched_probes_per_second: f64,
    requests_per_block: f64,
}

/// What the agent with every member as its peer costs, as the run goes.
fn report_cost(others: usize, listed: Option<f64>, handshaken: Option<f64>, cost: &AgentCost) {
    eprintln!(
        "   the agent with {others} peers: listed them {:.1} s and handshaken with all {:.1} s after it started; RSS {:.1} MiB, idle CPU {:.2}% ({:.0} liveness probes a second answered, each a datagram out and one back) with nothing reading its API, {:.2}% ({:.0} probes) while an application reads it; {:.2} chain requests per block",
        listed.unwrap_or(f64::NAN),
        handshaken.unwrap_or(f64::NAN),
        cost.rss_kib as f64 / 1024.0,
        cost.cpu_percent,
        cost.probes_per_second,
        cost.watched_cpu_percent,
        cost.watched_probes_per_second,
        cost.requests_per_block
    );
}

/// The agent's CPU over [`mesh_chain::heads::SAFETY_POLL`] (15 s), and the liveness probes the swarm answered
/// meanwhile, a second.
fn idle_window(pid: u32, swarm: &Swarm) -> (f64, f64) {
    let probes = || swarm.stats().iter().map(|s| s.probes_answered).sum::<u64>();
    let (c0, p0, t0) = (cpu_ticks(pid), probes(), Instant::now());
    std::thread::sleep(mesh_chain::heads::SAFETY_POLL);
    let (c1, p1, t1) = (cpu_ticks(pid), probes(), Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let cpu_percent = (c1 - c0) as f64 / clock_ticks() / secs * 100.0;
    (cpu_percent, (p1 - p0) as f64 / secs)
}

/// The agent's RSS and idle CPU, with the liveness probes it sent meanwhile: first while an application
/// reads its API (every peer watched), then once nothing has read it for
/// [`p2p_agent::tasks::mesh::READ_WATCHES`] (idle peers to the idle bound); and its own chain requests over
/// [`IDLE_BLOCKS`] empty blocks.
fn agent_cost(lan: &Lan, agent: &Agent<'_>, swarm: &Swarm) -> anyhow::Result<AgentCost> {
    let pid = agent.pid().context("the agent has exited")?;
    let read = Instant::now();
    agent.try_status().map_err(anyhow::Error::msg)?;
    std::thread::sleep(Duration::from_secs(5));
    let (watched_cpu_percent, watched_probes_per_second) = idle_window(pid, swarm);
    let unread = read + p2p_agent::tasks::mesh::READ_WATCHES + Duration::from_secs(5);
    std::thread::sleep(unread.saturating_duration_since(Instant::now()));
    let (cpu_percent, probes_per_second) = idle_window(pid, swarm);
    let rss_kib = rss_kib(pid)?;
    let (req0, polls0) = chain_counters(agent)?;
    for _ in 0..IDLE_BLOCKS {
        mine(lan);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (req1, polls1) = chain_counters(agent)?;
    Ok(AgentCost {
        rss_kib,
        cpu_percent,
        probes_per_second,
        watched_cpu_percent,
        watched_probes_per_second,
        requests_per_block: ((req1 - req0) - (polls1 - polls0)) as f64 / IDLE_BLOCKS as f64,
    })
}
