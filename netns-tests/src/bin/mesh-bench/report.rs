//! What a run measured: the table is printed from it, and it is written to `--json` once, at the end.
//!
//! A run's file is compared with earlier runs' files, so the keys stay as they were: a field's key is its
//! name in camelCase unless it says otherwise (`rssKiBMean`), and a section not run is left out rather than
//! written as null.

use std::fmt;

use serde::ser::SerializeMap as _;
use serde::{Serialize, Serializer};

/// The names of the mesh's tunnel and of the bare link's in a report, beside the references'.
pub(crate) const MESH: &str = "mesh";
pub(crate) const BARE: &str = "bare";

/// Every section that was run; the others are left out of the JSON.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    /// How the agents of the sizes and trace sections follow the chain, in words.
    pub(crate) sizes_follow: &'static str,
    /// Each reference's `--version` line, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) versions: Option<Named<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency: Option<Named<Rtt>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput: Option<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) udp: Option<Udp>,
    /// By variant ([`crate::offloads::VARIANTS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) offloads: Option<Named<ByStreams>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<PolicyCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) relay: Option<Relay>,
    pub(crate) nat: Option<Nat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer_relay: Option<PeerRelayBench>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failover: Option<Failover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) leader_port: Option<LeaderPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sizes: Option<Vec<Size>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<Trace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) thousand: Option<Thousand>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) control_plane: Option<ControlPlane>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) kernel: String,
}

impl Machine {
    pub(crate) fn this() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: kernel.trim().to_owned(),
        }
    }
}

/// Values by name, in the order they were measured: a JSON object whose keys are data (implementations,
/// offload variants, references), not fields.
#[derive(Debug)]
pub(crate) struct Named<T>(pub(crate) Vec<(&'static str, T)>);

impl<T> Named<T> {
    pub(crate) fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// `name: value; name: value`.
impl<T: fmt::Display> fmt::Display for Named<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{name}: {value}")?;
        }
        Ok(())
    }
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One iperf3 run through one implementation, and what it cost the WireGuard process and interface on
/// each side (none for the bare link, which has no sides).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Run {
    /// The receiver's rate.
    pub(crate) gbps: f64,
    /// The sender's TCP retransmissions.
    pub(crate) retransmits: u64,
    /// % of one core over the run's wall time.
    pub(crate) cpu_sender_pct: Option<f64>,
    pub(crate) cpu_receiver_pct: Option<f64>,
    pub(crate) ctx_switches_sender: Option<u64>,
    pub(crate) ctx_switches_receiver: Option<u64>,
    /// Both TUN interfaces' drops.
    pub(crate) tun_drops: Option<u64>,
    pub(crate) tun_drops_sender: Option<u64>,
    pub(crate) tun_drops_receiver: Option<u64>,
    /// Datagrams both namespaces' UDP lost to a full receive buffer.
    pub(crate) udp_rcvbuf_errors: Option<u64>,
}

/// The runs with 1 and with 4 streams.
#[derive(Debug, Serialize)]
pub(crate) struct ByStreams {
    pub(crate) streams1: Run,
    pub(crate) streams4: Run,
}

#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    /// Per run.
    pub(crate) seconds: u32,
    pub(crate) streams1: Streams,
    pub(crate) streams4: Streams,
    /// The mesh's agents' RSS (sending, receiving node), MiB: before its runs, and once the references'
    /// runs after them have left it quiet (what a bulk transfer leaves behind).
    pub(crate) mesh_rss_mib_before: Option<[f64; 2]>,
    pub(crate) mesh_rss_mib_after: Option<[f64; 2]>,
}

impl Throughput {
    pub(crate) fn streams(&self, streams: u32) -> &Streams {
        if streams == 1 {
            &self.streams1
        } else {
            &self.streams4
        }
    }
}

/// One stream count's runs through every implementation, and the mesh's rate over the others'.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Streams {
    /// By implementation, in the table's order; their keys sit beside the ratios'.
    #[serde(flatten)]
    pub(crate) runs: Named<Run>,
    /// The fastest reference.
    pub(crate) best_peer: &'static str,
    pub(crate) mesh_over_best: f64,
    pub(crate) mesh_over_bare: f64,
}

