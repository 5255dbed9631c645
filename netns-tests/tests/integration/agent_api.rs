//! The local API over its unix socket: JSON shapes, the peer-change stream and the metrics.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`: `cargo test -p netns-tests --test integration agent_api:: -- --nocapture`.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::{Client, ClientError, Event, Leader, Mode, Peer, Status};
use netns_tests::in_process::api::{FixtureApi, example_snapshot};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Status and peers round-trip through the socket as the snapshot that was published.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_peers_are_served_as_published() {
    let snapshot = example_snapshot(1_000_000);
    let server = FixtureApi::start(snapshot.clone()).await;
    let status: Status = mesh_api::get(server.path(), "/v1/status").await.unwrap();
    assert_eq!(status, snapshot.status);
    let peers: Vec<Peer> = mesh_api::get(server.path(), "/v1/peers").await.unwrap();
    assert_eq!(peers, *snapshot.peers);
    let raw: serde_json::Value = mesh_api::get(server.path(), "/v1/peers").await.unwrap();
    assert_eq!(raw[0]["overlayIp"], "10.0.1.2", "camelCase field names");
    let metrics = mesh_api::get_text(server.path(), "/metrics").await.unwrap();
    assert_eq!(
        metrics,
        mesh_api::metrics(&snapshot),
        "/metrics serves the snapshot's text"
    );
    let err = mesh_api::get::<serde_json::Value>(server.path(), "/v2/nothing")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no such path /v2/nothing"),
        "{err}"
    );
}

/// The watch stream sends the current list, then one event per change, and nothing for a non-change.
#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_one_event_per_peer_set_change() {
    let snapshot = example_snapshot(1_000_000);
    let server = FixtureApi::start(snapshot.clone()).await;
    let stream = tokio::net::UnixStream::connect(server.path())
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"GET /v1/peers/watch HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut next_event = async || -> Vec<Peer> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("a peers event within 5 s")
                .unwrap()
                .expect("the stream stays open");
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str(data).unwrap();
            }
        }
    };
    assert_eq!(
        next_event().await,
        *snapshot.peers,
        "the current list first"
    );

    let mut unchanged = snapshot.clone();
    unchanged.status.uptime_secs += 10; // not a peer-set change
    server.publish.send(unchanged).unwrap();
    let mut changed = snapshot.clone();
    changed.peers = snapshot.peers[..snapshot.peers.len() - 1].into();
    server.publish.send(changed.clone()).unwrap();
    assert_eq!(
        next_event().await,
        *changed.peers,
        "the next event is the change, not the uptime tick"
    );
}

/// The Rust client gives applications the SDK's operations: peers' addresses, the leader, registration,
/// and a check that the agent serves the cluster and mode the application expects.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_lists_peers_finds_the_leader_and_waits_for_registration() {
    let snapshot = example_snapshot(1_000_000);
    let server = FixtureApi::start(snapshot.clone()).await;
    let contract = snapshot.status.chain.contract;
    let client = Client::connect(server.path(), Some(contract), Some(Mode::Wireguard))
        .await
        .unwrap();
    assert_eq!(
        client.peer_addresses().await.unwrap(),
        [
            "10.0.1.2".to_owned(),
            format!("https://{:040x}-8080.dstack.example", 3)
        ],
        "the overlay IP over a tunnel, the gateway URL without one, nothing for the unreachable seat"
    );
    assert_eq!(client.leader().await.unwrap(), snapshot.leader);
    assert!(client.register(Duration::from_secs(1)).await.unwrap());

    let other = alloy::primitives::Address::repeat_byte(9);
    let err = Client::connect(server.path(), Some(other), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Mismatch {
                what: "cluster",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&other.to_string()), "{err}");
    let err = Client::connect(server.path(), None, Some(Mode::Tls))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Mismatch { what: "mode", .. }),
        "{err}"
    );

    let mut unregistered = snapshot.clone();
    unregistered.status.node.registered = false;
    server.publish.send(unregistered.clone()).unwrap();
    assert!(
        !client.register(Duration::from_millis(600)).await.unwrap(),
        "still trying, no reason given: false after the timeout"
    );
    unregistered.status.node.registration_error = Some("no seat: meshctl mint …".into());
    server.publish.send(unregistered).unwrap();
    let err = client.register(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Registration { reason } if reason.contains("meshctl mint")),
        "the agent's reason: {err}"
    );
}

