//! The table printed at the end of a run, from its [`Report`].

use crate::report::{BARE, ControlPlane, MESH, PolicyCost, Report, Run, Stat, Thousand};

/// The implementations in the throughput and latency sections, in the table's order.
const IMPLEMENTATIONS: [&str; 5] = [MESH, "gotatun", "boringtun-cli", "wireguard-go", BARE];

/// `x` to `digits` decimals, or `-` when it was not measured (or is no number: a rate over no time).
pub(crate) fn fixed(x: Option<f64>, digits: usize) -> String {
    x.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// A count, or `-` when it was not measured.
pub(crate) fn count(x: Option<u64>) -> String {
    x.map_or("-".into(), |x| x.to_string())
}

/// Prints what the report holds; a section that was not run is left out.
pub(crate) fn print_table(r: &Report) {
    println!(
        "\n=== dstack-mesh benchmark ({} CPUs, kernel {}) ===",
        r.machine.cpus, r.machine.kernel,
    );
    if r.throughput.is_some() || r.latency.is_some() {
        print_compared(r);
    }
    if let Some(u) = &r.udp {
        print_udp(u);
    }
    print_offloads(r);
    if let Some(p) = &r.policy {
        print_policy(p);
    }
    print_relay(r);
    if let Some(nat) = &r.nat {
        print_nat(nat);
    }
    if let Some(p) = &r.peer_relay {
        print_peer_relay(p);
    }
    print_leadership(r);
    if let Some(t) = &r.thousand {
        print_thousand(t);
    }
    if let Some(c) = &r.control_plane {
        print_control_plane(c);
    }
    print_sizes(r);
}

/// The throughput of the mesh on the direct path, `streams` at once, if it was measured.
fn mesh_run(r: &Report, streams: u32) -> Option<&Run> {
    r.throughput
        .as_ref()
        .and_then(|t| t.streams(streams).runs.get(MESH))
}

/// The mesh with each offload turned off, beside all of them on.
fn print_offloads(r: &Report) {
    let mesh = |streams| mesh_run(r, streams);
    if let Some(o) = &r.offloads {
        println!(
            "\nThe mesh with offloads turned off (Gbit/s, retransmits, CPU send / recv; 1 stream, then 4)"
        );
        let mut rows: Vec<(&str, [Option<&Run>; 2])> =
            o.0.iter()
                .map(|(name, runs)| (*name, [Some(&runs.streams1), Some(&runs.streams4)]))
                .collect();
        if r.throughput.is_some() {
            rows.push(("all offloads (mesh above)", [mesh(1), mesh(4)]));
        }
        for (name, runs) in rows {
            let mut row = format!("{name:<28}");
            for run in runs {
                row += &format!(
                    " {:>7} {:>8} {:>10}",
                    fixed(run.map(|r| r.gbps), 2),
                    count(run.map(|r| r.retransmits)),
                    format!(
                        "{} / {}",
                        fixed(run.and_then(|r| r.cpu_sender_pct), 0),
                        fixed(run.and_then(|r| r.cpu_receiver_pct), 0)
                    )
                );
            }
            println!("{row}");
        }
    }
}

/// The relay's throughput and round trip, against the direct path's.
fn print_relay(r: &Report) {
    let mesh = |streams| mesh_run(r, streams);
    if let Some(relay) = &r.relay {
        // Shares of the direct path's figures, when those were measured too.
        let direct = |streams, relayed: f64| {
            mesh(streams).map_or(String::new(), |direct| {
                format!(" ({:.0}% of direct)", 100.0 * relayed / direct.gbps)
            })
        };
        let direct_added = r
            .latency
            .as_ref()
            .and_then(|l| l.get(MESH))
            .map_or(String::new(), |m| format!("; direct +{:.3}", m.added_ms));
        println!(
            "\nThe relay (UDP blocked; through nginx as the gateway): {} Gbit/s with 1 stream{}, {} with 4{}; RTT {} ms (+{} over the bare link{direct_added})",
            fixed(Some(relay.streams1_gbps), 2),
            direct(1, relay.streams1_gbps),
            fixed(Some(relay.streams4_gbps), 2),
            direct(4, relay.streams4_gbps),
            fixed(Some(relay.rtt_ms), 2),
            fixed(Some(relay.added_ms), 2),
        );
    }
}

/// NAT traversal: when the path was punched, and each way between the two nodes.
fn print_nat(nat: &crate::report::Nat) {
    println!(
        "\nNAT traversal (2 nodes behind slirp4netns): punched {:.0} ms after the agents started (relayed from {:.0} ms); \
         a NAT restart cut them off for {:.0} ms ({} of {} pings 20 ms apart lost)",
        nat.punched_after_ms,
        nat.relayed_after_ms,
        nat.remap_recovered_ms,
        nat.remap_pings_lost,
        nat.remap_pings_sent
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9}",
        "between the two nodes", "1 stream", "4 streams", "RTT ms"
    );
    for (name, way) in [
        ("punched (through both NATs)", &nat.punched),
        ("relayed (UDP dropped; nginx as gateway)", &nat.relayed),
        ("plain direct (no NAT, same agents)", &nat.direct),
        ("slirp4netns alone (TCP, no tunnel)", &nat.slirp),
    ] {
        println!(
            "{name:<40} {:>9} {:>9} {:>9}",
            fixed(Some(way.streams1_gbps), 2),
            fixed(Some(way.streams4_gbps), 2),
            fixed(Some(way.rtt_ms), 3)
        );
    }
}

