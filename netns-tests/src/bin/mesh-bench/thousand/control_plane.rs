//! The control-plane section: a cluster of `--control-plane-seats` seats (10,000), every one minted, bound and
//! registered on anvil as the thousand section's members are, and a sample of them (`--control-plane-sample`)
//! following it with the agent's follower, attestation and plan code in this process. No tunnels: what a
//! member pays for the others is its control plane, and that is what grows with the cluster.
//!
//! A newcomer then joins in two blocks, its binding and its record. For each, the section measures what
//! every sampled member spent (CPU, chain requests) and how soon it applied the change, and from that what
//! the whole cluster asks of its provider. The sample shares the bench's two cores, so a member's time to
//! apply is reported as measured and as it would be with its own core: the announcement's delay, plus the
//! member's own CPU and requests for the change.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::providers::Provider as _;
use anyhow::Context as _;
use netns_tests::in_process::node::SimulatedInstance;
use netns_tests::in_process::swarm::SwarmPeer;
use netns_tests::measure::perf::cpu_nanos;
use netns_tests::prelude::*;
use netns_tests::system::lan::{SWITCH_IP, rpc_url, ws_url};

use super::followers::{Fleet, Seen, Steps};
use super::{
    Reads, follower_requests, idle_requests, layout, members, read_and_attest, record_block,
    register, run_on, switch_runtime, wait_for,
};
use crate::cost::rss_kib;
use crate::report::{ControlPlane, ControlPlaneChange, Stat};
use crate::{BOUND, ms};

/// Tailscale's client applies a change to its peers in 0.11–0.15 ms at 10,000–250,000 peers (its
/// published netmap figures): the reference for a member's time per peer change.
pub(crate) const TAILSCALE_MS_PER_PEER_CHANGE: (f64, f64) = (0.11, 0.15);

/// Measures a cluster of `seats` seats, `sample` of whose members follow it.
pub(crate) fn measure(seats: usize, sample: usize) -> anyhow::Result<ControlPlane> {
    anyhow::ensure!(
        (10..=60_000).contains(&seats),
        "--control-plane-seats: {seats} seats cannot be measured; give 10 to 60000"
    );
    anyhow::ensure!(
        (1..seats).contains(&sample),
        "--control-plane-sample: {sample} members cannot follow a cluster of {seats}; give 1 to {}",
        seats - 1
    );
    let others = seats - 1;
    // anvil keeps the states of recent blocks and writes older ones to disk as JSON, a cost per block that
    // grows with the state: at thousands of seats, most of what registering them took.
    let lan = Lan::with_anvil_args(1, &["--prune-history", "64"]);
    let cluster = Cluster::deploy_unminted(&lan, &layout(seats));
    let contract = Address::from_str(&cluster.contract)?;
    let rt = switch_runtime(&lan.switch.name)?;
    let peers: Vec<SwarmPeer> = (0..others).map(record_peer).collect();
    let (members, register_secs) = register(&rt, &cluster, contract, peers)?;

    let (view, attestor, reads) = read_and_attest(&rt, &cluster, contract, others)?;
    let alone = change_alone(&view, &members[0]);
    eprintln!(
        "   one peer change planned and applied by a member alone, its data in cache: median {:.3} ms, worst {:.3} ms of {} runs (the fleet below shares one cache among {sample})",
        alone.median_ms.unwrap_or(f64::NAN),
        alone.max_ms.unwrap_or(f64::NAN),
        alone.nodes
    );
    let step = others / sample;
    let sampled: Vec<_> = members.iter().step_by(step).take(sample).cloned().collect();
    eprintln!(
        "   {sample} members (every {step}th) follow the cluster with the agent's follower, attestation and plan code"
    );
    let rss0 = rss_kib(std::process::id())?;
    let ws: alloy::transports::http::reqwest::Url = ws_url().parse()?;
    let fleet = {
        let _entered = rt.enter();
        Fleet::start(&sampled, &view, &attestor, contract, &ws, None)
    };
    drop((view, attestor));
    anyhow::ensure!(
        wait_for(Duration::from_secs(900), || fleet
            .seen()
            .iter()
            .all(|s| s.ready)),
        "the sampled followers were not all following after 900 s"
    );
    let rss1 = rss_kib(std::process::id())?;
    let bytes_per_seat = (rss1.saturating_sub(rss0) * 1024) as f64 / (sample * seats) as f64;
    eprintln!(
        "   memory: {:.0} bytes a seat at each member (the bench's RSS grew {:.0} MiB for {sample} members' views, verdicts and tables)",
        bytes_per_seat,
        (rss1.saturating_sub(rss0)) as f64 / 1024.0
    );
    let idle = idle_requests(&lan, &fleet);
    eprintln!(
        "   idle: each member {:.3} requests per block, {:.3} ms of CPU; anvil {:.1} requests/s from {sample} members",
        idle.follower_per_block, idle.cpu_ms_per_member_per_block, idle.anvil_per_second,
    );
    let round_trip = run_on(&rt, rpc_round_trip())?;
    let newcomer = cluster.instance_config("newcomer");
    let joined = join(&rt, &fleet, contract, seats, newcomer, round_trip)?;
    drop(fleet);
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(figures(
        seats,
        sample,
        register_secs,
        &reads,
        bytes_per_seat,
        idle.follower_per_block,
        idle.cpu_ms_per_member_per_block,
        round_trip,
        joined,
        alone,
    ))
}

