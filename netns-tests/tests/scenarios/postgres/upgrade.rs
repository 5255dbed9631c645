//! The runbook's upgrade (docs/runbook.md, "Upgrading the app or the OS"), end to end, while two clients
//! write through their nodes' leader ports: the owner allows the new compose hash; each node in turn is
//! upgraded in place (its agent and sidecar stopped, with SIGTERM, as a CVM's restart stops them; its
//! simulator restarted on the new image, with the same instance, volume and keys; both started again), keeps
//! its seat, asks its holder for a rebind, and is rebound; then the owner disallows the old hash. The leader's
//! node hands its term off when it is stopped. Every acknowledged write is on the final primary, none was
//! acknowledged by a demoted primary, and the total time with no writable primary is printed.

use super::*;

/// A gap between two acknowledged writes (of either client) longer than this is time with no writable
/// primary: each client writes every few tens of milliseconds while it can.
const DARK: Duration = Duration::from_millis(500);

fn leader_of(agents: &[Agent<'_>]) -> Option<u64> {
    let seen: Vec<Option<u64>> = agents
        .iter()
        .map(|a| a.leader().ok().and_then(|l| l.token_id))
        .collect();
    seen.windows(2)
        .all(|w| w[0] == w[1])
        .then(|| seen[0])
        .flatten()
}

#[test]
fn a_rolling_upgrade_loses_no_acknowledged_write() {
    require_postgres_prerequisites();
    let steps = Steps::new("postgres upgrade");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let flags = ["--leader-port", LEADER_PORT];
    let (mut agents, servers, sidecars, first_term) = primary_on_seat_1(&lan, &cluster, &flags);
    let mut sidecars: Vec<Option<App>> = sidecars.into_iter().map(Some).collect();
    let old = cluster.identity(1)["compose_hash"]
        .as_str()
        .expect("compose hash")
        .to_owned();
    let via_3 = Writer::start(lan.node(3), 0);
    let via_1 = Writer::start(lan.node(1), 1_000_000);
    wait_until(
        "both clients' writes to be acknowledged through their leader ports",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || via_3.acked().len() >= 10 && via_1.acked().len() >= 10,
        || roles(&servers),
    );
    steps.step(&format!(
        "seat 1's PostgreSQL is the primary under term {first_term} on compose hash {old}; both clients write"
    ));
    let started = Instant::now();

    let mut new = None;
    for i in 1..=NODES {
        let led = leader_of(&agents) == Some(i as u64);
        agents[i - 1].stop();
        sidecars[i - 1] = None;
        let hash = cluster.upgrade(i, "dstack-mesh-next");
        assert_ne!(hash, old, "another release, another compose hash");
        if new.is_none() {
            cluster.meshctl(0, &["app-auth", "allow-compose", &hash]);
            new = Some(hash);
        }
        agents[i - 1] = Agent::builder(&cluster).flags(flags).start(i);
        agents[i - 1].wait_ready(60);
        sidecars[i - 1] = Some(sidecar(&lan, &servers, &agents[i - 1], i));
        wait_until(
            &format!("node {i} to ask its holder for a rebind on-chain"),
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                agents[i - 1]
                    .try_status()
                    .is_ok_and(|s| s["status"]["node"]["seatRequest"]["onChain"] == true)
            },
            || agents[i - 1].tail(),
        );
        let instance = cluster.sims[i - 1].instance_id.clone();
        let seat = i.to_string();
        cluster.meshctl(i, &["bind", "--instance", &instance, "--token", &seat]);
        wait_until(
            &format!(
                "node {i}'s PostgreSQL to stream from the primary again, every node agreeing who leads"
            ),
            Duration::from_secs(120),
            Duration::from_millis(300),
            || {
                let Some(leader) = leader_of(&agents) else {
                    return false;
                };
                let host = format!("10.0.1.{leader}");
                (1..=NODES).all(|n| n as u64 == leader || is_replica_of(&servers, n, &host))
                    && matches!(role(servers.node(leader as usize)), Role::Primary(Some(_)))
            },
            || format!("{}\n{}", roles(&servers), tails(&agents)),
        );
        steps.step(&format!(
            "node {i} upgraded{}, rebound, and its PostgreSQL back; seat {:?} leads",
            if led { " (it led: it handed off)" } else { "" },
            leader_of(&agents)
        ));
    }
    cluster.meshctl(0, &["app-auth", "disallow-compose", &old]);
    steps.step("the old compose hash disallowed: no seat runs it");
    std::thread::sleep(Duration::from_secs(2));
    let rolled = started.elapsed();
    let leader = leader_of(&agents).expect("a leader") as usize;
    let mut acked: Vec<Ack> = via_3.stop().into_iter().chain(via_1.stop()).collect();
    assert_every_ack_kept(&servers, leader, &acked);
    acked.sort_by_key(|a| a.at);
    let gaps: Vec<Duration> = acked
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .filter(|g| *g > DARK)
        .collect();
    let dark: Duration = gaps.iter().sum();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    let terms: std::collections::BTreeSet<u64> = acked.iter().map(|a| a.term).collect();
    for a in &agents {
        let peers = a.peers().expect("peers");
        assert!(
            peers.len() == NODES - 1
                && peers.iter().all(|p| p.healthy
                    && p.attestation
                        .as_ref()
                        .and_then(|x| x.compose_hash.as_deref())
                        == new.as_deref()),
            "every node judges the others on the new image, over healthy tunnels: {peers:?}"
        );
    }
    println!(
        "postgres rolling upgrade: 3 nodes rolled in {:.1} s; {} writes acknowledged through the leader ports \
         under terms {terms:?}, 0 lost, 0 acknowledged by a demoted primary; no writable primary for {} ms in \
         all ({} gaps over {} ms, the longest {} ms)",
        rolled.as_secs_f64(),
        acked.len(),
        dark.as_millis(),
        gaps.len(),
        DARK.as_millis(),
        longest.as_millis()
    );
    steps.step(&format!(
        "all {} acknowledged writes on seat {leader}'s primary; no writable primary for {:.2} s in all",
        acked.len(),
        dark.as_secs_f64()
    ));
}
