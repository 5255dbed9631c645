//! `/metrics`: a snapshot in Prometheus's text exposition format.

use crate::types::{Peer, Snapshot};

/// A metric read from a `T`: its name, type and help text, and how to read it.
struct Metric<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    sample: fn(&T) -> u64,
}

const fn m<T>(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    sample: fn(&T) -> u64,
) -> Metric<T> {
    Metric {
        name,
        kind,
        help,
        sample,
    }
}

/// One sample per peer, under the names and labels the WireGuard exporters share
/// (`prometheus_wireguard_exporter`, `mdlayher/wireguard_exporter`): `device` and `public_key`, with the seat
/// beside them, so that their dashboards and alerts work on a mesh node as they are.
const PER_PEER: &[Metric<Peer>] = &[
    m(
        "wireguard_peer_receive_bytes_total",
        "counter",
        "Bytes received from each peer.",
        |p| p.rx_bytes,
    ),
    m(
        "wireguard_peer_transmit_bytes_total",
        "counter",
        "Bytes sent to each peer.",
        |p| p.tx_bytes,
    ),
    m(
        "wireguard_latest_handshake_seconds",
        "gauge",
        "Unix time of each peer's latest handshake (0: never).",
        |p| p.latest_handshake.unwrap_or(0),
    ),
    m(
        "dstack_mesh_peer_healthy",
        "gauge",
        "1 while each peer answers (heard from within the agent's peer timeout), else 0.",
        |p| u64::from(p.healthy),
    ),
    m(
        "dstack_mesh_peer_last_heard_seconds",
        "gauge",
        "Unix time each peer was last heard from: anything it sent, answers to probes included (0: never).",
        |p| p.last_heard.unwrap_or(0),
    ),
    m(
        "dstack_mesh_peer_punch_attempts_total",
        "counter",
        "Hole-punching attempts toward each peer (while it is relayed).",
        |p| p.punch_attempts,
    ),
];

/// The names the per-peer series had before 0.2, labelled with the seat alone: served until 0.3, so that
/// dashboards and alerts have a release to move.
const DEPRECATED_PER_PEER: &[Metric<Peer>] = &[
    m(
        "dstack_mesh_peer_latest_handshake_seconds",
        "gauge",
        "Deprecated, removed in 0.3: use wireguard_latest_handshake_seconds.",
        |p| p.latest_handshake.unwrap_or(0),
    ),
    m(
        "dstack_mesh_peer_rx_bytes_total",
        "counter",
        "Deprecated, removed in 0.3: use wireguard_peer_receive_bytes_total.",
        |p| p.rx_bytes,
    ),
    m(
        "dstack_mesh_peer_tx_bytes_total",
        "counter",
        "Deprecated, removed in 0.3: use wireguard_peer_transmit_bytes_total.",
        |p| p.tx_bytes,
    ),
];

