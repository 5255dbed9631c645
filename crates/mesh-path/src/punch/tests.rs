use super::*;
use crate::candidates::Source;

/// An initiation answered 50 ms after it went out is never copied again, however soon; one in flight is
/// copied within its window, and at an attempt's start only if it was just sent.
#[test]
fn only_an_unanswered_initiation_in_flight_is_copied() {
    let t0 = Instant::now();
    let answered = Some(ms(t0, 50));
    assert!(!copy_initiation(t0, answered, ms(t0, 60), false));
    assert!(copy_initiation(ms(t0, 60), answered, ms(t0, 200), false));
    assert!(copy_initiation(t0, None, ms(t0, 4_999), false));
    assert!(
        !copy_initiation(t0, None, ms(t0, 5_000), false),
        "past its window"
    );
    assert!(copy_initiation(t0, None, ms(t0, 999), true));
    assert!(
        !copy_initiation(t0, None, ms(t0, 1_000), true),
        "an attempt starts with a new one"
    );
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn own(mapping: Mapping) -> OwnCandidates {
    OwnCandidates {
        version: 1,
        candidates: vec![Candidate {
            addr: "198.51.100.1:40000".parse().unwrap(),
            source: Source::Stun,
        }],
        mapping,
        own_ips: vec!["10.0.2.100".parse().unwrap()],
        settled: true,
    }
}

fn call(kind: Kind, mapping: Mapping, addrs: &[&str]) -> Message {
    Message {
        kind,
        mapping,
        observed: None,
        candidates: addrs
            .iter()
            .map(|a| Candidate {
                addr: a.parse().unwrap(),
                source: Source::Stun,
            })
            .collect(),
    }
}

fn tick<'a>(now: Instant, ours: &'a OwnCandidates, on_relay: bool) -> Tick<'a> {
    Tick {
        now,
        on_relay,
        session: true,
        ours,
        endpoint: None,
        overlay: "10.0.1.0/24".parse().unwrap(),
    }
}

/// On the relay with a session, an attempt starts at once with a call, and the initiation goes to every
/// usable candidate on the schedule until the window ends; then it waits out the backoff.
#[test]
fn an_attempt_calls_sends_on_the_schedule_and_backs_off_without_an_answer() {
    let t0 = Instant::now();
    let ours = own(Mapping::EndpointIndependent);
    let mut p = Punch::default();
    p.received(call(
        Kind::Update,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000", "10.0.2.100:51820", "10.0.1.9:51820"],
    ));
    let first = p.tick(&tick(t0, &ours, true));
    assert_eq!(first.message, Some(Kind::Call));
    assert!(first.fresh_initiation);
    assert_eq!(
        first.send_to,
        ["198.51.100.2:41000".parse::<SocketAddrV4>().unwrap()],
        "our own address and an overlay address are never tried"
    );
    assert_eq!(p.tick(&tick(ms(t0, 100), &ours, true)), Actions::default());
    assert_eq!(p.tick(&tick(ms(t0, 150), &ours, true)).send_to.len(), 1);
    let sends = (200..=5_000)
        .step_by(50)
        .filter(|&t| !p.tick(&tick(ms(t0, t), &ours, true)).send_to.is_empty())
        .count();
    assert_eq!(sends, 5, "seven sends in all over the window");
    assert_eq!(
        p.relay_reason(true, ours.mapping, None),
        RelayReason::NoAnswer {
            tried: 1,
            attempts: 1
        }
    );
    assert_eq!(
        p.tick(&tick(ms(t0, 14_999), &ours, true)),
        Actions::default(),
        "10 s of backoff"
    );
    assert_eq!(
        p.tick(&tick(ms(t0, 15_000), &ours, true)).message,
        Some(Kind::Call)
    );
}

