//! `meshctl status` against the agent's real API server answering from a fixture.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`: `cargo test -p netns-tests --test integration meshctl_status:: -- --nocapture`.

use std::process::Command;
use std::time::SystemTime;

use netns_tests::in_process::api::{FixtureApi, example_key, example_snapshot};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn meshctl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(netns_tests::run::process::workspace_bin("meshctl"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The header, one row per peer, "never" for a peer with no handshake, binary units, health markers.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_node_and_one_row_per_peer() {
    let api = FixtureApi::start(example_snapshot(now())).await;
    let out = meshctl(vec![
        "status".into(),
        "--api-socket".into(),
        api.path().display().to_string(),
    ])
    .await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("interface dmesh0  overlay 10.0.1.1  seat 1"),
        "{text}"
    );
    assert!(
        text.contains("mode wireguard (userspace)  listen port 51820"),
        "{text}"
    );
    assert!(text.contains("block 120 of 122 (lag 2)"), "{text}");
    assert!(
        text.contains("rpc: 2 of 3 providers must agree\n")
            && text.contains("# rpc: https://c.rpc.example/ answers unlike https://a.rpc.example/ and https://b.rpc.example/, whose answer is taken (10 of 100 answers, last eth_getLogs): one side lies"),
        "the quorum, and the provider outvoted: {text}"
    );
    assert!(
        text.contains("failing:\n✗ pccs (for 1m): the PCCS gave no collateral (no answer within 10s); the cached collateral serves until it expires\n"),
        "the dependencies that fail, and for how long: {text}"
    );
    assert!(
        text.contains("leader seat 2 at 10.0.1.2, term 3  answering  [unknown]"),
        "the leader, where it is, its term, whether it answers and whether it is confirmed: {text}"
    );
    let row = |token: &str| {
        text.lines()
            .find(|l| l.chars().skip(2).collect::<String>().starts_with(token))
            .unwrap_or_else(|| panic!("no row for {token}:\n{text}"))
    };
    let healthy = row("2 ");
    assert!(
        healthy.starts_with('●')
            && healthy.contains("wireguard")
            && healthy.contains(" direct ")
            && healthy.contains("12s ago"),
        "{healthy}"
    );
    assert!(
        healthy.contains("5.0 MiB") && healthy.contains("1.5 KiB"),
        "{healthy}"
    );
    assert!(
        healthy.contains(" UpToDate "),
        "a peer's row says it is attested, with its TCB status: {healthy}"
    );
    assert!(
        text.contains("attested: UpToDate") && text.contains("1 healthy, 1 refused"),
        "this node's own attestation and the count of refused seats: {text}"
    );
    let refused = row("5 ");
    assert!(
        refused.starts_with('✗') && refused.contains("report-data-mismatch"),
        "a refused seat is listed with what failed: {refused}"
    );
    let fallback = row("3 ");
    assert!(
        fallback.starts_with('○')
            && fallback.contains("tls-gateway")
            && fallback.contains("6m ago"),
        "{fallback}"
    );
    assert!(
        text.contains("via https://"),
        "the gateway URL is shown for the fallback: {text}"
    );
    assert!(
        fallback.contains(" relay ")
            && text.contains(&format!("relay https://{:040x}-51820.dstack.example", 3)),
        "a relayed peer shows its path and relay URL: {text}"
    );
    assert!(
        text.contains(
            "why relayed: no handshake answer over UDP; no answer over UDP from 1 candidate(s)"
        ) && text.contains("candidates 203.0.113.3:40003 (stun)  attempts 2"),
        "a relayed peer says why it is not punched, and what was tried: {text}"
    );
    assert!(
        text.contains(
            "nat mapping endpoint-independent  public 203.0.113.1:40001  (1 of 2 STUN servers answered)"
        ),
        "this node's NAT as STUN showed it: {text}"
    );
    let never = row("4 ");
    assert!(
        never.contains("never") && !never.contains("1970"),
        "{never}"
    );
    assert!(
        never.contains("AAAAAAAAAAAA…"),
        "keys are short without -v: {never}"
    );

    let verbose = meshctl(vec![
        "status".into(),
        "-v".into(),
        "--api-socket".into(),
        api.path().display().to_string(),
    ])
    .await;
    let verbose = String::from_utf8(verbose.stdout).unwrap();
    assert!(
        verbose.contains(&example_key(4).to_string()),
        "full keys with -v: {verbose}"
    );
}

/// `--json` prints the API's own data, so scripts see the documented schema.
#[tokio::test(flavor = "multi_thread")]
async fn status_json_is_the_apis_data() {
    let snapshot = example_snapshot(now());
    let api = FixtureApi::start(snapshot.clone()).await;
    let out = meshctl(vec![
        "status".into(),
        "--json".into(),
        "--api-socket".into(),
        api.path().display().to_string(),
    ])
    .await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], serde_json::to_value(&snapshot.status).unwrap());
    assert_eq!(v["peers"], serde_json::to_value(&snapshot.peers).unwrap());
    assert_eq!(v["leader"], serde_json::to_value(&snapshot.leader).unwrap());
    assert_eq!(v["peers"][2]["latestHandshake"], serde_json::Value::Null);
    assert_eq!(v["peers"][1]["connection"], "tls-gateway");
    assert_eq!(v["status"]["chain"]["lastProcessedBlock"], 120);
}

/// With no agent running, status says so in one sentence and exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn status_without_an_agent_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("api.sock");
    let out = meshctl(vec![
        "status".into(),
        "--api-socket".into(),
        missing.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no agent API at") && err.contains("is p2p-agent running"),
        "{err}"
    );
}
