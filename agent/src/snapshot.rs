//! What the API serves, rendered from what the tasks publish. Pure, so it is tested without any of them.
//!
//! A peer is **healthy** while it has been heard from within the peer timeout (`--peer-timeout-ms`,
//! [`mesh_wg::Liveness`]): anything it sent that authenticated, its answers to the device's probes
//! included. It is then offered as `wireguard` at its overlay address, else as `tls-gateway` at its gateway
//! URL if it has one, else `unreachable`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::Address;
use mesh_api::{
    BallotKind, BallotReport, ChainStatus, CheckSignal, ConnectionKind, Counters, HandingOff,
    Leader, LeaderClock, Mode, Node, Path, Peer, RefusedPeer, Snapshot, Status,
};
use mesh_chain::election::Ballot;
use mesh_chain::membership::Member;
use mesh_chain::redact::RedactedUrl;
use mesh_chain::roster::Members;
use mesh_wg::{Key, Liveness, PathKind};

use crate::attestation::Attested;
use crate::leadership::lease::{Claim, Timing};
use crate::leadership::state::LeaderState;
use crate::state::{ChainState, MeshState, PeerStats, RegState};

/// What the snapshot says of this node that no task learns: fixed once the node's identity is known.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub instance_id: String,
    pub app_id: Address,
    /// Absent in TLS mode.
    pub wg_public_key: Option<Key>,
    /// The endpoint it registers, `IP:port`.
    pub endpoint: Option<String>,
    pub gateway_url: Option<String>,
}

/// What the snapshot says of the agent: fixed at start.
#[derive(Debug, Clone)]
pub struct AgentFacts {
    pub mode: Mode,
    pub contract: Address,
    /// The RPC, shown with its credentials redacted, and scrubbed from the errors shown.
    pub rpc: RedactedUrl,
    /// How long a peer may be silent and be shown healthy.
    pub liveness: Liveness,
    /// The commit the agent was built from.
    pub commit: &'static str,
    /// When the agent started, on the wall clock.
    pub started_at: std::time::SystemTime,
}

/// When a snapshot is rendered: on the wall clock for what is shown as a date, and on the monotonic clock
/// for what is judged by age (a peer's silence).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// `at` on the wall clock, as far as this clock can tell.
    fn wall_of(&self, at: Instant) -> SystemTime {
        self.wall - self.mono.saturating_duration_since(at)
    }
}

/// The snapshot before anything is known: the agent serves it while it waits for dstack.
pub fn initial(agent: &AgentFacts) -> Snapshot {
    render(
        agent,
        &NodeFacts::default(),
        Published {
            chain: &ChainState::default(),
            reg: &RegState::default(),
            mesh: &MeshState::default(),
            leader: &LeaderState::default(),
            check: None,
            dstack: None,
        },
        Duration::ZERO,
        Clock::now(),
    )
}

