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
    summary_counts(&String::from_utf8_lossy(&out.stdout))
}

/// (sent, received) from the summary line in ping's output `text`; (0, 0) without one.
fn summary_counts(text: &str) -> (u32, u32) {
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

/// A ping running in the background (`ping -O -i <interval> -c <count>`), stopped by its PID if dropped. Its
/// output goes to a file rather than a pipe (a line per reply would fill a pipe nobody reads), so that
/// [`BackgroundPing::interrupt`] can tell a reply lost from one still on its way.
pub struct BackgroundPing {
    what: String,
    count: u32,
    interval: Duration,
    output: tempfile::NamedTempFile,
    guard: ChildGuard,
}

impl BackgroundPing {
    pub fn start(ns: &NetNs, ip: Ipv4Addr, count: u32, interval: Duration) -> Self {
        let output = tempfile::NamedTempFile::new().expect("a file for ping's output");
        let mut args = ping_command(ip, count, interval);
        // Every reply on a line, and a line for each request not answered when the next is sent.
        args.retain(|a| a != "-q");
        args.insert(1, "-O".to_owned());
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(output.reopen().expect("ping's output file"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ping in {}: {e}", ns.name));
        let what = format!("ping {ip} from {}", ns.name);
        Self {
            guard: ChildGuard::new(what.clone(), child),
            what,
            count,
            interval,
            output,
        }
    }

    /// Whether the ping is still sending (it has not exited).
    pub fn running(&mut self) -> bool {
        !self.guard.has_exited()
    }

    /// Stops the ping early (SIGINT); returns (sent, received) and ping's summary. A request still on its way
    /// when it stopped (sent less than an interval before) counts as neither: only a request that went
    /// unanswered past the next one and never was answered is lost.
    pub fn interrupt(self) -> (u32, u32, String) {
        let _ = kill(
            Pid::from_raw(i32::try_from(self.guard.pid()).expect("pid fits i32")),
            Signal::SIGINT,
        );
        let Self {
            what,
            output,
            guard,
            ..
        } = self;
        let _ = guard.wait_output(Duration::from_secs(10));
        let text = std::fs::read_to_string(output.path()).unwrap_or_default();
        let (received, lost) = replies_and_losses(&text);
        (
            received + lost,
            received,
            format!("{what}: {}", summary(&text)),
        )
    }

    /// Waits for the ping to finish (bounded by its own length plus slack); returns (sent, received) and
    /// ping's summary.
    pub fn finish(self) -> (u32, u32, String) {
        let Self {
            what,
            count,
            interval,
            output,
            guard,
        } = self;
        let _ = guard.wait_output(interval * count + Duration::from_secs(15));
        let text = std::fs::read_to_string(output.path()).unwrap_or_default();
        let counts = summary_counts(&text);
        (counts.0, counts.1, format!("{what}: {}", summary(&text)))
    }
}

/// The distinct requests answered, and those that went unanswered past the next (`-O`'s "no answer yet")
/// and were never answered after.
fn replies_and_losses(text: &str) -> (u32, u32) {
    use std::collections::BTreeSet;
    let seq = |line: &str| -> Option<u32> {
        let rest = &line[line.find("icmp_seq=")? + "icmp_seq=".len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut answered = BTreeSet::new();
    let mut unanswered = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("no answer yet") {
            unanswered.extend(seq(line));
        } else if line.contains(" bytes from ") && !line.contains("(DUP!)") {
            answered.extend(seq(line));
        }
    }
    let lost = unanswered.difference(&answered).count();
    (
        u32::try_from(answered.len()).unwrap_or(u32::MAX),
        u32::try_from(lost).unwrap_or(u32::MAX),
    )
}

/// Ping's summary: from its statistics line on.
fn summary(text: &str) -> &str {
    text.find("--- ").map_or(text, |i| &text[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_still_on_its_way_is_not_lost_and_one_answered_late_is_not_either() {
        let out = "PING 10.0.1.2 (10.0.1.2) 56(84) bytes of data.
64 bytes from 10.0.1.2: icmp_seq=1 ttl=64 time=0.4 ms
no answer yet for icmp_seq=2
no answer yet for icmp_seq=3
64 bytes from 10.0.1.2: icmp_seq=3 ttl=64 time=80 ms
64 bytes from 10.0.1.2: icmp_seq=4 ttl=64 time=0.3 ms
64 bytes from 10.0.1.2: icmp_seq=4 ttl=64 time=0.3 ms (DUP!)

--- 10.0.1.2 ping statistics ---
5 packets transmitted, 3 received, +1 duplicates, 40% packet loss, time 210ms
";
        // 2 lost; 5, sent as ping stopped, neither.
        assert_eq!(replies_and_losses(out), (3, 1));
        assert_eq!(summary_counts(out), (5, 3));
        assert!(summary(out).starts_with("--- 10.0.1.2"));
    }
}
