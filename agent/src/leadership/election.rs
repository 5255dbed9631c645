//! What this node does in the cluster's leader election, decided from what it knows: pure, so every rule is
//! a unit test. The leader task ([`crate::tasks::leader`]) does the probing and the transactions.
//!
//! Only a seat this node attests takes part: it votes against, elects, and counts as leader only seats whose
//! evidence it accepts, and a node whose own evidence is refused casts nothing.
//!
//! - With no leader, the lowest attested seat calls `electLeader`; the next seats do so too if that one has
//!   not after one more timeout each, so a dead lowest node does not leave the cluster leaderless.
//! - A leader this node has not reached over the mesh for the timeout gets this node's no-confidence vote;
//!   one whose seat this node refuses gets it at once, as if it had been silent all along. The contract
//!   replaces the leader once f+1 of the n active seats vote so.
//! - The vote is withdrawn once its target answers again, whether or not it still leads, so a node that
//!   came back is eligible again. A vote against a seat that is still silent, or still refused, stands, even
//!   when this node leads now: it keeps that seat from being chosen again at the next replacement. A vote
//!   against a refused seat is never moved to another: moving it would make the refused seat eligible again,
//!   and two seats could be traded for each other at every replacement.
//! - An unhealthy node neither elects nor votes until it is healthy again; it may still withdraw.
//!
//! No ballot is undone by this node's next decision on the same facts (a property test holds [`decide`] to
//! it), and the leader task sends at most one ballot per timeout whatever [`decide`] says, counting those it
//! holds back.
//!
//! What counts as an answer is a fit heartbeat ([`super::heartbeat::answers`]): a leader that cannot lead
//! (its view of the chain is stale, it is unhealthy) is as silent as one that is gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_chain::election::Ballot;

/// What this node has seen of one seat it watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// When this node began watching it: an unanswered seat gets the whole timeout from here.
    pub since: Instant,
    /// The last time it answered: a fit heartbeat over the mesh ([`super::heartbeat::answers`]).
    pub last_seen: Option<Instant>,
}

impl Sighting {
    pub fn new(since: Instant) -> Self {
        Self {
            since,
            last_seen: None,
        }
    }

    /// Records an answer at `at`.
    pub fn seen(&mut self, at: Instant) {
        self.last_seen = Some(self.last_seen.map_or(at, |t| t.max(at)));
    }

    /// It answered less than `within` before `now`. A seat only just watched has not: the silence it is
    /// given before counting is no answer.
    pub fn answered_within(&self, now: Instant, within: Duration) -> bool {
        self.last_seen
            .is_some_and(|t| now.saturating_duration_since(t) < within)
    }

    /// How long it has not answered, as of `now`: since its last answer, or, never heard, since watching
    /// began (which may be set ahead, to give a new tunnel's first path its time).
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen.unwrap_or(self.since))
    }
}

/// Everything a decision is made from.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// This node's seat, while it is a registered member; it takes no part otherwise.
    pub own: Option<u64>,
    /// This node's own evidence passes, as its peers judge it: a refused node takes no part.
    pub own_attested: bool,
    /// The leader the contract names.
    pub leader: Option<u64>,
    /// When the contract was last seen naming no leader, while it names none.
    pub leaderless_since: Option<Instant>,
    /// The seats with a record whose evidence this node accepts, in order.
    pub attested: &'a [u64],
    /// The seats with a record whose evidence this node refuses.
    pub refused: &'a [u64],
    /// The seat this node's vote is against.
    pub vote: Option<u64>,
    pub sightings: &'a BTreeMap<u64, Sighting>,
    /// This node is healthy: an unhealthy one only withdraws.
    pub healthy: bool,
    pub timeout: Duration,
    pub now: Instant,
}

/// Why a ballot is cast: it goes into the log with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No leader, and this node is the `rank`-th lowest attested seat (0 first), waited for its turn.
    NoLeader { rank: usize, waited: Duration },
    /// The leader has not answered over the mesh for this long.
    Unreachable { seat: u64, silent: Duration },
    /// The leader's seat is one this node refuses: its evidence does not pass.
    Refused { seat: u64 },
    /// The seat voted against answers again.
    Answers { seat: u64 },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoLeader { rank: 0, .. } => write!(
                f,
                "the cluster has no leader, and this node holds the lowest attested seat"
            ),
            Self::NoLeader { rank, waited } => write!(
                f,
                "the cluster has had no leader for {}s, and the {rank} lower attested seat(s) have not elected one",
                waited.as_secs()
            ),
            Self::Unreachable { seat, silent } => write!(
                f,
                "leader seat {seat} has not answered over the mesh as a leader that can lead (a fit heartbeat) for {}s",
                silent.as_secs()
            ),
            Self::Refused { seat } => write!(
                f,
                "leader seat {seat}'s evidence is refused by this node, which cannot follow it (see /v1/peers/refused)"
            ),
            Self::Answers { seat } => write!(f, "seat {seat} answers over the mesh again"),
        }
    }
}