/// One peer as applications see it.
fn peer(member: &Member, stats: &PeerStats, liveness: &Liveness, now: Clock) -> Peer {
    let stat = member.wg_public_key.and_then(|k| stats.get(&k));
    let handshake = stat.and_then(|s| s.last_handshake);
    let heard = stat.and_then(|s| s.last_heard);
    // Each peer to its own bound: the timeout while something watches it, the idle bound otherwise.
    let bound = stat.map_or(*liveness, |s| Liveness {
        timeout: s.health_timeout,
    });
    let healthy = bound.alive(heard, now.mono);
    let connection = if healthy {
        ConnectionKind::Wireguard
    } else if member.gateway_url.is_some() {
        ConnectionKind::TlsGateway
    } else {
        ConnectionKind::Unreachable
    };
    let address = match connection {
        ConnectionKind::Wireguard => Some(member.overlay_ip.to_string()),
        ConnectionKind::TlsGateway => member.gateway_url.clone(),
        ConnectionKind::Unreachable => None,
    };
    Peer {
        token_id: member.token_id,
        instance_id: member.instance_id.clone(),
        overlay_ip: member.overlay_ip,
        wg_public_key: member.wg_public_key,
        // Where WireGuard reaches it now (it may have roamed), else where it registered.
        endpoint: stat
            .and_then(|s| s.endpoint)
            .or(member.endpoint)
            .map(|e| e.to_string()),
        gateway_url: member.gateway_url.clone(),
        connection,
        path: stat.map(|s| match s.path {
            PathKind::Direct => Path::Direct,
            PathKind::Punched => Path::Punched,
            PathKind::PeerRelay => Path::PeerRelay,
            PathKind::Relay => Path::Relay,
        }),
        relay_url: stat.and_then(|s| s.relay.as_ref()).map(ToString::to_string),
        // Filled in by the caller, which knows every member's key.
        relay_seat: None,
        path_reason: stat.and_then(|s| s.punch.relay_reason.clone()),
        candidates: stat.map_or_else(Vec::new, |s| candidates(&s.punch.candidates)),
        punch_attempts: stat.map_or(0, |s| s.punch.attempts),
        address,
        healthy,
        latest_handshake: handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        last_heard: heard
            .and_then(|t| now.wall_of(t).duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        rx_bytes: stat.map_or(0, |s| s.rx_bytes),
        tx_bytes: stat.map_or(0, |s| s.tx_bytes),
        leader: false,
        draining: false,
        attestation: None,
        holder: None,
        policy: None,
    }
}

/// The seat of the member that relays for this node's pair with `member`, while the pair goes through one;
/// `seats` gives each member's seat by key.
fn relay_seat<'a>(
    member: &Member,
    stats: &PeerStats,
    seats: impl FnOnce() -> &'a HashMap<Key, u64>,
) -> Option<u64> {
    let relay = stats.get(&member.wg_public_key?)?.peer_relay?;
    seats().get(&relay).copied()
}

/// Each member's seat by its key.
fn seats_by_key(members: &Members) -> HashMap<Key, u64> {
    members
        .values()
        .filter_map(|m| Some((m.wg_public_key?, m.token_id)))
        .collect()
}

/// Candidates as the API shows them.
fn candidates(list: &[mesh_wg::Candidate]) -> Vec<mesh_api::Candidate> {
    list.iter()
        .map(|c| mesh_api::Candidate {
            address: c.addr.to_string(),
            source: c.source.as_str().to_owned(),
        })
        .collect()
}

/// What the device knows of its NAT, as the API shows it.
fn nat(status: &mesh_wg::NatStatus) -> mesh_api::Nat {
    let r = &status.report;
    mesh_api::Nat {
        mapping: r.mapping.as_str().to_owned(),
        mapped: r.mapped.iter().map(ToString::to_string).collect(),
        servers: r
            .servers
            .iter()
            .map(|s| mesh_api::StunServer {
                server: s.server.to_string(),
                mapped: s.mapped.map(|m| m.to_string()),
                rtt_ms: s
                    .rtt
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect(),
        candidates: candidates(&status.candidates),
        checked_at: r
            .checked_at
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
    }
}

/// What every task published, as the publisher last read it.
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    pub chain: &'a ChainState,
    pub reg: &'a RegState,
    pub mesh: &'a MeshState,
    pub leader: &'a LeaderState,
    /// The agent's health check, if it runs one.
    pub check: Option<&'a CheckSignal>,
    /// dstack's guest agent, while it does not answer.
    pub dstack: Option<&'a crate::state::Failing>,
}

/// When a peer shown healthy now will be shown unhealthy unless it is heard from again: the publisher
/// renders again then, so that the API and event streams say so at once.
pub fn health_changes_at(mesh: &MeshState, now: Instant) -> Option<Instant> {
    mesh.stats
        .values()
        .filter_map(|s| s.last_heard.map(|t| t + s.health_timeout))
        .filter(|t| *t > now)
        .min()
}

/// What the peers and the rest of the snapshot both read from the chain's state.
struct Chainwide<'a> {
    view: Option<&'a mesh_chain::view::ChainView>,
    leader_seat: Option<u64>,
    /// This node's seat.
    token: Option<u64>,
    grants: Option<crate::desired::Grants<'a>>,
}

