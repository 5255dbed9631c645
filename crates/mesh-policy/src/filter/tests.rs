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

/// A TCP segment from `source` to `destination` with `flags`.
fn tcp(source: u16, destination: u16, flags: u8) -> Vec<u8> {
    let mut p = packet(6, source, destination);
    p.resize(40, 0);
    p[33] = flags;
    p
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

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
    let later = now + TCP_IDLE - Duration::from_secs(1);
    assert_eq!(
        f.inbound(&reply, later),
        Admit::Pass,
        "a reply keeps it alive"
    );
    assert_eq!(
        f.inbound(&reply, later + TCP_IDLE),
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

#[test]
fn drops_are_counted_by_why_and_added_up() {
    let mut a = DropCounts::default();
    a.add(Dropped::NoGrant);
    a.add(Dropped::NoGrant);
    a.add(Dropped::Malformed);
    let mut b = DropCounts::default();
    b.add(Dropped::Protocol);
    let sum = a.plus(&b);
    assert_eq!(
        (sum.no_grant, sum.protocol, sum.malformed, sum.total()),
        (2, 1, 1, 4)
    );
    for (i, why) in Dropped::ALL.into_iter().enumerate() {
        assert_eq!(sum.get(why), a.get(why) + b.get(why), "{}", why.as_str());
        assert_eq!(why.index(), i, "{}", why.as_str());
    }
}

/// This node's answers to a connection the peer opened never make it this node's flow: once the grant is
/// taken away, the peer's next segment is dropped, though this node answered it a moment before.
#[test]
fn answering_a_peers_connection_does_not_make_it_ours() {
    let mut f = postgres_only();
    let now = Instant::now();
    assert_eq!(f.inbound(&tcp(40000, 5432, SYN), now), Admit::Pass);
    f.outbound(&tcp(5432, 40000, SYN_ACK), now);
    assert_eq!(f.inbound(&tcp(40000, 5432, ACK), now), Admit::Pass);
    f.outbound(&tcp(5432, 40000, ACK), now);
    assert_eq!(f.flows(), 0, "nothing of this node's");
    f.set_reach(Reach::default());
    assert_eq!(
        f.inbound(&tcp(40000, 5432, ACK), now),
        Admit::Drop(Dropped::NoGrant),
        "the grant is gone"
    );
}

/// A UDP flow the peer opened is known by its datagrams, so this node's answers stay answers.
#[test]
fn answering_a_peers_udp_flow_does_not_make_it_ours() {
    let mut f = Filter::new(
        Reach {
            all: false,
            tcp: Vec::new(),
            udp: vec![53..=53],
        },
        Vec::new(),
    );
    let now = Instant::now();
    assert_eq!(f.inbound(&packet(17, 40000, 53), now), Admit::Pass);
    f.outbound(&packet(17, 53, 40000), now);
    assert_eq!(f.flows(), 0);
    f.set_reach(Reach::default());
    assert_eq!(
        f.inbound(&packet(17, 40000, 53), now),
        Admit::Drop(Dropped::NoGrant)
    );
}

/// A connection this node opened that was open before the policy came into force is picked up by its next
/// segment: its replies pass. A TCP flow outlives a UDP flow's idle time.
#[test]
fn a_connection_of_ours_is_picked_up_mid_stream_and_kept_while_it_idles() {
    let mut f = postgres_only();
    let now = Instant::now();
    f.outbound(&tcp(41000, 6379, ACK), now);
    let later = now + UDP_IDLE + Duration::from_secs(60);
    assert_eq!(f.inbound(&tcp(6379, 41000, ACK), later), Admit::Pass);
    f.outbound(&packet(17, 41000, 6379), now);
    assert_eq!(
        f.inbound(&packet(17, 6379, 41000), later),
        Admit::Drop(Dropped::NoGrant),
        "UDP idles out sooner"
    );
}
