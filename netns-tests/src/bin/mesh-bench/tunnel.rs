//! One implementation between two nodes, measured with iperf3 with what each run costs its WireGuard sides.

use std::net::Ipv4Addr;
use std::time::Instant;

use netns_tests::measure::perf::{
    clock_ticks, cpu_ticks, ctx_switches, iperf3_observed, link_dropped, udp_rcvbuf_errors,
};
use netns_tests::prelude::*;

use crate::report::Run;

use crate::table::count;

/// One node's end of a tunnel: the WireGuard process (the agent for the mesh) and its interface.
pub(crate) struct Side<'a> {
    pub(crate) ns: &'a NetNs,
    pub(crate) pid: u32,
    pub(crate) ifname: String,
}

/// One implementation between two nodes of the LAN, measured from `client` (the sender) to `addr` on
/// `server`; the bare link has no WireGuard sides.
pub(crate) struct Tunnel<'a> {
    pub(crate) name: &'static str,
    pub(crate) client: &'a NetNs,
    pub(crate) server: &'a NetNs,
    pub(crate) addr: Ipv4Addr,
    /// The sending and the receiving side.
    pub(crate) sides: Option<[Side<'a>; 2]>,
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
    pub(crate) fn measure(&self, streams: u32, secs: u32) -> Run {
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
        let out = Run {
            gbps: run.gbps,
            retransmits: run.retransmits,
            cpu_sender_pct: cpu(0),
            cpu_receiver_pct: cpu(1),
            ctx_switches_sender: delta(0, |u| u.ctx_switches),
            ctx_switches_receiver: delta(1, |u| u.ctx_switches),
            tun_drops: both(|u| u.tun_dropped),
            tun_drops_sender: delta(0, |u| u.tun_dropped),
            tun_drops_receiver: delta(1, |u| u.tun_dropped),
            udp_rcvbuf_errors: both(|u| u.udp_rcvbuf_errors),
        };
        let pct = |x: Option<f64>| {
            x.filter(|x| x.is_finite())
                .map_or("-".into(), |x| format!("{x:.0}%"))
        };
        eprintln!(
            "   {streams} stream(s), {}: {:.2} Gbit/s, {} retransmits, CPU {} / {} (send / recv), TUN drops {}, UDP receive buffer drops {}",
            self.name,
            run.gbps,
            run.retransmits,
            pct(out.cpu_sender_pct),
            pct(out.cpu_receiver_pct),
            count(out.tun_drops),
            count(out.udp_rcvbuf_errors),
        );
        out
    }
}