/// The average ping RTT through one implementation, and what it adds over the bare link's (0 for the bare
/// link): with pings 20 ms apart (idle CPUs), and 0.5 ms apart (busy).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Rtt {
    pub(crate) rtt_ms: f64,
    pub(crate) added_ms: f64,
    pub(crate) busy_rtt_ms: f64,
    pub(crate) busy_added_ms: f64,
    /// While one iperf3 stream runs through the same tunnel: the average, over the bare link's under the same
    /// load, and the pings lost.
    pub(crate) loaded_rtt_ms: f64,
    pub(crate) loaded_added_ms: f64,
    pub(crate) loaded_lost: u32,
    /// The same with each node's threads on a CPU of its own, as on two machines: over the bare link's so
    /// pinned, and the pings lost.
    pub(crate) core_each_rtt_ms: f64,
    pub(crate) core_each_added_ms: f64,
    pub(crate) core_each_lost: u32,
    /// CPU time (µs), system calls and context switches of both WireGuard sides per round trip, busy (`perf
    /// stat`); absent for the bare link.
    pub(crate) cpu_us_per_round_trip: Option<f64>,
    pub(crate) syscalls_per_round_trip: Option<f64>,
    pub(crate) switches_per_round_trip: Option<f64>,
    /// The busy pings again with a CPU hog on every core: the average, over the bare link's under the same
    /// hog, and both WireGuard sides' CPU per round trip then.
    pub(crate) hog_rtt_ms: f64,
    pub(crate) hog_added_ms: f64,
    pub(crate) hog_cpu_us_per_round_trip: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Relay {
    pub(crate) rtt_ms: f64,
    pub(crate) bare_rtt_ms: f64,
    pub(crate) added_ms: f64,
    pub(crate) streams1_gbps: f64,
    pub(crate) streams1_retransmits: u64,
    pub(crate) streams4_gbps: f64,
    pub(crate) streams4_retransmits: u64,
}

/// NAT traversal between two nodes behind slirp4netns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Nat {
    /// From the agents' start to the last of them on the relay, then punched (from their logs).
    pub(crate) relayed_after_ms: f64,
    pub(crate) punched_after_ms: f64,
    /// From node 1's NAT restarting to node 2 reaching it again, and the pings meanwhile (20 ms apart).
    pub(crate) remap_recovered_ms: f64,
    pub(crate) remap_pings_sent: u32,
    pub(crate) remap_pings_lost: u32,
    pub(crate) punched: NatWay,
    /// UDP between the hosts dropped: through the relay.
    pub(crate) relayed: NatWay,
    /// The same pair of agents on a plain LAN, no NAT.
    pub(crate) direct: NatWay,
    /// TCP through slirp4netns to the other host, no tunnel.
    pub(crate) slirp: NatWay,
}

/// One way between the two nodes.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NatWay {
    pub(crate) rtt_ms: f64,
    pub(crate) streams1_gbps: f64,
    pub(crate) streams4_gbps: f64,
    pub(crate) streams1_retransmits: u64,
}

/// A pair behind symmetric NATs through a peer relay, against the gateway's relay and a direct path.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PeerRelayBench {
    pub(crate) peer_relay: NatWay,
    pub(crate) gateway: NatWay,
    /// Two agents on a plain LAN: what the relays add to.
    pub(crate) direct: NatWay,
    /// The relay agents' CPU (user and system) per Gbit they forwarded, over the 1- and 4-stream runs.
    pub(crate) relay_cpu_s_per_gbit: f64,
    /// Pings lost (times their interval) each time the relay in use was killed.
    pub(crate) move_gaps_ms: Vec<f64>,
}

/// Times from the leader's cut.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Failover {
    pub(crate) leader_timeout_secs: u64,
    pub(crate) on_chain_ms: f64,
    pub(crate) reported_ms: f64,
    pub(crate) beyond_timeout_ms: f64,
}

/// UDP through each implementation: the highest rate carried with under `max_loss_percent` lost.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Udp {
    pub(crate) datagram_bytes: usize,
    pub(crate) max_loss_percent: f64,
    /// From iperf3 (one datagram per system call), and from a sender that hands the kernel up to 64 KiB of
    /// datagrams per call (UDP GSO, as QUIC stacks send).
    pub(crate) iperf3: UdpRuns,
    pub(crate) gso: UdpRuns,
}

/// Each implementation's highest carried UDP rate from one sender, and the mesh's ratios.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UdpRuns {
    pub(crate) runs: Named<UdpRun>,
    /// The mesh's UDP rate over its TCP rate with one stream, when both were measured.
    pub(crate) mesh_over_tcp: Option<f64>,
    pub(crate) best_peer: Option<&'static str>,
    pub(crate) mesh_over_best: Option<f64>,
    pub(crate) mesh_over_bare: f64,
}

