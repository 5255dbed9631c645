//! Peer relays between our own `Device`s, with no agent and no gateway: A and B behind symmetric NATs,
//! which no punch gets through, and C and D on the switch, relaying for their peers. A and B make their
//! first handshake through a relay, talk through the faster one, and move to the other within the peer
//! timeout when it stops.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mesh_wg::{
    DeviceConfig, Key, Liveness, PathKind, PeerRelayConfig, RelayDropped, RelayLimits, RelayOffer,
};
use netns_tests::measure::transfer::tcp_transfer;
use netns_tests::net::netns::unique;
use netns_tests::net::ping::{BackgroundPing, assert_five_replies};
use netns_tests::net::uplink::{NatKind, Uplink, lan_ip};
use netns_tests::net::wg::*;
use netns_tests::run::process::require_root;
use netns_tests::run::wait::wait_until;
use netns_tests::system::lan::{Lan, WG_PORT};

const LIVENESS: Liveness = Liveness {
    timeout: Duration::from_millis(2500),
};

fn overlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, u8::try_from(i).unwrap())
}

/// Node i's device: on the WireGuard port, relaying for peers when `relays`.
fn config(i: usize, relays: bool) -> DeviceConfig {
    DeviceConfig {
        listen_port: WG_PORT,
        liveness: LIVENESS,
        peer_relay: relays.then_some(PeerRelayConfig {
            offer: RelayOffer::Always,
            limits: RelayLimits::default(),
        }),
        ..device_config(&unique("pr"), u8::try_from(i).unwrap(), overlay(i))
    }
}

/// The path A's device has to B, and the relay seat it goes through.
fn path(dev: &NsDevice, to: Key) -> (PathKind, Option<Key>) {
    let p = dev.peer(to);
    (p.path, p.peer_relay)
}

#[test]
fn a_pair_that_cannot_punch_talks_through_a_peer_relay_and_moves_to_another_when_it_stops() {
    require_root(&["nft", "ping"]);
    let lan = Lan::with_uplinks(&[
        Uplink::nat(NatKind::Symmetric),
        Uplink::nat(NatKind::Symmetric),
        Uplink::Switch,
        Uplink::Switch,
    ]);
    let mut devs: Vec<Option<NsDevice>> = (1..=4)
        .map(|i| Some(NsDevice::start(&lan.nodes[i - 1], config(i, i >= 3))))
        .collect();
    let keys: Vec<Key> = devs
        .iter()
        .map(|d| d.as_ref().unwrap().public_key)
        .collect();
    for (i, dev) in devs.iter().enumerate() {
        for (j, key) in keys.iter().enumerate() {
            if i != j {
                let at = SocketAddr::V4(SocketAddrV4::new(lan_ip(j + 1), WG_PORT));
                let allowed = format!("{}/32", overlay(j + 1));
                dev.as_ref()
                    .unwrap()
                    .set_peer(peer_config(*key, at, &allowed));
            }
        }
    }
    let dev = |i: usize| devs[i - 1].as_ref().unwrap();
    let (a, b) = (dev(1), dev(2));
    let relays = [keys[2], keys[3]];

    // The first handshake goes through a relay on trial; then probes choose one.
    let started = Instant::now();
    wait_until(
        "A and B to reach each other through a peer relay",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (pa, ra) = path(a, keys[1]);
            let (pb, rb) = path(b, keys[0]);
            pa == PathKind::PeerRelay
                && pb == PathKind::PeerRelay
                && ra.is_some_and(|r| relays.contains(&r))
                && rb.is_some_and(|r| relays.contains(&r))
                && a.peer(keys[1]).last_handshake.is_some()
        },
        || format!("A: {:?}\nB: {:?}", a.peer(keys[1]), b.peer(keys[0])),
    );
    eprintln!("through a peer relay after {:?}", started.elapsed());
    assert_five_replies(&lan.nodes[0], overlay(2), "A to B through a peer relay");

    let (_, Some(used)) = path(a, keys[1]) else {
        unreachable!()
    };
    let used_at = if used == keys[2] { 3 } else { 4 };
    let other_at = 7 - used_at;
    let stats = dev(used_at).peer_relay().expect("a relay").stats;
    assert!(
        stats.forwarded_bytes > 0 && stats.allocations == 1,
        "the relay in use forwards the pair's datagrams: {stats:?}"
    );
    assert_eq!(
        stats.dropped(RelayDropped::Stranger),
        0,
        "only the pair's own endpoints send on its allocation: {stats:?}"
    );
    assert!(
        dev(1).peer_relay().is_none() && dev(2).peer_relay().is_none(),
        "A and B were made without a relay"
    );

    // The relay in use stops: both sides move to the other within the peer timeout.
    let interval = Duration::from_millis(100);
    let ping = BackgroundPing::start(&lan.nodes[0], overlay(2), 150, interval);
    std::thread::sleep(Duration::from_secs(2));
    devs[used_at - 1].take().unwrap().shutdown();
    let dev = |i: usize| devs[i - 1].as_ref().unwrap();
    let (a, b) = (dev(1), dev(2));
    let other = keys[other_at - 1];
    wait_until(
        "A and B to move to the other relay",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            path(a, keys[1]) == (PathKind::PeerRelay, Some(other))
                && path(b, keys[0]) == (PathKind::PeerRelay, Some(other))
        },
        || format!("A: {:?}\nB: {:?}", a.peer(keys[1]), b.peer(keys[0])),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (sent, received, summary) = ping.interrupt();
    let gap = interval * (sent - received);
    eprintln!(
        "relay stopped: {} of {sent} lost, a gap of {gap:?} ({summary})",
        sent - received
    );
    assert!(
        gap <= LIVENESS.timeout + Duration::from_millis(1000),
        "the pair moved within the peer timeout plus a probe's round: {summary}"
    );

    // A bulk transfer through the remaining relay arrives intact.
    let took = tcp_transfer(&lan.nodes[0], &lan.nodes[1], overlay(2), 16 << 20);
    eprintln!("16 MiB through the peer relay in {took:?}");
    let stats = dev(other_at).peer_relay().expect("a relay").stats;
    assert!(stats.forwarded_bytes > 16 << 20, "{stats:?}");
}
