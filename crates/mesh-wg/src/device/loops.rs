//! The device's tasks on the runtime: boringtun's timers, and datagrams from relay streams. (Packets over UDP
//! go through the packet thread, [`super::packets`].)

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_relay::Inbound;
use tokio::sync::mpsc;

use super::outbound::send;
use super::relay_dialing::dial_if_needed;
use super::schedule::Schedule;
use super::shared::{Received, Shared};
use super::spare::return_freed_memory;
use super::udp::WhenFull;
use super::{BUF_LEN, TIMER_TICK};
use crate::Error;
use crate::peer::Via;

pub(super) async fn timer_loop(shared: Arc<Shared>) -> Result<(), Error> {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dst = vec![0u8; BUF_LEN];
    let mut last_reset = Instant::now();
    let mut schedule = Schedule::default();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let limiter = {
            let st = shared.read();
            schedule.sync(st.generation, || st.peers.values().cloned().collect(), now);
            st.keys.rate_limiter.clone()
        };
        if last_reset.elapsed() >= Duration::from_secs(1) {
            limiter.reset_count();
            last_reset = Instant::now();
        }
        let sock = shared.socket();
        let mut ctx = shared.tick_context();
        ctx.relays = schedule.candidates().to_vec();
        let mut controls = Vec::new();
        let mut reached_first = false;
        for i in schedule.due(now) {
            let peer = Arc::clone(schedule.peer(i));
            let ticked = peer.tick(&mut dst, &ctx, &mut controls);
            for (to, out) in &ticked.sends {
                send(&sock, out, to, WhenFull::Drop);
            }
            // A quiet peer is on UDP: no relay stream to dial.
            if let Some(relay) = &shared.relay
                && !ticked.quiet
            {
                dial_if_needed(relay, &peer);
            }
            reached_first |= ticked.reached_first;
            schedule.ran(i, &ticked, now);
        }
        if reached_first {
            shared.discovered(|d| d.reached_first());
        }
        controls.extend(shared.relay_upkeep(schedule.views()));
        if schedule.take_ready_changed() {
            shared.note_relayed_in(schedule.views());
        }
        for (to, message) in controls {
            if let Some(peer) = schedule.peer_of(&to)
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
    loop {
        // What a relayed burst grew is given back once unused for a window, as on the packet thread. The
        // runtime's clock, so that a test's paused time moves the window too.
        let (given, review) = rx.tun.review_spare(tokio::time::Instant::now().into_std());
        if given > 0 {
            return_freed_memory();
        }
        let next = match review {
            Some(at) => match tokio::time::timeout_at(at.into(), inbound.recv()).await {
                Ok(next) => next,
                Err(_) => continue,
            },
            None => inbound.recv().await,
        };
        let Some(first) = next else { break };
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
