use super::*;
use crate::testing::{believed_record, empty_view as empty};
use proptest::prelude::*;
use std::collections::BTreeMap;

const OWN_SEAT: u64 = 1;

fn own() -> Own<'static> {
    Own {
        token_id: Some(OWN_SEAT),
        instance_id: "own",
        wg_public_key: Some(Key::from_bytes([0xee; 32])),
    }
}

/// `view` with seat `token`'s record set to one of key byte `key` (none when 0), or cleared.
fn with(view: &ChainView, token: u64, key: Option<u8>) -> Arc<ChainView> {
    let mut next = view.clone();
    match key {
        Some(key) => {
            let reg = believed_record(token, 1, key, &format!("{token:040x}"));
            next.records.insert(token, Arc::new(reg));
        }
        None => {
            next.records.remove(&token);
        }
    }
    Arc::new(next)
}

/// The members [`membership::members`] works out from nothing.
fn from_nothing(view: &ChainView) -> Vec<Member> {
    membership::members(&view.records, own(), view.prefix()).0
}

fn seats(moved: &[Moved]) -> Vec<(u64, bool, bool)> {
    (moved.iter())
        .map(|m| (m.token_id, m.before.is_some(), m.after.is_some()))
        .collect()
}

/// A join is one seat moved, and the members are those worked out from nothing.
#[test]
fn a_join_moves_the_one_seat_that_joined() {
    let three = with(
        &with(&with(&empty(), 2, Some(0x22)), 3, Some(0x33)),
        4,
        Some(0x44),
    );
    let (mut roster, invalid) = Roster::new(Arc::clone(&three), own());
    assert!(invalid.is_empty());
    let four = with(&three, 5, Some(0x55));
    let (moved, invalid) = roster.update(&four);
    assert!(invalid.is_empty());
    assert_eq!(seats(&moved), [(5, false, true)]);
    assert_eq!(
        moved[0].after.as_ref().unwrap().overlay_ip.to_string(),
        "10.0.1.5"
    );
    let members: Vec<Member> = roster.members().values().cloned().collect();
    assert_eq!(members, from_nothing(&four));
    let (moved, _) = roster.update(&with(&four, 3, None));
    assert_eq!(seats(&moved), [(3, true, false)], "a leave");
}

/// A seat that takes another's key takes both out, each named by the other, until one lets go; the seat
/// whose record did not move is moved all the same.
#[test]
fn a_key_claimed_twice_takes_both_seats_out_until_one_lets_go() {
    let two = with(&with(&empty(), 2, Some(0x22)), 3, Some(0x33));
    let (mut roster, _) = Roster::new(Arc::clone(&two), own());
    let clash = with(&two, 3, Some(0x22));
    let (moved, invalid) = roster.update(&clash);
    assert_eq!(seats(&moved), [(2, true, false), (3, true, false)]);
    assert_eq!(
        invalid,
        [
            InvalidRecord::DuplicateKey {
                token_id: 2,
                other: 3
            },
            InvalidRecord::DuplicateKey {
                token_id: 3,
                other: 2
            }
        ]
    );
    assert!(roster.members().is_empty());
    let (moved, invalid) = roster.update(&with(&clash, 3, Some(0x34)));
    assert!(invalid.is_empty());
    assert_eq!(seats(&moved), [(2, false, true), (3, false, true)]);
}

/// A record read again, equal but not the same copy, is looked at and moves no member.
#[test]
fn a_record_read_anew_but_equal_moves_no_member() {
    let two = with(&with(&empty(), 2, Some(0x22)), 3, Some(0x33));
    let (mut roster, _) = Roster::new(Arc::clone(&two), own());
    let (moved, invalid) = roster.update(&with(&two, 2, Some(0x22)));
    assert!(moved.is_empty() && invalid.is_empty());
    assert_eq!(roster.members().len(), 2);
}

