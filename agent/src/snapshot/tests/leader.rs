//! The leader as the snapshot shows it: who leads, whether this node does under its lease, and how fresh
//! a follower's view of it is.

use super::*;

/// A leader whose evidence this node refuses is no leader for its applications: no seat to follow, the
/// seat named apart with why, and the metric says so; this node's own refused seat alike.
#[test]
fn a_refused_leader_is_no_leader_here_and_is_named_apart() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mesh) = states(now);
    for seat in [5, 1] {
        let mut refused = (*chain.attestations).clone();
        refused.insert(
            seat,
            Attested::Refused {
                kind: "os-not-allowed",
                reason: "the OS image is not allowed".into(),
            }
            .into(),
        );
        let chain = ChainState {
            attestations: Arc::new(refused),
            ..with_leader(&chain, Some(seat))
        };
        let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
        assert_eq!(
            (s.leader.token_id, s.leader.refused_seat, s.leader.is_self),
            (None, Some(seat), false)
        );
        let why = s.leader.reason.as_deref().unwrap_or_default();
        assert!(why.contains("os-not-allowed"), "{why}");
        assert!(s.peers.iter().all(|p| !p.leader));
        assert!(
            mesh_api::metrics(&s).contains("dstack_mesh_leader_refused 1"),
            "the metric"
        );
    }
}

/// The leader is flagged among the peers and served with how to reach it and whether it answers.
#[test]
fn the_leader_is_reached_like_a_peer_and_flagged() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (chain, reg, mesh) = states(now);
    let election = LeaderState {
        answering: [(2, true)].into(),
        ..LeaderState::default()
    };
    let chain = with_leader(&chain, Some(2));
    let s = with_election(&chain, &reg, &mesh, &election, now);
    let flags: Vec<_> = s.peers.iter().map(|p| (p.token_id, p.leader)).collect();
    assert_eq!(flags, [(2, true), (3, false), (4, false)]);
    assert_eq!(s.leader.token_id, Some(2));
    assert_eq!(s.leader.address.as_deref(), Some("10.0.1.2"));
    assert_eq!(s.leader.overlay_ip, Some("10.0.1.2".parse().unwrap()));
    assert!(!s.leader.is_self);
    assert_eq!(s.leader.reachable, Some(true));
    assert!(s.leader.instance_id.is_some(), "from its record");
    assert_eq!(s.leader.term, Some(0));

    let chain = with_leader(&chain, None);
    let s = snapshot(&chain, &reg, &mesh, Duration::ZERO, now);
    assert_eq!(s.leader.token_id, None);
    assert_eq!(s.leader.address, None);
    assert!(!s.leader.is_self);
}

/// The seat named leader says it leads only under its lease, and says why not otherwise; the answer is
/// worked out again when served, so a lease that ran out meanwhile is no claim.
#[test]
fn this_node_leads_only_under_its_lease() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let t0 = std::time::Instant::now();
    let (chain, reg, mesh) = states(now);
    let mut chain = with_leader(&chain, Some(1));
    chain.confirmed_at = Some(t0);
    let named = with_election(&chain, &reg, &mesh, &LeaderState::default(), now);
    assert!(!named.leader.is_self, "named, but no claim decided");

    let leads = LeaderState {
        claim: Claim::Leads {
            until: t0 + Duration::from_secs(3),
        },
        ..LeaderState::default()
    };
    let s = with_election(&chain, &reg, &mesh, &leads, now);
    assert!(s.leader.is_self, "seat 1 is this node, under its lease");
    assert_eq!(s.leader.address.as_deref(), Some("10.0.1.1"));
    assert_eq!(s.leader.reachable, None);
    assert!(s.peers.iter().all(|p| !p.leader));
    let served = s.leader.as_of(t0 + Duration::from_millis(1_000));
    assert!(served.is_self);
    assert_eq!(served.lease_ms, Some(2_000));
    assert_eq!(served.age_ms, Some(1_000));
    assert_eq!(served.state, mesh_api::Freshness::Current);
    let late = s.leader.as_of(t0 + Duration::from_secs(6));
    assert!(!late.is_self, "served after the lease ran out");
    assert_eq!(late.state, mesh_api::Freshness::Stale);
    assert!(
        late.reason
            .as_deref()
            .unwrap()
            .contains("the lease ran out")
    );

    let declines = LeaderState {
        claim: Claim::Declines(crate::leadership::lease::Declined::NoQuorum { have: 0, need: 1 }),
        ..LeaderState::default()
    };
    let s = with_election(&chain, &reg, &mesh, &declines, now);
    assert!(!s.leader.is_self);
    assert_eq!(
        s.leader.reason.as_deref(),
        Some(
            "only 0 of the 1 other seats needed confirmed this node as leader over the mesh within the lease"
        )
    );
}

/// A follower's knowledge of the leader is current only while the leader itself answered it as leading
/// less than a lease ago: its own reads of the chain say who is named, not that the leader still holds its
/// lease. In TLS mode, with no heartbeats, the reads are what confirms it. From the state file it is unknown.
#[test]
fn a_followers_view_of_the_leader_is_current_while_the_leader_answers_as_leading() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let t0 = std::time::Instant::now();
    let (chain, reg, mesh) = states(now);
    let mut chain = with_leader(&chain, Some(2));
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let state = |agent: &AgentFacts, chain: &ChainState, election: &LeaderState, ms: u64| {
        let tasks = Published {
            chain,
            reg: &reg,
            mesh: &mesh,
            leader: election,
            check: None,
            dstack: None,
        };
        render(
            agent,
            &NodeFacts::default(),
            tasks,
            Duration::ZERO,
            clock(now),
        )
        .leader
        .as_of(at(ms))
        .state
    };
    let wireguard = agent();
    let tls = AgentFacts {
        mode: Mode::Tls,
        ..agent()
    };
    let none = LeaderState::default();
    assert_eq!(
        state(&wireguard, &chain, &none, 0),
        mesh_api::Freshness::Unknown
    );
    chain.confirmed_at = Some(at(0));
    assert_eq!(
        state(&wireguard, &chain, &none, 1),
        mesh_api::Freshness::Unknown,
        "a read names the leader; it does not say the leader holds its lease"
    );
    assert_eq!(
        state(&tls, &chain, &none, 4_999),
        mesh_api::Freshness::Current
    );
    assert_eq!(
        state(&tls, &chain, &none, 5_000),
        mesh_api::Freshness::Stale
    );
    let answered = LeaderState {
        leader_confirmed_at: Some(at(4_000)),
        ..LeaderState::default()
    };
    assert_eq!(
        state(&wireguard, &chain, &answered, 8_999),
        mesh_api::Freshness::Current
    );
    assert_eq!(
        state(&wireguard, &chain, &answered, 9_000),
        mesh_api::Freshness::Stale,
        "a lease after the leader's last answer, however fresh the reads"
    );
    chain.confirmed_at = Some(at(9_000));
    assert_eq!(
        state(&wireguard, &chain, &answered, 9_001),
        mesh_api::Freshness::Stale
    );
    chain.from_cache = true;
    assert_eq!(
        state(&wireguard, &chain, &answered, 1_000),
        mesh_api::Freshness::Unknown
    );
}
