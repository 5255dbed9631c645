//! The simulator binary as clients see it: sockets, the wire protocol, and the agent's dstack client.
//! Run with `cargo test -p dstack-simulator --test guest_agent_api`.

mod common;

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use common::{APP_ID, ROOT_KEY, Sim, get, post};
use dstack_guest::DstackProof;
use dstack_guest::{DstackClient, DstackError, Endpoint};
use dstack_simulator::fixture::FIXTURE_A;
use dstack_simulator::keys::KmsRootKey;
use mesh_chain::record::{self, PeerRecord, SignedRegistration};
use serde_json::{Value, json};

const FIXTURE_A_WALLET_KEY: &str =
    "7c019ee7f279e47ef73ebf7dcb6844f398db2e06ea0dc4e45e528483ab924b57";

fn client(sim: &Sim) -> DstackClient {
    DstackClient::new(Endpoint::Unix(sim.socket.clone())).with_timeout(Duration::from_secs(10))
}

fn cluster_args<'a>(root_file: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "--kms-root-key-file",
        root_file,
        "--app-id",
        APP_ID,
        "--instance-name",
        name,
    ]
}

/// Two instances of one cluster have distinct ids but one app key: identical KMS signatures and
/// app keys, and both chains verify against the cluster's root.
#[tokio::test]
async fn named_instances_share_the_app_key() {
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("root.key");
    std::fs::write(&root_file, format!("{ROOT_KEY}\n")).unwrap();
    let root_file = root_file.to_str().unwrap();
    let one = Sim::start(dir.path(), "one", &cluster_args(root_file, "node-1"));
    let two = Sim::start(dir.path(), "two", &cluster_args(root_file, "node-2"));
    let kms_root = KmsRootKey::from_hex(ROOT_KEY).unwrap().address();
    let app_id: Address = APP_ID.parse().unwrap();

    let mut proofs = Vec::new();
    let mut ids = Vec::new();
    for sim in [&one, &two] {
        let c = client(sim);
        let info = c.info().await.unwrap();
        assert_eq!(info.app_id, app_id);
        let node = Address::repeat_byte(ids.len() as u8 + 1);
        let purpose = record::purpose(&info.instance_id, node);
        let reply = c.get_key(record::KEY_PATH, &purpose).await.unwrap();
        let p = DstackProof::from_get_key(&reply, info.app_id, &purpose).unwrap();
        dstack_guest::verify_chain(&p, kms_root, &[app_id]).unwrap();
        ids.push(info.instance_id);
        proofs.push(p);
    }
    assert_ne!(ids[0], ids[1], "instance ids must differ");
    assert_eq!(
        proofs[0].kms_signature, proofs[1].kms_signature,
        "one sig1 per app"
    );
    assert_eq!(
        proofs[0].app_public_key, proofs[1].app_public_key,
        "one app key per app"
    );
    // GetKey is per app, as on dstack: two instances get the same key for the same path. This is why the
    // mesh's node keys are made in the CVM from randomness, and GetKey only vouches for them.
    assert_eq!(proofs[0].derived_public_key, proofs[1].derived_public_key);
}

/// A socket file nobody listens on is replaced.
#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the stale socket file stays behind");
    let sim = Sim::start(dir.path(), "stale", &["--fixture", "a"]);
    assert_eq!(sim.socket, path);
    let info = client(&sim).info().await.unwrap();
    assert_eq!(info.instance_id, hex::encode(FIXTURE_A.instance_id));
}

/// A socket a live simulator holds is refused with a clear error, and the holder keeps serving.
#[tokio::test]
async fn live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Sim::start(dir.path(), "held", &["--fixture", "a"]);
    let mut intruder = Sim::spawn_on(dir.path(), "intruder", &holder.socket, &["--fixture", "b"]);
    let status = intruder.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        intruder.stderr().contains("is in use"),
        "{}",
        intruder.stderr()
    );
    let info = client(&holder).info().await.unwrap();
    assert_eq!(info.app_name, FIXTURE_A.app_name);
}

/// SIGTERM stops the simulator cleanly and removes its socket.
#[tokio::test]
async fn sigterm_exits_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::start(dir.path(), "term", &["--fixture", "a"]);
    let status = sim.terminate();
    assert!(status.success(), "{status}: {}", sim.stderr());
    assert!(!sim.socket.exists(), "socket left behind");
}

/// A POST that is not JSON gets 415 naming protobuf, never a misread.
#[test]
fn non_json_post_is_refused_naming_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), "proto", &["--fixture", "a"]);
    let (status, body) = post(
        &sim.socket,
        "/GetKey",
        "application/x-protobuf",
        "\n\x04path",
    );
    assert_eq!(status, 415);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("protobuf"),
        "{body}"
    );
    assert!(
        body.contains("\n  \"error\""),
        "errors are pretty-printed: {body}"
    );
}

