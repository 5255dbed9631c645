//! Interop: our `Device` in one namespace, `wireguard-go` (configured with `wg set`) in the
//! other; handshakes and pings both ways prove we speak real WireGuard.
//!
//! Run as root: `cargo test -p netns-tests --test scenarios wg_interop:: -- --nocapture` (needs /dev/net/tun, iproute2, iputils-ping,
//! wireguard-tools, wireguard-go).

use std::net::Ipv4Addr;

use netns_tests::measure::transfer::tcp_transfer;
use netns_tests::net::netns::*;
use netns_tests::net::ping::assert_five_replies;
use netns_tests::net::wg::*;
use netns_tests::run::process::*;

/// wireguard-go initiates (B→A), then we initiate after its session exists (A→B); both sides
/// report a handshake.
#[test]
fn interoperates_with_wireguard_go() {
    require_root(&["wireguard-go"]);
    let ns_a = NetNs::new("i");
    let ns_b = NetNs::new("j");
    veth_pair(&ns_a, &["192.0.2.1/24"], &ns_b, &["192.0.2.2/24"]);
    let dev_a = NsDevice::start(
        &ns_a,
        device_config(&unique("A"), 7, Ipv4Addr::new(10, 0, 1, 1)),
    );

    // wireguard-go in B.
    let key_b = test_key(8);
    let pub_b = key_b.public_key();
    let a_ep = format!("192.0.2.1:{}", dev_a.listen_port);
    let mut go = WireguardGo::start(
        &Reference::WireguardGo,
        &ns_b,
        &key_b,
        "10.0.1.2/24",
        &dev_a.public_key,
        &a_ep,
        "10.0.1.1/32",
    );
    let go_if = go.ifname.clone();

    dev_a.set_peer(peer_config(
        pub_b,
        "192.0.2.2:51820".parse().unwrap(),
        "10.0.1.2/32",
    ));

    assert_five_replies(&ns_b, Ipv4Addr::new(10, 0, 1, 1), "wireguard-go → ours");
    assert_five_replies(&ns_a, Ipv4Addr::new(10, 0, 1, 2), "ours → wireguard-go");

    let ours = dev_a.peer(pub_b);
    assert!(
        ours.last_handshake.is_some() && ours.rx_bytes > 0 && ours.tx_bytes > 0,
        "{ours:?}"
    );
    let dump = ns_b.exec_ok(&["wg", "show", &go_if, "dump"]);
    let (_, peers) = parse_dump(&dump);
    assert_eq!(peers.len(), 1, "{dump}");
    assert!(
        peers[0].latest_handshake > 0 && peers[0].rx > 0,
        "wireguard-go saw no handshake: {dump}"
    );
    assert_eq!(peers[0].endpoint, a_ep, "{dump}");

    // Bulk TCP both ways, checked byte by byte: our split TUN super-packets and GSO runs reach a peer without
    // offloads intact, and its datagrams come out of our coalesced TUN writes intact.
    const BYTES: u64 = 32 << 20;
    let took = tcp_transfer(&ns_a, &ns_b, Ipv4Addr::new(10, 0, 1, 2), BYTES);
    eprintln!("ours → wireguard-go: 32 MiB in {took:?}");
    let took = tcp_transfer(&ns_b, &ns_a, Ipv4Addr::new(10, 0, 1, 1), BYTES);
    eprintln!("wireguard-go → ours: 32 MiB in {took:?}");

    go.assert_running();
    dev_a.shutdown();
}
