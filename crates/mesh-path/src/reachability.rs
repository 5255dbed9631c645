//! What a node knows of its own reachability, and the candidates it publishes from it: the addresses of its
//! interfaces, the public address and port STUN servers see its WireGuard socket come from, and the
//! addresses peers that reach it directly say they see ([`Reachability::observe`]). The device's discovery
//! loop (in `mesh-wg`) asks the servers and the interfaces and hands the answers here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wg_key::Key;

use crate::candidates::{Candidate, MAX_CANDIDATES, Source};
use crate::nat::NatReport;
use crate::punch::OwnCandidates;

/// How long a peer's word on where it sees this node counts: peers say it again every two minutes at least
/// (with their candidates), so only a peer that went away lets it lapse.
pub const OBSERVED_FOR: Duration = Duration::from_secs(300);

/// Whether a node offers to relay for its peers (`--relay-for-peers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOffer {
    /// When its own checks show its UDP port reachable from outside.
    Auto,
    Always,
    Never,
}

/// What the node knows of its own reachability, and the candidates it publishes from it.
#[derive(Debug, Default)]
pub struct Reachability {
    pub report: NatReport,
    /// A peer reached this node over UDP before this node had sent it anything there: the public addresses
    /// STUN showed then. The proof holds while they do: a host's forward goes with its address, and a relay
    /// offered on a stale one costs its pairs the peer timeout before they move.
    reached_first: Option<Vec<IpAddr>>,
    locals: Vec<SocketAddrV4>,
    observed: HashMap<Key, (SocketAddrV4, Instant)>,
    /// A round has ended.
    settled: bool,
    /// When the first of the rounds since which no server answered ended: rounds are frequent, so the
    /// latest one's time says nothing of how long the servers have been silent.
    pub unanswered_since: Option<SystemTime>,
    pub own: Arc<OwnCandidates>,
}

impl Reachability {
    /// A round's outcome and the interfaces' addresses; returns whether the candidates changed.
    pub fn set(&mut self, report: NatReport, locals: Vec<SocketAddrV4>, now: Instant) -> bool {
        let unanswered =
            !report.servers.is_empty() && report.servers.iter().all(|s| s.mapped.is_none());
        self.unanswered_since = if unanswered {
            self.unanswered_since.or(report.checked_at)
        } else {
            None
        };
        self.report = report;
        self.locals = locals;
        self.settled = true;
        self.recompute(now)
    }

    /// `peer` sees this node's datagrams come from `addr`; returns whether the candidates changed.
    pub fn observe(&mut self, peer: Key, addr: SocketAddrV4, now: Instant) -> bool {
        let known = self.observed.get(&peer).is_some_and(|(a, _)| *a == addr);
        self.observed.insert(peer, (addr, now));
        !known && self.recompute(now)
    }

    /// A peer's handshake reached this node over UDP, from an address this node had sent nothing to: the
    /// node's port is reachable from outside (no NAT, or a forward, as a self-hosted dstack host has).
    pub fn reached_first(&mut self) {
        self.reached_first = Some(self.public_ips());
    }

    /// The public addresses STUN saw in the latest round, sorted; none while no server answers.
    fn public_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.report.mapped.iter().map(SocketAddr::ip).collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Whether the node offers to relay for its peers under `mode`, and why, in words for its status.
    pub fn offers_relay(&self, mode: RelayOffer) -> (bool, &'static str) {
        match mode {
            RelayOffer::Always => (true, "--relay-for-peers always"),
            RelayOffer::Never => (false, "--relay-for-peers never"),
            RelayOffer::Auto if self.report.mapping == crate::nat::Mapping::NoNat => (
                true,
                "no NAT in front of this node: STUN sees its own address",
            ),
            RelayOffer::Auto
                if self.reached_first.as_ref().is_some_and(|then| {
                    let now = self.public_ips();
                    then.is_empty() || now.is_empty() || *then == now
                }) =>
            {
                (
                    true,
                    "peers reached this node first over UDP: its port is open from outside",
                )
            }
            RelayOffer::Auto => (
                false,
                "not shown reachable from outside: behind a NAT no peer reached it through first",
            ),
        }
    }