/// One sample for the node.
const NODE: &[Metric<Snapshot>] = &[
    m(
        "dstack_mesh_peers_configured",
        "gauge",
        "Peers in the desired set.",
        |s| s.peers.len() as u64,
    ),
    m(
        "dstack_mesh_peers_healthy",
        "gauge",
        "Peers with a recent WireGuard handshake.",
        |s| s.peers.iter().filter(|p| p.healthy).count() as u64,
    ),
    m(
        "dstack_mesh_reconciles_total",
        "counter",
        "Reconciles that changed the device.",
        |s| s.counters.reconciles,
    ),
    m(
        "dstack_mesh_registrations_total",
        "counter",
        "Peer records this node registered.",
        |s| s.counters.registrations,
    ),
    m(
        "dstack_mesh_rpc_errors_total",
        "counter",
        "Failed RPC requests.",
        |s| s.counters.rpc_errors,
    ),
    m(
        "dstack_mesh_chain_requests_total",
        "counter",
        "JSON-RPC requests made to follow the chain.",
        |s| s.counters.chain_requests,
    ),
    m(
        "dstack_mesh_chain_head_polls_total",
        "counter",
        "Of the chain requests, polls of the chain's head (one per poll interval; none for announced heads).",
        |s| s.counters.chain_head_polls,
    ),
    m(
        "dstack_mesh_chain_subscribed",
        "gauge",
        "1 while new heads come by WebSocket subscription; 0 while the agent polls.",
        |s| u64::from(s.status.chain.subscribed),
    ),
    m(
        "dstack_mesh_invalid_records_total",
        "counter",
        "On-chain records skipped because they failed local checks.",
        |s| s.counters.invalid_records,
    ),
    m(
        "dstack_mesh_is_leader",
        "gauge",
        "1 while this node leads under a lease that holds (isSelf).",
        |s| u64::from(s.leader.is_self),
    ),
    m(
        "dstack_mesh_leader_term",
        "gauge",
        "The fencing term of the leader this node knows: the contract's leaderTerm, one more at every leader change.",
        |s| s.leader.term.unwrap_or(0),
    ),
    m(
        "dstack_mesh_leader_current",
        "gauge",
        "1 while what this node knows of the leader was confirmed less than a lease ago (on a follower, by the leader answering as leading).",
        |s| u64::from(s.leader.state == crate::types::Freshness::Current),
    ),
    m(
        "dstack_mesh_healthy",
        "gauge",
        "1 while this node is healthy by the application's report and the agent's check; an unhealthy node never leads.",
        |s| u64::from(s.leader.healthy),
    ),
    m(
        "dstack_mesh_leader_stepdowns_total",
        "counter",
        "Times this node stopped reporting itself leader while the contract still named it.",
        |s| s.counters.election.stepdowns,
    ),
    m(
        "dstack_mesh_leader_handoffs_total",
        "counter",
        "Hand-offs this node made, as the leader, that landed: the term went to another seat without a failover.",
        |s| s.counters.election.handoffs,
    ),
    m(
        "dstack_mesh_leader_handoffs_given_up_total",
        "counter",
        "Hand-offs this node gave up because no seat would take the lead (it led on, or stopped without one).",
        |s| s.counters.election.handoffs_given_up,
    ),
    m(
        "dstack_mesh_heartbeats_refused_total",
        "counter",
        "Leader heartbeats refused: malformed, or not from a member's overlay address.",
        |s| s.counters.election.heartbeats_refused,
    ),
    m(
        "dstack_mesh_leader_token_id",
        "gauge",
        "The leader's seat, 0 while there is none or this node refuses it.",
        |s| s.leader.token_id.unwrap_or(0),
    ),
    m(
        "dstack_mesh_leader_refused",
        "gauge",
        "1 while the contract names leader a seat whose evidence this node refuses.",
        |s| u64::from(s.leader.refused_seat.is_some()),
    ),
    m(
        "dstack_mesh_votes_cast_total",
        "counter",
        "No-confidence votes this node cast against an unreachable or refused leader.",
        |s| s.counters.election.votes_cast,
    ),
    m(
        "dstack_mesh_votes_withdrawn_total",
        "counter",
        "Votes this node withdrew.",
        |s| s.counters.election.votes_withdrawn,
    ),
    m(
        "dstack_mesh_elections_total",
        "counter",
        "electLeader calls this node made with no leader.",
        |s| s.counters.election.elections,
    ),
    m(
        "dstack_mesh_ballot_failures_total",
        "counter",
        "Votes, withdrawals and elections that failed.",
        |s| s.counters.election.failures,
    ),
    m(
        "dstack_mesh_ballots_held_total",
        "counter",
        "Ballots due that this node held back, having sent one less than a leader timeout before.",
        |s| s.counters.election.ballots_held,
    ),
    m(
        "dstack_mesh_relay_streams_open",
        "gauge",
        "Relay streams open now, dialled and accepted.",
        |s| s.counters.relay.streams_open,
    ),
    m(
        "dstack_mesh_relay_streams_accepted_total",
        "counter",
        "Relay streams this node's endpoint accepted.",
        |s| s.counters.relay.streams_accepted,
    ),
    m(
        "dstack_mesh_relay_streams_dialled_total",
        "counter",
        "Relay streams this node dialled to peers' relays.",
        |s| s.counters.relay.streams_dialled,
    ),
    m(
        "dstack_mesh_relay_streams_refused_total",
        "counter",
        "Relay streams refused because too many were open.",
        |s| s.counters.relay.streams_refused,
    ),
    m(
        "dstack_mesh_relay_streams_malformed_total",
        "counter",
        "Relay streams closed because a frame was not a WireGuard message.",
        |s| s.counters.relay.streams_malformed,
    ),
    m(
        "dstack_mesh_relay_rx_bytes_total",
        "counter",
        "WireGuard bytes received through relay streams.",
        |s| s.counters.relay.bytes_in,
    ),
    m(
        "dstack_mesh_relay_tx_bytes_total",
        "counter",
        "WireGuard bytes sent through relay streams.",
        |s| s.counters.relay.bytes_out,
    ),
    m(
        "dstack_mesh_unknown_peer_datagrams_udp_total",
        "counter",
        "Deprecated, removed in 0.3: use dstack_mesh_dropped_datagrams_total{reason=\"unknown_peer\",transport=\"udp\"}.",
        |s| s.counters.relay.unknown_udp,
    ),
    m(
        "dstack_mesh_unknown_peer_datagrams_relay_total",
        "counter",
        "Deprecated, removed in 0.3: use dstack_mesh_dropped_datagrams_total{reason=\"unknown_peer\",transport=\"relay\"}.",
        |s| s.counters.relay.unknown_relay,
    ),
    m(
        "dstack_mesh_registered",
        "gauge",
        "1 once this node's record is on-chain as it wants it.",
        |s| u64::from(s.status.node.registered),
    ),
    m(
        "dstack_mesh_registration_failing",
        "gauge",
        "1 while this node cannot register (no seat bound to it, no funded sender, a reverting call): the API's registrationError says why.",
        |s| u64::from(s.status.node.registration_error.is_some()),
    ),
    m(
        "dstack_mesh_chain_lag_blocks",
        "gauge",
        "Chain head minus the last processed block.",
        |s| s.status.chain.lag.unwrap_or(0),
    ),
    m(
        "dstack_mesh_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        |s| s.status.uptime_secs,
    ),
];

