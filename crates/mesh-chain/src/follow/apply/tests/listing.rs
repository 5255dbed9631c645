//! Full reads: a listing of every seat's record, applied to what the node believed.

use super::*;

/// A full read's listing of `records`, each registered at block 9 and bound (as [`Cluster::bound`]
/// with the record's node) at block 5, at block 20, with seat `leader` leading in `term`.
fn listing(records: &[(&SignedRegistration, u8)], leader: u64, term: u64) -> Listing {
    Listing {
        block: 20,
        hash: hash(20),
        peers: records
            .iter()
            .map(|(reg, node)| {
                let token = u64::try_from(reg.token_id).unwrap();
                Cluster::listed(reg, 9, &Cluster::bound(token, *node), 5)
            })
            .collect(),
        leader: U256::from(leader),
        term: U256::from(term),
        draining: Vec::new(),
    }
}

/// Answers binding events as the chain has them: each listed seat bound to the node the listing names.
fn binding_events(p: &DstackClusterNFT::Peer) -> Read<Binding> {
    let token = u64::try_from(p.tokenId).unwrap();
    let node = (1..=0x7f)
        .find(|n| Cluster::node(*n) == p.node)
        .expect("a test node");
    Read::Found(contract::binding_from_event(
        &Cluster::bound(token, node),
        p.boundBlock,
    ))
}

/// Answers registration events with `events`, whatever the listing says.
fn registration_events(
    events: &[DstackClusterNFT::PeerRegistered],
) -> impl FnMut(&DstackClusterNFT::Peer) -> Read<DstackClusterNFT::PeerRegistered> {
    |p| match events.iter().find(|e| e.tokenId == p.tokenId) {
        Some(e) => Read::Found(e.clone()),
        None => Read::Missing,
    }
}

fn no_event_read(p: &DstackClusterNFT::Peer) -> Read<DstackClusterNFT::PeerRegistered> {
    panic!("seat {}'s event was read, but the node holds it", p.tokenId)
}

