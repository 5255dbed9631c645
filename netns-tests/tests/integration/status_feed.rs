//! The status page's event feed in Debian's headless Chromium (driven by `netns-tests/browser/status_feed.mjs`,
//! with playwright-core): what the agent's snapshot gains shows in the feed in words, without a reload and
//! once each — a seat refused and a seat no longer refused, this node's own evidence refused and passing
//! again, this node's vote against the leader and its failed withdrawal with the error, an RPC outvoted and
//! one agreeing again, a read without a quorum, and a peer below the cluster's TCB policy; and the forwarded
//! ports' table. The real API server serves a fixture snapshot, on loopback in a namespace the test makes.
//!
//! Needs root, `scripts/bootstrap`'s chromium and playwright-core, and Node.js.

use std::time::{Duration, SystemTime};

use mesh_api::{Attestation, BallotKind, BallotOutcome, BallotReport, RefusedPeer, Snapshot};
use netns_tests::in_process::api::{FixtureApi, example_snapshot};
use netns_tests::net::netns::in_netns;
use netns_tests::prelude::*;

const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

const REFUSED_6: &str =
    "seat 6 refused: compose-hash-not-allowed \u{2013} its compose hash is not allowed";
const NO_LONGER_5: &str = "seat 5 is no longer refused";
const OWN_REFUSED: &str =
    "this node's evidence is refused: tcb-status \u{2013} TCB status OutOfDate";
const VOTED: &str = "this node voted against seat 2: the leader, seat 2, has not answered for 9 s";
const WITHDRAWAL_FAILED: &str = "this node withdrew its vote against seat 2 \u{2013} failed: withdrawVote failed: the RPC did not answer";
const OWN_PASSES: &str = "this node's evidence passes again";
const B_OUTVOTED: &str = "the RPC https://b.rpc.example/ answers unlike https://c.rpc.example/ and https://a.rpc.example/, whose answer is taken (eth_call): one side lies";
const A_DOWN: &str = "the RPC https://a.rpc.example/ does not answer: connection refused";
const C_AGREES: &str = "the RPC https://c.rpc.example/ answers like the others again";
const NO_QUORUM: &str = "no quorum: the RPCs disagree on eth_getLogs";
const BELOW_TCB: &str =
    "seat 4 is below the TCB policy: warned \u{2013} the platform's TCB status is OutOfDate";

fn ballot(
    kind: BallotKind,
    outcome: BallotOutcome,
    reason: &str,
    error: Option<&str>,
    at: u64,
) -> BallotReport {
    BallotReport {
        kind,
        seat: Some(2),
        reason: reason.into(),
        outcome,
        error: error.map(Into::into),
        sent_at: at,
    }
}

/// Seat 5 no longer refused and seat 6 refused; this node's evidence refused; its vote against seat 2 mined.
fn refusals_and_a_vote(s: &mut Snapshot, now: u64) {
    s.refused = vec![RefusedPeer {
        token_id: 6,
        instance_id: format!("{:040x}", 6),
        kind: "compose-hash-not-allowed".into(),
        reason: "its compose hash is not allowed by the cluster's app".into(),
        stage: None,
        stage_until: None,
    }];
    s.status.peers_refused = 1;
    s.status.node.attestation = Some(Attestation {
        verified: false,
        tcb_status: Some("OutOfDate".into()),
        compose_hash: None,
        collateral_until: None,
        kind: Some("tcb-status".into()),
        reason: Some("TCB status OutOfDate is not accepted".into()),
        tcb_stage: None,
        tcb_stage_until: None,
    });
    s.status.election.vote = Some(2);
    s.status.election.last_ballot = Some(ballot(
        BallotKind::Vote,
        BallotOutcome::Mined,
        "the leader, seat 2, has not answered for 9 s",
        None,
        now,
    ));
}

/// Provider b is outvoted on an eth_call by c and a, c agrees again, a does not answer, and a range's logs
/// got no quorum.
fn an_rpc_outvoted_and_a_split(s: &mut Snapshot) {
    let v = &mut s.status.chain.verification;
    for p in &mut v.providers {
        p.dissenting = p.url.contains("//b.");
        if p.dissenting {
            p.dissented += 1;
            p.last_dissent = Some("eth_call".into());
            p.dissented_from = vec![
                "https://c.rpc.example/".into(),
                "https://a.rpc.example/".into(),
            ];
        }
        if p.url.contains("//a.") {
            p.failing = Some("connection refused".into());
            p.failing_secs = Some(3);
        }
    }
    v.splits += 1;
    v.last_split = Some("the RPCs disagree on eth_getLogs: https://a.rpc.example/ answered one way, https://b.rpc.example/ otherwise, https://c.rpc.example/ did not answer; 2 must answer alike".into());
}

