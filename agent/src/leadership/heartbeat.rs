//! The leader's heartbeats: small UDP datagrams between the agents' overlay addresses, carried by WireGuard
//! (so the overlay source address proves the sender's seat), and the rules for what each one means. Pure;
//! the leader task sends and receives them.
//!
//! - The seat named leader sends a **ping** to every other seat with a record, every heartbeat; every other
//!   node pings the leader and the target of its vote.
//! - Every ping is answered by a **pong** that echoes its nonce.
//! - Each says of its sender: its seat, the leader and term its view names, whether it is **fit** to lead
//!   (healthy, its view of the chain confirmed: [`super::lease::fit`]) and whether it **leads** now. A
//!   pong also says whether its sender **supports** the pinger: it took the ping as a fit answer from the
//!   leader it knows under the same term, and holds no vote against it.
//!
//! A node hears its leader only in a fit message that names that seat leader under the term it knows;
//! from any other seat it watches (its vote's target), in any fit message. Silence, or answers that are
//! not fit, for `--leader-timeout` bring its vote ([`super::election`]). A leader counts the supporting
//! pongs towards its lease ([`super::lease`]).
//!
//! A leader that hands its term off says it has **released** it: it no longer leads under that term and never
//! will again, so whoever promised it (rule 5 of [`super::lease`]) is free of that promise at once, and its
//! successor need not wait a lease for the majority. A node being **drained** says so too, and pings every
//! seat while it is, so that replica ports leave it out of their rotation.
//!
//! Wire format, 36 bytes, big-endian: `"DMHB"`, version, kind (1 ping, 2 pong), flags (bit 0 fit, 1
//! leads, 2 supports: pongs only; version 2 adds 3 released and 4 draining), a zero byte, then the sender's
//! seat, the leader its view names (0: none) and that view's term as u64s, and the nonce as a u32. Anything
//! else is refused. A heartbeat without the version 2 flags is sent as version 1, which agents before
//! hand-offs read: in a cluster being upgraded they miss only the releases and the drains, and wait a lease.

/// The UDP port heartbeats use on each node's overlay address; the same on every node. Not next to
/// WireGuard's 51820, where an operator who moves a node's WireGuard would likely put it (WireGuard binds
/// its port on every address, the overlay's included); the agent refuses `--listen-port` equal to it.
pub const PORT: u16 = 51871;

/// The length of every heartbeat.
pub const LEN: usize = 36;

const MAGIC: [u8; 4] = *b"DMHB";
/// Versions read: 1, and 2 with its flags.
const VERSION: u8 = 2;
const FIT: u8 = 1;
const LEADS: u8 = 2;
const SUPPORTS: u8 = 4;
const RELEASED: u8 = 8;
const DRAINING: u8 = 16;

/// A ping or its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Pong,
}

/// One heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub kind: Kind,
    /// The sender's seat.
    pub seat: u64,
    /// The seat the sender's view names leader.
    pub leader: Option<u64>,
    /// The term of that view.
    pub term: u64,
    /// The sender could lead now ([`super::lease::fit`]).
    pub fit: bool,
    /// The sender leads now, under its lease.
    pub leads: bool,
    /// A pong's sender confirms the pinger as its leader under `term`: it took the ping as an answer, and
    /// holds no vote against it. Always false in a ping.
    pub supports: bool,
    /// The sender named itself leader under `term`, does not lead under it now, and never will again: it
    /// handed it off.
    pub released: bool,
    /// The sender is being drained: no replica port sends to it, and no leader is handed to it.
    pub draining: bool,
    /// A ping's own; a pong's is its ping's.
    pub nonce: u32,
}

/// Why a datagram is not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{0} bytes, not {LEN}")]
    Length(usize),
    #[error("it does not start with DMHB")]
    Magic,
    #[error("version {0}, not 1 or {VERSION}: is the sender a newer agent?")]
    Version(u8),
    #[error("kind {0} is neither ping (1) nor pong (2)")]
    Kind(u8),
    #[error("flags {0:#04x} set bits that mean nothing (or `supports` on a ping)")]
    Flags(u8),
    #[error("the reserved byte is {0}, not 0")]
    Reserved(u8),
    #[error("it names seat 0 as its sender")]
    NoSeat,
}

