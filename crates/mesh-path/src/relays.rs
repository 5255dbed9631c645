//! Which peer relay one pair uses, when it cannot go direct: a member that relays for others
//! (`mesh-peer-relay`) forwards the pair's WireGuard datagrams once both seats asked it. Pure: the device
//! gives the candidates, the relays' answers, the probes' answers and the time, and sends what [`Tick`]
//! says.
//!
//! - **Asking.** While the pair is not direct, the pair asks up to [`HELD`] candidates for an allocation,
//!   renewed every [`REFRESH`]; a refusal is asked again after a backoff.
//! - **Measuring.** Each ready allocation is probed end to end (to the peer, through the relay): every
//!   [`FIRST_PROBES_EVERY`] until it has [`FIRST_SAMPLES`] answers, then the one in use and the standby
//!   every third of the peer timeout, the others every [`OTHERS_PROBED_EVERY`]. Round trips are smoothed
//!   (a quarter of each new sample).
//! - **Choosing.** The lowest smoothed round trip among the relays that answer (heard within the peer
//!   timeout) wins; the pair moves off the one in use only for one [`SWITCH_RATIO`] of its round trip and at
//!   least [`SWITCH_MARGIN`] faster, so that noise does not make it flap. A relay that stops answering is
//!   left at once for the best of the others, or for none (the gateway relay).
//! - **First contact.** A pair with no session yet cannot probe (probes go through its tunnel), so while
//!   no relay answers, the ready ones are tried in turn, each for the peer timeout: the handshake goes
//!   through the one on trial, and once a session is up its probes decide. Until they have, a relay the
//!   peer's datagrams come through carries the pair (the fastest answer so far, else the one heard last):
//!   it is not left with no relay while being measured.
//! - **Releasing.** A pair that has not wanted a peer relay for [`RELEASE_AFTER`] (it went direct) releases
//!   what it holds.
//! - **Order.** Direct beats any peer relay, which beats the gateway's relay: [`PeerRelays::current`] is
//!   asked only while the pair is not direct, and gives none when no peer relay answers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backoff::Backoff;
use wg_key::Key;

use crate::liveness::Liveness;

/// The most relays one pair holds an allocation at.
pub const HELD: usize = 3;
/// How often a held allocation is asked for again, so that the relay keeps it.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How often a new allocation is probed until it has [`FIRST_SAMPLES`] answers.
pub const FIRST_PROBES_EVERY: Duration = Duration::from_millis(250);
pub const FIRST_SAMPLES: u32 = 3;
/// How long a pair that no longer wants a peer relay (it went direct) keeps its allocations before it
/// releases them: a punched path may flap.
pub const RELEASE_AFTER: Duration = Duration::from_secs(30);
/// How often the relays neither in use nor standby are probed.
pub const OTHERS_PROBED_EVERY: Duration = Duration::from_secs(30);
/// A relay replaces the one in use only when its round trip is under this share of the current one's...
pub const SWITCH_RATIO: f64 = 0.8;
/// ...and at least this much shorter.
pub const SWITCH_MARGIN: Duration = Duration::from_millis(2);

/// A member that offers to relay, and that this node reaches over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub relay: Key,
    /// Where this node reaches the relay (its WireGuard endpoint): relayed datagrams go there.
    pub endpoint: SocketAddr,
}

/// What this node asks a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Allocate,
    Release,
}

/// What the device sends for one pair, at one tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Control messages to relays, inside this node's tunnel to each.
    pub asks: Vec<(Key, Ask)>,
    /// Probes to the peer through a relay: the relay and the probe's sequence number (below 2^15).
    pub probes: Vec<(Key, u16)>,
}

/// Where the pair's datagrams go while it uses a peer relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse {
    pub relay: Key,
    pub endpoint: SocketAddr,
    pub vni: u32,
}

#[derive(Debug)]
struct Relay {
    endpoint: SocketAddr,
    /// The allocation, once granted: its id, and whether both seats asked.
    vni: Option<(u32, bool)>,
    /// The last grant: a relay that stopped granting (it died) is not tried for a first contact.
    granted_at: Option<Instant>,
    last_asked: Option<Instant>,
    /// After a refusal, not asked again before this.
    refused_until: Option<Instant>,
    backoff: Backoff,
    rtt: Option<Duration>,
    samples: u32,
    heard: Option<Instant>,
    /// The probe out now: its sequence number, and when it left.
    probe: Option<(u16, Instant)>,
    probed: Option<Instant>,
}