/// Renders the Prometheus text exposition of a snapshot.
pub fn metrics(s: &Snapshot) -> String {
    let mut out = Exposition::default();
    // As Prometheus's own exporters: the build as labels on a constant 1, and the start as the standard name.
    out.metric(
        "dstack_mesh_build_info",
        "gauge",
        "The agent's version and the commit it was built from, as labels; always 1.",
        [(
            format!(
                "{{version=\"{}\",commit=\"{}\"}}",
                escape(&s.status.version),
                escape(s.status.commit.as_deref().unwrap_or("unknown"))
            ),
            1,
        )],
    );
    out.metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        s.status.started_at.map(|t| (String::new(), t)),
    );
    for x in NODE {
        out.metric(x.name, x.kind, x.help, [(String::new(), (x.sample)(s))]);
    }
    per_peer(&mut out, s);
    // Tailscale's way: one counter, the cause in a label.
    out.metric(
        "dstack_mesh_dropped_datagrams_total",
        "counter",
        "Datagrams dropped, by reason (unknown_peer: from a key that is no member) and by the transport they came on (udp, relay).",
        [
            (
                "{reason=\"unknown_peer\",transport=\"udp\"}".to_owned(),
                s.counters.relay.unknown_udp,
            ),
            (
                "{reason=\"unknown_peer\",transport=\"relay\"}".to_owned(),
                s.counters.relay.unknown_relay,
            ),
        ],
    );
    out.seconds(
        "dstack_mesh_leader_view_age_seconds",
        "How long ago what this node knows of the leader was confirmed (absent: never).",
        s.leader.age_ms,
    );
    out.seconds(
        "dstack_mesh_leader_lease_seconds",
        "While this node leads: how much longer its lease holds at most.",
        s.leader.lease_ms,
    );
    out.seconds(
        "dstack_mesh_leader_timeout_seconds",
        "The leader timeout this node keeps (--leader-timeout, or the chain's pace's); the lease is half of it.",
        s.leader.timeout_ms,
    );
    labelled(&mut out, s);
    forwarded(&mut out, s);
    for (name, help, latency) in [
        (
            "dstack_mesh_chain_poll_duration_seconds",
            "How long each poll of the chain took: its head, and the logs of new blocks.",
            &s.counters.chain_polls,
        ),
        (
            "dstack_mesh_reconcile_duration_seconds",
            "How long each change of the interface took, from the plan to the device having it.",
            &s.counters.reconcile,
        ),
        (
            "dstack_mesh_ballot_duration_seconds",
            "How long each ballot of this node took, from sending it to its receipt.",
            &s.counters.election.ballots,
        ),
        (
            "dstack_mesh_handoff_duration_seconds",
            "How long each hand-off of this node took, from releasing its term to its view showing the next.",
            &s.counters.election.handoff_times,
        ),
    ] {
        out.histogram(name, help, latency);
    }
    out.0
}