fn print_peer_relay(p: &crate::report::PeerRelayBench) {
    let mut gaps = p.move_gaps_ms.clone();
    gaps.sort_by(f64::total_cmp);
    let median = gaps.get(gaps.len() / 2).copied();
    println!(
        "\nPeer relays (2 nodes behind symmetric NATs, 2 relays on the switch): the relays spend {:.3} CPU s per Gbit forwarded; \
         the relay in use killed {} times: {} ms of pings 20 ms apart lost (median), {} at worst",
        p.relay_cpu_s_per_gbit,
        gaps.len(),
        fixed(median, 0),
        fixed(gaps.last().copied(), 0)
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "between the two nodes", "1 stream", "4 streams", "RTT ms", "vs direct"
    );
    for (name, way) in [
        ("through a peer relay", &p.peer_relay),
        ("through the gateway's relay (nginx)", &p.gateway),
        ("direct (no NAT, plain LAN)", &p.direct),
    ] {
        println!(
            "{name:<40} {:>9} {:>9} {:>9} {:>9}",
            fixed(Some(way.streams1_gbps), 2),
            fixed(Some(way.streams4_gbps), 2),
            fixed(Some(way.rtt_ms), 3),
            format!("+{:.3}", way.rtt_ms - p.direct.rtt_ms)
        );
    }
}

/// The failover and the leader port.
fn print_leadership(r: &Report) {
    if let Some(fo) = &r.failover {
        println!(
            "\nFailover (3 nodes, the leader's node cut off, leader timeout {} s): seat 2 leads on-chain after {:.0} ms ({:.0} ms beyond the timeout); both agents report it after {:.0} ms",
            fo.leader_timeout_secs, fo.on_chain_ms, fo.beyond_timeout_ms, fo.reported_ms
        );
    }
    if let Some(lp) = &r.leader_port {
        println!(
            "\nThe leader port (--leader-port) against a direct connection to the leader's service:"
        );
        for (what, w) in [
            ("from a follower", &lp.follower),
            ("on the leader", &lp.leader),
        ] {
            println!(
                "  {what}: round trip {:.0} µs direct, {:.0} through the port (+{:.0} µs; p99 {:.0} / {:.0}); 1 stream {:.2} Gbit/s direct, {:.2} through the port ({:.0}%), the forwarding agent at {:.0}% of a core",
                w.direct_rtt_us,
                w.port_rtt_us,
                w.added_rtt_us,
                w.direct_p99_us,
                w.port_p99_us,
                w.direct_gbps,
                w.port_gbps,
                100.0 * w.port_gbps / w.direct_gbps,
                w.agent_cpu_percent
            );
        }
    }
}

