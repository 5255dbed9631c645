//! The device's loops: TUN→UDP (encapsulate) and UDP→TUN (decapsulate, handshakes), each on a thread of its
//! own ([`super::threads`]); boringtun's timers and relayed datagrams, as tasks.

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use mesh_relay::Inbound;
use nix::poll::PollFlags;
use quinn_udp::RecvMeta;
use tokio::sync::mpsc;

use super::batch::segments;
use super::outbound::{Outbound, send};
use super::relay_dialing::dial_if_needed;
use super::shared::{Received, Shared};
use super::threads::{Stop, Waker, wait};
use super::tun::{BATCH, TunReader};
use super::udp::WhenFull;
use super::{BUF_LEN, TIMER_TICK};
use crate::Error;
use crate::peer::{Peer, Session, Via};

/// Messages per `recvmmsg`, each a run of up to 64 datagrams from one source when the kernel coalesces them.
const RECV_MESSAGES: usize = 16;
/// A message's buffer holds a whole coalesced run (at most 64 KiB).
const RECV_BUF: usize = 65_536;

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

/// The TUN→UDP side's buffers: the TUN batch, the peer of each packet, and the datagrams to send.
///
/// Both packet threads take turns with it, under one lock that keeps packets sent in the order they were
/// read: the TUN→UDP thread when the TUN wakes it, and the UDP→TUN thread just after it wrote to the TUN.
/// What the UDP→TUN thread writes often has its answer queued on the TUN before the write returns (an ICMP
/// echo reply, a TCP acknowledgement: the kernel makes them inside the write), and sending it there and then
/// saves a wake-up of the other thread on every such round trip.
pub(super) struct Outgoing {
    reader: TunReader,
    out: Outbound,
    peers: Vec<Option<Arc<Peer>>>,
}

