use std::sync::LazyLock;

use alloy::primitives::{Bytes, keccak256};
use alloy::sol_types::SolEvent;

use super::*;
use crate::record::RecordError;
use crate::testing::Cluster;

static CLUSTER: LazyLock<Cluster> = LazyLock::new(Cluster::new);

mod listing;

/// A block hash of block `n` on the chain as it is.
fn hash(n: u64) -> B256 {
    keccak256(n.to_be_bytes())
}

/// A node of the cluster that has processed block 10, where each of `seats` (seat, node) is bound.
fn view_at_10(seats: &[(u64, u8)]) -> ChainView {
    let mut view = CLUSTER.view();
    for &(token, node) in seats {
        view.bind(
            token,
            contract::binding_from_event(&Cluster::bound(token, node), 5),
        )
        .unwrap();
    }
    view.last_block = 10;
    view.last_block_hash = hash(10);
    view
}

/// Blocks 11 to 12, on the chain the view followed.
fn next_blocks(view: &ChainView) -> Blocks {
    Blocks {
        from: 11,
        to: 12,
        hash: hash(12),
        parent: view.last_block_hash,
    }
}

/// Blocks 13 to 14: the two after [`next_blocks`], on the same chain.
fn blocks_13_to_14() -> Blocks {
    Blocks {
        from: 13,
        to: 14,
        hash: hash(14),
        parent: hash(12),
    }
}

fn log(event: Event) -> Logged {
    Logged {
        removed: false,
        block: Some(11),
        event,
    }
}

fn registered(reg: &SignedRegistration) -> Logged {
    log(Event::PeerRegistered(Box::new(Cluster::registered(reg))))
}

fn bound(token: u64, node: u8) -> Logged {
    log(Event::InstanceBound(Cluster::bound(token, node)))
}

/// For polls that must not need a binding read.
fn no_binding_read(token: u64) -> Read<Binding> {
    panic!("seat {token}'s binding was read, but the view had it")
}

fn poll(view: &ChainView, logs: &[Logged]) -> Applied {
    apply_logs(view, next_blocks(view), logs, no_binding_read)
}

fn is_proof_rejection(r: &Rejection, token: u64) -> bool {
    matches!(&r.why, Rejected::Proof { token_id, .. } if *token_id == token)
}

/// The honest case: a bound seat's record is believed, and the view moves to the range's last block.
#[test]
fn a_bound_seats_record_is_believed_and_the_view_moves_to_the_ranges_end() {
    let view = view_at_10(&[(3, 0x33)]);
    let reg = CLUSTER.record(3, 0x33, 1);
    let out = poll(&view, &[registered(&reg)]);
    assert_eq!(out.view.records.get(&3).map(|r| &**r), Some(&reg));
    assert_eq!(out.view.high_water.get(&3), Some(&1));
    assert_eq!(
        (out.view.last_block, out.view.last_block_hash),
        (12, hash(12))
    );
    assert!(out.rejected.is_empty() && out.doubts.is_empty(), "{out:?}");
    assert!(Changes::between(&view, &out.view).records);
}

/// The chain no longer has the last processed block (the range's parent hash differs): a full read is
/// due, and the new chain's events are applied meanwhile, as the best there is.
#[test]
fn a_parent_hash_that_no_longer_matches_is_a_reorg_and_the_range_is_still_applied() {
    let view = view_at_10(&[(3, 0x33)]);
    let reg = CLUSTER.record(3, 0x33, 1);
    let blocks = Blocks {
        parent: keccak256(b"another block 10"),
        ..next_blocks(&view)
    };
    let apply = RangeApply::new(&view, blocks);
    assert_eq!(
        apply.doubts(),
        &[Doubt::Reorg],
        "known before any log is read"
    );
    let out = apply_logs(&view, blocks, &[registered(&reg)], no_binding_read);
    assert_eq!(out.doubts, vec![Doubt::Reorg]);
    assert_eq!(out.view.records.get(&3).map(|r| &**r), Some(&reg));
    assert_eq!(out.view.last_block_hash, hash(12));
}

