//! Grants between seats: what a policy of 100 rules in force costs the mesh's data path, against none, on one
//! pair of agents in the same run.
//!
//! Seat 1 is tagged `web` and seat 2 `db`; 98 grants web → db on TCP ports nobody uses, then the two the
//! measurements use (iperf3's 5201, an echo service's 7001): 100 ranges, the used ones last, so that every
//! packet the receiver judges goes through the whole list. The sender's side keeps its flows for their
//! replies. Each is measured twice, alternating with the policy out of force, and the means are compared:
//! throughput with 1 and 4 streams, ping RTT (ICMP passes whatever the grants) and the RTT of a TCP request
//! and its answer (judged on both sides).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netns_tests::measure::perf::ping_avg_ms;
use netns_tests::prelude::*;

use crate::Args;
use crate::report::{PolicyCost, PolicyRun};
use crate::topology::tunnels;

/// How many grants the policy holds.
pub(crate) const RULES: usize = 100;
const IPERF: u16 = 5201;
const ECHO: u16 = 7001;
/// TCP round trips per measure.
const ROUND_TRIPS: u32 = 2_000;

/// The grants as `meshctl policy set --grant` takes them: the decoys first, the used ports last.
fn grants() -> Vec<String> {
    (0..RULES - 2)
        .map(|i| {
            let first = 100 + 10 * i;
            format!("web:db:tcp:{first}-{}", first + 4)
        })
        .chain([IPERF, ECHO].map(|p| format!("web:db:tcp:{p}")))
        .collect()
}

pub(crate) fn policy(args: &Args) -> PolicyCost {
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (agents, _keys) = Agent::builder(&cluster)
        .flags(["--wg-backend", "userspace"])
        .mesh(1..=2);
    let tunnel = tunnels(&lan, &agents, &[]).remove(0);
    let _echo = TermEcho::start(lan.node(2), ECHO, 2, agents[1].api_socket().to_owned());
    let measure = || {
        let run1 = tunnel.measure(1, args.seconds);
        let run4 = tunnel.measure(4, args.seconds);
        ping_avg_ms(lan.node(1), overlay_ip(2), 200, Duration::from_millis(20));
        let ping = ping_avg_ms(
            lan.node(1),
            overlay_ip(2),
            2_000,
            Duration::from_micros(500),
        );
        PolicyRun {
            gbps1: run1.gbps,
            gbps4: run4.gbps,
            ping_rtt_ms: ping,
            tcp_rtt_us: tcp_rtt_us(lan.node(1)),
        }
    };
    let mut set = vec![
        "policy", "set", "--tags", "web,db", "--seat", "1=web", "--seat", "2=db",
    ];
    let grants = grants();
    for g in &grants {
        set.extend(["--grant", g]);
    }
    let enforce = |on: bool| {
        if on && agents[1].status().0.policy.is_none_or(|p| p.grants == 0) {
            cluster.meshctl(0, &set);
        } else {
            cluster.meshctl(
                0,
                &[
                    "policy",
                    "set",
                    "--enforce",
                    if on { "true" } else { "false" },
                ],
            );
        }
        wait_until(
            &format!(
                "both agents to have the policy {}",
                if on { "in force" } else { "out of force" }
            ),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                agents
                    .iter()
                    .all(|a| a.status().0.policy.is_some_and(|p| p.enforced == on))
            },
            || statuses(&agents),
        );
    };
    let none_a = measure();
    eprintln!("   no policy: {none_a:?}");
    enforce(true);
    let with_a = measure();
    eprintln!("   {RULES} rules: {with_a:?}");
    enforce(false);
    let none_b = measure();
    eprintln!("   no policy: {none_b:?}");
    enforce(true);
    let with_b = measure();
    eprintln!("   {RULES} rules: {with_b:?}");
    let dropped = agents[1].status().0.policy.map_or(0, |p| {
        p.dropped.no_grant + p.dropped.protocol + p.dropped.malformed
    });
    PolicyCost {
        rules: RULES,
        none: PolicyRun::mean(none_a, none_b),
        enforced: PolicyRun::mean(with_a, with_b),
        dropped,
    }
}

/// The mean time of a line to node 2's echo service and back, from `client`, over one connection.
fn tcp_rtt_us(client: &NetNs) -> f64 {
    let mut c = LineClient::connect(client, SocketAddr::from((overlay_ip(2), ECHO)))
        .expect("the echo service through the mesh");
    for _ in 0..50 {
        c.ask("warm").expect("an answer");
    }
    let began = Instant::now();
    for _ in 0..ROUND_TRIPS {
        c.ask("ping").expect("an answer");
    }
    began.elapsed().as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_holds_its_rules_with_the_used_ports_last() {
        let g = grants();
        assert_eq!(g.len(), RULES);
        assert_eq!(g[0], "web:db:tcp:100-104");
        assert_eq!(g[RULES - 2..], ["web:db:tcp:5201", "web:db:tcp:7001"]);
    }
}