/// `/v1/events` sends the peers and the leader first, then only what applications act on; the client's
/// monitor comes back after the agent restarts without calling back for what did not change.
#[tokio::test(flavor = "multi_thread")]
async fn events_carry_peers_and_leader_and_the_monitor_survives_a_restart() {
    let snapshot = example_snapshot(1_000_000);
    let mut server = FixtureApi::start(snapshot.clone()).await;
    let client = Client::new(server.path());
    let mut events = client.events().await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream stays open")
            .unwrap()
    };
    assert_eq!(next().await, Event::Peers(snapshot.peers.to_vec()));
    assert_eq!(
        next().await,
        Event::Leader(Box::new(snapshot.leader.clone()))
    );
    let mut counters_moved = snapshot.clone();
    Arc::make_mut(&mut counters_moved.peers)[0].rx_bytes += 1000;
    Arc::make_mut(&mut counters_moved.peers)[0].latest_handshake = Some(1_000_001);
    server.publish.send(counters_moved).unwrap();
    let mut new_leader = snapshot.clone();
    new_leader.leader = Leader {
        token_id: Some(3),
        ..Leader::default()
    };
    server.publish.send(new_leader.clone()).unwrap();
    assert_eq!(
        next().await,
        Event::Leader(Box::new(new_leader.leader.clone())),
        "the leader change, and no peers event for counters"
    );

    let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel::<String>();
    let leader_calls = calls_tx.clone();
    let _monitor = owned_task::Task::spawn("monitor", {
        let client = client.clone();
        async move {
            client
                .monitor(
                    move |peers| calls_tx.send(format!("peers {peers:?}")).unwrap(),
                    move |leader| {
                        leader_calls
                            .send(format!("leader {:?}", leader.token_id))
                            .unwrap();
                    },
                )
                .await
        }
    });
    let mut call = async || {
        tokio::time::timeout(Duration::from_secs(10), calls.recv())
            .await
            .expect("a callback within 10 s")
            .unwrap()
    };
    assert!(call().await.starts_with("peers [\"10.0.1.2\""));
    assert_eq!(call().await, "leader Some(3)");
    server.restart(new_leader.clone()).await;
    // A peer's health alone changes no address: the address list is not called back again.
    let mut sick = new_leader.clone();
    Arc::make_mut(&mut sick.peers)[0].healthy = !sick.peers[0].healthy;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.publish.send(sick).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut joined = new_leader.clone();
    Arc::make_mut(&mut joined.peers)[2].address = Some("10.0.1.4".into());
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.publish.send(joined).unwrap();
    let after = call().await;
    assert!(
        after.contains("10.0.1.4"),
        "after the restart, the first callback is the change, not the unchanged list again: {after}"
    );
}

/// An agent that has just restarted does not know its peers until it has a view of the chain (from the
/// RPC or its state file): its event streams say nothing of them meanwhile, rather than that every peer left,
/// and a monitor that reconnects calls back nothing for a list that then turns out unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_that_does_not_know_its_peers_yet_tells_a_monitor_nothing() {
    let snapshot = example_snapshot(1_000_000);
    let mut server = FixtureApi::start(snapshot.clone()).await;
    let client = Client::new(server.path());
    let (calls_tx, mut calls) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let _monitor = owned_task::Task::spawn("monitor", {
        let client = client.clone();
        async move {
            client
                .monitor(move |peers| calls_tx.send(peers.to_vec()).unwrap(), |_| {})
                .await
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("the current list within 10 s")
        .unwrap();
    assert!(!first.is_empty(), "{first:?}");

    let unknown = mesh_api::Snapshot {
        peers: std::sync::Arc::from([]),
        peers_known: false,
        ..snapshot.clone()
    };
    server.restart(unknown.clone()).await;
    let mut events = client.events().await.expect("the restarted agent's stream");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .is_err(),
        "an event before the agent knows its peers"
    );
    assert!(
        calls.try_recv().is_err(),
        "the monitor was called back while the peers were unknown"
    );
    server.publish.send(snapshot.clone()).unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("the peers once known")
            .expect("the stream stays open")
            .unwrap(),
        Event::Peers(snapshot.peers.to_vec())
    );
    let mut moved = snapshot.clone();
    Arc::make_mut(&mut moved.peers)[2].address = Some("10.0.1.4".into());
    server.publish.send(moved).unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("a callback within 10 s")
        .unwrap();
    assert!(
        after.contains(&"10.0.1.4".to_owned()),
        "the first callback after the restart is the change, with no empty list before it: {after:?}"
    );
}

