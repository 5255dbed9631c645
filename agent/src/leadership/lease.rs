//! When this node may say it leads (`isSelf`), and what it tells its peers of itself: pure, so every rule
//! is a unit test. The leader task ([`crate::tasks::leader`]) gathers the facts and acts on the verdict.
//!
//! The contract names one seat leader, but what a node knows of the contract may be old: it froze, or lost
//! its RPC, and another seat was elected meanwhile. So the seat named leader claims to lead only under a
//! **lease**, which holds while all of these do:
//!
//! 1. **Its view of the chain is fresh**: a read of the chain that began less than a lease ago confirmed it
//!    ([`mesh_chain::follow::Tick::confirmed`]). A node that cannot read the chain stops claiming.
//! 2. **A majority confirms it**: of the n registered seats, ⌈(n−1)/2⌉ others answered a heartbeat it sent
//!    less than a lease ago, confirming it as their leader under its term and holding no vote against it
//!    ([`super::heartbeat`]). Such a seat took that heartbeat as an answer from its leader, so it cannot
//!    vote against it for a whole `--leader-timeout` after; the at most ⌊(n−1)/2⌋ = f others are short of
//!    the f+1 votes a replacement needs. A leader cut off from the rest stops claiming.
//! 3. **It is healthy**: the application's report and the agent's check ([`mesh_api::signal`]).
//! 4. **Its own evidence passes**, as its peers judge it: a seat they refuse is not one they follow.
//! 5. **It has confirmed no other leader for a lease**, nor started less than a lease ago: a node that
//!    answered another seat's heartbeat as its leader's keeps from leading, and from confirming a third,
//!    until that confirmation has run out ([`super::heartbeat::supports`]).
//!
//! The lease is half the leader timeout. A seat votes against its leader only after hearing no fit answer
//! from it for a whole timeout on its own clock, and its ballot must then be mined. So with clocks that
//! drift apart by at most a rate ρ, the lease ends before any vote can replace the leader as long as
//! `lease · (1 + ρ) < timeout · (1 − ρ)`, which holds for ρ < 1/3; monotonic clocks in practice drift by
//! well under 0.1 %. The ballots' blocks only add margin. docs/applications.md states this (the lease).
//!
//! A leader can also change without any silence: a person revokes or deactivates its seat, or the owner
//! disallows its image and every node refuses it and votes at once. Rule 5 covers those: the old leader's
//! claim rests on a majority that confirmed it within a lease, the new one's on a majority that confirms it
//! now, and a seat in both confirms the new one only once its confirmation of the old one has run out. So
//! two leases never overlap, whatever moved the leader; a node that restarts has forgotten what it
//! confirmed, so it confirms nothing, and claims nothing, for a lease after it starts.
//!
//! Every instant here is monotonic (`Instant`, Linux's `CLOCK_MONOTONIC`), so a node that was frozen finds
//! its lease as old as the freeze made it. In a TDX guest the TSC is under the TDX module's control, so a
//! host that pauses the VM cannot hide the pause from it either.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The heartbeat's pace: at least this often, at most …
const HEARTBEAT_MIN: Duration = Duration::from_millis(250);
/// … this seldom, so that a large cluster's leader is not asked by every node every second.
const HEARTBEAT_MAX: Duration = Duration::from_secs(5);

/// How long a node that is not the leader may go without confirming its view of the chain and still call
/// itself fit to lead: three safety polls of a subscribed follower. Only the leader renews its view faster
/// than that ([`Timing::renew`]), so only the leader is held to the lease.
pub const FOLLOWER_FRESH: Duration = Duration::from_secs(45);

/// The lease and its pace, from `--leader-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `--leader-timeout`: the silence after which a seat votes against its leader.
    pub timeout: Duration,
    /// How long a confirmation lasts: half the timeout.
    pub lease: Duration,
    /// How often heartbeats go out (and ballots are decided): a tenth of the timeout, within 0.25–5 s.
    pub heartbeat: Duration,
    /// How often the leader reads the chain at least: four times per lease, so that one slow read does
    /// not end it.
    pub renew: Duration,
}

/// The default leader timeout on a chain whose blocks come every 2.5 s or faster, or on demand.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// On a slower chain, the default timeout is this many of its blocks: a ballot cast when it runs out is
/// mined within a block or two, so a failover takes no more than the timeout and a little.
pub const TIMEOUT_BLOCKS: u32 = 4;

