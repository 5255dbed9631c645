//! What the benchmark measures between namespaces: TCP throughput (iperf3) and round-trip time (ping).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::netns::NetNs;
use crate::ping::{ping_counts, ping_output};
use crate::wait::wait_until;

/// TCP throughput from `client` to `server_addr` (an address of `server`) with iperf3: `streams` parallel
/// streams for `secs` seconds; returns the receiver's rate in Gbit/s.
pub fn iperf3(client: &NetNs, server: &NetNs, server_addr: &str, streams: u32, secs: u32) -> f64 {
    let _server = server.spawn(&["iperf3", "-s", "-1", "-B", server_addr]);
    wait_until(
        &format!("iperf3 to listen on {server_addr}:5201 in {}", server.name),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            server
                .exec_ok(&["ss", "-ltnH"])
                .contains(&format!("{server_addr}:5201"))
        },
        String::new,
    );
    let out = client.exec(
        &[
            "iperf3",
            "-c",
            server_addr,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
        Duration::from_secs(u64::from(secs) + 30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 -c {server_addr} from {} failed: {text}{}",
        client.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}): {text}"));
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in iperf3's report: {text}"))
        / 1e9
}

/// The average round-trip time in milliseconds of `count` pings from `ns` to `ip`, `interval` apart
/// (from ping's `rtt min/avg/max/mdev` line); panics if any reply is lost.
pub fn ping_avg_ms(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> f64 {
    let out = ping_output(ns, ip, count, interval);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        ping_counts(&out),
        (count, count),
        "ping {ip} from {} lost replies: {text}",
        ns.name
    );
    text.lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .and_then(|rest| rest.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .unwrap_or_else(|| panic!("no rtt line in ping's output: {text}"))
}
