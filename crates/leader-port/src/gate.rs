//! Where a connection to a forwarded port goes, decided from what this node's API shows (a [`View`] of its
//! snapshot), and whether a connection already open may go on. Pure.
//!
//! The fence: a leader-port connection is opened only while this node sees a leader whose lease is current,
//! and it lives only as long as the route it was opened on holds. A new term, a lease that lapses, or this
//! node starting or ceasing to lead ends it, so no client goes on writing to a demoted primary.
//!
//! A replica port spreads its connections over the healthy members that do not lead, fewest open first; a
//! connection ends when its member leaves the list or stops answering. With no such member it reaches the
//! leader, as libpq's `prefer-standby` does, under the leader's fence.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

pub use mesh_api::forwarded::Refusal;
use mesh_api::{Freshness, Leader, PortRole, Snapshot};

/// Where a connection opened now goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The leader's term it is fenced by; `None` for a replica, which no term fences.
    pub term: Option<u64>,
    /// The seat it reaches.
    pub seat: u64,
    pub to: SocketAddr,
}

/// Where a forwarded port sends: `port` on a member's overlay address, or `local` on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub port: u16,
    pub local: SocketAddr,
}

/// One member a replica port may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub seat: u64,
    pub overlay_ip: Ipv4Addr,
    /// This node: reached on its own service.
    pub is_self: bool,
    /// It answers now (a peer), or its health check passes (this node).
    pub healthy: bool,
    /// It is being drained: new connections go elsewhere, open ones run on.
    pub draining: bool,
}

/// What the ports decide from: the leader, and the members, as this node's API shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub leader: Leader,
    pub members: Vec<Member>,
    /// The TCP ports this node may reach on each seat, by the grants between seats; a seat not listed
    /// (no policy in force) may be reached on any.
    pub granted: BTreeMap<u64, Vec<RangeInclusive<u16>>>,
}

impl View {
    /// Whether the grants let this node reach `port` on `seat`.
    fn grants(&self, seat: u64, port: u16) -> bool {
        self.granted
            .get(&seat)
            .is_none_or(|ranges| ranges.iter().any(|r| r.contains(&port)))
    }

    /// The view of a snapshot: its leader, its peers, and this node once it has a seat and an address.
    pub fn of(snapshot: &Snapshot) -> Self {
        let mut members: Vec<Member> = snapshot
            .peers
            .iter()
            .map(|p| Member {
                seat: p.token_id,
                overlay_ip: p.overlay_ip,
                is_self: false,
                healthy: p.healthy,
                draining: p.draining,
            })
            .collect();
        let node = &snapshot.status.node;
        if let (Some(seat), Some(overlay_ip)) = (node.token_id, node.overlay_ip) {
            members.push(Member {
                seat,
                overlay_ip,
                is_self: true,
                healthy: snapshot.check.as_ref().is_none_or(|c| c.healthy),
                draining: node.draining,
            });
        }
        let granted = snapshot
            .peers
            .iter()
            .filter_map(|p| Some((p.token_id, p.policy.as_ref()?.reachable_there.tcp_ranges())))
            .collect();
        Self {
            leader: snapshot.leader.clone(),
            members,
            granted,
        }
    }
}

/// The route a connection opened now takes, or why there is none. `open` counts the connections open now
/// per seat, and `turn` breaks ties among the least loaded, so that a replica port spreads evenly.
///
/// # Errors
/// The [`Refusal`].
pub fn route(
    role: PortRole,
    view: &View,
    ports: &Ports,
    open: &BTreeMap<u64, u64>,
    turn: u64,
) -> Result<Route, Refusal> {
    match role {
        PortRole::Leader => leader_route(view, ports),
        PortRole::Replica => {
            let replicas = replicas(view, ports);
            let least = replicas
                .iter()
                .map(|m| open.get(&m.seat).copied().unwrap_or(0))
                .min();
            let fewest: Vec<&Member> = replicas
                .iter()
                .filter(|m| Some(open.get(&m.seat).copied().unwrap_or(0)) == least)
                .collect();
            match fewest.len() {
                0 => leader_route(view, ports),
                n => Ok(member_route(fewest[(turn % n as u64) as usize], ports)),
            }
        }
    }
}