impl Outgoing {
    pub(super) fn new() -> Self {
        Self {
            reader: TunReader::new(),
            out: Outbound::new(),
            peers: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what the TUN holds now ([`TunReader::try_read`]), routes it under one read of the state,
    /// encrypts each run of packets for one peer under one lock of it, and sends the datagrams in GSO runs.
    /// Returns the packets read (0: the TUN had none).
    fn pump(&mut self, shared: &Shared, drain: bool) -> Result<usize, Error> {
        let read = self
            .reader
            .try_read(&shared.tun, drain)
            .map_err(|source| tun_error(shared, "read", source))?;
        if read == 0 {
            return Ok(0);
        }
        let sock = shared.socket();
        let out = &mut self.out;
        out.begin(&sock);
        shared.route_packets(self.reader.packets(), &mut self.peers);
        let mut packets = self.reader.packets().zip(&self.peers).peekable();
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
        out.send(&sock);
        Ok(read)
    }

    /// Takes a turn if the other thread is not taking one: after the UDP→TUN thread wrote to the TUN.
    fn pump_if_free(outgoing: &Mutex<Self>, shared: &Shared) {
        if let Ok(mut outgoing) = outgoing.try_lock()
            && let Err(err) = outgoing.pump(shared, false)
        {
            // The TUN→UDP thread meets the same error at its next read and ends the device's loop there.
            tracing::debug!(error = %err, "TUN read after a write failed");
        }
    }
}

fn tun_error(shared: &Shared, syscall: &'static str, source: std::io::Error) -> Error {
    Error::Tun {
        ifname: shared.ifname.clone(),
        syscall,
        source,
    }
}

/// TUN → UDP: waits for the TUN and sends what it holds ([`Outgoing::pump`]). A packet that ends a wait is
/// sent on its own: an idle TUN has nothing behind it, and a read to find that out would only delay it (a
/// round trip's request, a commit's acknowledgement). Packets already queued are read on, up to a batch, as
/// a busy flow's are. Runs until `stop` is set.
pub(super) fn tun_loop(
    shared: &Shared,
    outgoing: &Mutex<Outgoing>,
    waker: &Waker,
    stop: &Stop,
) -> Result<(), Error> {
    let mut drain = false;
    while !stop.is_set() {
        let read = outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pump(shared, drain)?;
        drain = read > 0;
        if !drain {
            TunReader::wait(&shared.tun, waker)
                .map_err(|source| tun_error(shared, "poll", source))?;
        }
    }
    Ok(())
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

/// UDP → TUN: a batch of messages (each a run of datagrams from one source, coalesced by the kernel), decrypted
/// into one TUN batch that tun-rs coalesces per flow; then sends what the write made the TUN answer at once
/// ([`Outgoing`]). Reads from the socket in use, and from a new one once `waker` rings for it; runs until
/// `stop` is set.
pub(super) fn udp_loop(
    shared: &Shared,
    outgoing: &Mutex<Outgoing>,
    waker: &Waker,
    stop: &Stop,
) -> Result<(), Error> {
    let mut socket_rx = shared.udp.subscribe();
    // One allocation for every message's buffer: large enough to be mapped lazily, so only what arrives
    // becomes resident.
    let mut arena = vec![0u8; RECV_MESSAGES * RECV_BUF];
    let mut meta = vec![RecvMeta::default(); RECV_MESSAGES];
    let mut rx = Received::new();
    let mut sock = socket_rx.borrow_and_update().clone();
    while !stop.is_set() {
        if socket_rx.has_changed().unwrap_or(false) {
            sock = socket_rx.borrow_and_update().clone();
        }
        let received = {
            let mut slices: Vec<IoSliceMut<'_>> =
                arena.chunks_mut(RECV_BUF).map(IoSliceMut::new).collect();
            sock.try_recv(&mut slices, &mut meta)
        };
        match received {
            Ok(n) => {
                for (buf, m) in arena.chunks(RECV_BUF).zip(&meta).take(n) {
                    if rx.tun.free() < m.len.div_ceil(m.stride.max(1)) {
                        rx.tun.flush(&shared.tun);
                    }
                    let from = Via::Udp(canonical(m.addr));
                    shared.receive(&from, &buf[..m.len], segments(0..m.len, m.stride), &mut rx);
                }
                if rx.flush(shared, &sock, WhenFull::Wait) > 0 {
                    Outgoing::pump_if_free(outgoing, shared);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                wait(sock.as_fd(), PollFlags::POLLIN, Some(waker), None).map_err(|source| {
                    Error::Udp {
                        ifname: shared.ifname.clone(),
                        port: sock.local_addr().map_or(0, |a| a.port()),
                        syscall: "poll",
                        source,
                    }
                })?;
            }
            Err(err) => {
                // An ICMP error queued on the socket, for one; the next read goes on.
                tracing::debug!(error = %err, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

pub(super) async fn timer_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dst = vec![0u8; BUF_LEN];
    let mut last_reset = Instant::now();
    loop {
        tick.tick().await;
        let (peers, limiter) = {
            let st = shared.read();
            let peers: Vec<Arc<Peer>> = st.peers.values().cloned().collect();
            (peers, st.keys.rate_limiter.clone())
        };
        if last_reset.elapsed() >= Duration::from_secs(1) {
            limiter.reset_count();
            last_reset = Instant::now();
        }
        let sock = shared.socket();
        let ctx = shared.tick_context();
        for peer in peers {
            for (to, out) in peer.tick(&mut dst, &ctx) {
                send(&sock, &out, &to, WhenFull::Drop);
            }
            if let Some(relay) = &shared.relay {
                dial_if_needed(relay, &peer);
            }
        }
    }
}

/// Datagrams from relay streams, dialled and accepted alike, into the device.
pub(super) async fn relay_loop(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
) -> Result<(), Error> {
    let mut rx = Received::new();
    while let Some(first) = inbound.recv().await {
        // What else has arrived joins the batch, so one flow's packets are coalesced into one TUN write.
        let mut next = Some(first);
        while let Some(Inbound { link, datagram }) = next {
            let whole = std::iter::once(0..datagram.len());
            shared.receive(&Via::Relay(link), &datagram, whole, &mut rx);
            next = if rx.tun.is_full() {
                None
            } else {
                inbound.try_recv().ok()
            };
        }
        rx.flush(&shared, &shared.socket(), WhenFull::Drop);
    }
    Ok(())
}
