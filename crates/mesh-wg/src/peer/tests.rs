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
    let a = Peer::new(public(&kb), 1, &ka, None, Liveness::default(), &[]);
    let b = Peer::new(public(&ka), 2, &kb, None, Liveness::default(), &[]);
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
        relays: Vec::new(),
        watching: Arc::default(),
    };
    let mut buf = vec![0u8; 2048];
    // A's timers run; then, before the next tick, the peer gets an address and traffic starts a
    // handshake.
    assert!(
        a.tick(&mut buf, &ctx, &mut Vec::new()).sends.is_empty(),
        "nothing to send yet"
    );
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

/// What a tick needs of the device, for a node that watches no peer.
fn quiet_context(own_key: Key) -> TickContext {
    TickContext {
        own: Arc::default(),
        own_key,
        liveness: Liveness::default(),
        address: Ipv4Addr::new(10, 0, 1, 1),
        overlay: "10.0.1.0/24".parse().unwrap(),
        relays: Vec::new(),
        watching: Arc::new(crate::Watching::Only(Default::default())),
    }
}

/// Two peers with a session between them, A having sent B its first packet: A's initiation answered.
fn a_session() -> (Peer, Peer, SocketAddr, SocketAddr) {
    let (ka, kb) = (keys(3), keys(4));
    let a = Peer::new(public(&kb), 1, &ka, None, Liveness::default(), &[]);
    let b = Peer::new(public(&ka), 2, &kb, None, Liveness::default(), &[]);
    let (at_a, at_b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:51820".parse().unwrap(),
        "192.0.2.2:51820".parse().unwrap(),
    );
    a.set_endpoint(at_b);
    b.set_endpoint(at_a);
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let first = probe::reply(Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2), 0);
    let init = match a.session().encapsulate(&first, &mut buf) {
        TunnResult::WriteToNetwork(init) => init.to_vec(),
        other => panic!("traffic starts a handshake: {other:?}"),
    };
    let response = match b.session().decapsulate(&Via::Udp(at_a), &init, &mut out) {
        TunnResult::WriteToNetwork(r) => r.to_vec(),
        other => panic!("B answers the initiation: {other:?}"),
    };
    // The response completes A's side; the packet queued behind the handshake goes out with it.
    let queued = {
        let mut a_session = a.session();
        let _ = a_session.decapsulate(&Via::Udp(at_b), &response, &mut out);
        match a_session.flush_queued(&mut buf) {
            TunnResult::WriteToNetwork(queued) => Some(queued.to_vec()),
            _ => None,
        }
    };
    if let Some(queued) = queued {
        let _ = b.session().decapsulate(&Via::Udp(at_a), &queued, &mut out);
    }
    (a, b, at_a, at_b)
}

/// Batched, threaded paths reorder datagrams at gigabits a second: the receiver takes any datagram up to
/// 8,192 behind the newest, as Linux, wireguard-go and gotatun do. boringtun 0.7.1 kept 1,024: a burst
/// reordered by more than that was dropped as replays.
#[test]
fn a_burst_reordered_by_more_than_a_thousand_datagrams_is_received_whole() {
    let (a, b, at_a, _) = a_session();
    const BURST: u16 = 6_000;
    let mut datagrams = Vec::new();
    let mut buf = vec![0u8; 2048];
    {
        let mut s = a.session();
        for seq in 1..=BURST {
            let packet = probe::reply(Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2), seq);
            match s.encapsulate(&packet, &mut buf) {
                TunnResult::WriteToNetwork(d) => datagrams.push(d.to_vec()),
                other => panic!("a session encrypts: {other:?}"),
            }
        }
    }
    // The newest half arrives first; the oldest half, up to 6,000 datagrams behind, after it.
    let half = datagrams.len() / 2;
    datagrams.rotate_left(half);
    let mut out = vec![0u8; 2048];
    let mut s = b.session();
    let received = datagrams
        .iter()
        .filter(|d| {
            matches!(
                s.decapsulate(&Via::Udp(at_a), d, &mut out),
                TunnResult::WriteToTunnelV4(..)
            )
        })
        .count();
    assert_eq!(
        received,
        datagrams.len(),
        "every reordered datagram is taken"
    );
    // A replay of any of them is still refused.
    let replayed = &datagrams[0];
    assert!(
        !matches!(
            s.decapsulate(&Via::Udp(at_a), replayed, &mut out),
            TunnResult::WriteToTunnelV4(..)
        ),
        "a replay is refused"
    );
}

