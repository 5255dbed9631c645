//! Added latency: ping RTT through the mesh and each reference, minus the bare link's.

use std::path::Path;
use std::time::Duration;

use netns_tests::measure::perf::{PerfRecord, PerfStat, iperf3_observed, ping_avg_ms};
use netns_tests::net::ping::{BackgroundPing, rtt_avg_ms};
use netns_tests::run::process::ChildGuard;

use crate::core_each::CoreEach;
use crate::report::BARE;
use crate::report::{Named, Rtt};
use crate::tunnel::Tunnel;

/// The turns each tunnel's pings are split into, taken in rotation ([`interleaved`]).
const ROUNDS: u32 = 5;

/// Pings under load: this many, [`LOADED_EVERY`] apart, while one iperf3 stream runs through the tunnel.
const LOADED_PINGS: u32 = 300;
const LOADED_EVERY: Duration = Duration::from_millis(10);

/// The average of 200 pings 20 ms apart, then of 2,000 pings 0.5 ms apart (each in [`ROUNDS`] turns, the
/// tunnels in rotation), then of [`LOADED_PINGS`] while one iperf3 stream runs for `secs` (at least 5)
/// through the same tunnel, through each of `tunnels`, and what each adds over the bare link's.
pub(crate) fn latency(tunnels: &[Tunnel<'_>], secs: u32, record: Option<&Path>) -> Named<Rtt> {
    // Warm up sessions and caches first.
    for p in tunnels {
        ping_avg_ms(p.client, p.addr, 5, Duration::from_millis(20));
    }
    // Pings 20 ms apart find every CPU idle, and on a VM waking a CPU dominates: each WireGuard side wakes
    // twice a round trip, and even the bare link's RTT is ten times what it is on busy CPUs. Pings 0.5 ms
    // apart keep the CPUs awake and show what the tunnel itself adds.
    let rtts = |every: Duration, count: u32| {
        let rtts = interleaved(
            tunnels,
            |p| p.name,
            ROUNDS,
            |p| {
                // The first round trip after another tunnel's turn wakes what that turn let sleep.
                ping_avg_ms(p.client, p.addr, 1, every);
                ping_avg_ms(p.client, p.addr, count / ROUNDS, every)
            },
        );
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
    let work: Vec<Option<Work>> = tunnels
        .iter()
        .map(|p| work_per_round_trip(p, record))
        .collect();
    // The same busy pings with a CPU hog on every core beside them, as a node shares its cores with the
    // application: what the scheduler makes of each tunnel's wake-ups.
    let (hogged, hogged_work, hog_bare) = {
        let _hog = CpuHog::start();
        let (rtts, bare) = rtts(Duration::from_micros(500), 2000);
        let work: Vec<Option<Work>> = tunnels
            .iter()
            .map(|p| work_per_round_trip(p, None))
            .collect();
        (rtts, work, bare)
    };
    eprintln!(
        "   per round trip, both WireGuard sides (busy pings, perf stat): {}",
        tunnels
            .iter()
            .zip(&work)
            .filter_map(|(p, w)| w.map(|w| format!(
                "{} {:.1} µs of CPU, {:.1} system calls, {:.1} context switches",
                p.name, w.cpu_us, w.syscalls, w.switches
            )))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let loaded: Vec<(f64, u32, u32)> = tunnels.iter().map(|p| loaded(p, secs)).collect();
    show_loaded("RTT under one iperf3 stream", tunnels, &loaded);
    // The same with a core per node, as two machines would give them: what is left is the tunnel's own
    // queueing, without the wait of each node's threads for a core the other node holds.
    let core_each: Vec<(f64, u32, u32)> = tunnels
        .iter()
        .map(|p| {
            let _pinned = CoreEach::pin(&[(p.client, 0), (p.server, 1)]);
            self::loaded(p, secs)
        })
        .collect();
    show_loaded(
        "RTT under one iperf3 stream, a core per node",
        tunnels,
        &core_each,
    );
    let bare_of = |rtts: &[(f64, u32, u32)]| {
        tunnels
            .iter()
            .zip(rtts)
            .find(|(p, _)| p.name == BARE)
            .map(|(_, l)| l.0)
            .expect("the bare link is measured")
    };
    let (loaded_bare, core_each_bare) = (bare_of(&loaded), bare_of(&core_each));
    Named(
        idle.into_iter()
            .zip(busy)
            .zip(loaded)
            .zip(work)
            .zip(hogged.into_iter().zip(hogged_work))
            .zip(core_each)
            .map(
                |(
                    (((((name, rtt), (_, busy)), (loaded, sent, got)), work), ((_, hog), hog_work)),
                    (core_each, core_each_sent, core_each_got),
                )| {
                    let rtt = Rtt {
                        hog_rtt_ms: hog,
                        hog_added_ms: hog - hog_bare,
                        hog_cpu_us_per_round_trip: hog_work.map(|w| w.cpu_us),
                        rtt_ms: rtt,
                        added_ms: rtt - idle_bare,
                        busy_rtt_ms: busy,
                        busy_added_ms: busy - busy_bare,
                        loaded_rtt_ms: loaded,
                        loaded_added_ms: loaded - loaded_bare,
                        loaded_lost: sent - got,
                        core_each_rtt_ms: core_each,
                        core_each_added_ms: core_each - core_each_bare,
                        core_each_lost: core_each_sent - core_each_got,
                        cpu_us_per_round_trip: work.map(|w| w.cpu_us),
                        syscalls_per_round_trip: work.map(|w| w.syscalls),
                        switches_per_round_trip: work.map(|w| w.switches),
                    };
                    (name, rtt)
                },
            )
            .collect(),
    )
}

/// The mean of `rounds` measurements of each of `tunnels`, taken in rotation (every tunnel once, then every
/// tunnel again), by name. On a shared virtual machine the CPUs slow down and speed up over seconds; measured
/// one after the other, each implementation met the machine of its own few seconds, and the comparison the
/// issue asks for (the mesh's added RTT at or below boringtun-cli's in every run) swung with it. In rotation
/// every implementation meets the same stretches.
fn interleaved<T>(
    tunnels: &[T],
    name: impl Fn(&T) -> &'static str,
    rounds: u32,
    mut measure: impl FnMut(&T) -> f64,
) -> Vec<(&'static str, f64)> {
    let mut sums = vec![0.0; tunnels.len()];
    for _ in 0..rounds {
        for (sum, t) in sums.iter_mut().zip(tunnels) {
            *sum += measure(t);
        }
    }
    tunnels
        .iter()
        .zip(sums)
        .map(|(t, sum)| (name(t), sum / f64::from(rounds)))
        .collect()
}

/// Prints each tunnel's RTT under load (from [`loaded`]) and the pings it lost, after `label`.
fn show_loaded(label: &str, tunnels: &[Tunnel<'_>], rtts: &[(f64, u32, u32)]) {
    eprintln!(
        "   {label}: {}",
        tunnels
            .iter()
            .zip(rtts)
            .map(|(p, (rtt, sent, got))| format!(
                "{} {rtt:.3} ms ({} of {sent} lost)",
                p.name,
                sent - got
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
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

/// A busy loop on every core, at the default priority, until dropped: the hog's processes are ended by
/// their PIDs.
struct CpuHog {
    /// Held only to be dropped: each guard ends its process.
    _loops: Vec<ChildGuard>,
}

impl CpuHog {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            _loops: (0..cores)
                .map(|_| {
                    let child = std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(std::process::Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| panic!("starting a CPU hog (sh): {e}"));
                    ChildGuard::new("a CPU hog", child)
                })
                .collect(),
        }
    }
}

/// Round trips timed by [`work_per_round_trip`].
const COUNTED_PINGS: u32 = 2000;

/// What both WireGuard sides of a tunnel did per round trip.
#[derive(Clone, Copy)]
struct Work {
    cpu_us: f64,
    syscalls: f64,
    switches: f64,
}

/// The CPU time, system calls and context switches of both WireGuard sides of `p` per round trip, over
/// [`COUNTED_PINGS`] pings 0.5 ms apart (`perf stat`; the agents' other work in that second counts too, and
/// is small); `None` for the bare link.
fn work_per_round_trip(p: &Tunnel<'_>, record: Option<&Path>) -> Option<Work> {
    let sides = p.sides.as_ref()?;
    let pids: Vec<u32> = sides.iter().map(|s| s.pid).collect();
    let recording = record.map(|dir| {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        PerfRecord::start(&pids, &dir.join(format!("{}.data", p.name)))
    });
    let perf = PerfStat::start(&pids);
    ping_avg_ms(p.client, p.addr, COUNTED_PINGS, Duration::from_micros(500));
    let counts = perf.stop();
    if let Some(r) = recording {
        r.stop();
    }
    let per = |n: f64| n / f64::from(COUNTED_PINGS);
    Some(Work {
        cpu_us: per(counts.cpu_us),
        syscalls: per(counts.syscalls as f64),
        switches: per(counts.context_switches as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tunnel_is_measured_in_turn_and_given_the_mean_of_its_turns() {
        let tunnels = [("mesh", [1.0, 3.0]), ("bare", [10.0, 20.0])];
        let mut order = Vec::new();
        let mut turn = [0usize; 2];
        let means = interleaved(
            &tunnels,
            |t| t.0,
            2,
            |t| {
                order.push(t.0);
                let i = usize::from(t.0 == "bare");
                turn[i] += 1;
                t.1[turn[i] - 1]
            },
        );
        assert_eq!(order, ["mesh", "bare", "mesh", "bare"]);
        assert_eq!(means, [("mesh", 2.0), ("bare", 15.0)]);
    }
}
