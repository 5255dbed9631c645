//! The table printed at the end of a run.

use serde_json::Value;

use crate::offloads::OFFLOAD_VARIANTS;

/// The implementations' keys in the throughput and latency sections, in the table's order.
const IMPLEMENTATIONS: [&str; 5] = ["mesh", "gotatun", "boringtun-cli", "wireguard-go", "bare"];

/// Prints what the report holds; a section that was not run is left out.
pub(crate) fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    println!(
        "\n=== dstack-mesh benchmark ({} CPUs, kernel {}) ===",
        r["machine"]["cpus"],
        r["machine"]["kernel"].as_str().unwrap_or("?"),
    );
    if r.get("throughput").is_some() || r.get("latency").is_some() {
        print_compared(r);
    }
    if let Some(o) = r.get("offloads") {
        println!(
            "\nThe mesh with offloads turned off (Gbit/s, retransmits, CPU send / recv; 1 stream, then 4)"
        );
        let mut rows: Vec<(&str, [&Value; 2])> = OFFLOAD_VARIANTS
            .iter()
            .map(|(name, _)| (*name, [&o[*name]["streams1"], &o[*name]["streams4"]]))
            .collect();
        if let Some(t) = r.get("throughput") {
            rows.push((
                "all offloads (mesh above)",
                [&t["streams1"]["mesh"], &t["streams4"]["mesh"]],
            ));
        }
        let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}"));
        for (name, runs) in rows {
            let mut row = format!("{name:<28}");
            for run in runs {
                row += &format!(
                    " {:>7} {:>8} {:>10}",
                    f(&run["gbps"]),
                    run["retransmits"]
                        .as_u64()
                        .map_or("-".into(), |x| x.to_string()),
                    format!(
                        "{} / {}",
                        pct(&run["cpuSenderPct"]),
                        pct(&run["cpuReceiverPct"])
                    )
                );
            }
            println!("{row}");
        }
    }
    if let Some(relay) = r.get("relay") {
        // Shares of the direct path's figures, when those were measured too.
        let direct = |s: &str| {
            let relayed = relay[format!("{s}Gbps")].as_f64()?;
            let direct = r.get("throughput")?[s]["mesh"]["gbps"].as_f64()?;
            Some(format!(" ({:.0}% of direct)", 100.0 * relayed / direct))
        };
        let direct_added = r
            .get("latency")
            .and_then(|l| l["mesh"]["addedMs"].as_f64())
            .map_or(String::new(), |a| format!("; direct +{a:.3}"));
        println!(
            "\nThe relay (UDP blocked; through nginx as the gateway): {} Gbit/s with 1 stream{}, {} with 4{}; RTT {} ms (+{} over the bare link{direct_added})",
            f(&relay["streams1Gbps"]),
            direct("streams1").unwrap_or_default(),
            f(&relay["streams4Gbps"]),
            direct("streams4").unwrap_or_default(),
            f(&relay["rttMs"]),
            f(&relay["addedMs"]),
        );
    }
    if let Some(fo) = r.get("failover") {
        println!(
            "\nFailover (3 nodes, the leader's node cut off, leader timeout {} s): seat 2 leads on-chain after {:.0} ms ({:.0} ms beyond the timeout); both agents report it after {:.0} ms",
            fo["leaderTimeoutSecs"],
            fo["onChainMs"].as_f64().unwrap_or(0.0),
            fo["beyondTimeoutMs"].as_f64().unwrap_or(0.0),
            fo["reportedMs"].as_f64().unwrap_or(0.0)
        );
    }
    let Some(sizes) = r.get("sizes") else {
        return;
    };
    println!(
        "\nSizes ({}): from the block that holds a change to the last node's API showing it",
        r["sizesFollow"].as_str().unwrap_or("?")
    );
    let num = |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
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
    for s in sizes.as_array().into_iter().flatten() {
        let c = &s["cost"];
        let mib = |v: &Value| {
            v.as_f64()
                .map_or("-".into(), |x| format!("{:.1}", x / 1024.0))
        };
        println!(
            "{:<6} {:>9} {:>17} {:>11} {:>14} {:>14} {:>6} {:>11} {:>10} {:>9}",
            s["nodes"],
            num(&s["listedMs"], 0),
            format!(
                "{} / {}",
                num(&s["handshakeMedianMs"], 0),
                num(&s["convergenceMs"], 0)
            ),
            num(&s["revocationMs"], 0),
            format!(
                "{} / {}",
                num(&c["cpuPercentMean"], 2),
                num(&c["cpuPercentMax"], 2)
            ),
            format!("{} / {}", mib(&c["rssKiBMean"]), mib(&c["rssKiBMax"])),
            num(&c["loadAverage"], 1),
            num(&c["anvilRequestsPerSecondIdle"], 1),
            num(&c["anvilRequestsPerBlock"], 0),
            num(&s["formedSecs"], 1),
        );
    }
    for s in sizes.as_array().into_iter().flatten() {
        if let Some(c) = s.get("churn") {
            println!(
                "churn at {} nodes: {} nodes joined and left; ping between two steady nodes {}/{} ({}% loss)",
                s["nodes"],
                c["nodes"],
                c["pingsReceived"],
                c["pingsSent"],
                num(&c["lossPercent"], 2)
            );
        }
    }
    if let Some(a) = sizes
        .as_array()
        .and_then(|s| s.first())
        .and_then(|s| s["cost"]["agentRequestsPerBlock"].as_f64())
    {
        println!("chain requests per new block, by one agent's own counters: {a:.2}");
    }
}

