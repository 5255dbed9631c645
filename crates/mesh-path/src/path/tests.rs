use super::*;

/// The numbers below are for a 3 s peer timeout.
const THREE: Liveness = Liveness {
    timeout: Duration::from_secs(3),
};

fn at(start: Instant, ms: u64) -> Instant {
    start + Duration::from_millis(ms)
}

#[test]
fn messages_are_told_apart_by_type_and_length() {
    assert_eq!(Message::of(&[1; 148]), Some(Message::Initiation));
    assert_eq!(Message::of(&[2; 92]), Some(Message::Response));
    assert_eq!(Message::of(&[4; 32]), Some(Message::Keepalive));
    assert_eq!(Message::of(&[4; 33]), Some(Message::Data));
    assert_eq!(
        Message::of(&[3; 64]),
        None,
        "a cookie reply answers nothing"
    );
    assert_eq!(Message::of(&[]), None);
}

#[test]
fn an_unanswered_handshake_moves_the_peer_to_its_relay_after_the_bound() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    assert_eq!(p.tick(at(t0, 4_900), true, true), None);
    // Retries do not restart the clock.
    p.sent_direct(Message::Initiation, at(t0, 4_950));
    let m = p.tick(at(t0, 5_000), true, true).expect("a move");
    assert_eq!(m.to, PathKind::Relay);
    assert_eq!(p.on(), PathKind::Relay);
}

#[test]
fn a_peer_with_no_udp_address_goes_to_its_relay_at_once() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    assert_eq!(p.tick(t0, false, false), None, "no relay: nowhere to go");
    let m = p.tick(t0, true, false).expect("a move");
    assert_eq!(m.to, PathKind::Relay);
    assert_eq!(p.reason(), "no UDP address is known for the peer");
}

#[test]
fn a_punched_peer_is_on_udp_and_leaves_it_as_a_direct_one_does() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.tick(t0, true, false);
    assert_eq!(
        p.received_direct(Message::Response, at(t0, 1_000))
            .map(|m| m.to),
        Some(PathKind::Direct)
    );
    p.punched();
    assert_eq!(p.on(), PathKind::Punched);
    assert_eq!(
        p.received_direct(Message::Data, at(t0, 1_100)),
        None,
        "already on UDP"
    );
    p.sent_direct(Message::Data, at(t0, 2_000));
    assert_eq!(
        p.tick(at(t0, 17_000), true, true).map(|m| m.to),
        Some(PathKind::Relay),
        "unanswered data moves it to the relay"
    );
}

#[test]
fn back_on_udp_at_the_registered_endpoint_is_direct_and_anywhere_else_punched() {
    let registered: SocketAddr = "198.51.100.2:51820".parse().unwrap();
    let mapped: SocketAddr = "198.51.100.2:40123".parse().unwrap();
    assert_eq!(
        udp_path(Some(registered), Some(registered)),
        PathKind::Direct
    );
    assert_eq!(udp_path(Some(mapped), Some(registered)), PathKind::Punched);
    assert_eq!(
        udp_path(Some(mapped), None),
        PathKind::Punched,
        "no record endpoint"
    );
}

/// Only the two UDP paths to the peer itself are direct; a peer relay is not, though it is UDP too.
#[test]
fn a_peer_relay_is_not_direct_and_reads_as_peer_relay() {
    assert!(PathKind::Direct.is_direct() && PathKind::Punched.is_direct());
    assert!(!PathKind::PeerRelay.is_direct() && !PathKind::Relay.is_direct());
    assert_eq!(PathKind::PeerRelay.as_str(), "peer-relay");
    assert_eq!(PathKind::PeerRelay.to_string(), "peer-relay");
}

#[test]
fn without_a_relay_the_peer_stays_direct() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    assert_eq!(p.tick(at(t0, 60_000), false, true), None);
    assert_eq!(p.on(), PathKind::Direct);
}

#[test]
fn an_answer_in_time_keeps_the_peer_direct() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    assert_eq!(p.received_direct(Message::Response, at(t0, 20)), None);
    p.sent_direct(Message::Data, at(t0, 1_000));
    assert_eq!(p.received_direct(Message::Keepalive, at(t0, 11_000)), None);
    assert_eq!(p.tick(at(t0, 30_000), true, true), None);
}

