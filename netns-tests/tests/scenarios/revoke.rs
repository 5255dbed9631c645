//! Revoking a seat removes it everywhere and cuts its node off: in a three-node mesh the owner revokes
//! seat 3 (`meshctl revoke --token 3 --yes`); nodes 1 and 2 must drop it from `meshctl status` and its
//! key from their interfaces (`wg show <if> dump`) within a bound, after which node 3 can no longer reach
//! 10.0.1.1 or 10.0.1.2 while 1 and 2 still reach each other. Prints the measured time from the revoke
//! transaction's return to the removal on both nodes ("revocation propagated in ...").
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios revoke:: -- --nocapture
//! ```
//!
//! Needs what `tests/scenarios/mesh.rs` needs (root, /dev/net/tun, iproute2, iputils-ping, wireguard-tools, anvil).
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::{Duration, Instant};

use netns_tests::prelude::*;

const NODES: usize = 3;
/// The agents poll the chain every 200 ms; removal everywhere must take well under this.
const PROPAGATION_BOUND: Duration = Duration::from_secs(15);
/// How long to keep looking before saying removal never happened (beyond the bound, to tell slow from never).
const GIVE_UP: Duration = Duration::from_secs(30);

/// Whether `meshctl status` on `a` still lists seat `token` (an error counts as "still listed").
fn lists_seat(a: &Agent<'_>, token: u64) -> bool {
    match a.try_status() {
        Ok(v) => v["peers"]
            .as_array()
            .is_none_or(|peers| peers.iter().any(|p| p["tokenId"].as_u64() == Some(token))),
        Err(_) => true,
    }
}

/// The owner revokes seat 3: nodes 1 and 2 forget it (status and interface) within the bound, and node 3
/// is cut off from them while they still reach each other.
#[test]
fn a_revoked_seat_is_removed_everywhere_and_cut_off() {
    require_mesh_prerequisites();
    let steps = Steps::new("revoke");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    steps.step(&format!(
        "LAN up, cluster {} deployed, 3 seats minted",
        cluster.contract
    ));
    let (mut agents, keys) = Agent::builder(&cluster).mesh(1..=NODES);
    for (from, to) in [(3, 1), (3, 2), (1, 2), (2, 1)] {
        assert_eq!(
            replies(&agents, from, to),
            3,
            "before the revocation node {from} must reach node {to}\n{}\n{}",
            statuses(&agents),
            tails(&agents)
        );
    }
    for a in &agents[..2] {
        assert!(
            a.wg_peer_keys().contains(&keys[2]),
            "node {} has no peer for node 3",
            a.index
        );
    }
    steps.step("3-node mesh healthy; 3 -> 1, 3 -> 2, 1 <-> 2 ping");

    let key3 = keys[2];
    let revoked = cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    let t_rev = Instant::now();
    assert_eq!(revoked["revoked"].as_bool(), Some(true), "{revoked}");
    steps.step(&format!("owner revoked seat 3: {}", revoked["receipt"]));

    // When each of the four removals was first seen, relative to the revoke's return.
    let what = [
        "node 1's meshctl status drops seat 3",
        "node 1's wg dump drops node 3's key",
        "node 2's meshctl status drops seat 3",
        "node 2's wg dump drops node 3's key",
    ];
    let mut seen: [Option<Duration>; 4] = [None; 4];
    loop {
        let now = t_rev.elapsed();
        for (k, a) in agents[..2].iter().enumerate() {
            if seen[2 * k].is_none() && !lists_seat(a, 3) {
                seen[2 * k] = Some(now);
            }
            if seen[2 * k + 1].is_none() && !a.wg_peer_keys().contains(&key3) {
                seen[2 * k + 1] = Some(now);
            }
        }
        if seen.iter().all(Option::is_some) {
            break;
        }
        if t_rev.elapsed() >= GIVE_UP {
            let missing: Vec<&str> = what
                .iter()
                .zip(&seen)
                .filter(|(_, s)| s.is_none())
                .map(|(w, _)| *w)
                .collect();
            panic!(
                "{GIVE_UP:?} after the revoke returned, still not done: {}\nnode 1 dump:\n{}\nnode 2 dump:\n{}\n{}\n{}",
                missing.join("; "),
                agents[0].wg_dump_text(),
                agents[1].wg_dump_text(),
                statuses(&agents),
                tails(&agents)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let propagated = seen.iter().flatten().max().copied().expect("four times");
    for (w, s) in what.iter().zip(&seen) {
        steps.step(&format!(
            "{w}: {:.2?} after the revoke returned",
            s.expect("seen")
        ));
    }
    eprintln!(
        "revocation propagated in {propagated:.2?} (revoke tx returned -> seat 3 gone from meshctl status and wg dump on nodes 1 and 2; poll step 50 ms + command time)"
    );
    assert!(
        propagated < PROPAGATION_BOUND,
        "revocation took {propagated:.2?} to reach nodes 1 and 2, over the {PROPAGATION_BOUND:?} bound"
    );
    // Gone for good, not just for a moment.
    std::thread::sleep(Duration::from_millis(500));
    for a in &agents[..2] {
        assert!(
            !lists_seat(a, 3) && !a.wg_peer_keys().contains(&key3),
            "node {} lists seat 3 again\n{}",
            a.index,
            statuses(&agents)
        );
        assert_eq!(
            a.wg_dump().1.len(),
            1,
            "node {} must have one peer left",
            a.index
        );
    }
    assert!(
        cluster
            .peers()
            .iter()
            .all(|p| p["tokenId"].as_u64() != Some(3)),
        "meshctl peers still lists seat 3: {:?}",
        cluster.peers()
    );

    for (from, to) in [(3, 1), (3, 2), (1, 3)] {
        let got = replies(&agents, from, to);
        assert_eq!(
            got,
            0,
            "after the revocation node {from} must not reach node {to} ({got} of 3 replies)\n{}\n{}",
            statuses(&agents),
            tails(&agents)
        );
    }
    for (from, to) in [(1, 2), (2, 1)] {
        assert_eq!(
            replies(&agents, from, to),
            3,
            "after the revocation node {from} must still reach node {to}\n{}\n{}",
            statuses(&agents),
            tails(&agents)
        );
    }
    steps.step("node 3 cut off from 1 and 2 (and 1 from 3); 1 <-> 2 still ping");
    // Node 3 itself learns that its seat is gone (it looks its seat up every 5 s once its record is
    // cleared): it leaves the mesh, its interface goes, and it offers applications no peers.
    wait_until(
        "node 3 to report itself without a seat, unregistered, with no peers",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (status, peers) = agents[2].status();
            status.node.token_id.is_none() && !status.node.registered && peers.is_empty()
        },
        || format!("{}\n{}", statuses(&agents), agents[2].tail()),
    );
    let links = agents[2].ns().ip(&["link", "show"]);
    assert!(
        !links.contains(&agents[2].ifname),
        "node 3 must remove its interface {} once its seat is gone: {links}",
        agents[2].ifname
    );
    assert!(
        agents[2]
            .warnings()
            .iter()
            .any(|w| w.contains("this node's seat is gone")),
        "node 3 must warn that it left the mesh\n{}",
        agents[2].tail()
    );
    steps.step("node 3 reports no seat, unregistered, no peers; its interface is gone");

    for a in &mut agents {
        let took = a.stop();
        steps.step(&format!("agent {} stopped cleanly ({took:.2?})", a.index));
    }
    assert_no_warnings(&agents[..2]);
    drop(agents);
    drop(cluster);
    drop(lan);
    steps.step("torn down");
}