/// A range without logs, moved over in place, ends where applying it would: at the range's last block,
/// with nothing else changed, and the same doubt about a reorg.
#[test]
fn a_range_without_logs_moves_the_view_on_as_applying_it_would() {
    let view = view_at_10(&[(3, 0x33)]);
    let reorged = Blocks {
        parent: keccak256(b"another block 10"),
        ..next_blocks(&view)
    };
    for blocks in [next_blocks(&view), reorged] {
        let applied = apply_logs(&view, blocks, &[], no_binding_read);
        let mut moved = view.clone();
        move_on(&mut moved, &blocks);
        assert_eq!(moved, applied.view);
        assert_eq!(
            reorganised(&view, &blocks),
            applied.doubts == [Doubt::Reorg],
            "{blocks:?}"
        );
    }
    assert!(!reorganised(&view, &next_blocks(&view)));
    assert!(reorganised(&view, &reorged));
}

/// A log the RPC marks removed is not applied, even an authentic one, and makes a full read due; nor is
/// a binding read for it.
#[test]
fn a_removed_log_is_skipped_and_makes_a_full_read_due() {
    let view = view_at_10(&[(3, 0x33)]);
    let mut removed = registered(&CLUSTER.record(4, 0x44, 1));
    removed.removed = true;
    let apply = RangeApply::new(&view, next_blocks(&view));
    assert_eq!(apply.binding_wanted(&removed), None);
    let mut unbinding = log(Event::InstanceUnbound(DstackClusterNFT::InstanceUnbound {
        tokenId: U256::from(3),
        instanceId: Cluster::instance(3),
    }));
    unbinding.removed = true;
    let out = poll(&view, &[removed, unbinding]);
    assert_eq!(out.doubts, vec![Doubt::RemovedLog, Doubt::RemovedLog]);
    assert!(out.view.records.is_empty() && out.view.bindings.contains_key(&3));
    assert!(!Changes::between(&view, &out.view).any());
}

/// The contract has no seat id beyond a u64: events naming one are skipped, and the rest goes on.
#[test]
fn events_whose_seat_id_is_out_of_range_are_skipped() {
    let view = view_at_10(&[(3, 0x33)]);
    let reg = CLUSTER.record(3, 0x33, 1);
    let mut binding = Cluster::bound(3, 0x33);
    binding.tokenId = U256::MAX;
    let mut registration = Cluster::registered(&reg);
    registration.tokenId = U256::MAX;
    let clear = DstackClusterNFT::PeerCleared {
        tokenId: U256::MAX,
        reason: 0,
    };
    let logs = [
        registered(&reg),
        log(Event::InstanceBound(binding)),
        log(Event::PeerRegistered(Box::new(registration))),
        log(Event::PeerCleared(clear)),
    ];
    let apply = RangeApply::new(&view, next_blocks(&view));
    assert_eq!(apply.binding_wanted(&logs[2]), None);
    let out = poll(&view, &logs);
    assert_eq!(out.view.records.get(&3).map(|r| &**r), Some(&reg));
    assert_eq!(out.view.bindings, view.bindings);
    assert!(out.rejected.is_empty());
}

/// A sibling instance's node, with a genuine chain naming the seat's instance, signs a record for the
/// seat: it is not the bound node, so the record is refused.
#[test]
fn a_record_signed_by_another_node_than_the_bound_one_is_refused() {
    let view = view_at_10(&[(3, 0x33)]);
    let forged = CLUSTER.record(3, 0x55, 1);
    let out = poll(&view, &[registered(&forged)]);
    assert!(out.view.records.is_empty());
    assert_eq!(out.rejected.len(), 1);
    assert!(
        matches!(
            &out.rejected[0].why,
            Rejected::Proof { token_id: 3, source: RecordError::RecordSignatureMismatch { node, .. } }
                if *node == Cluster::node(0x33)
        ),
        "{:?}",
        out.rejected
    );
}

