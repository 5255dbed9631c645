//! What peer relaying puts on the wire: the header in front of a relayed WireGuard datagram, and the
//! control messages that ask for and grant an allocation.
//!
//! **Data.** `[0xD5, 1 (version), 0 (flags), 0, vni u32]` (big-endian), then the WireGuard datagram as it
//! is. It goes on the WireGuard socket itself, so relayed datagrams leave a seat through the same NAT
//! mapping as its tunnel to the relay, which is what the relay binds them to. 0xD5 is no WireGuard message
//! type (1 to 4) and has its top two bits set, so no header-prefixed datagram is taken for WireGuard's or
//! STUN's, and older agents drop it.
//!
//! **Control.** Inside the WireGuard tunnel between a seat and the relay, as UDP between their overlay
//! addresses on [`CONTROL_PORT`], as candidate messages travel: cryptokey routing tells the relay which
//! seat sent each one. Format (big-endian): `"DMPR"`, version 1, kind, then the kind's fixed-size fields:
//!
//! | kind | fields |
//! |---|---|
//! | 1 Offer | accepting u8, free u16 |
//! | 2 Request | peer \[u8; 32\], op u8 (1 allocate or refresh, 2 release) |
//! | 3 Granted | peer, vni u32, ready u8, lifetime_ms u32 |
//! | 4 Refused | peer, reason u8 ([`RefusedReason`]) |
//! | 5 Invite | peer, vni u32 |

use wg_key::Key;

/// The overlay UDP port of control messages, on every node (candidates use 51872, heartbeats 51871).
pub const CONTROL_PORT: u16 = 51873;
/// The bytes [`Header`] puts in front of a relayed datagram.
pub const HEADER_LEN: usize = 8;
/// The first byte of a relayed datagram.
pub const RELAYED: u8 = 0xD5;

const HEADER_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"DMPR";
const VERSION: u8 = 1;
/// Magic, version and kind.
const PREAMBLE: usize = 6;
const KEY: usize = 32;

/// Whether a datagram that came to the WireGuard socket, starting with `first`, is a relayed one.
pub fn is_relayed(first: u8) -> bool {
    first == RELAYED
}

/// Why bytes are not a header or a control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{len} bytes, where it takes {want}")]
    Length { len: usize, want: usize },
    #[error("it does not start with 0xD5 (a header) or DMPR (a control message)")]
    Magic,
    #[error("version {0}, not 1: is the sender another version of the agent?")]
    Version(u8),
    #[error("kind {0} is none of offer (1), request, granted, refused and invite (5)")]
    Kind(u8),
    #[error("{name} is {value}, which means nothing")]
    Field { name: &'static str, value: u32 },
}

/// What is in front of a relayed datagram: the allocation it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Never 0: the relay hands out nonzero vnis, so a zero one is a bug or a forgery.
    pub vni: u32,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// # Panics
    /// When `out` is shorter than [`HEADER_LEN`]: the caller reserves the room.
    pub fn encode_into(self, out: &mut [u8]) {
        let v = self.vni.to_be_bytes();
        out[..HEADER_LEN].copy_from_slice(&[RELAYED, HEADER_VERSION, 0, 0, v[0], v[1], v[2], v[3]]);
    }

    /// The header of a relayed datagram, and the WireGuard datagram after it.
    ///
    /// # Errors
    /// [`Malformed`], saying what is wrong. Flags are refused rather than ignored, so that a later use of
    /// them comes with a new version.
    pub fn decode(b: &[u8]) -> Result<(Self, &[u8]), Malformed> {
        if b.len() < HEADER_LEN {
            return Err(Malformed::Length {
                len: b.len(),
                want: HEADER_LEN,
            });
        }
        if b[0] != RELAYED {
            return Err(Malformed::Magic);
        }
        if b[1] != HEADER_VERSION {
            return Err(Malformed::Version(b[1]));
        }
        let flags = u16::from_be_bytes([b[2], b[3]]);
        if flags != 0 {
            return Err(field("flags", flags.into()));
        }
        let vni = u32_at(b, 4);
        if vni == 0 {
            return Err(field("vni", 0));
        }
        Ok((Self { vni }, &b[HEADER_LEN..]))
    }
}