/// GET with query parameters works (GET implies JSON), on DstackGuest and Tappd paths.
#[test]
fn get_with_query_parameters_works() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), "get", &["--fixture", "a"]);
    let (status, body) = get(
        &sim.socket,
        "/GetKey?path=wallet%2Fethereum&purpose=ethereum",
    );
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["key"], FIXTURE_A_WALLET_KEY);
    let (status, body) = get(
        &sim.socket,
        "/prpc/Tappd.DeriveK256Key?path=wallet/ethereum&purpose=ethereum",
    );
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["k256_key"], FIXTURE_A_WALLET_KEY);
    assert_eq!(
        reply["k256_signature_chain"][1],
        hex::encode(FIXTURE_A.kms_signature)
    );
    let (status, body) = get(&sim.socket, "/NoSuchMethod");
    assert_eq!(status, 404, "{body}");
}

/// `0x`-prefixed hex is accepted on input (JSON body and query) and never emitted.
#[tokio::test]
async fn hex_input_accepts_0x() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), "hex", &["--fixture", "a"]);
    let reply = client(&sim)
        .call("GetQuote", &json!({"report_data": "0xDEADbeef"}))
        .await
        .unwrap();
    let report_data = reply["report_data"].as_str().unwrap();
    assert!(report_data.starts_with("deadbeef000000"), "{report_data}");
    let quote = hex::decode(reply["quote"].as_str().unwrap()).unwrap();
    assert_eq!(&quote[568..572], &[0xde, 0xad, 0xbe, 0xef]);
    let (status, body) = get(&sim.socket, "/GetQuote?report_data=0x1234");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"report_data\":\"1234000"), "{body}");
}

/// Over-long report data is a 400 with the agent's `{"error"}` shape, surfaced by the client.
#[tokio::test]
async fn oversized_report_data_is_an_api_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), "big", &["--fixture", "a"]);
    let err = client(&sim)
        .call("GetQuote", &json!({"report_data": "ab".repeat(65)}))
        .await
        .unwrap_err();
    match err {
        DstackError::Api {
            status, message, ..
        } => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("at most 64"), "{message}");
        }
        other => panic!("expected an API error, got {other}"),
    }
}

/// The agent's client gets Info and a GetKey whose chain verifies against fixture A's KMS root, and
/// a registration signed with that key verifies end to end.
#[tokio::test]
async fn agent_client_chain_verifies_against_fixture_root() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), "agent", &["--fixture", "a"]);
    let c = client(&sim);
    let info = c.info().await.unwrap();
    assert_eq!(info.app_id, Address::from(FIXTURE_A.app_id));
    let instance = info.instance_id.clone();
    let node_key = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let purpose = record::purpose(&instance, record::node_address(&node_key));
    let reply = c.get_key(record::KEY_PATH, &purpose).await.unwrap();
    let p = DstackProof::from_get_key(&reply, info.app_id, &purpose).unwrap();
    let chain = dstack_guest::verify_chain(&p, FIXTURE_A.kms_root, &[info.app_id]).unwrap();
    assert_eq!(chain.kms_root, FIXTURE_A.kms_root);

    let record = PeerRecord {
        tokenId: U256::from(1),
        instanceId: instance.clone(),
        wgPublicKey: B256::repeat_byte(9),
        endpoint: "127.0.0.1:51820".into(),
        gatewayUrl: String::new(),
        nonce: 1,
    };
    let reg =
        SignedRegistration::sign(record, p, &node_key, 31337, Address::repeat_byte(0xcc)).unwrap();
    record::verify_registration(
        &reg,
        FIXTURE_A.kms_root,
        &[info.app_id],
        &instance,
        Some(record::node_address(&node_key)),
    )
    .unwrap();

    // Fixture A's published GetKey vector through the same client.
    let wallet = c.get_key("wallet/ethereum", "ethereum").await.unwrap();
    assert_eq!(
        hex::encode(wallet.key.expose_secret()),
        FIXTURE_A_WALLET_KEY
    );
}

/// The client reaches the simulator over `--listen` HTTP too.
#[tokio::test]
async fn agent_client_works_over_loopback_http() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let _sim = Sim::start(dir.path(), "http", &["--fixture", "b", "--listen", &listen]);
    let c = DstackClient::discover(Some(&format!("http://{listen}"))).unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.app_name, "guest-agent");
}

/// A missing socket gives the "no dstack socket" hint.
#[tokio::test]
async fn missing_socket_gives_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let c = DstackClient::new(Endpoint::Unix(dir.path().join("nobody.sock")));
    let err = c.get_key("a", "b").await.unwrap_err();
    assert!(matches!(err, DstackError::NoSocket { .. }), "{err}");
    assert!(err.to_string().starts_with("no dstack socket at "), "{err}");
}