/// The forwarded ports (`--leader-port`, `--replica-port`), labelled by role and listening port; every
/// refusal reason has a sample, 0 included, so that a sum is 0 rather than empty.
fn forwarded(out: &mut Exposition, s: &Snapshot) {
    let labels =
        |p: &crate::ForwardedPort| format!("role=\"{}\",port=\"{}\"", p.role.as_str(), p.listen);
    let ports = &s.status.ports;
    out.metric(
        "dstack_mesh_forwarded_connections_total",
        "counter",
        "Connections a forwarded port carried (opened), and of those the ones closed because their route stopped holding (fenced: a new term, a lapsed lease, a replica gone) or whose service did not accept them (unreachable).",
        ports.iter().flat_map(|p| {
            let l = labels(p);
            [
                ("opened", p.total.opened),
                ("fenced", p.total.fenced),
                ("unreachable", p.total.unreachable),
            ]
            .map(|(outcome, n)| (format!("{{{l},outcome=\"{outcome}\"}}"), n))
        }),
    );
    out.metric(
        "dstack_mesh_forwarded_refused_total",
        "counter",
        "Connections a forwarded port closed at once, by reason (no-leader, not-current, no-address, not-granted).",
        ports.iter().flat_map(|p| {
            let l = labels(p);
            crate::forwarded::Refusal::ALL.map(|r| {
                let reason = r.as_str();
                (
                    format!("{{{l},reason=\"{reason}\"}}"),
                    p.refused.get(reason).copied().unwrap_or(0),
                )
            })
        }),
    );
    out.metric(
        "dstack_mesh_forwarded_bytes_total",
        "counter",
        "Bytes a forwarded port carried, to the service and from it.",
        ports.iter().flat_map(|p| {
            let l = labels(p);
            [
                ("to_service", p.total.bytes_to_service),
                ("from_service", p.total.bytes_from_service),
            ]
            .map(|(d, n)| (format!("{{{l},direction=\"{d}\"}}"), n))
        }),
    );
    out.metric(
        "dstack_mesh_forwarded_open_connections",
        "gauge",
        "Connections a forwarded port carries now.",
        ports.iter().map(|p| (format!("{{{}}}", labels(p)), p.open)),
    );
}