/// Seat 4's platform falls below the cluster's TCB policy: warned, a stage that ends in ten minutes.
fn a_peer_below_the_tcb_policy(s: &mut Snapshot, now: u64, passing: &Attestation) {
    let p = std::sync::Arc::make_mut(&mut s.peers)
        .iter_mut()
        .find(|p| p.token_id == 4)
        .expect("the fixture's seat 4");
    p.attestation = Some(Attestation {
        tcb_status: Some("OutOfDate".into()),
        reason: Some("the platform's TCB status is OutOfDate, which the cluster's TCB policy does not accept".into()),
        tcb_stage: Some("warned".into()),
        tcb_stage_until: Some(now + 600),
        ..passing.clone()
    });
}

/// This node's evidence passes again; its withdrawal of the vote failed.
fn a_failed_withdrawal(s: &mut Snapshot, now: u64, passing: Attestation) {
    s.status.node.attestation = Some(passing);
    s.status.election.last_ballot = Some(ballot(
        BallotKind::Withdraw,
        BallotOutcome::Failed,
        "seat 2 answers again",
        Some("withdrawVote failed: the RPC did not answer within 10s"),
        now + 6,
    ));
}

#[test]
fn the_feed_tells_refusals_and_ballots_as_they_happen() {
    require_chromium();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _entered = runtime.enter();
    let snapshot = example_snapshot(now);
    let passing = snapshot
        .status
        .node
        .attestation
        .clone()
        .expect("the fixture's node is attested");
    let api = runtime.block_on(FixtureApi::start(snapshot));
    let ns = NetNs::new("page");
    let listener = in_netns(&ns, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind")
    });
    let url = format!("http://{}/", listener.local_addr().expect("an address"));
    let _served = api.also_on(listener);

    let expected = [
        REFUSED_6,
        NO_LONGER_5,
        OWN_REFUSED,
        VOTED,
        WITHDRAWAL_FAILED,
        OWN_PASSES,
        B_OUTVOTED,
        C_AGREES,
        A_DOWN,
        NO_QUORUM,
        BELOW_TCB,
    ];
    let mut args = vec!["--url", url.as_str(), "--timeout", "90"];
    for e in &expected {
        args.extend(["--expect", e]);
    }
    let mut page = App::start(
        &ns,
        "netns-tests/browser/status_feed.mjs",
        &args,
        api.path(),
        &[],
    );
    page.wait_for("\"stage\":\"loaded\"", BROWSER_TIMEOUT);
    let loaded = stage(&page, "loaded");
    assert!(
        events(&loaded).contains(&"1 seat refused when the page opened: 5".to_owned()),
        "{loaded}"
    );
    assert_eq!(loaded["leader"]["vote"], "none", "{loaded}");
    // The forwarded port of the fixture: where it listens, its counts, refusals, bytes and latest route.
    assert_eq!(
        loaded["ports"],
        serde_json::json!([[
            "5432",
            "the leader on 5433",
            "127.0.0.1:5432, 10.0.1.1:5432",
            "1",
            "5",
            "2",
            "1",
            "3 not-current",
            "4.0 KiB",
            "64.0 KiB",
            "term 8, seat 2"
        ]]),
        "{loaded}"
    );
    assert_eq!(
        loaded["chainVerified"],
        "2 of 3 RPCs must agree; answering unlike the rest: https://c.rpc.example/",
        "{loaded}"
    );

    api.publish.send_modify(|s| refusals_and_a_vote(s, now));
    let first = [REFUSED_6, NO_LONGER_5, OWN_REFUSED, VOTED];
    wait_until(
        "the feed shows the refusals and the vote",
        BROWSER_TIMEOUT,
        Duration::from_millis(200),
        || {
            page.json_lines()
                .iter()
                .filter(|v| v["stage"] == "feed")
                .any(|v| {
                    first
                        .iter()
                        .all(|x| events(v).iter().any(|e| e.contains(x)))
                })
        },
        || page.tail(),
    );
    api.publish.send_modify(|s| {
        a_peer_below_the_tcb_policy(s, now, &passing);
        a_failed_withdrawal(s, now, passing.clone());
        an_rpc_outvoted_and_a_split(s);
    });
    page.wait_for("\"stage\":\"seen\"", BROWSER_TIMEOUT);

    let seen = stage(&page, "seen");
    let feed = events(&seen);
    for x in expected {
        assert_eq!(
            feed.iter().filter(|e| e.contains(x)).count(),
            1,
            "{x:?} once in the feed: {feed:#?}"
        );
    }
    assert_eq!(seen["navigations"], 1, "the page was reloaded: {seen}");
    assert_eq!(seen["leader"]["vote"], "against seat 2", "{seen}");
    assert_eq!(
        seen["chainVerified"],
        "2 of 3 RPCs must agree; answering unlike the rest: https://b.rpc.example/; not answering: https://a.rpc.example/",
        "{seen}"
    );
    let card = seen["leader"]["ballot"].as_str().unwrap_or_default();
    assert!(
        card.starts_with(WITHDRAWAL_FAILED),
        "the leader card's last ballot: {card}"
    );
}

fn stage(page: &App, name: &str) -> serde_json::Value {
    page.json_lines()
        .into_iter()
        .find(|v| v["stage"] == name)
        .unwrap_or_else(|| panic!("no {name} stage\n{}", page.tail()))
}

fn events(stage: &serde_json::Value) -> Vec<String> {
    stage["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
