//! Which outside dependencies fail now, as the tasks saw them, named for the API (`/v1/status` `faults`): an
//! RPC provider that does not answer, reads without a quorum, a chain that stopped making blocks, a PCCS
//! that gave no collateral, dstack's guest agent gone, a state directory that cannot be written, a peer's
//! relay that cannot be dialled while the peer needs it, and STUN servers none of which answer. Pure.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mesh_api::Fault;
use mesh_wg::PathKind;

use crate::state::{ChainState, Failing, MeshState};

/// What the faults are read from.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    pub chain: &'a ChainState,
    pub mesh: &'a MeshState,
    /// dstack's guest agent, as the dstack watch last saw it.
    pub dstack: Option<&'a Failing>,
    /// Why following the chain fails now, rendered with the providers' credentials scrubbed.
    pub following: Option<String>,
}

/// Unix seconds of `t`.
fn unix(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn fault(dependency: &str, detail: String, since: Option<u64>) -> Fault {
    Fault {
        dependency: dependency.to_owned(),
        detail,
        since,
    }
}

fn failing(dependency: &str, f: &Failing) -> Fault {
    fault(dependency, f.why.clone(), unix(f.since))
}

/// Every dependency that fails now, in [`mesh_api::FAULT_DEPENDENCIES`] order; `now` on both clocks.
pub fn faults(s: Sources<'_>, wall: SystemTime, mono: Instant) -> Vec<Fault> {
    let mut out = Vec::new();
    let wall_of = |at: Instant| unix(wall - mono.saturating_duration_since(at));
    for p in &s.chain.rpcs.providers {
        if let Some(why) = &p.failing {
            out.push(fault(
                "rpc",
                format!("the RPC {} does not answer: {why}", p.url),
                p.failing_since.and_then(wall_of),
            ));
        }
    }
    if let Some(following) = s.following {
        out.push(fault("rpc", following, None));
    }
    out.extend(s.chain.stalled.iter().map(|f| failing("chain", f)));
    out.extend(
        s.chain
            .collateral_failing
            .iter()
            .map(|f| failing("pccs", f)),
    );
    out.extend(s.dstack.map(|f| failing("dstack", f)));
    out.extend(s.chain.save_failing.iter().map(|f| failing("state-dir", f)));
    for m in s.mesh.members.values() {
        let Some(stat) = m.wg_public_key.and_then(|k| s.mesh.stats.get(&k)) else {
            continue;
        };
        // Only while the peer needs its relay: a relay that is down matters to no pair whose UDP works.
        if let (PathKind::Relay, Some(why), Some(relay)) =
            (stat.path, &stat.relay_error, &stat.relay)
        {
            out.push(fault(
                "relay",
                format!(
                    "seat {}'s relay {relay} cannot be reached, and its UDP does not get through: {why}",
                    m.token_id
                ),
                None,
            ));
        }
    }
    if let Some(nat) = &s.mesh.nat {
        let servers = &nat.report.servers;
        if !servers.is_empty() && servers.iter().all(|x| x.mapped.is_none()) {
            let names: Vec<String> = servers.iter().map(|x| x.server.to_string()).collect();
            out.push(fault(
                "stun",
                format!(
                    "none of the {} STUN servers answered ({}): this node publishes only the addresses it knows, and peers behind NATs reach it through the relay",
                    servers.len(),
                    names.join(", ")
                ),
                nat.unanswered_since.and_then(unix),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_chain::quorum::{ProviderReport, QuorumReport};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn nothing_failing_names_nothing() {
        let chain = ChainState::default();
        let mesh = MeshState::default();
        let sources = Sources {
            chain: &chain,
            mesh: &mesh,
            dstack: None,
            following: None,
        };
        assert!(faults(sources, at(1_000), Instant::now()).is_empty());
    }

    #[test]
    fn each_failing_dependency_is_named_with_since_when() {
        let mono = Instant::now();
        let chain = ChainState {
            rpcs: QuorumReport {
                quorum: 2,
                providers: vec![
                    {
                        let mut a = ProviderReport::default();
                        a.url = "https://a.example/".into();
                        a.failing = Some("connection refused".into());
                        a.failing_since = Some(mono - Duration::from_secs(4));
                        a
                    },
                    {
                        let mut b = ProviderReport::default();
                        b.url = "https://b.example/".into();
                        b
                    },
                ],
                ..QuorumReport::default()
            },
            stalled: Some(Failing {
                since: at(900),
                why: "the chain has made no block for 100 s".into(),
            }),
            collateral_failing: Some(Failing {
                since: at(950),
                why: "the PCCS gave no collateral".into(),
            }),
            save_failing: Some(Failing {
                since: at(990),
                why: "cannot save the state file: No space left on device".into(),
            }),
            ..ChainState::default()
        };
        let mesh = MeshState {
            members: Default::default(),
            ..MeshState::default()
        };
        let dstack = Failing {
            since: at(995),
            why: "dstack's guest agent at /run/dstack.sock does not answer".into(),
        };
        let got = faults(
            Sources {
                chain: &chain,
                mesh: &mesh,
                dstack: Some(&dstack),
                following: Some("following the chain: too few RPCs answered".into()),
            },
            at(1_000),
            mono,
        );
        let named: Vec<(&str, Option<u64>)> = got
            .iter()
            .map(|f| (f.dependency.as_str(), f.since))
            .collect();
        assert_eq!(
            named,
            vec![
                ("rpc", Some(996)),
                ("rpc", None),
                ("chain", Some(900)),
                ("pccs", Some(950)),
                ("dstack", Some(995)),
                ("state-dir", Some(990)),
            ]
        );
        assert_eq!(
            got[0].detail,
            "the RPC https://a.example/ does not answer: connection refused"
        );
    }

    #[test]
    fn a_relay_is_named_only_while_its_peer_needs_it_and_stun_only_when_no_server_answers() {
        let key = mesh_wg::Key::from_bytes([7; 32]);
        let member = mesh_chain::membership::Member {
            token_id: 3,
            instance_id: "i3".into(),
            overlay_ip: std::net::Ipv4Addr::new(10, 0, 1, 3),
            wg_public_key: Some(key),
            endpoint: None,
            gateway_url: Some(format!("https://{:040x}-8080.mesh.test", 3)),
            nonce: 1,
            app_id: alloy::primitives::Address::ZERO,
        };
        let relay =
            mesh_relay::relay_target(&format!("https://{:040x}-8080.mesh.test", 3), 51820).unwrap();
        let status = |path| mesh_wg::PeerStatus {
            peer_relay: None,
            health_timeout: mesh_wg::DEFAULT_PEER_TIMEOUT,
            public_key: key,
            endpoint: None,
            relay: Some(relay.clone()),
            path,
            punch: mesh_wg::PunchStatus::default(),
            allowed_ips: Vec::new(),
            last_handshake: None,
            last_heard: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
            relay_error: Some("connection refused".into()),
            reach: mesh_wg::Reach::everything(),
            policy_dropped: mesh_wg::DropCounts::default(),
        };
        let servers = |mapped: Option<&str>| mesh_wg::NatStatus {
            report: mesh_wg::NatReport {
                servers: vec![mesh_wg::StunResult {
                    server: "192.0.2.9:3478".parse().unwrap(),
                    mapped: mapped.map(|m| m.parse().unwrap()),
                    rtt: None,
                }],
                checked_at: Some(at(990)),
                ..mesh_wg::NatReport::default()
            },
            candidates: Vec::new(),
            // Silent since a round before the latest.
            unanswered_since: mapped.is_none().then(|| at(950)),
        };
        let named = |path, mapped: Option<&str>| {
            let mesh = MeshState {
                members: [(member.token_id, member.clone())].into_iter().collect(),
                stats: [(key, status(path))].into_iter().collect(),
                nat: Some(servers(mapped)),
                ..MeshState::default()
            };
            let chain = ChainState::default();
            faults(
                Sources {
                    chain: &chain,
                    mesh: &mesh,
                    dstack: None,
                    following: None,
                },
                at(1_000),
                Instant::now(),
            )
        };
        let both = named(PathKind::Relay, None);
        assert_eq!(
            both.iter()
                .map(|f| f.dependency.as_str())
                .collect::<Vec<_>>(),
            vec!["relay", "stun"]
        );
        assert!(
            both[0].detail.starts_with("seat 3's relay ")
                && both[0].detail.ends_with(": connection refused"),
            "{}",
            both[0].detail
        );
        assert_eq!(both[1].since, Some(950), "since the first silent round");
        // Direct, and a STUN server that answered: nothing.
        assert!(named(PathKind::Direct, Some("203.0.113.1:40000")).is_empty());
    }
}
