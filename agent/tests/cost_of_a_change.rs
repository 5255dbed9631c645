//! What one seat's change costs a member, held by CI rather than reported (issue 58: joins cheap enough for
//! 10,000 seats). The bench measures the time (`scripts/bench --sections control-plane`); time is not
//! asserted here. What is asserted is the memory a change allocates on its way from the follower's new view
//! to the applied plan, which is what gave the time away while a change still copied or walked every seat:
//! a view's maps copied whole, or the members worked out again from every record, allocate in proportion to
//! the cluster. Carried from view to view, a join allocates a path through each persistent map, so ten
//! times the seats may cost a level more of each path, never ten times the bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::SystemTime;

use alloy::primitives::{Address, B256};
use mesh_chain::membership::{Own, Pins, Prefix};
use mesh_chain::testing::believed_record;
use mesh_chain::view::ChainView;
use mesh_wg::{Key, MemoryTable, PeerTable as _};
use p2p_agent::desired;
use p2p_agent::state::SeatState;

/// Counts the bytes each thread asks the allocator for, so that a test measures its own work only.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is handed to the system allocator unchanged; the count is a thread-local `Cell` with a
// constant initialiser, which neither allocates nor can be reentered.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as it is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + new_size));
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.with(Cell::get)
}

const OWN_SEAT: u64 = 1;

/// A WireGuard key of seat `token`'s own: no two seats share one (a shared key takes both out).
fn key_of(token: u64) -> B256 {
    let mut bytes = [0x5a; 32];
    bytes[24..].copy_from_slice(&token.to_be_bytes());
    B256::from(bytes)
}

/// A believed record for seat `token`, with a key and an endpoint of its own.
fn record(token: u64) -> Arc<mesh_chain::record::SignedRegistration> {
    let mut reg = believed_record(token, 1, 1, &format!("{token:040x}"));
    reg.wg_public_key = key_of(token);
    reg.endpoint = format!("198.18.{}.{}:51820", token >> 8, token & 0xff);
    Arc::new(reg)
}

/// A cluster on a /16 whose seats 2 to `seats` hold a record each (seat 1 is this node's).
fn cluster(seats: u64) -> ChainView {
    let mut view = ChainView::new(
        Address::ZERO,
        Pins {
            kms_root: Address::ZERO,
            app_ids: Vec::new(),
            chain_id: 1,
            prefix: Prefix::new([10, 0, 0, 0].into(), 16).expect("a valid prefix"),
        },
    );
    for token in 2..=seats {
        view.records.insert(token, record(token));
    }
    view
}

/// A seat's change, as a block brings it.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A newcomer's record, on the seat after the last.
    Join,
    /// The record of the seat in the middle, gone (revoked, or its node left).
    Leave,
}

/// What a member of a cluster of `seats` does for `change`, as the agent's mesh task does it: the
/// follower's next view (a copy of the last with the record added or gone), the members carried to it, the
/// moved seats' peers, the table's entries for them, the plan and its application. Returns the bytes it
/// allocated, after checking that it planned the changed seat alone.
fn cost_of(change: Change, seats: u64) -> usize {
    let own = Own {
        token_id: Some(OWN_SEAT),
        instance_id: "own",
        wg_public_key: Some(Key::from_bytes([0xee; 32])),
    };
    let view = Arc::new(cluster(seats));
    let (roster, invalid) = desired::roster(&view, SeatState::Active(OWN_SEAT), own);
    let mut roster = roster.expect("an active seat has members");
    assert!(
        invalid.is_empty(),
        "every record is usable: {:?}",
        invalid.first()
    );
    assert_eq!(roster.members().len() as u64, seats - 1);
    let table = MemoryTable::default();
    let moved: Vec<_> = (roster.members().values())
        .map(|m| mesh_chain::roster::Moved {
            token_id: m.token_id,
            before: None,
            after: Some(m.clone()),
        })
        .collect();
    let (all, _) = desired::moved_configs(&moved, None, None);
    assert!(mesh_wg::apply(&table, &mesh_wg::plan(&all, &[], SystemTime::now())).is_empty());

    let (seat, peers_after) = match change {
        Change::Join => (seats + 1, seats),
        Change::Leave => (seats / 2, seats - 2),
    };
    let before = allocated();
    let mut next = (*view).clone();
    match change {
        Change::Join => next.records.insert(seat, record(seat)),
        Change::Leave => next.records.remove(&seat),
    };
    let next = Arc::new(next);
    let (moved, invalid) = roster.update(&next);
    let (want, keys) = desired::moved_configs(&moved, None, None);
    let has = table.peers_of(&keys);
    let changes = mesh_wg::plan(&want, &has, SystemTime::now());
    let failed = mesh_wg::apply(&table, &changes);
    let cost = allocated() - before;

    assert!(invalid.is_empty() && failed.is_empty());
    assert_eq!(moved.iter().map(|m| m.token_id).collect::<Vec<_>>(), [seat]);
    assert_eq!(
        changes.len(),
        1,
        "seat {seat} alone is planned: {changes:?}"
    );
    assert_eq!(table.peers().len() as u64, peers_after);
    cost
}

/// A join or a leave allocates, at a member of ten thousand seats, no more than a level more of each map's
/// path than at a member of a thousand: where a change copied the view's records or reworked every member,
/// it would allocate ten times as much, and take the time with it.
#[test]
fn a_change_costs_a_member_of_ten_thousand_seats_what_it_costs_at_a_thousand() {
    for change in [Change::Join, Change::Leave] {
        let thousand = cost_of(change, 1_000);
        let ten_thousand = cost_of(change, 10_000);
        eprintln!(
            "{change:?} allocated {thousand} bytes at 1,000 seats and {ten_thousand} at 10,000"
        );
        assert!(
            ten_thousand <= thousand * 2,
            "{change:?} at 10,000 seats allocated {ten_thousand} bytes, more than twice the {thousand} at \
             1,000: some step of it grows with the cluster"
        );
        assert!(
            ten_thousand <= 32 * 1024,
            "{change:?} at 10,000 seats allocated {ten_thousand} bytes; a path through each map is a few KiB"
        );
    }
}
