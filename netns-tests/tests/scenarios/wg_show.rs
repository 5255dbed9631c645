//! `wg show` against the agents' interfaces: in a three-node mesh, after pings across, each node's
//! `wg show <if> dump` lists exactly the other two nodes' keys (the same keys `meshctl status` and
//! `meshctl peers` report), each with a recent handshake, non-zero rx and tx, endpoint
//! 198.51.100.x:51820, allowed ips 10.0.1.x/32 and keepalive 25; and plain `wg show <if>` prints a
//! "latest handshake:" and a "transfer:" line for each peer.
//!
//! Read from the mesh the `observers` scenario deploys, which runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netns_tests::prelude::*;

/// How old a handshake may be and still count as recent.
const RECENT: Duration = Duration::from_secs(180);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Plain `wg show <if>`: each peer's block of lines, by key.
fn peer_blocks(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut blocks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(key) = line.strip_prefix("peer: ") {
            current = Some(key.trim().to_owned());
            blocks.entry(key.trim().to_owned()).or_default();
        } else if line.starts_with("interface: ") {
            current = None;
        } else if let Some(k) = &current {
            blocks
                .get_mut(k)
                .expect("block opened")
                .push(line.trim().to_owned());
        }
    }
    blocks
}

/// Every node's interface, as `wg show` sees it, matches the mesh the agents and the chain report.
pub(crate) fn every_peer_is_listed_with_handshake_and_transfer(
    steps: &Steps,
    lan: &Lan,
    cluster: &Cluster<'_>,
    agents: &[Agent<'_>],
    keys: &[Key],
) {
    let nodes = agents.len();
    for from in 1..=nodes {
        for to in (1..=nodes).filter(|&to| to != from) {
            let got = ping(
                lan.node(from),
                overlay_ip(to as u64),
                3,
                Duration::from_millis(200),
            );
            assert_eq!(
                got,
                (3, 3),
                "node {from} -> node {to} over the overlay\n{}\n{}",
                statuses(agents),
                tails(agents)
            );
        }
    }
    steps.step("3-node mesh healthy; all 6 ordered pairs ping");

    // What the chain says (meshctl peers) must be what every agent reports.
    let onchain: BTreeMap<u64, Key> = cluster
        .peers()
        .iter()
        .map(|p| {
            (
                p["tokenId"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no tokenId: {p}")),
                p["wgPublicKey"]
                    .as_str()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or_else(|| panic!("no wgPublicKey: {p}")),
            )
        })
        .collect();
    let want_onchain: BTreeMap<u64, Key> = (1..=nodes).map(|j| (j as u64, keys[j - 1])).collect();
    assert_eq!(
        onchain, want_onchain,
        "meshctl peers vs the agents' own keys"
    );

    let now = unix_now();
    for a in agents {
        let i = a.index;
        let (iface, dump) = a.wg_dump();
        let raw = a.wg_dump_text();
        assert_eq!(
            iface.get(1).and_then(|k| k.parse::<Key>().ok()),
            Some(keys[i - 1]),
            "node {i}'s dump must show its own public key: {raw}"
        );
        assert_eq!(
            iface.get(2).map(String::as_str),
            Some(WG_PORT.to_string().as_str()),
            "node {i}'s listen port: {raw}"
        );

        let from_status: BTreeMap<u64, Key> = a
            .status()
            .1
            .into_iter()
            .map(|p| {
                let key = p
                    .wg_public_key
                    .unwrap_or_else(|| panic!("node {i}: peer {} has no key", p.token_id));
                (p.token_id, key)
            })
            .collect();
        let others: BTreeMap<u64, Key> = onchain
            .iter()
            .filter(|(t, _)| **t != i as u64)
            .map(|(t, k)| (*t, *k))
            .collect();
        assert_eq!(
            from_status, others,
            "node {i}: meshctl status peers vs meshctl peers"
        );

        let dumped: BTreeSet<Key> = dump.iter().map(|p| p.public_key).collect();
        let want: BTreeSet<Key> = others.values().copied().collect();
        assert_eq!(
            dumped, want,
            "node {i}: wg dump peers must be exactly the other two nodes' keys: {raw}"
        );
        assert_eq!(dump.len(), nodes - 1, "node {i}: duplicate peers in {raw}");

        for (&j, key) in &others {
            let p = dump
                .iter()
                .find(|p| &p.public_key == key)
                .expect("checked above");
            let ctx = format!("node {i}'s peer node {j} in {raw}");
            assert!(
                p.latest_handshake > 0
                    && p.latest_handshake + RECENT.as_secs() >= now
                    && p.latest_handshake <= now + 5,
                "latest handshake {} is not within {RECENT:?} of now ({now}): {ctx}",
                p.latest_handshake
            );
            assert!(
                p.rx > 0 && p.tx > 0,
                "rx {} / tx {} must be non-zero: {ctx}",
                p.rx,
                p.tx
            );
            assert_eq!(
                p.endpoint,
                format!("{}:{WG_PORT}", lan_ip(j as usize)),
                "{ctx}"
            );
            assert_eq!(p.allowed_ips, format!("{}/32", overlay_ip(j)), "{ctx}");
            assert_eq!(p.keepalive, "25", "persistent keepalive: {ctx}");
        }

        let plain = a.ns().exec_ok(&["wg", "show", &a.ifname]);
        let blocks = peer_blocks(&plain);
        assert_eq!(
            blocks
                .keys()
                .map(|k| k.parse::<Key>().unwrap_or_else(|e| panic!("wg show: {e}")))
                .collect::<BTreeSet<_>>(),
            want,
            "node {i}: wg show peers: {plain}"
        );
        for (key, lines) in &blocks {
            for label in ["latest handshake:", "transfer:"] {
                assert!(
                    lines.iter().any(|l| l.starts_with(label)),
                    "node {i}: wg show has no {label:?} line for peer {key}:\n{plain}"
                );
            }
        }
        let seen: Vec<String> = others
            .iter()
            .filter_map(|(j, key)| {
                let p = dump.iter().find(|p| &p.public_key == key)?;
                Some(format!(
                    "node {j}: handshake {} s ago, rx {} tx {}",
                    now.saturating_sub(p.latest_handshake),
                    p.rx,
                    p.tx
                ))
            })
            .collect();
        steps.step(&format!("node {i}'s wg show: {}", seen.join("; ")));
    }
}
