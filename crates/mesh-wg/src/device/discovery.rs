//! What the device learns of its own reachability, and the candidates it publishes from it: the addresses of
//! its interfaces, the public address and port STUN servers see its WireGuard socket come from (a round of
//! requests every [`ROUND_EVERY`], and soon after the namespace's links, addresses or routes change, sent from
//! that socket, their answers handed over by the receive loop), and the addresses peers that reach it directly
//! say they see ([`Discovered::observe`]). A NAT that restarts takes the node's interface down and up with it
//! (slirp4netns does), so the new mapping is known, and published, within a second.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use tokio::sync::mpsc;

use super::outbound::send;
use super::shared::Shared;
use crate::Error;
use mesh_path::candidates::{Candidate, MAX_CANDIDATES, Source};
use mesh_path::nat::NatReport;
use crate::netlink::NetworkChanges;
use crate::peer::Via;
use mesh_path::punch::OwnCandidates;
use mesh_path::stun::{Round, ServerResult};
use wg_key::Key;

/// How often the STUN servers are asked again: often enough that a NAT that remaps is noticed well within
/// a minute, rarely enough to cost nothing (two small datagrams per server).
pub(super) const ROUND_EVERY: Duration = Duration::from_secs(30);
/// How long a peer's word on where it sees this node counts: peers say it again every two minutes at least
/// (with their candidates), so only a peer that went away lets it lapse.
const OBSERVED_FOR: Duration = Duration::from_secs(300);
/// How long a STUN server's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// STUN answers waiting for the discovery loop.
pub(super) const ANSWERS: usize = 64;
/// How long the network must be quiet after a change before a round starts: a link that comes back brings
/// its address and routes in a burst.
const SETTLE: Duration = Duration::from_millis(300);
/// The least time between two rounds, however often the network changes.
const ROUND_GAP: Duration = Duration::from_secs(2);

/// What the device knows of its own reachability.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    pub(crate) report: NatReport,
    locals: Vec<SocketAddrV4>,
    observed: HashMap<Key, (SocketAddrV4, Instant)>,
    /// A round has ended.
    settled: bool,
    pub(crate) own: Arc<OwnCandidates>,
}

impl Discovered {
    /// A round's outcome and the interfaces' addresses; returns whether the candidates changed.
    fn set(&mut self, report: NatReport, locals: Vec<SocketAddrV4>, now: Instant) -> bool {
        self.report = report;
        self.locals = locals;
        self.settled = true;
        self.recompute(now)
    }

