//! `meshctl status`: this node and its mesh, from the agent's local API.

use std::{process::ExitCode, time::SystemTime};

use anyhow::Context;
use mesh_api::{ApiArgs, ConnectionKind, Leader, Peer, RefusedPeer, Status};
use serde_json::json;

use crate::output::Output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// Show whole WireGuard keys and instance ids.
    #[arg(short, long)]
    verbose: bool,
    /// Exit 1 when this node is not registered or a peer is unreachable (by tunnel and by gateway URL),
    /// naming each on stderr; as the agent's `GET /healthz` judges. For health checks and scripts.
    #[arg(long)]
    check: bool,
}

pub(crate) async fn run(args: Args, out: &Output) -> anyhow::Result<ExitCode> {
    let api = args.api.addr();
    let status: Status = mesh_api::get(&api, "/v1/status")
        .await
        .context("reading the agent's status")?;
    let mut peers: Vec<Peer> = mesh_api::get(&api, "/v1/peers")
        .await
        .context("reading the agent's peers")?;
    peers.sort_by_key(|p| p.token_id);
    let leader: Leader = mesh_api::get(&api, "/v1/leader")
        .await
        .context("reading the agent's leader")?;
    let refused: Vec<RefusedPeer> = mesh_api::get(&api, "/v1/peers/refused")
        .await
        .context("reading the seats the agent refused")?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let health = mesh_api::assess(&status, &peers);
    out.emit(
        || {
            let mut text = render(&status, &peers, &leader, now, args.verbose);
            text.push_str(&render_refused(&refused, args.verbose));
            text
        },
        || json!({ "status": status, "peers": peers, "refused": refused, "leader": leader, "health": health }),
    );
    if args.check && !health.healthy {
        for reason in &health.reasons {
            eprintln!("check failed: {reason}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn short(s: &str, n: usize, verbose: bool) -> String {
    if verbose || s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// "never" for no time (a zero timestamp is "never", not 1970), else an age such as "42s ago".
pub(crate) fn age(at: Option<u64>, now: u64) -> String {
    match at {
        None | Some(0) => "never".into(),
        Some(t) => {
            let s = now.saturating_sub(t);
            match s {
                0..=59 => format!("{s}s ago"),
                60..=3599 => format!("{}m ago", s / 60),
                3600..=86_399 => format!("{}h ago", s / 3600),
                _ => format!("{}d ago", s / 86_400),
            }
        }
    }
}

/// Bytes in binary units, as `wg` prints them.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn render(status: &Status, peers: &[Peer], leader: &Leader, now: u64, verbose: bool) -> String {
    let mut s = render_node(status, verbose);
    s.push_str(&render_faults(&status.faults, now));
    s.push_str(&render_policy(status.policy.as_ref()));
    s.push_str(&render_peer_relay(status.peer_relay.as_ref()));
    s.push_str(&render_leader(leader));
    s.push_str(&format!(
        "peers: {} configured, {} healthy, {} refused\n\n",
        status.peers_configured, status.peers_healthy, status.peers_refused
    ));
    s.push_str(&render_ports(&status.ports));
    s.push_str(&render_peers(peers, now, verbose));
    s
}

/// This node as a peer relay: whether it offers and why, and what it carries; nothing where it cannot be
/// one (the kernel's WireGuard, TLS mode).
fn render_peer_relay(relay: Option<&mesh_api::PeerRelayStatus>) -> String {
    let Some(r) = relay else {
        return String::new();
    };
    let offer = if r.offering { "offered" } else { "not offered" };
    let mut s = format!(
        "peer relay: {offer} ({}); {} pair{} now, {} forwarded",
        r.why,
        r.allocations,
        if r.allocations == 1 { "" } else { "s" },
        bytes(r.forwarded_bytes)
    );
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        (m.iter())
            .map(|(why, n)| format!("{n} {why}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.refused.is_empty() {
        s.push_str(&format!("; refused {}", counts(&r.refused)));
    }
    if !r.dropped.is_empty() {
        s.push_str(&format!("; dropped {}", counts(&r.dropped)));
    }
    s.push('\n');
    s
}

/// The grants between seats as this node enforces them, and what they dropped here; nothing before read.
fn render_policy(policy: Option<&mesh_api::PolicyStatus>) -> String {
    let Some(p) = policy else {
        return String::new();
    };
    // A change read from the chain but not yet on the interface is named, so that no one acts on it early.
    let pending = p
        .pending
        .map(|v| format!("; version {v} read, not yet applied"))
        .unwrap_or_default();
    if !p.enforced {
        return format!(
            "grants: none in force (version {}): every seat reaches every port{pending}\n",
            p.version
        );
    }
    let tags = match p.own_tags.as_slice() {
        [] => "untagged".to_owned(),
        tags => format!("tagged {}", tags.join("+")),
    };
    let d = &p.dropped;
    format!(
        "grants: version {} in force, {} grant{}, this node {tags}; dropped here: {} no-grant, {} protocol, {} malformed{pending}\n",
        p.version,
        p.grants,
        if p.grants == 1 { "" } else { "s" },
        d.no_grant,
        d.protocol,
        d.malformed
    )
}

/// The outside dependencies that fail now, each with what it is and for how long; nothing while none does.
fn render_faults(faults: &[mesh_api::Fault], now: u64) -> String {
    let mut s = String::new();
    for f in faults {
        let since = f
            .since
            .map(|t| format!(" (for {})", age(Some(t), now).trim_end_matches(" ago")))
            .unwrap_or_default();
        s.push_str(&format!("✗ {}{since}: {}\n", f.dependency, f.detail));
    }
    if !s.is_empty() {
        s.insert_str(0, "failing:\n");
        s.push('\n');
    }
    s
}

/// The forwarded ports (`--leader-port`, `--replica-port`): where each listens, and what became of its
/// connections; a blank line after them.
fn render_ports(ports: &[mesh_api::ForwardedPort]) -> String {
    let mut s = String::new();
    for p in ports {
        let refused: Vec<String> = p
            .refused
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let latest = p.routes.first().map_or_else(
            || "none yet".to_owned(),
            |r| match r.term {
                Some(t) => format!("term {t}, seat {}", r.seat),
                None => format!("seat {}", r.seat),
            },
        );
        s.push_str(&format!(
            "{} port {} -> {} {}: {} open, {} forwarded ({} fenced, {} unreachable), refused {}; {} to, {} from; latest {latest}\n",
            p.role.as_str(),
            p.listen,
            p.role.as_str(),
            p.target,
            p.open,
            p.total.opened,
            p.total.fenced,
            p.total.unreachable,
            if refused.is_empty() { "none".to_owned() } else { refused.join(", ") },
            bytes(p.total.bytes_to_service),
            bytes(p.total.bytes_from_service),
        ));
        if p.bound.is_empty() {
            s.push_str(&format!(
                "# {} port {}: not listening\n",
                p.role.as_str(),
                p.listen
            ));
        }
    }
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// "-" for what is not known.
fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// This node: its interface, seat, chain, errors and attestation.
fn render_node(status: &Status, verbose: bool) -> String {
    let n = &status.node;
    let c = &status.chain;
    let mut s = String::new();
    let mode = match (&status.mode, &status.backend) {
        (mesh_api::Mode::Wireguard, Some(b)) => format!("wireguard ({b})"),
        (mesh_api::Mode::Wireguard, None) => "wireguard".into(),
        (mesh_api::Mode::Tls, _) => "tls".into(),
    };
    s.push_str(&format!(
        "interface {}  overlay {}  seat {}  instance {}\n",
        opt(n.interface.clone()),
        opt(n.overlay_ip.map(|ip| ip.to_string())),
        opt(n.token_id.map(|t| t.to_string())),
        short(&n.instance_id, 12, verbose)
    ));
    s.push_str(&format!(
        "mode {mode}  listen port {}  endpoint {}  registered {}\n",
        opt(n.listen_port.map(|p| p.to_string())),
        opt(n.endpoint.clone()),
        if n.registered { "yes" } else { "no" }
    ));
    if let Some(nat) = &status.nat {
        s.push_str(&render_nat(nat, verbose));
    }
    let lag = match (c.head, c.last_processed_block, c.lag) {
        (Some(h), Some(l), Some(lag)) => format!("block {l} of {h} (lag {lag})"),
        (_, Some(l), _) => format!("block {l} (head unknown)"),
        _ => "no block processed yet".into(),
    };
    s.push_str(&format!(
        "cluster {} on chain {}  {lag}{}\n",
        c.contract,
        opt(c.chain_id.map(|i| i.to_string())),
        if c.from_cache {
            "  [peers from cache: RPC not reached yet]"
        } else {
            ""
        }
    ));
    s.push_str(&render_verification(&c.verification));
    if let Some(e) = &c.last_error {
        s.push_str(&format!("# chain: {e}\n"));
    }
    if let (false, Some(e)) = (n.registered, &n.registration_error) {
        s.push_str(&format!("# registration: {e}\n"));
    }
    match &n.attestation {
        Some(a) if a.verified => s.push_str(&format!(
            "attested: {} (compose {})\n",
            opt(a.tcb_status.clone()),
            short(a.compose_hash.as_deref().unwrap_or("-"), 14, verbose)
        )),
        Some(a) => s.push_str(&format!(
            "# attestation: this node's own evidence does not pass ({}): {}\n",
            opt(a.kind.clone()),
            opt(a.reason.clone())
        )),
        None => {}
    }
    s
}

/// The NAT in front of this node as STUN showed it, and (verbose) what the node publishes.
/// Whom the view rests on: one provider, unverified, or a quorum, with any provider answering otherwise.
fn render_verification(v: &mesh_api::Verification) -> String {
    let mut s = match v.verified {
        false => "rpc: one provider, unverified (give several --rpc-url for a quorum)\n".to_owned(),
        true => {
            let mut s = format!(
                "rpc: {} of {} providers must agree",
                v.quorum,
                v.providers.len()
            );
            if v.splits > 0 {
                s.push_str(&format!(", {} reads without a quorum", v.splits));
            }
            s.push('\n');
            s
        }
    };
    for p in v.providers.iter().filter(|p| p.dissenting) {
        let others = match p.dissented_from.as_slice() {
            [] => "the others".to_owned(),
            names => names.join(" and "),
        };
        s.push_str(&format!(
            "# rpc: {} answers unlike {others}, whose answer is taken ({} of {} answers, last {}): one side lies; if it is {}, the others lie alike\n",
            p.url,
            p.dissented,
            p.agreed + p.dissented,
            p.last_dissent.as_deref().unwrap_or("?"),
            p.url,
        ));
    }
    for p in &v.providers {
        if let Some(why) = &p.failing {
            let since = p
                .failing_secs
                .map(|t| format!(" for {t} s"))
                .unwrap_or_default();
            s.push_str(&format!("# rpc: {} does not answer{since}: {why}\n", p.url));
        }
    }
    if let Some(split) = &v.last_split {
        s.push_str(&format!("# rpc: last read without a quorum: {split}\n"));
    }
    s
}

fn render_nat(nat: &mesh_api::Nat, verbose: bool) -> String {
    let answered = nat.servers.iter().filter(|s| s.mapped.is_some()).count();
    let mapped = if nat.mapped.is_empty() {
        "-".to_owned()
    } else {
        nat.mapped.join(", ")
    };
    let mut s = if nat.servers.is_empty() {
        format!("nat mapping {} (STUN off)", nat.mapping)
    } else {
        format!(
            "nat mapping {}  public {mapped}  ({answered} of {} STUN servers answered)",
            nat.mapping,
            nat.servers.len()
        )
    };
    s.push_str(&format!(
        "  candidates {}
",
        nat.candidates.len()
    ));
    if verbose {
        for c in &nat.candidates {
            s.push_str(&format!(
                "        candidate {} ({})
",
                c.address, c.source
            ));
        }
    }
    s
}

/// Who leads, and why this node does not when it is named.
fn render_leader(leader: &Leader) -> String {
    let mut s = String::new();
    let term = leader
        .term
        .map(|t| format!(", term {t}"))
        .unwrap_or_default();
    let freshness = match (leader.state, leader.age_ms) {
        (mesh_api::Freshness::Current, _) => String::new(),
        (state, Some(age)) => format!("  [{} for {:.1} s]", state.as_str(), age as f64 / 1000.0),
        (state, None) => format!("  [{}]", state.as_str()),
    };
    s.push_str(&match (leader.token_id, leader.is_self, leader.reachable) {
        (None, ..) if leader.refused_seat.is_some() => format!(
            "leader REFUSED: seat {} is named, but this node refuses its evidence{term}\n",
            leader.refused_seat.unwrap_or(0)
        ),
        (None, ..) => format!("leader none elected{term}{freshness}\n"),
        (Some(t), true, _) => format!(
            "leader seat {t} (this node{term}, lease {:.1} s left)\n",
            leader.lease_ms.unwrap_or(0) as f64 / 1000.0
        ),
        (Some(t), false, r) => format!(
            "leader seat {t} at {}{term}{}{freshness}\n",
            opt(leader.address.clone()),
            match r {
                Some(true) => "  answering",
                Some(false) => "  NOT answering",
                None => "",
            }
        ),
    });
    match (&leader.reason, leader.refused_seat) {
        (Some(why), Some(_)) => s.push_str(&format!("# {why}\n")),
        (Some(why), None) => s.push_str(&format!(
            "# this node is named leader but does not lead: {why}\n"
        )),
        (None, _) => {}
    }
    if !leader.healthy {
        s.push_str("# this node is unhealthy (GET /v1/health says why): it will not lead\n");
    }
    s
}

/// The peers' table.
fn render_peers(peers: &[Peer], now: u64, verbose: bool) -> String {
    let mut s = String::new();
    if peers.is_empty() {
        s.push_str("no peers\n");
        return s;
    }
    s.push_str(&format!(
        "  {:<5} {:<14} {:<15} {:<14} {:<22} {:<12} {:<10} {:<10} {:<9} {:<9} {:>10} {:>10}\n",
        "TOKEN",
        "INSTANCE",
        "OVERLAY",
        "WG KEY",
        "ENDPOINT",
        "CONNECTION",
        "PATH",
        "ATTESTED",
        "HEARD",
        "HANDSHAKE",
        "RX",
        "TX"
    ));
    for p in peers {
        let marker = if p.healthy { '●' } else { '○' };
        let connection = match p.connection {
            ConnectionKind::Wireguard => "wireguard",
            ConnectionKind::TlsGateway => "tls-gateway",
            ConnectionKind::Unreachable => "unreachable",
        };
        s.push_str(&format!(
            "{marker} {:<5} {:<14} {:<15} {:<14} {:<22} {:<12} {:<10} {:<10} {:<9} {:<9} {:>10} {:>10}\n",
            p.token_id,
            short(&p.instance_id, 12, verbose),
            p.overlay_ip,
            short(
                &p.wg_public_key
                    .map_or_else(|| "-".to_owned(), |k| k.to_string()),
                12,
                verbose
            ),
            p.endpoint.as_deref().unwrap_or("-"),
            connection,
            p.path.map_or("-", mesh_api::Path::as_str),
            p.attestation
                .as_ref()
                .and_then(|a| a.tcb_status.as_deref())
                .unwrap_or("-"),
            age(p.last_heard, now),
            age(p.latest_handshake, now),
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
        ));
        if p.connection == ConnectionKind::TlsGateway
            && let Some(url) = &p.gateway_url
        {
            s.push_str(&format!("        via {url}\n"));
        }
        if p.path == Some(mesh_api::Path::Relay)
            && let Some(url) = &p.relay_url
        {
            s.push_str(&format!("        relay {url}\n"));
        }
        if let Some(seat) = p.relay_seat {
            s.push_str(&format!("        relayed by seat {seat}\n"));
        }
        if let Some(why) = &p.path_reason {
            s.push_str(&format!("        why relayed: {why}\n"));
        }
        if verbose
            || matches!(
                p.path,
                Some(mesh_api::Path::Relay | mesh_api::Path::PeerRelay)
            )
        {
            let tried: Vec<String> = p
                .candidates
                .iter()
                .map(|c| format!("{} ({})", c.address, c.source))
                .collect();
            if !tried.is_empty() {
                s.push_str(&format!(
                    "        candidates {}  attempts {}\n",
                    tried.join(", "),
                    p.punch_attempts
                ));
            }
        }
    }
    s
}

/// The seats whose evidence the agent refused, each with why; nothing when there are none.
fn render_refused(refused: &[RefusedPeer], verbose: bool) -> String {
    let mut s = String::new();
    if refused.is_empty() {
        return s;
    }
    s.push_str("\nrefused (not configured: their attestation does not pass):\n");
    for r in refused {
        s.push_str(&format!(
            "✗ {:<5} {:<14} {:<22} {}\n",
            r.token_id,
            short(&r.instance_id, 12, verbose),
            r.kind,
            r.reason
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grants line says whether a policy is in force, this node's tags and the drops by rule; nothing
    /// before the policy is read.
    #[test]
    fn the_peer_relay_line_says_whether_it_offers_and_what_it_carries() {
        assert_eq!(render_peer_relay(None), "");
        let r = mesh_api::PeerRelayStatus {
            offering: true,
            why: "--relay-for-peers always".into(),
            allocations: 1,
            forwarded_bytes: 3 << 20,
            refused: [("full".to_owned(), 2)].into(),
            ..Default::default()
        };
        assert_eq!(
            render_peer_relay(Some(&r)),
            "peer relay: offered (--relay-for-peers always); 1 pair now, 3.0 MiB forwarded; refused 2 full\n"
        );
    }

    #[test]
    fn the_grants_line_says_what_is_in_force_and_what_it_dropped() {
        assert_eq!(render_policy(None), "");
        let mut p = mesh_api::PolicyStatus {
            enforced: true,
            version: 4,
            pending: None,
            grants: 1,
            own_tags: vec!["db".into()],
            dropped: mesh_api::PolicyDrops {
                no_grant: 3,
                ..mesh_api::PolicyDrops::default()
            },
        };
        assert_eq!(
            render_policy(Some(&p)),
            "grants: version 4 in force, 1 grant, this node tagged db; dropped here: 3 no-grant, 0 protocol, 0 malformed\n"
        );
        p.pending = Some(5);
        assert_eq!(
            render_policy(Some(&p)),
            "grants: version 4 in force, 1 grant, this node tagged db; dropped here: 3 no-grant, 0 protocol, 0 malformed; version 5 read, not yet applied\n"
        );
        p.enforced = false;
        assert_eq!(
            render_policy(Some(&p)),
            "grants: none in force (version 4): every seat reaches every port; version 5 read, not yet applied\n"
        );
    }

    /// A zero or missing handshake is "never"; others are ages in the largest whole unit.
    #[test]
    fn handshake_ages_read_like_wg() {
        assert_eq!(age(None, 1000), "never");
        assert_eq!(age(Some(0), 1000), "never");
        assert_eq!(age(Some(990), 1000), "10s ago");
        assert_eq!(age(Some(1000 - 125), 1000), "2m ago");
        assert_eq!(age(Some(1), 1 + 3 * 86_400), "3d ago");
    }

    /// A refused seat is listed with its reason; none, nothing.
    #[test]
    fn refused_seats_are_listed_with_their_reason() {
        assert_eq!(render_refused(&[], false), "");
        let text = render_refused(
            &[RefusedPeer {
                token_id: 2,
                instance_id: "ab".repeat(20),
                kind: "instance-mismatch".into(),
                reason: "the evidence names another instance".into(),
                stage: None,
                stage_until: None,
            }],
            false,
        );
        let row = text
            .lines()
            .find(|l| l.starts_with("✗ 2 "))
            .expect("a row for seat 2");
        assert!(
            row.contains("abababababab…") && row.contains(" instance-mismatch "),
            "{row}"
        );
        assert!(
            text.contains("the evidence names another instance"),
            "{text}"
        );
    }

    /// A leader this node refuses is shown as refused, with why; none elected as none; one that does not
    /// answer says so.
    #[test]
    fn the_leader_line_says_refused_none_or_not_answering() {
        let refused = Leader {
            refused_seat: Some(1),
            term: Some(4),
            reason: Some(
                "the contract names seat 1 leader, but this node refuses its evidence".into(),
            ),
            ..Leader::default()
        };
        let text = render_leader(&refused);
        assert!(
            text.starts_with(
                "leader REFUSED: seat 1 is named, but this node refuses its evidence, term 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("# the contract names seat 1 leader"),
            "{text}"
        );
        assert!(render_leader(&Leader::default()).starts_with("leader none elected"));
        let silent = Leader {
            token_id: Some(2),
            reachable: Some(false),
            address: Some("10.0.1.2".into()),
            ..Leader::default()
        };
        assert!(render_leader(&silent).contains("NOT answering"));
    }

    /// Transfer is shown in binary units.
    #[test]
    fn a_forwarded_port_says_what_became_of_its_connections() {
        assert_eq!(render_ports(&[]), "");
        let port = mesh_api::ForwardedPort {
            role: mesh_api::PortRole::Leader,
            listen: 5432,
            target: 5433,
            bound: vec!["127.0.0.1:5432".parse().unwrap()],
            open: 1,
            total: mesh_api::ForwardCounts {
                opened: 5,
                fenced: 2,
                unreachable: 1,
                bytes_to_service: 4096,
                bytes_from_service: 10,
            },
            refused: [("not-current".to_owned(), 3)].into(),
            routes: vec![mesh_api::RouteCounts {
                term: Some(8),
                seat: 2,
                counts: mesh_api::ForwardCounts::default(),
            }],
        };
        assert_eq!(
            render_ports(std::slice::from_ref(&port)),
            "leader port 5432 -> leader 5433: 1 open, 5 forwarded (2 fenced, 1 unreachable), refused 3 not-current; 4.0 KiB to, 10 B from; latest term 8, seat 2\n\n"
        );
    }

    /// A peer on a peer relay says so in the PATH column, names the seat relaying, and lists what punching
    /// tries.
    #[test]
    fn a_peer_on_a_peer_relay_names_the_seat_relaying() {
        let peer: Peer = serde_json::from_value(json!({
            "tokenId": 2, "instanceId": "ab12", "overlayIp": "10.0.1.2", "wgPublicKey": null,
            "endpoint": null, "gatewayUrl": null, "connection": "wireguard", "path": "peer-relay",
            "relaySeat": 3, "candidates": [{"address": "203.0.113.2:40002", "source": "stun"}],
            "punchAttempts": 4, "address": "10.0.1.2", "healthy": true, "latestHandshake": null,
            "rxBytes": 0, "txBytes": 0,
        }))
        .expect("a peer");
        let text = render_peers(std::slice::from_ref(&peer), 1000, false);
        let row = text
            .lines()
            .find(|l| l.starts_with("● 2 "))
            .expect("a row for seat 2");
        assert!(row.contains(" peer-relay "), "{text}");
        assert!(text.contains("\n        relayed by seat 3\n"), "{text}");
        assert!(
            text.contains("candidates 203.0.113.2:40002 (stun)  attempts 4"),
            "{text}"
        );
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
