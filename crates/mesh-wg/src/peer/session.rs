//! A peer locked for a run of packets: what the device's loops do with it while they hold it.

use super::*;

/// A peer locked for a run of packets ([`Peer::session`]). Dropping it releases the peer.
pub(crate) struct Session<'a> {
    pub(super) key: &'a Key,
    pub(super) g: MutexGuard<'a, PeerInner>,
    /// Where the run's datagrams go: read once, and again only when a datagram moves the peer.
    via: Option<Via>,
    pub(super) now: Instant,
    authenticated: bool,
}

impl Peer {
    /// Locks the peer for a run of packets: one lock, one clock reading and one handshake-time refresh for
    /// the whole run rather than per packet.
    pub(crate) fn session(&self) -> Session<'_> {
        let g = self.lock();
        let via = g.via();
        Session {
            key: &self.public_key,
            g,
            via,
            now: Instant::now(),
            authenticated: false,
        }
    }
}

impl Session<'_> {
    /// Where datagrams to the peer go now; `None` while it has no endpoint.
    pub(crate) fn via(&self) -> Option<&Via> {
        self.via.as_ref()
    }

    /// Encrypts an IP packet from the TUN into `dst`, which must hold the packet and 32 bytes more, and 148 at
    /// least. The datagram goes to [`Session::via`].
    pub(crate) fn encapsulate<'a>(&mut self, packet: &[u8], dst: &'a mut [u8]) -> TunnResult<'a> {
        // Remembered before it leaves, so that the peer's reply finds its flow.
        self.g.filter.outbound(packet, self.now);
        self.g.app_traffic = Some(self.now);
        let res = self.g.tunn.encapsulate(packet, dst);
        if let (TunnResult::WriteToNetwork(out), Some(via)) = (&res, &self.via) {
            self.g.note_tx_bytes(out, via, self.now);
        }
        res
    }

    /// Decrypts a datagram that came `from` into `dst` (at least as long as the datagram). When it
    /// authenticates (handshake or data), a UDP source becomes the endpoint (WireGuard roaming) and a relay
    /// stream becomes the way back through the relay; either informs the path. An answer it produces goes
    /// back the way the datagram came.
    pub(crate) fn decapsulate<'a>(
        &mut self,
        from: &Via,
        datagram: &[u8],
        dst: &'a mut [u8],
    ) -> TunnResult<'a> {
        let res = self
            .g
            .tunn
            .decapsulate(Some(from.source_ip()), datagram, dst);
        if authenticates(datagram, &res) {
            match datagram.first() {
                Some(&MSG_HANDSHAKE_INIT) => {
                    tracing::debug!(event = "handshake.answered", peer = ?self.key, ?from, "handshake initiation received; answered");
                }
                Some(&MSG_HANDSHAKE_RESP) => {
                    tracing::debug!(event = "handshake.completed", peer = ?self.key, ?from, "handshake response received; session up");
                }
                _ => {}
            }
            self.authenticated = true;
            if self.g.received(self.key, from, datagram, self.now) {
                self.via = self.g.via();
            }
        }
        if let TunnResult::WriteToNetwork(out) = &res {
            // Answers go back the way the datagram came: a handshake response proves that path.
            self.g.note_tx_bytes(out, from, self.now);
        }
        res
    }

    /// Whether a packet the peer sent, decrypted, may reach the interface by the grants between seats; a
    /// drop is counted here.
    pub(crate) fn admit(&mut self, packet: &[u8]) -> Admit {
        let admit = self.g.filter.inbound(packet, self.now);
        if let Admit::Drop(why) = admit {
            self.g.dropped.add(why);
        }
        admit
    }

    /// Takes a candidate message the peer sent through the tunnel; returns where it sees this node.
    pub(crate) fn candidates_received(&mut self, payload: &[u8]) -> Option<std::net::SocketAddrV4> {
        self.g.candidates_received(self.key, payload)
    }

    /// Answers the peer's liveness probe `seq` that came `from`, from `own` into `dst` (the answer was taken
    /// note of as soon as the datagram authenticated). Returns the answer and where it goes: a probe through
    /// a peer relay goes back through it, to measure it; any other, on [`Session::via`].
    pub(crate) fn answer_probe<'a>(
        &mut self,
        own: Ipv4Addr,
        seq: u16,
        from: &Via,
        dst: &'a mut [u8],
    ) -> Option<(Via, &'a [u8])> {
        let peer = self.g.overlay_ip?;
        let via = match from {
            Via::PeerRelay { .. } if seq & RELAYED_PROBE != 0 => from.clone(),
            _ => self.via.clone()?,
        };
        match self.g.tunn.encapsulate(&probe::reply(own, peer, seq), dst) {
            TunnResult::WriteToNetwork(out) => {
                self.g.note_tx_bytes(out, &via, self.now);
                Some((via, out))
            }
            _ => None,
        }
    }

    /// The next packet queued behind a handshake (the "call again with an empty datagram" flush), for
    /// [`Session::via`].
    pub(crate) fn flush_queued<'a>(&mut self, dst: &'a mut [u8]) -> TunnResult<'a> {
        let res = self.g.tunn.decapsulate(None, &[], dst);
        if let (TunnResult::WriteToNetwork(out), Some(via)) = (&res, &self.via) {
            self.g.note_tx_bytes(out, via, self.now);
        }
        res
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.authenticated {
            self.g.refresh_handshake();
        }
    }
}

/// Whether boringtun's answer to `datagram` shows that the peer sent it: decrypted data or a keepalive, or a
/// handshake message it answered with the next step (not a cookie reply under load).
fn authenticates(datagram: &[u8], res: &TunnResult<'_>) -> bool {
    match (datagram.first().copied(), res) {
        (Some(MSG_DATA), TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..)) => true,
        (Some(MSG_DATA), TunnResult::Done) => true, // keepalive
        (Some(MSG_HANDSHAKE_INIT), TunnResult::WriteToNetwork(out)) => {
            out.first() == Some(&MSG_HANDSHAKE_RESP)
        }
        (Some(MSG_HANDSHAKE_RESP), TunnResult::WriteToNetwork(out)) => {
            out.first() == Some(&MSG_DATA)
        }
        _ => false,
    }
}