/// One implementation's highest carried UDP rate.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UdpRun {
    /// The rate asked of the sender, and what arrived, in Gbit/s, with the loss.
    pub(crate) target_gbps: f64,
    pub(crate) received_gbps: f64,
    pub(crate) lost_percent: f64,
    /// The sender could send no faster: the figure is the tool's, not the tunnel's.
    pub(crate) sender_bound: bool,
}

/// The leader port against a direct connection to the leader's service.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeaderPort {
    /// From a follower's node: directly over the mesh, and through its port (which forwards over the mesh).
    pub(crate) follower: PortWay,
    /// On the leader's node: to its service on loopback, and through its own port.
    pub(crate) leader: PortWay,
}

/// One way to the leader's service: round trips of one line on one connection (µs), one iperf3 stream, and
/// the CPU of the agent that forwards, over the run through the port.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PortWay {
    pub(crate) direct_rtt_us: f64,
    pub(crate) port_rtt_us: f64,
    pub(crate) added_rtt_us: f64,
    pub(crate) direct_p99_us: f64,
    pub(crate) port_p99_us: f64,
    pub(crate) direct_gbps: f64,
    pub(crate) port_gbps: f64,
    pub(crate) agent_cpu_percent: f64,
}

/// One mesh size. The times in ms are from the block that holds the change to the nodes' APIs showing it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Size {
    pub(crate) nodes: usize,
    /// Until every agent but the newcomer was up.
    pub(crate) start_secs: f64,
    /// Then until they formed a full mesh.
    pub(crate) formed_secs: f64,
    /// The newcomer listed by the last node.
    pub(crate) listed_ms: f64,
    pub(crate) listed_median_ms: f64,
    /// The newcomer handshaken by the last node.
    pub(crate) convergence_ms: f64,
    pub(crate) handshake_median_ms: f64,
    pub(crate) cost: Cost,
    /// At one size only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) churn: Option<Churn>,
    /// The newcomer's seat dropped by the last node.
    pub(crate) revocation_ms: f64,
    pub(crate) revocation_median_ms: f64,
}

/// Per agent, the mean and the worst over the agents.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Cost {
    pub(crate) peers: usize,
    pub(crate) cpu_percent_mean: f64,
    pub(crate) cpu_percent_max: f64,
    #[serde(rename = "rssKiBMean")]
    pub(crate) rss_kib_mean: f64,
    #[serde(rename = "rssKiBMax")]
    pub(crate) rss_kib_max: f64,
    pub(crate) load_average: f64,
    pub(crate) anvil_requests_per_second_idle: f64,
    /// Beyond the idle rate, not counting the mining itself.
    pub(crate) anvil_requests_per_block: f64,
    /// Agent 1's own chain requests, less its head polls.
    pub(crate) agent_requests_per_block: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Churn {
    /// That joined and left.
    pub(crate) nodes: usize,
    pub(crate) joined_secs: f64,
    pub(crate) left_secs: f64,
    /// Between two steady nodes, meanwhile.
    pub(crate) pings_sent: u32,
    pub(crate) pings_received: u32,
    pub(crate) loss_percent: f64,
}

/// One join, traced through every node's log; times in ms from the block that holds the newcomer's record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Trace {
    pub(crate) nodes: usize,
    pub(crate) follow: &'static str,
    pub(crate) registration_receipt_ms: Option<f64>,
    pub(crate) stages: Stages,
    pub(crate) newcomer_peers_added: usize,
    pub(crate) newcomer_first_add_ms: Option<f64>,
    pub(crate) newcomer_last_add_ms: Option<f64>,
    pub(crate) initiations_dropped_by_newcomer: usize,
    pub(crate) timer_retries_by_others: usize,
    pub(crate) timer_retries_by_newcomer: usize,
    pub(crate) per_node: Vec<NodeTrace>,
}

/// Each stage over the nodes that reached it.
#[derive(Debug, Serialize)]
pub(crate) struct Stages {
    pub(crate) chain: Stat,
    pub(crate) added: Stat,
    pub(crate) initiated: Stat,
    pub(crate) session: Stat,
    pub(crate) answered: Stat,
    pub(crate) api: Stat,
}

