//! `GET /v1/leader`: the leader as this node sees it, and the lease it is worked out from.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `GET /v1/leader`: the seat the cluster contract names leader, as this node sees it.
///
/// `isSelf` is true only while this node holds the leader's lease ([`LeaderClock`]): its view of the chain
/// was confirmed by a read less than a lease ago, a majority of the seats confirmed it as leader over the
/// mesh less than a lease ago, and it is healthy. The lease is checked when the answer is served, so a node
/// that was frozen and resumes never answers from before the freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    /// Absent while no leader is elected, and while the seat elected is one this node refuses
    /// (`refusedSeat`): an application follows only a leader its node accepts.
    pub token_id: Option<u64>,
    /// The seat the contract names leader when this node refuses its evidence: no leader for
    /// applications here, and this node votes it out at once; `reason` says why.
    #[serde(default)]
    pub refused_seat: Option<u64>,
    /// Absent when no believed record names the leader's instance.
    pub instance_id: Option<String>,
    pub overlay_ip: Option<Ipv4Addr>,
    /// What to connect to, as a peer's `address`; this node's own overlay IP when it leads.
    pub address: Option<String>,
    /// This node leads, under a lease that holds now.
    pub is_self: bool,
    /// Whether this node hears the leader over the mesh now; absent when it leads, or has not asked yet.
    pub reachable: Option<bool>,
    /// The fencing term: the contract's `leaderTerm` as this node's view has it. It grows by one at every
    /// leader change and never goes back, so an application tags its writes with it and refuses writes of
    /// an older term. Absent before this node has a view of the chain.
    #[serde(default)]
    pub term: Option<u64>,
    /// Whether what this node knows of the leader was confirmed less than a lease ago ([`Freshness`]).
    #[serde(default)]
    pub state: Freshness,
    /// How long ago that confirmation was, in milliseconds; absent if never.
    #[serde(default)]
    pub age_ms: Option<u64>,
    /// While `isSelf`: how much longer the claim holds at most, in milliseconds.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// The leader timeout this node keeps, in milliseconds (`--leader-timeout`, or the chain's pace's); the
    /// lease is half of it. Absent until it is known.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// This node's own health signal (the application's report and the agent's check): an unhealthy node
    /// never leads.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// When this node is the seat named leader but does not lead, or the seat named is refused: why.
    #[serde(default)]
    pub reason: Option<String>,
    /// How the term began: `elected`, `handoff` (a planned change: the old leader gave it up before the
    /// new one began), `voted-out` (a failover) or `seat-left`. Absent when this node did not see it
    /// begin (it started, or its RPC was down, after).
    #[serde(default)]
    pub term_reason: Option<String>,
    /// While this node hands its term off: to whom, and how it goes.
    #[serde(default)]
    pub handing_off: Option<HandingOff>,
    /// The seats being drained: no replica port sends to them, and no leader is handed to them.
    #[serde(default)]
    pub draining: Vec<u64>,
    /// What the time-dependent fields are worked out from when the answer is served; never sent.
    #[serde(skip)]
    pub clock: LeaderClock,
}

fn yes() -> bool {
    true
}

impl Default for Leader {
    /// No leader, and nothing known: as an agent that has not read the chain yet serves it.
    fn default() -> Self {
        Self {
            token_id: None,
            refused_seat: None,
            instance_id: None,
            overlay_ip: None,
            address: None,
            is_self: false,
            reachable: None,
            term: None,
            state: Freshness::Unknown,
            age_ms: None,
            lease_ms: None,
            timeout_ms: None,
            healthy: true,
            reason: None,
            term_reason: None,
            handing_off: None,
            draining: Vec::new(),
            clock: LeaderClock::default(),
        }
    }
}

/// A hand-off this node is making: it released `term` and asked the contract to give the lead to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandingOff {
    /// The term given up.
    pub term: u64,
    /// The successor the transaction names.
    pub to: u64,
    /// `asked` (`POST /v1/leader/handoff`, `meshctl`) or `drain` (SIGTERM, `POST /v1/drain`, the seat
    /// marked draining on-chain).
    pub cause: String,
    /// How long ago it began, in milliseconds.
    pub since_ms: u64,
    /// Why the last attempt failed, if it did; it is tried again.
    #[serde(default)]
    pub error: Option<String>,
}

/// Whether what a node knows of the leader is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    /// Confirmed less than a lease ago: on the leader, by its own read of the chain; on a follower, by the
    /// leader itself, which answered it as leading under this term (in TLS mode, with no heartbeats, by
    /// its own read).
    Current,
    /// Confirmed once, but longer ago than a lease: the leader may have changed since.
    Stale,
    /// Never confirmed since the agent started (say, the view came from its state file).
    #[default]
    Unknown,
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Stale => "stale",
            Self::Unknown => "unknown",
        }
    }
}

/// The monotonic instants a [`Leader`] answer is worked out from at the moment it is served
/// ([`Leader::as_of`]), rather than when the agent last rendered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderClock {
    /// The lease.
    pub lease: Duration,
    /// When what this node knows of the leader was last confirmed.
    pub confirmed_at: Option<Instant>,
    /// While this node claims to lead: until when the claim holds.
    pub claim_until: Option<Instant>,
}

impl Leader {
    /// The answer as of `now`: the age, what is left of the lease, and the claim dropped if it ran out
    /// since the agent last rendered it.
    #[must_use]
    pub fn as_of(&self, now: Instant) -> Self {
        let mut l = self.clone();
        let age = l
            .clock
            .confirmed_at
            .map(|t| now.saturating_duration_since(t));
        l.age_ms = age.map(millis);
        l.state = match age {
            None => Freshness::Unknown,
            Some(a) if a < l.clock.lease => Freshness::Current,
            Some(_) => Freshness::Stale,
        };
        match l.clock.claim_until.filter(|_| l.is_self) {
            Some(until) if now < until => l.lease_ms = Some(millis(until - now)),
            Some(_) => {
                l.is_self = false;
                l.lease_ms = None;
                // No number in it: the text is part of what a change is, and must not change by itself.
                l.reason = Some(
                    "the lease ran out: neither a read of the chain nor a majority of the seats renewed it in time"
                        .into(),
                );
            }
            None => {
                l.is_self = false;
                l.lease_ms = None;
            }
        }
        l
    }
}

impl Leader {
    /// When the answer next changes by itself, after `now`: the claim or the confirmation runs out. The
    /// agent renders it again then, so that event streams and hooks hear of it.
    pub fn changes_at(&self, now: Instant) -> Option<Instant> {
        let c = &self.clock;
        [
            c.claim_until.filter(|_| self.is_self),
            c.confirmed_at.map(|t| t + c.lease),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    }

    /// What a change of leadership is, for applications: not the age or what is left of the lease.
    pub fn key(&self) -> impl PartialEq + std::fmt::Debug + use<> {
        (
            (
                self.token_id,
                self.refused_seat,
                self.address.clone(),
                self.reachable,
                self.is_self,
            ),
            (self.term, self.state, self.healthy, self.reason.clone()),
            (
                self.term_reason.clone(),
                self.handing_off.as_ref().map(|h| (h.to, h.error.clone())),
                self.draining.clone(),
            ),
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
