use std::collections::HashMap;
use std::time::Duration;

use super::*;

const A: Key = Key::from_bytes([1; 32]);
const B: Key = Key::from_bytes([2; 32]);
/// Reached by the relay only through the gateway.
const C: Key = Key::from_bytes([3; 32]);
const D: Key = Key::from_bytes([4; 32]);
const E: Key = Key::from_bytes([5; 32]);
const F: Key = Key::from_bytes([6; 32]);
/// No seat at all.
const X: Key = Key::from_bytes([8; 32]);
const RELAY: Key = Key::from_bytes([9; 32]);

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1], port))
}

fn seats() -> HashMap<Key, Option<SocketAddr>> {
    let on_udp = [(A, 1), (B, 2), (D, 4), (E, 5), (F, 6), (RELAY, 9)];
    let mut s: HashMap<_, _> = on_udp.map(|(k, p)| (k, Some(at(p)))).into();
    s.insert(C, None);
    s
}

fn table() -> Table {
    Table::new(RELAY, Limits::default())
}

fn after(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

fn granted(to: Key, peer: Key, vni: u32, ready: bool) -> (Key, Control) {
    let lifetime = if ready {
        BOUND_LIFETIME
    } else {
        UNBOUND_LIFETIME
    };
    let m = Control::Granted {
        peer,
        vni,
        ready,
        lifetime_ms: lifetime.as_millis() as u32,
    };
    (to, m)
}

fn refused(to: Key, peer: Key, reason: RefusedReason) -> (Key, Control) {
    (to, Control::Refused { peer, reason })
}

/// Both seats ask; the pair's vni.
fn ready(t: &mut Table, a: Key, b: Key, now: Instant) -> u32 {
    t.request(a, b, &seats(), now);
    match t.request(b, a, &seats(), now)[..] {
        [(_, Control::Granted { vni, ready, .. }), _] if ready => vni,
        ref out => panic!("not ready: {out:?}"),
    }
}

#[test]
fn strangers_the_seat_itself_and_the_relay_are_refused() {
    let mut t = table();
    let now = Instant::now();
    let s = seats();
    assert_eq!(
        t.request(A, A, &s, now),
        [refused(A, A, RefusedReason::ItSelf)]
    );
    assert_eq!(
        t.request(A, RELAY, &s, now),
        [refused(A, RELAY, RefusedReason::ItSelf)]
    );
    assert_eq!(
        t.request(A, X, &s, now),
        [refused(A, X, RefusedReason::NotASeat)]
    );
    assert_eq!(
        t.request(X, A, &s, now),
        [refused(X, A, RefusedReason::NotASeat)]
    );
    let off_udp = RefusedReason::PeerNotOnUdp;
    assert_eq!(t.request(A, C, &s, now), [refused(A, C, off_udp)]);
    assert_eq!(t.request(C, A, &s, now), [refused(C, A, off_udp)]);
    let stats = t.stats();
    assert_eq!(stats.allocations, 0);
    assert_eq!(stats.refused(RefusedReason::ItSelf), 2);
    assert_eq!(stats.refused(RefusedReason::NotASeat), 2);
    assert_eq!(stats.refused(off_udp), 2);
}

#[test]
fn both_seats_get_one_vni_and_it_is_ready_once_both_asked() {
    let mut t = table();
    let now = Instant::now();
    let first = t.request(A, B, &seats(), now);
    assert_eq!(
        first,
        [
            granted(A, B, 1, false),
            (B, Control::Invite { peer: A, vni: 1 })
        ]
    );
    assert_eq!(
        t.request(A, B, &seats(), now),
        first,
        "an Invite may be lost"
    );
    assert_eq!(t.stats().granted, 0);
    let second = t.request(B, A, &seats(), now);
    assert_eq!(second, [granted(B, A, 1, true), granted(A, B, 1, true)]);
    assert_eq!(t.request(A, B, &seats(), now), [granted(A, B, 1, true)]);
    assert_eq!((t.stats().allocations, t.stats().granted), (1, 1));
}

#[test]
fn nothing_is_forwarded_until_both_asked_then_only_from_a_bound_endpoint_to_the_other() {
    let mut t = table();
    let now = Instant::now();
    t.request(A, B, &seats(), now);
    assert_eq!(t.forward(1, at(1), 100, now), Err(Dropped::NotReady));
    assert_eq!(t.forward(1, at(2), 100, now), Err(Dropped::NotReady));
    t.request(B, A, &seats(), now);
    assert_eq!(t.forward(1, at(1), 100, now), Ok(at(2)));
    assert_eq!(t.forward(1, at(2), 300, now), Ok(at(1)));
    assert_eq!(t.forward(2, at(1), 100, now), Err(Dropped::UnknownVni));
    assert_eq!(t.forward(1, at(7), 100, now), Err(Dropped::Stranger));
    // Another seat of the relay is as much a stranger to this pair.
    assert_eq!(t.forward(1, at(4), 100, now), Err(Dropped::Stranger));

    let stats = t.stats();
    assert_eq!((stats.forwarded_datagrams, stats.forwarded_bytes), (2, 400));
    assert_eq!(stats.dropped(Dropped::NotReady), 2);
    assert_eq!(stats.dropped(Dropped::UnknownVni), 1);
    assert_eq!(stats.dropped(Dropped::Stranger), 2);
}

#[test]
fn a_roamed_endpoint_is_followed() {
    let mut t = table();
    let now = Instant::now();
    let vni = ready(&mut t, A, B, now);
    assert_eq!(t.endpoint(A, Some(at(11))), []);
    assert_eq!(t.forward(vni, at(1), 100, now), Err(Dropped::Stranger));
    assert_eq!(t.forward(vni, at(11), 100, now), Ok(at(2)));
    assert_eq!(t.forward(vni, at(2), 100, now), Ok(at(11)));
}

#[test]
fn a_seat_off_udp_loses_its_allocations_and_both_seats_are_told() {
    let mut t = table();
    let now = Instant::now();
    let ab = ready(&mut t, A, B, now);
    let ae = ready(&mut t, A, E, now);
    let bd = ready(&mut t, B, D, now);
    let mut told = t.endpoint(A, None);
    told.sort_by_key(|(to, m)| (*to, format!("{m:?}")));
    let released = RefusedReason::Released;
    let mut want = [
        refused(A, B, released),
        refused(B, A, released),
        refused(A, E, released),
        refused(E, A, released),
    ];
    want.sort_by_key(|(to, m)| (*to, format!("{m:?}")));
    assert_eq!(told, want);
    assert_eq!(t.forward(ab, at(2), 100, now), Err(Dropped::UnknownVni));
    assert_eq!(t.forward(ae, at(5), 100, now), Err(Dropped::UnknownVni));
    assert_eq!(t.forward(bd, at(2), 100, now), Ok(at(4)));
    assert_eq!(t.stats().refused(released), 4);
}

#[test]
fn a_gone_seat_loses_its_allocations_and_the_other_seat_is_told() {
    let mut t = table();
    let now = Instant::now();
    let vni = ready(&mut t, A, B, now);
    assert_eq!(t.seat_gone(B), [refused(A, B, RefusedReason::Released)]);
    assert_eq!(t.stats().allocations, 0);
    assert_eq!(t.forward(vni, at(1), 100, now), Err(Dropped::UnknownVni));
    assert_eq!(t.seat_gone(B), []);
}

#[test]
fn a_release_ends_the_allocation_and_the_other_seat_is_told() {
    let mut t = table();
    let now = Instant::now();
    ready(&mut t, A, B, now);
    assert_eq!(t.release(B, A), [refused(A, B, RefusedReason::Released)]);
    assert_eq!(t.stats().allocations, 0);
    assert_eq!(t.release(B, A), []);
}

#[test]
fn an_allocation_one_seat_asked_for_expires_30_s_after_its_last_request() {
    let mut t = table();
    let t0 = Instant::now();
    t.request(A, B, &seats(), t0);
    t.request(A, B, &seats(), after(t0, 20));
    assert_eq!(t.tick(after(t0, 49)), []);
    let released = RefusedReason::Released;
    let mut told = t.tick(after(t0, 50));
    told.sort_by_key(|(to, _)| *to);
    assert_eq!(told, [refused(A, B, released), refused(B, A, released)]);
    assert_eq!(t.stats().allocations, 0);
}

#[test]
fn a_ready_allocation_expires_90_s_after_its_last_request_or_datagram() {
    let mut t = table();
    let t0 = Instant::now();
    let vni = ready(&mut t, A, B, t0);
    t.request(B, A, &seats(), after(t0, 80));
    assert_eq!(t.tick(after(t0, 169)), []);
    assert_eq!(t.forward(vni, at(1), 100, after(t0, 100)), Ok(at(2)));
    assert_eq!(t.tick(after(t0, 189)), []);
    assert_eq!(t.tick(after(t0, 190)).len(), 2);
    assert_eq!(t.stats().allocations, 0);
}

#[test]
fn the_pair_and_seat_limits_refuse_new_allocations_only() {
    let limits = Limits {
        max_pairs: 2,
        max_per_seat: 1,
        ..Limits::default()
    };
    let mut t = Table::new(RELAY, limits);
    let now = Instant::now();
    let s = seats();
    ready(&mut t, A, B, now);
    let limit = RefusedReason::SeatLimit;
    assert_eq!(t.request(A, D, &s, now), [refused(A, D, limit)]);
    assert_eq!(t.request(D, A, &s, now), [refused(D, A, limit)]);
    ready(&mut t, D, E, now);
    assert_eq!(
        t.offer(),
        Control::Offer {
            accepting: true,
            free: 0
        }
    );
    let full = RefusedReason::Full;
    assert_eq!(t.request(F, A, &s, now), [refused(F, A, full)]);
    assert_eq!(t.request(A, B, &s, now).len(), 1, "a refresh still counts");
    assert_eq!(t.stats().refused(limit), 2);
    assert_eq!(t.stats().refused(full), 1);
}

#[test]
fn a_relay_that_stops_accepting_refuses_even_refreshes() {
    let mut t = table();
    let now = Instant::now();
    let vni = ready(&mut t, A, B, now);
    t.set_accepting(false);
    assert_eq!(
        t.offer(),
        Control::Offer {
            accepting: false,
            free: 63
        }
    );
    let no = RefusedReason::NotRelaying;
    assert_eq!(t.request(A, B, &seats(), now), [refused(A, B, no)]);
    assert_eq!(t.forward(vni, at(1), 100, now), Ok(at(2)), "it drains");
}

#[test]
fn a_pair_over_its_rate_is_dropped_until_the_bucket_refills() {
    let limits = Limits {
        pair_mbps: Some(1),
        ..Limits::default()
    };
    let mut t = Table::new(RELAY, limits);
    let t0 = Instant::now();
    let ab = ready(&mut t, A, B, t0);
    let de = ready(&mut t, D, E, t0);
    // 1 Mbit/s is 125,000 bytes a second, with a burst of 128 KiB.
    let through = |t: &mut Table, vni, from, now| {
        (0..200)
            .take_while(|_| t.forward(vni, from, 1_000, now).is_ok())
            .count()
    };
    assert_eq!(through(&mut t, ab, at(1), t0), 131);
    assert_eq!(through(&mut t, de, at(4), t0), 131, "each pair has its own");
    let later = t0 + Duration::from_secs(1);
    assert_eq!(through(&mut t, ab, at(2), later), 125);
    assert_eq!(t.stats().dropped(Dropped::PairRate), 3);
    assert_eq!(t.stats().dropped(Dropped::TotalRate), 0);
}

#[test]
fn all_pairs_together_over_the_total_rate_are_dropped() {
    let limits = Limits {
        total_mbps: Some(1),
        ..Limits::default()
    };
    let mut t = Table::new(RELAY, limits);
    let now = Instant::now();
    let ab = ready(&mut t, A, B, now);
    let de = ready(&mut t, D, E, now);
    for _ in 0..100 {
        t.forward(ab, at(1), 1_000, now).expect("under the cap");
    }
    for _ in 0..31 {
        t.forward(de, at(4), 1_000, now).expect("under the cap");
    }
    assert_eq!(t.forward(de, at(4), 1_000, now), Err(Dropped::TotalRate));
    assert_eq!(t.forward(ab, at(1), 1_000, now), Err(Dropped::TotalRate));
    assert_eq!(t.stats().dropped(Dropped::TotalRate), 2);
    assert_eq!(t.stats().forwarded_bytes, 131_000);
}

#[test]
fn vnis_are_not_reused_and_skip_zero_and_those_in_use() {
    let mut t = table();
    let now = Instant::now();
    assert_eq!(ready(&mut t, A, B, now), 1);
    t.release(A, B);
    assert_eq!(
        ready(&mut t, A, B, now),
        2,
        "a late datagram for 1 finds nothing"
    );
    t.next_vni = u32::MAX;
    assert_eq!(ready(&mut t, D, E, now), u32::MAX);
    assert_eq!(ready(&mut t, A, D, now), 1);
    assert_eq!(ready(&mut t, A, E, now), 3, "2 is in use");
}
