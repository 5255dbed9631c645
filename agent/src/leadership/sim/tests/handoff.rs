//! Planned changes of leader on the simulated cluster: hand-offs asked of a node or sent on-chain, drains,
//! and stops; the leases never overlap.

use super::*;

/// Asks seat `seat`'s node to hand off, as `POST /v1/leader/handoff` does.
fn hand_off(sim: &mut Sim, seat: u64, to: Option<u64>) -> Result<(u64, u64), HandOffRefused> {
    let now = sim.now;
    sim.node(seat)
        .machine
        .request_handoff(now, to, HandOffCause::Asked)
}

/// The leader hands off: it stops claiming at once, its successor leads within the block and the reads
/// that show it, long before a lease, and no two claims overlap. The old leader may stop then.
#[test]
fn a_handoff_moves_the_lead_within_a_block_and_the_leases_never_overlap() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    assert!(!sim.node(1).machine.stop_ready(), "it leads");
    let asked = sim.now;
    assert_eq!(
        hand_off(&mut sim, 1, None),
        Ok((2, 1)),
        "the lowest fit seat"
    );
    assert!(
        !matches!(sim.node(1).machine.state().claim, Claim::Leads { .. }),
        "the leader stops claiming when it releases its term"
    );
    assert_eq!(
        hand_off(&mut sim, 1, Some(3)),
        Ok((2, 1)),
        "asked again, the same hand-off"
    );
    let (seat, at) = sim.until_new_leader(1, 10.0).expect("a new leader");
    let took = at - (asked - sim.t0).as_secs_f64();
    assert_eq!(seat, 2);
    let bound = (BLOCK + timing().renew).as_secs_f64() + 0.2;
    assert!(
        took < bound && took < timing().lease.as_secs_f64(),
        "seat 2 led {took:.2} s after the hand-off was asked for (at most a block and a read: {bound:.2} s)"
    );
    assert_eq!(sim.contract.handoffs.len(), 1);
    sim.run_until(at + 20.0);
    assert_eq!(sim.overlap(), None);
    assert_eq!(sim.claimant(), Some(2), "seat 2 keeps the lead");
    let one = sim.node(1).machine.state();
    assert!(one.handoff.is_none());
    assert_eq!(
        (one.counters.handoffs, one.counters.handoff_times.count),
        (1, 1)
    );
    assert_eq!(
        one.last_handoff.as_ref().map(|h| (h.term, h.to)),
        Some((1, Some(2)))
    );
    assert!(sim.node(1).machine.stop_ready());
    assert_eq!(sim.contract.term, 2, "one term change, no vote after it");
    assert!(
        sim.contract.vote_of.is_empty(),
        "{:?}",
        sim.contract.vote_of
    );
}

/// Only the leader hands off, and only to a seat that has a record.
#[test]
fn a_handoff_is_refused_by_a_node_that_does_not_lead_or_to_an_unknown_seat() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(8.0);
    assert_eq!(
        hand_off(&mut sim, 2, None),
        Err(HandOffRefused::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        hand_off(&mut sim, 1, Some(9)),
        Err(HandOffRefused::Ineligible(9))
    );
    assert_eq!(
        hand_off(&mut sim, 1, Some(1)),
        Err(HandOffRefused::Ineligible(1))
    );
    assert_eq!(
        sim.claimant(),
        Some(1),
        "a refused hand-off changes nothing"
    );
}

/// The seat asked for is refused by the contract (drained since the leader last read): the next best one
/// takes the lead, and the leases still never overlap.
#[test]
fn a_successor_the_contract_refuses_is_passed_over_for_the_next() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    assert_eq!(hand_off(&mut sim, 1, Some(3)), Ok((3, 1)));
    sim.contract.draining.insert(3);
    let (seat, _) = sim.until_new_leader(1, 10.0).expect("a new leader");
    assert_eq!(seat, 2);
    assert_eq!(
        sim.contract
            .handoffs
            .iter()
            .map(|h| (h.1, h.2))
            .collect::<Vec<_>>(),
        [(1, 2)]
    );
    sim.run_until(30.0);
    assert_eq!(sim.overlap(), None);
}