impl Relay {
    fn new(endpoint: SocketAddr) -> Self {
        Self {
            endpoint,
            vni: None,
            granted_at: None,
            last_asked: None,
            refused_until: None,
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(60)),
            rtt: None,
            samples: 0,
            heard: None,
            probe: None,
            probed: None,
        }
    }

    fn ready(&self) -> Option<u32> {
        match self.vni {
            Some((vni, true)) => Some(vni),
            _ => None,
        }
    }

    fn answers(&self, liveness: Liveness, now: Instant) -> bool {
        self.rtt.is_some() && self.carries(liveness, now)
    }

    /// The peer's datagrams or probe answers come through it: ready, and heard within the peer timeout.
    fn carries(&self, liveness: Liveness, now: Instant) -> bool {
        self.ready().is_some() && liveness.alive(self.heard, now)
    }
}

/// One pair's peer relays.
#[derive(Debug, Default)]
pub struct PeerRelays {
    relays: BTreeMap<Key, Relay>,
    current: Option<Key>,
    next_seq: u16,
    /// Why the pair moved last, for its path reason.
    moved: Option<&'static str>,
    /// The relay tried for a first contact while none answers, and since when.
    trial: Option<(Key, Instant)>,
    /// The relays tried so far since one last answered.
    tried: BTreeSet<Key>,
    /// Since when the pair has not wanted a peer relay.
    unwanted_since: Option<Instant>,
}

impl PeerRelays {
    /// The members that offer to relay and that this node reaches: new ones are asked at the next tick, and
    /// those no longer among them are forgotten (released if held).
    pub fn set_candidates(&mut self, candidates: &[Candidate]) -> Vec<(Key, Ask)> {
        let mut released = Vec::new();
        let offered: BTreeSet<Key> = candidates.iter().map(|c| c.relay).collect();
        self.relays.retain(|key, relay| {
            let keep = offered.contains(key);
            if !keep && relay.vni.is_some() {
                released.push((*key, Ask::Release));
            }
            keep
        });
        for c in candidates {
            self.relays
                .entry(c.relay)
                .and_modify(|r| r.endpoint = c.endpoint)
                .or_insert_with(|| Relay::new(c.endpoint));
        }
        if self.current.is_some_and(|k| !self.relays.contains_key(&k)) {
            self.current = None;
            self.moved = Some("the relay in use stopped offering");
        }
        released
    }

    /// The relay granted the allocation: `ready` once the peer asked it too.
    pub fn granted(&mut self, relay: &Key, vni: u32, ready: bool, now: Instant) {
        if let Some(r) = self.relays.get_mut(relay) {
            r.granted_at = Some(now);
            if r.vni.is_some_and(|(v, _)| v != vni) {
                r.rtt = None;
                r.samples = 0;
            }
            r.vni = Some((vni, ready));
            r.refused_until = None;
            r.backoff.reset();
        }
    }

    /// The relay refused, or released the allocation: asked again after a backoff.
    pub fn refused(&mut self, relay: &Key, now: Instant) {
        if let Some(r) = self.relays.get_mut(relay) {
            r.vni = None;
            r.rtt = None;
            r.samples = 0;
            // The backoff alone says when to ask again: a refusal (the peer not on UDP at the relay yet)
            // may not last a whole refresh.
            r.last_asked = None;
            r.refused_until = Some(now + r.backoff.next_delay());
        }
        if self.current == Some(*relay) {
            self.current = None;
            self.moved = Some("the relay in use released the allocation");
        }
    }

    /// A probe's answer came back through `relay`.
    pub fn probe_answered(&mut self, relay: &Key, seq: u16, now: Instant) {
        let Some(r) = self.relays.get_mut(relay) else {
            return;
        };
        let Some((sent_seq, sent_at)) = r.probe else {
            return;
        };
        if sent_seq != seq {
            return;
        }
        r.probe = None;
        let sample = now.saturating_duration_since(sent_at);
        r.rtt = Some(match r.rtt {
            Some(rtt) => rtt.mul_f64(0.75) + sample.mul_f64(0.25),
            None => sample,
        });
        r.samples = r.samples.saturating_add(1);
        r.heard = Some(now);
    }

    /// Something of the peer's arrived through `relay`: it answers.
    pub fn heard_via(&mut self, relay: &Key, now: Instant) {
        if let Some(r) = self.relays.get_mut(relay) {
            r.heard = Some(now);
        }
    }

