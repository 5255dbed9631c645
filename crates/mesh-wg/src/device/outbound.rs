//! Datagrams on their way out. A batch's packets are encrypted back to back into one buffer, and each run of
//! equal-size datagrams to one peer leaves in one UDP send (GSO); relayed datagrams go onto their stream one by
//! one.

use super::MAX_PACKET;
use super::batch::Runs;
use super::tun::BATCH;
use super::udp::{Udp, WhenFull};
use crate::peer::Via;

/// What WireGuard adds to a packet: the 16-byte data header and the 16-byte tag.
const OVERHEAD: usize = 32;
/// boringtun wants room for a handshake initiation whatever it is given to encrypt.
const MIN_SLOT: usize = 148;

/// One batch of outgoing datagrams.
pub(crate) struct Outbound {
    buf: Vec<u8>,
    runs: Runs<Via>,
}

impl Outbound {
    pub(crate) fn new() -> Self {
        Self {
            // Room for a whole TUN batch of the largest packets; the zeroed allocation is mapped lazily, so
            // only what batches use becomes resident.
            buf: vec![0; BATCH * (MAX_PACKET + OVERHEAD)],
            runs: Runs::new(1),
        }
    }

    /// Starts a batch for `sock`: runs as long as its GSO allows now.
    pub(crate) fn begin(&mut self, sock: &Udp) {
        self.runs.set_max_segments(sock.max_gso_segments());
    }

    /// Room to encrypt a packet of `packet_len` bytes into, at the end of the batch; `None` when the batch
    /// is full.
    pub(crate) fn slot(&mut self, packet_len: usize) -> Option<&mut [u8]> {
        let need = (packet_len + OVERHEAD).max(MIN_SLOT);
        let end = self.runs.end();
        self.buf.get_mut(end..end + need)
    }

    /// Takes the `len` bytes just written into the last [`Outbound::slot`] as a datagram for `to`.
    pub(crate) fn push(&mut self, to: &Via, len: usize) {
        self.runs.push(to, len);
    }

    /// Sends the batch and empties it, waiting for room in the socket's buffer (on the TUN→UDP thread).
    pub(crate) fn send(&mut self, sock: &Udp) {
        for run in self.runs.drain() {
            match &run.to {
                Via::Udp(addr) => {
                    let addr = *addr;
                    let datagrams = &self.buf[run.bytes.clone()];
                    if let Err(err) = sock.send_run(datagrams, run.stride, addr, WhenFull::Wait) {
                        tracing::debug!(to = %addr, error = %err, datagrams = run.segments, "UDP send failed");
                    }
                }
                Via::Relay(_) => {
                    for datagram in run.datagrams() {
                        send(sock, &self.buf[datagram], &run.to, WhenFull::Wait);
                    }
                }
            }
        }
    }
}

/// Sends one datagram over UDP or onto a relay stream (where a full queue drops it, as UDP would).
pub(crate) fn send(sock: &Udp, datagram: &[u8], to: &Via, when_full: WhenFull) {
    match to {
        Via::Udp(addr) => {
            if let Err(err) = sock.send_to(datagram, *addr, when_full) {
                tracing::debug!(to = %addr, error = %err, "UDP send failed");
            }
        }
        Via::Relay(link) => {
            if !link.send(datagram) {
                tracing::debug!(
                    link = link.id(),
                    "relay stream closed or full; datagram dropped"
                );
            }
        }
    }
}
