//! What the benchmark measures between namespaces: TCP throughput (iperf3) and round-trip time (ping), and
//! what a run costs the processes and interfaces carrying it (CPU time, context switches, drops).

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::net::netns::NetNs;
use crate::net::ping::{ping_counts, ping_output, rtt_avg_ms};
use crate::run::process::ChildGuard;
use crate::run::wait::wait_until;

/// One iperf3 run, from its client's JSON report (`-J`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iperf3 {
    /// The receiver's rate in Gbit/s (`end.sum_received`): what got through, not what was sent.
    pub gbps: f64,
    /// The sender's TCP retransmissions over the run (`end.sum_sent.retransmits`): a tunnel that drops
    /// packets under load shows here before it shows in the rate.
    pub retransmits: u64,
}

/// TCP throughput from `client` to `server_addr` (an address of `server`) with iperf3: `streams` parallel
/// streams for `secs` seconds.
pub fn iperf3(
    client: &NetNs,
    server: &NetNs,
    server_addr: &str,
    streams: u32,
    secs: u32,
) -> Iperf3 {
    iperf3_observed(client, server, server_addr, streams, secs, || ()).0
}

/// [`iperf3`], calling `observe` right before the client starts and right after it exits (the server
/// already listening), so that what it samples covers the transfer and not the server's start; returns
/// the run and both samples.
pub fn iperf3_observed<T>(
    client: &NetNs,
    server: &NetNs,
    server_addr: &str,
    streams: u32,
    secs: u32,
    observe: impl FnMut() -> T,
) -> (Iperf3, T, T) {
    let at = (server_addr, 5201);
    iperf3_via_observed(client, server, at, at, streams, secs, observe)
}

/// [`iperf3`] with the server listening on `listen` (address, port) and the client connecting to
/// `connect`, which forwards to it (a proxy, a forwarded port).
pub fn iperf3_via(
    client: &NetNs,
    server: &NetNs,
    listen: (&str, u16),
    connect: (&str, u16),
    streams: u32,
    secs: u32,
) -> Iperf3 {
    iperf3_via_observed(client, server, listen, connect, streams, secs, || ()).0
}

fn iperf3_via_observed<T>(
    client: &NetNs,
    server: &NetNs,
    (listen_addr, listen_port): (&str, u16),
    (connect_addr, connect_port): (&str, u16),
    streams: u32,
    secs: u32,
    mut observe: impl FnMut() -> T,
) -> (Iperf3, T, T) {
    let _server = iperf3_server(server, listen_addr, listen_port);
    let before = observe();
    let out = client.exec(
        &[
            "iperf3",
            "-c",
            connect_addr,
            "-p",
            &connect_port.to_string(),
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
        Duration::from_secs(u64::from(secs) + 30),
    );
    let after = observe();
    let (report, text) = iperf3_report(
        &out,
        &format!(
            "iperf3 -c {connect_addr} -p {connect_port} from {}",
            client.name
        ),
    );
    let end = &report["end"];
    let run = Iperf3 {
        gbps: end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| {
                panic!("no end.sum_received.bits_per_second in iperf3's report: {text}")
            })
            / 1e9,
        retransmits: end["sum_sent"]["retransmits"]
            .as_u64()
            .unwrap_or_else(|| panic!("no end.sum_sent.retransmits in iperf3's report: {text}")),
    };
    (run, before, after)
}

/// Starts a one-test iperf3 server in `server` on `addr`:`port`, once it listens.
fn iperf3_server(server: &NetNs, addr: &str, port: u16) -> ChildGuard {
    let guard = server.spawn(&["iperf3", "-s", "-1", "-B", addr, "-p", &port.to_string()]);
    let listening = format!("{addr}:{port}");
    wait_until(
        &format!("iperf3 to listen on {listening} in {}", server.name),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || server.exec_ok(&["ss", "-ltnH"]).contains(&listening),
        String::new,
    );
    guard
}

/// iperf3's JSON report (`-J`) of a client run `what`, and its text for messages; fails with both streams
/// when the run failed.
fn iperf3_report(out: &std::process::Output, what: &str) -> (serde_json::Value, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}): {text}"));
    (report, text)
}

/// One iperf3 UDP run at a target rate, from both ends' JSON report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iperf3Udp {
    /// What the client sent, and what the server received, in Gbit/s.
    pub sent_gbps: f64,
    pub received_gbps: f64,
    /// Datagrams lost on the way, in percent of those sent.
    pub lost_percent: f64,
}

