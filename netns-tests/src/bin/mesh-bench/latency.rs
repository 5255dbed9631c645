//! Added latency: ping RTT through the mesh and each reference, minus the bare link's.

use std::time::Duration;

use netns_tests::measure::perf::ping_avg_ms;

use crate::report::BARE;
use crate::report::{Named, Rtt};
use crate::tunnel::Tunnel;

/// The average of 200 pings 20 ms apart, then of 2,000 pings 0.5 ms apart, through each of `tunnels`, and
/// what each adds over the bare link's.
pub(crate) fn latency(tunnels: &[Tunnel<'_>]) -> Named<Rtt> {
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
    Named(
        idle.into_iter()
            .zip(busy)
            .map(|((name, rtt), (_, busy))| {
                let rtt = Rtt {
                    rtt_ms: rtt,
                    added_ms: rtt - idle_bare,
                    busy_rtt_ms: busy,
                    busy_added_ms: busy - busy_bare,
                };
                (name, rtt)
            })
            .collect(),
    )
}
