//! The relay's side: which pairs of seats it relays for, and where each relayed datagram goes. Sans-IO:
//! the device hands it the control messages that came in, each seat's endpoint and the time, and sends
//! what it returns.
//!
//! An allocation is a pair of seats, keyed by their sorted keys, with one vni for both. It is *ready* once
//! both seats asked for it inside their own tunnels; only then does the relay forward, and only from the
//! endpoint each seat's authenticated datagrams come from at the relay, to the other's. So a stranger, or
//! one seat alone, can make the relay send nothing, and it sends one datagram for each it receives.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wg_key::Key;

use crate::wire::{Control, RefusedReason};

/// How long an allocation only one seat asked for lasts after its last request: the other seat was
/// invited, and asks at once if it is coming at all.
pub const UNBOUND_LIFETIME: Duration = Duration::from_secs(30);
/// How long a ready allocation lasts without a request or a forwarded datagram: seats refresh every 30 s,
/// so two lost refreshes do not end it.
pub const BOUND_LIFETIME: Duration = Duration::from_secs(90);

/// A rate cap lets a burst this long through at once...
const BURST: Duration = Duration::from_millis(100);
/// ...and at least this many bytes: a GRO run the device forwards in one piece must fit.
const MIN_BURST: u64 = 128 * 1024;

/// What the relay's device knows of its peers.
pub trait Seats {
    /// Whether `key` is a current peer of the relay: a seat the chain attests now.
    fn is_seat(&self, key: &Key) -> bool;
    /// Where the seat's authenticated datagrams come from at the relay, while it is direct or punched
    /// there; `None` while it is reached only through the gateway.
    fn udp_endpoint(&self, key: &Key) -> Option<SocketAddr>;
}

/// Each seat, with its endpoint when it is on UDP.
impl<S: BuildHasher> Seats for HashMap<Key, Option<SocketAddr>, S> {
    fn is_seat(&self, key: &Key) -> bool {
        self.contains_key(key)
    }

    fn udp_endpoint(&self, key: &Key) -> Option<SocketAddr> {
        self.get(key).copied().flatten()
    }
}

/// What the relay takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Allocations in all.
    pub max_pairs: usize,
    /// Allocations one seat is in.
    pub max_per_seat: usize,
    /// Each pair's cap, both ways together, in Mbit/s; `None` for none.
    pub pair_mbps: Option<u32>,
    /// The cap on all it forwards, in Mbit/s; `None` for none.
    pub total_mbps: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pairs: 64,
            max_per_seat: 16,
            pair_mbps: None,
            total_mbps: None,
        }
    }
}

/// Why the relay did not forward a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dropped {
    /// No allocation has its vni.
    UnknownVni,
    /// Only one seat of the pair has asked.
    NotReady,
    /// It did not come from the endpoint of either seat of the pair.
    Stranger,
    PairRate,
    TotalRate,
}

impl Dropped {
    pub const ALL: [Self; 5] = [
        Self::UnknownVni,
        Self::NotReady,
        Self::Stranger,
        Self::PairRate,
        Self::TotalRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownVni => "unknown-vni",
            Self::NotReady => "not-ready",
            Self::Stranger => "stranger",
            Self::PairRate => "pair-rate",
            Self::TotalRate => "total-rate",
        }
    }
}

/// The relay's counters, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations held now.
    pub allocations: usize,
    /// Allocations that became ready.
    pub granted: u64,
    pub forwarded_datagrams: u64,
    pub forwarded_bytes: u64,
    refused: [u64; RefusedReason::ALL.len()],
    dropped: [u64; Dropped::ALL.len()],
}

impl Stats {
    /// Refused messages sent for `reason` (one to each seat told).
    pub fn refused(&self, reason: RefusedReason) -> u64 {
        self.refused[reason as usize]
    }

    pub fn dropped(&self, reason: Dropped) -> u64 {
        self.dropped[reason as usize]
    }
}