/// What a seat asks of a relay about its pair with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Create the allocation, or keep it: a seat repeats it to refresh.
    Allocate,
    Release,
}

/// Why a relay will not relay for a pair, or no longer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusedReason {
    /// This node does not relay for peers (now).
    NotRelaying,
    /// One of the pair is not a current peer of the relay.
    NotASeat,
    /// The pair is one seat twice, or the relay is one of it.
    ItSelf,
    /// One of the pair is neither direct nor punched at the relay, so the relay cannot bind its datagrams.
    /// Usually the peer: the asker reaches the relay over UDP by its own view, which the relay's may lag.
    PeerNotOnUdp,
    /// The relay holds as many allocations as it takes.
    Full,
    /// One of the pair holds as many allocations at this relay as one seat may.
    SeatLimit,
    /// The allocation is gone: released, expired, or a seat left the relay or its UDP path.
    Released,
}

impl RefusedReason {
    pub const ALL: [Self; 7] = [
        Self::NotRelaying,
        Self::NotASeat,
        Self::ItSelf,
        Self::PeerNotOnUdp,
        Self::Full,
        Self::SeatLimit,
        Self::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRelaying => "not-relaying",
            Self::NotASeat => "not-a-seat",
            Self::ItSelf => "self",
            Self::PeerNotOnUdp => "peer-not-on-udp",
            Self::Full => "full",
            Self::SeatLimit => "seat-limit",
            Self::Released => "released",
        }
    }

    fn to_wire(self) -> u8 {
        match self {
            Self::NotRelaying => 1,
            Self::NotASeat => 2,
            Self::ItSelf => 3,
            Self::PeerNotOnUdp => 4,
            Self::Full => 5,
            Self::SeatLimit => 6,
            Self::Released => 7,
        }
    }

    fn from_wire(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.to_wire() == b)
    }
}

/// One control message. `peer` is always the other seat of the pair, as the receiver knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Relay to every peer: "I relay", with how many more pairs it takes.
    Offer {
        accepting: bool,
        free: u16,
    },
    /// Seat to relay: keep (or drop) an allocation for the sender and `peer`.
    Request {
        peer: Key,
        op: Op,
    },
    /// Relay to seat: the pair's vni, the same for both; `ready` once both seats asked, since the relay
    /// forwards nothing before that. The allocation lasts `lifetime_ms` without a refresh or traffic.
    Granted {
        peer: Key,
        vni: u32,
        ready: bool,
        lifetime_ms: u32,
    },
    Refused {
        peer: Key,
        reason: RefusedReason,
    },
    /// Relay to seat: `peer` asked for an allocation with you, so ask too, now.
    Invite {
        peer: Key,
        vni: u32,
    },
}