/// A node with nothing believes every authentic listed record, takes the leader, and moves to the
/// listing's block.
#[test]
fn a_first_full_read_believes_every_authentic_listed_record() {
    let fresh = CLUSTER.view();
    let (three, four) = (CLUSTER.record(3, 0x33, 2), CLUSTER.record(4, 0x44, 1));
    let events = [Cluster::registered(&three), Cluster::registered(&four)];
    let read = apply_listing(
        &fresh,
        &listing(&[(&three, 0x33), (&four, 0x44)], 4, 7),
        binding_events,
        registration_events(&events),
    );
    assert!(read.complete && read.applies && read.rejected.is_empty());
    assert_eq!(
        read.view.records,
        [
            (3u64, std::sync::Arc::new(three)),
            (4, std::sync::Arc::new(four))
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        read.view.high_water,
        [(3u64, 2u64), (4, 1)].into_iter().collect()
    );
    assert_eq!((read.view.leader, read.view.leader_term), (Some(4), 7));
    assert_eq!(
        (read.view.last_block, read.view.last_block_hash),
        (20, hash(20))
    );
}

/// The holders are the listing's, then move with each `Transfer`; a burn forgets the seat's.
#[test]
fn holders_come_from_the_listing_and_follow_transfers() {
    let fresh = CLUSTER.view();
    let (three, four) = (CLUSTER.record(3, 0x33, 2), CLUSTER.record(4, 0x44, 1));
    let events = [Cluster::registered(&three), Cluster::registered(&four)];
    let read = apply_listing(
        &fresh,
        &listing(&[(&three, 0x33), (&four, 0x44)], 4, 7),
        binding_events,
        registration_events(&events),
    );
    let holder = |t: u64| Cluster::holder_of(U256::from(t));
    assert_eq!(
        read.view.holders,
        [(3u64, holder(3)), (4, holder(4))].into_iter().collect()
    );

    let buyer = Address::repeat_byte(0xb0);
    let transfer = |token: u64, to: Address| {
        log(Event::Transfer(DstackClusterNFT::Transfer {
            from: holder(token),
            to,
            tokenId: U256::from(token),
        }))
    };
    let moved = apply_logs(
        &read.view,
        next_blocks(&read.view),
        &[transfer(3, buyer), transfer(4, Address::ZERO)],
        no_binding_read,
    );
    assert_eq!(
        moved.view.holders,
        [(3u64, buyer)].into_iter().collect(),
        "3 sold, 4 burned"
    );
}

/// A record the node believes, listed again with the same nonce and node, is kept without any read: a
/// full read of an unchanged chain costs no events.
#[test]
fn a_believed_record_listed_again_is_kept_without_reading_its_events() {
    let view = view_at_10(&[(3, 0x33)]);
    let three = CLUSTER.record(3, 0x33, 2);
    let view = poll(&view, &[registered(&three)]).view;
    let read = apply_listing(
        &view,
        &listing(&[(&three, 0x33)], 0, 0),
        |p| panic!("seat {}'s binding was read, but the view has it", p.tokenId),
        no_event_read,
    );
    assert!(read.complete && read.applies);
    assert_eq!(read.view.records, view.records);
    assert!(!Changes::between(&view, &read.view).any());
}

/// The RPC answers a listed record with an event that is not its own (another nonce, another endpoint):
/// the record is skipped and what was known of the seat kept. The read is complete all the same: the
/// lie is known, there is nothing to wait for.
#[test]
fn an_event_that_does_not_match_the_listed_record_keeps_what_was_known() {
    let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
    let (three, four) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(4, 0x44, 1));
    let view = poll(&view, &[registered(&three), registered(&four)]).view;
    let (three2, four2) = (CLUSTER.record(3, 0x33, 2), CLUSTER.record(4, 0x44, 2));
    let mut other_endpoint = Cluster::registered(&four2);
    other_endpoint.endpoint = "203.0.113.9:51820".into();
    let events = [Cluster::registered(&three), other_endpoint];
    let read = apply_listing(
        &view,
        &listing(&[(&three2, 0x33), (&four2, 0x44)], 0, 0),
        binding_events,
        registration_events(&events),
    );
    assert!(read.complete && read.applies && read.rejected.is_empty());
    assert_eq!(read.view.records, view.records);
}