/// Whether a connection opened on `opened` may go on now that the view is `view`.
pub fn holds(role: PortRole, opened: Route, view: &View, ports: &Ports) -> bool {
    if role == PortRole::Leader || opened.term.is_some() {
        return leader_route(view, ports) == Ok(opened);
    }
    view.members.iter().any(|m| {
        m.healthy
            && (m.is_self || view.grants(m.seat, ports.port))
            && member_route(m, ports) == opened
    })
}

/// The healthy members that do not lead, are not being drained and may be reached on the port, by seat.
fn replicas(view: &View, ports: &Ports) -> Vec<Member> {
    let leader = view.leader.token_id;
    let mut replicas: Vec<Member> = view
        .members
        .iter()
        .filter(|m| m.healthy && !m.draining && Some(m.seat) != leader)
        .filter(|m| m.is_self || view.grants(m.seat, ports.port))
        .copied()
        .collect();
    replicas.sort_by_key(|m| m.seat);
    replicas
}

fn member_route(m: &Member, ports: &Ports) -> Route {
    Route {
        term: None,
        seat: m.seat,
        to: if m.is_self {
            ports.local
        } else {
            SocketAddr::new(IpAddr::V4(m.overlay_ip), ports.port)
        },
    }
}

fn leader_route(view: &View, ports: &Ports) -> Result<Route, Refusal> {
    let leader = &view.leader;
    let Some(seat) = leader.token_id else {
        return Err(Refusal::NoLeader);
    };
    let Some(term) = leader.term else {
        return Err(Refusal::NotCurrent);
    };
    if leader.state != Freshness::Current {
        return Err(Refusal::NotCurrent);
    }
    if leader.is_self {
        return Ok(Route {
            term: Some(term),
            seat,
            to: ports.local,
        });
    }
    // The seat named is this node's own, and it does not hold the lease: its claim ran out (cut off from
    // the seats that renew it, say), it is unhealthy, or it has not taken the lease yet. Its overlay address
    // would reach its own service, a primary that no longer leads, while its view of the chain is current.
    if view.members.iter().any(|m| m.is_self && m.seat == seat) {
        return Err(Refusal::NotCurrent);
    }
    let ip = leader.overlay_ip.ok_or(Refusal::NoAddress)?;
    if !view.grants(seat, ports.port) {
        return Err(Refusal::NotGranted);
    }
    Ok(Route {
        term: Some(term),
        seat,
        to: SocketAddr::new(IpAddr::V4(ip), ports.port),
    })
}

#[cfg(test)]
mod tests {
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

    fn view(leader: Leader) -> View {
        View {
            leader,
            ..View::default()
        }
    }

    fn lead(v: &View) -> Result<Route, Refusal> {
        route(PortRole::Leader, v, &PORTS, &BTreeMap::new(), 0)
    }

    fn member(seat: u64, is_self: bool, healthy: bool) -> Member {
        Member {
            seat,
            overlay_ip: Ipv4Addr::new(10, 0, 1, seat as u8),
            is_self,
            healthy,
            draining: false,
        }
    }

    #[test]
    fn a_follower_forwards_to_the_leaders_overlay_address_and_the_leader_to_its_own_service() {
        assert_eq!(
            lead(&view(leader(2, 7, false, Freshness::Current))),
            Ok(Route {
                term: Some(7),
                seat: 2,
                to: "10.0.1.2:5432".parse().unwrap()
            })
        );
        assert_eq!(
            lead(&view(leader(2, 7, true, Freshness::Current))),
            Ok(Route {
                term: Some(7),
                seat: 2,
                to: PORTS.local
            })
        );
    }

