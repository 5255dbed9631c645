//! A /16 overlay: a cluster deployed with `--prefix 10.1.0.0/16` maps seat N to the N-th host address of
//! the prefix, `10.1.0.0 + N`, so seats 1, 256 and 300 are `10.1.0.1`, `10.1.1.0` and `10.1.1.44`. Three
//! nodes hold those seats (the 297 seats between them are minted and deactivated), and every layer agrees:
//! the contract (`meshctl peers`), each agent's status (its address and the prefix), its interface address
//! (with the /16), the peers each agent lists, and pings between every pair at those addresses.
//!
//! Run as root, after building the binaries it runs:
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios overlay16:: -- --nocapture
//! ```

use std::net::Ipv4Addr;

use netns_tests::prelude::*;

const SEATS: [(u64, Ipv4Addr); 3] = [
    (1, Ipv4Addr::new(10, 1, 0, 1)),
    (256, Ipv4Addr::new(10, 1, 1, 0)),
    (300, Ipv4Addr::new(10, 1, 1, 44)),
];

#[test]
fn seats_above_255_mesh_in_a_16_overlay_at_the_nth_host_address() {
    require_mesh_prerequisites();
    let steps = Steps::new("overlay16");
    let lan = Lan::new(SEATS.len());
    let cluster = Cluster::deploy_layout(
        &lan,
        &Layout {
            prefix: "10.1.0.0/16",
            tokens: SEATS.iter().map(|(t, _)| *t).collect(),
            releases: Vec::new(),
            apps: Vec::new(),
        },
    );
    steps.step("cluster on 10.1.0.0/16 with seats 1, 256 and 300 bound, 297 others inactive");
    for (i, (token, ip)) in SEATS.iter().enumerate() {
        assert_eq!(cluster.overlay_of(i + 1), *ip, "seat {token}");
    }
    let (agents, _) = Agent::builder(&cluster).mesh(1..=SEATS.len());
    steps.step("the three agents meshed");
    for (a, (token, ip)) in agents.iter().zip(SEATS) {
        let (status, peers) = a.status();
        assert_eq!(status.node.token_id, Some(token));
        assert_eq!(status.node.overlay_ip, Some(ip), "seat {token}'s agent");
        assert_eq!(
            status.chain.prefix.as_deref(),
            Some("10.1.0.0/16"),
            "seat {token}'s agent reports the cluster's prefix"
        );
        let listed: Vec<(u64, Ipv4Addr)> =
            peers.iter().map(|p| (p.token_id, p.overlay_ip)).collect();
        for (other, other_ip) in SEATS.iter().filter(|(t, _)| *t != token) {
            assert!(
                listed.contains(&(*other, *other_ip)),
                "seat {token}'s agent lists {listed:?}, not seat {other} at {other_ip}"
            );
        }
        let addresses = a
            .ns()
            .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", &a.ifname]);
        assert!(
            addresses.contains(&format!("inet {ip}/16")),
            "seat {token}'s interface {}: {addresses}",
            a.ifname
        );
    }
    let onchain: Vec<(u64, String)> = cluster
        .peers()
        .iter()
        .filter_map(|p| Some((p["tokenId"].as_u64()?, p["overlayIp"].as_str()?.to_owned())))
        .collect();
    for (token, ip) in SEATS {
        assert!(
            onchain.contains(&(token, ip.to_string())),
            "meshctl peers: {onchain:?}, not seat {token} at {ip}"
        );
    }
    for from in 1..=SEATS.len() {
        for to in (1..=SEATS.len()).filter(|to| *to != from) {
            assert_pings(&agents, from, to);
        }
    }
    steps.step("every pair pings at 10.1.0.1, 10.1.1.0 and 10.1.1.44");
}