/// A listed record whose event is not signed by the seat's bound node is refused, and the seat keeps
/// what was known of it; the other seats go on.
#[test]
fn a_listed_record_not_signed_by_the_bound_node_is_refused() {
    let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
    let three = CLUSTER.record(3, 0x33, 1);
    let view = poll(&view, &[registered(&three)]).view;
    let forged = CLUSTER.record(3, 0x55, 2);
    let four = CLUSTER.record(4, 0x44, 1);
    let events = [Cluster::registered(&forged), Cluster::registered(&four)];
    // The listing names the bound node, as the seat does; only the record's signature is another's.
    let listed = listing(&[(&forged, 0x33), (&four, 0x44)], 0, 0);
    let read = apply_listing(&view, &listed, binding_events, registration_events(&events));
    assert!(read.complete && read.applies);
    assert_eq!(
        read.view.records,
        [
            (3u64, std::sync::Arc::new(three)),
            (4, std::sync::Arc::new(four))
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(read.rejected.len(), 1);
    assert!(
        is_proof_rejection(&read.rejected[0], 3),
        "{:?}",
        read.rejected
    );
    assert_eq!(read.rejected[0].nonce, 2);
}

/// An RPC lists a seat's older record, with its genuine event: it is refused, and the newer one kept.
#[test]
fn a_listed_record_older_than_the_believed_one_is_refused() {
    let view = view_at_10(&[(3, 0x33)]);
    let (old, new) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(3, 0x33, 2));
    let view = poll(&view, &[registered(&old), registered(&new)]).view;
    let events = [Cluster::registered(&old)];
    let read = apply_listing(
        &view,
        &listing(&[(&old, 0x33)], 0, 0),
        binding_events,
        registration_events(&events),
    );
    assert_eq!(read.view.records.get(&3).map(|r| &**r), Some(&new));
    assert_eq!(
        read.rejected,
        vec![Rejection {
            why: Rejected::Rollback {
                token_id: 3,
                nonce: 1,
                high_water: 2
            },
            nonce: 1
        }]
    );
}

/// A listed record whose events cannot be had (an RPC error, a pruned log) makes the read incomplete:
/// the node keeps its own view, unless it had none, when the partial one is better than nothing.
#[test]
fn a_read_missing_an_event_is_incomplete_and_applies_only_to_a_node_with_nothing() {
    let three = CLUSTER.record(3, 0x33, 1);
    let listed = listing(&[(&three, 0x33)], 0, 0);
    let failing = |p: &DstackClusterNFT::Peer| -> Read<DstackClusterNFT::PeerRegistered> {
        Read::Failed(ChainError::MissingBlock {
            number: p.registeredBlock,
        })
    };
    let view = view_at_10(&[(3, 0x33)]);
    for read in [
        apply_listing(&view, &listed, binding_events, failing),
        apply_listing(&view, &listed, binding_events, |_| Read::Missing),
        apply_listing(&view_at_10(&[]), &listed, |_| Read::Missing, no_event_read),
    ] {
        assert!(!read.complete && !read.applies, "{read:?}");
    }
    let read = apply_listing(&CLUSTER.view(), &listed, |_| Read::Missing, no_event_read);
    assert!(!read.complete && read.applies);
    assert!(read.view.records.is_empty());
}

/// A seat the listing no longer names loses its record but not its high-water mark; one whose seat id
/// does not fit a u64 is skipped.
#[test]
fn a_seat_no_longer_listed_loses_its_record_but_not_its_high_water_mark() {
    let view = view_at_10(&[(3, 0x33)]);
    let three = CLUSTER.record(3, 0x33, 1);
    let view = poll(&view, &[registered(&three)]).view;
    let mut listed = listing(&[(&three, 0x33)], 0, 0);
    listed.peers[0].tokenId = U256::MAX;
    let read = apply_listing(&view, &listed, binding_events, no_event_read);
    assert!(read.complete && read.applies);
    assert!(read.view.records.is_empty());
    assert_eq!(read.view.high_water.get(&3), Some(&1));
    assert!(Changes::between(&view, &read.view).records);
}

/// A listed seat's binding event whose evidence does not hash to the hash it names is refused: the seat
/// keeps its binding and its record.
#[test]
fn a_listed_binding_with_the_wrong_evidence_is_refused() {
    let view = view_at_10(&[(3, 0x33)]);
    let three = CLUSTER.record(3, 0x33, 1);
    let view = poll(&view, &[registered(&three)]).view;
    let rebound = CLUSTER.record(3, 0x35, 2);
    let listed = listing(&[(&rebound, 0x35)], 0, 0);
    let read = apply_listing(
        &view,
        &listed,
        |p| {
            let Read::Found(mut binding) = binding_events(p) else {
                unreachable!("every listed seat is bound")
            };
            binding.evidence = Bytes::from_static(b"another quote");
            Read::Found(binding)
        },
        no_event_read,
    );
    assert_eq!(read.view.bindings, view.bindings);
    assert_eq!(read.view.records, view.records);
    assert_eq!(read.rejected[0].why, Rejected::Evidence { token_id: 3 });
}

/// A full read takes the draining seats as listed, and forgets how a term it did not see begin began.
#[test]
fn a_full_read_lists_draining_seats_and_forgets_the_reason_of_an_unseen_term() {
    let mut view = view_at_10(&[]);
    view.leader = Some(1);
    view.leader_term = 1;
    view.term_reason = Some(TermReason::Elected);
    view.draining = [4].into();
    let mut same = listing(&[], 1, 1);
    same.draining = vec![U256::from(2)];
    let out = apply_listing(&view, &same, binding_events, no_event_read);
    assert_eq!(out.view.term_reason, Some(TermReason::Elected));
    assert_eq!(out.view.draining, [2].into());
    let out = apply_listing(&view, &listing(&[], 3, 2), binding_events, no_event_read);
    assert_eq!((out.view.leader, out.view.term_reason), (Some(3), None));
    assert!(out.view.draining.is_empty());
}
