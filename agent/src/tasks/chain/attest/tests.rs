use std::collections::BTreeSet;

use alloy::primitives::{Address, Bytes, keccak256};
use mesh_attest::collateral::PinnedCollateral;
use mesh_attest::testing::boot_log;
use mesh_attest::{TcbStatus, Trust};
use tdx_mock::{CollateralOptions, MockPki, TdInput};

use super::*;
use crate::desired::tests::{record, view};

/// Seat `token`'s binding, its evidence made of `quote` and a boot log.
fn binding(token: u8, quote: Vec<u8>) -> Binding {
    let instance = [token; 20];
    let events = boot_log([0xa1; 20], [0xc0; 32], instance);
    bound(
        instance,
        Address::repeat_byte(token),
        Evidence { quote, events },
    )
}

/// The binding of `instance` to `node` with `evidence`.
fn bound(instance: [u8; 20], node: Address, evidence: Evidence) -> Binding {
    let evidence = Bytes::from(evidence.encode());
    Binding {
        instance_id: alloy::hex::encode(instance),
        node,
        evidence_hash: keccak256(&evidence),
        bound_block: 1,
        evidence,
    }
}

/// An attestor trusting `pki` (UpToDate only), with `collateral`, checking again every minute.
fn attestor(pki: &MockPki, collateral: PinnedCollateral) -> Attestor {
    Attestor::new(
        Checker::new(
            Trust::from_der(pki.root_ca_der()).unwrap(),
            BTreeSet::from([TcbStatus::UpToDate]),
        ),
        CollateralSource::Pinned(collateral),
        Duration::from_secs(60),
        Vec::new(),
        RedactedUrl::new(&"http://127.0.0.1:8545".parse().unwrap()),
    )
}

/// The grants the state file kept are in force from the start, and a pass the RPC does not answer
/// (no follower) keeps them: an agent that starts with every provider down enforces what it enforced.
#[tokio::test]
async fn the_grants_the_state_file_kept_hold_until_the_chain_answers() {
    let pki = MockPki::from_seed([0x3e; 32]);
    let mut kept = ClusterPolicy::default();
    (kept.rules.enforced, kept.rules.version) = (true, 9);
    let mut a = attestor(&pki, pinned_now(&pki)).with_grants(Some(kept.clone()));
    assert_eq!(a.grants().as_deref(), Some(&kept));
    let chain = view(&[record(1, 1, "")]);
    let _ = a.pass(&chain, None).await;
    assert_eq!(a.grants().as_deref(), Some(&kept), "no read, no change");
}

/// `pki`'s collateral, valid from yesterday for 30 days.
fn pinned_now(pki: &MockPki) -> PinnedCollateral {
    let mut pinned = PinnedCollateral::default();
    pinned
        .insert(pki.collateral(&CollateralOptions::valid_from(unix_now() - 86_400, 30)))
        .unwrap();
    pinned
}