/// A record changed after it was signed (here its endpoint), or signed for another cluster, is refused.
#[test]
fn a_tampered_record_or_one_for_another_cluster_is_refused() {
    let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
    let mut tampered = Cluster::registered(&CLUSTER.record(3, 0x33, 1));
    tampered.endpoint = "203.0.113.9:51820".into();
    let mut elsewhere = Cluster::new();
    elsewhere.contract = Address::repeat_byte(0xc1);
    let out = poll(
        &view,
        &[
            log(Event::PeerRegistered(Box::new(tampered))),
            registered(&elsewhere.record(4, 0x44, 1)),
        ],
    );
    assert!(out.view.records.is_empty());
    assert!(
        is_proof_rejection(&out.rejected[0], 3),
        "{:?}",
        out.rejected
    );
    // Read as this cluster's, its signature is over another domain: it does not verify.
    assert!(
        is_proof_rejection(&out.rejected[1], 4),
        "{:?}",
        out.rejected
    );
}

/// An RPC replays a seat's older registration, then its last one after the seat was cleared: neither comes
/// back, and each refusal carries its nonce.
#[test]
fn a_replayed_registration_is_refused_even_after_a_clear() {
    let view = view_at_10(&[(3, 0x33)]);
    let (old, new) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(3, 0x33, 2));
    let moved = poll(&view, &[registered(&old), registered(&new)]).view;
    let clear = log(Event::PeerCleared(DstackClusterNFT::PeerCleared {
        tokenId: U256::from(3),
        reason: 1,
    }));
    let out = apply_logs(
        &moved,
        blocks_13_to_14(),
        &[registered(&old), clear, registered(&new)],
        no_binding_read,
    );
    assert!(out.view.records.is_empty(), "{:?}", out.view.records);
    assert_eq!(out.view.high_water.get(&3), Some(&2));
    assert_eq!(
        out.rejected,
        vec![
            Rejection {
                why: Rejected::Rollback {
                    token_id: 3,
                    nonce: 1,
                    high_water: 2
                },
                nonce: 1
            },
            Rejection {
                why: Rejected::Rollback {
                    token_id: 3,
                    nonce: 2,
                    high_water: 2
                },
                nonce: 2
            },
        ]
    );
}

/// A seat bound before the node's last full read, while it had no record, is not in the view: its first
/// registration reads the binding, at the range's last block, and is then believed.
#[test]
fn a_registration_of_a_seat_the_view_has_no_binding_of_reads_the_binding() {
    let view = view_at_10(&[]);
    let reg = CLUSTER.record(3, 0x33, 1);
    let mut asked = Vec::new();
    let out = apply_logs(&view, next_blocks(&view), &[registered(&reg)], |token| {
        asked.push(token);
        Read::Found(contract::binding_from_event(
            &Cluster::bound(token, 0x33),
            4,
        ))
    });
    assert_eq!(asked, vec![3]);
    assert_eq!(out.view.records.get(&3).map(|r| &**r), Some(&reg));
    assert_eq!(out.view.bindings[&3].node, Cluster::node(0x33));
    assert!(out.doubts.is_empty());
}

/// When that binding cannot be read, the record cannot be believed (no key may sign for an unbound
/// seat) and a full read is due to sort it out; when the seat turns out unbound, it is merely refused.
#[test]
fn a_binding_that_cannot_be_read_makes_a_full_read_due() {
    let view = view_at_10(&[]);
    let logs = [registered(&CLUSTER.record(3, 0x33, 1))];
    let out = apply_logs(&view, next_blocks(&view), &logs, |number| {
        Read::Failed(ChainError::MissingBlock { number })
    });
    assert_eq!(out.doubts, vec![Doubt::UnknownBinding { token: 3 }]);
    assert_eq!(out.rejected[0].why, Rejected::Unbound { token_id: 3 });
    assert!(out.view.records.is_empty());

    let out = apply_logs(&view, next_blocks(&view), &logs, |_| Read::Missing);
    assert!(out.doubts.is_empty());
    assert_eq!(out.rejected[0].why, Rejected::Unbound { token_id: 3 });
}