/// A TCP packet from `source` to `destination`, with its ports.
fn tcp(source: u16, destination: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 1, 2]);
    p[16..20].copy_from_slice(&[10, 0, 1, 1]);
    p[20..22].copy_from_slice(&source.to_be_bytes());
    p[22..24].copy_from_slice(&destination.to_be_bytes());
    p
}

/// A peer granted only 5432 here reaches nothing else, the replies to a flow this node opened to it pass,
/// and what was dropped shows in its status with its reach.
#[test]
fn a_peer_reaches_only_its_granted_ports_and_replies_to_our_flows() {
    let (a, _b, _, _) = a_session();
    let reach = Reach {
        all: false,
        tcp: vec![5432..=5432],
        udp: Vec::new(),
    };
    a.set_reach(reach.clone());
    let mut buf = vec![0u8; 2048];
    let mut s = a.session();
    assert_eq!(s.admit(&tcp(40000, 5432)), Admit::Pass, "the granted port");
    assert_eq!(
        s.admit(&tcp(40000, 22)),
        Admit::Drop(mesh_policy::filter::Dropped::NoGrant),
        "a port no grant names"
    );
    // This node opens a flow to the peer's port 22: its replies come back from 22.
    assert!(matches!(
        s.encapsulate(&tcp(41000, 22), &mut buf),
        TunnResult::WriteToNetwork(_)
    ));
    assert_eq!(s.admit(&tcp(22, 41000)), Admit::Pass, "a reply to our flow");
    drop(s);
    let status = a.status(Vec::new(), mesh_path::nat::Mapping::default());
    assert_eq!(status.reach, reach);
    assert_eq!(
        (
            status.policy_dropped.no_grant,
            status.policy_dropped.total()
        ),
        (1, 1)
    );
}

/// A handshake from a public address this node sent nothing to shows its port open from outside; one from
/// an address it sent to (a NAT lets that in), or from a private network, shows nothing.
#[test]
fn a_handshake_reaches_this_node_first_only_from_a_public_address_it_sent_nothing_to() {
    let handshake_to_b = |b_sends_first: bool, a_at: &str| {
        let (ka, kb) = (keys(5), keys(6));
        let a = Peer::new(public(&kb), 1, &ka, None, Liveness::default(), &[]);
        let b = Peer::new(public(&ka), 2, &kb, None, Liveness::default(), &[]);
        let at_a: SocketAddr = a_at.parse().unwrap();
        a.set_endpoint("192.0.2.2:51820".parse().unwrap());
        let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        if b_sends_first {
            b.set_endpoint(at_a);
            let _ = b.session().encapsulate(&[0x45; 40], &mut buf);
        }
        let init = match a.session().encapsulate(&[0x45; 40], &mut buf) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            other => panic!("traffic starts a handshake: {other:?}"),
        };
        let _ = b.session().decapsulate(&Via::Udp(at_a), &init, &mut out);
        let ctx = quiet_context(public(&kb));
        let first = b.tick(&mut buf, &ctx, &mut Vec::new()).reached_first;
        assert!(
            !b.tick(&mut buf, &ctx, &mut Vec::new()).reached_first,
            "taken once"
        );
        first
    };
    assert!(handshake_to_b(false, "198.51.100.1:40000"));
    assert!(
        !handshake_to_b(true, "198.51.100.1:40000"),
        "this node sent there first"
    );
    assert!(
        !handshake_to_b(false, "192.168.1.2:51820"),
        "a private network"
    );
    assert!(
        !handshake_to_b(false, "100.64.0.9:51820"),
        "carrier-grade NAT"
    );
}

