//! Where a connection to the leader port goes, decided from the leader as this node's API shows it
//! ([`mesh_api::Leader`]), and whether a connection already open may go on. Pure.
//!
//! The fence: a connection is opened only while this node sees a leader whose lease is current, and it lives
//! only as long as the route it was opened on holds. A new term, a lease that lapses, or this node starting or
//! ceasing to lead ends it, so no client goes on writing to a demoted primary.

use std::net::{IpAddr, SocketAddr};

use mesh_api::{Freshness, Leader};

/// Where a connection opened now goes: the leader's service, under `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub term: u64,
    pub to: SocketAddr,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No seat is leader (or the one named is refused by this node).
    NoLeader,
    /// A leader is named, but not confirmed within a lease: it may have changed.
    NotCurrent,
    /// The leader's record gives no overlay address this node can reach it on.
    NoAddress,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoLeader => "no-leader",
            Self::NotCurrent => "not-current",
            Self::NoAddress => "no-address",
        }
    }

    pub const ALL: [Self; 3] = [Self::NoLeader, Self::NotCurrent, Self::NoAddress];
}

/// Where the leader port forwards: `port` on the leader's overlay address, or `local` when this node leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub port: u16,
    pub local: SocketAddr,
}

/// The route a connection opened now takes, or why there is none.
///
/// # Errors
/// The [`Refusal`].
pub fn route(leader: &Leader, ports: &Ports) -> Result<Route, Refusal> {
    if leader.token_id.is_none() {
        return Err(Refusal::NoLeader);
    }
    let Some(term) = leader.term else {
        return Err(Refusal::NotCurrent);
    };
    if leader.state != Freshness::Current {
        return Err(Refusal::NotCurrent);
    }
    if leader.is_self {
        return Ok(Route {
            term,
            to: ports.local,
        });
    }
    let ip = leader.overlay_ip.ok_or(Refusal::NoAddress)?;
    Ok(Route {
        term,
        to: SocketAddr::new(IpAddr::V4(ip), ports.port),
    })
}

/// Whether a connection opened on `opened` may go on now that the leader is `leader`.
pub fn holds(opened: Route, leader: &Leader, ports: &Ports) -> bool {
    route(leader, ports) == Ok(opened)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const PORTS: Ports = Ports {
        port: 5432,
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5433),
    };

    fn leader(seat: u64, term: u64, is_self: bool, state: Freshness) -> Leader {
        Leader {
            token_id: Some(seat),
            overlay_ip: Some(Ipv4Addr::new(10, 0, 1, seat as u8)),
            is_self,
            term: Some(term),
            state,
            ..Leader::default()
        }
    }

    #[test]
    fn a_follower_forwards_to_the_leaders_overlay_address_and_the_leader_to_its_own_service() {
        assert_eq!(
            route(&leader(2, 7, false, Freshness::Current), &PORTS),
            Ok(Route {
                term: 7,
                to: "10.0.1.2:5432".parse().unwrap()
            })
        );
        assert_eq!(
            route(&leader(2, 7, true, Freshness::Current), &PORTS),
            Ok(Route {
                term: 7,
                to: PORTS.local
            })
        );
    }

    #[test]
    fn without_a_current_leader_nothing_is_forwarded() {
        assert_eq!(route(&Leader::default(), &PORTS), Err(Refusal::NoLeader));
        for stale in [Freshness::Stale, Freshness::Unknown] {
            assert_eq!(
                route(&leader(2, 7, false, stale), &PORTS),
                Err(Refusal::NotCurrent)
            );
        }
        let mut no_term = leader(2, 7, false, Freshness::Current);
        no_term.term = None;
        assert_eq!(route(&no_term, &PORTS), Err(Refusal::NotCurrent));
        let mut no_ip = leader(2, 7, false, Freshness::Current);
        no_ip.overlay_ip = None;
        assert_eq!(route(&no_ip, &PORTS), Err(Refusal::NoAddress));
    }

    #[test]
    fn a_connection_ends_with_its_term_its_lease_or_its_leaders_role() {
        let opened = route(&leader(2, 7, false, Freshness::Current), &PORTS).unwrap();
        assert!(holds(
            opened,
            &leader(2, 7, false, Freshness::Current),
            &PORTS
        ));
        assert!(!holds(
            opened,
            &leader(3, 8, false, Freshness::Current),
            &PORTS
        ));
        assert!(
            !holds(opened, &leader(2, 8, false, Freshness::Current), &PORTS),
            "re-elected: a new term, a new fence"
        );
        assert!(!holds(
            opened,
            &leader(2, 7, false, Freshness::Stale),
            &PORTS
        ));
        let own = route(&leader(1, 7, true, Freshness::Current), &PORTS).unwrap();
        assert!(
            !holds(own, &leader(1, 7, false, Freshness::Current), &PORTS),
            "this node stepped down"
        );
    }
}