/// A binding event whose evidence does not hash to the hash it names is skipped: the seat keeps its
/// binding and its record.
#[test]
fn a_binding_event_with_the_wrong_evidence_is_skipped() {
    let view = view_at_10(&[(3, 0x33)]);
    let reg = CLUSTER.record(3, 0x33, 1);
    let mut forged = Cluster::bound(3, 0x55);
    forged.evidence = Bytes::from_static(b"another quote");
    let out = poll(
        &view,
        &[registered(&reg), log(Event::InstanceBound(forged))],
    );
    assert_eq!(out.view.bindings, view.bindings);
    assert_eq!(out.view.records.get(&3).map(|r| &**r), Some(&reg));
}

/// Rebinding a seat to another node drops its record; unbinding it drops both. The high-water mark
/// stays, so the old node's record cannot come back; an unbinding of another instance changes nothing.
#[test]
fn rebinding_or_unbinding_a_seat_drops_its_record_but_not_its_high_water_mark() {
    let view = view_at_10(&[(3, 0x33), (4, 0x44)]);
    let (three, four) = (CLUSTER.record(3, 0x33, 1), CLUSTER.record(4, 0x44, 1));
    let unbound = |token: u64, instance: String| {
        log(Event::InstanceUnbound(DstackClusterNFT::InstanceUnbound {
            tokenId: U256::from(token),
            instanceId: instance,
        }))
    };
    let out = poll(
        &view,
        &[
            registered(&three),
            registered(&four),
            bound(3, 0x35),
            unbound(4, "another instance".into()),
        ],
    );
    assert_eq!(out.view.records.keys().collect::<Vec<_>>(), vec![&4]);
    assert_eq!(out.view.bindings[&3].node, Cluster::node(0x35));
    assert_eq!(out.view.bindings[&3].bound_block, 11, "the log's block");

    let out = apply_logs(
        &out.view,
        blocks_13_to_14(),
        &[unbound(4, Cluster::instance(4)), registered(&four)],
        |_| Read::Missing,
    );
    assert!(out.view.records.is_empty() && !out.view.bindings.contains_key(&4));
    assert_eq!(
        out.view.high_water,
        [(3u64, 1u64), (4, 1)].into_iter().collect()
    );
}

/// The filter names the cluster and its election: a log from elsewhere is skipped, whatever it says.
#[test]
fn a_log_from_an_address_not_asked_for_is_skipped() {
    let view = view_at_10(&[(3, 0x33)]);
    let out = poll(&view, &[log(Event::Foreign(Address::repeat_byte(9)))]);
    assert!(!Changes::between(&view, &out.view).any());
}

/// The leader follows the election's events, in order; its term never goes back, nor past a u64.
#[test]
fn the_leader_follows_the_election_and_its_term_never_goes_back() {
    let view = view_at_10(&[]);
    let elected = |token: u64, term: U256| {
        log(Event::LeaderElected(DstackClusterElection::LeaderElected {
            tokenId: U256::from(token),
            term,
        }))
    };
    let out = poll(&view, &[elected(3, U256::from(5))]);
    assert_eq!((out.view.leader, out.view.leader_term), (Some(3), 5));
    assert!(Changes::between(&view, &out.view).leader);

    let replaced = log(Event::LeaderReplaced(
        DstackClusterElection::LeaderReplaced {
            oldTokenId: U256::from(3),
            newTokenId: U256::from(4),
            votes: U256::from(2),
            term: U256::from(4),
        },
    ));
    let out = poll(&out.view, &[replaced, elected(0, U256::MAX)]);
    assert_eq!(
        (out.view.leader, out.view.leader_term),
        (None, 5),
        "seat 0 is no leader, and terms 4 and 2^256-1 are not taken"
    );

    let cleared = log(Event::LeaderCleared(DstackClusterElection::LeaderCleared {
        oldTokenId: U256::from(4),
        term: U256::from(6),
    }));
    let out = poll(&view_at_10(&[]), &[elected(3, U256::from(5)), cleared]);
    assert_eq!((out.view.leader, out.view.leader_term), (None, 6));
}

