use super::*;

use proptest::prelude::*;

fn key(k: u8) -> Key {
    Key::from_bytes([k; 32])
}

fn candidate(k: u8) -> Candidate {
    Candidate {
        relay: key(k),
        endpoint: SocketAddr::from(([192, 0, 2, k], 51820)),
    }
}

const LIVENESS: Liveness = Liveness {
    timeout: Duration::from_millis(2500),
};

/// A pair's relays on a simulated network: each relay grants at once and answers probes after its round
/// trip, or never once dead.
struct Net {
    relays: PeerRelays,
    rtt: BTreeMap<Key, Option<Duration>>,
    pending: Vec<(Instant, Key, u16)>,
    now: Instant,
    asks: Vec<(Key, Ask)>,
}

impl Net {
    fn new(rtts: &[(u8, u64)]) -> Self {
        let mut relays = PeerRelays::default();
        let candidates: Vec<Candidate> = rtts.iter().map(|(k, _)| candidate(*k)).collect();
        relays.set_candidates(&candidates);
        Self {
            relays,
            rtt: rtts
                .iter()
                .map(|(k, ms)| (key(*k), Some(Duration::from_millis(*ms))))
                .collect(),
            pending: Vec::new(),
            now: Instant::now(),
            asks: Vec::new(),
        }
    }

    /// Runs for `secs` seconds in ticks of 50 ms, the pair not direct.
    fn run(&mut self, secs: f64) {
        let until = self.now + Duration::from_secs_f64(secs);
        while self.now < until {
            self.now += Duration::from_millis(50);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.pending.drain(..).partition(|(at, _, _)| *at <= now);
            self.pending = later;
            for (at, relay, seq) in due {
                self.relays.probe_answered(&relay, seq, at);
            }
            let tick = self.relays.tick(now, true, true, LIVENESS);
            for (relay, ask) in &tick.asks {
                if *ask == Ask::Allocate && self.rtt.get(relay).is_some_and(Option::is_some) {
                    self.relays
                        .granted(relay, u32::from(relay.as_bytes()[0]), true, now);
                }
            }
            self.asks.extend(tick.asks);
            for (relay, seq) in tick.probes {
                if let Some(Some(rtt)) = self.rtt.get(&relay) {
                    self.pending.push((now + *rtt, relay, seq));
                }
            }
        }
    }

    fn using(&self) -> Option<u8> {
        self.relays.current().map(|c| c.relay.as_bytes()[0])
    }
}

#[test]
fn nothing_is_asked_or_probed_while_the_pair_is_direct() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1), candidate(2)]);
    let tick = r.tick(Instant::now(), false, true, LIVENESS);
    assert_eq!(tick, Tick::default());
    assert_eq!(r.current(), None);
}

#[test]
fn at_most_three_relays_are_held_and_those_held_are_renewed() {
    let mut net = Net::new(&[(1, 10), (2, 20), (3, 30), (4, 40)]);
    net.run(0.1);
    let asked: Vec<Key> = net.asks.iter().map(|(k, _)| *k).collect();
    assert_eq!(asked, [key(1), key(2), key(3)], "three at most");
    net.asks.clear();
    net.run(REFRESH.as_secs_f64());
    let renewed: Vec<Key> = net.asks.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        renewed,
        [key(1), key(2), key(3)],
        "renewed, the fourth still not asked"
    );
}

#[test]
fn a_refused_relay_is_asked_again_after_a_backoff_that_grows() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1)]);
    let t0 = Instant::now();
    let asked = |r: &mut PeerRelays, at: Instant| !r.tick(at, true, true, LIVENESS).asks.is_empty();
    assert!(asked(&mut r, t0));
    r.refused(&key(1), t0);
    assert!(
        !asked(&mut r, t0 + Duration::from_secs(4)),
        "backing off 5 s"
    );
    let t1 = t0 + Duration::from_secs(5);
    assert!(asked(&mut r, t1), "sooner than a refresh");
    r.refused(&key(1), t1);
    assert!(!asked(&mut r, t1 + Duration::from_secs(9)), "then 10 s");
    assert!(asked(&mut r, t1 + Duration::from_secs(10)));
    r.granted(&key(1), 7, false, t1);
    r.refused(&key(1), t1 + Duration::from_secs(10));
    assert!(
        asked(&mut r, t1 + Duration::from_secs(15)),
        "a grant resets the backoff"
    );
}