/// The sizes: how long each change takes to reach every node, and what a node costs, per cluster size.
fn print_sizes(r: &Report) {
    let Some(sizes) = &r.sizes else {
        return;
    };
    println!(
        "\nSizes ({}): from the block that holds a change to the last node's API showing it",
        r.sizes_follow
    );
    println!(
        "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
        "nodes",
        "listed ms",
        "handshake ms",
        "revoked ms",
        "agent CPU %",
        "agent RSS MiB",
        "load",
        "anvil req/s",
        "req/block",
        "formed s"
    );
    println!(
        "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
        "", "worst", "median / worst", "worst", "mean / max", "mean / max", "", "idle", "anvil", ""
    );
    let num = |x: f64, digits| fixed(Some(x), digits);
    for s in sizes {
        let c = &s.cost;
        let mib = |kib: f64| num(kib / 1024.0, 1);
        println!(
            "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
            s.nodes,
            num(s.listed_ms, 0),
            format!(
                "{} / {}",
                num(s.handshake_median_ms, 0),
                num(s.convergence_ms, 0)
            ),
            num(s.revocation_ms, 0),
            format!(
                "{} / {}",
                num(c.cpu_percent_mean, 2),
                num(c.cpu_percent_max, 2)
            ),
            format!("{} / {}", mib(c.rss_kib_mean), mib(c.rss_kib_max)),
            num(c.load_average, 1),
            num(c.anvil_requests_per_second_idle, 1),
            num(c.anvil_requests_per_block, 0),
            num(s.formed_secs, 1),
        );
    }
    for s in sizes {
        if let Some(c) = &s.churn {
            println!(
                "churn at {} nodes: {} nodes joined and left; ping between two steady nodes {}/{} ({}% loss)",
                s.nodes,
                c.nodes,
                c.pings_received,
                c.pings_sent,
                num(c.loss_percent, 2)
            );
        }
    }
    if let Some(a) = sizes
        .first()
        .map(|s| s.cost.agent_requests_per_block)
        .filter(|a| a.is_finite())
    {
        println!("chain requests per new block, by one agent's own counters: {a:.2}");
    }
}