/// Event streams are bounded: with `MAX_STREAMS` open, one more of either kind is answered 503 with the
/// limit and what to do instead, while the other routes still answer; a client that goes away makes room.
#[tokio::test(flavor = "multi_thread")]
async fn event_streams_past_the_bound_are_refused_until_one_closes() {
    let snapshot = example_snapshot(1_000_000);
    let server = FixtureApi::start(snapshot.clone()).await;
    let client = Client::new(server.path());
    let mut open = Vec::new();
    for _ in 0..mesh_api::MAX_STREAMS {
        let mut events = client.events().await.expect("a stream within the bound");
        let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
        assert!(matches!(first, Ok(Some(Ok(Event::Peers(_))))), "{first:?}");
        open.push(events);
    }

    for path in ["/v1/events", "/v1/peers/watch"] {
        let err = mesh_api::get::<serde_json::Value>(server.path(), path)
            .await
            .unwrap_err();
        let ClientError::Http {
            status, message, ..
        } = &err
        else {
            panic!("{path}: not an HTTP refusal: {err}");
        };
        assert_eq!(status.as_u16(), 503, "{path}: {err}");
        assert!(
            message.contains(&format!("{} event streams are open", mesh_api::MAX_STREAMS)),
            "{path}: the limit is named: {message}"
        );
        assert!(
            message.contains("close one") && message.contains("GET /v1/peers"),
            "{path}: what to do is said: {message}"
        );
    }
    let peers: Vec<Peer> = mesh_api::get(server.path(), "/v1/peers").await.unwrap();
    assert_eq!(peers, *snapshot.peers, "the other routes still answer");

    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut events = loop {
        match client.events().await {
            Ok(events) => break events,
            Err(ClientError::Http { status, .. })
                if status.as_u16() == 503 && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the closed stream's slot is not given back within 5 s: {e}"),
        }
    };
    let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(matches!(first, Ok(Some(Ok(Event::Peers(_))))), "{first:?}");
}

