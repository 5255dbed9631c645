//! The packet thread: UDP→TUN (decapsulate, handshakes) and TUN→UDP (encapsulate), one after the other on one
//! thread of its own ([`super::threads`]), waiting on both descriptors at once (epoll) when neither has
//! anything.
//!
//! One thread for both directions, as in boringtun-cli's event loop: what a write to the TUN makes the kernel
//! answer at once (an ICMP echo reply, a TCP acknowledgement, made inside the write) is read and sent by the
//! same thread straight after, with no wake-up of another thread, which on a virtual machine costs an
//! interrupt between CPUs. Measured on this machine, two threads (one a direction) added 0.05–0.07 ms to a busy
//! round trip against one, and carried no more (`docs/benchmarks.md`).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use quinn_udp::RecvMeta;
use tokio::sync::watch;
use tun_rs::SyncDevice;

use super::batch::segments;
use super::codel::Codel;
use super::outbound::Outbound;
use super::shared::{Received, Shared};
use super::spare::return_freed_memory;
use super::threads::{Stop, Waker};
use super::tun::{BATCH, TunReader};
use super::udp::{Udp, WhenFull};
use crate::Error;
use crate::peer::{Peer, Session, Via};

/// Messages per `recvmmsg`, each a run of up to 64 datagrams from one source when the kernel coalesces them.
/// What one read takes is decrypted and written before the next, so a packet that arrives just after a read
/// waits behind all of it: at 16 messages (1 MiB, about 3 ms of decryption here) a ping beside one iperf3
/// stream took 2.42 ms, at 4 (256 KiB) 1.95 ms, at the same throughput (`docs/benchmarks.md`).
const RECV_MESSAGES: usize = 4;
/// A message's buffer holds a whole coalesced run (at most 64 KiB).
const RECV_BUF: usize = 65_536;
/// How long the thread rests after a receive error it does not know to be passing.
const ERROR_REST: Duration = Duration::from_millis(10);

/// An IPv4-mapped IPv6 source is the IPv4 address it carries.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The packet thread's body: a batch from the UDP socket, then a batch from the TUN, until neither has
/// anything; then a wait on both (and on `waker`, which rings to stop or for a rebound socket). Runs until
/// `stop` is set.
///
/// A TUN packet that ends a wait is sent without a read to look for more behind it: an idle TUN has
/// nothing there, and the read would only delay it (a round trip's request, a commit's acknowledgement).
/// Packets already queued are read on, into the reader's queue per flow ([`super::flows`]), as a busy flow's
/// are, and leave a batch a turn, sparse flows first.
pub(super) fn packet_loop(
    shared: &Shared,
    mtu: u16,
    waker: &Waker,
    stop: &Stop,
) -> Result<(), Error> {
    let mut incoming = Incoming::new(shared.udp.subscribe());
    let mut outgoing = Outgoing::new(mtu);
    let poll_error = |source: io::Error| Error::Tun {
        ifname: shared.ifname.clone(),
        syscall: "epoll",
        source,
    };
    let mut ready = Readiness::new(&shared.tun, &incoming.sock, waker).map_err(poll_error)?;
    let mut drain = false;
    let mut due = Due::BOTH;
    while !stop.is_set() {
        let received = if due.udp {
            incoming.pump(shared)
        } else {
            Receive::Empty
        };
        let read = if due.tun {
            outgoing.pump(shared, drain)?
        } else {
            0
        };
        drain = read > 0;
        due = Due::after(&received);
        match received {
            Receive::Got { .. } => {}
            Receive::Failed => std::thread::sleep(ERROR_REST),
            Receive::Empty if read == 0 => {
                let review = review_spare(&mut outgoing, &mut incoming, Instant::now());
                ready.follow(&incoming.sock).map_err(poll_error)?;
                due = ready.wait(waker, review).map_err(poll_error)?;
            }
            Receive::Empty => {}
        }
    }
    Ok(())
}

/// Gives back the buffers a burst grew that went unused for a whole window ([`super::spare`]), on both
/// sides; returns when to review them again.
fn review_spare(outgoing: &mut Outgoing, incoming: &mut Incoming, now: Instant) -> Option<Instant> {
    let (read, read_next) = outgoing.reader.review_spare(now);
    let (written, write_next) = incoming.rx.tun.review_spare(now);
    if read + written > 0 {
        tracing::debug!(read, written, "unused packet buffers given back");
        return_freed_memory();
    }
    read_next.into_iter().chain(write_next).min()
}