impl<'a> Chainwide<'a> {
    fn of(chain: &'a ChainState, node: &NodeFacts) -> Self {
        let view = chain.view.as_deref();
        let token = chain.seat.token();
        Self {
            view,
            leader_seat: view.and_then(|v| v.leader),
            token,
            grants: chain
                .grants
                .as_deref()
                .map(|g| crate::desired::Grants::for_node(g, token, Some(node.app_id))),
        }
    }
}

/// The snapshot of everything the tasks published, at `now`, `uptime` after start.
pub fn render(
    agent: &AgentFacts,
    node: &NodeFacts,
    tasks: Published<'_>,
    uptime: Duration,
    now: Clock,
) -> Snapshot {
    let peers = peers(agent, node, tasks, now);
    render_with(agent, node, tasks, peers, uptime, now)
}

/// The peers as applications see them, from what the tasks published, at `now`. Apart from what the tasks
/// publish, they move only when a peer's silence reaches its bound ([`health_changes_at`]).
pub fn peers(
    agent: &AgentFacts,
    node: &NodeFacts,
    tasks: Published<'_>,
    now: Clock,
) -> Arc<[Peer]> {
    let Published {
        chain,
        mesh,
        leader: election,
        ..
    } = tasks;
    let Chainwide {
        view,
        leader_seat,
        grants,
        ..
    } = Chainwide::of(chain, node);
    // Built at the first peer reached through a relay, if any: a search of the members for each such peer
    // was quadratic in the seats.
    let seats = std::cell::OnceCell::new();
    mesh.members
        .values()
        .map(|m| Peer {
            policy: policy::peer(grants, m, m.wg_public_key.and_then(|k| mesh.stats.get(&k))),
            leader: Some(m.token_id) == leader_seat,
            draining: election.draining_peers.contains(&m.token_id),
            attestation: chain.attestations.get(&m.token_id).map(|a| a.to_api()),
            holder: view.and_then(|v| v.holders.get(&m.token_id)).copied(),
            relay_seat: relay_seat(m, &mesh.stats, || {
                seats.get_or_init(|| seats_by_key(&mesh.members))
            }),
            ..peer(m, &mesh.stats, &agent.liveness, now)
        })
        .collect()
}

