//! A peer's timer: boringtun's timers, the keepalive, the path, punching, probes and peer relays, run under
//! one lock; and whether the peer is quiet, so that its next run can wait for [`QUIET_TICK`].

use super::*;

/// How often a quiet peer's timer runs. What it would do is seconds apart: WireGuard's retries and
/// keepalives, a renewed session, the idle probe (after 27 s of silence) and the 25 s keepalive. A second late
/// changes none of that, and makes an idle peer cost a tenth of a busy one. Anything that touches the peer
/// ([`Peer::take_touched`]) runs its timer at the next tick.
pub(crate) const QUIET_TICK: Duration = Duration::from_secs(1);

/// What a peer's timer did.
#[derive(Debug)]
pub(crate) struct Ticked {
    /// The datagrams to send.
    pub(crate) sends: Vec<(Via, Vec<u8>)>,
    /// The peer's part in peer relaying, as the tick left it.
    pub(crate) view: RelayView,
    /// The peer's handshake reached this node over UDP, from a public address this node had sent nothing to,
    /// since the last run: this node's port is open from outside.
    pub(crate) reached_first: bool,
    /// Nothing is under way or owed, so the next run can wait for [`QUIET_TICK`].
    pub(crate) quiet: bool,
}

impl Peer {
    /// Runs boringtun's timers, then our persistent keepalive (kept outside boringtun so the
    /// interval can change without rebuilding the `Tunn`), then the path: whether to leave the direct
    /// path, and the probe of a relayed peer's direct path. Returns the datagrams to send; timer traffic is
    /// a few packets a second, so it is copied out. Control messages for peer relays, which go inside other
    /// peers' tunnels, are added to `controls`. Its part in peer relaying comes back with them, read under
    /// the same lock.
    pub(crate) fn tick(
        &self,
        dst: &mut [u8],
        ctx: &TickContext,
        controls: &mut Vec<(Key, Control)>,
    ) -> Ticked {
        let mut sends = Vec::new();
        let now = Instant::now();
        let mut g = self.lock_quietly();
        let relay_available =
            g.relay.is_some() || g.live_relay().is_some() || g.relays.current().is_some();
        let has_address = g.endpoint.is_some();
        if let Some(m) = g.path.tick(now, relay_available, has_address) {
            log_move(&self.public_key, m, g.relay.as_ref());
        }
        let handshake_at = g
            .tunn
            .time_since_last_handshake()
            .and_then(|since| now.checked_sub(since));
        if std::mem::take(&mut g.kick)
            && handshake_at.is_none_or(|t| now.saturating_duration_since(t) >= REKEY_AFTER)
            && let Some(via) = g.via()
            && let TunnResult::WriteToNetwork(init) = g.tunn.format_handshake_initiation(dst, true)
        {
            // A new endpoint or relay stream carries a handshake at once, not at the first packet or at
            // WireGuard's next retry.
            tracing::debug!(event = "handshake.initiated", peer = ?self.public_key, ?via, "handshake initiation at once (a new peer, endpoint or relay stream)");
            g.note_tx_bytes(init, &via, now);
            sends.push((via, init.to_vec()));
        }
        if let Some(endpoint) = g.endpoint
            && g.path.probe_due(now, handshake_at)
            && let TunnResult::WriteToNetwork(init) = g.tunn.format_handshake_initiation(dst, true)
        {
            tracing::debug!(peer = ?self.public_key, %endpoint, "probing the direct path");
            let via = Via::Udp(endpoint);
            g.note_tx_bytes(init, &via, now);
            sends.push((via, init.to_vec()));
        }
        g.punch_tick(&self.public_key, now, handshake_at, ctx, dst, &mut sends);
        g.probe_tick(&self.public_key, now, handshake_at, ctx, dst, &mut sends);
        g.relays_tick(
            &self.public_key,
            now,
            handshake_at,
            ctx,
            dst,
            &mut sends,
            controls,
        );
        if let Some(send) = g.timers(&self.public_key, dst) {
            sends.push(send);
        }
        Ticked {
            view: g.relay_view(&self.public_key, now, ctx.liveness),
            reached_first: std::mem::take(&mut g.reached_first),
            quiet: sends.is_empty() && g.quiet(now, handshake_at),
            sends,
        }
    }
}

impl PeerInner {
    /// Whether the peer is quiet: nothing watches it, it is on UDP with a session and no doubt, and no
    /// handshake, punch or peer relay is under way or owed. Every other peer's timer runs at every tick.
    fn quiet(&self, now: Instant, handshake_at: Option<Instant>) -> bool {
        // boringtun renews a session as it sends past REKEY_AFTER; the peer stays quiet meanwhile.
        let session = handshake_at.is_some_and(|t| now.saturating_duration_since(t) < REJECT_AFTER);
        session
            && !self.kick
            && self.watched_since.is_none()
            && self.overlay_ip.is_some()
            && self.endpoint.is_some()
            && self.last_tx.is_some()
            && self.path.on().is_direct()
            && !self.path.doubtful(now)
            && self.punch.idle()
            && self.relays.idle()
    }
}
