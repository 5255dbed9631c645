//! Added latency: ping RTT through the mesh and each reference, minus the bare link's.

use std::time::Duration;

use netns_tests::perf::ping_avg_ms;
use serde_json::{Value, json};

use crate::tunnel::Tunnel;

/// The average of 200 pings 20 ms apart through each of `tunnels`, and what each adds over the bare link's.
pub(crate) fn latency(tunnels: &[Tunnel<'_>]) -> Value {
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