    /// The candidates from what is known: the interfaces' addresses, then what STUN saw, then what peers
    /// saw (when the mapping is the same for every destination; otherwise a peer's view is of no use to
    /// another).
    fn recompute(&mut self, now: Instant) -> bool {
        self.observed
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < OBSERVED_FOR);
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut add = |addr: SocketAddrV4, source| {
            if !candidates.iter().any(|c| c.addr == addr) && candidates.len() < MAX_CANDIDATES {
                candidates.push(Candidate { addr, source });
            }
        };
        for l in &self.locals {
            add(*l, Source::Local);
        }
        for m in &self.report.mapped {
            if let SocketAddr::V4(m) = m {
                add(*m, Source::Stun);
            }
        }
        if !self.report.mapping.depends_on_destination() {
            let mut seen: Vec<SocketAddrV4> = self.observed.values().map(|(a, _)| *a).collect();
            seen.sort();
            for o in seen {
                add(o, Source::Observed);
            }
        }
        let mapping = self.report.mapping;
        let settled = self.settled;
        if candidates == self.own.candidates
            && mapping == self.own.mapping
            && settled == self.own.settled
        {
            return false;
        }
        self.own = Arc::new(OwnCandidates {
            version: self.own.version + 1,
            candidates,
            mapping,
            own_ips: self.locals.iter().map(|l| *l.ip()).collect(),
            settled,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn report(mapped: &[&str], mapping: crate::nat::Mapping) -> NatReport {
        NatReport {
            mapping,
            mapped: mapped.iter().map(|m| m.parse().unwrap()).collect(),
            ..NatReport::default()
        }
    }

    /// `auto` offers to relay with no NAT in front, or once a peer reached this node first, for as long as its
    /// public address is the same; `always` and `never` are what they say.
    #[test]
    fn a_node_offers_to_relay_when_shown_reachable_from_outside() {
        use crate::nat::Mapping;
        let now = Instant::now();
        let mut r = Reachability::default();
        assert!(!r.offers_relay(RelayOffer::Auto).0, "nothing known");
        assert!(r.offers_relay(RelayOffer::Always).0);
        r.set(
            report(&["203.0.113.5:51820"], Mapping::NoNat),
            Vec::new(),
            now,
        );
        assert!(r.offers_relay(RelayOffer::Auto).0, "no NAT");
        assert!(!r.offers_relay(RelayOffer::Never).0);
        r.set(
            report(&["203.0.113.5:40000"], Mapping::AddressAndPortDependent),
            Vec::new(),
            now,
        );
        assert!(!r.offers_relay(RelayOffer::Auto).0, "a symmetric NAT");
        r.reached_first();
        let (offers, why) = r.offers_relay(RelayOffer::Auto);
        assert!(offers, "a peer reached it first");
        assert!(why.contains("reached this node first"), "{why}");
        r.set(report(&[], Mapping::Unknown), Vec::new(), now);
        assert!(
            r.offers_relay(RelayOffer::Auto).0,
            "STUN silent: the proof holds"
        );
        r.set(
            report(&["203.0.113.5:40100"], Mapping::AddressAndPortDependent),
            Vec::new(),
            now,
        );
        assert!(
            r.offers_relay(RelayOffer::Auto).0,
            "the same public address"
        );
        r.set(
            report(&["203.0.113.9:40000"], Mapping::AddressAndPortDependent),
            Vec::new(),
            now,
        );
        assert!(
            !r.offers_relay(RelayOffer::Auto).0,
            "another public address: the forward that let peers in may be gone"
        );
    }

    /// Silent servers are dated from the first round none answered, however many rounds follow; one
    /// answer clears it.
    #[test]
    fn silent_servers_are_dated_from_the_first_unanswered_round() {
        use crate::stun::ServerResult;
        let t0 = Instant::now();
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let round = |mapped: Option<&str>, secs| NatReport {
            servers: vec![ServerResult {
                server: "192.0.2.1:3478".parse().unwrap(),
                mapped: mapped.map(|m| m.parse().unwrap()),
                rtt: None,
            }],
            checked_at: Some(at(secs)),
            ..NatReport::default()
        };
        let mut d = Reachability::default();
        d.set(round(Some("198.51.100.1:40000"), 100), vec![], t0);
        assert_eq!(d.unanswered_since, None);
        d.set(round(None, 101), vec![], t0);
        d.set(round(None, 102), vec![], t0);
        assert_eq!(d.unanswered_since, Some(at(101)));
        d.set(round(Some("198.51.100.1:40000"), 103), vec![], t0);
        assert_eq!(d.unanswered_since, None);
        d.set(NatReport::default(), vec![], t0);
        assert_eq!(d.unanswered_since, None, "no servers asked is not silence");
    }

    /// Local addresses first, then STUN's, then what peers see; a change bumps the version, the same again
    /// does not.
    #[test]
    fn candidates_come_from_interfaces_stun_and_peers_and_change_only_when_they_do() {
        use crate::nat::Mapping;
        let t0 = Instant::now();
        let mut d = Reachability::default();
        let locals = vec![v4("10.0.2.100:51820")];
        assert!(d.set(
            report(&["198.51.100.1:40000"], Mapping::EndpointIndependent),
            locals.clone(),
            t0
        ));
        assert_eq!(d.own.version, 1);
        assert!(!d.set(
            report(&["198.51.100.1:40000"], Mapping::EndpointIndependent),
            locals.clone(),
            t0
        ));
        assert!(
            !d.observe(Key::from_bytes([1; 32]), v4("198.51.100.1:40000"), t0),
            "what STUN saw already"
        );
        assert!(d.observe(Key::from_bytes([2; 32]), v4("198.51.100.1:41000"), t0));
        let sources: Vec<_> = d
            .own
            .candidates
            .iter()
            .map(|c| (c.addr, c.source))
            .collect();
        assert_eq!(
            sources,
            [
                (v4("10.0.2.100:51820"), Source::Local),
                (v4("198.51.100.1:40000"), Source::Stun),
                (v4("198.51.100.1:41000"), Source::Observed),
            ]
        );
        assert_eq!(d.own.own_ips, [Ipv4Addr::new(10, 0, 2, 100)]);
        assert_eq!(d.own.version, 2);
        // A symmetric NAT: what one peer sees is no use to another.
        assert!(d.set(
            report(&["198.51.100.1:40000"], Mapping::AddressAndPortDependent),
            locals,
            t0 + Duration::from_secs(1)
        ));
        assert!(
            d.own
                .candidates
                .iter()
                .all(|c| c.source != Source::Observed)
        );
        // Peers' words expire.
        let mut e = Reachability::default();
        e.observe(Key::from_bytes([2; 32]), v4("198.51.100.1:41000"), t0);
        assert_eq!(e.own.candidates.len(), 1);
        e.set(NatReport::default(), Vec::new(), t0 + OBSERVED_FOR);
        assert!(e.own.candidates.is_empty());
    }
}
