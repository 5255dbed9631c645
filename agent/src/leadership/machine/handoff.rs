//! Planned changes of leader, as the machine runs them: a **hand-off** (the leader gives its term to another
//! seat) and a **drain** (this node is being taken out of service: it hands off if it leads, and says so in
//! its heartbeats so that replica ports leave it out).
//!
//! A hand-off is fenced as a failover is, but needs no silence:
//!
//! 1. The leader **releases** its term: from that instant it declines to lead under it ([`Declined::HandingOff`])
//!    and never will again, and it tells every seat so at once (a farewell: heartbeats with `released`).
//!    Followers' leader ports stop sending to it, and each follower is free of its promise to it.
//! 2. It sends `handOff` to the successor; the term grows by one.
//! 3. The successor, named in the new term, pings every seat as soon as its view shows it. The followers,
//!    free of their promises, confirm it at once: it leads within a round trip of the block, not a lease
//!    later.
//!
//! The two leases never overlap: the old one ended at step 1, before the transaction was even sent. A leader
//! that learns from the chain that its term went (a hand-off someone else sent with `meshctl`, a failover)
//! sends the same farewell on its next heartbeat, once its API has long stopped saying it leads.
//!
//! If the transaction fails, another successor is tried; if none will take the lead, the released term is
//! not taken back: the leader says it is not fit, and the others vote it out after the timeout, as if it had
//! gone.
//!
//! [`Declined::HandingOff`]: super::lease::Declined::HandingOff

use std::time::{Duration, Instant};

use mesh_chain::election::{Cast, ElectionError};
use mesh_chain::error::ChainError;
use tracing::{Level, info, warn};

use super::{Job, Machine};
use crate::leadership::state::{HandOffLog, HandedOff};
use crate::state::Fault;

/// How long after a failed hand-off transaction (the RPC, no funds) it is sent again: the others vote this
/// node out a timeout after it released its term, so there is no time for a long backoff.
const HANDOFF_RETRY: Duration = Duration::from_secs(1);

/// A seat heard draining is taken as draining for this many heartbeats after the last one that said so.
const DRAINING_HEARD_FOR: u32 = 3;

/// Why a hand-off was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOffCause {
    /// `POST /v1/leader/handoff`.
    Asked,
    /// This node is being drained: SIGTERM, `POST /v1/drain`, or its seat marked draining on-chain.
    Drain,
}

impl HandOffCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asked => "asked",
            Self::Drain => "drain",
        }
    }
}

/// Why a hand-off cannot be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandOffRefused {
    #[error("this node does not lead: {}", match .leader {
        Some(l) => format!("seat {l} does; ask its node, or run `meshctl leader handoff --token {l}`"),
        None => "no seat does".to_owned(),
    })]
    NotLeader { leader: Option<u64> },
    #[error("this node has no seat with a record yet")]
    NoSeat,
    #[error("there is no mesh in TLS mode, so no other seat can lead")]
    NoMesh,
    #[error(
        "seat {0} cannot take the lead: it is this node, has no record this node accepts, or is draining; choose another, or leave `to` out"
    )]
    Ineligible(u64),
    #[error(
        "no other seat can take the lead: none has confirmed this node within the lease while fit and not draining"
    )]
    NoSuccessor,
}

/// A hand-off under way.
#[derive(Debug, Clone)]
pub(super) struct HandOff {
    /// The term given up.
    pub term: u64,
    /// The seat asked for, if one was.
    pub asked: Option<u64>,
    /// The seat the transaction names now.
    pub to: u64,
    /// Seats the contract refused, not tried again.
    pub tried: Vec<u64>,
    /// The seats that could lead when the term was released (once released, nobody confirms this node).
    pub candidates: Vec<u64>,
    pub cause: HandOffCause,
    pub since: Instant,
    /// No transaction before this: a backoff after a failed one.
    pub retry_at: Option<Instant>,
    /// The transaction is out, or mined and waiting for the view to show it.
    pub sent: bool,
}

/// The seat to hand the lead to: `asked`, if it may take it, else the lowest of `candidates` (seats that
/// confirmed this leader within the lease and said they were fit) not in `excluded`.
pub(super) fn successor(
    asked: Option<u64>,
    candidates: &[u64],
    excluded: &[u64],
) -> Result<u64, HandOffRefused> {
    match asked {
        Some(seat) if excluded.contains(&seat) => Err(HandOffRefused::Ineligible(seat)),
        Some(seat) => Ok(seat),
        None => candidates
            .iter()
            .copied()
            .filter(|s| !excluded.contains(s))
            .min()
            .ok_or(HandOffRefused::NoSuccessor),
    }
}

