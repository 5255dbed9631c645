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
//! cargo test -p netns-tests --test revoke -- --nocapture
//! ```
//!
//! Needs what `tests/mesh.rs` needs (root, /dev/net/tun, iproute2, iputils-ping, wireguard-tools, anvil).
//! `DSTACK_MESH_TEST_LOGS=<dir>` keeps the agents' logs.

use std::time::{Duration, Instant};

use netns_tests::netns::require_root;
use netns_tests::topology::{
    Agent, Cluster, Lan, overlay_ip, ping, start_agents, statuses, tails, wait_until, workspace_bin,
};

const NODES: usize = 3;
/// The agents poll the chain every 200 ms; removal everywhere must take well under this.
const PROPAGATION_BOUND: Duration = Duration::from_secs(15);
/// How long to keep looking before saying removal never happened (beyond the bound, to tell slow from never).
const GIVE_UP: Duration = Duration::from_secs(30);

fn step(t0: Instant, what: &str) {
    eprintln!("[revoke {:>6.2}s] {what}", t0.elapsed().as_secs_f64());
}

fn key_of(a: &Agent<'_>) -> String {
    a.status()
        .0
        .node
        .wg_public_key
        .unwrap_or_else(|| panic!("node {} reports no WireGuard key\n{}", a.index, a.tail()))
}

/// Whether `meshctl status` on `a` still lists seat `token` (an error counts as "still listed").
fn lists_seat(a: &Agent<'_>, token: u64) -> bool {
    match a.try_status() {
        Ok(v) => v["peers"]
            .as_array()
            .is_none_or(|peers| peers.iter().any(|p| p["tokenId"].as_u64() == Some(token))),
        Err(_) => true,
    }
}

/// Whether `a`'s interface still has a peer with `key`.
fn has_wg_key(a: &Agent<'_>, key: &str) -> bool {
    a.wg_dump().1.iter().any(|p| p.public_key == key)
}

/// Node `from` pings `to` 3 times (`-W 1`); returns replies received.
fn replies(agents: &[Agent<'_>], from: usize, to: usize) -> u32 {
    ping(
        agents[0].cluster.lan.node(from),
        overlay_ip(to as u64),
        3,
        Duration::from_millis(200),
    )
    .1
}

/// The owner revokes seat 3: nodes 1 and 2 forget it (status and interface) within the bound, and node 3
/// is cut off from them while they still reach each other.
#[test]
fn a_revoked_seat_is_removed_everywhere_and_cut_off() {
    require_root(&["ss"]);
    for bin in ["p2p-agent", "meshctl", "dstack-simulator"] {
        workspace_bin(bin);
    }
    let t0 = Instant::now();
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    step(
        t0,
        &format!(
            "LAN up, cluster {} deployed, 3 seats minted",
            cluster.contract
        ),
    );
    let mut agents = start_agents(&cluster, 1..=NODES);
    let keys: Vec<String> = agents.iter().map(key_of).collect();
    wait_until(
        "nodes 1-3 to report each other healthy over WireGuard",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            agents.iter().all(|a| {
                (1..=NODES)
                    .filter(|&j| j != a.index)
                    .all(|j| a.sees_healthy(j as u64, &keys[j - 1]))
            })
        },
        || format!("{}\n{}", statuses(&agents), tails(&agents)),
    );
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
            has_wg_key(a, &keys[2]),
            "node {} has no peer for node 3",
            a.index
        );
    }
    step(t0, "3-node mesh healthy; 3 -> 1, 3 -> 2, 1 <-> 2 ping");

    let key3 = keys[2].clone();
    let revoked = cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    let t_rev = Instant::now();
    assert_eq!(revoked["revoked"].as_bool(), Some(true), "{revoked}");
    step(t0, &format!("owner revoked seat 3: {}", revoked["receipt"]));

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
            if seen[2 * k + 1].is_none() && !has_wg_key(a, &key3) {
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
        step(
            t0,
            &format!("{w}: {:.2?} after the revoke returned", s.expect("seen")),
        );
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
            !lists_seat(a, 3) && !has_wg_key(a, &key3),
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
    step(
        t0,
        "node 3 cut off from 1 and 2 (and 1 from 3); 1 <-> 2 still ping",
    );
    step(
        t0,
        &format!(
            "node 3 after its revocation: {}",
            agents[2]
                .try_status()
                .map(|v| v["status"].to_string())
                .unwrap_or_else(|e| e)
        ),
    );

    for a in &mut agents[..2] {
        let took = a.stop();
        step(
            t0,
            &format!("agent {} stopped cleanly ({took:.2?})", a.index),
        );
    }
    let warnings: Vec<String> = agents[..2]
        .iter()
        .flat_map(|a| {
            a.warnings()
                .into_iter()
                .map(move |w| format!("agent {}: {w}", a.index))
        })
        .collect();
    assert!(
        warnings.is_empty(),
        "agents 1 and 2 logged warnings or errors:\n{}",
        warnings.join("\n")
    );
    drop(agents);
    drop(cluster);
    drop(lan);
    step(t0, "torn down");
}