    #[test]
    fn without_a_current_leader_nothing_is_forwarded() {
        assert_eq!(lead(&View::default()), Err(Refusal::NoLeader));
        for stale in [Freshness::Stale, Freshness::Unknown] {
            assert_eq!(
                lead(&view(leader(2, 7, false, stale))),
                Err(Refusal::NotCurrent)
            );
        }
        let mut no_term = leader(2, 7, false, Freshness::Current);
        no_term.term = None;
        assert_eq!(lead(&view(no_term)), Err(Refusal::NotCurrent));
        let mut no_ip = leader(2, 7, false, Freshness::Current);
        no_ip.overlay_ip = None;
        assert_eq!(lead(&view(no_ip)), Err(Refusal::NoAddress));
    }

    #[test]
    fn a_connection_ends_with_its_term_its_lease_or_its_leaders_role() {
        let holds_at = |opened, l| holds(PortRole::Leader, opened, &view(l), &PORTS);
        let opened = lead(&view(leader(2, 7, false, Freshness::Current))).unwrap();
        assert!(holds_at(opened, leader(2, 7, false, Freshness::Current)));
        assert!(!holds_at(opened, leader(3, 8, false, Freshness::Current)));
        assert!(
            !holds_at(opened, leader(2, 8, false, Freshness::Current)),
            "re-elected: a new term, a new fence"
        );
        assert!(!holds_at(opened, leader(2, 7, false, Freshness::Stale)));
        let own = lead(&view(leader(1, 7, true, Freshness::Current))).unwrap();
        assert!(
            !holds_at(own, leader(1, 7, false, Freshness::Current)),
            "this node stepped down"
        );
    }

    #[test]
    fn the_seat_named_leader_that_lost_its_lease_sends_to_no_one_not_even_itself() {
        // Node 1, named leader under term 7, its chain view still current: while it holds the lease its own
        // service takes the connections; once its claim runs out, nobody's does, its overlay address
        // included, which would reach the same service.
        let mut v = view(leader(1, 7, true, Freshness::Current));
        v.members = vec![member(1, true, true), member(2, false, true)];
        let own = lead(&v).unwrap();
        assert_eq!(own.to, PORTS.local);
        v.leader.is_self = false;
        assert_eq!(lead(&v), Err(Refusal::NotCurrent));
        assert!(!holds(PortRole::Leader, own, &v, &PORTS));
        // The same chain view on node 2 still forwards to seat 1: its lease is node 2's to judge.
        v.members = vec![member(1, false, true), member(2, true, true)];
        assert_eq!(lead(&v).map(|r| r.seat), Ok(1));
    }

    #[test]
    fn a_replica_port_spreads_over_the_healthy_members_that_do_not_lead() {
        let v = View {
            leader: leader(1, 7, false, Freshness::Current),
            members: vec![
                member(1, false, true),
                member(2, false, true),
                member(3, true, true),
                member(4, false, false),
            ],
            ..View::default()
        };
        let reached = |open: &BTreeMap<u64, u64>, turn| {
            route(PortRole::Replica, &v, &PORTS, open, turn).map(|r| (r.seat, r.to, r.term))
        };
        let none = BTreeMap::new();
        assert_eq!(
            reached(&none, 0),
            Ok((2, "10.0.1.2:5432".parse().unwrap(), None))
        );
        assert_eq!(
            reached(&none, 1),
            Ok((3, PORTS.local, None)),
            "this node's own service, when it does not lead"
        );
        assert_eq!(
            reached(&BTreeMap::from([(2, 1)]), 0).map(|r| r.0),
            Ok(3),
            "fewest open first"
        );
        for turn in 0..10 {
            let seat = reached(&none, turn).unwrap().0;
            assert!(
                seat == 2 || seat == 3,
                "never the leader (1) nor an unhealthy member (4): {seat}"
            );
        }
    }

