//! meshctl's leader commands against a real anvil: the election, hand-offs and drains.
//!
//! Run, after `cargo build -p meshctl`: `cargo test -p netns-tests --test integration meshctl_leader:: -- --nocapture`.

use alloy::primitives::{Address, address};
use netns_tests::in_process::meshctl::{Meshctl, anvil};

/// A KMS root no instance here derives its keys from: for clusters whose seats no instance binds.
const UNUSED_KMS_ROOT: Address = address!("000000000000000000000000000000000000dEaD");

/// A cluster of three seats, each held by anvil account i, and seat 1 elected.
fn three_seats_led_by_1(m: &mut Meshctl<'_>) {
    m.deploy(UNUSED_KMS_ROOT);
    for i in 1..=3 {
        m.run(Some(0), &["mint", "--to", &m.address(i).to_string()])
            .ok();
    }
    m.run(Some(3), &["leader", "elect", "--token", "3"]).ok();
}

/// Leader election through the CLI: elect, vote, and the state `leader show` reports.
#[test]
fn leader_election_through_the_cli() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    three_seats_led_by_1(&mut m);
    let shown = m.run(None, &["leader", "show", "--json"]).ok().json();
    assert_eq!(shown["leaderTokenId"], 1);
    assert_eq!(shown["threshold"], 2);
    m.run(
        Some(2),
        &["leader", "vote", "--token", "2", "--against", "1"],
    )
    .ok();
    m.run(
        Some(3),
        &["leader", "vote", "--token", "3", "--against", "1"],
    )
    .ok();
    let shown = m.run(None, &["leader", "show", "--json"]).ok().json();
    assert_eq!(
        shown["leaderTokenId"], 2,
        "two of three votes replace seat 1: {shown}"
    );
    assert_eq!(shown["seats"][0]["votesAgainst"], 2);
}

/// The leader's holder hands its term on: by default to the lowest seat that is not draining; only the
/// leader may, only to a seat that can take the lead, and each refusal names why and what to do.
#[test]
fn the_leaders_holder_hands_off_and_a_drained_seat_is_passed_over() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    three_seats_led_by_1(&mut m);
    let drained = m
        .run(Some(2), &["drain", "--token", "2", "--json"])
        .ok()
        .json();
    assert_eq!(drained["draining"], serde_json::json!([2]), "{drained}");

    let out = m
        .run(Some(1), &["leader", "handoff", "--token", "1", "--json"])
        .ok()
        .json();
    assert!(
        out["done"]
            .as_str()
            .is_some_and(|d| d.contains("to seat 3")),
        "the lowest seat not draining: {out}"
    );
    let shown = m.run(None, &["leader", "show", "--json"]).ok().json();
    assert_eq!(
        (shown["leaderTokenId"].clone(), shown["leaderTerm"].clone()),
        (3.into(), 2.into())
    );

    m.run(Some(1), &["leader", "handoff", "--token", "1"])
        .failed()
        .stderr_says("seat 1 cannot hand off: seat 3 leads")
        .stderr_says("meshctl leader show");
    m.run(Some(3), &["leader", "handoff", "--token", "3", "--to", "2"])
        .failed()
        .stderr_says("seat 2 cannot take the lead")
        .stderr_says("--to");
    m.run(Some(2), &["drain", "--token", "2", "--undo"]).ok();
    m.run(Some(3), &["leader", "handoff", "--token", "3", "--to", "2"])
        .ok();
    let shown = m.run(None, &["leader", "show", "--json"]).ok().json();
    assert_eq!(
        (shown["leaderTokenId"].clone(), shown["leaderTerm"].clone()),
        (2.into(), 3.into())
    );
    m.run(Some(1), &["drain", "--token", "2"])
        .failed()
        .stderr_says("may not");
}
