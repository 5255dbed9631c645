//! One implementation between two nodes, measured with iperf3 with what each run costs its WireGuard sides.

use std::net::Ipv4Addr;
use std::time::Instant;

use netns_tests::perf::{
    clock_ticks, cpu_ticks, ctx_switches, iperf3_observed, link_dropped, udp_rcvbuf_errors,
};
use netns_tests::prelude::*;
use netns_tests::wg::WireguardGo;
use serde_json::{Value, json};

use crate::references::reference_ip;

/// One node's end of a tunnel: the WireGuard process (the agent for the mesh) and its interface.
struct Side<'a> {
    ns: &'a NetNs,
    pid: u32,
    ifname: String,
}

/// One implementation between two nodes of the LAN, measured from `client` (the sender) to `addr` on
/// `server`; the bare link has no WireGuard sides.
pub(crate) struct Tunnel<'a> {
    pub(crate) name: &'static str,
    pub(crate) client: &'a NetNs,
    server: &'a NetNs,
    pub(crate) addr: Ipv4Addr,
    /// The sending and the receiving side.
    sides: Option<[Side<'a>; 2]>,
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
    pub(crate) fn measure(&self, streams: u32, secs: u32) -> Value {
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
        let out = json!({
            "gbps": run.gbps,
            "retransmits": run.retransmits,
            "cpuSenderPct": cpu(0),
            "cpuReceiverPct": cpu(1),
            "ctxSwitchesSender": delta(0, |u| u.ctx_switches),
            "ctxSwitchesReceiver": delta(1, |u| u.ctx_switches),
            "tunDrops": both(|u| u.tun_dropped),
            "tunDropsSender": delta(0, |u| u.tun_dropped),
            "tunDropsReceiver": delta(1, |u| u.tun_dropped),
            "udpRcvbufErrors": both(|u| u.udp_rcvbuf_errors),
        });
        let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}%"));
        let count = |v: &Value| v.as_u64().map_or("-".into(), |x| x.to_string());
        eprintln!(
            "   {streams} stream(s), {}: {:.2} Gbit/s, {} retransmits, CPU {} / {} (send / recv), TUN drops {}, UDP receive buffer drops {}",
            self.name,
            run.gbps,
            run.retransmits,
            pct(&out["cpuSenderPct"]),
            pct(&out["cpuReceiverPct"]),
            count(&out["tunDrops"]),
            count(&out["udpRcvbufErrors"]),
        );
        out
    }
}

/// The implementations in the table's order (mesh, the references, bare), on the throughput and latency
/// topology: the mesh between nodes 1 and 2, reference k between nodes 3 + 2k and 4 + 2k, and the bare
/// link from node 1 to node 2, all on the same bridge.
pub(crate) fn tunnels<'a>(
    lan: &'a Lan,
    agents: &[Agent<'_>],
    pairs: &'a [(&'static str, WireguardGo, WireguardGo)],
) -> Vec<Tunnel<'a>> {
    let agent_side = |a: &Agent<'_>| Side {
        ns: lan.node(a.index),
        pid: a
            .pid()
            .unwrap_or_else(|| panic!("agent {} is not running", a.index)),
        ifname: a.ifname.clone(),
    };
    let mut out = vec![Tunnel {
        name: "mesh",
        client: lan.node(1),
        server: lan.node(2),
        addr: overlay_ip(2),
        sides: Some([agent_side(&agents[0]), agent_side(&agents[1])]),
    }];
    for (k, (name, a, b)) in pairs.iter().enumerate() {
        let (ns_a, ns_b) = (lan.node(3 + 2 * k), lan.node(4 + 2 * k));
        out.push(Tunnel {
            name,
            client: ns_a,
            server: ns_b,
            addr: reference_ip(k, 2),
            sides: Some([
                Side {
                    ns: ns_a,
                    pid: a.pid(),
                    ifname: a.ifname.clone(),
                },
                Side {
                    ns: ns_b,
                    pid: b.pid(),
                    ifname: b.ifname.clone(),
                },
            ]),
        });
    }
    out.push(Tunnel {
        name: "bare",
        client: lan.node(1),
        server: lan.node(2),
        addr: lan_ip(2),
        sides: None,
    });
    out
}