/// Which side to read after a wait: only the one that woke the thread, so that a packet from the TUN does
/// not wait behind a receive that finds nothing (and the other way round). Between waits, both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Due {
    udp: bool,
    tun: bool,
}

impl Due {
    const BOTH: Due = Due {
        udp: true,
        tun: true,
    };

    /// For the turn after one that read `received` from the socket: a receive that did not fill its batch
    /// found the socket drained, so the next turn reads only the TUN. A datagram that arrived meanwhile ends
    /// the wait at once; the receive it saves was most often one that found nothing, before the thread could
    /// sleep and the application it had just woken could run (`scripts/hop-times --round-trips`).
    fn after(received: &Receive) -> Due {
        match received {
            Receive::Got { drained: true } => Due {
                udp: false,
                tun: true,
            },
            _ => Due::BOTH,
        }
    }

    /// From the tags of the descriptors a wait returned.
    fn of(tags: impl IntoIterator<Item = u64>) -> Due {
        let mut due = Due {
            udp: false,
            tun: false,
        };
        for tag in tags {
            match tag {
                TUN => due.tun = true,
                SOCKET => due.udp = true,
                // The waker: a stop, or a new socket, which only a receive takes up.
                _ => due = Due::BOTH,
            }
        }
        due
    }
}

/// The descriptors' tags in the epoll set.
const TUN: u64 = 0;
const SOCKET: u64 = 1;
const WAKER: u64 = 2;

/// What the thread waits on: the TUN, the socket in use and its waker, in one epoll set made once (level
/// triggered), so that a wait costs one `epoll_wait` and no registration.
struct Readiness {
    epoll: Epoll,
    /// The socket registered; kept open until it is taken out of the set.
    sock: Arc<Udp>,
}

impl Readiness {
    fn new(tun: &SyncDevice, sock: &Arc<Udp>, waker: &Waker) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let readable = |tag| EpollEvent::new(EpollFlags::EPOLLIN, tag);
        epoll.add(tun, readable(TUN))?;
        epoll.add(waker.fd(), readable(WAKER))?;
        epoll.add(&**sock, readable(SOCKET))?;
        Ok(Self {
            epoll,
            sock: sock.clone(),
        })
    }

    /// Waits on `sock` from now on, if it is a new one.
    fn follow(&mut self, sock: &Arc<Udp>) -> io::Result<()> {
        if !Arc::ptr_eq(&self.sock, sock) {
            self.epoll.delete(&*self.sock)?;
            self.epoll
                .add(&**sock, EpollEvent::new(EpollFlags::EPOLLIN, SOCKET))?;
            self.sock = sock.clone();
        }
        Ok(())
    }

    /// Waits until a descriptor is readable or `until` passes, and says which side is due (neither, when
    /// the time passed).
    fn wait(&self, waker: &Waker, until: Option<Instant>) -> io::Result<Due> {
        let mut events = [EpollEvent::empty(); 3];
        let timeout = until.map_or(EpollTimeout::NONE, |until| {
            // Rounded up, so that a wait does not end just before the moment it waited for.
            let left = until.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
            EpollTimeout::try_from(left).unwrap_or(EpollTimeout::MAX)
        });
        let n = loop {
            match self.epoll.wait(&mut events, timeout) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        };
        // The waker is level triggered: taking its count keeps the next wait from ending at once.
        if events[..n].iter().any(|e| e.data() == WAKER) {
            waker.clear();
        }
        Ok(Due::of(events[..n].iter().map(EpollEvent::data)))
    }
}

/// What one receive from the socket gave.
#[derive(Debug)]
enum Receive {
    /// Datagrams (or an ICMP error); `drained` when they did not fill the batch, so none was left.
    Got {
        drained: bool,
    },
    Empty,
    /// An error the thread does not know to be passing: it rests a moment before the next.
    Failed,
}

/// The UDP→TUN side: the socket in use, and the buffers of one `recvmmsg`.
struct Incoming {
    socket_rx: watch::Receiver<Arc<Udp>>,
    sock: Arc<Udp>,
    /// One allocation for every message's buffer: large enough to be mapped lazily, so only what arrives
    /// becomes resident.
    arena: Vec<u8>,
    meta: Vec<RecvMeta>,
    rx: Received,
    /// Whether what stays queued on the socket is a standing queue to drain.
    codel: Codel,
}

