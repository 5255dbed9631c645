//! Reachability between namespaces: bounded pings, in the foreground or the background.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::net::netns::NetNs;
use crate::run::process::{ChildGuard, text};

/// Pings `ip` from `ns` `count` times, `interval` apart (each reply awaited up to 1 s); returns
/// (sent, received). A ping that prints no summary (say, no route) counts as (0, 0).
pub fn ping(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> (u32, u32) {
    let out = ping_output(ns, ip, count, interval);
    let counts = ping_counts(&out);
    if counts.1 < count {
        eprintln!(
            "ping {ip} from {}: {counts:?} of {count}: {}",
            ns.name,
            text(&out)
        );
    }
    counts
}

/// Pings `ip` from `ns` five times, 0.2 s apart, each reply awaited up to 5 s (30 s for the whole), and
/// asserts all five replies came; `path` names where the pings went, in the failure with ping's output.
#[track_caller]
pub fn assert_five_replies(ns: &NetNs, ip: Ipv4Addr, path: &str) {
    let out = ns.exec(
        &["ping", "-c", "5", "-i", "0.2", "-W", "5", &ip.to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(
        ping_counts(&out),
        (5, 5),
        "{path}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `ping` to `ip`, `count` times `interval` apart, each reply awaited up to 1 s, printing only its summary.
fn ping_command(ip: Ipv4Addr, count: u32, interval: Duration) -> Vec<String> {
    let count = count.to_string();
    let interval = format!("{:.3}", interval.as_secs_f64());
    [
        "ping",
        "-n",
        "-q",
        "-c",
        &count,
        "-i",
        &interval,
        "-W",
        "1",
        &ip.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs [`ping_command`] in `ns` to completion (bounded) and returns its output.
pub(crate) fn ping_output(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> Output {
    let args = ping_command(ip, count, interval);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.exec(&args, interval * count + Duration::from_secs(10))
}

/// The average round-trip time in milliseconds from ping's `rtt min/avg/max/mdev` line; `None` without one
/// (no reply came).
pub fn rtt_avg_ms(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .and_then(|rest| rest.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
}

/// (sent, received) from ping's summary line; (0, 0) without one.
pub fn ping_counts(out: &Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) else {
        return (0, 0);
    };
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [sent, received] => (sent, received),
        _ => (0, 0),
    }
}

/// A ping running in the background (`ping -i <interval> -c <count>`), stopped by its PID if dropped.
pub struct BackgroundPing {
    what: String,
    count: u32,
    interval: Duration,
    guard: ChildGuard,
}

impl BackgroundPing {
    pub fn start(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> Self {
        let args = ping_command(ip, count, interval);
        let guard = ns.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        Self {
            what: format!("ping {ip} from {}", ns.name),
            count,
            interval,
            guard,
        }
    }

    /// Whether the ping is still sending (it has not exited).
    pub fn running(&mut self) -> bool {
        !self.guard.has_exited()
    }

    /// Stops the ping early (SIGINT, on which ping prints its summary); returns (sent, received) and
    /// ping's output.
    pub fn interrupt(self) -> (u32, u32, String) {
        let _ = kill(
            Pid::from_raw(i32::try_from(self.guard.pid()).expect("pid fits i32")),
            Signal::SIGINT,
        );
        let out = self.guard.wait_output(Duration::from_secs(10));
        let counts = ping_counts(&out);
        (counts.0, counts.1, format!("{}: {}", self.what, text(&out)))
    }

    /// Waits for the ping to finish (bounded by its own length plus slack); returns (sent, received) and
    /// ping's output.
    pub fn finish(self) -> (u32, u32, String) {
        let out = self
            .guard
            .wait_output(self.interval * self.count + Duration::from_secs(15));
        let counts = ping_counts(&out);
        (counts.0, counts.1, format!("{}: {}", self.what, text(&out)))
    }
}
