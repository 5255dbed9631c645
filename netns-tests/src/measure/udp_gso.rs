//! UDP as a QUIC stack sends it: datagrams handed to the kernel up to 64 KiB at a time (UDP segmentation
//! offload, `UDP_SEGMENT`), paced to a rate, and received with UDP GRO, both through quinn-udp as the device
//! itself does. iperf3 3.12 sends one datagram per system call from one thread and tops out near 1 Gbit/s on
//! this machine, below what a tunnel carries; this probe leaves the tunnel as the limit.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use crate::net::netns::{NetNs, enter};

/// Socket buffers on both ends, as the iperf3 probes use (`-w 4M`), so that neither end's socket is where
/// datagrams are lost.
const SOCKET_BUFFER: usize = 4 << 20;
/// The largest GSO send: a run's payloads, with their headers, fit one 64 KiB IP packet.
const MAX_RUN_BYTES: usize = 65_000;
/// How long the receiver waits, after the last send, for datagrams still in flight.
const DRAIN: Duration = Duration::from_millis(300);

/// What one paced run sent and what arrived.
#[derive(Debug, Clone, Copy)]
pub struct UdpRate {
    pub sent_gbps: f64,
    pub received_gbps: f64,
    pub lost_percent: f64,
    /// Datagrams in each `sendmsg` (1 when the kernel has no UDP GSO).
    pub segments_per_send: usize,
}

/// Sends datagrams of `len` bytes from `client` to `server_addr` in `server` at `mbps` for `duration`, in
/// GSO runs, and counts what arrives.
///
/// # Panics
/// When a socket cannot be set up, or a send fails with anything but a full buffer: the measurement would
/// be meaningless.
pub fn udp_gso(
    client: &NetNs,
    server: &NetNs,
    server_addr: Ipv4Addr,
    mbps: u64,
    len: usize,
    duration: Duration,
) -> UdpRate {
    let ((sent, elapsed, segments_per_send), received) =
        sent_and_received(client, server, server_addr, |to| {
            send(to, mbps, len, duration)
        });
    let gbps = |datagrams: u64| (datagrams * len as u64 * 8) as f64 / elapsed.as_secs_f64() / 1e9;
    UdpRate {
        sent_gbps: gbps(sent),
        received_gbps: gbps(received.min(sent)),
        lost_percent: if sent == 0 {
            100.0
        } else {
            100.0 * sent.saturating_sub(received) as f64 / sent as f64
        },
        segments_per_send,
    }
}

/// Sends, `repeats` times with `gap` between, one `sendmsg` per size in `runs`, back to back: a run of `n`
/// datagrams of `len` bytes in one UDP GSO send, which reaches a TUN with UDP offload as one super-packet
/// of `n` segments (Linux sends at most 128). Returns the datagrams sent and those that arrived.
///
/// # Panics
/// When a socket cannot be set up, or a send fails with anything but a full device queue.
pub fn udp_gso_bursts(
    client: &NetNs,
    server: &NetNs,
    server_addr: Ipv4Addr,
    runs: &[usize],
    len: usize,
    repeats: usize,
    gap: Duration,
) -> (u64, u64) {
    sent_and_received(client, server, server_addr, |to| {
        send_bursts(to, runs, len, repeats, gap)
    })
}

/// Runs `send` in `client` toward a receiver on `server_addr` in `server`, and returns what it returned with
/// the datagrams that arrived, counted until a moment after it returned.
fn sent_and_received<T: Send>(
    client: &NetNs,
    server: &NetNs,
    server_addr: Ipv4Addr,
    send: impl FnOnce(SocketAddr) -> T + Send,
) -> (T, u64) {
    let done = AtomicBool::new(false);
    let (port_tx, port_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            enter(&server.name);
            receive(server_addr, &port_tx, &done)
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the UDP receiver bound its socket");
        let to = SocketAddr::from((server_addr, port));
        let sent = s
            .spawn(move || {
                enter(&client.name);
                send(to)
            })
            .join()
            .expect("the UDP sender panicked");
        std::thread::sleep(DRAIN);
        done.store(true, Ordering::Release);
        (sent, receiver.join().expect("the UDP receiver panicked"))
    })
}