impl Incoming {
    fn new(mut socket_rx: watch::Receiver<Arc<Udp>>) -> Self {
        let sock = socket_rx.borrow_and_update().clone();
        Self {
            socket_rx,
            sock,
            arena: vec![0u8; RECV_MESSAGES * RECV_BUF],
            meta: vec![RecvMeta::default(); RECV_MESSAGES],
            rx: Received::new(),
            codel: Codel::default(),
        }
    }

    /// A batch of messages (each a run of datagrams from one source, coalesced by the kernel), decrypted
    /// into one TUN batch that tun-rs coalesces per flow, and the answers sent. Takes a rebound socket first.
    fn pump(&mut self, shared: &Shared) -> Receive {
        if self.socket_rx.has_changed().unwrap_or(false) {
            self.sock = self.socket_rx.borrow_and_update().clone();
        }
        let received = {
            // On the stack: the socket is read at every turn of the thread's loop.
            let mut chunks = self.arena.chunks_exact_mut(RECV_BUF);
            let mut slices: [IoSliceMut<'_>; RECV_MESSAGES] = std::array::from_fn(|_| {
                IoSliceMut::new(
                    chunks
                        .next()
                        .expect("the arena holds one buffer per message"),
                )
            });
            self.sock.try_recv(&mut slices, &mut self.meta)
        };
        let rx = &mut self.rx;
        match received {
            Ok(n) => {
                // A receive that did not fill every message drained the buffer; only a full one leaves a
                // backlog worth a system call to measure.
                let backlog = if n == RECV_MESSAGES {
                    self.sock.backlog()
                } else {
                    0
                };
                // Decided afresh at each read: a drop owed to a queue that has drained since is not carried
                // over to a packet that comes later.
                rx.shed = self.codel.observe(backlog, Instant::now());
                for (buf, m) in self.arena.chunks(RECV_BUF).zip(&self.meta).take(n) {
                    if rx.tun.free() < m.len.div_ceil(m.stride.max(1)) {
                        rx.tun.flush(&shared.tun);
                    }
                    let (addr, run) = (canonical(m.addr), &buf[..m.len]);
                    if run
                        .first()
                        .copied()
                        .is_some_and(mesh_peer_relay::wire::is_relayed)
                    {
                        shared.relayed_run(&self.sock, addr, run, m.stride, rx);
                        continue;
                    }
                    let from = Via::Udp(addr);
                    shared.receive(&from, run, segments(0..m.len, m.stride), rx);
                }
                rx.flush(shared, &self.sock, WhenFull::Wait);
                Receive::Got {
                    drained: n < RECV_MESSAGES,
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Receive::Empty,
            Err(err) if passing(&err) => {
                // An ICMP error a peer's host sent back, queued on the socket and taken by this read.
                tracing::debug!(error = %err, "UDP receive reported an ICMP error");
                Receive::Got { drained: false }
            }
            Err(err) => {
                tracing::debug!(error = %err, "UDP receive failed");
                Receive::Failed
            }
        }
    }
}

/// An error a read takes off the socket (an ICMP error for an earlier send): the next read goes on at once.
fn passing(err: &io::Error) -> bool {
    err.raw_os_error().map(Errno::from_raw).is_some_and(|e| {
        matches!(
            e,
            Errno::ECONNREFUSED
                | Errno::EHOSTUNREACH
                | Errno::ENETUNREACH
                | Errno::EHOSTDOWN
                | Errno::ENETDOWN
                | Errno::EMSGSIZE
                | Errno::EPROTO
        )
    })
}

/// The TUN→UDP side: the TUN batch, the peer of each packet, and the datagrams to send.
struct Outgoing {
    reader: TunReader,
    out: Outbound,
    peers: Vec<Option<Arc<Peer>>>,
}

impl Outgoing {
    fn new(mtu: u16) -> Self {
        Self {
            reader: TunReader::new(mtu),
            out: Outbound::new(),
            peers: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what the TUN holds now into the reader's queue per flow ([`TunReader::fill`]), takes a batch
    /// from it, sparse flows first, routes the batch under one read of the state, encrypts each run of packets
    /// for one peer under one lock of it, and sends the datagrams in GSO runs. Returns the packets sent
    /// (0: the TUN had none and nothing waits).
    fn pump(&mut self, shared: &Shared, drain: bool) -> Result<usize, Error> {
        self.reader
            .fill(&shared.tun, drain)
            .map_err(|source| Error::Tun {
                ifname: shared.ifname.clone(),
                syscall: "read",
                source,
            })?;
        let (batch, sparse) = self.reader.next_batch();
        if batch == 0 {
            return Ok(0);
        }
        let sock = shared.socket();
        let out = &mut self.out;
        out.begin(&sock);
        shared.route_packets(self.reader.packets(), &mut self.peers);
        let packets = || self.reader.packets().zip(&self.peers);
        encrypt_runs(packets().take(sparse), out);
        if sparse > 0 && sparse < batch {
            // The sparse flows' datagrams leave before the bulk ones are encrypted: that is what they were
            // put first for.
            out.send(&sock);
            out.begin(&sock);
        }
        encrypt_runs(packets().skip(sparse), out);
        out.send(&sock);
        Ok(batch)
    }
}

/// Encrypts `packets` into `out`, each run of packets for one peer under one lock of it.
fn encrypt_runs<'a>(
    packets: impl Iterator<Item = (&'a [u8], &'a Option<Arc<Peer>>)>,
    out: &mut Outbound,
) {
    let mut packets = packets.peekable();
    while let Some((packet, peer)) = packets.next() {
        let Some(peer) = peer else { continue };
        let mut session = peer.session();
        encapsulate(&mut session, packet, out);
        while let Some((packet, _)) =
            packets.next_if(|(_, p)| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, peer)))
        {
            encapsulate(&mut session, packet, out);
        }
        if session.via().is_none() {
            tracing::debug!(peer = ?peer.public_key, "peer has no endpoint; packets queued or dropped");
        }
    }
}

