//! The heartbeats as the machine sends and takes them: whom it pings, what it says of itself, how it
//! answers a ping and what a pong tells it ([`super::super::heartbeat`] holds the rules).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use mesh_chain::election::Ballot;
use tracing::debug;

use super::super::election;
use super::super::heartbeat::{self, Heartbeat, Kind, Promise};
use super::super::lease::{self, Claim};
use super::{Machine, Transmit};

impl Machine {
    /// The seats this node pings: every other registered seat if the contract names it leader, else the
    /// leader and its vote's target.
    pub(super) fn targets(&self, own: u64) -> Vec<u64> {
        match self.view.leader == Some(own) || self.draining() {
            true => self
                .chain
                .registered
                .iter()
                .copied()
                .filter(|s| *s != own)
                .collect(),
            false => election::to_watch(Some(own), self.view.leader, self.state.vote),
        }
    }

    /// What this node says of itself in a heartbeat.
    pub(super) fn me(&self, own: u64, now: Instant) -> Heartbeat {
        let health = self.health(now);
        let facts = self.lease_facts(&health, now);
        Heartbeat {
            kind: Kind::Ping,
            seat: own,
            leader: self.view.leader,
            term: self.view.term,
            fit: lease::fit(&facts),
            leads: matches!(lease::claim(&facts), Claim::Leads { .. }),
            supports: false,
            released: self.released_now(),
            draining: self.draining(),
            nonce: 0,
        }
    }

    pub(super) fn ping(&mut self, own: u64, targets: &[u64], now: Instant) {
        let me = self.me(own, now);
        for seat in targets {
            // A refused seat, or one without a record: no tunnel carries a heartbeat to it.
            let Some(ip) = self.chain.addresses.get(seat) else {
                continue;
            };
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            let ping = Heartbeat { nonce, ..me };
            self.sent.insert(nonce, (*seat, now));
            self.transmits.push_back(Transmit {
                to: SocketAddr::V4(SocketAddrV4::new(*ip, heartbeat::PORT)),
                bytes: ping.encode(),
            });
        }
    }

    pub(super) fn refuse(&mut self, from: SocketAddr, why: &str) {
        let c = &mut self.state.counters;
        c.heartbeats_refused = c.heartbeats_refused.saturating_add(1);
        debug!(%from, reason = why, "refusing a heartbeat");
    }

    pub(super) fn answer(&mut self, ping: &Heartbeat, from: SocketAddr, now: Instant) {
        let Some(own) = self.own() else { return };
        let voting_against: Vec<u64> = self
            .state
            .vote
            .into_iter()
            .chain(match self.casting {
                Some(Ballot::Vote { target }) => Some(target),
                _ => None,
            })
            .collect();
        let supports = heartbeat::supports(ping, self.view, &voting_against, self.promise, now);
        if supports {
            // The sender may count this answer until a lease after its ping went out, which was before
            // now: promising a lease from now covers it.
            self.promise = Promise {
                seat: ping.seat,
                term: ping.term,
                until: now + self.config.timing.lease,
            };
        }
        let pong = Heartbeat {
            kind: Kind::Pong,
            supports,
            nonce: ping.nonce,
            ..self.me(own, now)
        };
        self.transmits.push_back(Transmit {
            to: from,
            bytes: pong.encode(),
        });
    }

    pub(super) fn take_pong(&mut self, pong: &Heartbeat, now: Instant) {
        let Some((to, sent_at)) = self.sent.get(&pong.nonce).copied() else {
            return;
        };
        if to != pong.seat {
            return;
        }
        let latest = |t: &mut Instant| *t = (*t).max(sent_at);
        self.last_pong
            .entry(pong.seat)
            .and_modify(|t| *t = (*t).max(now))
            .or_insert(now);
        if let Some(own) = self.own().filter(|o| self.view.leader == Some(*o)) {
            if heartbeat::confirms(pong, own, self.view.term) {
                self.support
                    .entry(pong.seat)
                    .and_modify(latest)
                    .or_insert(sent_at);
            } else if self.support.get(&pong.seat).is_some_and(|t| *t <= sent_at) {
                // A newer answer that no longer confirms this node outweighs an older one that did.
                self.support.remove(&pong.seat);
            }
        }
        if self.view.leader == Some(pong.seat)
            && pong.leads
            && pong.leader == Some(pong.seat)
            && pong.term == self.view.term
        {
            let confirmed = self.state.leader_confirmed_at.get_or_insert(sent_at);
            latest(confirmed);
        }
    }

    /// A heartbeat that shows its sender's view caught up with a change this node waits on is answered with
    /// a ping at once: a new leader pings a follower whose view now names it, and a follower pings a leader
    /// that says it leads before this node has confirmed it.
    pub(super) fn catch_up(&mut self, hb: &Heartbeat) {
        let Some(own) = self.own() else { return };
        let same_view = hb.leader == self.view.leader && hb.term == self.view.term;
        if !same_view || hb.kind != Kind::Ping {
            return;
        }
        let named = self.view.leader == Some(own);
        let behind = match named {
            true => !self.support.contains_key(&hb.seat),
            false => {
                self.view.leader == Some(hb.seat)
                    && hb.leads
                    && self.state.leader_confirmed_at.is_none()
            }
        };
        if behind && !self.ping_now.contains(&hb.seat) {
            self.ping_now.push(hb.seat);
        }
    }

    /// Farewell for a term this node lost: heartbeats that say it released it.
    pub(super) fn farewell_for(&mut self, own: u64, term: u64, now: Instant) {
        if !self.config.heartbeats || self.hearing.is_none() {
            return;
        }
        let bye = Heartbeat {
            leader: Some(own),
            term,
            fit: false,
            leads: false,
            released: true,
            ..self.me(own, now)
        };
        for seat in self.others(own) {
            if let Some(ip) = self.chain.addresses.get(&seat) {
                self.transmits.push_back(Transmit {
                    to: SocketAddr::V4(SocketAddrV4::new(*ip, heartbeat::PORT)),
                    bytes: bye.encode(),
                });
            }
        }
    }
}
