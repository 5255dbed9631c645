//! The unplanned change: the leader's node cut off the LAN (see the module above).

use super::*;

#[test]
fn postgres_follows_the_leader_without_losing_an_acknowledged_write() {
    require_postgres_prerequisites();
    let steps = Steps::new("postgres");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    let (agents, servers, mut sidecars, first_term) = primary_on_seat_1(
        &lan,
        &cluster,
        &[
            "--leader-timeout",
            LEADER_TIMEOUT,
            "--leader-port",
            LEADER_PORT,
        ],
    );
    steps.step(&format!(
        "seat 1's PostgreSQL is the primary under term {first_term}, 2 and 3 stream from it over the mesh"
    ));

    let held_back = HeldBack::new(&lan, 2, 1);
    // One client on a follower's node, one on the leader's: both through their node's leader port.
    let via_3 = Writer::start(lan.node(3), 0);
    let via_1 = Writer::start(lan.node(1), 1_000_000);
    let sampler = RoleSampler::start(&servers, Duration::from_millis(100));
    // Until seat 3 holds writes that seat 2 lacks: the new leader must then catch up before it promotes.
    wait_until(
        "seat 3 to hold acknowledged writes that seat 2's held-back replica lacks",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (Ok(on_3), Ok(on_2)) = (rows(&servers, 3), rows(&servers, 2)) else {
                return false;
            };
            on_3.len() >= on_2.len() + 20
        },
        || format!("{}\n{}", roles(&servers), tails_of(&sidecars)),
    );
    assert!(
        via_3.is_running() && via_1.is_running(),
        "a writer stopped early"
    );
    assert!(
        !via_3.acked().is_empty() && !via_1.acked().is_empty(),
        "both clients' writes are acknowledged through the leader port"
    );
    let lag = rows(&servers, 3)
        .expect("seat 3 answers")
        .len()
        .saturating_sub(rows(&servers, 2).expect("seat 2 answers").len());
    steps.step(&format!("seat 2's replica is {lag} writes behind seat 3's"));

    let cut = lan.cut_off(1);
    let cut_at = Instant::now();
    steps.step("node 1 cut off the LAN");
    wait_until(
        "seat 2's PostgreSQL to be the primary under a newer term and seat 3's its replica",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || {
            matches!(role(servers.node(2)), Role::Primary(Some(t)) if t > first_term)
                && is_replica_of(&servers, 3, "10.0.1.2")
        },
        || {
            format!(
                "{}\n{}\n{}",
                roles(&servers),
                tails_of(&sidecars),
                tails(&agents)
            )
        },
    );
    let failed_over = cut_at.elapsed();
    let Role::Primary(Some(second_term)) = role(servers.node(2)) else {
        unreachable!("checked just above")
    };
    // Node 3's client reaches the new primary through its port.
    wait_until(
        "node 3's client to have a write acknowledged under the new term through its leader port",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || via_3.acked().iter().any(|a| a.term == second_term),
        || format!("{}\n{}", roles(&servers), tails(&agents)),
    );
    let through_3 = via_3.stop();
    let before_cut = through_3.iter().rev().find(|a| a.at < cut_at).copied();
    let first_new = through_3
        .iter()
        .find(|a| a.term == second_term)
        .copied()
        .expect("checked just above");
    let dark = first_new.at.duration_since(cut_at);
    let acked: Vec<Ack> = through_3.iter().chain(&via_1.acked()).copied().collect();
    let lost = not_on(
        &acked,
        &stored(&servers, 2).expect("the new primary answers"),
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not on the new primary as acknowledged: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    steps.step(&format!(
        "seat 2 is the primary under term {second_term} {:.1} s after the cut; node 3's port reached it {:.1} s after the cut; all {} acknowledged writes are on it under the term and timeline they were acknowledged with",
        failed_over.as_secs_f64(),
        dark.as_secs_f64(),
        acked.len()
    ));

    drop(held_back);
    cut.restore();
    let restored_at = Instant::now();
    wait_until(
        "node 1's old primary to rejoin as a replica streaming from seat 2",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || is_replica_of(&servers, 1, "10.0.1.2"),
        || {
            format!(
                "{}\n{}\n{}\n{}",
                roles(&servers),
                server_logs(&servers),
                tails_of(&sidecars),
                tails(&agents)
            )
        },
    );
    let rejoined = restored_at.elapsed();
    // The client on the old leader's node: its port now reaches seat 2.
    wait_until(
        "node 1's client to have a write acknowledged under the new term through its leader port",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || via_1.acked().iter().any(|a| a.term == second_term),
        || format!("{}\n{}", roles(&servers), tails(&agents)),
    );
    let through_1 = via_1.stop();
    let all: Vec<Ack> = through_3.iter().chain(&through_1).copied().collect();
    let lost = not_on(&all, &stored(&servers, 2).expect("the new primary answers"));
    assert!(
        lost.is_empty(),
        "acknowledged writes not on the primary: {lost:?}"
    );
    let late = acked_after_newer(&all);
    assert!(
        late.is_empty(),
        "writes acknowledged by a demoted primary:\n{}",
        late.join("\n")
    );
    let timelines: std::collections::BTreeSet<(u64, u64)> =
        all.iter().map(|a| (a.term, a.timeline)).collect();
    assert!(
        timelines
            .iter()
            .all(|&(t, _)| t == first_term || t == second_term)
            && timelines
                .iter()
                .filter(|&&(t, _)| t == second_term)
                .all(|&(_, tl)| {
                    timelines
                        .iter()
                        .filter(|&&(t, _)| t == first_term)
                        .all(|&(_, old)| tl > old)
                }),
        "the new term's writes are on a newer timeline than the old term's: {timelines:?}"
    );
    steps.step(&format!(
        "node 1's client reaches seat 2 through its own port once back; {} writes acknowledged through the ports, none under an older term or timeline after a newer",
        all.len()
    ));
    let samples = sampler.stop();
    psql(
        servers.node(2),
        "INSERT INTO acked VALUES (0, 0, 0)",
        Duration::from_secs(30),
    )
    .expect("the new primary takes writes");
    wait_until(
        "the new primary's write to reach both replicas",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            [1, 3]
                .iter()
                .all(|&i| rows(&servers, i).is_ok_and(|r| r.first() == Some(&0)))
        },
        || {
            format!(
                "{}\n{}\n{}",
                roles(&servers),
                server_logs(&servers),
                tails_of(&sidecars)
            )
        },
    );
    steps.step(&format!(
        "node 1 rejoined as seat 2's replica {:.1} s after it came back; a write on seat 2 reached both",
        rejoined.as_secs_f64()
    ));

    let overlaps = same_term_primaries(&samples);
    assert!(
        overlaps.is_empty(),
        "two writable primaries under the same term:\n{}\n{}",
        overlaps.join("\n"),
        tails_of(&sidecars)
    );
    let old_stopped = samples[0]
        .iter()
        .rev()
        .find(|(at, r)| *at >= cut_at && matches!(r, Role::Primary(_)))
        .map_or(Duration::ZERO, |(at, _)| at.duration_since(cut_at));
    let new_writable = samples[1]
        .iter()
        .find(|(at, r)| *at >= cut_at && matches!(r, Role::Primary(_)))
        .map(|(at, _)| at.duration_since(cut_at))
        .expect("seat 2's primary was sampled");
    assert!(
        old_stopped < new_writable,
        "node 1's primary was still writable {:.2} s after the cut, after seat 2's took writes ({:.2} s)",
        old_stopped.as_secs_f64(),
        new_writable.as_secs_f64()
    );
    let total: usize = samples.iter().map(Vec::len).sum();
    println!(
        "postgres: {} acknowledged writes through the leader port, 0 lost, 0 acknowledged by a demoted primary; \
         seat 2 {lag} behind; node 1's primary last writable {:.2} s after the cut, seat 2's writable after \
         {:.2} s (term {first_term} -> {second_term}); through node 3's port: last write before the cut {:.2} s \
         before it, first on the new primary {:.2} s after it; node 1 rejoined {:.1} s after it came back; \
         0 of {total} samples with two writable primaries under one term",
        all.len(),
        old_stopped.as_secs_f64(),
        new_writable.as_secs_f64(),
        before_cut.map_or(f64::NAN, |a| cut_at.duration_since(a.at).as_secs_f64()),
        dark.as_secs_f64(),
        rejoined.as_secs_f64()
    );
    for s in &mut sidecars {
        s.assert_running();
    }
    steps.step("never two writable primaries under one term; the old primary stopped first");
}
