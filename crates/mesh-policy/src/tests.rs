use proptest::prelude::*;

use super::*;

const WEB: u32 = 1;
const DB: u32 = 2;
const OPS: u32 = 4;

fn grant(from: u32, to: u32, protocol: Option<Protocol>, ports: RangeInclusive<u16>) -> Grant {
    Grant {
        from,
        to,
        protocol,
        ports,
    }
}

fn web_to_db() -> Policy {
    Policy {
        enforced: true,
        version: 3,
        tag_names: vec!["web".into(), "db".into(), "ops".into()],
        grants: vec![
            grant(WEB, DB, Some(Protocol::Tcp), 5432..=5432),
            grant(OPS, WEB | DB, None, 22..=22),
        ],
    }
}

#[test]
fn without_a_policy_in_force_everyone_reaches_everything() {
    let mut p = web_to_db();
    p.enforced = false;
    assert_eq!(
        p.decide(WEB, WEB, Protocol::Udp, 9),
        Verdict {
            allowed: true,
            why: Why::NotEnforced
        }
    );
    assert!(p.reach(0, 0).allows(Protocol::Tcp, 1));
}

#[test]
fn a_grant_allows_its_port_and_protocol_alone() {
    let p = web_to_db();
    assert_eq!(
        p.decide(WEB, DB, Protocol::Tcp, 5432),
        Verdict {
            allowed: true,
            why: Why::Grant(0)
        }
    );
    assert!(!p.decide(WEB, DB, Protocol::Udp, 5432).allowed, "UDP");
    assert!(
        !p.decide(WEB, DB, Protocol::Tcp, 5433).allowed,
        "another port"
    );
    assert_eq!(
        p.decide(DB, WEB, Protocol::Tcp, 5432).why,
        Why::NoGrant,
        "the other way"
    );
    assert!(
        !p.decide(WEB, WEB, Protocol::Tcp, 5432).allowed,
        "web to web"
    );
}

#[test]
fn a_grant_of_any_protocol_covers_both_and_any_shared_tag_matches() {
    let p = web_to_db();
    assert_eq!(
        p.decide(OPS | WEB, DB, Protocol::Udp, 22).why,
        Why::Grant(1)
    );
    assert_eq!(p.decide(OPS, WEB, Protocol::Tcp, 22).why, Why::Grant(1));
    assert!(
        !p.decide(0, DB, Protocol::Tcp, 5432).allowed,
        "an untagged seat"
    );
}

#[test]
fn the_reach_of_a_seat_is_its_grants_ports_merged() {
    let mut p = web_to_db();
    p.grants.push(grant(WEB, DB, None, 5433..=5440));
    p.grants
        .push(grant(WEB, DB, Some(Protocol::Udp), 100..=200));
    let r = p.reach(WEB, DB);
    assert!(!r.all);
    assert_eq!(r.tcp, vec![5432..=5440]);
    assert_eq!(r.udp, vec![100..=200, 5433..=5440]);
    assert_eq!(p.reach(DB, WEB), Reach::default(), "nothing back");
}

#[test]
fn tags_are_named_and_found_by_name() {
    let p = web_to_db();
    assert_eq!(p.tag_names(WEB | OPS | 1 << 9), ["web", "ops", "tag9"]);
    assert_eq!(p.tag_bit("db"), Some(DB));
    assert_eq!(p.tag_bit("cache"), None);
}

#[test]
fn a_contract_grant_of_an_unknown_protocol_is_refused() {
    assert_eq!(Grant::from_contract(1, 2, 1, 0, 1), None);
    assert_eq!(
        Grant::from_contract(1, 2, 0, 80, 443),
        Some(grant(1, 2, None, 80..=443))
    );
}

fn any_grant() -> impl Strategy<Value = Grant> {
    (
        1u32..16,
        1u32..16,
        prop_oneof![
            Just(None),
            Just(Some(Protocol::Tcp)),
            Just(Some(Protocol::Udp))
        ],
        0u16..100,
        0u16..50,
    )
        .prop_map(|(from, to, protocol, first, len)| grant(from, to, protocol, first..=first + len))
}

proptest! {
    /// The reach that `/v1/peers` shows and the device enforces says exactly what `decide` does, port by port.
    #[test]
    fn reach_and_decide_agree(
        grants in proptest::collection::vec(any_grant(), 0..8),
        from in 0u32..16,
        to in 0u32..16,
    ) {
        let p = Policy { enforced: true, version: 1, tag_names: Vec::new(), grants };
        let reach = p.reach(from, to);
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for port in 0..160u16 {
                prop_assert_eq!(reach.allows(protocol, port), p.decide(from, to, protocol, port).allowed);
            }
        }
        for list in [&reach.tcp, &reach.udp] {
            for pair in list.windows(2) {
                prop_assert!(u32::from(*pair[0].end()) + 1 < u32::from(*pair[1].start()), "merged: {:?}", list);
            }
        }
    }
}