/// The snapshot of everything the tasks published, with `peers` as [`peers`] gives them for the same.
pub fn render_with(
    agent: &AgentFacts,
    node: &NodeFacts,
    tasks: Published<'_>,
    peers: Arc<[Peer]>,
    uptime: Duration,
    now: Clock,
) -> Snapshot {
    let Published {
        chain,
        reg,
        mesh,
        leader: election,
        check,
        dstack,
    } = tasks;
    let Chainwide {
        view,
        leader_seat,
        token,
        grants,
    } = Chainwide::of(chain, node);
    let refused = refused_peers(chain, token);
    let status = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: Some(agent.commit.to_owned()),
        started_at: agent
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
        mode: agent.mode,
        backend: mesh.device.as_ref().map(|d| d.backend.to_owned()),
        node: Node {
            draining: election.draining,
            ..node_status(agent, node, chain, reg, mesh)
        },
        chain: chain_status(agent, chain, reg, now.mono),
        uptime_secs: uptime.as_secs(),
        peers_configured: peers.len(),
        peers_healthy: peers.iter().filter(|p| p.healthy).count(),
        peers_refused: refused.len(),
        nat: mesh.nat.as_ref().map(nat),
        election: election_of(election, now, &agent.rpc),
        ports: Vec::new(),
        faults: crate::faults::faults(
            crate::faults::Sources {
                chain,
                mesh,
                dstack,
                following: chain.error.as_ref().map(|f| f.render(&agent.rpc)),
            },
            now.wall,
            now.mono,
        ),
        policy: policy::status(
            mesh.policy
                .as_deref()
                .map(|p| crate::desired::Grants::for_node(p, token, Some(node.app_id))),
            grants,
            &mesh.policy_dropped,
        ),
        peer_relay: mesh.peer_relay.as_ref().map(peer_relay::status),
    };
    let refused_kind = |seat: u64| match chain.attestations.get(&seat).map(AsRef::as_ref) {
        Some(Attested::Refused { kind, .. }) => Some(*kind),
        _ => None,
    };
    let leader = Leader {
        clock: clock_of(agent, chain, election, leader_seat, token),
        timeout_ms: chain
            .leader_timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        term_reason: view
            .and_then(|v| v.term_reason)
            .map(|r| r.as_str().to_owned()),
        handing_off: election.handoff.as_ref().map(|h| HandingOff {
            term: h.term,
            to: h.to,
            cause: h.cause.to_owned(),
            since_ms: u64::try_from(now.mono.saturating_duration_since(h.since).as_millis())
                .unwrap_or(u64::MAX),
            error: h.error.as_ref().map(|f| f.render(&agent.rpc)),
        }),
        draining: election
            .draining_peers
            .iter()
            .copied()
            .chain(token.filter(|_| election.draining))
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .collect(),
        ..match leader_seat.and_then(|s| Some((s, refused_kind(s)?))) {
            Some((seat, kind)) => refused_leader(seat, kind, token, view, election),
            None => leader_of(leader_seat, token, view, &peers, election, &status.node),
        }
    };
    Snapshot {
        status,
        peers,
        peers_known: mesh.known,
        refused,
        leader,
        check: check.cloned(),
        counters: Counters {
            reconciles: mesh.reconciles,
            registrations: reg.registrations,
            rpc_errors: chain.rpc_errors.saturating_add(reg.rpc_errors),
            invalid_records: chain.rejected.saturating_add(mesh.invalid_records),
            chain_requests: chain.requests,
            chain_head_polls: chain.head_polls,
            relay: mesh.relay.clone(),
            election: election.counters.clone(),
            chain_polls: chain.poll_latency.clone(),
            reconcile: mesh.reconcile_latency.clone(),
        },
    }
}

/// The seats whose evidence this node refused, but its own (which [`Node::attestation`] shows).
fn refused_peers(chain: &ChainState, token: Option<u64>) -> Vec<RefusedPeer> {
    let view = chain.view.as_deref();
    let instance = |t: &u64| {
        view.and_then(|v| v.bindings.get(t))
            .map(|b| b.instance_id.clone())
            .unwrap_or_default()
    };
    chain
        .attestations
        .iter()
        .filter(|(t, _)| Some(**t) != token)
        .filter_map(|(t, a)| match a.as_ref() {
            Attested::Refused { kind, reason } => Some(RefusedPeer {
                token_id: *t,
                instance_id: instance(t),
                kind: (*kind).to_owned(),
                reason: reason.clone(),
                stage: None,
                stage_until: None,
            }),
            // Not admitted, and not configured before (a node restarted meanwhile, or new): this node does not
            // reach it, and says why rather than leaving it out of every list.
            Attested::BelowPolicy { standing, .. }
                if standing.stage == crate::tcb_stages::Stage::NotAdmitted
                    && !view.is_some_and(|v| v.records.contains_key(t)) =>
            {
                Some(RefusedPeer {
                    token_id: *t,
                    instance_id: instance(t),
                    kind: crate::attestation::TCB_POLICY.to_owned(),
                    reason: format!(
                        "{}; not admitted under the cluster's TCB policy: nodes that configured it before keep it, but this one had not (it started, or restarted, after the grace period), so it does not add it until its platform meets the policy again",
                        standing.shortfall
                    ),
                    stage: Some(standing.stage.as_str().to_owned()),
                    stage_until: standing.until,
                })
            }
            Attested::Verified(_) | Attested::BelowPolicy { .. } => None,
        })
        .collect()
}