/// A non-loopback `--listen` is refused at start-up with a clear error.
#[test]
fn non_loopback_listen_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::spawn(
        dir.path(),
        "wide",
        &["--fixture", "a", "--listen", "0.0.0.0:0"],
    );
    assert!(!sim.wait_exit(Duration::from_secs(20)).success());
    assert!(sim.stderr().contains("only loopback"), "{}", sim.stderr());
}

/// With a mock PKI seed, the simulator signs its quotes: they verify under the mock root it writes, with the
/// collateral it writes, through dcap-qvl's production path; the report data is the caller's, and the event
/// log replays to the quoted RTMR3 and names this instance. Without the root (Intel's), they do not verify.
#[tokio::test]
async fn mock_pki_quotes_verify_under_the_written_root_and_collateral() {
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("root.key");
    std::fs::write(&root_file, format!("{ROOT_KEY}\n")).unwrap();
    let seed_file = dir.path().join("pki.seed");
    std::fs::write(&seed_file, "5e".repeat(32)).unwrap();
    let ca = dir.path().join("root-ca.pem");
    let collateral = dir.path().join("collateral.json");
    let mut args = cluster_args(root_file.to_str().unwrap(), "node-1");
    args.extend([
        "--mock-pki-seed-file",
        seed_file.to_str().unwrap(),
        "--write-tdx-root-ca",
        ca.to_str().unwrap(),
        "--write-collateral",
        collateral.to_str().unwrap(),
    ]);
    let sim = Sim::start(dir.path(), "attested", &args);
    let c = client(&sim);
    let info = c.info().await.unwrap();
    let report_data = [0x42; 64];
    let quote = c.get_quote(&report_data).await.unwrap();

    let trust =
        mesh_attest::verify::Trust::from_pem(&std::fs::read_to_string(&ca).unwrap()).unwrap();
    let pinned = mesh_attest::collateral::PinnedCollateral::load(&collateral).unwrap();
    let fmspc = *pinned.fmspcs().next().expect("one FMSPC");
    let collateral = pinned.get(&fmspc).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let facts =
        mesh_attest::verify::verify_quote(&quote.quote, &trust, &collateral, false, now).unwrap();
    assert_eq!(facts.report_data, report_data);
    let evidence = mesh_attest::Evidence::from_dstack(&quote.quote, &quote.event_log).unwrap();
    assert_eq!(
        mesh_attest::replay::replay_rtmr3(&evidence.events).unwrap(),
        facts.rt_mr[3]
    );
    let claims = mesh_attest::replay::claims(&evidence.events).unwrap();
    assert_eq!(hex::encode(claims.instance_id), info.instance_id);

    let refused = mesh_attest::verify::verify_quote(
        &quote.quote,
        &mesh_attest::verify::Trust::intel(),
        &collateral,
        false,
        now,
    );
    assert!(
        refused.is_err(),
        "a mock quote must not verify under Intel's root"
    );
}

/// `--serve-pccs` serves the mock PKI's collateral on Intel's v4 API, and an operator changes its TCB status
/// with a PUT while it runs, as docs/simulator.md shows with curl.
#[tokio::test]
async fn the_mock_pccs_it_serves_takes_a_tcb_status_mid_run() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("root.key");
    std::fs::write(&root_file, format!("{ROOT_KEY}\n")).unwrap();
    let seed_file = dir.path().join("pki.seed");
    std::fs::write(&seed_file, "5e".repeat(32)).unwrap();
    // A free port: bound, then let go for the simulator.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = cluster_args(root_file.to_str().unwrap(), "node-1");
    args.extend([
        "--mock-pki-seed-file",
        seed_file.to_str().unwrap(),
        "--serve-pccs",
        &addr,
    ]);
    let _sim = Sim::start(dir.path(), "pccs", &args);
    let http = |method: &str, path: &str, body: &str| {
        let mut s = std::net::TcpStream::connect(&addr).expect("the mock PCCS answers");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(
        http("GET", "/mock", "")
            .ends_with("{\"tcbStatus\":\"UpToDate\",\"expired\":false,\"down\":false}\n"),
        "it starts UpToDate"
    );
    let said = http("PUT", "/mock/tcb-status", "OutOfDate");
    assert!(said.ends_with("serving OutOfDate collateral\n"), "{said}");
    let fmspc = hex::encode_upper(tdx_mock::MockPki::from_seed([0x5e; 32]).fmspc());
    let tcb = http(
        "GET",
        &format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
        "",
    );
    let body: serde_json::Value =
        serde_json::from_str(tcb.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap();
    assert_eq!(
        body["tcbInfo"]["tcbLevels"][0]["tcbStatus"], "OutOfDate",
        "the platform's own level, signed again: {body}"
    );
}