/// UDP from `client` to `server_addr` (an address of `server`) with iperf3: one stream of `len`-byte
/// datagrams at `mbps` Mbit/s for `secs` seconds.
pub fn iperf3_udp(
    client: &NetNs,
    server: &NetNs,
    server_addr: &str,
    mbps: u64,
    len: usize,
    secs: u32,
) -> Iperf3Udp {
    let _server = iperf3_server(server, server_addr, 5201);
    let out = client.exec(
        &[
            "iperf3",
            "-c",
            server_addr,
            "-u",
            "-b",
            &format!("{mbps}M"),
            "-l",
            &len.to_string(),
            // Socket buffers big enough that iperf3's own receive socket is not where datagrams are lost.
            "-w",
            "4M",
            "-t",
            &secs.to_string(),
            "-J",
        ],
        Duration::from_secs(u64::from(secs) + 30),
    );
    let (report, text) = iperf3_report(
        &out,
        &format!("iperf3 -u -c {server_addr} from {}", client.name),
    );
    let end = &report["end"];
    let field = |sum: &str, name: &str| {
        end[sum][name]
            .as_f64()
            .unwrap_or_else(|| panic!("no end.{sum}.{name} in iperf3's report: {text}"))
    };
    Iperf3Udp {
        sent_gbps: field("sum_sent", "bits_per_second") / 1e9,
        received_gbps: field("sum_received", "bits_per_second") / 1e9,
        lost_percent: field("sum_received", "lost_percent"),
    }
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
    rtt_avg_ms(&text).unwrap_or_else(|| panic!("no rtt line in ping's output: {text}"))
}

/// The CPU time the live threads of a process have run so far, in nanoseconds (each thread's
/// `/proc/<pid>/task/<tid>/schedstat`): finer than [`cpu_ticks`]' 10 ms, for costs of a millisecond. A thread
/// that exits takes its time with it, so measure over windows that outlive no thread of interest.
///
/// # Panics
/// When the process is gone.
pub fn cpu_nanos(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir} (has the process exited?): {e}"));
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The CPU time a process has used so far, all its threads, user and system (`/proc/<pid>/stat` fields 14
/// and 15), in clock ticks ([`clock_ticks`] a second).
///
/// # Panics
/// When the process is gone or its stat line cannot be read.
pub fn cpu_ticks(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {path} (has the process exited?): {e}"));
    // The command is parenthesised and may hold spaces; counting from after it, state is field 3, so utime
    // (14) and stime (15) are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .unwrap_or_else(|| panic!("malformed {path}: {stat:?}"))
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("malformed {path}: {stat:?}"))
    };
    field(11) + field(12)
}

/// Clock ticks per second, the unit of [`cpu_ticks`] (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        other => panic!("sysconf(_SC_CLK_TCK) gave no clock tick rate: {other:?}"),
    }
}

/// The context switches a process's threads have made so far, voluntary and not: the sum over
/// `/proc/<pid>/task/*/status` (the process's own status counts its main thread only). A thread that has
/// exited no longer counts, so take the difference over a run of long-lived threads.
///
/// # Panics
/// When the process is gone.
pub fn ctx_switches(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir} (has the process exited?): {e}"));
    tasks
        .flatten()
        // A thread may exit between the listing and the read: it is skipped.
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The packets interface `ifname` in `ns` has dropped so far, received and sent (`stats64` of
/// `ip -j -s link`): for a TUN device, packets its userspace end did not read in time (tx) or wrote that
/// the kernel refused (rx).
///
/// # Panics
/// When the interface does not exist or `ip` prints no counters.
pub fn link_dropped(ns: &NetNs, ifname: &str) -> u64 {
    let text = ns.ip(&["-j", "-s", "link", "show", "dev", ifname]);
    let links: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("ip -j -s link show dev {ifname} printed no JSON ({e}): {text}")
    });
    let stats = &links[0]["stats64"];
    let dropped = |dir: &str| {
        stats[dir]["dropped"].as_u64().unwrap_or_else(|| {
            panic!(
                "no stats64.{dir}.dropped for {ifname} in {}: {text}",
                ns.name
            )
        })
    };
    dropped("rx") + dropped("tx")
}