/// The throughput and latency table: one row per implementation, 1 and 4 streams side by side, then the
/// RTT; the mesh's ratios; and a second table with each run's context switches and drops.
fn print_compared(r: &Report) {
    let t = r.throughput.as_ref();
    let run = |name: &str, streams| t.and_then(|t| t.streams(streams).runs.get(name));
    if let Some(versions) = &r.versions {
        println!("\nReferences: {versions}");
    }
    let secs = t.map_or("-".into(), |t| t.seconds.to_string());
    println!(
        "\nThroughput, iperf3 TCP, {secs} s a run (CPU: the WireGuard process on the sending / receiving node, % of one core); ping RTT in ms: idle (20 ms apart), busy (0.5 ms apart), loaded (10 ms apart, while one iperf3 stream runs through the same tunnel) and hogged (busy, with a CPU hog on every core), each with what it adds over the bare link's"
    );
    println!("{:<14} {:-^31} {:-^31}", "", " 1 stream ", " 4 streams ");
    println!(
        "{:<14}{} {:>18} {:>18} {:>18} {:>18}",
        "",
        format!(" {:>7} {:>8} {:>14}", "Gbit/s", "retrans", "CPU send/recv").repeat(2),
        "RTT idle (added)",
        "RTT busy (added)",
        "RTT loaded (added)",
        "RTT hogged (added)"
    );
    for name in IMPLEMENTATIONS {
        let mut row = format!("{name:<14}");
        for s in [1, 4] {
            let v = run(name, s);
            let cpu = format!(
                "{} / {}",
                fixed(v.and_then(|v| v.cpu_sender_pct), 0),
                fixed(v.and_then(|v| v.cpu_receiver_pct), 0)
            );
            row += &format!(
                " {:>7} {:>8} {:>14}",
                fixed(v.map(|v| v.gbps), 2),
                count(v.map(|v| v.retransmits)),
                cpu
            );
        }
        let rtt = r.latency.as_ref().and_then(|l| l.get(name));
        for (rtt, added) in [
            (rtt.map(|r| r.rtt_ms), rtt.map(|r| r.added_ms)),
            (rtt.map(|r| r.busy_rtt_ms), rtt.map(|r| r.busy_added_ms)),
            (rtt.map(|r| r.loaded_rtt_ms), rtt.map(|r| r.loaded_added_ms)),
            (rtt.map(|r| r.hog_rtt_ms), rtt.map(|r| r.hog_added_ms)),
        ] {
            let added = match name {
                BARE => String::new(),
                _ => added.map_or(String::new(), |a| format!(" ({a:+.3})")),
            };
            row += &format!(" {:>18}", format!("{}{added}", fixed(rtt, 3)));
        }
        println!("{row}");
    }
    if let Some(l) = &r.latency {
        let work: Vec<String> = IMPLEMENTATIONS
            .iter()
            .filter_map(|name| {
                let rtt = l.get(name)?;
                Some(format!(
                    "{name} {} / {} / {}",
                    fixed(rtt.cpu_us_per_round_trip, 1),
                    fixed(rtt.syscalls_per_round_trip, 1),
                    fixed(rtt.switches_per_round_trip, 1)
                ))
            })
            .filter(|w| !w.ends_with("- / - / -"))
            .collect();
        println!(
            "per busy round trip, both sides' CPU µs / system calls / context switches (perf stat): {}",
            work.join(", ")
        );
        let hogged: Vec<String> = IMPLEMENTATIONS
            .iter()
            .filter_map(|name| {
                let us = l.get(name)?.hog_cpu_us_per_round_trip?;
                Some(format!("{name} {us:.1}"))
            })
            .collect();
        println!(
            "per busy round trip with a CPU hog on every core, both sides' CPU µs: {}",
            hogged.join(", ")
        );
        let core_each: Vec<String> = IMPLEMENTATIONS
            .iter()
            .filter_map(|name| {
                let r = l.get(name)?;
                Some(match *name {
                    BARE => format!("{name} {:.3}", r.core_each_rtt_ms),
                    _ => format!(
                        "{name} {:.3} ({:+.3}, {} lost)",
                        r.core_each_rtt_ms, r.core_each_added_ms, r.core_each_lost
                    ),
                })
            })
            .collect();
        println!(
            "RTT under one iperf3 stream with a core per node (added), as on two machines: {}",
            core_each.join(", ")
        );
    }
    let Some(t) = t else {
        return;
    };
    println!(
        "mesh / best peer: {} ({}) with 1 stream, {} ({}) with 4",
        fixed(Some(t.streams1.mesh_over_best), 2),
        t.streams1.best_peer,
        fixed(Some(t.streams4.mesh_over_best), 2),
        t.streams4.best_peer,
    );
    println!(
        "mesh / bare:      {} with 1 stream, {} with 4",
        fixed(Some(t.streams1.mesh_over_bare), 2),
        fixed(Some(t.streams4.mesh_over_bare), 2)
    );
    if let (Some([b0, b1]), Some([a0, a1])) = (t.mesh_rss_mib_before, t.mesh_rss_mib_after) {
        println!(
            "mesh agents' RSS, sending / receiving node: {b0:.1} / {b1:.1} MiB before its runs, {a0:.1} / {a1:.1} MiB after them (quiet since)"
        );
    }
    println!(
        "\nPer run: context switches of the WireGuard process (send / recv); drops on both sides, of the TUN interfaces and of UDP receive buffers"
    );
    println!("{:<14} {:-^39} {:-^39}", "", " 1 stream ", " 4 streams ");
    println!(
        "{:<14}{}",
        "",
        format!(" {:>19} {:>8} {:>10}", "ctx send / recv", "TUN", "UDP").repeat(2)
    );
    for name in IMPLEMENTATIONS.into_iter().filter(|&n| n != BARE) {
        let mut row = format!("{name:<14}");
        for s in [1, 4] {
            let v = run(name, s);
            row += &format!(
                " {:>19} {:>8} {:>10}",
                format!(
                    "{} / {}",
                    count(v.and_then(|v| v.ctx_switches_sender)),
                    count(v.and_then(|v| v.ctx_switches_receiver))
                ),
                count(v.and_then(|v| v.tun_drops)),
                count(v.and_then(|v| v.udp_rcvbuf_errors))
            );
        }
        println!("{row}");
    }
}