    /// A member being drained takes no new connection; one opened before it drained runs on.
    #[test]
    fn a_replica_port_leaves_a_draining_member_out_of_its_rotation() {
        let drained = Member {
            draining: true,
            ..member(2, false, true)
        };
        let v = View {
            leader: leader(1, 7, false, Freshness::Current),
            members: vec![member(1, false, true), drained, member(3, false, true)],
            ..View::default()
        };
        for turn in 0..4 {
            let r = route(PortRole::Replica, &v, &PORTS, &BTreeMap::new(), turn).unwrap();
            assert_eq!(r.seat, 3, "turn {turn}");
        }
        let opened = route(
            PortRole::Replica,
            &View {
                members: vec![member(2, false, true)],
                ..v.clone()
            },
            &PORTS,
            &BTreeMap::new(),
            0,
        )
        .unwrap();
        assert_eq!(opened.seat, 2);
        assert!(
            holds(PortRole::Replica, opened, &v, &PORTS),
            "open connections run on"
        );
    }

    #[test]
    fn a_replica_port_with_no_replica_reaches_the_leader_under_its_fence() {
        let v = View {
            leader: leader(1, 7, false, Freshness::Current),
            members: vec![member(1, false, true), member(2, false, false)],
            ..View::default()
        };
        let r = route(PortRole::Replica, &v, &PORTS, &BTreeMap::new(), 0).unwrap();
        assert_eq!((r.seat, r.term), (1, Some(7)));
        let next = View {
            leader: leader(2, 8, false, Freshness::Current),
            ..v.clone()
        };
        assert!(
            !holds(PortRole::Replica, r, &next, &PORTS),
            "a new term ends it"
        );
        let none = View {
            leader: Leader::default(),
            members: vec![member(2, false, false)],
            ..View::default()
        };
        assert_eq!(
            route(PortRole::Replica, &none, &PORTS, &BTreeMap::new(), 0),
            Err(Refusal::NoLeader)
        );
    }

    #[test]
    fn a_replica_connection_ends_when_its_member_leaves_or_stops_answering() {
        let mut v = View {
            leader: leader(1, 7, false, Freshness::Current),
            members: vec![member(2, false, true)],
            ..View::default()
        };
        let r = route(PortRole::Replica, &v, &PORTS, &BTreeMap::new(), 0).unwrap();
        assert!(holds(PortRole::Replica, r, &v, &PORTS));
        v.leader = leader(2, 8, false, Freshness::Current);
        assert!(
            holds(PortRole::Replica, r, &v, &PORTS),
            "a replica that now leads still serves reads"
        );
        v.members[0].healthy = false;
        assert!(!holds(PortRole::Replica, r, &v, &PORTS));
        v.members.clear();
        assert!(!holds(PortRole::Replica, r, &v, &PORTS));
    }

    /// A port the grants do not let this node reach on the leader is refused at once, as not-granted,
    /// rather than sent to be dropped; a replica port leaves out the members it may not reach, and a grant
    /// taken away ends the connections opened under it.
    #[test]
    fn a_port_the_grants_do_not_allow_is_refused_at_once_and_skipped_among_replicas() {
        let mut v = View {
            leader: leader(1, 7, false, Freshness::Current),
            members: vec![
                member(1, false, true),
                member(2, false, true),
                member(3, false, true),
            ],
            granted: BTreeMap::from([(1, vec![22..=22]), (2, vec![5000..=6000]), (3, Vec::new())]),
        };
        assert_eq!(lead(&v), Err(Refusal::NotGranted));
        for turn in 0..4 {
            let r = route(PortRole::Replica, &v, &PORTS, &BTreeMap::new(), turn).unwrap();
            assert_eq!(r.seat, 2, "seat 3 may not be reached on 5432: turn {turn}");
        }
        let opened = route(PortRole::Replica, &v, &PORTS, &BTreeMap::new(), 0).unwrap();
        v.granted.insert(2, Vec::new());
        assert!(
            !holds(PortRole::Replica, opened, &v, &PORTS),
            "its grant was taken away"
        );
        assert_eq!(
            route(PortRole::Replica, &v, &PORTS, &BTreeMap::new(), 0),
            Err(Refusal::NotGranted),
            "no replica is granted, nor the leader"
        );
        v.granted.clear();
        assert_eq!(lead(&v).map(|r| r.seat), Ok(1), "no policy in force");
    }
}
