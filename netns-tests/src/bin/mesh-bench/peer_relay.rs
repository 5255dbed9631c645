//! Peer relays: two agents behind symmetric NATs, which no punch gets through, and two on the switch that
//! relay for their peers (`--relay-for-peers always`); coturn for STUN and nginx as the gateway. What the
//! pair carries through a peer relay, against the gateway's relay and a direct path on a plain LAN (the
//! added RTT); what the relays spend in CPU per Gbit/s they forward; and how long the pair is cut off when
//! the relay in use is killed.

use std::time::Duration;

use mesh_api::Path;
use netns_tests::measure::perf::{clock_ticks, cpu_ticks};
use netns_tests::net::uplink::{NatKind, StunServer, Uplink};
use netns_tests::prelude::*;

use crate::nat::tunnel;
use crate::report::PeerRelayBench;
use crate::{Args, BOUND};

/// How often the relay in use is killed, for the time the pair takes to move.
const KILLS: usize = 4;
/// The pings that time a move: one every this long.
const PING_EVERY: Duration = Duration::from_millis(20);

/// The relay seat node 1 uses to reach node 2, while the pair goes through one.
fn relay_in_use(agents: &[Agent<'_>]) -> Option<u64> {
    let p = agents[0].peer(2)?;
    (p.path == Some(Path::PeerRelay) && p.healthy)
        .then_some(p.relay_seat)
        .flatten()
}

/// Waits until both of the pair see each other healthy on `path` through one of `relays` (none: the
/// gateway's relay).
fn until(agents: &[Agent<'_>], path: Path, relays: &[u64]) {
    let on = |a: usize, to: u64| {
        agents[a].peer(to).is_some_and(|p| {
            p.healthy
                && p.path == Some(path)
                && (relays.is_empty() || p.relay_seat.is_some_and(|s| relays.contains(&s)))
        })
    };
    wait_until(
        &format!("the pair to be on {path:?} through {relays:?}"),
        BOUND,
        Duration::from_millis(20),
        || on(0, 2) && on(1, 1),
        || format!("{}{}", path_table(agents), tails(agents)),
    );
}

/// The relays' CPU ticks and the bytes they forwarded, summed: each side of the pair may use its own.
fn relays_spent(agents: &[Agent<'_>]) -> (u64, u64) {
    agents[2..].iter().fold((0, 0), |(ticks, bytes), a| {
        let status = a.try_status().unwrap_or_default();
        let forwarded = status["status"]["peerRelay"]["forwardedBytes"]
            .as_u64()
            .unwrap_or(0);
        let pid = a.pid().expect("the relay runs");
        (ticks + cpu_ticks(pid), bytes + forwarded)
    })
}

pub(crate) fn peer_relay(args: &Args) -> PeerRelayBench {
    let lan = Lan::with_uplinks(&[
        Uplink::nat(NatKind::Symmetric),
        Uplink::nat(NatKind::Symmetric),
        Uplink::Switch,
        Uplink::Switch,
    ]);
    let stun = StunServer::start(&lan.switch, "br0");
    let cluster = Cluster::deploy_seats(&lan, 4);
    let gateway = Gateway::for_cluster(&cluster, WG_PORT);
    let builder = |relaying: &str| {
        Agent::builder(&cluster)
            .config(|i| AgentConfig {
                endpoint: if i <= 2 {
                    None
                } else {
                    AgentConfig::lan(i).endpoint
                },
                ..AgentConfig::lan(i)
            })
            .flags(gateway.agent_flags())
            .flags(stun.agent_flags())
            .flags(["--wg-backend", "userspace", "--relay-for-peers", relaying])
    };
    let mut agents = builder("never").start_all(1..=2);
    agents.extend(builder("always").start_all(3..=4));
    until(&agents, Path::PeerRelay, &[3, 4]);

    let (ticks, bytes) = relays_spent(&agents);
    let through_peer = tunnel(args, &lan, "through a peer relay");
    let (ticks_after, bytes_after) = relays_spent(&agents);
    let cpu_s = (ticks_after - ticks) as f64 / clock_ticks();
    let gbit = (bytes_after - bytes) as f64 * 8.0 / 1e9;
    let relay_cpu_s_per_gbit = cpu_s / gbit.max(f64::MIN_POSITIVE);
    eprintln!(
        "   the relays: {cpu_s:.2} CPU s for {gbit:.1} Gbit forwarded, {relay_cpu_s_per_gbit:.3} s per Gbit"
    );

    let mut move_gaps_ms = Vec::new();
    for kill in 1..=KILLS {
        let seat = relay_in_use(&agents).expect("a relay in use");
        let other = 7 - seat;
        let pings = BackgroundPing::start(lan.node(1), overlay_ip(2), 1000, PING_EVERY);
        std::thread::sleep(Duration::from_millis(500));
        agents[seat as usize - 1].kill();
        until(&agents, Path::PeerRelay, &[other]);
        std::thread::sleep(Duration::from_millis(500));
        let (sent, received, _) = pings.interrupt();
        let gap = PING_EVERY.as_secs_f64() * 1e3 * f64::from(sent - received);
        eprintln!(
            "   kill {kill}: relay {seat} killed, on relay {other}; {gap:.0} ms of pings lost"
        );
        move_gaps_ms.push(gap);
        let back = &mut agents[seat as usize - 1];
        back.start_again();
        back.wait_ready(60);
        // Both relays ready again before the next kill: the pair holds an allocation at each.
        std::thread::sleep(Duration::from_secs(3));
    }

    for relay in &mut agents[2..] {
        relay.kill();
    }
    until(&agents, Path::Relay, &[]);
    let through_gateway = tunnel(args, &lan, "through the gateway's relay");
    PeerRelayBench {
        peer_relay: through_peer,
        gateway: through_gateway,
        relay_cpu_s_per_gbit,
        move_gaps_ms,
        direct: crate::nat::plain(args),
    }
}