/// Metrics are Prometheus text with the peer gauges and the counters: per peer under the WireGuard exporters'
/// names and labels, drops by reason, and the names before 0.2 still served, marked deprecated.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_peers_handshakes_bytes_reconciles_lag_and_paths() {
    let snapshot = example_snapshot(1_000_000);
    let text = mesh_api::metrics(&snapshot);
    let wg = |token: u8| {
        format!(
            "device=\"dmesh0\",public_key=\"{}\",token_id=\"{token}\"",
            netns_tests::in_process::api::example_key(token)
        )
    };
    for line in [
        "dstack_mesh_build_info{version=\"0.1.0\",commit=\"0123456789ab\"} 1",
        "process_start_time_seconds 1795000000",
        // Every reason has a sample, at 0 when no seat is refused for it.
        "dstack_mesh_peers_refused{reason=\"report-data-mismatch\"} 1",
        "dstack_mesh_peers_refused{reason=\"malformed\"} 0",
        "dstack_mesh_registered 1",
        &format!("wireguard_latest_handshake_seconds{{{}}} 999988", wg(2)),
        &format!("wireguard_latest_handshake_seconds{{{}}} 0", wg(4)),
        &format!("wireguard_peer_receive_bytes_total{{{}}} 5242880", wg(2)),
        "# TYPE wireguard_peer_transmit_bytes_total counter",
        &format!(
            "dstack_mesh_peer_path{{{},path=\"direct\",relay_url=\"\",relay_seat=\"\"}} 1",
            wg(2)
        ),
        "dstack_mesh_dropped_datagrams_total{reason=\"unknown_peer\",transport=\"relay\"} 2",
        "dstack_mesh_registration_failing 0",
        "# HELP dstack_mesh_peer_rx_bytes_total Deprecated, removed in 0.3: use wireguard_peer_receive_bytes_total.",
        "dstack_mesh_peers_configured 3",
        "dstack_mesh_peers_healthy 1",
        "dstack_mesh_peer_latest_handshake_seconds{token_id=\"2\"} 999988",
        "dstack_mesh_peer_latest_handshake_seconds{token_id=\"4\"} 0",
        "dstack_mesh_peer_rx_bytes_total{token_id=\"2\"} 5242880",
        "dstack_mesh_reconciles_total 4",
        "dstack_mesh_invalid_records_total 1",
        "dstack_mesh_chain_requests_total 42",
        "dstack_mesh_chain_head_polls_total 40",
        "dstack_mesh_chain_lag_blocks 2",
        "# TYPE dstack_mesh_rpc_errors_total counter",
        &format!(
            "dstack_mesh_peer_path{{{},path=\"relay\",relay_url=\"https://{:040x}-51820.dstack.example\",relay_seat=\"\"}} 1",
            wg(3),
            3
        ),
        "dstack_mesh_relay_streams_open 1",
        // The forwarded ports: every refusal reason has a sample.
        "dstack_mesh_forwarded_connections_total{role=\"leader\",port=\"5432\",outcome=\"fenced\"} 2",
        "dstack_mesh_forwarded_refused_total{role=\"leader\",port=\"5432\",reason=\"not-current\"} 3",
        "dstack_mesh_forwarded_refused_total{role=\"leader\",port=\"5432\",reason=\"no-leader\"} 0",
        "dstack_mesh_forwarded_bytes_total{role=\"leader\",port=\"5432\",direction=\"from_service\"} 65536",
        "dstack_mesh_forwarded_open_connections{role=\"leader\",port=\"5432\"} 1",
        "dstack_mesh_relay_tx_bytes_total 1480",
        "dstack_mesh_unknown_peer_datagrams_relay_total 2",
        &format!("dstack_mesh_peer_punch_attempts_total{{{}}} 2", wg(3)),
        "dstack_mesh_nat_mapping{mapping=\"endpoint-independent\"} 1",
        "dstack_mesh_nat_candidates 1",
        // Three providers, two of which must agree; the third answered otherwise 10 times.
        "dstack_mesh_chain_verified 1",
        "# TYPE dstack_mesh_rpc_answers_total counter",
        "dstack_mesh_rpc_answers_total{provider=\"https://c.rpc.example/\",outcome=\"dissented\"} 10",
        "dstack_mesh_rpc_answers_total{provider=\"https://a.rpc.example/\",outcome=\"agreed\"} 100",
        "dstack_mesh_rpc_splits_total 0",
        "dstack_mesh_rpc_provider_up{provider=\"https://c.rpc.example/\"} 1",
        // The PCCS fails; every other dependency has a sample at 0.
        "dstack_mesh_dependency_failing{dependency=\"pccs\"} 1",
        "dstack_mesh_dependency_failing{dependency=\"rpc\"} 0",
        "dstack_mesh_dependency_failing{dependency=\"state-dir\"} 0",
        // Latencies as Prometheus histograms: cumulative buckets in seconds, the sum, the count.
        "# TYPE dstack_mesh_chain_poll_duration_seconds histogram",
        "dstack_mesh_chain_poll_duration_seconds_bucket{le=\"0.001\"} 0",
        "dstack_mesh_chain_poll_duration_seconds_bucket{le=\"0.005\"} 1",
        "dstack_mesh_chain_poll_duration_seconds_bucket{le=\"0.050\"} 2",
        "dstack_mesh_chain_poll_duration_seconds_bucket{le=\"+Inf\"} 2",
        "dstack_mesh_chain_poll_duration_seconds_sum 0.043000",
        "dstack_mesh_chain_poll_duration_seconds_count 2",
        "dstack_mesh_reconcile_duration_seconds_bucket{le=\"0.100\"} 0",
        "dstack_mesh_reconcile_duration_seconds_bucket{le=\"0.250\"} 1",
        "dstack_mesh_ballot_duration_seconds_bucket{le=\"+Inf\"} 0",
        "dstack_mesh_ballot_duration_seconds_count 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

/// `/healthz` is 503 naming the unreachable seat, and 200 once every peer is reachable somehow; the metrics
/// address answers `/metrics` and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn healthz_names_unreachable_seats_and_turns_200_when_all_are_reachable() {
    let mut snapshot = example_snapshot(1_000_000);
    let server = FixtureApi::start(snapshot.clone()).await;
    let err = mesh_api::get::<mesh_api::Health>(server.path(), "/healthz")
        .await
        .unwrap_err();
    let mesh_api::ClientError::Http {
        status, message, ..
    } = &err
    else {
        panic!("an unhealthy node answers with an HTTP error: {err}")
    };
    assert_eq!(status.as_u16(), 503);
    // The client reports a JSON body's `error` field, else the body; the reasons are in it.
    assert!(
        message.contains("seat 4 (10.0.1.4) is unreachable"),
        "{message}"
    );

    snapshot.peers = (snapshot.peers.iter())
        .filter(|p| p.token_id != 4)
        .cloned()
        .collect();
    server.publish.send_replace(snapshot);
    let health: mesh_api::Health = mesh_api::get(server.path(), "/healthz").await.unwrap();
    assert!(health.healthy && health.reasons.is_empty(), "{health:?}");
    assert_eq!((health.peers_configured, health.peers_reachable), (2, 2));
}
