use super::*;

fn keys(seed: u8) -> NoiseKeys {
    let secret = x25519::StaticSecret::from([seed; 32]);
    let public = x25519::PublicKey::from(&secret);
    NoiseKeys {
        rate_limiter: Arc::new(RateLimiter::new(&public, 100)),
        secret,
    }
}

fn public(keys: &NoiseKeys) -> Key {
    Key::from_bytes(x25519::PublicKey::from(&keys.secret).to_bytes())
}

/// An initiation that traffic starts between two timer ticks, and that is answered before the next,
/// counts as answered: boringtun stamps the handshake with its last tick, before the initiation went
/// out, and a punching attempt that took that stamp copied the answered initiation, a replay the peer
/// dropped, and waited 15 s for the next.
#[test]
fn an_initiation_answered_between_timer_ticks_is_not_copied_again() {
    let (ka, kb) = (keys(1), keys(2));
    let a = Peer::new(public(&kb), 1, &ka, None, Liveness::default());
    let b = Peer::new(public(&ka), 2, &kb, None, Liveness::default());
    let (at_a, at_b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:51820".parse().unwrap(),
        "192.0.2.2:51820".parse().unwrap(),
    );
    let ctx = TickContext {
        own: Arc::default(),
        own_key: public(&ka),
        liveness: Liveness::default(),
        address: Ipv4Addr::new(10, 0, 1, 1),
        overlay: "10.0.1.0/24".parse().unwrap(),
    };
    let mut buf = vec![0u8; 2048];
    // A's timers run; then, before the next tick, the peer gets an address and traffic starts a
    // handshake.
    assert!(a.tick(&mut buf, &ctx).is_empty(), "nothing to send yet");
    std::thread::sleep(Duration::from_millis(30));
    a.set_endpoint(at_b);
    let init = match a.session().encapsulate(&[0x45; 40], &mut buf) {
        TunnResult::WriteToNetwork(init) => init.to_vec(),
        other => panic!("traffic starts a handshake: {other:?}"),
    };
    let mut out = vec![0u8; 2048];
    let response = match b.session().decapsulate(&Via::Udp(at_a), &init, &mut out) {
        TunnResult::WriteToNetwork(r) => r.to_vec(),
        other => panic!("B answers the initiation: {other:?}"),
    };
    let now = Instant::now();
    let _ = a
        .session()
        .decapsulate(&Via::Udp(at_b), &response, &mut out);
    let g = a.lock();
    let stamped_by_boringtun = g
        .tunn
        .time_since_last_handshake()
        .and_then(|since| Instant::now().checked_sub(since))
        .expect("a session");
    let sent = g.last_init.as_ref().expect("an initiation").0;
    assert!(
        stamped_by_boringtun < sent,
        "boringtun's stamp is its last tick's, before the initiation (the race this guards against)"
    );
    assert_eq!(
        g.initiation_to_copy(now, false),
        None,
        "answered: not copied"
    );
}