impl Heartbeat {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = if self.released || self.draining {
            VERSION
        } else {
            1
        };
        b[5] = match self.kind {
            Kind::Ping => 1,
            Kind::Pong => 2,
        };
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        b[6] = flag(self.fit, FIT)
            | flag(self.leads, LEADS)
            | flag(self.supports && self.kind == Kind::Pong, SUPPORTS)
            | flag(self.released, RELEASED)
            | flag(self.draining, DRAINING);
        b[8..16].copy_from_slice(&self.seat.to_be_bytes());
        b[16..24].copy_from_slice(&self.leader.unwrap_or(0).to_be_bytes());
        b[24..32].copy_from_slice(&self.term.to_be_bytes());
        b[32..36].copy_from_slice(&self.nonce.to_be_bytes());
        b
    }

    /// Reads a datagram.
    ///
    /// # Errors
    /// [`Malformed`], saying what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != LEN {
            return Err(Malformed::Length(b.len()));
        }
        if b[..4] != MAGIC {
            return Err(Malformed::Magic);
        }
        let since_2 = match b[4] {
            1 => 0,
            VERSION => RELEASED | DRAINING,
            v => return Err(Malformed::Version(v)),
        };
        let kind = match b[5] {
            1 => Kind::Ping,
            2 => Kind::Pong,
            k => return Err(Malformed::Kind(k)),
        };
        let flags = b[6];
        let allowed = since_2
            | match kind {
                Kind::Ping => FIT | LEADS,
                Kind::Pong => FIT | LEADS | SUPPORTS,
            };
        if flags & !allowed != 0 {
            return Err(Malformed::Flags(flags));
        }
        if b[7] != 0 {
            return Err(Malformed::Reserved(b[7]));
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(w)
        };
        let mut nonce = [0u8; 4];
        nonce.copy_from_slice(&b[32..36]);
        let seat = u64_at(8);
        if seat == 0 {
            return Err(Malformed::NoSeat);
        }
        Ok(Self {
            kind,
            seat,
            leader: Some(u64_at(16)).filter(|l| *l != 0),
            term: u64_at(24),
            fit: flags & FIT != 0,
            leads: flags & LEADS != 0,
            supports: flags & SUPPORTS != 0,
            released: flags & RELEASED != 0,
            draining: flags & DRAINING != 0,
            nonce: u32::from_be_bytes(nonce),
        })
    }
}

/// What this node's view says: the leader and its term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub leader: Option<u64>,
    pub term: u64,
}

/// Whether `hb` is an answer from its sender, for a node whose view is `view`: from the leader, a fit
/// message that names it leader under the same term (a leader whose view lags, or that cannot lead, is
/// not answering as leader); from any other seat watched, any fit message.
pub fn answers(hb: &Heartbeat, view: View) -> bool {
    if !hb.fit {
        return false;
    }
    match view.leader == Some(hb.seat) {
        true => hb.leader == Some(hb.seat) && hb.term == view.term,
        false => true,
    }
}

/// Whether `hb` is the leader of `view` saying, under the view's term, that it does not lead now (unfit, or
/// without its lease): whatever answer of its said it led before, a follower no longer takes it as leading.
pub fn disowns(hb: &Heartbeat, view: View) -> bool {
    view.leader == Some(hb.seat) && hb.leader == Some(hb.seat) && hb.term == view.term && !hb.leads
}

/// What this node has promised: to confirm no leader but `seat` (0: none) before `until`, the end of its
/// last confirmation of `seat` under `term`, or a lease after it started ([`super::lease`], rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promise {
    pub seat: u64,
    pub term: u64,
    pub until: std::time::Instant,
}

impl Promise {
    /// Whether it still binds this node at `now` against confirming `seat`.
    pub fn forbids(&self, seat: u64, now: std::time::Instant) -> bool {
        self.seat != seat && now < self.until
    }

