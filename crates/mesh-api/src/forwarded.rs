//! The ports this node forwards (`--leader-port`, `--replica-port`), as `/v1/status` shows them: where each
//! listens, and what became of its connections, per term and per seat.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Why a forwarded port closes a connection at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// No seat is leader (or the one named is refused by this node).
    NoLeader,
    /// A leader is named, but not confirmed within a lease: it may have changed. Or this node is the seat
    /// named, and does not hold the lease.
    NotCurrent,
    /// The leader's record gives no overlay address this node can reach it on.
    NoAddress,
    /// The grants between seats do not let this node reach the port on the seat it would go to: the seat
    /// would drop it, and the client would wait out its connect timeout.
    NotGranted,
}

impl Refusal {
    /// Every refusal, in the order the metrics list them.
    pub const ALL: [Self; 4] = [
        Self::NoLeader,
        Self::NotCurrent,
        Self::NoAddress,
        Self::NotGranted,
    ];

    /// Its name in `/v1/status` ([`ForwardedPort::refused`]) and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoLeader => "no-leader",
            Self::NotCurrent => "not-current",
            Self::NoAddress => "no-address",
            Self::NotGranted => "not-granted",
        }
    }
}

/// Where a forwarded port sends its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortRole {
    /// To the current leader's service, fenced by the term.
    Leader,
    /// Spread over the healthy members that do not lead; to the leader when there are none.
    Replica,
}

impl PortRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Replica => "replica",
        }
    }
}

/// What became of some connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardCounts {
    /// Connections forwarded.
    pub opened: u64,
    /// Of those, the ones closed because their route stopped holding: a new term, a lease that ran out, this
    /// node starting or ceasing to lead, or (a replica) a member gone or unhealthy.
    pub fenced: u64,
    /// Of those, the ones whose service did not accept them.
    pub unreachable: u64,
    /// Bytes from clients to the service, and back, so far.
    pub bytes_to_service: u64,
    pub bytes_from_service: u64,
}

/// The connections one route took: a term of the leader (`term`), or one member (`seat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteCounts {
    /// The leader's term the connections were opened under; absent for a replica's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The seat they reached.
    pub seat: u64,
    #[serde(flatten)]
    pub counts: ForwardCounts,
}

/// One forwarded port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedPort {
    pub role: PortRole,
    /// The port clients connect to, on `127.0.0.1` and on this node's overlay address.
    pub listen: u16,
    /// The port of the service it reaches, on the leader's (or member's) overlay address, or on loopback here.
    pub target: u16,
    /// Where it listens now: the overlay address is added once the interface has it.
    pub bound: Vec<SocketAddr>,
    /// Connections open now.
    pub open: u64,
    /// Every connection since the agent started.
    #[serde(flatten)]
    pub total: ForwardCounts,
    /// Connections closed at once, per reason (`no-leader`, `not-current`, `no-address`).
    pub refused: BTreeMap<String, u64>,
    /// Per route, newest first: the latest terms (the leader port), or each member reached (a replica port).
    pub routes: Vec<RouteCounts>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_a_name_of_its_own() {
        let names: std::collections::BTreeSet<_> = Refusal::ALL.map(Refusal::as_str).into();
        assert_eq!(names.len(), Refusal::ALL.len());
        assert_eq!(Refusal::NotCurrent.as_str(), "not-current");
    }
}