/// The thousand section: one agent joining simulated members, each with the agent's control plane.
fn print_thousand(t: &Thousand) {
    let others = t.nodes - 1;
    println!(
        "\n{} seats on a /16: one agent joining {others} simulated members (the agent's follower, membership, attestation and plan code each, on anvil's WebSocket; a boringtun peer each)",
        t.nodes
    );
    let stat = |s: &Stat| {
        format!(
            "{} of {others}: median {} ms, p99 {} ms, worst {} ms",
            s.nodes,
            fixed(s.median_ms, 0),
            fixed(s.p99_ms, 0),
            fixed(s.max_ms, 0)
        )
    };
    println!("block to its announcement:   {}", stat(&t.heard));
    println!("block to applied view:       {}", stat(&t.applied));
    println!(
        "announcement to applied view: {}",
        stat(&t.heard_to_applied)
    );
    println!("block to handshake (storm):  {}", stat(&t.handshake));
    println!(
        "the storm:                   {} cookie replies, {} retried initiations",
        t.cookie_replies, t.retried_initiations
    );
    println!(
        "RPC requests, idle:          {:.3} per member per block ({:.3} ms of CPU); at anvil {:.1} per block and {:.1}/s by time (safety polls)",
        t.idle_requests_per_follower_per_block,
        t.idle_cpu_ms_per_member_per_block,
        t.idle_anvil_requests_per_block,
        t.idle_anvil_requests_per_second
    );
    println!(
        "RPC requests, a join:        {:.2} per member over the mint's {} block(s), {:.2} over the {} block(s) of the agent's start",
        t.mint_requests_per_follower, t.mint_blocks, t.join_requests_per_follower, t.join_blocks
    );
    println!(
        "the members' CPU:            {:.2} ms each for the join (follower, plan and simulated peer); {} of {others} subscribed at the end; {} ticks failed",
        t.cpu_ms_per_member, t.subscribed_at_end, t.tick_errors
    );
    println!(
        "a full read of {others} records: first {:.0} ms ({} requests, every proof checked), later {:.0} ms ({} requests)",
        t.first_full_read_ms, t.first_full_read_requests, t.full_read_ms, t.full_read_requests
    );
    let a = &t.attestation;
    println!(
        "attestation:                 a first pass over {others} seats {:.0} ms ({:.3} ms a seat, {} verified), a later one {:.1} ms ({:.1} µs a seat); at the join each member's pass on the newcomer's binding took median {} ms, p99 {} ms, and on its record median {} ms, p99 {} ms, checking {:.2} quotes anew in all; the agent's first pass over {} peers {} ms",
        a.first_pass_ms,
        a.first_pass_ms_per_seat,
        a.verified,
        a.kept_pass_ms,
        a.kept_pass_us_per_seat,
        fixed(a.binding_pass_ms.median_ms, 2),
        fixed(a.binding_pass_ms.p99_ms, 2),
        fixed(a.admitting_pass_ms.median_ms, 2),
        fixed(a.admitting_pass_ms.p99_ms, 2),
        a.checked_anew_per_member,
        a.agent_first_pass_seats.unwrap_or(0),
        fixed(a.agent_first_pass_ms, 0)
    );
    println!(
        "the agent with {others} peers:  all listed {} s and handshaken {} s after its start; RSS {:.1} MiB; idle CPU {:.2}% with {:.0} liveness probes a second answered (nothing reading its API), {:.2}% with {:.0} while an application reads it; {:.2} chain requests per block",
        fixed(t.agent_listed_secs, 1),
        fixed(t.agent_handshaken_secs, 1),
        t.agent_rss_kib as f64 / 1024.0,
        t.agent_cpu_percent_idle,
        t.agent_probes_per_second_idle,
        t.agent_cpu_percent_watched,
        t.agent_probes_per_second_watched,
        t.agent_requests_per_block
    );
}

/// The UDP section: each implementation's highest carried rate from each sender, and the mesh's ratios.
fn print_udp(u: &crate::report::Udp) {
    for (sender, runs) in [
        ("iperf3 (a datagram per system call)", &u.iperf3),
        (
            "a GSO sender (up to 64 KiB of datagrams per system call)",
            &u.gso,
        ),
    ] {
        println!(
            "\nUDP from {sender}, one stream of {}-byte datagrams: the highest rate that arrives with under {} % lost (Gbit/s; * where the sender could go no faster)",
            u.datagram_bytes, u.max_loss_percent
        );
        print_udp_runs(runs);
    }
}