#[derive(Debug)]
struct Side {
    key: Key,
    at: SocketAddr,
    asked: bool,
}

#[derive(Debug)]
struct Pair {
    sides: [Side; 2],
    /// The last request or forwarded datagram.
    last: Instant,
    rate: Option<Bucket>,
}

impl Pair {
    fn ready(&self) -> bool {
        self.sides.iter().all(|s| s.asked)
    }

    fn lifetime(&self) -> Duration {
        if self.ready() {
            BOUND_LIFETIME
        } else {
            UNBOUND_LIFETIME
        }
    }
}

/// A token bucket in byte-nanoseconds, so that no refill loses a fraction of a byte.
#[derive(Debug)]
struct Bucket {
    bytes_per_s: u128,
    cap: u128,
    credit: u128,
    last: Option<Instant>,
}

const NANOS: u128 = 1_000_000_000;

impl Bucket {
    fn new(mbps: u32) -> Self {
        let bytes_per_s = u64::from(mbps) * 125_000;
        let burst = (bytes_per_s * BURST.as_millis() as u64 / 1000).max(MIN_BURST);
        let cap = u128::from(burst) * NANOS;
        Self {
            bytes_per_s: bytes_per_s.into(),
            cap,
            credit: cap,
            last: None,
        }
    }

    /// Refills to `now`; whether `len` bytes fit.
    fn fits(&mut self, len: usize, now: Instant) -> bool {
        if let Some(last) = self.last {
            let gained = now.saturating_duration_since(last).as_nanos() * self.bytes_per_s;
            self.credit = self.credit.saturating_add(gained).min(self.cap);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        self.credit >= len as u128 * NANOS
    }

    fn take(&mut self, len: usize) {
        self.credit -= len as u128 * NANOS;
    }
}

/// The relay's allocations.
#[derive(Debug)]
pub struct Table {
    own: Key,
    limits: Limits,
    accepting: bool,
    by_vni: HashMap<u32, Pair>,
    by_pair: HashMap<(Key, Key), u32>,
    next_vni: u32,
    total: Option<Bucket>,
    stats: Stats,
}

fn sorted(a: Key, b: Key) -> (Key, Key) {
    if a < b { (a, b) } else { (b, a) }
}

impl Table {
    /// An empty table for the relay whose own key is `own`, accepting requests.
    pub fn new(own: Key, limits: Limits) -> Self {
        Self {
            own,
            limits,
            accepting: true,
            by_vni: HashMap::new(),
            by_pair: HashMap::new(),
            next_vni: 1,
            total: limits.total_mbps.map(Bucket::new),
            stats: Stats::default(),
        }
    }

    /// Whether requests are taken. A relay that stops refuses refreshes too, and its allocations run out
    /// within their lifetime while the pairs move elsewhere.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// The Offer to send every peer.
    pub fn offer(&self) -> Control {
        let free = self.limits.max_pairs.saturating_sub(self.by_vni.len());
        Control::Offer {
            accepting: self.accepting,
            free: u16::try_from(free).unwrap_or(u16::MAX),
        }
    }