/// This node as the status shows it: who it is, its seat and address, its interface, and its registration.
fn node_status(
    agent: &AgentFacts,
    node: &NodeFacts,
    chain: &ChainState,
    reg: &RegState,
    mesh: &MeshState,
) -> Node {
    let view = chain.view.as_deref();
    let token = chain.seat.token();
    Node {
        instance_id: node.instance_id.clone(),
        app_id: node.app_id,
        token_id: token,
        overlay_ip: token.zip(view).and_then(|(t, v)| v.prefix().address(t)),
        wg_public_key: node.wg_public_key,
        interface: mesh.device.as_ref().map(|d| d.ifname.clone()),
        listen_port: mesh.device.as_ref().map(|d| d.listen_port),
        endpoint: node.endpoint.clone(),
        gateway_url: node.gateway_url.clone(),
        registered: reg.registered,
        registration_error: (!reg.registered)
            .then(|| {
                chain
                    .seat_error
                    .as_ref()
                    .map(|p| p.explain(reg.seat_request.as_ref()))
                    .or_else(|| reg.error.as_ref().map(|f| f.render(&agent.rpc)))
            })
            .flatten(),
        attestation: token
            .and_then(|t| chain.attestations.get(&t))
            .map(|a| a.to_api()),
        seat_request: reg.seat_request.map(|r| mesh_api::SeatRequest {
            holder: r.holder,
            on_chain: r.on_chain,
        }),
        draining: false,
    }
}

/// The chain as this node follows it: the contract, how far it has read, and what fails.
fn chain_status(
    agent: &AgentFacts,
    chain: &ChainState,
    reg: &RegState,
    now: Instant,
) -> ChainStatus {
    let view = chain.view.as_deref();
    ChainStatus {
        contract: agent.contract,
        chain_id: view.map(|v| v.chain_id()),
        rpc_url: agent.rpc.to_string(),
        head: chain.head,
        last_processed_block: view.map(|v| v.last_block),
        lag: chain
            .head
            .zip(view)
            .map(|(h, v)| h.saturating_sub(v.last_block)),
        from_cache: chain.from_cache,
        subscribed: chain.subscribed,
        prefix: view.map(|v| v.prefix().to_string()),
        last_error: chain
            .error
            .as_ref()
            .or(reg.error.as_ref())
            .map(|f| f.render(&agent.rpc)),
        verification: verification(&chain.rpcs, now),
    }
}

/// The providers' record, as the API shows it.
fn verification(report: &mesh_chain::quorum::QuorumReport, now: Instant) -> mesh_api::Verification {
    mesh_api::Verification {
        verified: report.verified(),
        quorum: report.quorum,
        providers: report
            .providers
            .iter()
            .map(|p| mesh_api::Provider {
                url: p.url.clone(),
                agreed: p.agreed,
                dissented: p.dissented,
                failed: p.failed,
                dissenting: p.dissenting,
                last_dissent: p.last_dissent.clone(),
                dissented_from: p.dissented_from.clone(),
                failing: p.failing.clone(),
                failing_secs: p
                    .failing_since
                    .map(|t| now.saturating_duration_since(t).as_secs()),
            })
            .collect(),
        splits: report.splits,
        last_split: report.last_split.clone(),
    }
}

