use super::*;

const HEARTBEAT: u16 = 51873;

/// An IPv4 packet of `protocol` from port `source` to port `destination`.
fn packet(protocol: u8, source: u16, destination: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[9] = protocol;
    p[20..22].copy_from_slice(&source.to_be_bytes());
    p[22..24].copy_from_slice(&destination.to_be_bytes());
    p
}

fn postgres_only() -> Filter {
    Filter::new(
        Reach {
            all: false,
            tcp: vec![5432..=5432],
            udp: Vec::new(),
        },
        vec![HEARTBEAT],
    )
}

#[test]
fn a_flow_the_peer_opens_passes_only_to_a_granted_port() {
    let mut f = postgres_only();
    let now = Instant::now();
    assert_eq!(f.inbound(&packet(6, 40000, 5432), now), Admit::Pass);
    assert_eq!(
        f.inbound(&packet(6, 40000, 22), now),
        Admit::Drop(Dropped::NoGrant)
    );
    assert_eq!(
        f.inbound(&packet(17, 40000, 5432), now),
        Admit::Drop(Dropped::NoGrant),
        "the grant is TCP's"
    );
}

#[test]
fn replies_to_a_flow_this_node_opened_pass_until_it_idles() {
    let mut f = postgres_only();
    let now = Instant::now();
    let reply = packet(6, 8080, 41000);
    assert_eq!(
        f.inbound(&reply, now),
        Admit::Drop(Dropped::NoGrant),
        "not opened yet"
    );
    f.outbound(&packet(6, 41000, 8080), now);
    assert_eq!(f.inbound(&reply, now), Admit::Pass);
    assert_eq!(
        f.inbound(&packet(6, 8080, 41001), now),
        Admit::Drop(Dropped::NoGrant),
        "another port of ours"
    );
    let later = now + FLOW_IDLE - Duration::from_secs(1);
    assert_eq!(
        f.inbound(&reply, later),
        Admit::Pass,
        "a reply keeps it alive"
    );
    assert_eq!(
        f.inbound(&reply, later + FLOW_IDLE),
        Admit::Drop(Dropped::NoGrant),
        "idle too long"
    );
}

#[test]
fn icmp_the_agents_own_datagrams_and_later_fragments_always_pass() {
    let mut f = postgres_only();
    let now = Instant::now();
    assert_eq!(f.inbound(&packet(1, 0, 0), now), Admit::Pass);
    assert_eq!(f.inbound(&packet(17, 9, HEARTBEAT), now), Admit::Pass);
    assert_eq!(f.inbound(&packet(17, HEARTBEAT, 9), now), Admit::Pass);
    let mut fragment = packet(6, 1, 22);
    fragment[7] = 8;
    assert_eq!(f.inbound(&fragment, now), Admit::Pass);
    assert_eq!(
        f.inbound(&packet(6, HEARTBEAT, 22), now),
        Admit::Drop(Dropped::NoGrant),
        "the heartbeat port is UDP's"
    );
}

#[test]
fn other_protocols_and_malformed_packets_are_dropped_and_named() {
    let mut f = postgres_only();
    let now = Instant::now();
    assert_eq!(
        f.inbound(&packet(47, 0, 0), now),
        Admit::Drop(Dropped::Protocol)
    );
    assert_eq!(
        f.inbound(&packet(6, 1, 5432)[..22], now),
        Admit::Drop(Dropped::Malformed)
    );
    assert_eq!(f.inbound(&[], now), Admit::Drop(Dropped::Malformed));
    assert_eq!(
        f.inbound(&[0x65; 28], now),
        Admit::Drop(Dropped::Malformed),
        "IPv6"
    );
    assert_eq!(Dropped::NoGrant.as_str(), "no-grant");
}

#[test]
fn a_grant_taken_away_cuts_the_peers_flows_at_once() {
    let mut f = postgres_only();
    let now = Instant::now();
    assert_eq!(f.inbound(&packet(6, 40000, 5432), now), Admit::Pass);
    f.set_reach(Reach::default());
    assert_eq!(
        f.inbound(&packet(6, 40000, 5432), now),
        Admit::Drop(Dropped::NoGrant)
    );
}

#[test]
fn with_no_policy_in_force_everything_passes_and_nothing_is_remembered() {
    let mut f = Filter::new(
        Reach {
            all: true,
            ..Reach::default()
        },
        Vec::new(),
    );
    let now = Instant::now();
    f.outbound(&packet(6, 1, 2), now);
    assert_eq!(f.flows(), 0);
    assert_eq!(f.inbound(&packet(47, 0, 0), now), Admit::Pass);
}

#[test]
fn the_flows_remembered_are_bounded_and_the_oldest_go_first() {
    let mut f = postgres_only();
    let start = Instant::now();
    for i in 0..MAX_FLOWS + 10 {
        let port = u16::try_from(i % 60000).expect("a port") + 1024;
        f.outbound(
            &packet(17, port, 53),
            start + Duration::from_millis(i as u64),
        );
    }
    assert_eq!(f.flows(), MAX_FLOWS);
    let now = start + Duration::from_secs(10);
    assert_eq!(
        f.inbound(&packet(17, 53, 1024), now),
        Admit::Drop(Dropped::NoGrant),
        "the first flow was forgotten"
    );
    let newest = u16::try_from(MAX_FLOWS + 9).expect("a port") + 1024;
    assert_eq!(f.inbound(&packet(17, 53, newest), now), Admit::Pass);
}