impl Machine {
    /// Starts handing this node's term to `to`, or to the best-placed seat; returns the successor and the
    /// term given up. Asked again while one is under way, it answers with that one.
    ///
    /// # Errors
    /// [`HandOffRefused`]: this node does not lead, or no seat can take the lead.
    pub fn request_handoff(
        &mut self,
        now: Instant,
        to: Option<u64>,
        cause: HandOffCause,
    ) -> Result<(u64, u64), HandOffRefused> {
        self.follow_view(now);
        let own = self.own().ok_or(HandOffRefused::NoSeat)?;
        if self.view.leader != Some(own) {
            return Err(HandOffRefused::NotLeader {
                leader: self.view.leader,
            });
        }
        if let Some(h) = self.handoff.as_ref().filter(|h| h.term == self.view.term) {
            return Ok((h.to, h.term));
        }
        if !self.config.heartbeats {
            return Err(HandOffRefused::NoMesh);
        }
        let excluded = self.not_successors(own);
        let asked = to;
        let candidates = self.candidates(now);
        let to = match asked {
            Some(seat) if !self.chain.registered.contains(&seat) => {
                return Err(HandOffRefused::Ineligible(seat));
            }
            asked => successor(asked, &candidates, &excluded)?,
        };
        info!(
            seat = own,
            to,
            term = self.view.term,
            cause = cause.as_str(),
            "handing this node's term off: it stops leading now"
        );
        self.handoff = Some(HandOff {
            term: self.view.term,
            asked,
            to,
            tried: Vec::new(),
            candidates,
            cause,
            since: now,
            retry_at: None,
            sent: false,
        });
        self.released = Some(self.view.term);
        self.publish_handoff(None);
        // The claim ends before anyone hears of it: the farewell goes out after this settles.
        self.settle(now, false);
        self.farewell(own, now);
        self.drive_handoff(now);
        Ok((to, self.view.term))
    }

    /// Drains this node (or stops): its heartbeats say so, every seat hears them, and it hands off if it
    /// leads. Returns the hand-off started, or why none was.
    pub fn set_draining(
        &mut self,
        now: Instant,
        on: bool,
    ) -> Option<Result<(u64, u64), HandOffRefused>> {
        if self.drain_asked != on {
            info!(
                on,
                "this node is {}drained",
                if on { "" } else { "no longer " }
            );
        }
        self.drain_asked = on;
        let started = self.drain_handoff(now).or_else(|| {
            self.handoff
                .as_ref()
                .filter(|_| on)
                .map(|h| Ok((h.to, h.term)))
        });
        self.settle(now, true);
        if let Some(own) = self.own().filter(|_| on) {
            // Every seat learns of it now, not at the next heartbeat.
            let all = self.others(own);
            if self.config.heartbeats && self.hearing.is_some() {
                self.ping(own, &all, now);
            }
        }
        started
    }

    /// SIGTERM: drains this node, handing off if it leads. A hand-off that cannot be made (no seat to take
    /// the lead, the chain out of reach) is given up at once: waiting would not help, and the others vote
    /// this node out after the timeout as they would have.
    pub fn stop(&mut self, now: Instant) {
        self.stopping = true;
        if let Some(Err(why)) = self.set_draining(now, true) {
            info!(reason = %why, "stopping without a hand-off");
            self.gave_up = Some(self.view.term);
        }
    }

    /// Whether this node may stop now without costing the cluster a failover: it does not lead, or its
    /// hand-off was sent and landed, or none could be made.
    pub fn stop_ready(&self) -> bool {
        let leads = self.own().is_some() && self.view.leader == self.own();
        let ended = [self.released, self.gave_up].contains(&Some(self.view.term));
        !leads || (ended && self.handoff.is_none())
    }

    /// Whether this node is drained: asked to be, or its seat marked draining on-chain.
    pub(super) fn draining(&self) -> bool {
        self.drain_asked || self.own().is_some_and(|o| self.chain.draining.contains(&o))
    }

    /// The term this node's view names it leader under, released.
    pub(super) fn released_now(&self) -> bool {
        self.own().is_some()
            && self.view.leader == self.own()
            && self.released == Some(self.view.term)
    }