/// A path that went dark is left at the peer timeout after it last carried anything, as the probes that
/// went unanswered show; the peer counts as dead at that very moment.
#[test]
fn a_path_that_goes_dark_is_left_at_the_peer_timeout_after_its_last_answer() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.received_direct(Message::Data, at(t0, 10_000));
    // The probes of the silence: from a third of the timeout on.
    for probe in [11_000, 11_500, 12_000, 12_500] {
        p.sent_direct(Message::Data, at(t0, probe));
        assert_eq!(p.tick(at(t0, probe), true, true), None);
    }
    assert_eq!(p.tick(at(t0, 12_999), true, true), None);
    let m = p.tick(at(t0, 13_000), true, true).expect("a move");
    assert_eq!(m.to, PathKind::Relay);
    assert_eq!(m.reason, "no answer over UDP");
}

/// Keepalives ask for nothing, so an idle pair stays; data after a long idle time gets the time a probe
/// would have had before it counts as unanswered.
#[test]
fn an_idle_path_stays_and_its_first_data_gets_a_probes_time() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.received_direct(Message::Response, t0);
    p.sent_direct(Message::Keepalive, at(t0, 1_000));
    assert_eq!(
        p.tick(at(t0, 60_000), true, true),
        None,
        "an idle peer is not dead"
    );
    p.sent_direct(Message::Data, at(t0, 60_000));
    assert_eq!(p.tick(at(t0, 61_649), true, true), None);
    assert_eq!(
        p.tick(at(t0, 61_650), true, true).unwrap().to,
        PathKind::Relay
    );
}

/// A peer that answers one-way data only when probed (it has nothing to send) stays on UDP.
#[test]
fn a_peer_that_answers_its_probes_keeps_its_path_under_one_way_traffic() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.received_direct(Message::Response, t0);
    for ms in (10..20_000).step_by(10) {
        p.sent_direct(Message::Data, at(t0, ms));
        // The second side's probes start 1.35 s into a silence; answered 50 ms later.
        if ms % 1_400 == 0 {
            p.received_direct(Message::Data, at(t0, ms + 50));
        }
        assert_eq!(p.tick(at(t0, ms), true, true), None, "at {ms} ms");
    }
}

#[test]
fn a_relayed_peer_is_probed_and_moves_back_on_a_response_over_udp() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    p.tick(at(t0, 5_000), true, true);
    assert!(
        !p.probe_due(at(t0, 5_000), None),
        "no session yet: nothing to probe for"
    );
    let relayed = Some(at(t0, 5_100));
    assert!(p.probe_due(at(t0, 5_200), relayed));
    assert!(
        !p.probe_due(at(t0, 10_200), relayed),
        "the probe's handshake is still in flight"
    );
    // WireGuard retried it through the relay, where it completed.
    let retried = Some(at(t0, 10_210));
    assert!(!p.probe_due(at(t0, 10_199), retried));
    assert!(p.probe_due(at(t0, 10_220), retried));
    // An initiation from the peer over UDP proves only one direction.
    assert_eq!(p.received_direct(Message::Initiation, at(t0, 10_010)), None);
    let m = p
        .received_direct(Message::Response, at(t0, 10_020))
        .unwrap();
    assert_eq!(m.to, PathKind::Direct);
    assert!(
        !p.probe_due(at(t0, 20_000), Some(at(t0, 10_020))),
        "no probes on the direct path"
    );
}

#[test]
fn the_responder_moves_back_when_the_peers_data_arrives_over_udp() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    p.tick(at(t0, 5_000), true, true);
    assert_eq!(
        p.received_direct(Message::Data, at(t0, 8_000)).unwrap().to,
        PathKind::Direct
    );
}

#[test]
fn a_peer_that_relays_to_us_is_followed_once_it_is_quiet_over_udp() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.received_direct(Message::Data, at(t0, 10_000));
    // Packets still in flight on the relay just after the peer moved back are no reason to leave.
    assert_eq!(p.received_relayed(Message::Data, at(t0, 10_500)), None);
    assert_eq!(p.received_relayed(Message::Data, at(t0, 12_999)), None);
    let m = p.received_relayed(Message::Data, at(t0, 13_000)).unwrap();
    assert_eq!(m.to, PathKind::Relay);
}

#[test]
fn a_peer_just_moved_direct_does_not_bounce_back_on_stragglers() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    p.tick(at(t0, 5_000), true, true);
    p.received_direct(Message::Response, at(t0, 20_000));
    // The peer has not heard from us directly yet and still relays; we wait for it.
    assert_eq!(p.received_relayed(Message::Data, at(t0, 21_000)), None);
    assert_eq!(p.on(), PathKind::Direct);
}

fn observed(t0: Instant, ms: u64) -> Observed {
    Observed {
        now: at(t0, ms),
        on_bridge: false,
        handshake_fresh: false,
        silent: false,
        rx_bytes: 0,
        relay_ready: false,
        relay_available: true,
        direct_known: true,
    }
}