fn send_bursts(to: SocketAddr, runs: &[usize], len: usize, repeats: usize, gap: Duration) -> u64 {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};
    let (sock, _) = socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let largest = runs.iter().copied().max().unwrap_or(1);
    let payload = vec![0x5a; largest * len];
    let segment = u16::try_from(len).expect("a datagram under 64 KiB");
    let SocketAddr::V4(v4) = to else {
        panic!("an IPv4 destination: {to}")
    };
    let dest = SockaddrIn::from(v4);
    let mut sent = 0u64;
    for _ in 0..repeats {
        for &n in runs {
            let iov = [std::io::IoSlice::new(&payload[..n * len])];
            let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
            match sendmsg(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&dest),
            ) {
                Ok(_) => sent += n as u64,
                Err(nix::errno::Errno::ENOBUFS) => {}
                Err(e) => panic!("UDP GSO send of {n} datagrams to {to}: {e}"),
            }
        }
        std::thread::sleep(gap);
    }
    sent
}

fn socket(bind: SocketAddr) -> (UdpSocket, UdpSocketState) {
    let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    // The *Force variants pass rmem_max/wmem_max (as root); the capped ones are the fallback.
    if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    // Sets O_NONBLOCK, turns GRO on and probes GSO.
    let state = UdpSocketState::new((&sock).into()).expect("quinn-udp socket setup");
    sock.set_nonblocking(false).expect("a blocking socket");
    (sock, state)
}

/// Sends until `duration` has passed, a run every `interval` so that the rate is `mbps`; returns the
/// datagrams sent, the time it took, and the datagrams per send.
fn send(to: SocketAddr, mbps: u64, len: usize, duration: Duration) -> (u64, Duration, usize) {
    let (sock, state) = socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let segments = state.max_gso_segments().min(MAX_RUN_BYTES / len).max(1);
    let payload = vec![0x5a; segments * len];
    let interval = Duration::from_secs_f64((segments * len * 8) as f64 / (mbps as f64 * 1e6));
    let transmit = Transmit {
        destination: to,
        ecn: None,
        contents: &payload,
        segment_size: (segments > 1).then_some(len),
        src_ip: None,
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut runs = 0u32;
    while start.elapsed() < duration {
        let due = start + interval * runs;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match state.send((&sock).into(), &transmit) {
            Ok(()) => sent += segments as u64,
            // A full device queue below the socket (ENOBUFS) loses the run, as it would any sender's.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {}
            Err(e) => panic!("UDP send of {segments} datagrams to {to}: {e}"),
        }
        runs += 1;
    }
    (sent, start.elapsed(), segments)
}

/// Binds `addr`, says its port, and counts the datagrams that arrive (a GRO run counts as the datagrams it
/// holds) until `done`.
fn receive(addr: Ipv4Addr, port: &mpsc::Sender<u16>, done: &AtomicBool) -> u64 {
    let (sock, state) = socket(SocketAddr::from((addr, 0)));
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("a read timeout");
    let local = sock.local_addr().expect("the receiver's address");
    port.send(local.port())
        .expect("the prober waits for the port");
    const MESSAGES: usize = 16;
    let mut arena = vec![0u8; MESSAGES * 65_536];
    let mut meta = vec![RecvMeta::default(); MESSAGES];
    let mut received = 0u64;
    while !done.load(Ordering::Acquire) {
        let mut bufs: Vec<IoSliceMut<'_>> = arena.chunks_mut(65_536).map(IoSliceMut::new).collect();
        match state.recv((&sock).into(), &mut bufs, &mut meta) {
            Ok(n) => {
                received += meta[..n]
                    .iter()
                    .map(|m| m.len.div_ceil(m.stride.max(1)) as u64)
                    .sum::<u64>();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("UDP receive on {local}: {e}"),
        }
    }
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On loopback, in the test's own namespace: a modest rate arrives whole, in GSO runs where the kernel
    /// has them, and the rates are reckoned from the datagrams' size.
    #[test]
    fn a_paced_run_on_loopback_arrives_at_its_rate() {
        let ns = NetNs::new("udpgso");
        ns.ip(&["link", "set", "lo", "up"]);
        let r = udp_gso(
            &ns,
            &ns,
            Ipv4Addr::LOCALHOST,
            200,
            1372,
            Duration::from_millis(500),
        );
        assert!(r.lost_percent < 1.0, "{r:?}");
        assert!(
            (0.15..0.25).contains(&r.sent_gbps),
            "paced to 200 Mbit/s: {r:?}"
        );
        assert!(r.segments_per_send > 1, "loopback has UDP GSO: {r:?}");
    }
}