    /// Holds nothing at any relay and uses none: its ticks have nothing to ask, probe or release.
    pub fn idle(&self) -> bool {
        self.current.is_none()
            && self.trial.is_none()
            && self.relays.values().all(|r| r.vni.is_none())
    }

    /// The peer relay the pair uses now; none while no relay answers.
    pub fn current(&self) -> Option<InUse> {
        let key = self.current?;
        let r = self.relays.get(&key)?;
        Some(InUse {
            relay: key,
            endpoint: r.endpoint,
            vni: r.ready()?,
        })
    }

    /// The allocation's id at `relay` once both seats asked for it: what probes and datagrams through it
    /// carry.
    pub fn ready_vni(&self, relay: &Key) -> Option<u32> {
        self.relays.get(relay)?.ready()
    }

    /// Every allocation both seats asked for: where datagrams through it come from, and its id.
    pub fn ready(&self) -> impl Iterator<Item = InUse> + '_ {
        self.relays.iter().filter_map(|(key, r)| {
            Some(InUse {
                relay: *key,
                endpoint: r.endpoint,
                vni: r.ready()?,
            })
        })
    }

    /// The relay whose ready allocation `vni` datagrams from `endpoint` belong to: a relayed datagram for
    /// this pair must come through one of its own allocations.
    pub fn relay_at(&self, endpoint: SocketAddr, vni: u32) -> Option<Key> {
        self.ready()
            .find(|u| u.endpoint == endpoint && u.vni == vni)
            .map(|u| u.relay)
    }

    /// The peer asked `relay` for an allocation with this node. Returns whether to ask it too, now: only a
    /// relay this node reaches and that offers.
    pub fn invited(&mut self, relay: &Key, now: Instant) -> bool {
        let Some(r) = self.relays.get_mut(relay) else {
            return false;
        };
        r.last_asked = Some(now);
        r.refused_until = None;
        true
    }

    /// Why the pair moved last, if it did.
    pub fn moved(&self) -> Option<&'static str> {
        self.moved
    }

    /// The smoothed round trip through `relay`, once measured.
    pub fn rtt(&self, relay: &Key) -> Option<Duration> {
        self.relays.get(relay)?.rtt
    }

    /// What to send now, and the relay to use. `wanted`: the pair is not direct (or its direct path goes
    /// unanswered), so a peer relay is worth holding; when it is not, nothing is asked or probed, and what is
    /// held expires at the relays. `session`: the pair has a WireGuard session, so its probes can measure
    /// the relays; without one, ready relays are tried in turn for a first contact.
    pub fn tick(&mut self, now: Instant, wanted: bool, session: bool, liveness: Liveness) -> Tick {
        let mut out = Tick::default();
        if !wanted {
            let since = *self.unwanted_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= RELEASE_AFTER {
                self.release_all(&mut out);
            }
            return out;
        }
        self.unwanted_since = None;
        self.ask(now, &mut out);
        self.choose(now, session, liveness);
        self.probe(now, liveness, &mut out);
        out
    }

    /// Gives up every allocation held: the relays are told, so that they free them at once.
    fn release_all(&mut self, out: &mut Tick) {
        for (key, r) in &mut self.relays {
            if r.vni.take().is_some() {
                (r.rtt, r.samples, r.last_asked, r.probe) = (None, 0, None, None);
                out.asks.push((*key, Ask::Release));
            }
        }
        if self.current.take().is_some() {
            self.moved = Some("the pair went direct");
        }
        self.trial = None;
    }

    /// Holds allocations at up to [`HELD`] relays: those held are renewed, others asked while there is room.
    fn ask(&mut self, now: Instant, out: &mut Tick) {
        let mut held = self.relays.values().filter(|r| r.vni.is_some()).count();
        for (key, r) in &mut self.relays {
            let due = r
                .last_asked
                .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH);
            let waiting = r.refused_until.is_some_and(|t| now < t);
            if !due || waiting {
                continue;
            }
            if r.vni.is_none() {
                if held >= HELD {
                    continue;
                }
                // Counted as held from the ask: the answer comes within a round trip.
                held += 1;
            }
            r.last_asked = Some(now);
            out.asks.push((*key, Ask::Allocate));
        }
    }

    fn choose(&mut self, now: Instant, session: bool, liveness: Liveness) {
        let best = self
            .relays
            .iter()
            .filter(|(_, r)| r.answers(liveness, now) && r.samples >= FIRST_SAMPLES)
            .min_by_key(|(_, r)| r.rtt)
            .map(|(k, r)| (*k, r.rtt.unwrap_or(Duration::MAX)));
        // The relay in use stays while the peer's datagrams come through it, measured or not yet: a session
        // just made through it has no round trip until its probes come back.
        let current = self
            .current
            .and_then(|k| Some((k, self.relays.get(&k)?)))
            .filter(|(_, r)| r.carries(liveness, now))
            .map(|(k, r)| (k, r.rtt.unwrap_or(Duration::MAX)));
        if best.is_some() {
            self.trial = None;
            self.tried.clear();
        }
        match (current, best) {
            (None, Some((k, _))) => {
                if self.current.is_some() {
                    self.moved = Some("the relay in use stopped answering");
                }
                self.current = Some(k);
            }
            (None, None) if !session => self.first_contact(now, liveness),
            (None, None) => {
                self.trial = None;
                // With a session but no relay measured yet, one the peer's datagrams come through carries the
                // pair (the two sides' first contacts may have gone through different relays): the fastest
                // answer so far, else the one heard last.
                let carrying = (self.relays.iter())
                    .filter(|(_, r)| r.carries(liveness, now))
                    .min_by_key(|(_, r)| (r.rtt.unwrap_or(Duration::MAX), Reverse(r.heard)))
                    .map(|(k, _)| *k);
                if carrying.is_none() && self.current.is_some() {
                    self.moved = Some("no peer relay answers");
                }
                self.current = carrying;
            }
            (Some((k, rtt)), Some((b, best_rtt))) if b != k => {
                if best_rtt < rtt.mul_f64(SWITCH_RATIO) && rtt - best_rtt >= SWITCH_MARGIN {
                    self.current = Some(b);
                    self.moved = Some("another relay is faster");
                }
            }
            (Some(_), _) => {}
        }
    }

    /// No relay answers: the ready ones are tried in turn, each for the peer timeout, so that a pair with
    /// no session yet can make one through a relay (and then measure it).
    fn first_contact(&mut self, now: Instant, liveness: Liveness) {
        if let Some((k, since)) = self.trial
            && self.current == Some(k)
            && self.relays.get(&k).is_some_and(|r| r.ready().is_some())
            && now.saturating_duration_since(since) < liveness.timeout
        {
            return;
        }
        let fresh = |r: &Relay| {
            r.ready().is_some()
                && (r.granted_at).is_some_and(|t| now.saturating_duration_since(t) < 2 * REFRESH)
        };
        let ready: Vec<Key> = (self.relays.iter())
            .filter(|(_, r)| fresh(r))
            .map(|(k, _)| *k)
            .collect();
        if ready.iter().all(|k| self.tried.contains(k)) {
            self.tried.clear();
        }
        let next = ready.into_iter().find(|k| !self.tried.contains(k));
        if self.current.is_some() && next != self.current {
            self.moved = Some("no peer relay answers");
        }
        self.current = next;
        self.trial = next.map(|k| (k, now));
        if let Some(k) = next {
            self.tried.insert(k);
        }
    }

    /// Probes each ready relay as often as its place calls for.
    fn probe(&mut self, now: Instant, liveness: Liveness, out: &mut Tick) {
        let standby = self.standby(now, liveness);
        for (key, r) in &mut self.relays {
            if r.ready().is_none() {
                continue;
            }
            let every = if r.samples < FIRST_SAMPLES {
                FIRST_PROBES_EVERY
            } else if Some(*key) == self.current || Some(*key) == standby {
                liveness.timeout / 3
            } else {
                OTHERS_PROBED_EVERY
            };
            if r.probed
                .is_some_and(|t| now.saturating_duration_since(t) < every)
            {
                continue;
            }
            // Fifteen bits: the device marks a probe through a relay with the top one.
            self.next_seq = (self.next_seq + 1) & 0x7fff;
            r.probe = Some((self.next_seq, now));
            r.probed = Some(now);
            out.probes.push((*key, self.next_seq));
        }
    }

    /// The relay that would take over if the one in use died: the fastest of the others that answer.
    fn standby(&self, now: Instant, liveness: Liveness) -> Option<Key> {
        self.relays
            .iter()
            .filter(|(k, r)| Some(**k) != self.current && r.answers(liveness, now))
            .min_by_key(|(_, r)| r.rtt)
            .map(|(k, _)| *k)
    }
}

#[cfg(test)]
mod tests;