#[test]
fn a_kernel_peer_without_a_handshake_is_relayed_after_the_bound() {
    let t0 = Instant::now();
    let mut k = TrialState::new(t0);
    assert_eq!(k.step(&observed(t0, 4_999)), Step::Stay);
    assert_eq!(k.step(&observed(t0, 5_000)), Step::Dial);
    let ready = Observed {
        relay_ready: true,
        ..observed(t0, 5_300)
    };
    assert_eq!(k.step(&ready), Step::ToRelay);
    let fresh = Observed {
        handshake_fresh: true,
        ..observed(t0, 60_000)
    };
    assert_eq!(k.step(&fresh), Step::Stay, "a live direct session stays");
    let none = Observed {
        relay_available: false,
        ..observed(t0, 60_000)
    };
    assert_eq!(k.step(&none), Step::Stay, "no relay, nowhere to go");
}

/// A kernel peer whose session is up but which has gone silent (the path went dark) is relayed at once:
/// the silence is already the peer timeout long.
#[test]
fn a_silent_kernel_peer_is_relayed_though_its_session_is_fresh() {
    let t0 = Instant::now();
    let mut k = TrialState::new(t0);
    let silent = Observed {
        handshake_fresh: true,
        silent: true,
        relay_ready: true,
        ..observed(t0, 60_000)
    };
    assert_eq!(k.step(&silent), Step::ToRelay);
}

#[test]
fn a_relayed_kernel_peer_tries_direct_and_keeps_it_when_answered() {
    let t0 = Instant::now();
    let mut k = TrialState::new(t0);
    let relayed = |ms, rx| Observed {
        on_bridge: true,
        handshake_fresh: true,
        relay_ready: true,
        rx_bytes: rx,
        ..observed(t0, ms)
    };
    assert_eq!(k.step(&relayed(29_999, 100)), Step::Stay);
    assert_eq!(k.step(&relayed(30_000, 100)), Step::TryDirect);
    let trying = |ms, rx| Observed {
        on_bridge: false,
        ..relayed(ms, rx)
    };
    assert_eq!(k.step(&trying(31_000, 100)), Step::Stay);
    assert_eq!(
        k.step(&trying(32_000, 164)),
        Step::Stay,
        "answered directly"
    );
    assert_eq!(
        k.step(&trying(90_000, 164)),
        Step::Stay,
        "and direct it stays"
    );
}

#[test]
fn an_unanswered_trial_goes_back_to_the_relay_and_waits_for_the_next() {
    let t0 = Instant::now();
    let mut k = TrialState::new(t0);
    let relayed = |ms| Observed {
        on_bridge: true,
        handshake_fresh: true,
        relay_ready: true,
        rx_bytes: 100,
        ..observed(t0, ms)
    };
    assert_eq!(k.step(&relayed(30_000)), Step::TryDirect);
    let trying = |ms| Observed {
        on_bridge: false,
        ..relayed(ms)
    };
    assert_eq!(k.step(&trying(34_999)), Step::Stay);
    assert_eq!(k.step(&trying(35_000)), Step::ToRelay);
    assert_eq!(k.step(&relayed(64_999)), Step::Stay);
    assert_eq!(k.step(&relayed(65_000)), Step::TryDirect);
    // The peer relayed to us during the trial: WireGuard roamed back to a bridge.
    assert_eq!(k.step(&relayed(66_000)), Step::Stay);
    assert_eq!(k.step(&relayed(95_999)), Step::Stay);
}

/// A pair whose direct path goes unanswered readies its peer relays before it leaves UDP, so that leaving
/// finds one to go to; a healthy direct pair asks none, even while its data is in flight.
#[test]
fn the_direct_path_is_in_doubt_halfway_to_being_left() {
    let t0 = Instant::now();
    let mut p = PathState::new(t0, THREE);
    p.sent_direct(Message::Initiation, t0);
    assert!(!p.doubtful(at(t0, 999)), "an answer may still come");
    assert!(p.doubtful(at(t0, 1_000)));
    p.received_direct(Message::Response, at(t0, 1_100));
    assert!(!p.doubtful(at(t0, 1_100)), "answered");
    p.sent_direct(Message::Data, at(t0, 1_200));
    assert!(!p.doubtful(at(t0, 2_599)), "data in flight");
    assert!(p.doubtful(at(t0, 2_600)), "silent for half the timeout");
    p.tick(at(t0, 4_100), true, true)
        .expect("left at the timeout");
    assert!(p.doubtful(at(t0, 4_100)), "not direct");
}
