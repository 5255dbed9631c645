//! The device's UDP socket with the kernel's offloads (through quinn-udp): `recvmmsg` with UDP GRO, which
//! hands over a run of datagrams from one source in one buffer, and `sendmsg` with UDP GSO, which sends a run
//! of equal-size datagrams to one destination in one call.
//!
//! The socket is non-blocking and not registered with tokio: the packet thread waits on it with `poll(2)`
//! ([`super::packets`]), and every sender either waits for room (the packet thread) or drops the datagram.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{setsockopt, sockopt};
use nix::{getsockopt_impl, libc, sockopt_impl};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use super::SOCKET_BUFFER_BYTES;
use super::threads::{Woken, wait};
use crate::Error;

/// What a sender does when the socket's buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Wait for room, up to [`FULL_WAIT`]: the packet thread, whose waiting slows the flow as TCP expects.
    Wait,
    /// Drop the datagram, as a full queue would: tasks on the runtime (timers, discovery, relays), which must
    /// not block a worker. WireGuard's timers send again.
    Drop,
}

/// The longest the packet thread waits for room in the socket's buffer before it drops the datagram: a buffer
/// of [`SOCKET_BUFFER_BYTES`] drains in well under this at any rate the link carries.
const FULL_WAIT: Duration = Duration::from_millis(100);

/// The socket and quinn-udp's state for it. Once UDP GRO is on, every receive must go through
/// [`Udp::recv`]: a plain `recv_from` would take a coalesced run as one datagram.
pub(crate) struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
    /// GSO is used (when the kernel has it).
    gso: bool,
}

impl AsFd for Udp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

// The first of the socket's memory figures (`SK_MEMINFO_RMEM_ALLOC`): what its receive queue holds. One
// figure asked for, so any kernel answers with exactly it.
sockopt_impl!(
    ReceiveQueued,
    GetOnly,
    libc::SOL_SOCKET,
    libc::SO_MEMINFO,
    [u32; 1]
);

impl Udp {
    /// The bytes (as the kernel charges them) queued in the receive buffer; 0 if the kernel will not say.
    pub(crate) fn backlog(&self) -> usize {
        nix::sys::socket::getsockopt(&self.socket, ReceiveQueued)
            .map_or(0, |[queued]| queued as usize)
    }

    /// Binds `0.0.0.0:port` with large buffers (the kernel default, ~208 KiB, caps throughput: NetBird #6021)
    /// and the fwmark, and, with `offload`, turns on GRO and GSO where the kernel has them.
    pub(crate) fn bind(ifname: &str, port: u16, fwmark: u32, offload: bool) -> Result<Self, Error> {
        let err = |syscall: &'static str| {
            move |source: io::Error| Error::Udp {
                ifname: ifname.to_owned(),
                port,
                syscall,
                source,
            }
        };
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(err("bind"))?;
        // The *Force variants pass rmem_max/wmem_max (needs CAP_NET_ADMIN); fall back to the capped ones.
        if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER_BYTES).is_err() {
            setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES)
                .map_err(|e| err("setsockopt SO_RCVBUF")(e.into()))?;
        }
        if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER_BYTES).is_err() {
            setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER_BYTES)
                .map_err(|e| err("setsockopt SO_SNDBUF")(e.into()))?;
        }
        if fwmark != 0 {
            setsockopt(&sock, sockopt::Mark, &fwmark)
                .map_err(|e| err("setsockopt SO_MARK")(e.into()))?;
        }
        // Sets O_NONBLOCK and UDP_GRO, and probes UDP_SEGMENT.
        let state = UdpSocketState::new((&sock).into()).map_err(err("quinn-udp socket setup"))?;
        if !offload {
            setsockopt(&sock, sockopt::UdpGroSegment, &false)
                .map_err(|e| err("setsockopt UDP_GRO")(e.into()))?;
        }
        Ok(Self {
            socket: sock,
            state,
            gso: offload,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many datagrams one [`Udp::send_run`] may carry now (1 when GSO is off, or was turned off after the
    /// kernel refused it).
    pub(crate) fn max_gso_segments(&self) -> usize {
        if self.gso {
            self.state.max_gso_segments()
        } else {
            1
        }
    }

    /// Reads as many messages as `bufs` has room for, without waiting (`WouldBlock` when none is queued).
    /// `meta[i]` says where `bufs[i]`'s came from, its length, and its stride: the size of each datagram in a
    /// coalesced run.
    pub(crate) fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv((&self.socket).into(), bufs, meta)
    }

    /// Sends `contents`, datagrams of `stride` bytes back to back (the last may be shorter), to `to` in one
    /// call. The kernel's errors other than a full buffer are quinn-udp's to log (once a minute); like a
    /// lost datagram, WireGuard's retries and TCP cover them.
    pub(crate) fn send_run(
        &self,
        contents: &[u8],
        stride: usize,
        to: SocketAddr,
        when_full: WhenFull,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > stride).then_some(stride),
            src_ip: None,
        };
        let deadline = Instant::now() + FULL_WAIT;
        loop {
            match self.state.send((&self.socket).into(), &transmit) {
                Err(err)
                    if err.kind() == io::ErrorKind::WouldBlock && when_full == WhenFull::Wait =>
                {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if wait(&[self.as_fd()], PollFlags::POLLOUT, None, Some(left))?
                        == Woken::TimedOut
                    {
                        return Err(err);
                    }
                }
                result => return result,
            }
        }
    }

    /// Sends one datagram.
    pub(crate) fn send_to(
        &self,
        datagram: &[u8],
        to: SocketAddr,
        when_full: WhenFull,
    ) -> io::Result<()> {
        self.send_run(datagram, datagram.len(), to, when_full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backlog is what waits to be read: it grows with each datagram left queued, and a read that takes
    /// them all leaves none. (Over loopback; GRO off, so each datagram is a message of its own.)
    #[test]
    fn the_backlog_is_what_the_receive_buffer_holds() {
        let udp = Udp::bind("test", 0, 0, false).unwrap();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, udp.local_addr().unwrap().port()));
        let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(udp.backlog(), 0);
        sender.send_to(&[7; 1_200], to).unwrap();
        let one = udp.backlog();
        assert!(one >= 1_200, "{one}");
        for _ in 0..9 {
            sender.send_to(&[7; 1_200], to).unwrap();
        }
        assert!(udp.backlog() >= 10 * 1_200, "{}", udp.backlog());
        let mut buf = vec![0u8; 16 * 2_048];
        let mut slices: Vec<IoSliceMut<'_>> = buf.chunks_mut(2_048).map(IoSliceMut::new).collect();
        let mut meta = vec![RecvMeta::default(); 16];
        assert_eq!(udp.try_recv(&mut slices, &mut meta).unwrap(), 10);
        assert_eq!(udp.backlog(), 0);
    }
}
