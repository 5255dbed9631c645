use super::*;

/// A registered node with no peer, no policy and no peer relay.
fn snapshot() -> Snapshot {
    Snapshot {
        status: crate::health::tests::status(true, Some(1)),
        peers: std::sync::Arc::from([]),
        peers_known: true,
        refused: Vec::new(),
        leader: crate::Leader::default(),
        counters: crate::Counters::default(),
        check: None,
    }
}

/// The policy's samples appear once it is read, with every rule counted, 0 included.
#[test]
fn the_policy_drops_are_counted_by_rule() {
    let mut s = snapshot();
    let none = metrics(&s);
    assert!(
        !none.contains("dstack_mesh_policy_dropped_total{"),
        "{none}"
    );
    s.status.policy = Some(crate::PolicyStatus {
        enforced: true,
        version: 4,
        pending: None,
        grants: 2,
        own_tags: vec!["db".into()],
        dropped: crate::PolicyDrops {
            no_grant: 9,
            protocol: 0,
            malformed: 1,
        },
    });
    let text = metrics(&s);
    for line in [
        "dstack_mesh_policy_enforced 1",
        "dstack_mesh_policy_version 4",
        "dstack_mesh_policy_dropped_total{rule=\"no-grant\"} 9",
        "dstack_mesh_policy_dropped_total{rule=\"protocol\"} 0",
        "dstack_mesh_policy_dropped_total{rule=\"malformed\"} 1",
        "dstack_mesh_policy_pending 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    s.status.policy.as_mut().unwrap().pending = Some(5);
    let text = metrics(&s);
    assert!(
        text.lines().any(|l| l == "dstack_mesh_policy_pending 1"),
        "a version read but not in force: {text}"
    );
}

/// The peer relay's samples appear with its status, refusals and drops by reason, zeros included.
#[test]
fn the_peer_relay_is_counted_by_reason() {
    let mut s = snapshot();
    let none = metrics(&s);
    assert!(
        !none
            .lines()
            .any(|l| l.starts_with("dstack_mesh_peer_relay_")),
        "no sample while the node cannot relay: {none}"
    );
    s.status.peer_relay = Some(crate::PeerRelayStatus {
        offering: true,
        why: "--relay-for-peers always".into(),
        allocations: 2,
        granted: 5,
        forwarded_bytes: 1000,
        forwarded_datagrams: 10,
        refused: [("full".to_owned(), 3)].into(),
        dropped: [("stranger".to_owned(), 4)].into(),
        malformed: 1,
    });
    let text = metrics(&s);
    for line in [
        "dstack_mesh_peer_relay_offering 1",
        "dstack_mesh_peer_relay_allocations 2",
        "dstack_mesh_peer_relay_granted_total 5",
        "dstack_mesh_peer_relay_forwarded_bytes_total 1000",
        "dstack_mesh_peer_relay_forwarded_datagrams_total 10",
        "dstack_mesh_peer_relay_refused_total{reason=\"full\"} 3",
        "dstack_mesh_peer_relay_refused_total{reason=\"self\"} 0",
        "dstack_mesh_peer_relay_dropped_total{reason=\"stranger\"} 4",
        "dstack_mesh_peer_relay_dropped_total{reason=\"malformed\"} 1",
        "dstack_mesh_peer_relay_dropped_total{reason=\"pair-rate\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
