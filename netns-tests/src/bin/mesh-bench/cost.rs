//! What a mesh costs: its agents' CPU and RSS idle, and the chain requests idle and per block.

use std::time::{Duration, Instant};

use alloy::providers::{Provider, ProviderBuilder};
use anyhow::Context as _;
use netns_tests::measure::perf::{clock_ticks, cpu_ticks};
use netns_tests::net::netns::in_netns;
use netns_tests::prelude::*;

use crate::report::Cost;

/// What the mesh of `agents` costs: over 15 s of idling, each agent's CPU and RSS, the load average and
/// the requests reaching anvil; then over 10 blocks mined 1 s apart, the requests per block, at anvil and
/// by agent 1 (its own counters: all its chain requests, less its head polls).
pub(crate) fn measure(lan: &Lan, agents: &[Agent<'_>]) -> anyhow::Result<Cost> {
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

    let blocks = 10u64;
    let (req0, polls0) = chain_counters(&agents[0])?;
    let (rpc2, t2) = (lan.rpc_requests(), Instant::now());
    for _ in 0..blocks {
        mine(lan);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (rpc3, t3) = (lan.rpc_requests(), Instant::now());
    let (req1, polls1) = chain_counters(&agents[0])?;
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
    Ok(Cost {
        peers: agents.len() - 1,
        cpu_percent_mean: mean(&cpu),
        cpu_percent_max: max(&cpu),
        rss_kib_mean: mean(&rss_f),
        rss_kib_max: max(&rss_f),
        load_average: load,
        anvil_requests_per_second_idle: idle_rate,
        anvil_requests_per_block: at_anvil,
        agent_requests_per_block: agent1,
    })
}

/// Agent `a`'s own count of its chain requests, and of those its head polls, from its `/metrics`.
pub(crate) fn chain_counters(a: &Agent<'_>) -> anyhow::Result<(u64, u64)> {
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
}

/// One empty block, mined by anvil on request (`evm_mine`).
pub(crate) fn mine(lan: &Lan) {
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

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
