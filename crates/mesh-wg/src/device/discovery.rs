//! What the device learns of its own reachability, and the candidates it publishes from it: the addresses of
//! its interfaces, the public address and port STUN servers see its WireGuard socket come from (a round of
//! requests every [`ROUND_EVERY`], sent from that socket, their answers handed over by the receive loop; the
//! servers' names resolved again every [`RESOLVE_EVERY`] and after the namespace's links, addresses or routes
//! change), and the addresses peers that reach it directly say they see (`mesh_path`'s
//! [`Reachability::observe`]). A NAT that restarts or remaps is known, and its new mapping published, at the
//! next round.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use tokio::sync::mpsc;
use wg_key::Key;

use mesh_path::nat::NatReport;
use mesh_path::punch::OwnCandidates;
use mesh_path::reachability::Reachability;
use mesh_path::stun::{Round, ServerResult};

use super::outbound::send;
use super::shared::Shared;
use super::udp::WhenFull;
use crate::Error;
use crate::netlink::NetworkChanges;
use crate::peer::Via;

/// How often the STUN servers are asked again. A round costs a 20-byte request per server and its answer,
/// and that buys two things: a NAT that remaps is known, and published, within a
/// second or so, and servers that stop answering are named within this plus a round's timeout (3.5 s), and
/// servers that answer again are seen as soon.
pub(super) const ROUND_EVERY: Duration = Duration::from_secs(1);
/// How often the servers' names are resolved again: not at every round, which would be a DNS query a second.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// How soon names that resolved to nothing are tried again.
const UNRESOLVED_AGAIN: Duration = Duration::from_secs(5);
/// How long a STUN server's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// STUN answers waiting for the discovery loop.
pub(super) const ANSWERS: usize = 64;

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
            send(&sock, &request, &Via::Udp(to), WhenFull::Drop);
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

/// The servers' addresses, resolved again when due.
struct Resolved {
    addrs: Vec<SocketAddr>,
    at: Option<tokio::time::Instant>,
    warned: HashSet<String>,
}

impl Resolved {
    /// The addresses, resolved again first if they are due, or `stale` (the network changed).
    async fn get(&mut self, servers: &[String], stale: bool) -> &[SocketAddr] {
        let again = if self.addrs.is_empty() {
            UNRESOLVED_AGAIN
        } else {
            RESOLVE_EVERY
        };
        if stale || self.at.is_none_or(|t| t.elapsed() >= again) {
            self.addrs = resolve(servers, &mut self.warned).await;
            self.at = Some(tokio::time::Instant::now());
        }
        &self.addrs
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
    let mut resolved = Resolved {
        addrs: Vec::new(),
        at: None,
        warned: HashSet::new(),
    };
    let mut network_changed = false;
    let mut network_news = true;
    let mut unanswered_warned = false;
    if servers.is_empty() {
        tracing::info!(
            "STUN is off: this node publishes its interfaces' addresses and what peers see of it, not its public mapping"
        );
    }
    loop {
        let port = shared.read().listen_port;
        let locals = local_addresses(&shared.ifname, shared.overlay, port);
        let addrs = resolved
            .get(&servers, std::mem::take(&mut network_changed))
            .await
            .to_vec();
        let results = if addrs.is_empty() {
            Vec::new()
        } else {
            round(&shared, &addrs, &mut answers).await
        };
        let local_addrs: Vec<SocketAddr> = locals.iter().map(|l| SocketAddr::V4(*l)).collect();
        let report = NatReport::new(results, &local_addrs, std::time::SystemTime::now());
        let answered = report.servers.iter().filter(|s| s.mapped.is_some()).count();
        if !addrs.is_empty() && answered == 0 {
            if !unanswered_warned {
                tracing::warn!(servers = ?addrs, "no STUN server answered: this node cannot learn its public mapping, so peers behind NAT reach it only through the relay or by what other peers see (is UDP to the servers blocked?)");
                unanswered_warned = true;
            }
        } else if unanswered_warned {
            tracing::info!(answered, "a STUN server answers again");
            unanswered_warned = false;
        }
        let (mapping, mapped, rtt) = (report.mapping, report.mapped.clone(), report.best_rtt());
        let changed = shared.discovered(|d| d.set(report, locals, Instant::now()));
        if changed {
            let own = shared.own_candidates();
            tracing::info!(event = "nat.discovered", %mapping, ?mapped, answered, servers = addrs.len(), ?rtt, candidates = ?own.candidates.iter().map(|c| format!("{} ({})", c.addr, c.source.as_str())).collect::<Vec<_>>(), "this node's candidates");
        }
        // Until the next round; a change of the network meanwhile has the names resolved again for it.
        // Answers that come meanwhile belong to no round.
        let next = tokio::time::sleep(ROUND_EVERY);
        tokio::pin!(next);
        loop {
            tokio::select! {
                () = &mut next => break,
                answer = answers.recv() => if answer.is_none() {
                    return Ok(());
                },
                change = changes.next(), if network_news && !network_changed => {
                    if change.is_some() {
                        network_changed = true;
                        tracing::debug!(event = "nat.network_changed", "the network changed: the STUN servers' names are resolved again");
                    } else {
                        // No more news of the network: the timer alone, then.
                        network_news = false;
                    }
                }
            }
        }
    }
}

impl Shared {
    /// Runs `f` on what the device knows of its reachability.
    pub(crate) fn discovered<T>(&self, f: impl FnOnce(&mut Reachability) -> T) -> T {
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