impl Timing {
    /// The default timing on a chain of this `pace`: [`DEFAULT_TIMEOUT`], or [`TIMEOUT_BLOCKS`] blocks where
    /// that is longer.
    pub fn for_pace(pace: mesh_chain::pace::BlockPace) -> Self {
        let blocks = pace
            .block_time()
            .map_or(Duration::ZERO, |b| b * TIMEOUT_BLOCKS);
        Self::for_timeout(DEFAULT_TIMEOUT.max(blocks))
    }

    pub fn for_timeout(timeout: Duration) -> Self {
        let lease = timeout / 2;
        Self {
            timeout,
            lease,
            heartbeat: (timeout / 10).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX),
            renew: lease / 4,
        }
    }
}

/// What the verdict is made from.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// This node's seat, while it has a record.
    pub own: Option<u64>,
    /// The seat the contract names leader, as this node's view has it.
    pub leader: Option<u64>,
    /// The seats with a record, this node's included.
    pub registered: &'a [u64],
    /// When the last read of the chain that confirmed the view began; none while the view is only the
    /// state file's.
    pub confirmed_at: Option<Instant>,
    /// Why this node is unhealthy, if it is.
    pub unhealthy: Option<&'a str>,
    /// Why its peers refuse this node's own evidence (the refusal's kind), if they do.
    pub refused: Option<&'a str>,
    /// Until when this node has promised not to lead: a lease after it last confirmed another seat as
    /// leader, or after it started.
    pub promised_until: Option<Instant>,
    /// When this node's health changes by itself (the application's report lapses).
    pub health_lapses_at: Option<Instant>,
    /// This node released the term its view names: it is handing it off ([`super::heartbeat`]).
    pub released: bool,
    /// For each seat: when this node sent the latest heartbeat that the seat answered confirming it as
    /// leader under its term.
    pub support: &'a BTreeMap<u64, Instant>,
    pub timing: Timing,
    pub now: Instant,
}

/// Whether this node leads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Claim {
    /// The contract does not name this node's seat (or it has none).
    #[default]
    NotNamed,
    /// It leads, until then at the latest unless renewed.
    Leads { until: Instant },
    /// It is named, but may not say it leads.
    Declines(Declined),
}

impl Claim {
    pub fn until(&self) -> Option<Instant> {
        match self {
            Self::Leads { until } => Some(*until),
            _ => None,
        }
    }
}

/// Why the seat named leader does not lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declined {
    /// No read of the chain has confirmed the view since the agent started.
    Unconfirmed,
    /// The last read that confirmed the view began longer ago than the lease. (The age is not kept
    /// here: this is a state, and must not change while it holds; the API shows the age beside it.)
    Stale { lease: Duration },
    /// The application or the agent's check says so.
    Unhealthy(String),
    /// Its peers refuse its evidence (the refusal's kind).
    Refused(String),
    /// It confirmed another seat as leader less than a lease ago, or started less than a lease ago.
    Promised,
    /// Too few other seats confirmed this node as leader within the lease.
    NoQuorum { have: usize, need: usize },
    /// It released its term to hand it off, and never leads under it again.
    HandingOff,
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unconfirmed => write!(
                f,
                "no read of the chain has confirmed this node's view since it started"
            ),
            Self::Stale { lease } => write!(
                f,
                "no read of the chain has confirmed this node's view within the {:.1} s lease (is the RPC reachable?)",
                lease.as_secs_f64()
            ),
            Self::Unhealthy(why) => write!(f, "unhealthy: {why}"),
            Self::Refused(kind) => write!(
                f,
                "its peers refuse this node's evidence ({kind}): see `attestation` in /v1/status"
            ),
            Self::Promised => f.write_str(
                "this node confirmed another seat as leader, or started, less than a lease ago, and leads once that has run out",
            ),
            Self::NoQuorum { have, need } => write!(
                f,
                "only {have} of the {need} other seats needed confirmed this node as leader over the mesh within the lease"
            ),
            Self::HandingOff => f.write_str(
                "this node is handing its term to another seat, and does not lead under it again",
            ),
        }
    }
}

/// The other seats that must confirm a leader among `others`: ⌈others / 2⌉, so that those that have not
/// are at most ⌊others / 2⌋ = f, one short of the f+1 votes that replace a leader.
pub fn needed(others: usize) -> usize {
    others.div_ceil(2)
}