impl Stages {
    /// In the order a join goes through them.
    pub(crate) fn named(&self) -> [(&'static str, &Stat); 6] {
        [
            ("chain", &self.chain),
            ("added", &self.added),
            ("initiated", &self.initiated),
            ("session", &self.session),
            ("answered", &self.answered),
            ("api", &self.api),
        ]
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Stat {
    pub(crate) nodes: usize,
    pub(crate) median_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
}

impl Stat {
    /// `worst W ms (median M, p99 P)`, for a progress line.
    pub(crate) fn brief(&self) -> String {
        self.brief_to(0)
    }

    /// [`Stat::brief`] with `decimals` places: for times well under a millisecond.
    pub(crate) fn brief_to(&self, decimals: usize) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"));
        format!(
            "worst {} ms (median {}, p99 {})",
            ms(self.max_ms),
            ms(self.median_ms),
            ms(self.p99_ms)
        )
    }

    /// Over the nodes that have a time.
    pub(crate) fn of(times: impl Iterator<Item = Option<f64>>) -> Self {
        let mut v: Vec<f64> = times.flatten().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        Self {
            nodes: v.len(),
            median_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// When one node reached each stage of the join (none: not seen in its log).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeTrace {
    pub(crate) node: usize,
    /// It read the block.
    pub(crate) chain: Option<f64>,
    /// It added the newcomer to its device.
    pub(crate) added: Option<f64>,
    /// It sent its first initiation.
    pub(crate) initiated: Option<f64>,
    /// Its initiation was answered: a session.
    pub(crate) session: Option<f64>,
    /// It answered the newcomer's initiation: a session.
    pub(crate) answered: Option<f64>,
    pub(crate) timer_retries: usize,
    /// Its API showed the handshake.
    pub(crate) api: f64,
}

/// A cluster of a thousand seats: one agent joining simulated members; times in ms from the block that
/// holds the agent's record, unless in seconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Thousand {
    pub(crate) nodes: usize,
    /// Minting, binding and registering the simulated members, one after another.
    pub(crate) register_secs: f64,
    /// A follower's first full read, every proof checked, and a later one that finds nothing new.
    pub(crate) first_full_read_ms: f64,
    pub(crate) first_full_read_requests: u64,
    pub(crate) full_read_ms: f64,
    pub(crate) full_read_requests: u64,
    /// Until every follower had confirmed its cached view and followed heads.
    pub(crate) followers_start_secs: f64,
    /// At anvil, with every follower idle: by time (their safety polls), and per empty block beyond that.
    pub(crate) idle_anvil_requests_per_second: f64,
    pub(crate) idle_anvil_requests_per_block: f64,
    /// The followers' own count per empty block, less their head polls, and the CPU each spent on it.
    pub(crate) idle_requests_per_follower_per_block: f64,
    pub(crate) idle_cpu_ms_per_member_per_block: f64,
    /// Per follower, for the newcomer's join: over the blocks of its seat's mint (until every follower
    /// held the binding), and over those from its agent's start until every peer had a handshake.
    pub(crate) mint_requests_per_follower: f64,
    pub(crate) mint_blocks: u64,
    pub(crate) bound_by_all: bool,
    pub(crate) join_requests_per_follower: f64,
    pub(crate) join_blocks: u64,
    /// From the block (its first announcement, to a member or to the bench's own watch) to each member
    /// hearing of it, and to each member's plan holding the newcomer.
    pub(crate) heard: Stat,
    pub(crate) applied: Stat,
    /// From each member hearing of the block to its plan holding the newcomer: its own read, attestation
    /// and plan, and its wait for the two cores it shares with the others.
    pub(crate) heard_to_applied: Stat,
    pub(crate) applied_by_all: bool,
    /// The bench process's CPU over the join (every member's follower, plan and simulated peer), per member.
    pub(crate) cpu_ms_per_member: f64,
    /// Members following heads by subscription at the end, and ticks that failed over the run.
    pub(crate) subscribed_at_end: usize,
    pub(crate) tick_errors: u64,
    /// From the block to each simulated peer's session with the newcomer.
    pub(crate) handshake: Stat,
    pub(crate) handshaken_by_all: bool,
    /// What the newcomer answered the storm with, beyond responses, and what the peers sent again.
    pub(crate) cookie_replies: u64,
    pub(crate) retried_initiations: u64,
    /// The newcomer's initiations that members' peers dropped before their member had read its record.
    pub(crate) unknown_initiations: u64,
    /// From the agent's start until its API listed every peer, and had a handshake with each.
    pub(crate) agent_listed_secs: Option<f64>,
    pub(crate) agent_handshaken_secs: Option<f64>,
    #[serde(rename = "agentRssKiB")]
    pub(crate) agent_rss_kib: u64,
    /// Idle, with nothing reading its API.
    pub(crate) agent_cpu_percent_idle: f64,
    /// The agent's liveness probes its idle peers answered, a second.
    pub(crate) agent_probes_per_second_idle: f64,
    /// Idle, while an application reads its API (every peer held to the peer timeout).
    pub(crate) agent_cpu_percent_watched: f64,
    pub(crate) agent_probes_per_second_watched: f64,
    pub(crate) agent_requests_per_block: f64,
    pub(crate) attestation: ThousandAttestation,
}

/// Judging the members' evidence as the agent does ([`p2p_agent::tasks::chain::attest::Attestor`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ThousandAttestation {
    /// One attestor's first pass over every member's seat, each quote verified; and the members verified.
    pub(crate) first_pass_ms: f64,
    pub(crate) first_pass_ms_per_seat: f64,
    pub(crate) verified: usize,
    /// A later pass over the same seats: every verdict kept.
    pub(crate) kept_pass_ms: f64,
    pub(crate) kept_pass_us_per_seat: f64,
    /// At the join, each member's pass that checked the newcomer's binding (its mint's block), the one that
    /// admitted its record (ms), and the evidence each member checked anew in the two.
    pub(crate) binding_pass_ms: Stat,
    pub(crate) admitting_pass_ms: Stat,
    pub(crate) checked_anew_per_member: f64,
    /// The agent's own first pass over its peers, from its log.
    pub(crate) agent_first_pass_ms: Option<f64>,
    pub(crate) agent_first_pass_seats: Option<u64>,
}

/// One side of the comparison.
#[derive(Debug, Default, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PolicyRun {
    pub(crate) gbps1: f64,
    pub(crate) gbps4: f64,
    /// Pings 0.5 ms apart (busy CPUs).
    pub(crate) ping_rtt_ms: f64,
    /// A line to an echo service and its answer, over one connection.
    pub(crate) tcp_rtt_us: f64,
}

impl PolicyRun {
    pub(crate) fn mean(a: Self, b: Self) -> Self {
        Self {
            gbps1: f64::midpoint(a.gbps1, b.gbps1),
            gbps4: f64::midpoint(a.gbps4, b.gbps4),
            ping_rtt_ms: f64::midpoint(a.ping_rtt_ms, b.ping_rtt_ms),
            tcp_rtt_us: f64::midpoint(a.tcp_rtt_us, b.tcp_rtt_us),
        }
    }
}

/// The mesh with no policy and with [`crate::policy::RULES`] rules in force.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PolicyCost {
    pub(crate) rules: usize,
    pub(crate) none: PolicyRun,
    pub(crate) enforced: PolicyRun,
    /// Packets the receiver dropped by the policy over the runs: none should be.
    pub(crate) dropped: u64,
}