    /// `from` asks for (or refreshes) an allocation with `peer`. Returns the messages to send: a Grant to
    /// `from` and an Invite to `peer` while `peer` has not asked; a ready Grant to both once it has; a
    /// Refused to `from` when the relay will not.
    pub fn request(
        &mut self,
        from: Key,
        peer: Key,
        seats: &impl Seats,
        now: Instant,
    ) -> Vec<(Key, Control)> {
        let (from_at, peer_at) = match self.admit(from, peer, seats) {
            Ok(at) => at,
            Err(reason) => return vec![self.refused(from, peer, reason)],
        };
        let pair = sorted(from, peer);
        let vni = match self.by_pair.get(&pair) {
            Some(&vni) => vni,
            None => match self.create((from, from_at), (peer, peer_at), now) {
                Ok(vni) => vni,
                Err(reason) => return vec![self.refused(from, peer, reason)],
            },
        };
        let p = (self.by_vni.get_mut(&vni)).expect("by_pair and by_vni hold the same allocations");
        let was_ready = p.ready();
        for side in &mut p.sides {
            // The seats' endpoints as the device sees them now, in case an update was missed.
            side.at = if side.key == from { from_at } else { peer_at };
            side.asked |= side.key == from;
        }
        p.last = now;
        let ready = p.ready();
        let lifetime_ms = u32::try_from(p.lifetime().as_millis()).unwrap_or(u32::MAX);
        let grant = |to: Key, other: Key| {
            let m = Control::Granted {
                peer: other,
                vni,
                ready,
                lifetime_ms,
            };
            (to, m)
        };
        if ready && !was_ready {
            self.stats.granted += 1;
            vec![grant(from, peer), grant(peer, from)]
        } else if ready {
            vec![grant(from, peer)]
        } else {
            // Again on each refresh: the first Invite may have been lost.
            vec![
                grant(from, peer),
                (peer, Control::Invite { peer: from, vni }),
            ]
        }
    }

    /// The pair's endpoints at the relay, when it may relay for it.
    fn admit(
        &self,
        from: Key,
        peer: Key,
        seats: &impl Seats,
    ) -> Result<(SocketAddr, SocketAddr), RefusedReason> {
        if !self.accepting {
            return Err(RefusedReason::NotRelaying);
        }
        if from == peer || from == self.own || peer == self.own {
            return Err(RefusedReason::ItSelf);
        }
        if !seats.is_seat(&from) || !seats.is_seat(&peer) {
            return Err(RefusedReason::NotASeat);
        }
        match (seats.udp_endpoint(&from), seats.udp_endpoint(&peer)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(RefusedReason::PeerNotOnUdp),
        }
    }

    fn create(
        &mut self,
        from: (Key, SocketAddr),
        peer: (Key, SocketAddr),
        now: Instant,
    ) -> Result<u32, RefusedReason> {
        if self.by_vni.len() >= self.limits.max_pairs {
            return Err(RefusedReason::Full);
        }
        let held = |k: Key| {
            (self.by_pair.keys())
                .filter(|(a, b)| *a == k || *b == k)
                .count()
        };
        if held(from.0) >= self.limits.max_per_seat || held(peer.0) >= self.limits.max_per_seat {
            return Err(RefusedReason::SeatLimit);
        }
        // Skipping vnis in use, never reusing one until the counter wraps, so a late datagram of a gone
        // allocation does not land in a new one.
        let vni = loop {
            let vni = self.next_vni;
            self.next_vni = self.next_vni.checked_add(1).unwrap_or(1);
            if !self.by_vni.contains_key(&vni) {
                break vni;
            }
        };
        let side = |(key, at)| Side {
            key,
            at,
            asked: false,
        };
        let (a, b) = if from.0 < peer.0 {
            (from, peer)
        } else {
            (peer, from)
        };
        let p = Pair {
            sides: [side(a), side(b)],
            last: now,
            rate: self.limits.pair_mbps.map(Bucket::new),
        };
        self.by_vni.insert(vni, p);
        self.by_pair.insert((a.0, b.0), vni);
        Ok(vni)
    }

    /// `from` gives up its allocation with `peer`; `peer` is told.
    pub fn release(&mut self, from: Key, peer: Key) -> Vec<(Key, Control)> {
        match self.by_pair.get(&sorted(from, peer)) {
            Some(&vni) => {
                self.remove(vni);
                vec![self.refused(peer, from, RefusedReason::Released)]
            }
            None => Vec::new(),
        }
    }

    /// `seat` is no longer a peer of the relay: its allocations end, and each other seat is told.
    pub fn seat_gone(&mut self, seat: Key) -> Vec<(Key, Control)> {
        self.drop_seat(seat, false)
    }

