//! The liveness probe on the wire ([`mesh_path::liveness`]): an ICMP echo request from this node's overlay
//! address to a peer's, carried through the tunnel like any packet, and its reply. Any WireGuard peer's
//! kernel answers a request; this project's userspace device answers a probe itself, without a round trip
//! through its TUN, and takes the replies to its own probes out before the TUN. An echo that is not a probe
//! (a user's `ping`) passes untouched both ways.
//!
//! ICMP (RFC 792): type 8 (request) or 0 (reply), code 0, the checksum, the identifier [`ID`], a sequence
//! number, and the payload `"dstack-mesh probe"`.

use mesh_path::ipv4;
use std::net::Ipv4Addr;

/// The echo identifier of probes ("DM").
pub(crate) const ID: u16 = 0x444d;
const PAYLOAD: &[u8] = b"dstack-mesh probe";
const HEADER: usize = 8;
const REQUEST: u8 = 8;
const REPLY: u8 = 0;

/// A probe, or the answer to one, as the device or the kernel backend's prober sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Echo {
    Request { from: Ipv4Addr, seq: u16 },
    Reply { from: Ipv4Addr, seq: u16 },
}

/// The ICMP message of a probe (`reply` false) or of its answer, without the IP header: what a raw
/// socket sends.
pub(crate) fn message(reply: bool, seq: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + PAYLOAD.len());
    m.extend_from_slice(&[if reply { REPLY } else { REQUEST }, 0, 0, 0]);
    m.extend_from_slice(&ID.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(PAYLOAD);
    let sum = ipv4::checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// A probe from `own` to the peer at `to`, as an IP packet for the tunnel.
pub(crate) fn request(own: Ipv4Addr, to: Ipv4Addr, seq: u16) -> Vec<u8> {
    ipv4::packet(own, to, ipv4::ICMP, &message(false, seq))
}

/// The answer from `own` to a probe that came from `to`.
pub(crate) fn reply(own: Ipv4Addr, to: Ipv4Addr, seq: u16) -> Vec<u8> {
    ipv4::packet(own, to, ipv4::ICMP, &message(true, seq))
}

/// The answer to `packet` if it is a probe, from its destination to its source: what a peer's device sends
/// back (for a simulated peer that has no kernel to answer it).
pub fn answer(packet: &[u8]) -> Option<Vec<u8>> {
    let own = Ipv4Addr::new(
        *packet.get(16)?,
        *packet.get(17)?,
        *packet.get(18)?,
        *packet.get(19)?,
    );
    match parse(packet, own)? {
        Echo::Request { from, seq } => Some(reply(own, from, seq)),
        Echo::Reply { .. } => None,
    }
}

/// The probe or answer in an IP packet addressed to `own`; `None` for any other packet.
pub(crate) fn parse(packet: &[u8], own: Ipv4Addr) -> Option<Echo> {
    let (from, icmp) = ipv4::payload_for(packet, own, ipv4::ICMP)?;
    if icmp.len() != HEADER + PAYLOAD.len()
        || icmp[1] != 0
        || icmp[4..6] != ID.to_be_bytes()
        || &icmp[HEADER..] != PAYLOAD
        || ipv4::checksum(icmp) != 0
    {
        return None;
    }
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    match icmp[0] {
        REQUEST => Some(Echo::Request { from, seq }),
        REPLY => Some(Echo::Reply { from, seq }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

    #[test]
    fn a_probe_and_its_answer_are_read_back_at_their_destination() {
        let probe = request(A, B, 7);
        assert_eq!(parse(&probe, B), Some(Echo::Request { from: A, seq: 7 }));
        assert_eq!(parse(&probe, A), None, "not for A");
        let answer = reply(B, A, 7);
        assert_eq!(parse(&answer, A), Some(Echo::Reply { from: B, seq: 7 }));
    }

    #[test]
    fn a_probe_is_answered_from_where_it_went() {
        let answer = answer(&request(A, B, 9)).expect("an answer");
        assert_eq!(parse(&answer, A), Some(Echo::Reply { from: B, seq: 9 }));
        assert_eq!(
            super::answer(&reply(B, A, 9)),
            None,
            "an answer is not answered"
        );
    }

    #[test]
    fn a_users_ping_is_not_a_probe() {
        // Linux ping's own identifier and payload.
        let mut icmp = vec![REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend_from_slice(&[0xab; 56]);
        let sum = ipv4::checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&ipv4::packet(A, B, ipv4::ICMP, &icmp), B), None);
    }

    #[test]
    fn a_damaged_probe_is_not_taken() {
        let mut probe = request(A, B, 7);
        let last = probe.len() - 1;
        probe[last] ^= 1;
        assert_eq!(parse(&probe, B), None, "bad checksum");
        let mut probe = request(A, B, 7);
        probe[ipv4::HEADER] = 3; // destination unreachable
        assert_eq!(parse(&probe, B), None);
    }

    #[test]
    fn the_message_carries_a_valid_checksum_for_a_raw_socket() {
        assert_eq!(ipv4::checksum(&message(false, 1)), 0);
        assert_eq!(ipv4::checksum(&message(true, 65_535)), 0);
    }
}
