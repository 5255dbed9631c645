//! The IPv4 packets the device makes and takes itself inside the tunnel (candidate messages, liveness
//! probes): the header and the internet checksum, and finding a packet's payload for a protocol.

use std::net::Ipv4Addr;

pub const HEADER: usize = 20;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// RFC 1071's checksum of `data` (an odd length padded with a zero byte).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded into 16 bits")
}

/// A packet of `protocol` from `src` to `dst` carrying `payload`: an unfragmented IPv4 header (DF, TTL 64,
/// its checksum set) followed by the payload.
pub fn packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(HEADER + payload.len()).expect("the device's own packets are small");
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p[..HEADER]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The source and payload of an unfragmented IPv4 packet of `protocol` addressed to `own`; `None` for any
/// other packet.
pub fn payload_for(packet: &[u8], own: Ipv4Addr, protocol: u8) -> Option<(Ipv4Addr, &[u8])> {
    if packet.len() < HEADER || packet[0] >> 4 != 4 || packet[9] != protocol {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let fragmented = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
    if ihl < HEADER || fragmented || total > packet.len() || packet[16..20] != own.octets() {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((src, packet.get(ihl..total)?))
}

/// The UDP header's length.
pub const UDP_HEADER: usize = 8;

/// An IPv4 UDP packet from `src`:`port` to `dst`:`port` carrying `payload`, for the tunnel: the device's own
/// messages (candidates, peer-relay control) go between the same port on both nodes. Its UDP checksum is zero
/// (optional over IPv4; WireGuard authenticates the whole packet anyway).
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len =
        u16::try_from(UDP_HEADER + payload.len()).expect("the device's own messages are small");
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    packet(src, dst, UDP, &udp)
}

/// The payload of a decrypted packet when it is a UDP datagram from `port` to `own`:`port`, unfragmented;
/// `None` for every other packet.
pub fn udp_payload_for(packet: &[u8], own: Ipv4Addr, port: u16) -> Option<&[u8]> {
    let (_, udp) = payload_for(packet, own, UDP)?;
    let ports = (
        u16::from_be_bytes([*udp.first()?, *udp.get(1)?]),
        u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]),
    );
    if ports != (port, port) {
        return None;
    }
    udp.get(UDP_HEADER..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_with_its_checksum_sums_to_zero() {
        let p = packet(
            Ipv4Addr::new(10, 0, 1, 1),
            Ipv4Addr::new(10, 0, 1, 2),
            UDP,
            &[1, 2, 3],
        );
        assert_eq!(checksum(&p[..HEADER]), 0);
        assert_eq!(p.len(), HEADER + 3);
    }

    #[test]
    fn an_odd_length_is_padded() {
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[0x01, 0x00]), checksum(&[0x01]));
    }

    #[test]
    fn only_an_unfragmented_packet_of_the_protocol_for_this_node_has_a_payload() {
        let own = Ipv4Addr::new(10, 0, 1, 1);
        let from = Ipv4Addr::new(10, 0, 1, 2);
        let p = packet(from, own, ICMP, b"hello");
        assert_eq!(payload_for(&p, own, ICMP), Some((from, &b"hello"[..])));
        assert_eq!(payload_for(&p, own, UDP), None, "another protocol");
        assert_eq!(payload_for(&p, from, ICMP), None, "for another node");
        let mut fragment = p.clone();
        fragment[6] = 0x20; // more fragments
        assert_eq!(payload_for(&fragment, own, ICMP), None);
        assert_eq!(payload_for(&p[..HEADER + 2], own, ICMP), None, "cut short");
    }

    #[test]
    fn a_udp_message_is_found_only_between_its_port_on_both_sides() {
        let own = Ipv4Addr::new(10, 0, 1, 1);
        let from = Ipv4Addr::new(10, 0, 1, 2);
        let p = udp(from, own, 51873, b"DMPR");
        assert_eq!(udp_payload_for(&p, own, 51873), Some(&b"DMPR"[..]));
        assert_eq!(udp_payload_for(&p, own, 51872), None, "another port");
        assert_eq!(udp_payload_for(&p, from, 51873), None, "for another node");
    }
}