fn print_udp_runs(u: &crate::report::UdpRuns) {
    for name in IMPLEMENTATIONS {
        if let Some(run) = u.runs.get(name) {
            println!(
                "{name:<14} {:>7}{} ({:.2} % lost)",
                fixed(Some(run.received_gbps), 2),
                if run.sender_bound { "*" } else { " " },
                run.lost_percent
            );
        }
    }
    println!(
        "mesh UDP / mesh TCP (1 stream): {}; mesh / best peer: {} ({}); mesh / bare: {}",
        fixed(u.mesh_over_tcp, 2),
        fixed(u.mesh_over_best, 2),
        u.best_peer.unwrap_or("-"),
        fixed(Some(u.mesh_over_bare), 2)
    );
}

/// The rows of the table: each measure with no policy, with the policy, and their ratio.
fn print_policy(p: &PolicyCost) {
    println!(
        "\nGrants between seats: the mesh with {} rules in force against none (means of two runs each)",
        p.rules
    );
    let row = |name: &str, none: f64, with: f64, unit: &str| {
        println!(
            "{name:<26} {none:>9.3} {with:>9.3} {unit:<7} {:>+6.1} %",
            (with / none - 1.0) * 100.0
        );
    };
    println!("{:<26} {:>9} {:>9}", "", "none", "enforced");
    row(
        "throughput, 1 stream",
        p.none.gbps1,
        p.enforced.gbps1,
        "Gbit/s",
    );
    row(
        "throughput, 4 streams",
        p.none.gbps4,
        p.enforced.gbps4,
        "Gbit/s",
    );
    row(
        "ping RTT, 0.5 ms apart",
        p.none.ping_rtt_ms,
        p.enforced.ping_rtt_ms,
        "ms",
    );
    row(
        "TCP request RTT",
        p.none.tcp_rtt_us,
        p.enforced.tcp_rtt_us,
        "µs",
    );
    println!("packets the policy dropped: {}", p.dropped);
}

/// The control-plane section: what a join costs each member of a cluster of `seats`, and its provider.
fn print_control_plane(c: &ControlPlane) {
    println!(
        "\n{} seats on the chain; {} members follow it (the agent's follower, attestation and plan code each, on anvil's WebSocket; no tunnels)",
        c.seats, c.sample
    );
    println!(
        "| change | CPU at each member | requests at each member | requests at the provider, all members |"
    );
    println!("|---|---|---|---|");
    for ch in &c.changes {
        println!(
            "| {} | {:.2} ms | {:.2} | {:.0} |",
            ch.what, ch.cpu_ms_per_member, ch.requests_per_member, ch.provider_requests
        );
    }
    let stat_to = |s: &Stat, decimals| {
        format!(
            "median {} ms, p99 {} ms, worst {} ms",
            fixed(s.median_ms, decimals),
            fixed(s.p99_ms, decimals),
            fixed(s.max_ms, decimals)
        )
    };
    let stat = |s: &Stat| stat_to(s, 1);
    println!(
        "block to the record applied, as measured: {}",
        stat(&c.applied)
    );
    println!(
        "the same with a core each:                 {}",
        stat(&c.applied_with_own_core)
    );
    println!(
        "one peer change planned and applied:       {} (Tailscale: {:.2}–{:.2} ms)",
        stat_to(&c.apply_ms, 3),
        c.tailscale_ms_per_peer_change.0,
        c.tailscale_ms_per_peer_change.1
    );
    println!(
        "the same at one member alone, in cache:    {}",
        stat_to(&c.apply_alone_ms, 3)
    );
    println!(
        "memory {:.0} bytes a seat at each member; idle {:.3} requests and {:.3} ms of CPU per block at each; a full read {:.0} ms ({} requests)",
        c.bytes_per_seat,
        c.idle_requests_per_member_per_block,
        c.idle_cpu_ms_per_member_per_block,
        c.full_read_ms,
        c.full_read_requests
    );
}