/// The throughput and latency table: one row per implementation, 1 and 4 streams side by side, then the
/// RTT; the mesh's ratios; and a second table with each run's context switches and drops.
fn print_compared(r: &Value) {
    let num = |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
    let t = r.get("throughput");
    let l = r.get("latency");
    let run = |name: &str, s: u32| t.map_or(&Value::Null, |t| &t[format!("streams{s}")][name]);
    if let Some(v) = r.get("versions").and_then(Value::as_object) {
        let versions: Vec<String> = v
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
            .collect();
        println!("\nReferences: {}", versions.join("; "));
    }
    let secs = t.map_or("-".into(), |t| t["seconds"].to_string());
    println!(
        "\nThroughput, iperf3 TCP, {secs} s a run (CPU: the WireGuard process on the sending / receiving node, % of one core); ping RTT"
    );
    println!("{:<14} {:-^31} {:-^31}", "", " 1 stream ", " 4 streams ");
    println!(
        "{:<14}{} {:>18} {:>18}",
        "",
        format!(" {:>7} {:>8} {:>14}", "Gbit/s", "retrans", "CPU send/recv").repeat(2),
        "RTT idle (added)",
        "RTT busy (added)"
    );
    for name in IMPLEMENTATIONS {
        let mut row = format!("{name:<14}");
        for s in [1, 4] {
            let v = run(name, s);
            let cpu = format!(
                "{} / {}",
                num(&v["cpuSenderPct"], 0),
                num(&v["cpuReceiverPct"], 0)
            );
            row += &format!(
                " {:>7} {:>8} {:>14}",
                num(&v["gbps"], 2),
                v["retransmits"]
                    .as_u64()
                    .map_or("-".into(), |x| x.to_string()),
                cpu
            );
        }
        let rtt = l.map_or(&Value::Null, |l| &l[name]);
        for (rtt_key, added_key) in [("rttMs", "addedMs"), ("busyRttMs", "busyAddedMs")] {
            let added = match name {
                "bare" => String::new(),
                _ => rtt[added_key]
                    .as_f64()
                    .map_or(String::new(), |a| format!(" (+{a:.3})")),
            };
            row += &format!(" {:>18}", format!("{}{added}", num(&rtt[rtt_key], 3)));
        }
        println!("{row}");
    }
    let Some(t) = t else {
        return;
    };
    let ratio = |key: &str, s: u32| {
        let v = &t[format!("streams{s}")];
        let best = v["bestPeer"]
            .as_str()
            .filter(|_| key == "meshOverBest")
            .map_or(String::new(), |b| format!(" ({b})"));
        format!("{}{best}", num(&v[key], 2))
    };
    println!(
        "mesh / best peer: {} with 1 stream, {} with 4",
        ratio("meshOverBest", 1),
        ratio("meshOverBest", 4)
    );
    println!(
        "mesh / bare:      {} with 1 stream, {} with 4",
        ratio("meshOverBare", 1),
        ratio("meshOverBare", 4)
    );
    println!(
        "\nPer run: context switches of the WireGuard process (send / recv); drops on both sides, of the TUN interfaces and of UDP receive buffers"
    );
    println!("{:<14} {:-^39} {:-^39}", "", " 1 stream ", " 4 streams ");
    println!(
        "{:<14}{}",
        "",
        format!(" {:>19} {:>8} {:>10}", "ctx send / recv", "TUN", "UDP").repeat(2)
    );
    let count = |v: &Value| v.as_u64().map_or("-".into(), |x| x.to_string());
    for name in IMPLEMENTATIONS.into_iter().filter(|&n| n != "bare") {
        let mut row = format!("{name:<14}");
        for s in [1, 4] {
            let v = run(name, s);
            row += &format!(
                " {:>19} {:>8} {:>10}",
                format!(
                    "{} / {}",
                    count(&v["ctxSwitchesSender"]),
                    count(&v["ctxSwitchesReceiver"])
                ),
                count(&v["tunDrops"]),
                count(&v["udpRcvbufErrors"])
            );
        }
        println!("{row}");
    }
}