/// A hand-off sent by someone else (`meshctl leader handoff`) with the leader still claiming: its
/// successor waits for no lease, as the old leader says farewell at its next heartbeat, and the claims
/// never overlap.
#[test]
fn a_leader_handed_off_by_someone_else_frees_its_followers_at_its_next_heartbeat() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    sim.contract.hand_off(1, 3).expect("seat 1 leads");
    let sent = sim.now;
    let (seat, at) = sim.until_new_leader(1, 10.0).expect("a new leader");
    assert_eq!(seat, 3);
    let took = at - (sent - sim.t0).as_secs_f64();
    let bound = (timing().renew + timing().heartbeat).as_secs_f64() + 0.2;
    assert!(
        took < bound,
        "seat 3 led {took:.2} s after the hand-off was mined (a read and a heartbeat: {bound:.2} s)"
    );
    sim.run_until(at + 20.0);
    assert_eq!(sim.overlap(), None);
    assert_eq!(sim.claimant(), Some(3));
}

/// A leader being drained hands off by itself, every seat hears that it drains within a heartbeat, and a
/// hand-off passes over a seat heard draining.
#[test]
fn a_drained_leader_hands_off_and_every_seat_hears_it_drain() {
    let mut sim = led_by_seat_1(4);
    sim.run_until(10.0);
    let now = sim.now;
    assert!(
        sim.node(2).machine.set_draining(now, true).is_none(),
        "seat 2 does not lead"
    );
    sim.run_until(12.0);
    for seat in [1, 3, 4] {
        assert_eq!(
            sim.node(seat).machine.state().draining_peers,
            [2].into(),
            "seat {seat} heard seat 2 drain"
        );
    }
    let now = sim.now;
    let started = sim.node(1).machine.set_draining(now, true);
    assert_eq!(started, Some(Ok((3, 1))), "the lowest seat not draining");
    let (seat, _) = sim.until_new_leader(1, 10.0).expect("a new leader");
    assert_eq!(seat, 3);
    sim.run_until(30.0);
    assert_eq!(sim.overlap(), None);
    assert!(sim.node(1).machine.state().draining);
    assert_eq!(sim.node(4).machine.state().draining_peers, [1, 2].into());
    let now = sim.now;
    sim.node(2).machine.set_draining(now, false);
    sim.run_until(35.0);
    assert_eq!(
        sim.node(4).machine.state().draining_peers,
        [1].into(),
        "seat 2 is back"
    );
}

/// A hand-off that no seat will take is given up: the leader leads its term again (on confirmations given
/// after it took it back, which bind the seats that gave them), with no failover and no overlap.
#[test]
fn a_handoff_no_seat_takes_is_given_up_and_the_leader_leads_again() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    assert_eq!(hand_off(&mut sim, 1, None), Ok((2, 1)));
    sim.contract.draining.extend([2, 3]);
    sim.run_until(11.0);
    assert_eq!(sim.claimant(), None);
    let (seat, _) = sim.until_someone_leads(10.0).expect("a leader");
    assert_eq!(seat, 1);
    assert!(
        sim.node(1).machine.state().handoff_error.is_some(),
        "why is shown"
    );
    assert_eq!(sim.node(1).machine.state().counters.handoffs_given_up, 1);
    assert!(sim.node(1).machine.stop_ready(), "nothing more to wait for");
    sim.run_until(30.0);
    assert_eq!((sim.contract.term, sim.claimant()), (1, Some(1)));
    assert!(sim.contract.handoffs.is_empty());
    assert_eq!(sim.overlap(), None);
}

/// A leader stopped (SIGTERM) hands off and may stop once the hand-off landed; one alone, with no seat to
/// take the lead, may stop at once rather than wait out its grace.
#[test]
fn a_stopping_leader_hands_off_or_stops_at_once_when_no_seat_can_lead() {
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    let now = sim.now;
    sim.node(1).machine.stop(now);
    assert!(
        !sim.node(1).machine.stop_ready(),
        "its hand-off is under way"
    );
    let (seat, _) = sim.until_new_leader(1, 5.0).expect("a new leader");
    assert_eq!(seat, 2);
    assert!(sim.node(1).machine.stop_ready());

    let mut alone = led_by_seat_1(1);
    alone.run_until(5.0);
    let now = alone.now;
    alone.node(1).machine.stop(now);
    assert!(alone.node(1).machine.stop_ready(), "nothing to hand to");
}