    /// Whether `hb` frees this node of the promise: the seat promised released the very term it was
    /// confirmed under. A release of an older term (a datagram that lingered) frees nothing: the seat may
    /// lead again under a newer one, on this node's word.
    pub fn released_by(&self, hb: &Heartbeat) -> bool {
        hb.released && hb.seat == self.seat && hb.term == self.term && hb.leader == Some(hb.seat)
    }
}

/// Whether this node, with `view` and a vote (cast, or being cast) against `voting_against`, confirms
/// the sender of `ping` as its leader at `now`, bound by its `promise`.
pub fn supports(
    ping: &Heartbeat,
    view: View,
    voting_against: &[u64],
    promise: Promise,
    now: std::time::Instant,
) -> bool {
    ping.kind == Kind::Ping
        && view.leader == Some(ping.seat)
        && answers(ping, view)
        && !voting_against.contains(&ping.seat)
        && !promise.forbids(ping.seat, now)
}

/// Whether `pong`, answering a ping this node sent as `own` under `term`, confirms this node as leader.
pub fn confirms(pong: &Heartbeat, own: u64, term: u64) -> bool {
    pong.kind == Kind::Pong && pong.supports && pong.leader == Some(own) && pong.term == term
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(seat: u64, leader: u64, term: u64) -> Heartbeat {
        Heartbeat {
            kind: Kind::Ping,
            seat,
            leader: Some(leader),
            term,
            fit: true,
            leads: true,
            supports: false,
            released: false,
            draining: false,
            nonce: 7,
        }
    }

    #[test]
    fn a_heartbeat_survives_the_wire() {
        let pong = Heartbeat {
            kind: Kind::Pong,
            seat: 3,
            leader: Some(1),
            term: 42,
            fit: true,
            leads: false,
            supports: true,
            released: false,
            draining: false,
            nonce: 0xdead_beef,
        };
        assert_eq!(Heartbeat::decode(&pong.encode()), Ok(pong));
        assert_eq!(pong.encode()[4], 1, "read by agents before hand-offs");
        let farewell = Heartbeat {
            fit: false,
            leads: false,
            released: true,
            draining: true,
            ..ping(1, 1, 9)
        };
        assert_eq!(Heartbeat::decode(&farewell.encode()), Ok(farewell));
        assert_eq!(farewell.encode()[4], 2);
        let none = Heartbeat {
            leader: None,
            fit: false,
            ..ping(2, 1, 0)
        };
        assert_eq!(Heartbeat::decode(&none.encode()), Ok(none));
    }

    #[test]
    fn anything_but_a_well_formed_heartbeat_is_refused_saying_why() {
        let good = ping(2, 1, 5).encode();
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            b
        };
        assert_eq!(Heartbeat::decode(&good[..35]), Err(Malformed::Length(35)));
        assert_eq!(
            Heartbeat::decode(&[good.as_slice(), &[0]].concat()),
            Err(Malformed::Length(37))
        );
        assert_eq!(Heartbeat::decode(&with(0, b'X')), Err(Malformed::Magic));
        assert_eq!(Heartbeat::decode(&with(4, 3)), Err(Malformed::Version(3)));
        assert_eq!(
            Heartbeat::decode(&with(6, FIT | RELEASED)),
            Err(Malformed::Flags(FIT | RELEASED)),
            "version 1 has no releases"
        );
        let mut v2 = with(4, 2);
        v2[6] = FIT | DRAINING;
        assert!(Heartbeat::decode(&v2).is_ok_and(|hb| hb.draining));
        assert_eq!(Heartbeat::decode(&with(5, 3)), Err(Malformed::Kind(3)));
        assert_eq!(
            Heartbeat::decode(&with(6, 0x20)),
            Err(Malformed::Flags(0x20))
        );
        assert_eq!(
            Heartbeat::decode(&with(6, SUPPORTS)),
            Err(Malformed::Flags(SUPPORTS)),
            "a ping cannot support"
        );
        assert_eq!(Heartbeat::decode(&with(7, 1)), Err(Malformed::Reserved(1)));
        let mut no_seat = good;
        no_seat[8..16].copy_from_slice(&[0; 8]);
        assert_eq!(Heartbeat::decode(&no_seat), Err(Malformed::NoSeat));
    }

    #[test]
    fn a_leader_answers_only_when_fit_and_naming_itself_under_the_known_term() {
        let view = View {
            leader: Some(1),
            term: 5,
        };
        assert!(answers(&ping(1, 1, 5), view));
        assert!(
            !answers(
                &Heartbeat {
                    fit: false,
                    ..ping(1, 1, 5)
                },
                view
            ),
            "not fit"
        );
        assert!(!answers(&ping(1, 2, 5), view), "its view names another");
        assert!(!answers(&ping(1, 1, 4), view), "an older term");
        assert!(
            !answers(&ping(1, 1, 6), view),
            "a term this node has not seen"
        );
        assert!(
            answers(&ping(3, 1, 4), view),
            "another seat: any fit message"
        );
    }

    #[test]
    fn a_node_supports_the_leader_it_heard_unless_it_votes_against_it() {
        let view = View {
            leader: Some(1),
            term: 5,
        };
        let now = std::time::Instant::now();
        let free = Promise {
            seat: 0,
            term: 0,
            until: now,
        };
        let supports =
            |hb: &Heartbeat, view, against: &[u64]| supports(hb, view, against, free, now);
        assert!(supports(&ping(1, 1, 5), view, &[]));
        assert!(!supports(&ping(1, 1, 5), view, &[1]), "a vote against it");
        assert!(
            supports(&ping(1, 1, 5), view, &[3]),
            "a vote against another"
        );
        assert!(
            !supports(&ping(2, 2, 5), view, &[]),
            "not this node's leader"
        );
        assert!(!supports(&ping(1, 1, 4), view, &[]), "another term");
        assert!(
            !supports(
                &Heartbeat {
                    fit: false,
                    ..ping(1, 1, 5)
                },
                view,
                &[]
            ),
            "an unfit leader is no answer"
        );
    }

    /// A node that confirmed seat 2 until a moment confirms no other leader before it, and seat 2 itself
    /// still; after it, any.
    #[test]
    fn a_node_confirms_no_new_leader_until_its_last_confirmation_has_run_out() {
        let view = View {
            leader: Some(1),
            term: 6,
        };
        let now = std::time::Instant::now();
        let until = now + std::time::Duration::from_secs(1);
        let promise = Promise {
            seat: 2,
            term: 5,
            until,
        };
        assert!(!super::supports(&ping(1, 1, 6), view, &[], promise, now));
        assert!(super::supports(&ping(1, 1, 6), view, &[], promise, until));
        let view2 = View {
            leader: Some(2),
            term: 6,
        };
        assert!(super::supports(&ping(2, 2, 6), view2, &[], promise, now));
    }

    /// Only the seat promised, releasing the very term it was confirmed under, frees a node of its
    /// promise: a lingering release of an older term does not.
    #[test]
    fn a_release_frees_a_promise_only_for_the_term_it_was_given_under() {
        let promise = Promise {
            seat: 1,
            term: 5,
            until: std::time::Instant::now(),
        };
        let release = |seat, term| Heartbeat {
            fit: false,
            leads: false,
            released: true,
            ..ping(seat, seat, term)
        };
        assert!(promise.released_by(&release(1, 5)));
        assert!(!promise.released_by(&release(1, 4)), "an older term");
        assert!(!promise.released_by(&release(2, 5)), "another seat");
        assert!(
            !promise.released_by(&Heartbeat {
                released: false,
                ..release(1, 5)
            }),
            "no release"
        );
    }

    #[test]
    fn a_pong_confirms_only_a_leader_under_the_same_term() {
        let pong = Heartbeat {
            kind: Kind::Pong,
            supports: true,
            ..ping(2, 1, 5)
        };
        assert!(confirms(&pong, 1, 5));
        assert!(!confirms(&pong, 1, 6));
        assert!(!confirms(&pong, 3, 5));
        assert!(!confirms(
            &Heartbeat {
                supports: false,
                ..pong
            },
            1,
            5
        ));
    }
}