/// How many times [`change_alone`] times the change.
const ALONE_RUNS: usize = 21;

/// One peer change at `member`, with nothing else running in the bench: the last seat of `view` joins and
/// leaves in turn, each a change planned and applied from the members of the view before. The fleet's own
/// figure shares the bench's cache among every sampled member, each walking its own copy of the cluster.
/// Prints the median of each step.
fn change_alone(view: &mesh_chain::view::ChainView, member: &members::Member) -> Stat {
    let with = Arc::new(view.clone());
    let mut without = view.clone();
    if let Some(last) = view
        .records
        .keys()
        .next_back()
        .filter(|t| **t != member.token)
    {
        without.records.remove(last);
    }
    let without = Arc::new(without);
    let table = mesh_wg::MemoryTable::default();
    let mut roster = None;
    super::followers::plan_and_apply(&without, member, &table, &mut roster);
    let mut steps = Vec::with_capacity(ALONE_RUNS);
    let took: Vec<f64> = (0..ALONE_RUNS)
        .map(|i| {
            let next = if i % 2 == 0 { &with } else { &without };
            let began = Instant::now();
            let (_, took) = super::followers::plan_and_apply(next, member, &table, &mut roster);
            steps.push(took);
            ms(began.elapsed())
        })
        .collect();
    eprintln!(
        "   one peer change at a member alone (a seat joins and leaves in turn), step by step (median ms): {}",
        step_medians(&steps)
    );
    Stat::of(took.into_iter().map(Some))
}

/// The median of each step of `steps`, named.
fn step_medians(steps: &[Steps]) -> String {
    let medians = Steps::NAMES.iter().enumerate().map(|(i, name)| {
        let step = Stat::of(steps.iter().map(|s| Some(ms(s.0[i]))));
        format!("{name} {:.3}", step.median_ms.unwrap_or(f64::NAN))
    });
    medians.collect::<Vec<_>>().join(", ")
}

/// A member's record without a tunnel: a WireGuard key of its own, and an endpoint nobody dials.
fn record_peer(i: usize) -> SwarmPeer {
    // Clamping clears the low bits of the first byte: the index goes after it.
    let mut seed = [0u8; 32];
    seed[1..9].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    let secret = boringtun::x25519::StaticSecret::from(seed);
    SwarmPeer {
        public_key: boringtun::x25519::PublicKey::from(&secret).to_bytes(),
        endpoint: std::net::SocketAddr::from((SWITCH_IP, 20_000 + (i % 40_000) as u16)),
    }
}