/// A peer is watched while something watches it or an application's packets go to or from it; its health
/// is held to the peer timeout once it has been watched that long, and to the idle bound otherwise.
#[test]
fn a_peer_is_watched_while_told_or_while_it_carries_traffic() {
    let (a, _b, _, _) = a_session();
    let key = a.public_key;
    let ctx = |watching| TickContext {
        own: Arc::default(),
        own_key: Key::from_bytes([0; 32]),
        liveness: Liveness::default(),
        address: Ipv4Addr::new(10, 0, 1, 1),
        overlay: "10.0.1.0/24".parse().unwrap(),
        relays: Vec::new(),
        watching: Arc::new(watching),
    };
    let nobody = ctx(crate::Watching::Only(std::collections::HashSet::new()));
    let now = Instant::now();
    let mut g = a.lock();
    g.app_traffic = None;
    assert!(!g.watch(&key, now, &nobody), "idle and unwatched");
    assert_eq!(g.health_timeout(now), mesh_path::liveness::IDLE_TIMEOUT);
    assert!(g.watch(&key, now, &ctx(crate::Watching::All)));
    assert_eq!(
        g.health_timeout(now),
        mesh_path::liveness::IDLE_TIMEOUT,
        "just watched: its probes have not had their time"
    );
    let later = now + Liveness::default().timeout;
    assert!(g.watch(&key, later, &ctx(crate::Watching::All)));
    assert_eq!(g.health_timeout(later), Liveness::default().timeout);
    assert!(!g.watch(&key, later, &nobody));
    drop(g);
    let mut buf = vec![0u8; 2048];
    let _ = a.session().encapsulate(&[0x45; 40], &mut buf);
    assert!(
        a.lock().watch(&key, Instant::now(), &nobody),
        "an application's packet went to it"
    );
}

/// A relay counts a seat on UDP by the seat's own health bound: an idle peer nothing watches, heard only at
/// its keepalives, keeps its allocations; a watched one silent for the timeout does not.
#[test]
fn an_idle_unwatched_seat_stays_on_udp_at_a_relay_between_its_keepalives() {
    let (a, _b, _, at_b) = a_session();
    let now = Instant::now();
    let liveness = Liveness::default();
    {
        let mut g = a.lock();
        g.last_heard = now.checked_sub(Duration::from_secs(10));
        g.watched_since = None;
    }
    assert_eq!(a.relay_view(now, liveness).udp_endpoint, Some(at_b));
    a.lock().watched_since = now.checked_sub(Duration::from_secs(60));
    assert_eq!(
        a.relay_view(now, liveness).udp_endpoint,
        None,
        "watched, and silent for the timeout"
    );
}

/// A peer on UDP with a session, nothing under way and nothing watching it is quiet: its timer can wait a
/// [`QUIET_TICK`]. Watched, it is not. Whatever locks it but its timer and readers of its state touches it, so
/// that its timer runs at the next tick.
#[test]
fn an_idle_peer_with_a_session_that_nothing_watches_is_quiet() {
    let (a, _b, _, _) = a_session();
    a.set_overlay_ip(Some(Ipv4Addr::new(10, 0, 1, 2)));
    a.lock().app_traffic = None;
    let mut buf = vec![0u8; 2048];
    let nobody = quiet_context(Key::from_bytes([0; 32]));
    let ticked = a.tick(&mut buf, &nobody, &mut Vec::new());
    assert!(ticked.sends.is_empty(), "nothing due: {:?}", ticked.sends);
    assert!(ticked.quiet, "idle, on UDP, with a session, unwatched");
    let watched = TickContext {
        watching: Arc::new(crate::Watching::All),
        ..quiet_context(Key::from_bytes([0; 32]))
    };
    assert!(
        !a.tick(&mut buf, &watched, &mut Vec::new()).quiet,
        "watched"
    );
    assert!(a.tick(&mut buf, &nobody, &mut Vec::new()).quiet);
    a.lock().kick = true;
    a.take_touched();
    assert!(!a.take_touched(), "taken");
    let _ = a.relay_view(Instant::now(), Liveness::default());
    let _ = a.status(Vec::new(), mesh_path::nat::Mapping::Unknown);
    let _ = a.preshared_key();
    assert!(!a.take_touched(), "reading the peer's state leaves it be");
    a.set_keepalive(25);
    assert!(a.take_touched(), "configuring it touches it");
    let _ = a.session();
    assert!(a.take_touched(), "so does a packet to or from it");
}

/// A peer's WireGuard state holds its live sessions, not room for eight: with the 8,192-datagram window a
/// session is over 2 KiB, and boringtun's eight inline slots made every peer, idle or not, cost 18 KiB
/// (vendor/boringtun/VENDORED.md).
#[test]
fn a_peer_costs_its_sessions_not_eight_slots() {
    let tunn = std::mem::size_of::<Tunn>();
    let peer = std::mem::size_of::<Peer>();
    eprintln!("Tunn {tunn} bytes, Peer {peer} bytes");
    assert!(tunn <= 1536, "a Tunn is {tunn} bytes");
    assert!(peer <= 3072, "a Peer is {peer} bytes");
}