impl Control {
    fn kind(&self) -> u8 {
        match self {
            Self::Offer { .. } => 1,
            Self::Request { .. } => 2,
            Self::Granted { .. } => 3,
            Self::Refused { .. } => 4,
            Self::Invite { .. } => 5,
        }
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREAMBLE + KEY + 9);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind());
        match *self {
            Self::Offer { accepting, free } => {
                out.push(accepting.into());
                out.extend_from_slice(&free.to_be_bytes());
            }
            Self::Request { peer, op } => {
                out.extend_from_slice(peer.as_bytes());
                out.push(match op {
                    Op::Allocate => 1,
                    Op::Release => 2,
                });
            }
            Self::Granted {
                peer,
                vni,
                ready,
                lifetime_ms,
            } => {
                out.extend_from_slice(peer.as_bytes());
                out.extend_from_slice(&vni.to_be_bytes());
                out.push(ready.into());
                out.extend_from_slice(&lifetime_ms.to_be_bytes());
            }
            Self::Refused { peer, reason } => {
                out.extend_from_slice(peer.as_bytes());
                out.push(reason.to_wire());
            }
            Self::Invite { peer, vni } => {
                out.extend_from_slice(peer.as_bytes());
                out.extend_from_slice(&vni.to_be_bytes());
            }
        }
        out
    }

    /// Reads a message.
    ///
    /// # Errors
    /// [`Malformed`], saying what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < PREAMBLE {
            return Err(Malformed::Length {
                len: b.len(),
                want: PREAMBLE,
            });
        }
        if b[..4] != MAGIC {
            return Err(Malformed::Magic);
        }
        if b[4] != VERSION {
            return Err(Malformed::Version(b[4]));
        }
        let fields = match b[5] {
            1 => 3,
            2 | 4 => KEY + 1,
            3 => KEY + 9,
            5 => KEY + 4,
            k => return Err(Malformed::Kind(k)),
        };
        if b.len() != PREAMBLE + fields {
            return Err(Malformed::Length {
                len: b.len(),
                want: PREAMBLE + fields,
            });
        }
        let f = &b[PREAMBLE..];
        let peer = || {
            let mut k = [0; KEY];
            k.copy_from_slice(&f[..KEY]);
            Key::from_bytes(k)
        };
        // The kind and the length are checked above.
        Ok(match b[5] {
            1 => Self::Offer {
                accepting: flag("accepting", f[0])?,
                free: u16::from_be_bytes([f[1], f[2]]),
            },
            2 => Self::Request {
                peer: peer(),
                op: match f[KEY] {
                    1 => Op::Allocate,
                    2 => Op::Release,
                    v => return Err(field("op", v.into())),
                },
            },
            3 => Self::Granted {
                peer: peer(),
                vni: vni(u32_at(f, KEY))?,
                ready: flag("ready", f[KEY + 4])?,
                lifetime_ms: u32_at(f, KEY + 5),
            },
            4 => Self::Refused {
                peer: peer(),
                reason: RefusedReason::from_wire(f[KEY]).ok_or(field("reason", f[KEY].into()))?,
            },
            _ => Self::Invite {
                peer: peer(),
                vni: vni(u32_at(f, KEY))?,
            },
        })
    }
}

fn field(name: &'static str, value: u32) -> Malformed {
    Malformed::Field { name, value }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn flag(name: &'static str, b: u8) -> Result<bool, Malformed> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(field(name, v.into())),
    }
}