    /// A drained node that leads hands off, if any seat can take the lead.
    pub(super) fn drain_handoff(
        &mut self,
        now: Instant,
    ) -> Option<Result<(u64, u64), HandOffRefused>> {
        let leads = self.own().is_some() && self.view.leader == self.own();
        if !self.draining() || !leads || self.released_now() || !self.config.heartbeats {
            return None;
        }
        // Tried again once per timeout: each try ends the lease until it is given up.
        let term = self.view.term;
        let timeout = self.config.timing.timeout;
        if let Some((t, at)) = self.drain_tried
            && t == term
            && now.saturating_duration_since(at) < timeout
        {
            return None;
        }
        self.drain_tried = Some((term, now));
        let started = self.request_handoff(now, None, HandOffCause::Drain);
        if let Err(why) = &started
            && !self.stopping
        {
            warn!(reason = %why, "this node is drained but still leads: no seat can take the lead yet");
        }
        Some(started)
    }

    /// Every other registered seat.
    pub(super) fn others(&self, own: u64) -> Vec<u64> {
        self.chain
            .registered
            .iter()
            .copied()
            .filter(|s| *s != own)
            .collect()
    }

    /// Seats that may not be handed to: this node, refused ones, draining ones (on-chain or heard), and those
    /// the contract refused in this hand-off.
    fn not_successors(&self, own: u64) -> Vec<u64> {
        let mut out = vec![own];
        out.extend(&self.chain.refused);
        out.extend(&self.chain.draining);
        out.extend(self.state.draining_peers.iter().copied());
        if let Some(h) = &self.handoff {
            out.extend(&h.tried);
        }
        out
    }

    /// Seats that confirmed this node as leader within the lease and said they were fit: they follow the
    /// chain, hear this node, and could lead.
    fn candidates(&self, now: Instant) -> Vec<u64> {
        let lease = self.config.timing.lease;
        self.support
            .iter()
            .filter(|(_, sent)| now.saturating_duration_since(**sent) < lease)
            .map(|(seat, _)| *seat)
            .filter(|seat| self.fit_heard.get(seat).copied().unwrap_or(false))
            .collect()
    }

    /// Heartbeats that say this node released its term, to every seat.
    pub(super) fn farewell(&mut self, own: u64, now: Instant) {
        if self.config.heartbeats && self.hearing.is_some() {
            let all = self.others(own);
            self.ping(own, &all, now);
        }
    }

    /// Sends the hand-off's transaction when no other job runs and no backoff holds it.
    pub(super) fn drive_handoff(&mut self, now: Instant) {
        let Some(own) = self.own() else { return };
        let running = self.job_running;
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        if running || h.sent || h.retry_at.is_some_and(|t| now < t) {
            return;
        }
        h.sent = true;
        let to = h.to;
        self.start(Job::HandOff { seat: own, to });
    }

    /// The hand-off's transaction ended.
    pub(super) fn handoff_sent(
        &mut self,
        now: Instant,
        to: u64,
        result: Result<Cast, ElectionError>,
    ) {
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        match result {
            Ok(cast) => {
                info!(
                    to,
                    block = cast.block,
                    "hand-off mined; waiting for the view to show it"
                );
                self.backoff.reset();
                self.ballot_block = Some(cast.block);
                self.publish_handoff(None);
            }
            Err(ElectionError::Chain(ChainError::Reverted(revert)))
                if revert.name == "LeaderHandOffIneligible" =>
            {
                h.tried.push(to);
                let asked = h.asked.filter(|a| *a != to);
                let candidates = h.candidates.clone();
                let own = self.own().unwrap_or_default();
                let excluded = self.not_successors(own);
                match successor(asked, &candidates, &excluded) {
                    Ok(next) => {
                        warn!(
                            refused = to,
                            next, "the contract refused the successor; trying another"
                        );
                        if let Some(h) = self.handoff.as_mut() {
                            h.to = next;
                            h.sent = false;
                        }
                        let refused = Fault::new(
                            format!("seat {to} cannot take the lead; trying seat {next}"),
                            ElectionError::Chain(ChainError::Reverted(revert)),
                        );
                        self.publish_handoff(Some(refused));
                    }
                    Err(why) => self.abandon(Fault::new(
                        why.to_string(),
                        ElectionError::Chain(ChainError::Reverted(revert)),
                    )),
                }
            }
            Err(ElectionError::Chain(ChainError::Reverted(revert)))
                if revert.name == "LeaderNotLeader" =>
            {
                // The term went otherwise (a vote, a hand-off sent elsewhere): nothing left to hand.
                self.abandon(Fault::new(
                    "the term went otherwise",
                    ElectionError::Chain(ChainError::Reverted(revert)),
                ));
            }
            Err(e) if self.stopping => {
                self.abandon(Fault::new(format!("handOff to seat {to} failed"), e));
            }
            Err(e) => {
                let delay = HANDOFF_RETRY;
                h.sent = false;
                h.retry_at = Some(now + delay);
                let fault = Fault::new(
                    format!(
                        "handOff to seat {to} failed; sending it again in {:.1} s",
                        delay.as_secs_f64()
                    ),
                    e,
                );
                self.faults.push_back((Level::WARN, fault.clone()));
                self.publish_handoff(Some(fault));
            }
        }
    }