/// The median of 20 `eth_blockNumber` round trips to anvil, idle: what each of a member's requests costs it
/// when it has the provider and a core to itself.
async fn rpc_round_trip() -> anyhow::Result<Duration> {
    let reader = mesh_chain::rpc::reader(&rpc_url().parse()?).await?;
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        reader.get_block_number().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// The newcomer's two blocks, each measured at every sampled member.
struct Joined {
    binding: Measured,
    record: Measured,
    /// When each member applied the record, from the block; and from its announcement to the member.
    applied: Stat,
    heard: Stat,
    /// Each member's time from the record's block to its applied view, with its own core: the announcement's
    /// delay to it, plus the median member's CPU and requests for the change at the idle round trip.
    own_core: Stat,
    apply: Stat,
    all_applied: bool,
}

/// What one change cost each sampled member.
struct Measured {
    cpu_ms: f64,
    requests: f64,
    done_by_all: bool,
}

/// Over a change: the bench's CPU and the followers' requests from `before`, once `done` holds for every
/// sampled member, per member.
fn measured(fleet: &Fleet, before: (u64, u64), done: impl Fn(&Seen) -> bool) -> Measured {
    let done_by_all = wait_for(BOUND, || fleet.seen().iter().all(&done));
    let n = fleet.seen().len() as f64;
    let cpu = cpu_nanos(std::process::id()) - before.0;
    Measured {
        cpu_ms: cpu as f64 / 1e6 / n,
        requests: (follower_requests(fleet) - before.1) as f64 / n,
        done_by_all,
    }
}

fn join(
    rt: &tokio::runtime::Runtime,
    fleet: &Fleet,
    contract: Address,
    seats: usize,
    config: dstack_simulator::platform::SimulatorConfig,
    round_trip: Duration,
) -> anyhow::Result<Joined> {
    let token = seats as u64;
    fleet.watch(token);
    let one = Arc::new(run_on(rt, members::registrar(contract, 1))?);
    let instance = Arc::new(run_on(rt, SimulatedInstance::start_with(config)));

    // Its seat minted and bound: every member checks its quote.
    let before = (cpu_nanos(std::process::id()), follower_requests(fleet));
    run_on(rt, {
        let (one, instance) = (one.clone(), instance.clone());
        async move { one.bind(&instance).await }
    })?;
    let binding = measured(fleet, before, |s| s.binding_pass.is_some());
    std::thread::sleep(Duration::from_secs(1));

    // Its record: every member admits it and plans it as a peer.
    let before = (cpu_nanos(std::process::id()), follower_requests(fleet));
    let block = rt.spawn(record_block(contract, token));
    let peer = record_peer(seats);
    run_on(rt, async move { one.record(&instance, &peer).await })?;
    let record = measured(fleet, before, |s| s.applied.is_some());
    let block = rt
        .block_on(block)
        .expect("the block watch panicked")
        .context("the newcomer's record never came in a block")?;
    let seen = fleet.seen();
    let block = seen
        .iter()
        .filter_map(|s| s.heard)
        .fold(block, Instant::min);
    let after = |at: Option<Instant>| at.map(|a| ms(a.saturating_duration_since(block)));
    let own = record.cpu_ms + record.requests * ms(round_trip);
    let steps: Vec<Steps> = seen.iter().filter_map(|s| s.apply_steps).collect();
    eprintln!(
        "   the newcomer's record planned and applied in the fleet, step by step (median ms): {}",
        step_medians(&steps)
    );
    Ok(Joined {
        applied: Stat::of(seen.iter().map(|s| after(s.applied))),
        heard: Stat::of(seen.iter().map(|s| after(s.heard))),
        own_core: Stat::of(seen.iter().map(|s| after(s.heard).map(|h| h + own))),
        apply: Stat::of(seen.iter().map(|s| s.apply_took.map(ms))),
        all_applied: record.done_by_all,
        binding,
        record,
    })
}

#[allow(clippy::too_many_arguments)]
fn figures(
    seats: usize,
    sample: usize,
    register_secs: f64,
    reads: &Reads,
    bytes_per_seat: f64,
    idle_requests_per_block: f64,
    idle_cpu_ms_per_block: f64,
    round_trip: Duration,
    j: Joined,
    alone: Stat,
) -> ControlPlane {
    let others = (seats - 1) as f64;
    let change = |what: &'static str, m: &Measured| {
        eprintln!(
            "   {what}: {:.2} ms of CPU and {:.2} chain requests at each member ({} by all); {:.0} requests at the provider from {seats} members",
            m.cpu_ms,
            m.requests,
            if m.done_by_all {
                "applied"
            } else {
                "NOT applied"
            },
            m.requests * others
        );
        ControlPlaneChange {
            what,
            cpu_ms_per_member: m.cpu_ms,
            requests_per_member: m.requests,
            provider_requests: m.requests * others,
            done_by_all: m.done_by_all,
        }
    };
    let changes = vec![
        change("the newcomer's binding", &j.binding),
        change("the newcomer's record", &j.record),
    ];
    eprintln!(
        "   the record applied: {} after its block as measured (announced {}); with its own core {}; the plan and its application {} ({:.2}× Tailscale's {:.2} ms per peer change)",
        j.applied.brief(),
        j.heard.brief(),
        j.own_core.brief(),
        j.apply.brief_to(3),
        j.apply.median_ms.unwrap_or(f64::NAN) / TAILSCALE_MS_PER_PEER_CHANGE.1,
        TAILSCALE_MS_PER_PEER_CHANGE.1,
    );
    ControlPlane {
        seats,
        sample,
        register_secs,
        first_full_read_ms: ms(reads.first_read.0),
        first_full_read_requests: reads.first_read.1,
        full_read_ms: ms(reads.later_read.0),
        full_read_requests: reads.later_read.1,
        cold_pass_ms_per_seat: reads.per_seat(reads.cold),
        kept_pass_us_per_seat: reads.per_seat(reads.kept) * 1000.0,
        bytes_per_seat,
        idle_requests_per_member_per_block: idle_requests_per_block,
        idle_cpu_ms_per_member_per_block: idle_cpu_ms_per_block,
        rpc_round_trip_ms: ms(round_trip),
        changes,
        applied: j.applied,
        heard: j.heard,
        applied_with_own_core: j.own_core,
        apply_ms: j.apply,
        apply_alone_ms: alone,
        applied_by_all: j.all_applied,
        tailscale_ms_per_peer_change: TAILSCALE_MS_PER_PEER_CHANGE,
    }
}
