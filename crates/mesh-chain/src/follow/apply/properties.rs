use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use alloy::primitives::keccak256;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::*;
use crate::testing::Cluster;

/// The seats, and each one's two node keys: the one it starts bound to, and another it may be rebound to
/// (whose records, while the seat is bound to the first, are forgeries).
const SEATS: [(u64, [u8; 2]); 3] = [(1, [0x41, 0x51]), (2, [0x42, 0x52]), (3, [0x43, 0x53])];
const NONCES: std::ops::RangeInclusive<u64> = 1..=4;

static CLUSTER: LazyLock<Cluster> = LazyLock::new(Cluster::new);

/// Every record the steps can register, signed once: signing is what costs.
static RECORDS: LazyLock<BTreeMap<(u64, u8, u64), SignedRegistration>> = LazyLock::new(|| {
    let mut records = BTreeMap::new();
    for (seat, nodes) in SEATS {
        for node in nodes {
            for nonce in NONCES {
                records.insert((seat, node, nonce), CLUSTER.record(seat, node, nonce));
            }
        }
    }
    records
});

fn node(seat: u64, which: usize) -> u8 {
    SEATS
        .iter()
        .find(|(s, _)| *s == seat)
        .map(|(_, nodes)| nodes[which])
        .expect("a test seat")
}

/// One thing the chain can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The seat's record at `nonce`, signed by its node `node` (0 or 1).
    Register {
        seat: u64,
        node: usize,
        nonce: u64,
    },
    Clear {
        seat: u64,
    },
    Bind {
        seat: u64,
        node: usize,
    },
    Unbind {
        seat: u64,
    },
    Elect {
        seat: u64,
        term: u64,
    },
}

impl Step {
    fn logged(self) -> Logged {
        let event = match self {
            Step::Register { seat, node, nonce } => Event::PeerRegistered(Box::new(
                Cluster::registered(&RECORDS[&(seat, self::node(seat, node), nonce)]),
            )),
            Step::Clear { seat } => Event::PeerCleared(DstackClusterNFT::PeerCleared {
                tokenId: U256::from(seat),
                reason: 0,
            }),
            Step::Bind { seat, node } => {
                Event::InstanceBound(Cluster::bound(seat, self::node(seat, node)))
            }
            Step::Unbind { seat } => Event::InstanceUnbound(DstackClusterNFT::InstanceUnbound {
                tokenId: U256::from(seat),
                instanceId: Cluster::instance(seat),
            }),
            Step::Elect { seat, term } => {
                Event::LeaderElected(DstackClusterElection::LeaderElected {
                    tokenId: U256::from(seat),
                    term: U256::from(term),
                })
            }
        };
        Logged {
            removed: false,
            block: None,
            event,
        }
    }
}

fn logged(steps: &[Step]) -> Vec<Logged> {
    steps.iter().map(|s| s.logged()).collect()
}

fn registration(seat: u64) -> impl Strategy<Value = Step> {
    (0..2usize, NONCES).prop_map(move |(node, nonce)| Step::Register { seat, node, nonce })
}

/// What the chain can say of `seat` alone.
fn seat_step(seat: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => registration(seat),
        1 => Just(Step::Clear { seat }),
        1 => (0..2usize).prop_map(move |node| Step::Bind { seat, node }),
        1 => Just(Step::Unbind { seat }),
    ]
}

fn any_seat() -> impl Strategy<Value = u64> {
    proptest::sample::select(SEATS.map(|(seat, _)| seat).to_vec())
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any_seat().prop_flat_map(seat_step),
        1 => (0..=3u64, 0..8u64).prop_map(|(seat, term)| Step::Elect { seat, term }),
    ]
}

fn hash(n: u64) -> B256 {
    keccak256(n.to_be_bytes())
}

/// A node at block 10 with every seat bound to its first node.
fn start() -> ChainView {
    let mut view = CLUSTER.view();
    for (seat, nodes) in SEATS {
        view.bind(
            seat,
            contract::binding_from_event(&Cluster::bound(seat, nodes[0]), 5),
        )
        .expect("a right evidence hash");
    }
    view.last_block = 10;
    view.last_block_hash = hash(10);
    view
}

/// `logs` as the one block after the view's last, on the chain it followed; every seat the view has no
/// binding of is unbound.
fn poll(view: &ChainView, logs: &[Logged]) -> Applied {
    let to = view
        .last_block
        .checked_add(1)
        .expect("a small block number");
    let blocks = Blocks {
        from: to,
        to,
        hash: hash(to),
        parent: view.last_block_hash,
    };
    apply_logs(view, blocks, logs, |_| Read::Missing)
}

fn seat_of(p: &DstackClusterNFT::Peer) -> (u64, u8) {
    let seat = u64::try_from(p.tokenId).expect("a test seat");
    let node = (0..2)
        .map(|which| node(seat, which))
        .find(|n| Cluster::node(*n) == p.node)
        .expect("a test node");
    (seat, node)
}

/// The seat's binding event, as the chain has it.
fn honest_binding(p: &DstackClusterNFT::Peer) -> Read<Binding> {
    let (seat, node) = seat_of(p);
    Read::Found(contract::binding_from_event(
        &Cluster::bound(seat, node),
        p.boundBlock,
    ))
}