#[test]
fn the_relay_with_the_lowest_round_trip_is_used_once_measured() {
    let mut net = Net::new(&[(1, 40), (2, 8), (3, 25)]);
    net.run(0.05);
    assert_eq!(net.using(), None, "none has answered yet");
    net.run(0.15);
    assert_eq!(
        net.using(),
        Some(2),
        "until measured, the fastest answer so far carries the pair"
    );
    net.run(2.0);
    assert_eq!(net.using(), Some(2));
    let rtt = net.relays.rtt(&key(2)).expect("measured");
    assert!(
        rtt >= Duration::from_millis(8) && rtt <= Duration::from_millis(60),
        "{rtt:?}"
    );
}

#[test]
fn a_relay_that_stops_answering_is_left_within_the_peer_timeout_for_the_standby() {
    let mut net = Net::new(&[(1, 10), (2, 30)]);
    net.run(3.0);
    assert_eq!(net.using(), Some(1));
    net.rtt.insert(key(1), None);
    let died = net.now;
    while net.using() == Some(1) {
        net.run(0.05);
        assert!(
            net.now - died <= LIVENESS.timeout + Duration::from_millis(100),
            "still on the dead relay"
        );
    }
    assert_eq!(net.using(), Some(2));
    assert_eq!(
        net.relays.moved(),
        Some("the relay in use stopped answering")
    );
    net.rtt.insert(key(2), None);
    net.run(3.0);
    assert_eq!(net.using(), None, "no peer relay answers: the gateway's");
}

#[test]
fn a_candidate_gone_is_released_and_no_longer_used() {
    let mut net = Net::new(&[(1, 10), (2, 30)]);
    net.run(3.0);
    assert_eq!(net.using(), Some(1));
    let released = net.relays.set_candidates(&[candidate(2)]);
    assert_eq!(released, [(key(1), Ask::Release)]);
    assert_eq!(net.using(), None);
    net.run(1.0);
    assert_eq!(net.using(), Some(2));
}

#[test]
fn a_much_faster_relay_takes_over() {
    let mut net = Net::new(&[(1, 20), (2, 21)]);
    net.run(3.0);
    let first = net.using().expect("one chosen");
    let other = if first == 1 { 2 } else { 1 };
    net.rtt.insert(key(other), Some(Duration::from_millis(2)));
    net.run(OTHERS_PROBED_EVERY.as_secs_f64() + 3.0);
    assert_eq!(net.using(), Some(other));
    assert_eq!(net.relays.moved(), Some("another relay is faster"));
}

proptest! {
    /// Round trips that differ by less than the switching band never move the pair, whatever their noise.
    #[test]
    fn noise_within_the_band_never_moves_the_pair(
        base in 5u64..50,
        jitter in proptest::collection::vec(0u64..2, 40),
    ) {
        let mut net = Net::new(&[(1, base), (2, base + 1)]);
        net.run(3.0);
        let first = net.using();
        prop_assert!(first.is_some());
        for j in jitter {
            net.rtt.insert(key(1), Some(Duration::from_millis(base + j)));
            net.rtt.insert(key(2), Some(Duration::from_millis(base + 1 - j.min(1))));
            net.run(1.0);
            prop_assert_eq!(net.using(), first);
        }
    }
}

#[test]
fn without_a_session_the_ready_relays_are_tried_in_turn_each_for_the_peer_timeout() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1), candidate(2), candidate(3)]);
    let t0 = Instant::now();
    r.granted(&key(1), 11, true, t0);
    r.granted(&key(2), 12, false, t0);
    r.granted(&key(3), 13, true, t0);
    r.tick(t0, true, false, LIVENESS);
    let using = |r: &PeerRelays| r.current().map(|u| (u.relay, u.vni));
    assert_eq!(
        using(&r),
        Some((key(1), 11)),
        "the first ready relay, on trial"
    );
    r.tick(t0 + Duration::from_secs(2), true, false, LIVENESS);
    assert_eq!(using(&r), Some((key(1), 11)), "kept for the peer timeout");
    r.tick(t0 + Duration::from_secs(3), true, false, LIVENESS);
    assert_eq!(
        using(&r),
        Some((key(3), 13)),
        "then the next ready one; 2 is not ready"
    );
    r.tick(t0 + Duration::from_secs(6), true, false, LIVENESS);
    assert_eq!(using(&r), Some((key(1), 11)), "and round again");
    r.tick(t0 + Duration::from_secs(6), true, true, LIVENESS);
    assert_eq!(
        r.current(),
        None,
        "with a session, only a relay that answers its probes is used"
    );
}