/// The UDP datagrams the kernel has dropped in `ns` so far because a socket's receive buffer was full
/// (`RcvbufErrors` of the `Udp:` lines of `/proc/net/snmp`, which counts per namespace): where a WireGuard
/// implementation that drains its socket too slowly loses packets, which its TUN counters do not show.
///
/// # Panics
/// When `/proc/net/snmp` has no such counter.
pub fn udp_rcvbuf_errors(ns: &NetNs) -> u64 {
    let text = ns.exec_ok(&["cat", "/proc/net/snmp"]);
    // A line of names, then a line of values.
    let mut udp = text.lines().filter_map(|l| l.strip_prefix("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    names
        .zip(values)
        .and_then(|(names, values)| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == "RcvbufErrors")
        })
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no Udp RcvbufErrors in {}'s /proc/net/snmp: {text}",
                ns.name
            )
        })
}

/// `perf stat` on running processes: system calls entered, context switches and CPU migrations of every
/// thread of each, counted from [`PerfStat::start`] to [`PerfStat::stop`]. What a measured run cost the
/// processes in work the kernel sees, e.g. divided by the round trips it carried.
pub struct PerfStat {
    guard: ChildGuard,
}

/// What [`PerfStat`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerfCounts {
    /// CPU time of all the threads, in microseconds (`task-clock`).
    pub cpu_us: f64,
    pub syscalls: u64,
    pub context_switches: u64,
    pub migrations: u64,
}

impl PerfStat {
    /// Starts counting for `pids` (all their threads).
    ///
    /// # Panics
    /// When `perf` cannot be started.
    pub fn start(pids: &[u32]) -> Self {
        let pids = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let child = std::process::Command::new("perf")
            .args([
                "stat",
                "-x,",
                "-e",
                "raw_syscalls:sys_enter,context-switches,cpu-migrations,task-clock",
                "-p",
                &pids,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting perf stat (Debian's linux-perf): {e}"));
        let guard = ChildGuard::new(format!("perf stat -p {pids}"), child);
        // perf attaches to the threads before it counts: give it that moment.
        std::thread::sleep(Duration::from_millis(200));
        Self { guard }
    }

    /// Stops counting (SIGINT, on which perf prints its counts) and reads them.
    ///
    /// # Panics
    /// When perf printed no counts.
    pub fn stop(self) -> PerfCounts {
        let pid = i32::try_from(self.guard.pid()).expect("pid fits i32");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = self.guard.wait_output(Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stderr);
        let value = |event: &str| -> f64 {
            text.lines()
                .find(|l| l.split(',').nth(2) == Some(event))
                .and_then(|l| l.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("perf stat printed no count of {event}: {text}"))
        };
        let count = |event: &str| value(event) as u64;
        PerfCounts {
            // perf prints task-clock in milliseconds.
            cpu_us: value("task-clock") * 1000.0,
            syscalls: count("raw_syscalls:sys_enter"),
            context_switches: count("context-switches"),
            migrations: count("cpu-migrations"),
        }
    }
}

/// `perf record -g` on running processes (all their threads), into a file for `perf report -i`.
pub struct PerfRecord {
    guard: ChildGuard,
    out: std::path::PathBuf,
}

impl PerfRecord {
    /// Starts sampling `pids` at 4,999 Hz with call graphs, into `out`.
    ///
    /// # Panics
    /// When `perf` cannot be started.
    pub fn start(pids: &[u32], out: &std::path::Path) -> Self {
        let pids = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-F", "4999", "-g", "-p", &pids, "-o"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting perf record (Debian's linux-perf): {e}"));
        let guard = ChildGuard::new(format!("perf record -p {pids}"), child);
        std::thread::sleep(Duration::from_millis(200));
        Self {
            guard,
            out: out.to_owned(),
        }
    }

    /// Stops sampling (SIGINT, on which perf writes the file and exits with the signal's status).
    ///
    /// # Panics
    /// When perf wrote no samples.
    pub fn stop(self) {
        let pid = i32::try_from(self.guard.pid()).expect("pid fits i32");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
        let done = self.guard.wait_output(Duration::from_secs(30));
        let written = std::fs::metadata(&self.out).map_or(0, |m| m.len());
        assert!(
            written > 0,
            "perf record wrote nothing to {} ({}): {}",
            self.out.display(),
            done.status,
            String::from_utf8_lossy(&done.stderr)
        );
    }
}