/// The one ballot this node should cast now, if any.
pub fn decide(facts: &Facts<'_>) -> Option<(Ballot, Reason)> {
    let own = facts.own.filter(|_| facts.own_attested)?;
    let refused = |seat: u64| facts.refused.contains(&seat);
    if let Some(target) = facts.vote.filter(|t| !refused(*t)) {
        let answers = facts
            .sightings
            .get(&target)
            .is_some_and(|s| s.answered_within(facts.now, facts.timeout));
        if answers {
            return Some((Ballot::Withdraw, Reason::Answers { seat: target }));
        }
    }
    if !facts.healthy {
        return None;
    }
    match facts.leader {
        None => {
            let rank = facts.attested.iter().position(|s| *s == own)?;
            let waited = facts
                .now
                .saturating_duration_since(facts.leaderless_since.unwrap_or(facts.now));
            let turn = facts
                .timeout
                .saturating_mul(u32::try_from(rank).unwrap_or(u32::MAX));
            (waited >= turn).then_some((Ballot::Elect, Reason::NoLeader { rank, waited }))
        }
        Some(leader) if leader == own => None,
        Some(leader) => {
            if facts.vote == Some(leader) || facts.vote.is_some_and(refused) {
                return None;
            }
            if refused(leader) {
                return Some((
                    Ballot::Vote { target: leader },
                    Reason::Refused { seat: leader },
                ));
            }
            let silent = facts.sightings.get(&leader)?.silent_for(facts.now);
            (silent >= facts.timeout).then_some((
                Ballot::Vote { target: leader },
                Reason::Unreachable {
                    seat: leader,
                    silent,
                },
            ))
        }
    }
}

/// The seats whose silence this node counts: those it watches ([`to_watch`]), once it can hear them. A
/// node without a seat, or whose heartbeat socket is not bound yet (its tunnel is coming up), missed no
/// answer: counting from before it could hear would have a node that joins late vote against a leader
/// that answers it at once.
pub fn silence_counted(
    own: Option<u64>,
    hearing: bool,
    leader: Option<u64>,
    vote: Option<u64>,
) -> Vec<u64> {
    match (own, hearing) {
        (Some(_), true) => to_watch(own, leader, vote),
        _ => Vec::new(),
    }
}

/// The seats this node watches (pings, and votes on): the leader, unless it is this node, and the target of
/// its vote.
pub fn to_watch(own: Option<u64>, leader: Option<u64>, vote: Option<u64>) -> Vec<u64> {
    let mut seats: Vec<u64> = leader
        .into_iter()
        .chain(vote)
        .filter(|s| Some(*s) != own)
        .collect();
    seats.sort_unstable();
    seats.dedup();
    seats
}

/// Holds of a ballot this many timeouts apart or closer are a pattern: a node that keeps deciding ballots it
/// may not send (each, once sent, mined and paid for) has a bug worth a warning.
pub const FLAPPING_HOLDS: u32 = 10;

