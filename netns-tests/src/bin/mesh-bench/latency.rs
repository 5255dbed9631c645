//! Added latency: ping RTT through the mesh and each reference, minus the bare link's.

use std::time::Duration;

use netns_tests::measure::perf::{PerfStat, iperf3_observed, ping_avg_ms};
use netns_tests::net::ping::{BackgroundPing, rtt_avg_ms};

use crate::report::BARE;
use crate::report::{Named, Rtt};
use crate::tunnel::Tunnel;

/// Pings under load: this many, [`LOADED_EVERY`] apart, while one iperf3 stream runs through the tunnel.
const LOADED_PINGS: u32 = 300;
const LOADED_EVERY: Duration = Duration::from_millis(10);

/// The average of 200 pings 20 ms apart, then of 2,000 pings 0.5 ms apart, then of [`LOADED_PINGS`] while one
/// iperf3 stream runs for `secs` (at least 5) through the same tunnel, through each of `tunnels`, and what
/// each adds over the bare link's.
pub(crate) fn latency(tunnels: &[Tunnel<'_>], secs: u32) -> Named<Rtt> {
    // Warm up sessions and caches first.
    for p in tunnels {
        ping_avg_ms(p.client, p.addr, 5, Duration::from_millis(20));
    }
    // Pings 20 ms apart find every CPU idle, and on a VM waking a CPU dominates: each WireGuard side wakes
    // twice a round trip, and even the bare link's RTT is ten times what it is on busy CPUs. Pings 0.5 ms
    // apart keep the CPUs awake and show what the tunnel itself adds.
    let rtts = |every: Duration, count: u32| {
        let rtts: Vec<(&'static str, f64)> = tunnels
            .iter()
            .map(|p| (p.name, ping_avg_ms(p.client, p.addr, count, every)))
            .collect();
        eprintln!(
            "   RTT, pings {} ms apart: {}",
            every.as_secs_f64() * 1000.0,
            rtts.iter()
                .map(|(name, rtt)| format!("{name} {rtt:.3} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let bare = rtts
            .iter()
            .find(|(name, _)| *name == BARE)
            .map(|r| r.1)
            .expect("the bare link is measured");
        (rtts, bare)
    };
    let (idle, idle_bare) = rtts(Duration::from_millis(20), 200);
    let (busy, busy_bare) = rtts(Duration::from_micros(500), 2000);
    let work: Vec<Option<(f64, f64)>> = tunnels.iter().map(work_per_round_trip).collect();
    eprintln!(
        "   per round trip, both WireGuard sides (busy pings, perf stat): {}",
        tunnels
            .iter()
            .zip(&work)
            .filter_map(|(p, w)| w.map(|(sys, cs)| format!(
                "{} {sys:.1} system calls, {cs:.1} context switches",
                p.name
            )))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let loaded: Vec<(f64, u32, u32)> = tunnels.iter().map(|p| loaded(p, secs)).collect();
    eprintln!(
        "   RTT under one iperf3 stream: {}",
        tunnels
            .iter()
            .zip(&loaded)
            .map(|(p, (rtt, sent, got))| format!(
                "{} {rtt:.3} ms ({} of {sent} lost)",
                p.name,
                sent - got
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let loaded_bare = tunnels
        .iter()
        .zip(&loaded)
        .find(|(p, _)| p.name == BARE)
        .map(|(_, l)| l.0)
        .expect("the bare link is measured");
    Named(
        idle.into_iter()
            .zip(busy)
            .zip(loaded)
            .zip(work)
            .map(|((((name, rtt), (_, busy)), (loaded, sent, got)), work)| {
                let rtt = Rtt {
                    rtt_ms: rtt,
                    added_ms: rtt - idle_bare,
                    busy_rtt_ms: busy,
                    busy_added_ms: busy - busy_bare,
                    loaded_rtt_ms: loaded,
                    loaded_added_ms: loaded - loaded_bare,
                    loaded_lost: sent - got,
                    syscalls_per_round_trip: work.map(|w| w.0),
                    switches_per_round_trip: work.map(|w| w.1),
                };
                (name, rtt)
            })
            .collect(),
    )
}

/// The average RTT of [`LOADED_PINGS`] through `p` while one iperf3 stream runs through it, with the pings
/// sent and answered: what a commit's round trip meets while a bulk transfer shares the tunnel.
fn loaded(p: &Tunnel<'_>, secs: u32) -> (f64, u32, u32) {
    let mut ping = None;
    let (_, _, pinged) = iperf3_observed(
        p.client,
        p.server,
        &p.addr.to_string(),
        1,
        secs.max(5),
        || {
            // Started as the stream starts, and read once it has ended: the pings take 3 s of its 5 or more.
            match ping.take() {
                None => {
                    ping = Some(BackgroundPing::start(
                        p.client,
                        p.addr,
                        LOADED_PINGS,
                        LOADED_EVERY,
                    ));
                    None
                }
                Some(running) => Some(running.finish()),
            }
        },
    );
    let (sent, got, output) = pinged.expect("the ping is read once the stream ends");
    let rtt =
        rtt_avg_ms(&output).unwrap_or_else(|| panic!("no ping answered under load: {output}"));
    (rtt, sent, got)
}

/// Round trips timed by [`work_per_round_trip`].
const COUNTED_PINGS: u32 = 2000;

/// The system calls and context switches of both WireGuard sides of `p` per round trip, over
/// [`COUNTED_PINGS`] pings 0.5 ms apart (`perf stat`; the agents' other work in that second counts too, and
/// is small); `None` for the bare link.
fn work_per_round_trip(p: &Tunnel<'_>) -> Option<(f64, f64)> {
    let sides = p.sides.as_ref()?;
    let pids: Vec<u32> = sides.iter().map(|s| s.pid).collect();
    let perf = PerfStat::start(&pids);
    ping_avg_ms(p.client, p.addr, COUNTED_PINGS, Duration::from_micros(500));
    let counts = perf.stop();
    let per = |n: u64| n as f64 / f64::from(COUNTED_PINGS);
    Some((per(counts.syscalls), per(counts.context_switches)))
}
