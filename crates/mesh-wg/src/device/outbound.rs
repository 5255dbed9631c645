//! Datagrams on their way out. A batch's packets are encrypted back to back into one buffer, and each run of
//! equal-size datagrams to one peer leaves in one UDP send (GSO); relayed datagrams go onto their stream one by
//! one.

use super::MAX_PACKET;
use super::batch::{MAX_RUN_BYTES, Runs};
use super::tun::BATCH;
use super::udp::{Udp, WhenFull};
use crate::peer::Via;
use mesh_peer_relay::{HEADER_LEN, Header};

/// What WireGuard adds to a packet: the 16-byte data header and the 16-byte tag.
const OVERHEAD: usize = 32;
/// boringtun wants room for a handshake initiation whatever it is given to encrypt.
const MIN_SLOT: usize = 148;

/// One batch of outgoing datagrams.
pub(crate) struct Outbound {
    buf: Vec<u8>,
    runs: Runs<Via>,
    /// A run for a peer relay, each datagram behind its header.
    headed: Vec<u8>,
}

impl Outbound {
    pub(crate) fn new() -> Self {
        Self {
            // Room for a whole TUN batch of the largest packets; the zeroed allocation is mapped lazily, so
            // only what batches use becomes resident.
            buf: vec![0; BATCH * (MAX_PACKET + OVERHEAD)],
            runs: Runs::new(1),
            headed: Vec::new(),
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
                Via::PeerRelay { relay, vni } => {
                    // The header goes in front of each datagram: the run is copied once, with room for
                    // it, and leaves in as few sends as fit a GSO send's limit with the headers added.
                    let stride = run.stride + HEADER_LEN;
                    let datagrams = run.datagrams().map(|d| &self.buf[d]);
                    headed_sends(datagrams, *vni, stride, &mut self.headed, |headed| {
                        if let Err(err) = sock.send_run(headed, stride, *relay, WhenFull::Wait) {
                            tracing::debug!(to = %relay, error = %err, bytes = headed.len(), "UDP send to a peer relay failed");
                        }
                    });
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
        Via::PeerRelay { relay, vni } => {
            let mut headed = Vec::with_capacity(HEADER_LEN + datagram.len());
            push_headed(&mut headed, *vni, datagram);
            if let Err(err) = sock.send_to(&headed, *relay, when_full) {
                tracing::debug!(to = %relay, error = %err, "UDP send to a peer relay failed");
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

/// Puts each datagram of a run (`stride` bytes each with its header, the last maybe shorter) behind the
/// header of allocation `vni` in `headed`, and hands `send` as many as one GSO send carries: the headers
/// make a run that fitted the limit without them overflow it.
fn headed_sends<'a>(
    datagrams: impl Iterator<Item = &'a [u8]>,
    vni: u32,
    stride: usize,
    headed: &mut Vec<u8>,
    mut send: impl FnMut(&[u8]),
) {
    headed.clear();
    for datagram in datagrams {
        if headed.len() + stride > MAX_RUN_BYTES {
            send(headed);
            headed.clear();
        }
        push_headed(headed, vni, datagram);
    }
    if !headed.is_empty() {
        send(headed);
    }
}

/// Appends `datagram` behind the header of allocation `vni`.
fn push_headed(out: &mut Vec<u8>, vni: u32, datagram: &[u8]) {
    let at = out.len();
    out.resize(at + HEADER_LEN, 0);
    Header { vni }.encode_into(&mut out[at..]);
    out.extend_from_slice(datagram);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 45 datagrams of 1,452 bytes fit one GSO send (65,340 bytes); with their headers (65,700) they do not,
    /// and a send over the limit loses them all.
    #[test]
    fn a_full_run_with_headers_is_split_to_fit_one_gso_send_each() {
        let datagrams: Vec<Vec<u8>> = (0..45u8).map(|i| vec![i; 1452]).collect();
        let stride = 1452 + HEADER_LEN;
        let mut sends: Vec<Vec<u8>> = Vec::new();
        let mut headed = Vec::new();
        headed_sends(
            datagrams.iter().map(Vec::as_slice),
            7,
            stride,
            &mut headed,
            |s| sends.push(s.to_vec()),
        );
        assert_eq!(sends.len(), 2);
        assert!(
            sends
                .iter()
                .all(|s| s.len() <= MAX_RUN_BYTES && s.len() % stride == 0)
        );
        let all: Vec<u8> = sends.concat();
        for (i, d) in all.chunks(stride).enumerate() {
            let (header, rest) = Header::decode(d).expect("a header");
            assert_eq!(
                (header.vni, rest),
                (7, datagrams[i].as_slice()),
                "datagram {i}"
            );
        }
    }
}
