//! The leader port: what forwarding a connection through `--leader-port` costs against connecting to the
//! leader's service directly, from a follower (over the mesh) and on the leader itself (loopback).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netns_tests::measure::perf::{clock_ticks, cpu_ticks, iperf3_via};
use netns_tests::prelude::*;

use crate::Args;
use crate::report::{LeaderPort, PortWay};

/// The echo service (round trips) and iperf3's server (throughput), each behind a leader port.
const ECHO: u16 = 7001;
const ECHO_PORT: u16 = 7000;
const IPERF: u16 = 5302;
const IPERF_PORT: u16 = 5301;
/// Round trips timed per way, after as many to warm up.
const ROUND_TRIPS: usize = 2000;

/// Two agents, seat 1 leading: round trips and iperf3 from node 2 (and on node 1) to seat 1's services,
/// directly and through each node's leader port.
pub(crate) fn leader_port(args: &Args) -> LeaderPort {
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let ports = format!("{ECHO_PORT}:{ECHO},{IPERF_PORT}:{IPERF}");
    let (agents, _) = Agent::builder(&cluster)
        .flags(["--wg-backend", "userspace", "--leader-port", &ports])
        .mesh(1..=2);
    wait_until(
        "seat 1 to lead under its lease, and node 2 to see it current",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            agents[0].leader().is_ok_and(|l| l.is_self)
                && agents[1]
                    .leader()
                    .is_ok_and(|l| l.token_id == Some(1) && l.state == mesh_api::Freshness::Current)
        },
        || tails(&agents),
    );
    let _echo = TermEcho::start(lan.node(1), ECHO, 1, agents[0].api_socket().to_owned());
    let leader_ip = overlay_ip(1).to_string();
    let follower_pid = agents[1].pid().expect("agent 2 runs");
    let way = |ns: &NetNs, direct: &str, pid: u32, what: &str| {
        let (direct_rtt, direct_p99) =
            round_trips(ns, SocketAddr::new(direct.parse().unwrap(), ECHO));
        let (port_rtt, port_p99) = round_trips(ns, SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)));
        let run = |to: (&str, u16), streams| {
            iperf3_via(
                ns,
                lan.node(1),
                ("0.0.0.0", IPERF),
                to,
                streams,
                args.seconds,
            )
            .gbps
        };
        let direct_gbps = run((direct, IPERF), 1);
        let (ticks, t0) = (cpu_ticks(pid), Instant::now());
        let port_gbps = run(("127.0.0.1", IPERF_PORT), 1);
        let cpu = (cpu_ticks(pid) - ticks) as f64 / clock_ticks() / t0.elapsed().as_secs_f64();
        let w = PortWay {
            direct_rtt_us: direct_rtt,
            port_rtt_us: port_rtt,
            added_rtt_us: port_rtt - direct_rtt,
            direct_p99_us: direct_p99,
            port_p99_us: port_p99,
            direct_gbps,
            port_gbps,
            agent_cpu_percent: 100.0 * cpu,
        };
        eprintln!(
            "   {what}: round trip {:.0} µs direct, {:.0} µs through the port (+{:.0}; p99 {:.0} / {:.0}); {:.2} Gbit/s direct, {:.2} through the port ({:.0}% of direct, the agent at {:.0}% of a core)",
            w.direct_rtt_us,
            w.port_rtt_us,
            w.added_rtt_us,
            w.direct_p99_us,
            w.port_p99_us,
            w.direct_gbps,
            w.port_gbps,
            100.0 * w.port_gbps / w.direct_gbps,
            w.agent_cpu_percent
        );
        w
    };
    let follower = way(
        lan.node(2),
        &leader_ip,
        follower_pid,
        "from a follower, over the mesh",
    );
    let leader_pid = agents[0].pid().expect("agent 1 runs");
    let leader = way(
        lan.node(1),
        "127.0.0.1",
        leader_pid,
        "on the leader, to its own service",
    );
    LeaderPort { follower, leader }
}

/// The mean and the 99th percentile, in µs, of [`ROUND_TRIPS`] one-line round trips on one connection from
/// `ns` to `to`.
fn round_trips(ns: &NetNs, to: SocketAddr) -> (f64, f64) {
    let mut c = LineClient::connect(ns, to)
        .unwrap_or_else(|e| panic!("connecting from {} to {to}: {e}", ns.name));
    for _ in 0..ROUND_TRIPS {
        c.ask("x")
            .unwrap_or_else(|| panic!("{to} closed the connection"));
    }
    let mut us: Vec<f64> = (0..ROUND_TRIPS)
        .map(|_| {
            let t = Instant::now();
            c.ask("x")
                .unwrap_or_else(|| panic!("{to} closed the connection"));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    (mean, us[us.len() * 99 / 100])
}