fn encapsulate(session: &mut Session<'_>, packet: &[u8], out: &mut Outbound) {
    let Some(dst) = out.slot(packet.len()) else {
        tracing::debug!("send batch full; packet dropped");
        return;
    };
    match session.encapsulate(packet, dst) {
        TunnResult::WriteToNetwork(datagram) => {
            let len = datagram.len();
            if let Some(via) = session.via() {
                out.push(via, len);
            }
        }
        TunnResult::Err(err) => tracing::debug!(error = ?err, "encapsulate failed"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_wait_only_the_side_that_woke_the_thread_is_read() {
        assert_eq!(
            Due::of([TUN]),
            Due {
                udp: false,
                tun: true
            }
        );
        assert_eq!(
            Due::of([SOCKET]),
            Due {
                udp: true,
                tun: false
            }
        );
        assert_eq!(Due::of([TUN, SOCKET]), Due::BOTH);
        assert_eq!(
            Due::of([WAKER]),
            Due::BOTH,
            "a new socket is taken up by a receive"
        );
    }

    #[test]
    fn after_a_receive_that_drained_the_socket_only_the_tun_is_read_before_the_wait() {
        assert_eq!(
            Due::after(&Receive::Got { drained: true }),
            Due {
                udp: false,
                tun: true
            }
        );
        for full_or_nothing in [
            Receive::Got { drained: false },
            Receive::Empty,
            Receive::Failed,
        ] {
            assert_eq!(
                Due::after(&full_or_nothing),
                Due::BOTH,
                "{full_or_nothing:?}"
            );
        }
    }

    #[test]
    fn icmp_errors_taken_by_a_read_are_passing_and_others_are_not() {
        for errno in [Errno::ECONNREFUSED, Errno::EHOSTUNREACH, Errno::EMSGSIZE] {
            assert!(
                passing(&io::Error::from_raw_os_error(errno as i32)),
                "{errno}"
            );
        }
        for errno in [Errno::EBADF, Errno::ENOMEM, Errno::EINVAL] {
            assert!(
                !passing(&io::Error::from_raw_os_error(errno as i32)),
                "{errno}"
            );
        }
        assert!(!passing(&io::Error::other("no errno")));
    }

    #[test]
    fn an_ipv4_mapped_source_is_its_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:51820".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "10.0.0.7:51820".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
