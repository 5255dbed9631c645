//! The device's tasks on the runtime: boringtun's timers, and datagrams from relay streams. (Packets over UDP
//! go through the packet thread, [`super::packets`].)

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_relay::Inbound;
use tokio::sync::mpsc;

use super::outbound::send;
use super::relay_dialing::dial_if_needed;
use super::shared::{Received, Shared};
use super::udp::WhenFull;
use super::{BUF_LEN, TIMER_TICK};
use crate::Error;
use crate::peer::{Peer, RelayView, Via};

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
        let now = Instant::now();
        let mut ctx = shared.tick_context();
        let views: Vec<(Arc<Peer>, RelayView)> = (peers.iter())
            .map(|p| (p.clone(), p.relay_view(now, ctx.liveness)))
            .collect();
        if peers
            .iter()
            .fold(false, |any, p| p.take_reached_first() | any)
        {
            shared.discovered(|d| d.reached_first());
        }
        ctx.relays = views.iter().filter_map(|(_, v)| v.candidate).collect();
        let mut controls = shared.relay_upkeep(&views);
        for peer in &peers {
            for (to, out) in peer.tick(&mut dst, &ctx, &mut controls) {
                send(&sock, &out, &to, WhenFull::Drop);
            }
            if let Some(relay) = &shared.relay {
                dial_if_needed(relay, peer);
            }
        }
        shared.note_relayed_in(&views);
        for (to, message) in controls {
            if let Some((peer, _)) = views.iter().find(|(p, _)| p.public_key == to)
                && let Some((via, out)) = peer.control(ctx.address, &message, &mut dst)
            {
                send(&sock, &out, &via, WhenFull::Drop);
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
