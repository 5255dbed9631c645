//! Two namespaces joined by a veth, one of our `Device`s in each.
//!
//! Run as root: `cargo test -p netns-tests --test scenarios wg_netns:: -- --nocapture` (needs /dev/net/tun, iproute2, iputils-ping,
//! wireguard-tools). Without root these tests fail with one message saying what is needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh_wg::{DeviceConfig, Error, Offload, PeerConfig};
use netns_tests::measure::transfer::tcp_transfer;
use netns_tests::measure::udp_gso::udp_gso_bursts;
use netns_tests::net::netns::*;
use netns_tests::net::ping::{assert_five_replies, ping_counts};
use netns_tests::net::wg::*;
use netns_tests::run::process::*;
use netns_tests::run::wait::wait_until;

const A_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const B_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A veth between `ns_a` (192.0.2.1) and `ns_b` (192.0.2.2), a device in each (B's config as `b_config` makes
/// it), and each device the other's peer; no packet has been sent through them yet.
fn peered_pair(
    ns_a: &NetNs,
    ns_b: &NetNs,
    b_config: impl FnOnce(DeviceConfig) -> DeviceConfig,
) -> (NsDevice, NsDevice) {
    veth_pair(ns_a, &["192.0.2.1/24"], ns_b, &["192.0.2.2/24"]);
    let dev_a = NsDevice::start(ns_a, device_config(&unique("A"), 1, A_OVERLAY));
    let dev_b = NsDevice::start(ns_b, b_config(device_config(&unique("B"), 2, B_OVERLAY)));
    let a_ep = sa(&format!("192.0.2.1:{}", dev_a.listen_port));
    let b_ep = sa(&format!("192.0.2.2:{}", dev_b.listen_port));
    dev_a.set_peer(peer_config(dev_b.public_key, b_ep, "10.0.1.2/32"));
    dev_b.set_peer(peer_config(dev_a.public_key, a_ep, "10.0.1.1/32"));
    (dev_a, dev_b)
}

/// Ping over the overlay, `wg show dump` through our UAPI, in-place endpoint/keepalive changes
/// (API and `wg set`) with zero loss and no new handshake, roaming, then removal stops traffic.
#[test]
fn pair_pings_updates_in_place_and_removes() {
    require_root(&[]);
    let ns_a = NetNs::new("a");
    let ns_b = NetNs::new("b");
    veth_pair(
        &ns_a,
        &["192.0.2.1/24", "198.51.100.1/24"],
        &ns_b,
        &["192.0.2.2/24", "198.51.100.2/24"],
    );
    let dev_a = NsDevice::start(&ns_a, device_config(&unique("A"), 1, A_OVERLAY));
    let dev_b = NsDevice::start(&ns_b, device_config(&unique("B"), 2, B_OVERLAY));
    assert_ne!(
        dev_a.listen_port, 0,
        "listen port 0 must be resolved to the kernel's pick"
    );

    // The TUN exists in its namespace with the configured MTU and address.
    let link = ns_a.ip(&["addr", "show", "dev", &dev_a.ifname]);
    assert!(
        link.contains("mtu 1420") && link.contains("10.0.1.1/24") && link.contains("UP"),
        "{link}"
    );

    let a_ep = sa(&format!("192.0.2.1:{}", dev_a.listen_port));
    let b_ep = sa(&format!("192.0.2.2:{}", dev_b.listen_port));
    dev_a.set_peer(peer_config(dev_b.public_key, b_ep, "10.0.1.2/32"));
    dev_b.set_peer(peer_config(dev_a.public_key, a_ep, "10.0.1.1/32"));

    assert_five_replies(&ns_a, B_OVERLAY, "ping over the overlay");

    // The real `wg` reads our UAPI: our public key, the peer with a handshake and traffic.
    let dump = ns_a.exec_ok(&["wg", "show", &dev_a.ifname, "dump"]);
    let (iface, peers) = parse_dump(&dump);
    assert_eq!(
        iface[1],
        dev_a.public_key.to_string(),
        "wg shows our public key: {dump}"
    );
    assert_eq!(iface[2], dev_a.listen_port.to_string(), "{dump}");
    assert_eq!(peers.len(), 1, "{dump}");
    let p = &peers[0];
    assert_eq!(p.public_key, dev_b.public_key);
    assert_eq!(p.endpoint, b_ep.to_string());
    assert_eq!(p.allowed_ips, "10.0.1.2/32");
    assert!(
        p.latest_handshake > 1_600_000_000,
        "handshake must be a UNIX timestamp: {dump}"
    );
    assert!(p.rx > 0 && p.tx > 0, "transfer must be non-zero: {dump}");
    let human = ns_a.exec_ok(&["wg", "show", &dev_a.ifname]);
    assert!(human.contains("latest handshake:"), "{human}");

    let handshake_before = dev_a.peer(dev_b.public_key).last_handshake;
    assert!(handshake_before.is_some(), "no handshake recorded");

    // In-place changes while a fast ping runs: API endpoint + keepalive, then `wg set`.
    let ping = ns_a.spawn(&["ping", "-c", "100", "-i", "0.05", "-W", "1", "10.0.1.2"]);
    std::thread::sleep(Duration::from_millis(1500));
    let b_ep2 = sa(&format!("198.51.100.2:{}", dev_b.listen_port));
    dev_a.set_peer(PeerConfig {
        persistent_keepalive: Some(1),
        ..peer_config(dev_b.public_key, b_ep2, "10.0.1.2/32")
    });
    assert_eq!(
        dev_a.peer(dev_b.public_key).endpoint,
        Some(b_ep2),
        "API endpoint change applied"
    );
    std::thread::sleep(Duration::from_millis(1500));
    // `wg set <A> peer <B> …`
    let set_b_on_a = |args: &[&str]| {
        let b = dev_b.public_key.to_string();
        let mut command = vec!["wg", "set", &dev_a.ifname, "peer", &b];
        command.extend_from_slice(args);
        ns_a.exec_ok(&command)
    };
    set_b_on_a(&[
        "persistent-keepalive",
        "3",
        "allowed-ips",
        "10.0.1.2/32,10.0.9.0/24",
    ]);
    let out = ping.wait_output(Duration::from_secs(20));
    assert_eq!(
        ping_counts(&out),
        (100, 100),
        "loss during in-place update: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let after = dev_a.peer(dev_b.public_key);
    assert_eq!(
        after.last_handshake, handshake_before,
        "in-place update must keep the session"
    );
    // A reply B sent from its old address before it heard from the new one roams A back to it, as WireGuard
    // roams: under load such a reply is often in flight at the change.
    assert!(
        after.endpoint == Some(b_ep2) || after.endpoint == Some(b_ep),
        "A reaches B at one of its addresses: {after:?}"
    );
    assert_eq!(
        after.persistent_keepalive,
        Some(3),
        "wg set keepalive applied"
    );
    assert_eq!(
        after.allowed_ips.len(),
        2,
        "wg set allowed-ips applied: {:?}",
        after.allowed_ips
    );
    // B roams to A's new source address once it sees authenticated packets from it. A that roamed back to
    // B's old address (above) sends from its old one: it is pointed at the new one again, with nothing in
    // flight now, and pings.
    if after.endpoint != Some(b_ep2) {
        set_b_on_a(&["endpoint", &b_ep2.to_string()]);
        assert_five_replies(&ns_a, B_OVERLAY, "ping from A's new address");
    }
    let a_ep2 = sa(&format!("198.51.100.1:{}", dev_a.listen_port));
    wait_until(
        "B to roam to A's new address",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || dev_b.peer(dev_a.public_key).endpoint == Some(a_ep2),
        String::new,
    );
    let dump = ns_a.exec_ok(&["wg", "show", &dev_a.ifname, "dump"]);
    assert_eq!(parse_dump(&dump).1[0].keepalive, "3", "{dump}");

    // `wg set … remove` and `wg syncconf` (which re-sends the unchanged peer B and drops the
    // extra one) go through the UAPI in place: B's session survives, traffic keeps flowing.
    let k3 = test_key(9).public_key().to_string();
    let add_k3 = || {
        ns_a.exec_ok(&[
            "wg",
            "set",
            &dev_a.ifname,
            "peer",
            &k3,
            "allowed-ips",
            "10.0.1.3/32",
        ])
    };
    add_k3();
    assert_eq!(dev_a.peers().len(), 2, "wg set added a peer");
    ns_a.exec_ok(&["wg", "set", &dev_a.ifname, "peer", &k3, "remove"]);
    assert_eq!(dev_a.peers().len(), 1, "wg set remove removed it");
    add_k3();
    let conf = tempfile::NamedTempFile::new().expect("temp conf");
    std::fs::write(
        conf.path(),
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {}\n\n[Peer]\nPublicKey = {}\n\
             Endpoint = {b_ep2}\nAllowedIPs = 10.0.1.2/32, 10.0.9.0/24\nPersistentKeepalive = 3\n",
            private_key_base64(&test_key(1)),
            dev_a.listen_port,
            dev_b.public_key
        ),
    )
    .expect("write conf");
    let ping = ns_a.spawn(&["ping", "-c", "40", "-i", "0.05", "-W", "1", "10.0.1.2"]);
    std::thread::sleep(Duration::from_millis(500));
    ns_a.exec_ok(&[
        "wg",
        "syncconf",
        &dev_a.ifname,
        conf.path().to_str().expect("utf-8 path"),
    ]);
    let out = ping.wait_output(Duration::from_secs(20));
    assert_eq!(
        ping_counts(&out),
        (40, 40),
        "loss across wg syncconf: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let peers = dev_a.peers();
    assert_eq!(peers.len(), 1, "syncconf removed the extra peer: {peers:?}");
    assert_eq!(
        peers[0].last_handshake, handshake_before,
        "syncconf must keep B's session"
    );

    // Removing the peer stops traffic.
    assert!(dev_a.remove_peer(dev_b.public_key), "peer existed");
    assert!(
        !dev_a.remove_peer(dev_b.public_key),
        "second removal reports absence"
    );
    assert!(dev_a.peers().is_empty());
    let out = ns_a.exec(
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.1.2"],
        Duration::from_secs(15),
    );
    assert!(
        !out.status.success(),
        "ping must fail after removing the peer"
    );
    assert_eq!(
        ping_counts(&out).1,
        0,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let ifname = dev_a.ifname.clone();
    dev_a.shutdown();
    dev_b.shutdown();
    let links = ns_a.ip(&["link", "show"]);
    assert!(
        !links.contains(&ifname),
        "shutdown must delete the interface: {links}"
    );
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    assert!(
        !std::path::Path::new(&sock).exists(),
        "shutdown must remove {sock}"
    );
}

/// Offload on one side only: A splits TCP super-packets from its TUN, sends GSO runs and coalesces what it
/// writes to its TUN; B does none of that. A stream checked byte by byte crosses intact both ways, so each
/// side's packets are valid for the other (checksums, lengths, order).
#[test]
fn bulk_tcp_is_intact_between_offloading_and_plain_devices() {
    require_root(&[]);
    let (ns_a, ns_b) = (NetNs::new("a"), NetNs::new("b"));
    let (dev_a, dev_b) = peered_pair(&ns_a, &ns_b, |plain| DeviceConfig {
        offload: Offload {
            tun: false,
            udp: false,
        },
        ..plain
    });

    const BYTES: u64 = 64 << 20;
    let took = tcp_transfer(&ns_a, &ns_b, B_OVERLAY, BYTES);
    eprintln!("offloading → plain: 64 MiB in {took:?}");
    let took = tcp_transfer(&ns_b, &ns_a, A_OVERLAY, BYTES);
    eprintln!("plain → offloading: 64 MiB in {took:?}");
    let (a, b) = (dev_a.peer(dev_b.public_key), dev_b.peer(dev_a.public_key));
    assert!(
        a.tx_bytes > BYTES && b.tx_bytes > BYTES,
        "both devices carried both streams: {a:?} {b:?}"
    );
}

/// UDP that an application sends in GSO runs of up to 128 datagrams (Linux's most), each reaching the TUN
/// as one super-packet, crosses the tunnel whole when it comes right behind a smaller one: the device never
/// reads a super-packet into a batch without room to split it.
#[test]
fn udp_super_packets_of_up_to_128_datagrams_cross_whole_behind_smaller_ones() {
    require_root(&[]);
    let (ns_a, ns_b) = (NetNs::new("a"), NetNs::new("b"));
    let (_dev_a, _dev_b) = peered_pair(&ns_a, &ns_b, |c| c);
    assert_five_replies(&ns_a, B_OVERLAY, "A to B before the bursts");

    let (sent, received) = udp_gso_bursts(
        &ns_a,
        &ns_b,
        B_OVERLAY,
        &[20, 20, 120],
        200,
        300,
        Duration::from_millis(5),
    );
    assert!(sent > 0, "nothing sent");
    assert_eq!(
        received,
        sent,
        "{} of {sent} datagrams lost in super-packets of 20 and 120 back to back",
        sent.saturating_sub(received)
    );
}

/// A peer that was just added is handshaken at once, from both sides, without any traffic or keepalive to
/// start it: a node that joins is reachable on its first packet, not a handshake later.
#[test]
fn a_new_peer_is_handshaken_at_once_without_traffic() {
    require_root(&[]);
    let (ns_a, ns_b) = (NetNs::new("a"), NetNs::new("b"));
    let (dev_a, dev_b) = peered_pair(&ns_a, &ns_b, |b| b);
    wait_until(
        "both devices to report a handshake with no packet sent through them",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || {
            dev_a.peer(dev_b.public_key).last_handshake.is_some()
                && dev_b.peer(dev_a.public_key).last_handshake.is_some()
        },
        || {
            format!(
                "{:?}\n{:?}",
                dev_a.peer(dev_b.public_key),
                dev_b.peer(dev_a.public_key)
            )
        },
    );
}

/// `wg set <if> listen-port N` rebinds the device's socket while the tunnel is up, and the packet thread,
/// asleep on the old socket, reads from the new one at once: the peer reaches it there with its next packet.
#[test]
fn a_new_listen_port_carries_the_tunnel_at_once() {
    require_root(&[]);
    let (ns_a, ns_b) = (NetNs::new("a"), NetNs::new("b"));
    let (dev_a, dev_b) = peered_pair(&ns_a, &ns_b, |b| b);
    assert_five_replies(&ns_a, B_OVERLAY, "ping before the rebind");

    let new_port = if dev_a.listen_port == 51_999 {
        51_998
    } else {
        51_999
    };
    ns_a.exec_ok(&[
        "wg",
        "set",
        &dev_a.ifname,
        "listen-port",
        &new_port.to_string(),
    ]);
    let shown = ns_a.exec_ok(&["wg", "show", &dev_a.ifname, "listen-port"]);
    assert_eq!(
        shown.trim(),
        new_port.to_string(),
        "the device says its new port"
    );
    let a_new = sa(&format!("192.0.2.1:{new_port}"));
    dev_b.set_peer(peer_config(dev_a.public_key, a_new, "10.0.1.1/32"));
    assert_five_replies(&ns_b, A_OVERLAY, "ping to the new port, from the peer");
    assert_five_replies(&ns_a, B_OVERLAY, "ping from the rebound device");
}

/// A name taken by a link in the namespace, or by a live UAPI socket of a device in another
/// namespace, is reported as in use.
#[test]
fn interface_name_in_use_is_reported() {
    require_root(&[]);
    let ns_a = NetNs::new("c");
    let ns_b = NetNs::new("d");
    let taken = unique("X");
    ns_a.ip(&[
        "link",
        "add",
        &taken,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{taken}p"),
    ]);
    let err = NsDevice::try_start(
        &ns_a,
        device_config(&taken, 3, A_OVERLAY),
        Flavor::CurrentThread,
    )
    .err()
    .expect("creating over an existing link must fail");
    assert!(matches!(err, Error::InterfaceExists { .. }), "{err}");
    assert!(err.to_string().contains("already in use"), "{err}");

    let name = unique("Y");
    let _dev = NsDevice::start(&ns_a, device_config(&name, 4, A_OVERLAY));
    let err = NsDevice::try_start(
        &ns_b,
        device_config(&name, 5, B_OVERLAY),
        Flavor::CurrentThread,
    )
    .err()
    .expect("same name in another namespace must fail (shared UAPI directory)");
    assert!(matches!(err, Error::InterfaceExists { .. }), "{err}");
}

/// Names over 15 bytes are rejected before anything is created (no root needed).
#[test]
fn long_interface_name_is_rejected() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(mesh_wg::Device::create(device_config(
            "wgt-name-too-long",
            6,
            A_OVERLAY,
        )))
        .err()
        .expect("16+ byte name must fail");
    assert!(matches!(err, Error::IfNameTooLong { len: 17, .. }), "{err}");
}

/// `auto` picks the kernel's WireGuard where the module exists and the userspace device elsewhere; an
/// explicit `kernel` without the module is an error that says what to do.
#[test]
fn backend_choice_follows_the_kernel_module() {
    use mesh_wg::{BackendChoice, MeshDevice};
    require_root(&[]);
    let ns = NetNs::new("bk");
    let module = mesh_wg::kernel_module_present();
    let (auto, explicit) = in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let auto = MeshDevice::create(
                device_config(&unique("au"), 1, A_OVERLAY),
                BackendChoice::Auto,
            )
            .await
            .expect("auto always finds a backend");
            let backend = auto.backend();
            auto.shutdown().await.unwrap();
            let explicit = MeshDevice::create(
                device_config(&unique("ke"), 2, A_OVERLAY),
                BackendChoice::Kernel,
            )
            .await;
            let explicit = match explicit {
                Ok(d) => {
                    let b = d.backend().to_string();
                    d.shutdown().await.unwrap();
                    Ok(b)
                }
                Err(e) => Err(e),
            };
            (backend, explicit)
        })
    });
    if module {
        assert_eq!(auto, "kernel");
        assert_eq!(explicit.unwrap(), "kernel");
    } else {
        assert_eq!(
            auto, "userspace",
            "no wireguard module here, so auto must fall back"
        );
        let err = explicit.expect_err("kernel without the module must fail");
        assert!(matches!(err, Error::KernelUnavailable { .. }), "{err}");
        assert!(
            err.to_string().contains("use the userspace backend"),
            "{err}"
        );
    }
}
