//! The relay: throughput and RTT between two agents whose UDP is blocked, through nginx as the gateway.

use std::time::Duration;

use netns_tests::measure::perf::{iperf3, ping_avg_ms};
use netns_tests::prelude::*;

use crate::Args;
use crate::report::Relay;

/// Two agents whose UDP is dropped, meshed through the stand-in gateway: throughput and RTT over the relay.
pub(crate) fn relay(args: &Args) -> Relay {
    let lan = Lan::new(2);
    let cluster = Cluster::deploy_seats(&lan, 2);
    let gateway = Gateway::for_cluster(&cluster, WG_PORT);
    let _block = UdpBlock::on(&lan);
    let relayed = Agent::builder(&cluster)
        .flags(gateway.agent_flags())
        .flags(["--wg-backend", "userspace"]);
    let agents: Vec<Agent<'_>> = (1..=2).map(|i| relayed.start(i)).collect();
    wait_until(
        "both agents to reach each other over the relay",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || all_healthy_on(&agents, mesh_api::Path::Relay),
        || format!("{}{}", path_table(&agents), tails(&agents)),
    );
    let every = Duration::from_millis(20);
    ping_avg_ms(lan.node(1), overlay_ip(2), 5, every);
    let bare = ping_avg_ms(lan.node(1), lan_ip(2), 200, every);
    let rtt = ping_avg_ms(lan.node(1), overlay_ip(2), 200, every);
    let run = |streams| {
        iperf3(
            lan.node(1),
            lan.node(2),
            &overlay_ip(2).to_string(),
            streams,
            args.seconds,
        )
    };
    let (one, four) = (run(1), run(4));
    eprintln!(
        "   relay: {:.2} Gbit/s (1 stream), {:.2} (4), RTT {rtt:.3} ms (+{:.3} over the bare link)",
        one.gbps,
        four.gbps,
        rtt - bare
    );
    Relay {
        rtt_ms: rtt,
        bare_rtt_ms: bare,
        added_ms: rtt - bare,
        streams1_gbps: one.gbps,
        streams1_retransmits: one.retransmits,
        streams4_gbps: four.gbps,
        streams4_retransmits: four.retransmits,
    }
}