/// A call from the peer starts an attempt at once, backoff or not (but never twice in 5 s), and is
/// answered with our candidates.
#[test]
fn a_call_from_the_peer_starts_an_attempt_and_is_answered() {
    let t0 = Instant::now();
    let ours = own(Mapping::EndpointIndependent);
    let mut p = Punch::default();
    assert_eq!(
        p.tick(&tick(t0, &ours, true)).message,
        Some(Kind::Update),
        "no attempt before the peer's candidates are known: ours go first"
    );
    p.received(call(
        Kind::Update,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    for t in (100..=5_100).step_by(100) {
        p.tick(&tick(ms(t0, t), &ours, true));
    }
    // Failed once: backoff until 15 s. The peer calls at 6 s.
    p.received(call(
        Kind::Call,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    let a = p.tick(&tick(ms(t0, 6_000), &ours, true));
    assert_eq!(
        a.message,
        Some(Kind::Call),
        "the attempt's own call answers"
    );
    assert_eq!(a.send_to.len(), 1);
    // Another call 1 s later: answered, but no new attempt within 5 s of the last.
    for t in (6_100..=11_000).step_by(100) {
        p.tick(&tick(ms(t0, t), &ours, true));
    }
    p.received(call(
        Kind::Call,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    let b = p.tick(&tick(ms(t0, 11_100), &ours, true));
    assert_eq!(b.message, Some(Kind::Call), "5 s after the last start");
}

/// Updates go out when our candidates change, at most one a second, whatever the path.
#[test]
fn our_new_candidates_are_sent_once_per_change() {
    let t0 = Instant::now();
    let mut ours = own(Mapping::EndpointIndependent);
    let mut p = Punch::default();
    assert_eq!(p.tick(&tick(t0, &ours, false)).message, Some(Kind::Update));
    assert_eq!(p.tick(&tick(ms(t0, 2_000), &ours, false)).message, None);
    ours.version = 2;
    assert_eq!(
        p.tick(&tick(ms(t0, 2_500), &ours, false)).message,
        Some(Kind::Update)
    );
    ours.version = 3;
    assert_eq!(
        p.tick(&tick(ms(t0, 2_900), &ours, false)).message,
        None,
        "one a second"
    );
    assert_eq!(
        p.tick(&tick(ms(t0, 3_500), &ours, false)).message,
        Some(Kind::Update)
    );
    assert_eq!(p.tick(&tick(ms(t0, 123_499), &ours, false)).message, None);
    assert_eq!(
        p.tick(&tick(ms(t0, 123_500), &ours, false)).message,
        Some(Kind::Update),
        "sent again after two minutes, in case the last was lost"
    );
    ours.version = 4;
    let no_session = Tick {
        session: false,
        ..tick(ms(t0, 9_000), &ours, true)
    };
    assert_eq!(
        p.tick(&no_session),
        Actions::default(),
        "nothing gets through"
    );
}

/// A symmetric peer's new ports (every STUN round brings some) leave the backoff alone; a new address, or
/// an endpoint-independent peer's new port, does not.
#[test]
fn only_news_worth_trying_cuts_the_backoff_short() {
    let t0 = Instant::now();
    let ours = own(Mapping::EndpointIndependent);
    let fail_once = |p: &mut Punch| {
        for t in (0..=5_000).step_by(100) {
            p.tick(&tick(ms(t0, t), &ours, true));
        }
        assert!(matches!(
            p.relay_reason(true, ours.mapping, None),
            RelayReason::NoAnswer { .. }
        ));
    };
    let symmetric = Mapping::AddressAndPortDependent;
    let mut p = Punch::default();
    p.received(call(Kind::Update, symmetric, &["198.51.100.7:19313"]));
    fail_once(&mut p);
    p.received(call(Kind::Update, symmetric, &["198.51.100.7:47087"]));
    assert!(
        matches!(
            p.relay_reason(true, ours.mapping, None),
            RelayReason::NoAnswer { .. }
        ),
        "new ports of a symmetric NAT are no news"
    );
    p.received(call(Kind::Update, symmetric, &["198.51.100.77:47087"]));
    assert_eq!(
        p.relay_reason(true, ours.mapping, None),
        RelayReason::Waiting
    );
    let mut q = Punch::default();
    let cone = Mapping::EndpointIndependent;
    q.received(call(Kind::Update, cone, &["198.51.100.7:19313"]));
    fail_once(&mut q);
    q.received(call(Kind::Update, cone, &["198.51.100.7:47087"]));
    assert_eq!(
        q.relay_reason(true, ours.mapping, None),
        RelayReason::Waiting,
        "a cone's new port is its new mapping"
    );
}

/// Two symmetric NATs are never tried; the reason says so.
#[test]
fn a_pair_of_symmetric_nats_is_skipped() {
    let t0 = Instant::now();
    let ours = own(Mapping::AddressAndPortDependent);
    let mut p = Punch::default();
    p.received(call(
        Kind::Call,
        Mapping::EndpointDependent,
        &["198.51.100.2:41000"],
    ));
    let a = p.tick(&tick(t0, &ours, true));
    assert!(a.send_to.is_empty());
    assert_eq!(a.message, Some(Kind::Update), "the call is still answered");
    assert!(matches!(
        p.relay_reason(true, ours.mapping, None),
        RelayReason::Skipped { .. }
    ));
}

/// A call that answers our own attempt starts none: the two are punching at once already. One that
/// comes between attempts starts one at once.
#[test]
fn a_call_during_our_attempt_is_its_answer_and_starts_no_other() {
    let t0 = Instant::now();
    let ours = own(Mapping::EndpointIndependent);
    let mut p = Punch::default();
    p.received(call(
        Kind::Update,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    assert_eq!(p.tick(&tick(t0, &ours, true)).message, Some(Kind::Call));
    p.received(call(
        Kind::Call,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    let messages: Vec<(u64, Kind)> = (50..=9_900)
        .step_by(50)
        .filter_map(|t| Some((t, p.tick(&tick(ms(t0, t), &ours, true)).message?)))
        .collect();
    assert_eq!(
        messages,
        [(1_000, Kind::Update)],
        "answered (a second after our call), and no new attempt: the backoff holds"
    );
    p.received(call(
        Kind::Call,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    assert_eq!(
        p.tick(&tick(ms(t0, 9_950), &ours, true)).message,
        Some(Kind::Call),
        "a call between attempts starts one"
    );
    p.moved_to_udp();
    assert_eq!(
        p.relay_reason(true, ours.mapping, None),
        RelayReason::Waiting,
        "back on UDP: the failures are forgotten"
    );
    assert_eq!(
        Punch::default().relay_reason(true, Mapping::Unknown, None),
        RelayReason::NoCandidates
    );
}

/// Punching is idle while nothing is under way or owed: a call makes it busy until answered, and so does an
/// attempt until its window ends.
#[test]
fn punching_is_idle_only_with_no_attempt_and_no_call_owed() {
    let t0 = Instant::now();
    let ours = own(Mapping::EndpointIndependent);
    let mut p = Punch::default();
    assert!(p.idle());
    p.received(call(
        Kind::Call,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    assert!(!p.idle(), "a call is owed an answer");
    p.tick(&tick(t0, &ours, true));
    assert!(!p.idle(), "the attempt it started is under way");
    for t in (100..=5_100).step_by(100) {
        p.tick(&tick(ms(t0, t), &ours, true));
    }
    assert!(p.idle(), "the window ended unanswered");
    p.received(call(
        Kind::Call,
        Mapping::EndpointIndependent,
        &["198.51.100.2:41000"],
    ));
    p.tick(&tick(ms(t0, 5_200), &ours, false));
    assert!(
        p.idle(),
        "on UDP the call is answered with an update, and nothing is attempted"
    );
}