/// Whether this node leads now, and until when.
pub fn claim(f: &Facts<'_>) -> Claim {
    let Some(own) = f.own.filter(|o| f.leader == Some(*o)) else {
        return Claim::NotNamed;
    };
    if f.released {
        return Claim::Declines(Declined::HandingOff);
    }
    if let Some(why) = f.unhealthy {
        return Claim::Declines(Declined::Unhealthy(why.to_owned()));
    }
    if let Some(kind) = f.refused {
        return Claim::Declines(Declined::Refused(kind.to_owned()));
    }
    if f.promised_until.is_some_and(|t| f.now < t) {
        return Claim::Declines(Declined::Promised);
    }
    let Some(confirmed) = f.confirmed_at else {
        return Claim::Declines(Declined::Unconfirmed);
    };
    let age = f.now.saturating_duration_since(confirmed);
    if age >= f.timing.lease {
        return Claim::Declines(Declined::Stale {
            lease: f.timing.lease,
        });
    }
    let mut until = confirmed + f.timing.lease;
    let others: Vec<u64> = f.registered.iter().copied().filter(|s| *s != own).collect();
    let need = needed(others.len());
    let mut confirmations: Vec<Instant> = others
        .iter()
        .filter_map(|s| f.support.get(s))
        .map(|sent| *sent + f.timing.lease)
        .filter(|ends| *ends > f.now)
        .collect();
    if confirmations.len() < need {
        return Claim::Declines(Declined::NoQuorum {
            have: confirmations.len(),
            need,
        });
    }
    confirmations.sort_unstable_by(|a, b| b.cmp(a));
    if let Some(nth) = need.checked_sub(1).and_then(|i| confirmations.get(i)) {
        until = until.min(*nth);
    }
    if let Some(lapse) = f.health_lapses_at {
        until = until.min(lapse);
    }
    Claim::Leads { until }
}

