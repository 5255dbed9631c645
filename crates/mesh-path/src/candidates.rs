//! The addresses a node may be reached at directly (its **candidates**), and the small message in which peers
//! tell each other theirs. Pure.
//!
//! The message travels inside the WireGuard tunnel, as a UDP datagram between the two nodes' overlay
//! addresses on [`PORT`], over whichever path the pair uses (the relay, typically): WireGuard's cryptokey
//! routing proves which peer sent it, and nobody on the way can read or forge it. The device builds and
//! takes these datagrams itself ([`wrap`], [`unwrap`]); they never reach the TUN. So a change of mapping
//! costs each peer one small message, not a transaction.
//!
//! Wire format (big-endian): `"DMCD"`, version 1, kind (1 call: "punch now, here are mine"; 2 update),
//! the sender's NAT mapping ([`Mapping`]), the number of candidates (at most [`MAX_CANDIDATES`]), the
//! address the sender sees the receiver's datagrams come from (IPv4 and port; zeros when it has none),
//! then each candidate as its source (1 local, 2 STUN, 3 observed by a peer), IPv4 address and port.

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;

use crate::ipv4;
use crate::nat::Mapping;

/// The overlay UDP port of candidate messages, on every node (heartbeats use 51871).
pub const PORT: u16 = 51872;
/// The most candidates a node publishes, and takes from a peer.
pub const MAX_CANDIDATES: usize = 8;

const MAGIC: [u8; 4] = *b"DMCD";
const VERSION: u8 = 1;
const HEADER: usize = 14;
const ENTRY: usize = 7;

/// Where a candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An address of one of the node's own interfaces: a peer on the same network reaches it there.
    Local,
    /// The public address and port a STUN server saw the node's WireGuard socket come from.
    Stun,
    /// The address a peer that reaches the node directly sees its datagrams come from.
    Observed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Stun => "stun",
            Self::Observed => "observed",
        }
    }

    fn to_wire(self) -> u8 {
        match self {
            Self::Local => 1,
            Self::Stun => 2,
            Self::Observed => 3,
        }
    }

    fn from_wire(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Local),
            2 => Some(Self::Stun),
            3 => Some(Self::Observed),
            _ => None,
        }
    }
}

/// One address to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub addr: SocketAddrV4,
    pub source: Source,
}

/// What the message asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The sender is punching now: try its candidates at once, and answer with yours.
    Call,
    /// The sender's candidates, for later.
    Update,
}

/// One candidate message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// The sender's NAT mapping.
    pub mapping: Mapping,
    /// Where the sender sees the receiver's datagrams come from, when it gets them over UDP.
    pub observed: Option<SocketAddrV4>,
    pub candidates: Vec<Candidate>,
}

/// Why a datagram on [`PORT`] is not a candidate message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{0} bytes, shorter than the {HEADER}-byte header")]
    Short(usize),
    #[error("it does not start with DMCD")]
    Magic,
    #[error("version {0}, not {VERSION}: is the sender another version of the agent?")]
    Version(u8),
    #[error("kind {0} is neither call (1) nor update (2)")]
    Kind(u8),
    #[error("NAT mapping {0} means nothing")]
    Mapping(u8),
    #[error("{0} candidates, more than {MAX_CANDIDATES}")]
    TooMany(usize),
    #[error("{len} bytes for {count} candidates, which take {want}")]
    Length {
        len: usize,
        count: usize,
        want: usize,
    },
    #[error("candidate {index} has source {value}, which means nothing")]
    Source { index: usize, value: u8 },
}

fn put_addr(out: &mut Vec<u8>, addr: Option<SocketAddrV4>) {
    let (ip, port) = addr.map_or(([0; 4], 0), |a| (a.ip().octets(), a.port()));
    out.extend_from_slice(&ip);
    out.extend_from_slice(&port.to_be_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        u16::from_be_bytes([b[4], b[5]]),
    )
}

impl Message {
    /// The message's bytes; candidates beyond [`MAX_CANDIDATES`] are left out.
    pub fn encode(&self) -> Vec<u8> {
        let candidates = &self.candidates[..self.candidates.len().min(MAX_CANDIDATES)];
        let mut out = Vec::with_capacity(HEADER + ENTRY * candidates.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            Kind::Call => 1,
            Kind::Update => 2,
        });
        out.push(self.mapping.to_wire());
        out.push(u8::try_from(candidates.len()).expect("at most MAX_CANDIDATES"));
        put_addr(&mut out, self.observed);
        for c in candidates {
            out.push(c.source.to_wire());
            put_addr(&mut out, Some(c.addr));
        }
        out
    }

    /// Reads a message.
    ///
    /// # Errors
    /// [`Malformed`], saying what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < HEADER {
            return Err(Malformed::Short(b.len()));
        }
        if b[..4] != MAGIC {
            return Err(Malformed::Magic);
        }
        if b[4] != VERSION {
            return Err(Malformed::Version(b[4]));
        }
        let kind = match b[5] {
            1 => Kind::Call,
            2 => Kind::Update,
            k => return Err(Malformed::Kind(k)),
        };
        let mapping = Mapping::from_wire(b[6]).ok_or(Malformed::Mapping(b[6]))?;
        let count = usize::from(b[7]);
        if count > MAX_CANDIDATES {
            return Err(Malformed::TooMany(count));
        }
        let want = HEADER + ENTRY * count;
        if b.len() != want {
            return Err(Malformed::Length {
                len: b.len(),
                count,
                want,
            });
        }
        let observed = Some(get_addr(&b[8..14])).filter(|a| !a.ip().is_unspecified());
        let candidates = b[HEADER..]
            .chunks_exact(ENTRY)
            .enumerate()
            .map(|(index, e)| {
                let source =
                    Source::from_wire(e[0]).ok_or(Malformed::Source { index, value: e[0] })?;
                Ok(Candidate {
                    addr: get_addr(&e[1..]),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            kind,
            mapping,
            observed,
            candidates,
        })
    }
}

