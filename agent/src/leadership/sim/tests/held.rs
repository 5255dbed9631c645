//! A ballot held back by the one-per-timeout bound: what a single one is, and how it is logged.

use super::*;

/// A leader cut off for just long enough to be voted out, and back at once: each vote against it is withdrawn
/// a timeout after it was cast, the withdrawal held back until then by the one-ballot-per-timeout bound. One
/// hold is that bound at work, not a node in a loop of ballots: counted, and logged without a warning (a
/// clean run warns of nothing; fifty agents on two cores made this in CI).
#[test]
fn a_leader_back_right_after_it_was_voted_out_has_the_votes_withdrawn_without_a_warning() {
    let (warnings, _guard) = mesh_chain::testing::Warnings::capture();
    let mut sim = led_by_seat_1(3);
    sim.run_until(10.0);
    sim.node(1).cut_off = true;
    let (seat, at) = sim.until_new_leader(1, 30.0).expect("a new leader");
    assert_eq!(seat, 2);
    sim.node(1).cut_off = false;
    sim.run_until(at + 4.0 * TIMEOUT.as_secs_f64());
    assert!(
        sim.contract.vote_of.is_empty(),
        "the votes against seat 1 are withdrawn: {:?}",
        sim.contract.vote_of
    );
    let held: u64 = (sim.nodes.iter())
        .map(|n| n.machine.state().counters.ballots_held)
        .sum();
    assert!(
        held >= 1,
        "a withdrawal came due within a timeout of its vote"
    );
    let logged = warnings.text();
    assert!(!logged.contains("held back"), "{logged}");
}