/// The text exposition as it is written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A metric with its help, its type and one sample per label set.
    fn metric(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            self.0.push_str(&format!("{name}{labels} {v}\n"));
        }
    }

    /// A histogram in seconds: its cumulative buckets, its sum and its count.
    fn histogram(&mut self, name: &str, help: &str, latency: &crate::latency::Latency) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (le, n) in latency.cumulative() {
            self.0
                .push_str(&format!("{name}_bucket{{le=\"{le}\"}} {n}\n"));
        }
        let micros = latency.sum_micros;
        self.0.push_str(&format!(
            "{name}_sum {}.{:06}\n{name}_count {}\n",
            micros / 1_000_000,
            micros % 1_000_000,
            latency.count
        ));
    }

    /// A gauge in seconds, as Prometheus counts time, from milliseconds; absent rather than 0 when there is
    /// nothing to measure.
    fn seconds(&mut self, name: &str, help: &str, ms: Option<u64>) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        if let Some(ms) = ms {
            self.0
                .push_str(&format!("{name} {}.{:03}\n", ms / 1000, ms % 1000));
        }
    }
}

/// The labels that name a peer: the interface, its key and its seat.
fn peer_labels(s: &Snapshot, p: &Peer) -> String {
    let device = s.status.node.interface.as_deref().unwrap_or("");
    format!(
        "device=\"{}\",public_key=\"{}\",token_id=\"{}\"",
        escape(device),
        p.wg_public_key.map(|k| k.to_string()).unwrap_or_default(),
        p.token_id
    )
}

/// One sample per peer of each per-peer metric, and of the deprecated ones (labelled by seat only).
fn per_peer(out: &mut Exposition, s: &Snapshot) {
    for x in PER_PEER {
        let samples = s
            .peers
            .iter()
            .map(|p| (format!("{{{}}}", peer_labels(s, p)), (x.sample)(p)));
        out.metric(x.name, x.kind, x.help, samples);
    }
    for x in DEPRECATED_PER_PEER {
        let samples = s
            .peers
            .iter()
            .map(|p| (format!("{{token_id=\"{}\"}}", p.token_id), (x.sample)(p)));
        out.metric(x.name, x.kind, x.help, samples);
    }
}