/// Whether this node could lead now, as its heartbeats tell the others: healthy, its own evidence passing,
/// and its view of the chain confirmed within the lease if it is the seat named leader, or within
/// [`FOLLOWER_FRESH`] if not. A leader that is not fit gets no answer that counts, so the others vote it out
/// after the timeout.
pub fn fit(f: &Facts<'_>) -> bool {
    let named = f.own.is_some() && f.own == f.leader;
    let fresh_for = match named {
        true => f.timing.lease,
        false => f.timing.lease.max(FOLLOWER_FRESH),
    };
    !(named && f.released)
        && f.unhealthy.is_none()
        && f.refused.is_none()
        && f.confirmed_at
            .is_some_and(|t| f.now.saturating_duration_since(t) < fresh_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn the_default_timeout_is_ten_seconds_or_four_blocks_of_a_slower_chain() {
        use mesh_chain::pace::BlockPace;
        let timeout = |pace| Timing::for_pace(pace).timeout.as_secs();
        assert_eq!(
            timeout(BlockPace::Every { secs: 1 }),
            10,
            "anvil --block-time 1"
        );
        assert_eq!(timeout(BlockPace::Every { secs: 2 }), 10, "Base, Optimism");
        assert_eq!(
            timeout(BlockPace::Irregular),
            10,
            "on demand, or sub-second"
        );
        assert_eq!(timeout(BlockPace::Every { secs: 12 }), 48, "Ethereum");
        let t = Timing::for_pace(BlockPace::Every { secs: 2 });
        assert_eq!(
            (t.lease, t.heartbeat, t.renew),
            (
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_millis(1_250)
            ),
            "the lease and its pace follow from the timeout as before"
        );
    }

    struct World {
        t0: Instant,
        registered: Vec<u64>,
        support: BTreeMap<u64, Instant>,
    }

    impl World {
        fn new(seats: u64) -> Self {
            Self {
                t0: Instant::now(),
                registered: (1..=seats).collect(),
                support: BTreeMap::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Seat `seat` confirmed the heartbeat sent at `ms`.
        fn confirmed_by(mut self, seat: u64, ms: u64) -> Self {
            let at = self.at(ms);
            self.support.insert(seat, at);
            self
        }

        fn facts(
            &self,
            own: u64,
            leader: u64,
            confirmed_ms: Option<u64>,
            now_ms: u64,
        ) -> Facts<'_> {
            Facts {
                own: Some(own),
                leader: Some(leader),
                registered: &self.registered,
                confirmed_at: confirmed_ms.map(|ms| self.at(ms)),
                unhealthy: None,
                refused: None,
                promised_until: None,
                health_lapses_at: None,
                released: false,
                support: &self.support,
                timing: Timing::for_timeout(TIMEOUT),
                now: self.at(now_ms),
            }
        }
    }

    #[test]
    fn the_lease_is_half_the_timeout_and_ends_before_any_vote_can() {
        let t = Timing::for_timeout(TIMEOUT);
        assert_eq!(t.lease, Duration::from_secs(5));
        assert_eq!(t.heartbeat, Duration::from_secs(1));
        assert_eq!(t.renew, Duration::from_millis(1250));
        // lease · (1 + ρ) < timeout · (1 − ρ) at a clock-rate error ρ of 1 %, and up to ρ just under 1/3.
        let (lease, timeout) = (t.lease.as_secs_f64(), t.timeout.as_secs_f64());
        assert!(lease * 1.01 < timeout * 0.99);
        assert!(lease * (1.0 + 0.33) < timeout * (1.0 - 0.33));
        assert_eq!(
            Timing::for_timeout(Duration::from_secs(1)).heartbeat,
            HEARTBEAT_MIN
        );
        assert_eq!(
            Timing::for_timeout(Duration::from_secs(300)).heartbeat,
            HEARTBEAT_MAX
        );
    }

    #[test]
    fn a_majority_is_half_the_others_rounded_up() {
        assert_eq!(
            (0..=6).map(needed).collect::<Vec<_>>(),
            vec![0, 1, 1, 2, 2, 3, 3]
        );
        // Those left over are at most f = ⌊(n−1)/2⌋, one short of the f+1 votes a replacement needs.
        for n in 1..=20usize {
            let f = (n - 1) / 2;
            assert_eq!((n - 1) - needed(n - 1), f, "n = {n}");
        }
    }

    #[test]
    fn the_seat_named_leader_leads_with_a_fresh_view_and_a_majority() {
        let w = World::new(3).confirmed_by(2, 1_000);
        let claim = claim(&w.facts(1, 1, Some(2_000), 3_000));
        // The earlier of the chain's lease (2 s + 5 s) and seat 2's (1 s + 5 s).
        assert_eq!(claim, Claim::Leads { until: w.at(6_000) });
    }

    #[test]
    fn a_seat_not_named_leader_never_claims() {
        let w = World::new(3).confirmed_by(1, 1_000).confirmed_by(3, 1_000);
        assert_eq!(claim(&w.facts(2, 1, Some(2_000), 3_000)), Claim::NotNamed);
        let mut f = w.facts(2, 2, Some(2_000), 3_000);
        f.own = None;
        assert_eq!(claim(&f), Claim::NotNamed, "no seat");
    }

    #[test]
    fn a_view_older_than_the_lease_ends_the_claim() {
        let w = World::new(3).confirmed_by(2, 6_000);
        assert!(matches!(
            claim(&w.facts(1, 1, Some(1_999), 6_998)),
            Claim::Leads { .. }
        ));
        assert_eq!(
            claim(&w.facts(1, 1, Some(1_999), 6_999)),
            Claim::Declines(Declined::Stale {
                lease: Duration::from_secs(5)
            })
        );
        assert_eq!(
            claim(&w.facts(1, 1, None, 7_000)),
            Claim::Declines(Declined::Unconfirmed),
            "a view from the state file"
        );
    }

    #[test]
    fn a_leader_cut_off_from_the_majority_stops_claiming_within_the_lease() {
        let w = World::new(5).confirmed_by(2, 1_000).confirmed_by(3, 2_000);
        assert!(matches!(
            claim(&w.facts(1, 1, Some(5_000), 5_500)),
            Claim::Leads { until } if until == w.at(6_000)
        ));
        assert_eq!(
            claim(&w.facts(1, 1, Some(5_000), 6_000)),
            Claim::Declines(Declined::NoQuorum { have: 1, need: 2 }),
            "seat 2's confirmation ran out"
        );
    }

    #[test]
    fn confirmations_from_seats_without_a_record_do_not_count() {
        let w = World::new(3).confirmed_by(7, 1_000).confirmed_by(1, 1_000);
        assert_eq!(
            claim(&w.facts(1, 1, Some(1_000), 1_500)),
            Claim::Declines(Declined::NoQuorum { have: 0, need: 1 })
        );
    }

    #[test]
    fn two_seats_lead_only_together_so_a_partition_leaves_none_claiming() {
        let w = World::new(2);
        assert_eq!(
            claim(&w.facts(1, 1, Some(1_000), 1_500)),
            Claim::Declines(Declined::NoQuorum { have: 0, need: 1 })
        );
        let w = w.confirmed_by(2, 1_000);
        assert!(matches!(
            claim(&w.facts(1, 1, Some(1_000), 1_500)),
            Claim::Leads { .. }
        ));
    }

    #[test]
    fn a_single_seat_leads_on_its_view_alone() {
        let w = World::new(1);
        assert_eq!(
            claim(&w.facts(1, 1, Some(1_000), 1_500)),
            Claim::Leads { until: w.at(6_000) }
        );
    }

    #[test]
    fn an_unhealthy_leader_declines_and_is_not_fit() {
        let w = World::new(3).confirmed_by(2, 1_000);
        let mut f = w.facts(1, 1, Some(1_000), 1_500);
        assert!(fit(&f));
        f.unhealthy = Some("postgres is down");
        assert_eq!(
            claim(&f),
            Claim::Declines(Declined::Unhealthy("postgres is down".into()))
        );
        assert!(!fit(&f));
    }

    /// A leader that released its term does not lead under it, however confirmed, and says it is not fit,
    /// so that the others vote it out if its hand-off never lands; once another seat is named, it may be
    /// fit again.
    #[test]
    fn a_leader_that_released_its_term_declines_and_is_not_fit() {
        let w = World::new(3).confirmed_by(2, 1_000);
        let mut f = w.facts(1, 1, Some(1_000), 1_500);
        f.released = true;
        assert_eq!(claim(&f), Claim::Declines(Declined::HandingOff));
        assert!(!fit(&f));
        let follower = w.facts(1, 2, Some(1_000), 1_500);
        assert!(fit(&Facts {
            released: true,
            ..follower
        }));
    }

    #[test]
    fn a_refused_leader_declines_and_is_not_fit() {
        let w = World::new(3).confirmed_by(2, 1_000);
        let mut f = w.facts(1, 1, Some(1_000), 1_500);
        f.refused = Some("os-not-allowed");
        assert_eq!(
            claim(&f),
            Claim::Declines(Declined::Refused("os-not-allowed".into()))
        );
        assert!(!fit(&f));
    }

    /// A node that confirmed another leader, or started, less than a lease ago does not lead yet, however
    /// well confirmed; it stays fit, so that nobody votes it out meanwhile.
    #[test]
    fn a_node_promised_to_another_leads_only_once_the_promise_runs_out() {
        let w = World::new(3).confirmed_by(2, 1_000);
        let mut f = w.facts(1, 1, Some(1_000), 1_500);
        f.promised_until = Some(w.at(2_000));
        assert_eq!(claim(&f), Claim::Declines(Declined::Promised));
        assert!(fit(&f));
        f.now = w.at(2_000);
        assert!(matches!(claim(&f), Claim::Leads { .. }));
    }

    #[test]
    fn a_health_report_that_lapses_bounds_the_claim() {
        let w = World::new(3).confirmed_by(2, 1_000);
        let mut f = w.facts(1, 1, Some(1_000), 1_500);
        f.health_lapses_at = Some(w.at(3_000));
        assert_eq!(claim(&f), Claim::Leads { until: w.at(3_000) });
    }

    #[test]
    fn the_leader_is_fit_only_within_the_lease_and_a_follower_within_a_while_longer() {
        let w = World::new(3);
        assert!(fit(&w.facts(1, 1, Some(0), 4_999)));
        assert!(
            !fit(&w.facts(1, 1, Some(0), 5_000)),
            "the leader: the lease"
        );
        assert!(fit(&w.facts(2, 1, Some(0), 44_999)));
        assert!(
            !fit(&w.facts(2, 1, Some(0), 45_000)),
            "a follower: FOLLOWER_FRESH"
        );
        assert!(!fit(&w.facts(2, 1, None, 0)), "never confirmed");
    }

    #[test]
    fn the_claims_end_is_the_majoritys_oldest_needed_confirmation() {
        // Five seats, two others needed: the second-newest confirmation bounds the claim.
        let w = World::new(5)
            .confirmed_by(2, 3_000)
            .confirmed_by(3, 1_000)
            .confirmed_by(4, 2_000);
        assert_eq!(
            claim(&w.facts(1, 1, Some(3_000), 3_500)),
            Claim::Leads { until: w.at(7_000) }
        );
    }
}
