//! NAT traversal: two agents behind slirp4netns (QEMU's user-mode NAT, as dstack's CVMs sit behind), coturn
//! for STUN and nginx as the gateway. How long until they punch a direct path, and what each way between
//! them carries: punched, relayed (UDP between the hosts dropped), the same pair of agents on a plain LAN
//! with no NAT, and TCP through slirp4netns itself with no tunnel; and what a NAT that restarts costs.

use std::time::{Duration, SystemTime};

use mesh_api::Path;
use netns_tests::measure::perf::{iperf3, ping_avg_ms};
use netns_tests::net::uplink::{StunServer, Uplink};
use netns_tests::prelude::*;

use crate::report::{Nat, NatWay};
use crate::{Args, BOUND, ms};

/// A way between nodes 1 and 2, called `name` in the output: 1 and 4 TCP streams to `addr` (an address of
/// `server`), and the RTT to `ping` from node 1.
fn way(
    args: &Args,
    lan: &Lan,
    name: &str,
    server: &NetNs,
    addr: std::net::Ipv4Addr,
    ping: std::net::Ipv4Addr,
) -> NatWay {
    let every = Duration::from_millis(20);
    ping_avg_ms(lan.node(1), ping, 5, every);
    let rtt_ms = ping_avg_ms(lan.node(1), ping, 100, every);
    let run = |streams| {
        iperf3(
            lan.node(1),
            server,
            &addr.to_string(),
            streams,
            args.seconds,
        )
    };
    let (one, four) = (run(1), run(4));
    eprintln!(
        "   {name}: {:.2} Gbit/s (1 stream), {:.2} (4), RTT {rtt_ms:.3} ms",
        one.gbps, four.gbps
    );
    NatWay {
        rtt_ms,
        streams1_gbps: one.gbps,
        streams4_gbps: four.gbps,
        streams1_retransmits: one.retransmits,
    }
}

/// Through the tunnel from node 1 to node 2.
pub(crate) fn tunnel(args: &Args, lan: &Lan, name: &str) -> NatWay {
    way(args, lan, name, lan.node(2), overlay_ip(2), overlay_ip(2))
}

/// Waits until both agents see each other healthy on `want`.
fn until_on(agents: &[Agent<'_>], want: Path) {
    wait_until(
        &format!("both agents to be on {want:?}"),
        BOUND,
        Duration::from_millis(50),
        || all_healthy_on(agents, want),
        || format!("{}{}", path_table(agents), tails(agents)),
    );
}

pub(crate) fn nat(args: &Args) -> Nat {
    let mut nat = behind_slirp(args);
    nat.direct = plain(args);
    nat
}

/// Everything measured on the pair behind slirp4netns (all but the plain direct path).
fn behind_slirp(args: &Args) -> Nat {
    let lan = Lan::with_uplinks(&[Uplink::Slirp, Uplink::Slirp]);
    let stun = StunServer::start(&lan.switch, "br0");
    let cluster = Cluster::deploy_seats(&lan, 2);
    let gateway = Gateway::for_cluster(&cluster, WG_PORT);
    let started = SystemTime::now();
    let builder = Agent::builder(&cluster)
        .config(|i| AgentConfig {
            endpoint: None,
            ..AgentConfig::lan(i)
        })
        .flags(gateway.agent_flags())
        .flags(stun.agent_flags())
        .flags(["--wg-backend", "userspace"]);
    let agents = builder.start_all(1..=2);
    until_on(&agents, Path::Punched);
    let after = |needle| {
        agents
            .iter()
            .filter_map(|a| a.first_logged(needle))
            .max()
            .and_then(|t| t.duration_since(started).ok())
            .unwrap_or_default()
    };
    let (relayed, punched) = (after("path.relay"), after("path.punched"));
    eprintln!(
        "   punched {:.0} ms after the agents started (on the relay after {:.0} ms)",
        ms(punched),
        ms(relayed)
    );
    let punched_way = tunnel(args, &lan, "punched");

    let block = UdpBlock::on(&lan);
    until_on(&agents, Path::Relay);
    let relayed_way = tunnel(args, &lan, "relayed");
    drop(block);
    until_on(&agents, Path::Punched);

    // A NAT that restarts: how long until the pair is on UDP again, with pings 20 ms apart meanwhile.
    let pings = BackgroundPing::start(lan.node(2), overlay_ip(1), 1500, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    let restarted = std::time::Instant::now();
    lan.restart_slirp(1);
    wait_until(
        "the pair to be back on UDP after node 1's NAT restarted",
        BOUND,
        Duration::from_millis(20),
        || replies_within(&lan, 2, 1),
        || tails(&agents),
    );
    let remap_recovered_ms = ms(restarted.elapsed());
    let (sent, received, _) = pings.interrupt();
    eprintln!(
        "   NAT restarted: reached again after {remap_recovered_ms:.0} ms; {} of {sent} pings lost",
        sent - received
    );

    // Through slirp4netns itself, no tunnel: node 1 to node 2's host.
    let host2 = lan.fronts[1].as_ref().expect("node 2's host").ns();
    let slirp_way = way(
        args,
        &lan,
        "slirp4netns alone (TCP to the other host)",
        host2,
        lan_ip(2),
        lan_ip(2),
    );
    Nat {
        relayed_after_ms: ms(relayed),
        punched_after_ms: ms(punched),
        remap_recovered_ms,
        remap_pings_sent: sent,
        remap_pings_lost: sent - received,
        punched: punched_way,
        relayed: relayed_way,
        direct: NatWay::default(),
        slirp: slirp_way,
    }
}

/// The same pair of agents on a plain LAN: the direct path with no NAT.
/// Direct between two agents on a plain LAN, no NAT.
pub(crate) fn plain(args: &Args) -> NatWay {
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let (_agents, _) = Agent::builder(&cluster)
        .flags(["--wg-backend", "userspace"])
        .mesh(1..=2);
    tunnel(args, &lan, "plain direct (no NAT)")
}

/// Whether node `from` reaches seat `to` over the overlay now (one ping, 200 ms).
fn replies_within(lan: &Lan, from: usize, to: u64) -> bool {
    ping(
        lan.node(from),
        overlay_ip(to),
        1,
        Duration::from_millis(200),
    )
    .1 == 1
}
