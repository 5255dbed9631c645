//! UDP through the tunnel: the highest rate of one UDP stream that arrives with under 1 % loss, through the
//! mesh, each reference and the bare link, from two senders: iperf3 (a datagram per system call, as most
//! applications send) and a GSO sender (up to 64 KiB of datagrams per call, as QUIC stacks send).

use std::time::Duration;

use netns_tests::measure::perf::iperf3_udp;
use netns_tests::measure::udp_gso::udp_gso;

use crate::report::{BARE, MESH};
use crate::report::{Named, Udp, UdpRun, UdpRuns};
use crate::tunnel::Tunnel;

/// The loss a rate may have and count as carried.
const MAX_LOSS_PERCENT: f64 = 1.0;
/// Datagrams of this many bytes: with their IP and UDP headers, 1,400 bytes, inside the tunnel's MTU (1420)
/// so that no implementation fragments them.
const DATAGRAM: usize = 1372;
/// The first rate tried, and the bound: a rate is doubled until it loses, then bisected this many times.
const START_MBPS: u64 = 200;
const MAX_MBPS: u64 = 40_000;
const BISECTIONS: u32 = 4;
/// Each probe's length: long enough for queues to fill, short enough for ~10 probes per implementation.
const PROBE_SECS: u32 = 2;

/// The two senders.
#[derive(Clone, Copy)]
enum Sender {
    Iperf3,
    Gso,
}

impl Sender {
    fn name(self) -> &'static str {
        match self {
            Sender::Iperf3 => "iperf3",
            Sender::Gso => "GSO sender",
        }
    }
}

/// What one probe sent and what arrived.
#[derive(Clone, Copy)]
struct Probe {
    sent_gbps: f64,
    received_gbps: f64,
    lost_percent: f64,
}

impl Sender {
    fn probe(self, p: &Tunnel<'_>, mbps: u64) -> Probe {
        match self {
            Sender::Iperf3 => {
                let r = iperf3_udp(
                    p.client,
                    p.server,
                    &p.addr.to_string(),
                    mbps,
                    DATAGRAM,
                    PROBE_SECS,
                );
                Probe {
                    sent_gbps: r.sent_gbps,
                    received_gbps: r.received_gbps,
                    lost_percent: r.lost_percent,
                }
            }
            Sender::Gso => {
                let secs = Duration::from_secs(PROBE_SECS.into());
                let r = udp_gso(p.client, p.server, p.addr, mbps, DATAGRAM, secs);
                Probe {
                    sent_gbps: r.sent_gbps,
                    received_gbps: r.received_gbps,
                    lost_percent: r.lost_percent,
                }
            }
        }
    }
}

/// The highest carried rate through each of `tunnels` from each sender, and the mesh's over its TCP rate
/// (`mesh_tcp_gbps`, one stream) and over the best reference's.
pub(crate) fn udp(tunnels: &[Tunnel<'_>], mesh_tcp_gbps: Option<f64>) -> Udp {
    Udp {
        datagram_bytes: DATAGRAM,
        max_loss_percent: MAX_LOSS_PERCENT,
        iperf3: runs(Sender::Iperf3, tunnels, mesh_tcp_gbps),
        gso: runs(Sender::Gso, tunnels, mesh_tcp_gbps),
    }
}

fn runs(sender: Sender, tunnels: &[Tunnel<'_>], mesh_tcp_gbps: Option<f64>) -> UdpRuns {
    let runs = Named(
        tunnels
            .iter()
            .map(|p| {
                let run = highest(sender, p);
                eprintln!(
                    "   UDP from the {} {}: {:.2} Gbit/s with {:.2} % lost (target {:.2}{})",
                    sender.name(),
                    p.name,
                    run.received_gbps,
                    run.lost_percent,
                    run.target_gbps,
                    if run.sender_bound {
                        ", the sender could send no faster"
                    } else {
                        ""
                    }
                );
                (p.name, run)
            })
            .collect(),
    );
    let gbps = |name: &str| runs.get(name).map_or(f64::NAN, |r| r.received_gbps);
    let best = tunnels
        .iter()
        .map(|p| p.name)
        .filter(|&n| n != MESH && n != BARE)
        .max_by(|a, b| gbps(a).total_cmp(&gbps(b)));
    UdpRuns {
        mesh_over_tcp: mesh_tcp_gbps.map(|tcp| gbps(MESH) / tcp),
        mesh_over_best: best.map(|b| gbps(MESH) / gbps(b)),
        best_peer: best,
        mesh_over_bare: gbps(MESH) / gbps(BARE),
        runs,
    }
}

/// Doubles the target rate from [`START_MBPS`] until more than [`MAX_LOSS_PERCENT`] is lost (or the sender
/// cannot keep up), then bisects between the last rate carried and the first lost.
fn highest(sender: Sender, p: &Tunnel<'_>) -> UdpRun {
    let probe = |mbps| sender.probe(p, mbps);
    let carried = |r: &Probe| r.lost_percent <= MAX_LOSS_PERCENT;
    let mut best: Option<(u64, Probe)> = None;
    let mut lost_at = None;
    let mut mbps = START_MBPS;
    while mbps <= MAX_MBPS {
        let r = probe(mbps);
        if !carried(&r) {
            lost_at = Some(mbps);
            break;
        }
        let sender_bound = r.sent_gbps * 1000.0 < 0.9 * mbps as f64;
        best = Some((mbps, r));
        if sender_bound {
            break;
        }
        mbps *= 2;
    }
    if let (Some(mut high), Some((mut low, _))) = (lost_at, best) {
        for _ in 0..BISECTIONS {
            let mid = (low + high) / 2;
            let r = probe(mid);
            if carried(&r) {
                low = mid;
                best = Some((mid, r));
            } else {
                high = mid;
            }
        }
    }
    let Some((target, r)) = best else {
        return UdpRun {
            target_gbps: START_MBPS as f64 / 1000.0,
            received_gbps: 0.0,
            lost_percent: 100.0,
            sender_bound: false,
        };
    };
    UdpRun {
        target_gbps: target as f64 / 1000.0,
        received_gbps: r.received_gbps,
        lost_percent: r.lost_percent,
        sender_bound: r.sent_gbps * 1000.0 < 0.9 * target as f64,
    }
}