/// A seat whose quote is cut short is refused as `malformed`, naming the quote, not as `collateral`
/// (which would send the operator to the PCCS); a genuine quote with no collateral for its platform is
/// still a `collateral` refusal.
#[tokio::test]
async fn a_truncated_quote_is_refused_as_malformed_and_missing_collateral_as_collateral() {
    let pki = MockPki::from_seed([0x3b; 32]);
    let genuine = pki.quote(&TdInput::new([1; 48], [[2; 48]; 4], [3; 64]));
    let truncated = genuine[..genuine.len() / 2].to_vec();
    let mut chain = view(&[record(1, 1, ""), record(2, 2, "")]);
    chain.bindings.insert(1, binding(1, truncated).into());
    chain.bindings.insert(2, binding(2, genuine).into());
    let mut attestor = attestor(&pki, PinnedCollateral::default());

    let got = attestor.pass(&chain, None).await;

    match got[&1].as_ref() {
        Attested::Refused { kind, reason } => {
            assert_eq!(*kind, "malformed", "{reason}");
            assert!(reason.contains("the quote cannot be parsed"), "{reason}");
            assert!(
                !reason.contains("collateral") && !reason.contains("PCCS"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        matches!(
            got[&2].as_ref(),
            Attested::Refused {
                kind: "collateral",
                ..
            }
        ),
        "{:?}",
        got[&2]
    );
}

/// Seat `token`'s binding as its instance publishes it in `chain`'s cluster, from boot number `boot`
/// (each boot quotes anew: other evidence for the same seat).
fn genuine(pki: &MockPki, chain: &ChainView, token: u8, boot: u8) -> Binding {
    let instance = [token; 20];
    let node = Address::repeat_byte(token);
    let events = boot_log(chain.pins.app_ids[0].0.0, [0xc0; 32], instance);
    let rtmr3 = mesh_attest::replay::replay_rtmr3(&events).unwrap();
    let quote = pki.quote(&TdInput::new(
        [boot; 48],
        [[2; 48], [3; 48], [4; 48], rtmr3],
        mesh_attest::report_data(chain.chain_id(), chain.contract, node),
    ));
    bound(instance, node, Evidence { quote, events })
}

/// A pass takes an unchanged seat's verdict from the last pass without decoding its evidence, so a
/// change in one seat of a thousand costs that seat's check alone: a new seat and a seat bound to new
/// evidence are checked anew, the others are not.
#[tokio::test]
async fn a_pass_checks_anew_only_the_seats_whose_binding_changed() {
    let pki = MockPki::from_seed([0x3d; 32]);
    let mut chain = view(&[record(1, 1, ""), record(2, 2, ""), record(3, 3, "")]);
    chain.pins.app_ids = vec![Address::repeat_byte(0xa1)];
    for token in 1..=3 {
        let b = genuine(&pki, &chain, token, 1);
        chain.bindings.insert(token.into(), b.into());
    }
    let mut attestor = attestor(&pki, pinned_now(&pki));
    let verified = |a: &Attestor| {
        a.checked
            .iter()
            .filter(|(_, c)| c.verdict.is_ok())
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    };

    let first = attestor.pass(&chain, None).await;
    assert_eq!(verified(&attestor), [1, 2, 3], "{first:?}");
    assert_eq!(attestor.checked_anew(), 3, "every seat is checked once");

    let again = attestor.pass(&chain, None).await;
    assert_eq!(again, first, "the same verdicts");
    assert_eq!(attestor.checked_anew(), 3, "and no evidence decoded again");

    chain.records.insert(4, record(4, 4, "").into());
    let new_seat = genuine(&pki, &chain, 4, 1);
    chain.bindings.insert(4, new_seat.into());
    let rebound = genuine(&pki, &chain, 2, 2);
    chain.bindings.insert(2, rebound.into());
    attestor.pass(&chain, None).await;
    assert_eq!(verified(&attestor), [1, 2, 3, 4]);
    assert_eq!(
        attestor.checked_anew(),
        5,
        "the new seat and the rebound one only"
    );
    assert_eq!(
        attestor.checked[&2].evidence_hash, chain.bindings[&2].evidence_hash,
        "the rebound seat's verdict is on its new evidence"
    );

    chain.records.remove(&3);
    chain.bindings.remove(&3);
    attestor.pass(&chain, None).await;
    assert!(
        !attestor.checked.contains_key(&3),
        "a seat gone is forgotten"
    );
}

/// A cluster of one seat, bound with genuine evidence under the mock PKI of `seed`, and an attestor that
/// trusts that PKI with collateral valid now.
fn one_genuine_seat(seed: u8) -> (ChainView, Attestor) {
    let pki = MockPki::from_seed([seed; 32]);
    let mut chain = view(&[record(1, 1, "")]);
    chain.pins.app_ids = vec![Address::repeat_byte(0xa1)];
    let b = genuine(&pki, &chain, 1, 1);
    chain.bindings.insert(1, b.into());
    let attestor = attestor(&pki, pinned_now(&pki));
    (chain, attestor)
}

/// A kept verdict answers only for the same binding, cluster, collateral (the same fetch, not equal
/// content) and accepted statuses, and only until its collateral's next update.
#[tokio::test]
async fn a_kept_verdict_lapses_with_new_collateral_other_statuses_or_its_collaterals_next_update() {
    let (chain, mut attestor) = one_genuine_seat(0x3e);
    let statuses = BTreeSet::from([TcbStatus::UpToDate]);
    attestor.pass(&chain, None).await;
    let kept = &attestor.checked[&1];
    let binding = &chain.bindings[&1];
    let until = kept.verdict.as_ref().unwrap().collateral_next_update;
    let same = Arc::clone(&kept.collateral);
    let now = unix_now();

    assert!(kept.answers(binding, &chain, &same, &statuses, now));
    assert!(kept.answers(binding, &chain, &same, &statuses, until));
    assert!(
        !kept.answers(binding, &chain, &same, &statuses, until + 1),
        "past the collateral's next update"
    );
    let refetched = Arc::new((*same).clone());
    assert!(
        !kept.answers(binding, &chain, &refetched, &statuses, now),
        "collateral fetched again"
    );
    let wider = BTreeSet::from([TcbStatus::UpToDate, TcbStatus::SWHardeningNeeded]);
    assert!(!kept.answers(binding, &chain, &same, &wider, now));
    let mut other_node = Binding::clone(binding);
    other_node.node = Address::repeat_byte(0x77);
    assert!(!kept.answers(&other_node, &chain, &same, &statuses, now));
    let mut other_cluster = chain.clone();
    other_cluster.contract = Address::repeat_byte(0x78);
    assert!(!kept.answers(binding, &other_cluster, &same, &statuses, now));
}

/// In a small cluster an allowlist answer is read again after `--full-read-secs`; at a thousand nodes,
/// with one answer (two calls) and the policy (two), after 4,000 s, so that the nodes' rereads together
/// are one request a second. The pass itself still runs every `--full-read-secs`.
#[test]
fn allowlists_are_read_again_less_often_in_a_large_cluster() {
    let pki = MockPki::from_seed([0x3c; 32]);
    let refresh = Duration::from_secs(60);
    let mut attestor = Attestor::new(
        Checker::new(
            Trust::from_der(pki.root_ca_der()).unwrap(),
            BTreeSet::from([TcbStatus::UpToDate]),
        ),
        CollateralSource::Pinned(PinnedCollateral::default()),
        refresh,
        vec![Allowlisted {
            compose_hash: B256::repeat_byte(1),
            os_measurement: B256::repeat_byte(2),
            compose_allowed: true,
            os_allowed: true,
        }],
        RedactedUrl::new(&"http://127.0.0.1:8545".parse().unwrap()),
    );
    attestor.nodes = 10;
    assert_eq!(attestor.reread_after(), refresh);
    attestor.nodes = 1000;
    assert_eq!(attestor.reread_after(), Duration::from_secs(5000));
    attestor.last_pass = Some(Instant::now() - refresh);
    assert!(attestor.due(), "a pass still runs every refresh");
}

/// Has the allowlists answer, freshly read, for seat 1's compose hash and OS image (from its checked verdict):
/// the OS image allowed, the compose hash as `compose_allowed` says.
fn answer_seat_1s_allowlists(attestor: &mut Attestor, compose_allowed: bool) {
    let verdict = attestor.checked[&1].verdict.clone().unwrap();
    let key = (
        B256::from(verdict.compose_hash),
        B256::from(verdict.os_measurement),
    );
    let answer = Answer {
        allowed: Allowlisted {
            compose_hash: key.0,
            os_measurement: key.1,
            compose_allowed,
            os_allowed: true,
        },
        read_at: Some(Instant::now()),
    };
    attestor.allowlists.insert(key, answer);
}

/// A pass whose inputs are the last one's (here only the leader moved), before a pass is due, gives the last
/// one's verdicts without a look at any seat; a due pass looks again. A pass that could not read the
/// allowlists is never kept.
#[tokio::test]
async fn a_pass_with_the_last_ones_inputs_gives_its_verdicts_until_one_is_due() {
    let (mut chain, mut attestor) = one_genuine_seat(0x3f);
    let unread = attestor.pass(&chain, None).await;
    assert!(
        unread[&1].is_refused_as(attestation::ALLOWLIST_UNREAD),
        "{unread:?}"
    );
    assert!(
        attestor.last.is_none(),
        "a pass that could not read the allowlists"
    );

    answer_seat_1s_allowlists(&mut attestor, true);
    let first = attestor.pass(&chain, None).await;
    assert!(first[&1].is_verified(), "{first:?}");

    // What a look at the seat would find now: its compose hash taken off the allowlist.
    answer_seat_1s_allowlists(&mut attestor, false);
    chain.leader = Some(1);
    assert!(!attestor.due());
    assert_eq!(
        attestor.pass(&chain, None).await,
        first,
        "no look at the seat"
    );

    attestor.last_pass = None;
    let due = attestor.pass(&chain, None).await;
    assert!(!due[&1].is_verified(), "a due pass looks again: {due:?}");
}

/// A seat bound before a pass is due is judged alone: the other seats keep the last pass's verdicts, the very
/// ones, without a look at their allowlists; a due pass looks at every seat again.
#[tokio::test]
async fn a_new_binding_is_judged_alone_and_the_others_keep_their_verdicts_until_a_pass_is_due() {
    let (mut chain, mut attestor) = one_genuine_seat(0x41);
    let pki = MockPki::from_seed([0x41; 32]);
    let unread = attestor.pass(&chain, None).await;
    answer_seat_1s_allowlists(&mut attestor, true);
    let first = attestor.pass(&chain, None).await;
    assert!(first[&1].is_verified(), "{unread:?} then {first:?}");

    // Both seats run the same compose: once it is off the allowlist, a look at either refuses it.
    answer_seat_1s_allowlists(&mut attestor, false);
    chain.records.insert(2, record(2, 2, "").into());
    let newcomer = genuine(&pki, &chain, 2, 1);
    chain.bindings.insert(2, newcomer.into());
    assert!(!attestor.due());
    let next = attestor.pass(&chain, None).await;
    assert!(
        Arc::ptr_eq(&next[&1], &first[&1]),
        "seat 1 keeps its verdict: {next:?}"
    );
    assert!(
        next[&2].is_refused_as("compose-not-allowed"),
        "the newcomer is judged: {next:?}"
    );
    assert_eq!(attestor.checked_anew(), 2, "one check for each seat");

    attestor.last_pass = None;
    let due = attestor.pass(&chain, None).await;
    assert!(!due[&1].is_verified(), "a due pass looks again: {due:?}");
}

/// A pass due for the time's sake gives the last pass's verdicts, the very ones, without judging a seat,
/// while nothing time changes has moved; it judges every seat again once the collateral is fetched anew or
/// a verdict's collateral is past its next update.
#[tokio::test]
async fn a_due_pass_judges_no_seat_until_fresh_collateral_or_a_lapse() {
    let (chain, mut attestor) = one_genuine_seat(0x42);
    let pki = MockPki::from_seed([0x42; 32]);
    attestor.pass(&chain, None).await;
    answer_seat_1s_allowlists(&mut attestor, true);
    let first = attestor.pass(&chain, None).await;
    assert!(first[&1].is_verified(), "{first:?}");
    let judged = attestor.judged();

    attestor.last_pass = None;
    assert!(attestor.due());
    let due = attestor.pass(&chain, None).await;
    assert!(Arc::ptr_eq(&due, &first), "the same verdicts: {due:?}");
    assert_eq!(attestor.judged(), judged, "no seat judged");
    assert!(!attestor.due(), "the due pass counts as made");

    // The PCCS's collateral, fetched again: every verdict is reached again under it.
    attestor.collateral = CollateralSource::Pinned(pinned_now(&pki));
    attestor.last_pass = None;
    let fresh = attestor.pass(&chain, None).await;
    assert!(fresh[&1].is_verified(), "{fresh:?}");
    assert_eq!(attestor.judged(), judged + 1, "the seat judged again");
    assert_eq!(attestor.checked_anew(), 2, "and its evidence checked anew");

    let (inputs, _) = attestor.last.as_mut().expect("kept");
    inputs.timely.as_mut().expect("timely").lapses_at = unix_now() - 1;
    attestor.last_pass = None;
    attestor.pass(&chain, None).await;
    assert_eq!(
        attestor.judged(),
        judged + 2,
        "a verdict past its collateral's next update"
    );
}