/// The record's registration event, as the chain has it.
fn honest_event(p: &DstackClusterNFT::Peer) -> Read<DstackClusterNFT::PeerRegistered> {
    let (seat, node) = seat_of(p);
    Read::Found(Cluster::registered(&RECORDS[&(seat, node, p.nonce)]))
}

/// A listing at block 50 of seats with their node (0 or 1) and record nonce.
fn listing(listed: &BTreeMap<u64, (usize, u64)>, leader: u64, term: u64) -> Listing {
    Listing {
        block: 50,
        hash: hash(50),
        peers: listed
            .iter()
            .map(|(&seat, &(which, nonce))| {
                let node = node(seat, which);
                Cluster::listed(
                    &RECORDS[&(seat, node, nonce)],
                    40,
                    &Cluster::bound(seat, node),
                    30,
                )
            })
            .collect(),
        leader: U256::from(leader),
        term: U256::from(term),
        draining: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the node knew, a full read of a chain that has not moved since the last one changes
    /// nothing; and when the first believed every listed record, the second reads no event at all.
    #[test]
    fn a_second_full_read_of_an_unchanged_chain_changes_nothing(
        history in vec(step(), 0..12),
        listed in btree_map(any_seat(), (0..2usize, NONCES), 0..=3),
        leader in 0..=3u64,
        term in 0..8u64,
    ) {
        let known = poll(&start(), &logged(&history)).view;
        let listing = listing(&listed, leader, term);
        let first = apply_listing(&known, &listing, honest_binding, honest_event);
        prop_assert!(first.complete && first.applies);
        let reads = Cell::new(0u32);
        let second = apply_listing(
            &first.view,
            &listing,
            |p| {
                reads.set(reads.get().saturating_add(1));
                honest_binding(p)
            },
            |p| {
                reads.set(reads.get().saturating_add(1));
                honest_event(p)
            },
        );
        prop_assert!(second.complete && second.applies);
        prop_assert_eq!(&second.view, &first.view);
        if first.rejected.is_empty() {
            prop_assert_eq!(reads.get(), 0);
        }
    }

    /// A range's registrations and elections, applied again, change nothing: each record is refused as
    /// older or taken as the one held, and the leader ends where it did. (Clears and unbindings are
    /// left out: replayed, they would drop a record the replay does not bring back, which is why a
    /// reorg makes a full read due rather than re-reading logs.)
    #[test]
    fn registrations_and_elections_applied_again_change_nothing(
        steps in vec(
            prop_oneof![
                4 => any_seat().prop_flat_map(registration),
                1 => (0..=3u64, 0..8u64).prop_map(|(seat, term)| Step::Elect { seat, term }),
            ],
            0..16,
        ),
    ) {
        let logs = logged(&steps);
        let once = poll(&start(), &logs).view;
        let twice = poll(&once, &logs).view;
        prop_assert!(!Changes::between(&once, &twice).any());
        prop_assert_eq!(&twice.high_water, &once.high_water);
    }

    /// Whatever logs come, in whatever order, no seat's high-water mark goes back, and a believed record
    /// is always the newest the node ever believed for its seat.
    #[test]
    fn a_seats_nonce_never_goes_back_whatever_the_order_of_logs(steps in vec(step(), 0..24)) {
        let mut view = start();
        for step in steps {
            let next = poll(&view, &[step.logged()]).view;
            for (seat, _) in SEATS {
                let (before, after) = (view.high_water.get(&seat), next.high_water.get(&seat));
                prop_assert!(after >= before, "seat {}: {:?} after {:?}, on {:?}", seat, after, before, step);
                if let Some(record) = next.records.get(&seat) {
                    prop_assert_eq!(Some(&record.nonce), after);
                }
            }
            view = next;
        }
    }

    /// Logs of different seats do not depend on each other: however they interleave, as long as each
    /// seat's own come in order, the view and the refusals (seat by seat) are the same.
    #[test]
    fn the_order_of_different_seats_logs_does_not_change_the_result(
        (per_seat, schedule) in (
            vec(seat_step(1), 0..6),
            vec(seat_step(2), 0..6),
            vec(seat_step(3), 0..6),
        )
            .prop_flat_map(|(a, b, c)| {
                let schedule: Vec<usize> = [&a, &b, &c]
                    .iter()
                    .enumerate()
                    .flat_map(|(i, steps)| std::iter::repeat_n(i, steps.len()))
                    .collect();
                (Just(vec![a, b, c]), Just(schedule).prop_shuffle())
            }),
    ) {
        let in_turn = logged(&per_seat.concat());
        let mut each = per_seat.iter().map(|steps| steps.iter()).collect::<Vec<_>>();
        let interleaved: Vec<Step> = schedule
            .iter()
            .filter_map(|&seat| each[seat].next().copied())
            .collect();
        let interleaved = logged(&interleaved);
        let (a, b) = (poll(&start(), &in_turn), poll(&start(), &interleaved));
        prop_assert_eq!(&a.view, &b.view);
        let by_seat = |mut r: Vec<Rejection>| {
            r.sort_by_key(|r| r.why.token_id());
            r
        };
        prop_assert_eq!(by_seat(a.rejected), by_seat(b.rejected));
    }
}
