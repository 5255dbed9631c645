//! The device's three loops: TUN→UDP (encapsulate), UDP→TUN (decapsulate, handshakes), and boringtun's
//! timers.

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use mesh_relay::Inbound;
use quinn_udp::RecvMeta;
use tokio::sync::mpsc;

use super::batch::segments;
use super::outbound::{Outbound, send};
use super::relay_dialing::dial_if_needed;
use super::shared::{Received, Shared};
use super::tun::{BATCH, TunReader};
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

/// TUN → UDP: a batch of packets read from the TUN, routed under one read of the state, encrypted per run
/// of packets for one peer under one lock of it, and sent in GSO runs.
pub(super) async fn tun_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut reader = TunReader::new();
    let mut out = Outbound::new();
    let mut peers = Vec::with_capacity(BATCH);
    loop {
        reader
            .read(&shared.tun)
            .await
            .map_err(|source| Error::Tun {
                ifname: shared.ifname.clone(),
                syscall: "read",
                source,
            })?;
        let sock = shared.socket();
        out.begin(&sock);
        shared.route_packets(reader.packets(), &mut peers);
        let mut packets = reader.packets().zip(&peers).peekable();
        while let Some((packet, peer)) = packets.next() {
            let Some(peer) = peer else { continue };
            let mut session = peer.session();
            encapsulate(&mut session, packet, &mut out);
            while let Some((packet, _)) =
                packets.next_if(|(_, p)| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, peer)))
            {
                encapsulate(&mut session, packet, &mut out);
            }
            if session.via().is_none() {
                tracing::debug!(peer = ?peer.public_key, "peer has no endpoint; packets queued or dropped");
            }
        }
        out.send(&sock).await;
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

/// UDP → TUN: a batch of messages (each a run of datagrams from one source, coalesced by the kernel), decrypted
/// into one TUN batch that tun-rs coalesces per flow.
pub(super) async fn udp_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut socket_rx = shared.udp.subscribe();
    // One allocation for every message's buffer: large enough to be mapped lazily, so only what arrives
    // becomes resident.
    let mut arena = vec![0u8; RECV_MESSAGES * RECV_BUF];
    let mut meta = vec![RecvMeta::default(); RECV_MESSAGES];
    let mut rx = Received::new();
    loop {
        let sock = socket_rx.borrow_and_update().clone();
        let received = {
            let mut slices: Vec<IoSliceMut<'_>> =
                arena.chunks_mut(RECV_BUF).map(IoSliceMut::new).collect();
            tokio::select! {
                r = sock.recv(&mut slices, &mut meta) => r,
                changed = socket_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            }
        };
        match received {
            Ok(n) => {
                for (buf, m) in arena.chunks(RECV_BUF).zip(&meta).take(n) {
                    if rx.tun.free() < m.len.div_ceil(m.stride.max(1)) {
                        rx.tun.flush(&shared.tun).await;
                    }
                    let from = Via::Udp(canonical(m.addr));
                    shared.receive(&from, &buf[..m.len], segments(0..m.len, m.stride), &mut rx);
                }
                rx.flush(&shared, &sock).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
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
                send(&sock, &out, &to).await;
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
        rx.flush(&shared, &shared.socket()).await;
    }
    Ok(())
}