/// An IPv4 UDP packet from `src`:[`PORT`] to `dst`:[`PORT`] carrying `payload`, for the tunnel.
pub fn wrap(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    ipv4::udp(src, dst, PORT, payload)
}

/// The payload of a decrypted packet when it is a candidate datagram for `own` (UDP from [`PORT`] to
/// `own`:[`PORT`], unfragmented); `None` for every other packet, which goes to the TUN as it is.
pub fn unwrap(packet: &[u8], own: Ipv4Addr) -> Option<&[u8]> {
    ipv4::udp_payload_for(packet, own, PORT)
}

/// Whether a peer's candidate is worth a datagram: a unicast IPv4 address outside the overlay (a datagram
/// to an overlay address would loop back into the tunnel) that is none of this node's own addresses (nodes
/// behind slirp all have 10.0.2.100: a "peer" there is this node).
pub fn usable(addr: SocketAddrV4, overlay: Ipv4Network, own_ips: &[Ipv4Addr]) -> bool {
    let ip = *addr.ip();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_loopback()
        && !ip.is_multicast()
        && !ip.is_broadcast()
        && !overlay.contains(ip)
        && !own_ips.contains(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            kind: Kind::Call,
            mapping: Mapping::EndpointIndependent,
            observed: Some("198.51.100.7:40000".parse().unwrap()),
            candidates: vec![
                Candidate {
                    addr: "10.0.2.100:51820".parse().unwrap(),
                    source: Source::Local,
                },
                Candidate {
                    addr: "198.51.100.1:38211".parse().unwrap(),
                    source: Source::Stun,
                },
            ],
        }
    }

    #[test]
    fn a_message_round_trips_and_its_length_is_exact() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(bytes.len(), 14 + 2 * 7);
        assert_eq!(Message::decode(&bytes), Ok(m));
        let none = Message {
            observed: None,
            candidates: vec![],
            kind: Kind::Update,
            ..sample()
        };
        assert_eq!(Message::decode(&none.encode()), Ok(none));
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let good = sample().encode();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        assert_eq!(Message::decode(&good[..10]), Err(Malformed::Short(10)));
        assert_eq!(Message::decode(&with(0, b'X')), Err(Malformed::Magic));
        assert_eq!(Message::decode(&with(4, 2)), Err(Malformed::Version(2)));
        assert_eq!(Message::decode(&with(5, 9)), Err(Malformed::Kind(9)));
        assert_eq!(Message::decode(&with(6, 77)), Err(Malformed::Mapping(77)));
        assert_eq!(Message::decode(&with(7, 9)), Err(Malformed::TooMany(9)));
        assert!(matches!(
            Message::decode(&with(7, 3)),
            Err(Malformed::Length { count: 3, .. })
        ));
        assert_eq!(
            Message::decode(&with(14 + 7, 0)),
            Err(Malformed::Source { index: 1, value: 0 })
        );
    }

    #[test]
    fn a_wrapped_message_is_unwrapped_only_at_its_destination() {
        let own: Ipv4Addr = "10.0.1.2".parse().unwrap();
        let payload = sample().encode();
        let packet = wrap("10.0.1.1".parse().unwrap(), own, &payload);
        assert_eq!(
            ipv4::checksum(&packet[..20]),
            0,
            "a valid header sums to zero"
        );
        assert_eq!(unwrap(&packet, own), Some(&payload[..]));
        assert_eq!(unwrap(&packet, "10.0.1.3".parse().unwrap()), None);
        let mut other_port = packet.clone();
        other_port[22..24].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(unwrap(&other_port, own), None, "an application's datagram");
        let mut fragment = packet.clone();
        fragment[6] = 0x20;
        assert_eq!(unwrap(&fragment, own), None);
        assert_eq!(unwrap(&packet[..27], own), None);
    }

    #[test]
    fn only_unicast_addresses_outside_the_overlay_and_not_our_own_are_tried() {
        let overlay: Ipv4Network = "10.0.1.0/24".parse().unwrap();
        let own = ["10.0.2.100".parse().unwrap()];
        let ok = |s: &str| usable(s.parse().unwrap(), overlay, &own);
        assert!(ok("198.51.100.1:40000"));
        assert!(ok("192.168.1.5:51820"));
        for bad in [
            "10.0.1.7:51820",
            "10.0.2.100:51820",
            "0.0.0.0:51820",
            "127.0.0.1:51820",
            "224.0.0.1:51820",
            "255.255.255.255:51820",
            "198.51.100.1:0",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }
}