/// The metrics whose labels say what a thing is: refusals by reason, each peer's path, the NAT's mapping.
fn labelled(out: &mut Exposition, s: &Snapshot) {
    // One sample per reason, at 0 when no seat is refused for it: a sum over reasons is then 0, not empty.
    let mut refused: std::collections::BTreeMap<&str, u64> =
        crate::REFUSAL_KINDS.iter().map(|k| (*k, 0)).collect();
    for r in &s.refused {
        *refused.entry(r.kind.as_str()).or_default() += 1;
    }
    out.metric(
        "dstack_mesh_peers_refused",
        "gauge",
        "Seats with a record that this node does not configure because their attestation evidence was refused, by reason.",
        refused
            .into_iter()
            .map(|(kind, n)| (format!("{{reason=\"{kind}\"}}"), n)),
    );
    let mut below: std::collections::BTreeMap<&str, u64> =
        [("warned", 0), ("not-admitted", 0)].into_iter().collect();
    // Configured peers, and the not-admitted seats this node never configured (refused, with their stage).
    for stage in s
        .peers
        .iter()
        .filter_map(|p| p.attestation.as_ref()?.tcb_stage.as_deref())
        .chain(s.refused.iter().filter_map(|r| r.stage.as_deref()))
    {
        *below.entry(stage).or_default() += 1;
    }
    out.metric(
        "dstack_mesh_peers_below_tcb_policy",
        "gauge",
        "Seats whose platform is below the cluster's TCB policy, by stage: warned (admitted), or not-admitted (kept only where configured before, else refused as tcb-policy with their stage). Dropped ones are refused as tcb-policy.",
        below
            .into_iter()
            .map(|(stage, n)| (format!("{{stage=\"{stage}\"}}"), n)),
    );
    let paths = s.peers.iter().filter_map(|p| {
        let path = p.path?;
        let relay = p.relay_url.as_deref().unwrap_or("");
        let relay_seat = p.relay_seat.map(|t| t.to_string()).unwrap_or_default();
        let labels = format!(
            "{{{},path=\"{}\",relay_url=\"{}\",relay_seat=\"{relay_seat}\"}}",
            peer_labels(s, p),
            path.as_str(),
            escape(relay)
        );
        Some((labels, 1))
    });
    out.metric(
        "dstack_mesh_peer_path",
        "gauge",
        "Which way each WireGuard peer's datagrams go (direct, punched, peer-relay or relay), its relay URL, and the seat relaying for the pair (peer-relay).",
        paths,
    );
    // One sample, labelled with what the STUN servers showed; none without the userspace device.
    out.metric(
        "dstack_mesh_nat_mapping",
        "gauge",
        "How the NAT in front of this node maps its WireGuard socket, as STUN servers show it.",
        s.status
            .nat
            .iter()
            .map(|n| (format!("{{mapping=\"{}\"}}", n.mapping), 1)),
    );
    let v = &s.status.chain.verification;
    out.metric(
        "dstack_mesh_chain_verified",
        "gauge",
        "1 when every read of the chain this node acts on must be answered alike by a quorum of several providers, 0 with one provider (unverified).",
        [(String::new(), u64::from(v.verified))],
    );
    out.metric(
        "dstack_mesh_rpc_answers_total",
        "counter",
        "Each provider's answers: among the quorum's (agreed), unlike it and ignored (dissented), or none (failed).",
        v.providers.iter().flat_map(|p| {
            [
                ("agreed", p.agreed),
                ("dissented", p.dissented),
                ("failed", p.failed),
            ]
            .map(|(outcome, n)| {
                (
                    format!("{{provider=\"{}\",outcome=\"{outcome}\"}}", escape(&p.url)),
                    n,
                )
            })
        }),
    );
    out.metric(
        "dstack_mesh_rpc_provider_up",
        "gauge",
        "1 while a provider answers, 0 while it does not (down, refusing, or keeping a request waiting for seconds).",
        v.providers.iter().map(|p| {
            (
                format!("{{provider=\"{}\"}}", escape(&p.url)),
                u64::from(p.failing.is_none()),
            )
        }),
    );
    let mut failing: std::collections::BTreeMap<&str, u64> =
        crate::FAULT_DEPENDENCIES.iter().map(|d| (*d, 0)).collect();
    for f in &s.status.faults {
        *failing.entry(f.dependency.as_str()).or_default() += 1;
    }
    out.metric(
        "dstack_mesh_dependency_failing",
        "gauge",
        "Outside dependencies that fail now, by kind (rpc, chain, pccs, dstack, state-dir, relay, stun): how many faults /v1/status names for each, 0 while it works.",
        failing
            .into_iter()
            .map(|(d, n)| (format!("{{dependency=\"{d}\"}}"), n)),
    );
    out.metric(
        "dstack_mesh_rpc_splits_total",
        "counter",
        "Reads no answer of which reached the providers' quorum; the view stayed as it was.",
        [(String::new(), v.splits)],
    );
    policy(out, s);
    peer_relay(out, s);
    out.metric(
        "dstack_mesh_nat_candidates",
        "gauge",
        "Addresses this node publishes to its peers for a direct path.",
        s.status
            .nat
            .iter()
            .map(|n| (String::new(), n.candidates.len() as u64)),
    );
}

