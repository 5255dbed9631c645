//! The planned change beside the unplanned one, measured alike: two clients write through their nodes'
//! leader ports (node 1's, the leader's, and node 3's) while the leader's agent is stopped, with SIGTERM
//! (as `docker stop` or an upgrade does: it hands its term off) or with SIGKILL (a crash: the others vote it
//! out after the default leader timeout). Every acknowledged write is on the new primary, none was
//! acknowledged by a demoted primary, and the time with no writable primary through the port is printed:
//! from the last write acknowledged under the old term to the first under the new.
//!
//! `DSTACK_MESH_TEST_BLOCK_TIME=<seconds>` runs anvil with blocks at that pace instead of on demand:
//!
//! ```sh
//! DSTACK_MESH_TEST_BLOCK_TIME=2 cargo test -p netns-tests --test scenarios postgres::planned -- --nocapture
//! ```

use super::*;

/// How the leader's agent is stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: a hand-off.
    Term,
    /// SIGKILL: a failover.
    Kill,
}

fn stopped(stop: Stop) {
    require_postgres_prerequisites();
    let what = match stop {
        Stop::Term => "hand-off",
        Stop::Kill => "failover",
    };
    let steps = Steps::new(match stop {
        Stop::Term => "postgres hand-off",
        Stop::Kill => "postgres failover",
    });
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy(&lan);
    // The default leader timeout: what a user gets.
    let (mut agents, servers, sidecars, first_term) =
        primary_on_seat_1(&lan, &cluster, &["--leader-port", LEADER_PORT]);
    let via_3 = Writer::start(lan.node(3), 0);
    let via_1 = Writer::start(lan.node(1), 1_000_000);
    wait_until(
        "both clients' writes to be acknowledged through their leader ports",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || via_3.acked().len() >= 20 && via_1.acked().len() >= 20,
        || format!("{}\n{}", roles(&servers), tails_of(&sidecars)),
    );
    steps.step(&format!(
        "seat 1's PostgreSQL is the primary under term {first_term}; both clients write through their ports"
    ));

    let at = Instant::now();
    match stop {
        Stop::Term => {
            let took = agents[0].stop();
            steps.step(&format!(
                "node 1's agent stopped with SIGTERM: it exited {:.2} s after the signal",
                took.as_secs_f64()
            ));
        }
        Stop::Kill => {
            agents[0].kill();
            steps.step("node 1's agent killed");
        }
    }
    wait_until(
        "seat 2's PostgreSQL to be the primary under a newer term and seat 3's its replica",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            matches!(role(servers.node(2)), Role::Primary(Some(t)) if t > first_term)
                && is_replica_of(&servers, 3, "10.0.1.2")
        },
        || {
            format!(
                "{}\n{}\n{}",
                roles(&servers),
                tails_of(&sidecars),
                tails(&agents[1..])
            )
        },
    );
    let Role::Primary(Some(second_term)) = role(servers.node(2)) else {
        unreachable!("checked just above")
    };
    wait_until(
        "node 3's client to have a write acknowledged under the new term",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || via_3.acked().iter().any(|a| a.term == second_term),
        || format!("{}\n{}", roles(&servers), tails(&agents[1..])),
    );
    std::thread::sleep(Duration::from_secs(2));
    let acked: Vec<Ack> = via_3.stop().into_iter().chain(via_1.stop()).collect();
    assert_every_ack_kept(&servers, 2, &acked);
    let last_old = acked
        .iter()
        .filter(|a| a.term == first_term)
        .map(|a| a.at)
        .max()
        .expect("writes under the first term");
    let first_new = acked
        .iter()
        .filter(|a| a.term == second_term)
        .map(|a| a.at)
        .min()
        .expect("checked above");
    let dark = first_new.saturating_duration_since(last_old);
    let reasons: Vec<Option<String>> = agents[1..]
        .iter()
        .map(|a| a.leader().ok().and_then(|l| l.term_reason))
        .collect();
    let block_time =
        std::env::var("DSTACK_MESH_TEST_BLOCK_TIME").unwrap_or_else(|_| "on demand".into());
    println!(
        "postgres {what} (blocks: {block_time}): no writable primary through the leader port for {} ms \
         (last write under term {first_term} {:.2} s after the stop, first under term {second_term} {:.2} s \
         after it); {} writes acknowledged, 0 lost, 0 acknowledged by a demoted primary; term reason {:?}",
        dark.as_millis(),
        last_old.saturating_duration_since(at).as_secs_f64(),
        first_new.saturating_duration_since(at).as_secs_f64(),
        acked.len(),
        reasons
    );
    let expected = match stop {
        Stop::Term => "handoff",
        Stop::Kill => "voted-out",
    };
    assert!(
        reasons.iter().all(|r| r.as_deref() == Some(expected)),
        "nodes 2 and 3 say the term began by {expected}: {reasons:?}"
    );
    steps.step(&format!(
        "seat 2 is the primary under term {second_term}; no writable primary for {:.2} s; all {} acknowledged writes on it",
        dark.as_secs_f64(),
        acked.len()
    ));
}

#[test]
fn a_primary_handed_off_on_sigterm_loses_no_acknowledged_write() {
    stopped(Stop::Term);
}

#[test]
fn a_primary_failed_over_on_sigkill_loses_no_acknowledged_write() {
    stopped(Stop::Kill);
}
