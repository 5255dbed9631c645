//! The device's three loops: TUN→UDP (encapsulate), UDP→TUN (decapsulate, handshakes), and boringtun's
//! timers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use mesh_relay::{Dialer, Inbound};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::shared::Shared;
use super::{BUF_LEN, TIMER_TICK};
use crate::Error;
use crate::peer::{Peer, Via};

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

/// Sends a datagram over UDP or onto a relay stream (where a full queue drops it, as UDP would).
pub(super) async fn send(sock: &UdpSocket, packet: &[u8], to: &Via) {
    match to {
        Via::Udp(addr) => {
            if let Err(err) = sock.send_to(packet, addr).await {
                tracing::debug!(to = %addr, error = %err, "UDP send failed");
            }
        }
        Via::Relay(link) => {
            if !link.send(packet) {
                tracing::debug!(
                    link = link.id(),
                    "relay stream closed or full; datagram dropped"
                );
            }
        }
    }
}

pub(super) async fn tun_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut src = vec![0u8; BUF_LEN];
    let mut dst = vec![0u8; BUF_LEN];
    loop {
        let n = shared
            .tun
            .recv(&mut src)
            .await
            .map_err(|source| Error::Tun {
                ifname: shared.ifname.clone(),
                syscall: "read",
                source,
            })?;
        let packet = &src[..n];
        let Some(IpAddr::V4(dst_ip)) = Tunn::dst_address(packet) else {
            continue; // IPv6 (e.g. router solicitations) or garbage: not routed.
        };
        let Some(peer) = shared.peer_for(dst_ip) else {
            tracing::trace!(%dst_ip, "no peer for destination");
            continue;
        };
        match peer.encapsulate(packet, &mut dst) {
            (Some(to), TunnResult::WriteToNetwork(out)) => send(&shared.socket(), out, &to).await,
            (None, TunnResult::WriteToNetwork(_)) => {
                tracing::debug!(peer = ?peer.public_key, "peer has no endpoint; packet queued or dropped");
            }
            (_, TunnResult::Err(err)) => {
                tracing::debug!(peer = ?peer.public_key, error = ?err, "encapsulate failed");
            }
            _ => {}
        }
    }
}

pub(super) async fn udp_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut socket_rx = shared.udp.subscribe();
    let mut src = vec![0u8; BUF_LEN];
    let mut dst = vec![0u8; BUF_LEN];
    loop {
        let sock = socket_rx.borrow_and_update().clone();
        let received = tokio::select! {
            r = sock.recv_from(&mut src) => r,
            changed = socket_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        match received {
            Ok((n, from)) => {
                shared
                    .handle_datagram(&sock, &src[..n], Via::Udp(canonical(from)), &mut dst)
                    .await;
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
        for peer in peers {
            for (to, out) in peer.tick(&mut dst) {
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
    let mut dst = vec![0u8; BUF_LEN];
    while let Some(Inbound { link, datagram }) = inbound.recv().await {
        let sock = shared.socket();
        shared
            .handle_datagram(&sock, &datagram, Via::Relay(link), &mut dst)
            .await;
    }
    Ok(())
}

/// What the device needs to dial relays: the dialler, and where dialled streams' datagrams go.
pub(crate) struct RelayDialing {
    pub(super) dialer: Dialer,
    pub(super) inbound: mpsc::Sender<Inbound>,
}

fn dial_if_needed(relay: &RelayDialing, peer: &Arc<Peer>) {
    let Some(target) = peer.relay_to_dial(Instant::now()) else {
        return;
    };
    let (dialer, inbound, peer) = (
        relay.dialer.clone(),
        relay.inbound.clone(),
        Arc::clone(peer),
    );
    tokio::spawn(async move {
        match dialer.dial(&target, inbound).await {
            Ok(link) => {
                tracing::info!(peer = ?peer.public_key, relay = %target, link = link.id(), "relay stream up");
                peer.dialled(&target, Some(link));
            }
            Err(err) => {
                let failures = peer.dialled(&target, None);
                // The first failure and then every tenth: a peer whose gateway is down would fill the log.
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(peer = ?peer.public_key, relay = %target, failures, error = %err, "could not reach the peer's relay");
                }
            }
        }
    });
}
