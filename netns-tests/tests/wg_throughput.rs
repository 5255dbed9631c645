//! Throughput report (not a pass/fail test): iperf3 single-stream TCP for 5 s over the bare
//! veth, our tunnel, and a wireguard-go pair, all at MTU 1420.
//!
//! Run as root: `cargo test --release -p netns-tests --test wg_throughput -- --ignored --nocapture`
//! (needs iperf3 and wireguard-go besides the netns test tools).

use std::net::Ipv4Addr;
use std::time::Duration;

use netns_tests::netns::*;

/// Runs iperf3 from `client` to `server_addr` in `server`; returns (Gbit/s received, sender line).
fn iperf(client: &NetNs, server: &NetNs, server_addr: &str) -> (f64, String) {
    let _srv = server.spawn(&["iperf3", "-s", "-1", "-B", server_addr]);
    wait_for("iperf3 server to listen", Duration::from_secs(10), || {
        server.exec_ok(&["ss", "-ltn"]).contains(":5201")
    });
    let out = client.exec(
        &["iperf3", "-c", server_addr, "-t", "5", "-f", "m"],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "iperf3 failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |tag: &str| {
        text.lines()
            .find(|l| l.trim_end().ends_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line in {text}"))
            .to_owned()
    };
    let receiver = line("receiver");
    let mbits: f64 = receiver
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "Mbits/sec")
        .map(|w| w[0].parse().expect("rate"))
        .unwrap_or_else(|| panic!("no rate in {receiver}"));
    (mbits / 1000.0, line("sender"))
}

#[test]
#[ignore = "benchmark; run explicitly with --ignored --nocapture"]
fn throughput_report() {
    require_root(&["wireguard-go", "iperf3"]);
    let mut report = Vec::new();

    {
        let ns_a = NetNs::new("p");
        let ns_b = NetNs::new("q");
        veth_pair(&ns_a, &["192.0.2.1/24"], &ns_b, &["192.0.2.2/24"]);
        for ns in [&ns_a, &ns_b] {
            ns.ip(&["link", "set", "veth0", "mtu", "1420"]);
        }
        report.push(("bare veth (MTU 1420)", iperf(&ns_a, &ns_b, "192.0.2.2")));
    }

    for (label, flavor) in [
        ("ours, current-thread runtime", Flavor::CurrentThread),
        ("ours, 2-worker runtime", Flavor::MultiThread),
    ] {
        let ns_a = NetNs::new("p");
        let ns_b = NetNs::new("q");
        veth_pair(&ns_a, &["192.0.2.1/24"], &ns_b, &["192.0.2.2/24"]);
        let a = NsDevice::try_start(
            &ns_a,
            device_config(&unique("A"), 1, Ipv4Addr::new(10, 0, 1, 1)),
            flavor,
        )
        .expect("device A");
        let b = NsDevice::try_start(
            &ns_b,
            device_config(&unique("B"), 2, Ipv4Addr::new(10, 0, 1, 2)),
            flavor,
        )
        .expect("device B");
        a.set_peer(peer_config(
            b.public_key,
            format!("192.0.2.2:{}", b.listen_port).parse().unwrap(),
            "10.0.1.2/32",
        ));
        b.set_peer(peer_config(
            a.public_key,
            format!("192.0.2.1:{}", a.listen_port).parse().unwrap(),
            "10.0.1.1/32",
        ));
        report.push((label, iperf(&ns_a, &ns_b, "10.0.1.2")));
        a.shutdown();
        b.shutdown();
    }

    {
        let ns_a = NetNs::new("p");
        let ns_b = NetNs::new("q");
        veth_pair(&ns_a, &["192.0.2.1/24"], &ns_b, &["192.0.2.2/24"]);
        let pub_a = test_key(11).public_key();
        let pub_b = test_key(12).public_key();
        let _a = WireguardGo::start(
            &ns_a,
            &test_key(11),
            "10.0.1.1/24",
            &pub_b,
            "192.0.2.2:51820",
            "10.0.1.2/32",
        );
        let _b = WireguardGo::start(
            &ns_b,
            &test_key(12),
            "10.0.1.2/24",
            &pub_a,
            "192.0.2.1:51820",
            "10.0.1.1/32",
        );
        report.push(("wireguard-go pair", iperf(&ns_a, &ns_b, "10.0.1.2")));
    }

    println!("\n=== iperf3 single TCP stream, 5 s, MTU 1420 ===");
    for (label, (gbps, sender)) in &report {
        println!("{label:32} {gbps:6.2} Gbit/s   sender: {}", sender.trim());
    }
}