fn vni(v: u32) -> Result<u32, Malformed> {
    if v == 0 { Err(field("vni", 0)) } else { Ok(v) }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> impl Strategy<Value = Key> {
        any::<[u8; 32]>().prop_map(Key::from_bytes)
    }

    fn control() -> impl Strategy<Value = Control> {
        let reason = proptest::sample::select(RefusedReason::ALL.to_vec());
        prop_oneof![
            (any::<bool>(), any::<u16>())
                .prop_map(|(accepting, free)| Control::Offer { accepting, free }),
            (key(), any::<bool>()).prop_map(|(peer, release)| Control::Request {
                peer,
                op: if release { Op::Release } else { Op::Allocate },
            }),
            (key(), 1..=u32::MAX, any::<bool>(), any::<u32>()).prop_map(
                |(peer, vni, ready, lifetime_ms)| Control::Granted {
                    peer,
                    vni,
                    ready,
                    lifetime_ms,
                }
            ),
            (key(), reason).prop_map(|(peer, reason)| Control::Refused { peer, reason }),
            (key(), 1..=u32::MAX).prop_map(|(peer, vni)| Control::Invite { peer, vni }),
        ]
    }

    fn granted() -> Vec<u8> {
        Control::Granted {
            peer: Key::from_bytes([7; 32]),
            vni: 9,
            ready: true,
            lifetime_ms: 90_000,
        }
        .encode()
    }

    fn with(mut b: Vec<u8>, i: usize, v: u8) -> Vec<u8> {
        b[i] = v;
        b
    }

    proptest! {
        #[test]
        fn every_control_message_round_trips(m in control()) {
            prop_assert_eq!(Control::decode(&m.encode()), Ok(m));
        }

        /// The receiving socket tells datagrams apart by their first byte alone: a relayed one must never
        /// look like WireGuard's (types 1 to 4) or STUN's (top two bits 00), whatever it carries.
        #[test]
        fn a_relayed_datagram_is_neither_wireguard_nor_stun_and_round_trips(
            vni in 1..=u32::MAX,
            inner in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = vec![0; HEADER_LEN];
            Header { vni }.encode_into(&mut b);
            b.extend_from_slice(&inner);
            prop_assert!(!(1..=4).contains(&b[0]));
            prop_assert!(b[0] & 0xc0 != 0);
            prop_assert!(is_relayed(b[0]));
            prop_assert_eq!(Header::decode(&b), Ok((Header { vni }, &inner[..])));
        }

        #[test]
        fn a_wireguard_or_stun_datagram_is_not_relayed(first in 0u8..=4, rest: [u8; 31]) {
            prop_assert!(!is_relayed(first));
            let mut b = vec![first];
            b.extend_from_slice(&rest);
            prop_assert_eq!(Header::decode(&b), Err(Malformed::Magic));
        }
    }

    #[test]
    fn a_malformed_header_says_what_is_wrong() {
        let mut good = [0; HEADER_LEN];
        Header { vni: 5 }.encode_into(&mut good);
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            b
        };
        let short = Malformed::Length { len: 7, want: 8 };
        assert_eq!(Header::decode(&good[..7]), Err(short));
        assert_eq!(Header::decode(&with(0, 4)), Err(Malformed::Magic));
        assert_eq!(Header::decode(&with(1, 2)), Err(Malformed::Version(2)));
        assert_eq!(Header::decode(&with(3, 1)), Err(field("flags", 1)));
        assert_eq!(Header::decode(&with(7, 0)), Err(field("vni", 0)));
    }

    #[test]
    fn a_malformed_control_message_says_what_is_wrong() {
        let good = granted();
        let d = |b: Vec<u8>| Control::decode(&b);
        let short = Malformed::Length { len: 5, want: 6 };
        assert_eq!(Control::decode(&good[..5]), Err(short));
        assert_eq!(d(with(granted(), 0, b'X')), Err(Malformed::Magic));
        assert_eq!(d(with(granted(), 4, 2)), Err(Malformed::Version(2)));
        for kind in [0, 6, 255] {
            assert_eq!(d(with(granted(), 5, kind)), Err(Malformed::Kind(kind)));
        }
        let long = Malformed::Length { len: 48, want: 47 };
        assert_eq!(d([&good[..], &[0]].concat()), Err(long));
        let as_invite = Malformed::Length { len: 47, want: 42 };
        assert_eq!(d(with(granted(), 5, 5)), Err(as_invite));
        let vni = [&good[..38], &[0; 4], &good[42..]].concat();
        assert_eq!(d(vni), Err(field("vni", 0)));
        assert_eq!(d(with(granted(), 42, 2)), Err(field("ready", 2)));

        let offer = Control::Offer {
            accepting: true,
            free: 3,
        };
        assert_eq!(d(with(offer.encode(), 6, 9)), Err(field("accepting", 9)));
        let peer = Key::from_bytes([1; 32]);
        let request = Control::Request {
            peer,
            op: Op::Release,
        };
        assert_eq!(d(with(request.encode(), 38, 3)), Err(field("op", 3)));
        let refused = Control::Refused {
            peer,
            reason: RefusedReason::Full,
        };
        for reason in [0, 8] {
            let e = field("reason", reason.into());
            assert_eq!(d(with(refused.encode(), 38, reason)), Err(e));
        }
        let invite = Control::Invite { peer, vni: 1 };
        let zero = [&invite.encode()[..38], &[0; 4]].concat();
        assert_eq!(d(zero), Err(field("vni", 0)));
    }

    #[test]
    fn reasons_have_distinct_codes_and_names() {
        for (i, a) in RefusedReason::ALL.into_iter().enumerate() {
            assert_eq!(RefusedReason::from_wire(a.to_wire()), Some(a));
            for b in &RefusedReason::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