/// What the leader's time-dependent fields are worked out from when served ([`Leader::as_of`]). A node's
/// own reads confirm the view, which is all the leader itself needs. A follower in WireGuard mode is
/// current only while the leader itself answers it as leading under the view's term, less than a lease
/// ago: the chain names a leader, but only its heartbeat says it still holds its lease, and a follower's
/// leader port must not send sessions to one that does not (frozen, cut off, or handing its term over).
/// In TLS mode there are no heartbeats, and the reads are all there is. A view from the state file is
/// confirmed by neither.
fn clock_of(
    agent: &AgentFacts,
    chain: &ChainState,
    election: &LeaderState,
    seat: Option<u64>,
    own: Option<u64>,
) -> LeaderClock {
    let read = chain.confirmed_at.filter(|_| !chain.from_cache);
    let follower = seat.is_some() && seat != own;
    let by_leader = election
        .leader_confirmed_at
        .filter(|_| follower && !chain.from_cache);
    let confirmed_at = match (follower, agent.mode) {
        (true, Mode::Wireguard) => by_leader,
        _ => read.max(by_leader),
    };
    LeaderClock {
        // Until the timing is known, nothing is confirmed within it.
        lease: chain
            .leader_timeout
            .map_or(Duration::ZERO, |t| Timing::for_timeout(t).lease),
        confirmed_at,
        claim_until: election.claim.until(),
    }
}

/// This node's vote and last ballot, its time on the wall clock.
fn election_of(election: &LeaderState, now: Clock, rpc: &RedactedUrl) -> mesh_api::Election {
    mesh_api::Election {
        vote: election.vote,
        last_ballot: election.last_ballot.as_ref().map(|b| {
            let (kind, seat) = match b.ballot {
                Ballot::Elect => (BallotKind::Elect, None),
                Ballot::Vote { target } => (BallotKind::Vote, Some(target)),
                Ballot::Withdraw => (BallotKind::Withdraw, b.withdrawn),
            };
            BallotReport {
                kind,
                seat,
                reason: b.reason.clone(),
                outcome: b.outcome,
                error: b.error.as_ref().map(|f| f.render(rpc)),
                sent_at: now
                    .wall_of(b.sent)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            }
        }),
    }
}

/// The leader the contract names when this node refuses its evidence (this node's own included): no leader
/// for applications, the seat named apart, and why.
fn refused_leader(
    seat: u64,
    kind: &str,
    own: Option<u64>,
    view: Option<&mesh_chain::view::ChainView>,
    election: &LeaderState,
) -> Leader {
    let whose = if own == Some(seat) {
        "this node's own evidence is refused by its peers"
    } else {
        "this node refuses its evidence, and votes it out"
    };
    Leader {
        refused_seat: Some(seat),
        term: view.map(|v| v.leader_term),
        healthy: election.health.healthy,
        reason: Some(format!(
            "the contract names seat {seat} leader, but {whose} ({kind}): no leader to follow until another is elected"
        )),
        ..Leader::default()
    }
}

/// The leader as applications see it: reached like any peer, or this node itself, which leads only under
/// its lease ([`crate::leadership::lease`]).
fn leader_of(
    seat: Option<u64>,
    own: Option<u64>,
    view: Option<&mesh_chain::view::ChainView>,
    peers: &[Peer],
    election: &LeaderState,
    node: &Node,
) -> Leader {
    let known = Leader {
        term: view.map(|v| v.leader_term),
        healthy: election.health.healthy,
        ..Leader::default()
    };
    let Some(seat) = seat else {
        return known;
    };
    let named_self = own == Some(seat);
    let is_self = named_self && matches!(election.claim, Claim::Leads { .. });
    let as_peer = peers.iter().find(|p| p.token_id == seat);
    let overlay_ip = view.and_then(|v| v.prefix().address(seat));
    Leader {
        token_id: Some(seat),
        instance_id: if named_self {
            Some(node.instance_id.clone())
        } else {
            view.and_then(|v| v.records.get(&seat))
                .map(|r| r.instance_id.clone())
        },
        overlay_ip,
        address: if named_self {
            overlay_ip.map(|ip| ip.to_string())
        } else {
            as_peer.and_then(|p| p.address.clone())
        },
        is_self,
        reachable: if named_self {
            None
        } else {
            election.answering.get(&seat).copied()
        },
        reason: match &election.claim {
            Claim::Declines(why) if named_self => Some(why.to_string()),
            _ => None,
        },
        ..known
    }
}

mod peer_relay;
mod policy;

#[cfg(test)]
mod tests;