/// Each term remembers how it began: elected, voted out, handed off or its seat gone. A stale event (a
/// term that goes back) changes neither the leader's reason nor its term.
#[test]
fn each_term_keeps_how_it_began() {
    let view = view_at_10(&[]);
    let elected = log(Event::LeaderElected(DstackClusterElection::LeaderElected {
        tokenId: U256::from(1),
        term: U256::from(1),
    }));
    let handed = |from: u64, to: u64, term: u64| {
        log(Event::LeaderHandedOff(
            DstackClusterElection::LeaderHandedOff {
                oldTokenId: U256::from(from),
                newTokenId: U256::from(to),
                term: U256::from(term),
            },
        ))
    };
    let out = poll(&view, std::slice::from_ref(&elected));
    assert_eq!(out.view.term_reason, Some(TermReason::Elected));
    let out = poll(&out.view, &[handed(1, 2, 2)]);
    assert_eq!(
        (out.view.leader, out.view.leader_term, out.view.term_reason),
        (Some(2), 2, Some(TermReason::Handoff))
    );
    assert!(Changes::between(&view, &out.view).leader);
    let stale = poll(&out.view, &[elected]);
    assert_eq!(
        (stale.view.leader_term, stale.view.term_reason),
        (2, Some(TermReason::Handoff)),
        "an older term's event does not rewrite how this one began"
    );
    let cleared = log(Event::LeaderCleared(DstackClusterElection::LeaderCleared {
        oldTokenId: U256::from(2),
        term: U256::from(3),
    }));
    let out = poll(&out.view, &[cleared]);
    assert_eq!(
        (out.view.leader, out.view.term_reason),
        (None, Some(TermReason::SeatLeft))
    );
}

/// A seat marked draining is in the view until it is unmarked; a seat id out of range is skipped.
#[test]
fn draining_seats_follow_their_events() {
    let view = view_at_10(&[]);
    let draining = |token: U256, on: bool| {
        log(Event::SeatDraining(DstackClusterElection::SeatDraining {
            tokenId: token,
            draining: on,
        }))
    };
    let out = poll(
        &view,
        &[
            draining(U256::from(2), true),
            draining(U256::from(3), true),
            draining(U256::MAX, true),
        ],
    );
    assert_eq!(out.view.draining, [2, 3].into());
    assert!(Changes::between(&view, &out.view).draining);
    let out = poll(&out.view, &[draining(U256::from(2), false)]);
    assert_eq!(out.view.draining, [3].into());
}

/// At 0 confirmations the last processed block is the head: a head announced at its height with another
/// hash replaces it. With confirmations, or at another height, it does not.
#[test]
fn a_head_at_the_last_block_with_another_hash_replaces_it_at_zero_confirmations() {
    let view = view_at_10(&[]);
    let other = Head {
        hash: keccak256(b"another block 10"),
        ..announced(10, Bloom::ZERO)
    };
    assert!(head_replaces_last(&view, &other, 0));
    assert!(!head_replaces_last(&view, &other, 2));
    assert!(!head_replaces_last(&view, &announced(10, Bloom::ZERO), 0));
    assert!(!head_replaces_last(&view, &announced(11, Bloom::ZERO), 0));
}

/// Head `n` of the chain whose block hashes are `hash(n)`, with `bloom`.
fn announced(n: u64, bloom: Bloom) -> Head {
    Head {
        number: n,
        hash: hash(n),
        parent_hash: hash(n.saturating_sub(1)),
        logs_bloom: bloom,
    }
}

fn heads(heads: impl IntoIterator<Item = Head>) -> BTreeMap<u64, Head> {
    heads.into_iter().map(|h| (h.number, h)).collect()
}

/// The test cluster's contract and election: what a poll reads the logs of.
fn cluster() -> [Address; 2] {
    let view = CLUSTER.view();
    [view.contract, view.election]
}

fn bloom_of(addresses: &[Address]) -> Bloom {
    let mut bloom = Bloom::ZERO;
    for a in addresses {
        bloom.accrue(BloomInput::Raw(a.as_slice()));
    }
    bloom
}