/// A cluster of `seats` seats on the chain, a sample of whose members follow it in process: what each member's
/// control plane pays, and what the cluster asks of its provider. Times in ms from the newcomer's record's block.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ControlPlane {
    pub(crate) seats: usize,
    pub(crate) sample: usize,
    /// Minting, binding and registering every member, several at once.
    pub(crate) register_secs: f64,
    pub(crate) first_full_read_ms: f64,
    pub(crate) first_full_read_requests: u64,
    pub(crate) full_read_ms: f64,
    pub(crate) full_read_requests: u64,
    /// Judging a seat's evidence: the first pass (its quote verified), and a later one (its verdict kept).
    pub(crate) cold_pass_ms_per_seat: f64,
    pub(crate) kept_pass_us_per_seat: f64,
    /// What a member holds per seat of the cluster: its view, verdicts and table, from the bench's RSS.
    pub(crate) bytes_per_seat: f64,
    pub(crate) idle_requests_per_member_per_block: f64,
    pub(crate) idle_cpu_ms_per_member_per_block: f64,
    /// The median idle round trip of one request to the provider.
    pub(crate) rpc_round_trip_ms: f64,
    pub(crate) changes: Vec<ControlPlaneChange>,
    pub(crate) applied: Stat,
    pub(crate) heard: Stat,
    /// The announcement's delay to each member, plus the median member's CPU and requests for the change:
    /// the time to apply it without the bench's CPU queue.
    pub(crate) applied_with_own_core: Stat,
    /// Who the members are, what the interface should hold, the plan, applied: one peer added.
    pub(crate) apply_ms: Stat,
    /// The same at one member with nothing else running, its data in cache.
    pub(crate) apply_alone_ms: Stat,
    pub(crate) applied_by_all: bool,
    pub(crate) tailscale_ms_per_peer_change: (f64, f64),
}

/// What one change cost each member, and the provider for all of them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ControlPlaneChange {
    pub(crate) what: &'static str,
    pub(crate) cpu_ms_per_member: f64,
    pub(crate) requests_per_member: f64,
    /// The requests every member but the newcomer makes for it.
    pub(crate) provider_requests: f64,
    pub(crate) done_by_all: bool,
}