    /// `peer` sees this node's datagrams come from `addr`; returns whether the candidates changed.
    pub(crate) fn observe(&mut self, peer: Key, addr: SocketAddrV4, now: Instant) -> bool {
        let known = self.observed.get(&peer).is_some_and(|(a, _)| *a == addr);
        self.observed.insert(peer, (addr, now));
        !known && self.recompute(now)
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

/// The IPv4 addresses of this namespace's interfaces but the mesh's own, loopback and link-local ones, with
/// the WireGuard port.
fn local_addresses(ifname: &str, overlay: Ipv4Network, port: u16) -> Vec<SocketAddrV4> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<SocketAddrV4> = addrs
        .filter(|a| a.interface_name != ifname)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .filter(|ip| !ip.is_loopback() && !ip.is_link_local() && !overlay.contains(*ip))
        .map(|ip| SocketAddrV4::new(ip, port))
        .collect();
    out.dedup();
    out
}

/// The servers' addresses (IPv4: the device's socket is IPv4), resolved now; a name that does not resolve
/// is logged once and left out of the round.
async fn resolve(servers: &[String], warned: &mut HashSet<String>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for server in servers {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(server.as_str()))
            .await
            .map_err(|_| format!("no answer within {RESOLVE_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|mut addrs| addrs.find(SocketAddr::is_ipv4));
        match found {
            Ok(Some(addr)) => {
                warned.remove(server);
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
            Ok(None) | Err(_) if warned.contains(server) => {}
            Ok(None) => {
                tracing::warn!(%server, "the STUN server has no IPv4 address; it is left out (the WireGuard socket is IPv4)");
                warned.insert(server.clone());
            }
            Err(error) => {
                tracing::warn!(%server, %error, "cannot resolve the STUN server; it is left out until it resolves (--stun-server, or --no-stun)");
                warned.insert(server.clone());
            }
        }
    }
    out
}

/// One round: a request to each server from the device's socket, with retransmits, until all answered or
/// the round times out.
async fn round(
    shared: &Shared,
    servers: &[SocketAddr],
    answers: &mut mpsc::Receiver<(SocketAddr, Vec<u8>)>,
) -> Vec<ServerResult> {
    let mut round = Round::new(servers, Instant::now());
    loop {
        let now = Instant::now();
        let sock = shared.socket();
        for (to, request) in round.due(now) {
            send(&sock, &request, &Via::Udp(to)).await;
        }
        if round.is_done(now) {
            return round.results();
        }
        let wake = tokio::time::Instant::from_std(round.next_wake());
        tokio::select! {
            answer = answers.recv() => match answer {
                Some((from, datagram)) => {
                    round.receive(from, &datagram, Instant::now());
                }
                None => return round.results(),
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The discovery loop: a round every [`ROUND_EVERY`] (only the interfaces' addresses without servers), the
/// candidates recomputed from it, and what changed logged.
pub(super) async fn discovery_loop(
    shared: Arc<Shared>,
    servers: Vec<String>,
    mut answers: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    mut changes: NetworkChanges,
) -> Result<(), Error> {
    let mut warned = HashSet::new();
    let mut unanswered_warned = false;
    if servers.is_empty() {
        tracing::info!(
            "STUN is off: this node publishes its interfaces' addresses and what peers see of it, not its public mapping"
        );
    }
    loop {
        let port = shared.read().listen_port;
        let locals = local_addresses(&shared.ifname, shared.overlay, port);
        let resolved = resolve(&servers, &mut warned).await;
        let results = if resolved.is_empty() {
            Vec::new()
        } else {
            round(&shared, &resolved, &mut answers).await
        };
        let local_addrs: Vec<SocketAddr> = locals.iter().map(|l| SocketAddr::V4(*l)).collect();
        let report = NatReport::new(results, &local_addrs, std::time::SystemTime::now());
        let answered = report.servers.iter().filter(|s| s.mapped.is_some()).count();
        if !resolved.is_empty() && answered == 0 {
            if !unanswered_warned {
                tracing::warn!(servers = ?resolved, "no STUN server answered: this node cannot learn its public mapping, so peers behind NAT reach it only through the relay or by what other peers see (is UDP to the servers blocked?)");
                unanswered_warned = true;
            }
        } else {
            unanswered_warned = false;
        }
        let (mapping, mapped, rtt) = (report.mapping, report.mapped.clone(), report.best_rtt());
        let changed = shared.discovered(|d| d.set(report, locals, Instant::now()));
        if changed {
            let own = shared.own_candidates();
            tracing::info!(event = "nat.discovered", %mapping, ?mapped, answered, servers = resolved.len(), ?rtt, candidates = ?own.candidates.iter().map(|c| format!("{} ({})", c.addr, c.source.as_str())).collect::<Vec<_>>(), "this node's candidates");
        }
        // Until the next round: its time, or a change of the network once it has settled (and not sooner
        // than ROUND_GAP). Answers that come meanwhile belong to no round.
        let round_ended = tokio::time::Instant::now();
        let next = tokio::time::sleep(ROUND_EVERY);
        tokio::pin!(next);
        loop {
            tokio::select! {
                () = &mut next => break,
                answer = answers.recv() => if answer.is_none() {
                    return Ok(());
                },
                change = changes.next() => {
                    if change.is_none() {
                        // No more news of the network: the timer alone, then.
                        std::future::pending::<()>().await;
                    }
                    let soonest = (round_ended + ROUND_GAP).max(tokio::time::Instant::now() + SETTLE);
                    let deadline = next.deadline();
                    next.as_mut().reset(soonest.min(deadline));
                    tracing::debug!(event = "nat.network_changed", "the network changed: discovering again");
                }
            }
        }
    }
}

impl Shared {
    /// Runs `f` on what the device knows of its reachability.
    pub(crate) fn discovered<T>(&self, f: impl FnOnce(&mut Discovered) -> T) -> T {
        f(&mut self.discovered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The candidates this node publishes now.
    pub(crate) fn own_candidates(&self) -> Arc<OwnCandidates> {
        self.discovered(|d| Arc::clone(&d.own))
    }

    /// Peers say where they see this node.
    pub(super) fn observed(&self, seen: &[(Key, SocketAddrV4)]) {
        let now = Instant::now();
        for (peer, addr) in seen {
            if !usable_observation(*addr, self.overlay) {
                continue;
            }
            if self.discovered(|d| d.observe(*peer, *addr, now)) {
                tracing::info!(event = "nat.observed", peer = ?peer, observed = %addr, "a peer sees this node at a new address; it is published as a candidate");
            }
        }
    }
}

/// A peer's word on where it sees this node is taken only for a unicast address outside the overlay.
fn usable_observation(addr: SocketAddrV4, overlay: Ipv4Network) -> bool {
    mesh_path::candidates::usable(addr, overlay, &[]) && *addr.ip() != Ipv4Addr::BROADCAST
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn report(mapped: &[&str], mapping: mesh_path::nat::Mapping) -> NatReport {
        NatReport {
            mapping,
            mapped: mapped.iter().map(|m| m.parse().unwrap()).collect(),
            ..NatReport::default()
        }
    }

    /// Local addresses first, then STUN's, then what peers see; a change bumps the version, the same again
    /// does not.
    #[test]
    fn candidates_come_from_interfaces_stun_and_peers_and_change_only_when_they_do() {
        use mesh_path::nat::Mapping;
        let t0 = Instant::now();
        let mut d = Discovered::default();
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
        let mut e = Discovered::default();
        e.observe(Key::from_bytes([2; 32]), v4("198.51.100.1:41000"), t0);
        assert_eq!(e.own.candidates.len(), 1);
        e.set(NatReport::default(), Vec::new(), t0 + OBSERVED_FOR);
        assert!(e.own.candidates.is_empty());
    }
}