/// This node's own records are no members: its seat's quietly, another seat's with a reason.
#[test]
fn this_nodes_own_records_are_no_members() {
    let mut view = (*with(&empty(), OWN_SEAT, Some(0x11))).clone();
    let (mut roster, invalid) = Roster::new(Arc::new(view.clone()), own());
    assert!(roster.members().is_empty() && invalid.is_empty());
    view.records
        .insert(7, Arc::new(believed_record(7, 1, 0x77, "own")));
    let (moved, invalid) = roster.update(&Arc::new(view));
    assert!(moved.is_empty());
    assert_eq!(invalid, [InvalidRecord::Itself { token_id: 7 }]);
}

/// One seat's record as the property test varies it.
#[derive(Debug, Clone)]
enum Edit {
    Clear,
    /// A record with this key byte (none when 0: then a gateway URL), its endpoint unparsable when `bad`.
    Set {
        key: u8,
        bad: bool,
        own_instance: bool,
        url: bool,
    },
    /// The very record again, as a new copy.
    Reread,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => Just(Edit::Clear),
        1 => Just(Edit::Reread),
        6 => (0u8..5, prop::bool::weighted(0.1), prop::bool::weighted(0.05), any::<bool>())
            .prop_map(|(key, bad, own_instance, url)| Edit::Set { key, bad, own_instance, url }),
    ]
}

/// Seats 1 to 6, this node's among them, and one beyond the /24.
fn seat() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=6, Just(300)]
}

fn applied(view: &ChainView, edits: &[(u64, Edit)], nonce: u64) -> ChainView {
    let mut next = view.clone();
    for (token, e) in edits {
        match e {
            Edit::Clear => {
                next.records.remove(token);
            }
            Edit::Reread => {
                if let Some(r) = next.records.get(token) {
                    let copy = Arc::new((**r).clone());
                    next.records.insert(*token, copy);
                }
            }
            Edit::Set {
                key,
                bad,
                own_instance,
                url,
            } => {
                let instance = if *own_instance {
                    "own".to_owned()
                } else {
                    format!("{token:040x}")
                };
                let mut reg = believed_record(*token, nonce, *key, &instance);
                if *bad {
                    reg.endpoint = "not-an-endpoint".into();
                }
                if *url || *key == 0 {
                    reg.gateway_url = format!("https://{token}.example");
                }
                next.records.insert(*token, Arc::new(reg));
            }
        }
    }
    next
}

proptest! {
    /// Whatever the records do, block after block, the roster's members are those worked out from
    /// nothing, and the seats it says moved are exactly those whose member changed.
    #[test]
    fn the_roster_carried_along_is_the_members_worked_out_from_nothing(
        blocks in prop::collection::vec(prop::collection::vec((seat(), edit()), 0..4), 1..12)
    ) {
        let (mut roster, _) = Roster::new(Arc::new(empty()), own());
        let mut view = empty();
        for (n, edits) in blocks.iter().enumerate() {
            let before: BTreeMap<u64, Member> = (roster.members().iter()).map(|(t, m)| (*t, m.clone())).collect();
            view = applied(&view, edits, n as u64 + 1);
            let (moved, invalid) = roster.update(&Arc::new(view.clone()));
            let (want, all_invalid) = membership::members(&view.records, own(), view.prefix());
            let got: Vec<Member> = roster.members().values().cloned().collect();
            prop_assert_eq!(&got, &want);
            let after: BTreeMap<u64, Member> = want.into_iter().map(|m| (m.token_id, m)).collect();
            let mut changed = Vec::new();
            for t in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
                if before.get(t) != after.get(t) {
                    changed.push(Moved { token_id: *t, before: before.get(t).cloned(), after: after.get(t).cloned() });
                }
            }
            prop_assert_eq!(moved, changed);
            for e in &invalid {
                prop_assert!(all_invalid.contains(e), "{e} is not among the reasons worked out from nothing");
            }
        }
    }
}