    /// No seat takes the term: this node takes it back. Safe because it forgets every confirmation given
    /// before the release: a seat that confirms it again is bound by that promise anew, so none can have
    /// confirmed a successor meanwhile.
    fn abandon(&mut self, why: Fault) {
        if let Some(h) = self.handoff.take() {
            self.gave_up = Some(h.term);
            let c = &mut self.state.counters;
            c.handoffs_given_up = c.handoffs_given_up.saturating_add(1);
            if self.released == Some(h.term) {
                self.released = None;
                self.support.clear();
            }
        }
        let (level, then) = match self.stopping {
            true => (Level::INFO, "stopping without it"),
            false => (Level::WARN, "this node takes its term back"),
        };
        let logged = Fault::new(
            format!("the hand-off cannot be made, {then}: {}", why.doing),
            why.error.clone(),
        );
        self.faults.push_back((level, logged));
        self.publish_handoff(Some(why));
    }

    /// The view moved on: a hand-off under way is done, and a leader that lost its term says farewell at
    /// the next heartbeat (a lease after, its API says it does not lead).
    pub(super) fn handoff_view_changed(&mut self, now: Instant, was: super::View) {
        if let Some(h) = self.handoff.take_if(|h| self.view.term > h.term) {
            let took = now.saturating_duration_since(h.since);
            info!(to = ?self.view.leader, term = self.view.term, ?took, "the hand-off landed");
            let c = &mut self.state.counters;
            c.handoffs = c.handoffs.saturating_add(1);
            c.handoff_times.observe(took);
            self.state.last_handoff = Some(HandedOff {
                term: h.term,
                to: self.view.leader,
                cause: h.cause.as_str(),
                took,
            });
            self.state.handoff = None;
        }
        if let Some(own) = self.own()
            && was.leader == Some(own)
            && self.view.term > was.term
        {
            self.released = Some(was.term);
            self.farewell_due = Some(was.term);
        }
    }

    fn publish_handoff(&mut self, error: Option<Fault>) {
        self.state.handoff = self.handoff.as_ref().map(|h| HandOffLog {
            term: h.term,
            to: h.to,
            cause: h.cause.as_str(),
            since: h.since,
            error: error.clone(),
        });
        if self.handoff.is_none() {
            self.state.handoff_error = error;
        }
    }

    /// What a heartbeat says of its sender's drain, kept for [`DRAINING_HEARD_FOR`] heartbeats.
    pub(super) fn heard_drain(&mut self, seat: u64, draining: bool, now: Instant) {
        match draining {
            true => {
                self.heard_draining.insert(seat, now);
            }
            false => {
                self.heard_draining.remove(&seat);
            }
        }
    }

    /// The seats heard draining lately, and those the chain marks.
    pub(super) fn draining_peers(&self, now: Instant) -> std::collections::BTreeSet<u64> {
        let window: Duration = self.config.timing.heartbeat * DRAINING_HEARD_FOR;
        self.heard_draining
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) < window)
            .map(|(s, _)| *s)
            .chain(self.chain.draining.iter().copied())
            .filter(|s| Some(*s) != self.own())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_is_the_seat_asked_for_or_the_lowest_candidate_left() {
        assert_eq!(successor(Some(4), &[2, 3], &[1]), Ok(4));
        assert_eq!(
            successor(Some(3), &[2, 3], &[1, 3]),
            Err(HandOffRefused::Ineligible(3))
        );
        assert_eq!(successor(None, &[5, 3, 4], &[1, 3]), Ok(4));
        assert_eq!(
            successor(None, &[3], &[3]),
            Err(HandOffRefused::NoSuccessor)
        );
    }
}