/// The grants between seats: whether in force and at which version, and what they dropped here by rule;
/// every rule has a sample once the policy is read, 0 included, so that a rate over them is 0, not empty.
fn policy(out: &mut Exposition, s: &Snapshot) {
    let p = s.status.policy.as_ref();
    out.metric(
        "dstack_mesh_policy_enforced",
        "gauge",
        "1 while the cluster's grants between seats are in force (a peer reaches only what a grant allows it), 0 while not; absent until read.",
        p.map(|p| (String::new(), u64::from(p.enforced))),
    );
    out.metric(
        "dstack_mesh_policy_version",
        "gauge",
        "The version of the grants between seats this node enforces (one more at every change on-chain).",
        p.map(|p| (String::new(), p.version)),
    );
    out.metric(
        "dstack_mesh_policy_pending",
        "gauge",
        "1 while a version of the grants between seats read from the chain is not in force here yet (the interface still enforces dstack_mesh_policy_version), 0 once it is; alert on it staying 1.",
        p.map(|p| (String::new(), u64::from(p.pending.is_some()))),
    );
    out.metric(
        "dstack_mesh_policy_dropped_total",
        "counter",
        "Peers' packets the grants between seats dropped on arrival, by rule: no-grant (no grant lets the peer reach that port), protocol (neither ICMP, TCP nor UDP), malformed.",
        p.into_iter().flat_map(|p| {
            p.dropped
                .by_rule()
                .map(|(rule, n)| (format!("{{rule=\"{rule}\"}}"), n))
        }),
    );
}

/// This node as a peer relay, while it can be one (the userspace device): refusals and drops by reason,
/// every reason sampled, 0 included.
fn peer_relay(out: &mut Exposition, s: &Snapshot) {
    const REFUSED: [&str; 7] = [
        "not-relaying",
        "not-a-seat",
        "self",
        "peer-not-on-udp",
        "full",
        "seat-limit",
        "released",
    ];
    const DROPPED: [&str; 6] = [
        "unknown-vni",
        "not-ready",
        "stranger",
        "pair-rate",
        "total-rate",
        "malformed",
    ];
    let r = s.status.peer_relay.as_ref();
    let one = |f: fn(&crate::PeerRelayStatus) -> u64| r.map(|r| (String::new(), f(r)));
    let counts = [
        (
            "offering",
            "gauge",
            "1 while this node offers to relay for its peers (--relay-for-peers), 0 while not.",
            one(|r| u64::from(r.offering)),
        ),
        (
            "allocations",
            "gauge",
            "Pairs of seats this node holds a peer-relay allocation for now.",
            one(|r| r.allocations),
        ),
        (
            "granted_total",
            "counter",
            "Peer-relay allocations that became ready (both seats asked).",
            one(|r| r.granted),
        ),
        (
            "forwarded_bytes_total",
            "counter",
            "Bytes this node relayed between two of its peers.",
            one(|r| r.forwarded_bytes),
        ),
        (
            "forwarded_datagrams_total",
            "counter",
            "Datagrams this node relayed between two of its peers.",
            one(|r| r.forwarded_datagrams),
        ),
    ];
    for (name, kind, help, sample) in counts {
        out.metric(
            &format!("dstack_mesh_peer_relay_{name}"),
            kind,
            help,
            sample,
        );
    }
    let by = |reasons: &'static [&'static str], of: fn(&crate::PeerRelayStatus, &str) -> u64| {
        r.into_iter().flat_map(move |r| {
            (reasons.iter()).map(move |why| (format!("{{reason=\"{why}\"}}"), of(r, why)))
        })
    };
    out.metric(
        "dstack_mesh_peer_relay_refused_total",
        "counter",
        "Peer-relay requests this node refused, by reason.",
        by(&REFUSED, |r, why| r.refused.get(why).copied().unwrap_or(0)),
    );
    out.metric(
        "dstack_mesh_peer_relay_dropped_total",
        "counter",
        "Relayed datagrams this node did not forward, by reason (malformed: a header that did not parse).",
        by(&DROPPED, |r, why| match why {
            "malformed" => r.malformed,
            _ => r.dropped.get(why).copied().unwrap_or(0),
        }),
    );
}

/// A label value as the exposition format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