#[test]
fn a_session_made_through_a_relay_stays_on_the_one_the_peer_is_heard_through_until_probes_decide() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1), candidate(2)]);
    let t0 = Instant::now();
    r.granted(&key(1), 11, true, t0);
    r.granted(&key(2), 12, true, t0);
    r.tick(t0, true, false, LIVENESS);
    let using = |r: &PeerRelays| r.current().map(|u| u.relay);
    assert_eq!(using(&r), Some(key(1)), "this side's first contact");
    // The peer tried relay 2 for its own first contact: the handshake's answer came through it.
    let t1 = t0 + Duration::from_millis(20);
    r.heard_via(&key(2), t1);
    r.tick(t1, true, true, LIVENESS);
    assert_eq!(
        using(&r),
        Some(key(2)),
        "the session stays on a relay that carries it while none is measured"
    );
    r.tick(t1 + Duration::from_millis(200), true, true, LIVENESS);
    assert_eq!(using(&r), Some(key(2)), "still, before any probe answers");

    // Probes through relay 1 answer three times: measured, it takes over from the unmeasured one.
    let mut now = t1;
    for _ in 0..FIRST_SAMPLES {
        now += FIRST_PROBES_EVERY;
        let tick = r.tick(now, true, true, LIVENESS);
        for (relay, seq) in tick.probes {
            if relay == key(1) {
                r.probe_answered(&relay, seq, now + Duration::from_millis(1));
            }
        }
    }
    r.tick(now + Duration::from_millis(2), true, true, LIVENESS);
    assert_eq!(using(&r), Some(key(1)), "the measured relay is taken");

    // Nothing more comes through either: after the peer timeout, no peer relay carries the pair.
    r.tick(now + LIVENESS.timeout * 2, true, true, LIVENESS);
    assert_eq!(using(&r), None);
}

#[test]
fn a_relay_that_stopped_granting_is_not_tried_for_a_first_contact() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1)]);
    let t0 = Instant::now();
    r.granted(&key(1), 11, true, t0);
    r.tick(t0 + 2 * REFRESH, true, false, LIVENESS);
    assert_eq!(r.current(), None, "its grant was not renewed: it is gone");
}

#[test]
fn a_relayed_datagram_belongs_to_the_pair_only_through_its_own_ready_allocation() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1), candidate(2)]);
    let now = Instant::now();
    r.granted(&key(1), 7, true, now);
    r.granted(&key(2), 8, false, now);
    let at = |k: u8| candidate(k).endpoint;
    assert_eq!(r.relay_at(at(1), 7), Some(key(1)));
    assert_eq!(r.relay_at(at(1), 8), None, "another vni");
    assert_eq!(r.relay_at(at(2), 8), None, "not ready");
    assert_eq!(r.ready().count(), 1);
}

#[test]
fn an_invitation_is_taken_up_only_from_a_candidate() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1)]);
    let now = Instant::now();
    assert!(r.invited(&key(1), now));
    assert!(!r.invited(&key(9), now), "not a relay this node reaches");
    assert!(
        r.tick(now, true, true, LIVENESS).asks.is_empty(),
        "the invitation's answer counts as this refresh's ask"
    );
}

#[test]
fn a_pair_that_went_direct_releases_its_allocations_after_a_while() {
    let mut r = PeerRelays::default();
    r.set_candidates(&[candidate(1), candidate(2)]);
    let t0 = Instant::now();
    r.granted(&key(1), 11, true, t0);
    r.granted(&key(2), 12, false, t0);
    assert!(r.tick(t0, false, true, LIVENESS).asks.is_empty());
    let early = t0 + RELEASE_AFTER - Duration::from_millis(1);
    assert!(
        r.tick(early, false, true, LIVENESS).asks.is_empty(),
        "kept while a punch may still flap"
    );
    let asks = r.tick(t0 + RELEASE_AFTER, false, true, LIVENESS).asks;
    assert_eq!(asks, [(key(1), Ask::Release), (key(2), Ask::Release)]);
    assert_eq!(r.ready().count(), 0);
    assert!(
        r.tick(t0 + 2 * RELEASE_AFTER, false, true, LIVENESS)
            .asks
            .is_empty(),
        "released once"
    );
    let back = t0 + 3 * RELEASE_AFTER;
    r.tick(back, true, true, LIVENESS);
    assert!(
        r.tick(back + RELEASE_AFTER, false, true, LIVENESS)
            .asks
            .is_empty(),
        "wanted again: the clock starts over"
    );
}

/// A pair's relays are idle only while nothing is held: a pair that held some is not, until it released them.
#[test]
fn relays_are_idle_only_while_none_is_held_or_used() {
    assert!(PeerRelays::default().idle(), "a pair that never wanted one");
    let mut net = Net::new(&[(1, 10)]);
    assert!(net.relays.idle(), "candidates alone hold nothing");
    net.run(0.5);
    assert!(!net.relays.idle(), "granted and in use");
    let t = net.now;
    net.relays.tick(t, false, true, LIVENESS);
    assert!(!net.relays.idle(), "unwanted, but held until released");
    net.relays.tick(t + RELEASE_AFTER, false, true, LIVENESS);
    assert!(net.relays.idle(), "released");
}