    /// Where `seat`'s datagrams come from at the relay now (it roamed), or `None` when it is no longer
    /// direct or punched there: then its allocations end and both seats of each are told.
    pub fn endpoint(&mut self, seat: Key, at: Option<SocketAddr>) -> Vec<(Key, Control)> {
        let Some(at) = at else {
            return self.drop_seat(seat, true);
        };
        let sides = self.by_vni.values_mut().flat_map(|p| &mut p.sides);
        sides.filter(|s| s.key == seat).for_each(|s| s.at = at);
        Vec::new()
    }

    fn drop_seat(&mut self, seat: Key, tell_seat: bool) -> Vec<(Key, Control)> {
        let gone: Vec<_> = (self.by_pair.iter())
            .filter(|((a, b), _)| *a == seat || *b == seat)
            .map(|(&(a, b), &vni)| (if a == seat { b } else { a }, vni))
            .collect();
        let mut out = Vec::new();
        for (other, vni) in gone {
            self.remove(vni);
            out.push(self.refused(other, seat, RefusedReason::Released));
            if tell_seat {
                out.push(self.refused(seat, other, RefusedReason::Released));
            }
        }
        out
    }

    /// Ends the allocations that ran out of time; both seats of each are told.
    pub fn tick(&mut self, now: Instant) -> Vec<(Key, Control)> {
        let expired: Vec<_> = (self.by_vni.iter())
            .filter(|(_, p)| now.saturating_duration_since(p.last) >= p.lifetime())
            .map(|(&vni, p)| (vni, p.sides[0].key, p.sides[1].key))
            .collect();
        let mut out = Vec::new();
        for (vni, a, b) in expired {
            self.remove(vni);
            out.push(self.refused(a, b, RefusedReason::Released));
            out.push(self.refused(b, a, RefusedReason::Released));
        }
        out
    }

    /// Where a relayed datagram of `len` bytes (header included) for `vni` that came from `from` goes, if
    /// anywhere. Counted either way.
    ///
    /// # Errors
    /// Why it is dropped.
    pub fn forward(
        &mut self,
        vni: u32,
        from: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Result<SocketAddr, Dropped> {
        let to = self.route(vni, from, len, now);
        match to {
            Ok(_) => {
                self.stats.forwarded_datagrams += 1;
                self.stats.forwarded_bytes += len as u64;
            }
            Err(reason) => self.stats.dropped[reason as usize] += 1,
        }
        to
    }

    fn route(
        &mut self,
        vni: u32,
        from: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Result<SocketAddr, Dropped> {
        let p = self.by_vni.get_mut(&vni).ok_or(Dropped::UnknownVni)?;
        if !p.ready() {
            return Err(Dropped::NotReady);
        }
        let i = (p.sides.iter().position(|s| s.at == from)).ok_or(Dropped::Stranger)?;
        if let Some(rate) = &mut p.rate
            && !rate.fits(len, now)
        {
            return Err(Dropped::PairRate);
        }
        if let Some(total) = &mut self.total
            && !total.fits(len, now)
        {
            return Err(Dropped::TotalRate);
        }
        // Taken only once both caps let it through, so a datagram one drops costs the other nothing.
        p.rate
            .iter_mut()
            .chain(&mut self.total)
            .for_each(|b| b.take(len));
        p.last = now;
        Ok(p.sides[1 - i].at)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.by_vni.len(),
            ..self.stats
        }
    }

    fn remove(&mut self, vni: u32) {
        if let Some(p) = self.by_vni.remove(&vni) {
            self.by_pair.remove(&(p.sides[0].key, p.sides[1].key));
        }
    }

    fn refused(&mut self, to: Key, peer: Key, reason: RefusedReason) -> (Key, Control) {
        self.stats.refused[reason as usize] += 1;
        (to, Control::Refused { peer, reason })
    }
}

#[cfg(test)]
mod tests;