/// A run of announced heads gives the range's last hash, its first parent, and every block's bloom
/// together: the cluster's event in any block of it shows.
#[test]
fn announced_heads_that_link_give_a_range_without_the_rpc() {
    let [contract, _] = cluster();
    let event = bloom_of(&[contract]);
    let run = heads([
        announced(11, Bloom::ZERO),
        announced(12, event),
        announced(13, Bloom::ZERO),
    ]);
    let r = announced_range(&run, 11, 13).expect("the run links");
    assert_eq!((r.hash, r.parent), (hash(13), hash(10)));
    assert!(may_hold_events(&r.bloom, &cluster()));
    let quiet = announced_range(&run, 13, 13).expect("one block");
    assert!(!may_hold_events(&quiet.bloom, &cluster()));
    assert_eq!(
        announced_range(&run, 11, 11).map(|r| r.hash),
        Some(hash(11))
    );
}

/// A block missing from the run, one that names another parent (a reorg among the heads), or a range
/// past the newest head: the RPC is asked instead.
#[test]
fn a_gap_or_a_fork_among_the_heads_gives_no_range() {
    let gap = heads([announced(11, Bloom::ZERO), announced(13, Bloom::ZERO)]);
    assert_eq!(announced_range(&gap, 11, 13), None);
    let forked = heads([
        announced(11, Bloom::ZERO),
        Head {
            parent_hash: keccak256(b"another block 11"),
            ..announced(12, Bloom::ZERO)
        },
    ]);
    assert_eq!(announced_range(&forked, 11, 12), None);
    let short = heads([announced(11, Bloom::ZERO)]);
    assert_eq!(announced_range(&short, 11, 12), None);
    assert_eq!(announced_range(&short, 12, 11), None);
    assert_eq!(announced_range(&BTreeMap::new(), 11, 11), None);
}

/// Another contract's logs leave the cluster's blocks skippable; the election's do not.
#[test]
fn only_the_cluster_and_its_election_in_a_bloom_make_logs_worth_reading() {
    let [_, election] = cluster();
    let other = Address::repeat_byte(0x77);
    assert!(!may_hold_events(&bloom_of(&[other]), &cluster()));
    assert!(may_hold_events(&bloom_of(&[other, election]), &cluster()));
    assert!(!may_hold_events(&Bloom::ZERO, &cluster()));
}

fn rpc_log(address: Address, data: alloy::primitives::LogData) -> alloy::rpc::types::Log {
    alloy::rpc::types::Log {
        inner: alloy::primitives::Log { address, data },
        block_number: Some(11),
        ..Default::default()
    }
}

/// Logs are read as the address they come from allows: the cluster's events only from the cluster, the
/// leader's only from the election, and anything from another address is foreign.
#[test]
fn logs_are_decoded_as_their_address_allows() {
    let c = &*CLUSTER;
    let registration = Cluster::registered(&c.record(3, 0x33, 1));
    let data = registration.encode_log_data();
    let decode = |address| Logged::decode(&rpc_log(address, data.clone()), c.contract, c.election);
    assert_eq!(
        decode(c.contract),
        Logged {
            removed: false,
            block: Some(11),
            event: Event::PeerRegistered(Box::new(registration.clone()))
        }
    );
    assert_eq!(decode(c.election).event, Event::Other);
    let stranger = Address::repeat_byte(9);
    assert_eq!(decode(stranger).event, Event::Foreign(stranger));

    let elected = DstackClusterElection::LeaderElected {
        tokenId: U256::from(3),
        term: U256::from(1),
    };
    let log = rpc_log(c.election, elected.encode_log_data());
    assert_eq!(
        Logged::decode(&log, c.contract, c.election).event,
        Event::LeaderElected(elected.clone())
    );
    let log = rpc_log(c.contract, elected.encode_log_data());
    assert_eq!(
        Logged::decode(&log, c.contract, c.election).event,
        Event::Other
    );
}