/// Whether a ballot held back at `now` follows another held back at `last_hold` closely enough to be a pattern
/// ([`FLAPPING_HOLDS`] timeouts). One alone is the one-per-timeout bound doing its work after the facts moved
/// back: a leader that stalled for a timeout under load and answers again has its vote withdrawn, held back
/// until a timeout after the vote.
pub fn flapping(last_hold: Option<Instant>, now: Instant, timeout: Duration) -> bool {
    last_hold.is_some_and(|last| now.saturating_duration_since(last) < timeout * FLAPPING_HOLDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn one_ballot_held_back_is_no_pattern_and_another_within_ten_timeouts_is() {
        let start = Instant::now();
        assert!(!flapping(None, start, TIMEOUT), "the first hold");
        let soon = start + TIMEOUT * 3;
        assert!(flapping(Some(start), soon, TIMEOUT));
        let later = start + TIMEOUT * FLAPPING_HOLDS;
        assert!(!flapping(Some(start), later, TIMEOUT), "ten timeouts on");
    }

    struct World {
        start: Instant,
        sightings: BTreeMap<u64, Sighting>,
        attested: Vec<u64>,
        refused: Vec<u64>,
        own_attested: bool,
        healthy: bool,
    }

    impl World {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                sightings: BTreeMap::new(),
                attested: vec![1, 2, 3],
                refused: Vec::new(),
                own_attested: true,
                healthy: true,
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.start + Duration::from_secs(secs)
        }

        /// Seat `seat` watched from the start, last answering at `seen` seconds (never if none).
        fn watch(mut self, seat: u64, seen: Option<u64>) -> Self {
            let mut s = Sighting::new(self.start);
            if let Some(t) = seen {
                s.seen(self.at(t));
            }
            self.sightings.insert(seat, s);
            self
        }

        /// Seat `seat`'s evidence is refused by this node.
        fn refuse(mut self, seat: u64) -> Self {
            self.attested.retain(|s| *s != seat);
            self.refused.push(seat);
            self
        }

        fn facts(&self, own: u64, leader: Option<u64>, vote: Option<u64>, now: u64) -> Facts<'_> {
            Facts {
                own: Some(own),
                own_attested: self.own_attested,
                leader,
                leaderless_since: leader.is_none().then_some(self.start),
                attested: &self.attested,
                refused: &self.refused,
                vote,
                sightings: &self.sightings,
                healthy: self.healthy,
                timeout: TIMEOUT,
                now: self.at(now),
            }
        }

        fn decide(
            &self,
            own: u64,
            leader: Option<u64>,
            vote: Option<u64>,
            now: u64,
        ) -> Option<(Ballot, Reason)> {
            decide(&self.facts(own, leader, vote, now))
        }
    }

    #[test]
    fn a_leader_silent_for_the_timeout_gets_a_vote() {
        let w = World::new().watch(1, Some(10));
        assert_eq!(w.decide(2, Some(1), None, 39), None, "silent 29 s");
        let (ballot, reason) = w.decide(2, Some(1), None, 40).expect("a vote at 30 s");
        assert_eq!(ballot, Ballot::Vote { target: 1 });
        assert_eq!(
            reason,
            Reason::Unreachable {
                seat: 1,
                silent: TIMEOUT
            }
        );
    }

    #[test]
    fn a_leader_never_seen_gets_the_whole_timeout_from_when_watching_began() {
        let w = World::new().watch(1, None);
        assert_eq!(w.decide(2, Some(1), None, 29), None);
        assert!(matches!(
            w.decide(2, Some(1), None, 30),
            Some((Ballot::Vote { target: 1 }, _))
        ));
    }

    #[test]
    fn a_vote_is_cast_once() {
        let w = World::new().watch(1, None);
        assert_eq!(w.decide(2, Some(1), Some(1), 100), None);
    }

    #[test]
    fn the_vote_is_withdrawn_when_its_target_answers_whether_or_not_it_leads() {
        let w = World::new().watch(1, Some(100));
        assert_eq!(
            w.decide(3, Some(2), Some(1), 101),
            Some((Ballot::Withdraw, Reason::Answers { seat: 1 }))
        );
        assert_eq!(
            w.decide(3, Some(1), Some(1), 101),
            Some((Ballot::Withdraw, Reason::Answers { seat: 1 }))
        );
    }

    /// After a restart the node reads its vote from the chain and begins watching its target afresh: the
    /// target has not answered yet, so the vote stands.
    #[test]
    fn a_vote_stands_against_a_target_only_just_watched() {
        let w = World::new().watch(1, None);
        assert_eq!(w.decide(3, Some(2), Some(1), 0), None);
        assert_eq!(w.decide(3, Some(1), Some(1), 1), None);
    }

    #[test]
    fn a_vote_against_a_replaced_leader_that_is_still_silent_stands() {
        let w = World::new().watch(1, Some(0)).watch(2, Some(100));
        assert_eq!(w.decide(3, Some(2), Some(1), 101), None);
    }

    #[test]
    fn a_node_that_leads_keeps_its_vote_against_a_silent_seat_and_votes_against_no_one() {
        let w = World::new().watch(1, None);
        assert_eq!(w.decide(2, Some(2), Some(1), 100), None);
        assert_eq!(w.decide(2, Some(2), None, 100), None);
        let w = World::new().watch(1, Some(99));
        assert_eq!(
            w.decide(2, Some(2), Some(1), 100),
            Some((Ballot::Withdraw, Reason::Answers { seat: 1 }))
        );
    }

    /// A seat without a record cannot answer: a vote against it stands (withdrawing it made the next
    /// decision cast it again, a ballot each way at every heartbeat).
    #[test]
    fn a_vote_against_a_seat_without_a_record_stands() {
        let mut w = World::new().watch(3, None);
        w.attested = vec![1, 2];
        assert_eq!(w.decide(2, Some(1), Some(3), 100), None);
    }

    #[test]
    fn with_no_leader_the_lowest_attested_seat_elects_at_once() {
        let w = World::new();
        assert!(matches!(
            w.decide(1, None, None, 0),
            Some((Ballot::Elect, Reason::NoLeader { rank: 0, .. }))
        ));
        assert_eq!(w.decide(2, None, None, 0), None, "seat 2 waits its turn");
        let w = World::new().refuse(1);
        assert!(
            matches!(
                w.decide(2, None, None, 0),
                Some((Ballot::Elect, Reason::NoLeader { rank: 0, .. }))
            ),
            "a refused seat 1 does not hold seat 2 up"
        );
    }

    #[test]
    fn with_no_leader_the_next_seat_elects_after_one_timeout_per_seat_below_it() {
        let w = World::new();
        assert_eq!(w.decide(2, None, None, 29), None);
        assert!(matches!(
            w.decide(2, None, None, 30),
            Some((Ballot::Elect, Reason::NoLeader { rank: 1, .. }))
        ));
        assert_eq!(w.decide(3, None, None, 59), None);
        assert!(w.decide(3, None, None, 60).is_some());
    }

    #[test]
    fn a_node_without_a_registered_seat_takes_no_part() {
        let w = World::new().watch(1, None);
        assert_eq!(w.decide(4, None, None, 1000), None, "not registered");
        let mut none = w.facts(2, Some(1), None, 1000);
        none.own = None;
        assert_eq!(decide(&none), None, "no seat");
    }

    #[test]
    fn an_unhealthy_node_neither_elects_nor_votes_but_still_withdraws() {
        let mut w = World::new().watch(1, None).watch(3, Some(100));
        w.healthy = false;
        assert_eq!(
            w.decide(2, Some(1), None, 101),
            None,
            "no vote against a silent leader"
        );
        assert_eq!(w.decide(2, None, None, 101), None, "no election");
        assert_eq!(
            w.decide(2, Some(1), Some(3), 101),
            Some((Ballot::Withdraw, Reason::Answers { seat: 3 })),
            "a vote against a seat that answers again is still withdrawn"
        );
    }

    /// A leader whose evidence this node refuses is voted against at once, as if silent all along, and the
    /// vote stands while it is refused, even should a stale sighting say it answered.
    #[test]
    fn a_refused_leader_gets_the_vote_at_once_and_keeps_it() {
        let w = World::new().refuse(1).watch(1, Some(0));
        assert_eq!(
            w.decide(2, Some(1), None, 0),
            Some((Ballot::Vote { target: 1 }, Reason::Refused { seat: 1 }))
        );
        assert_eq!(w.decide(2, Some(1), Some(1), 0), None);
        assert_eq!(
            w.decide(2, Some(2), Some(1), 1),
            None,
            "replaced: it stands"
        );
    }

    /// Moving a vote off a refused seat would make it eligible again: the next replacement could choose it,
    /// and two refused seats be traded at every replacement.
    #[test]
    fn a_vote_against_a_refused_seat_is_never_moved() {
        let w = World::new().refuse(1).refuse(2).watch(2, None);
        assert_eq!(w.decide(3, Some(2), Some(1), 1000), None);
    }

    /// A node whose own evidence is refused casts nothing at all: it can reach no one, and its seat is not
    /// one the others follow.
    #[test]
    fn a_refused_node_casts_no_ballot() {
        let mut w = World::new().watch(1, None).watch(3, Some(100));
        w.own_attested = false;
        assert_eq!(w.decide(2, Some(1), None, 1000), None);
        assert_eq!(w.decide(1, None, None, 1000), None);
        assert_eq!(w.decide(2, Some(1), Some(3), 101), None);
    }

    #[test]
    fn a_leader_not_watched_yet_gets_no_vote() {
        let w = World::new();
        assert_eq!(w.decide(2, Some(1), None, 1000), None);
    }

    #[test]
    fn the_leader_and_the_vote_target_are_watched_but_never_this_node() {
        assert_eq!(to_watch(Some(2), Some(1), Some(3)), vec![1, 3]);
        assert_eq!(to_watch(Some(2), Some(2), Some(1)), vec![1]);
        assert_eq!(to_watch(Some(2), Some(1), Some(1)), vec![1]);
        assert_eq!(to_watch(None, None, None), Vec::<u64>::new());
    }

    #[test]
    fn silence_is_counted_only_once_this_node_is_a_member_that_can_hear() {
        assert_eq!(
            silence_counted(None, true, Some(1), None),
            Vec::<u64>::new()
        );
        assert_eq!(
            silence_counted(Some(3), false, Some(1), None),
            Vec::<u64>::new(),
            "no heartbeat socket yet"
        );
        assert_eq!(silence_counted(Some(3), true, Some(1), Some(2)), vec![1, 2]);
    }

    /// The window a new tunnel's first path is given protects a seat never heard; one that answered is
    /// silent from its last answer.
    #[test]
    fn a_seat_that_answered_is_silent_from_its_answer_even_within_the_first_path_window() {
        let w = World::new();
        let mut s = Sighting::new(w.at(13));
        assert_eq!(s.silent_for(w.at(12)), Duration::ZERO);
        s.seen(w.at(2));
        assert_eq!(s.silent_for(w.at(12)), Duration::from_secs(10));
    }

    #[test]
    fn a_later_answer_never_moves_the_last_sighting_back() {
        let w = World::new();
        let mut s = Sighting::new(w.start);
        s.seen(w.at(10));
        s.seen(w.at(5));
        assert_eq!(s.silent_for(w.at(12)), Duration::from_secs(2));
    }

    /// Whether `next` undoes `first`: a withdrawal of the vote just cast, or a vote just withdrawn cast again.
    fn undoes(first: Ballot, vote_before: Option<u64>, next: Ballot) -> bool {
        match (first, next) {
            (Ballot::Vote { .. }, Ballot::Withdraw) => true,
            (Ballot::Withdraw, Ballot::Vote { target }) => vote_before == Some(target),
            _ => false,
        }
    }

    proptest! {
        /// Whatever the facts, a ballot is never undone by the decision made on the same facts once it has
        /// landed: the node would otherwise vote in a loop, a mined ballot (and gas) each way.
        #[test]
        fn no_ballot_is_undone_by_the_next_decision_on_the_same_facts(
            own in 1u64..6,
            leader in proptest::option::of(1u64..6),
            vote in proptest::option::of(1u64..6),
            refused in proptest::collection::btree_set(1u64..6, 0..3),
            recorded in proptest::collection::btree_set(1u64..6, 0..6),
            seen in proptest::collection::btree_map(1u64..6, proptest::option::of(0u64..200), 0..6),
            own_attested: bool,
            healthy: bool,
            now in 0u64..200,
        ) {
            let start = Instant::now();
            let sightings: BTreeMap<u64, Sighting> = seen
                .iter()
                .map(|(seat, at)| {
                    let mut s = Sighting::new(start);
                    if let Some(t) = at {
                        s.seen(start + Duration::from_secs(*t));
                    }
                    (*seat, s)
                })
                .collect();
            let attested: Vec<u64> = recorded.iter().copied().filter(|s| !refused.contains(s)).collect();
            let refused: Vec<u64> = refused.into_iter().collect();
            let facts = |vote: Option<u64>| Facts {
                own: Some(own),
                own_attested,
                leader,
                leaderless_since: leader.is_none().then_some(start),
                attested: &attested,
                refused: &refused,
                vote,
                sightings: &sightings,
                healthy,
                timeout: TIMEOUT,
                now: start + Duration::from_secs(now),
            };
            if let Some((first, _)) = decide(&facts(vote)) {
                let landed = match first {
                    Ballot::Vote { target } => Some(target),
                    Ballot::Withdraw => None,
                    Ballot::Elect => vote,
                };
                if let Some((next, why)) = decide(&facts(landed)) {
                    prop_assert!(
                        !undoes(first, vote, next),
                        "{first} then {next} ({why}) on the same facts"
                    );
                }
            }
        }
    }
}
