//! What meshctl refuses, and how it says so: errors that name what is wrong and what to do, with a failing
//! exit code; checks that fail on what agents would refuse; the older environment names and conflicts.

use super::*;

/// Deploys raw init code from anvil account 9 and returns the new contract's address.
async fn deploy_bytecode(anvil: &AnvilInstance, code: &str) -> Address {
    use alloy::network::TransactionBuilder;
    let tx = alloy::rpc::types::TransactionRequest::default()
        .with_deploy_code(alloy::hex::decode(code).unwrap());
    let receipt = mined_tx(&wallet(anvil, 9), tx).await;
    receipt.contract_address.expect("a contract was created")
}

/// Errors name what is wrong and what to do; exit codes are non-zero.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_clear_and_fail_the_exit_code() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);

    // No signer.
    let out = m
        .run(
            None,
            &[
                "deploy",
                "--kms-root",
                &UNUSED_KMS_ROOT.to_string(),
                "--app-id",
                APP_ID,
            ],
        )
        .failed();
    out.stderr_says("needs a signer");

    // An address with no code, detected before sending.
    m.contract = Some(m.address(5));
    let out = m
        .run(Some(0), &["mint", "--to", &m.address(1).to_string()])
        .failed();
    out.stderr_says("no contract at");

    // A contract that is not a cluster, detected before sending: it answers 42 to every call.
    let other = deploy_bytecode(&anvil, "0x600a600c600039600a6000f3602a60005260206000f3").await;
    m.contract = Some(other);
    let out = m
        .run(Some(0), &["mint", "--to", &m.address(1).to_string()])
        .failed();
    out.stderr_says("is not a DstackClusterNFT cluster");

    // A revert, decoded with its hint.
    m.deploy(UNUSED_KMS_ROOT);
    let out = m
        .run(Some(4), &["mint", "--to", &m.address(4).to_string()])
        .failed();
    out.stderr_says("may not mint");
    assert!(
        out.stderr.contains("public-minting"),
        "hint: {}",
        out.stderr
    );
    m.run(Some(0), &["mint", "--to", &m.address(1).to_string()])
        .ok();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"instance_id\": \"node-1\"}").unwrap();
    let out = bind_seat_1(&m, garbage.to_str().unwrap()).failed();
    out.stderr_says(
        "the binding is not what a seatless agent or `p2p-agent identity --bind-holder` prints",
    );
    let out = bind_seat_1(&m, "/nonexistent/binding.json").failed();
    out.stderr_says("/nonexistent/binding.json");

    // A revert of the app auth (where the gateway domains live) is decoded too, with its hint.
    let out = m
        .run(
            Some(0),
            &["config", "set", "--remove-base-domain", "nope.org"],
        )
        .failed();
    out.stderr_says("\"nope.org\" is not an allowed base domain");
    out.stderr_says("meshctl config show");

    // An address a digit short is named by its length, not by the hex decoder's "odd number of digits".
    let short = &m.address(1).to_string()[..41];
    let out = m.run(Some(0), &["mint", "--to", short]).failed();
    out.stderr_says("it has 39 hex digits, and an address has 40");
    assert!(!out.stderr.contains("odd number"), "{}", out.stderr);

    // An RPC that nothing answers at: each cause once, a hint, and the key in its URL never shown.
    let key = "0123456789abcdef0123456789abcdef";
    let dead = format!("http://127.0.0.1:9/v3/{key}");
    let out = m.run_via(&dead, None, &["peers"]).failed();
    out.stderr_says("hint: nothing answered at the RPC URL: check --rpc-url");
    assert_eq!(
        out.stderr.matches("error sending request").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(key), "{}", out.stderr);
}

/// A seat whose record does not verify off-chain (here an RPC serves its event with the record signature
/// re-encoded, as a contract that accepted both encodings stored it) makes `peers` fail, naming the fix.
#[tokio::test(flavor = "multi_thread")]
async fn peers_fails_on_a_record_agents_refuse_and_names_the_fix() {
    let anvil = anvil();
    let (node, m, contract) = seat_1_bound(&anvil).await;
    node.register(&anvil, contract, "192.0.2.1:51820", "", 2)
        .await;
    m.run(None, &["peers"]).ok();

    let proxy = netns_tests::in_process::rpc_proxy::RpcProxy::start(anvil.endpoint().as_str());
    netns_tests::in_process::rpc_proxy::reencode_record_signatures(&proxy, "re-encode", |_| true);
    let out = m.run_via(proxy.url(), None, &["peers"]).failed();
    for want in [
        "FAILED",
        "v must be 27 or 28",
        "fix: every agent refuses seat 1's record",
        "p2p-agent register",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in:\n{}", out.stdout);
    }
    let json = m
        .run_via(proxy.url(), None, &["peers", "--json"])
        .failed()
        .json();
    assert_eq!(json["peers"][0]["proofVerified"], false);
    assert!(
        json["peers"][0]["fix"]
            .as_str()
            .unwrap()
            .contains("next nonce")
    );
}

/// Disallowing the compose hash or OS image a seat in the mesh runs is refused, naming the seat, unless
/// `--yes`; what no seat runs is disallowed at once.
#[tokio::test(flavor = "multi_thread")]
async fn disallowing_what_a_seat_runs_needs_yes() {
    let anvil = anvil();
    let (node, m, contract) = seat_1_bound(&anvil).await;
    node.register(&anvil, contract, "192.0.2.1:51820", "", 2)
        .await;
    let (compose, os) = netns_tests::in_process::node::image();
    let out = m
        .run(
            Some(0),
            &["app-auth", "disallow-compose", &compose.to_string()],
        )
        .failed();
    out.stderr_says("seat(s) 1 run compose hash");
    out.stderr_says("or pass --yes");
    let out = m
        .run(Some(0), &["app-auth", "disallow-os", &os.to_string()])
        .failed();
    out.stderr_says("seat(s) 1 run OS image");
    let unused = format!("0x{}", "ab".repeat(32));
    m.run(Some(0), &["app-auth", "disallow-compose", &unused])
        .ok();
    let out = m
        .run(
            Some(0),
            &["app-auth", "disallow-os", &os.to_string(), "--yes"],
        )
        .ok();
    assert!(
        out.stderr.contains("every agent refuses them"),
        "{}",
        out.stderr
    );
}

/// Without collateral, `peers` says its own check failed and how to give it the agents' trust settings; it
/// does not say that every agent refuses the seat, which only meshctl's settings decided.
#[tokio::test(flavor = "multi_thread")]
async fn peers_without_collateral_blames_its_own_check_and_names_the_trust_flags() {
    let anvil = anvil();
    let (node, m, contract) = seat_1_bound(&anvil).await;
    node.register(&anvil, contract, "192.0.2.1:51820", "", 2)
        .await;
    let p = &m.run(None, &["peers", "--json"]).ok().json()["peers"][0];
    assert!(p["attestationFix"].is_null(), "{p}");

    // A PCCS that refuses every connection, on loopback, in place of the pinned collateral.
    let no_collateral = [
        ("DSTACK_MESH_TDX_COLLATERAL_FILE", None),
        ("DSTACK_MESH_PCCS_URL", Some("http://127.0.0.1:9")),
    ];
    let out = m
        .run_with(
            &anvil.endpoint(),
            None,
            &["peers", "--json"],
            &no_collateral,
        )
        .failed();
    let p = &out.json()["peers"][0];
    let error = p["attestationError"].as_str().unwrap_or_default();
    let fix = p["attestationFix"].as_str().unwrap_or_default();
    assert!(error.contains("(collateral)"), "{p}");
    for want in [
        "meshctl's own check",
        "--pccs-url",
        "--tdx-collateral-file",
        "--tdx-root-ca",
    ] {
        assert!(fix.contains(want), "{want:?} in {fix}");
    }
    assert!(!fix.contains("every agent"), "{fix}");
    let text = m
        .run_with(&anvil.endpoint(), None, &["peers"], &no_collateral)
        .failed()
        .stdout;
    assert!(text.contains("does not pass meshctl's check"), "{text}");
    assert!(!text.contains("refused by every agent"), "{text}");
}

/// The older variable names (`RPC_URL`, `CLUSTER_CONTRACT`, `PRIVATE_KEY`, …) still work; set beside their
/// `DSTACK_MESH_*` name with another value, they are refused before anything is sent, naming both and not
/// the values.
#[test]
fn older_environment_names_still_work_and_conflicts_are_refused() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    let contract = m.deploy(UNUSED_KMS_ROOT);
    let key = alloy::hex::encode(anvil.keys()[0].to_bytes());
    let older = Meshctl::new(&anvil);
    // The older names are listed once, under meshctl's own --help; a subcommand's help points there.
    let top = m.run(None, &["--help"]).ok().stdout;
    assert!(top.contains("These older names are still read"), "{top}");
    let sub = m.run(None, &["peers", "--help"]).ok().stdout;
    assert!(!sub.contains("These older names are still read"), "{sub}");
    assert!(
        sub.contains("`meshctl --help` lists the older names"),
        "{sub}"
    );

    // Everything under the older names only: the RPC, the cluster and the signer.
    let out = older
        .run_with(
            &anvil.endpoint(),
            None,
            &["mint", "--to", &m.address(1).to_string(), "--json"],
            &[
                ("DSTACK_MESH_RPC_URL", None),
                ("RPC_URL", Some(&anvil.endpoint())),
                ("CLUSTER_CONTRACT", Some(&contract.to_string())),
                ("PRIVATE_KEY", Some(&key)),
            ],
        )
        .ok()
        .json();
    assert_eq!(out["tokenId"].as_u64(), Some(1), "{out}");

    // Two names of one variable that disagree.
    m.contract = Some(contract);
    let out = m
        .run_with(
            &anvil.endpoint(),
            Some(0),
            &["mint", "--to", &m.address(2).to_string()],
            &[("PRIVATE_KEY", Some("0x0123-a-secret"))],
        )
        .failed();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("PRIVATE_KEY and DSTACK_MESH_PRIVATE_KEY are both set")
            && !out.stderr.contains("a-secret"),
        "{}",
        out.stderr
    );
    let config = m.run(None, &["config", "show", "--json"]).ok().json();
    assert_eq!(config["lastTokenId"], "1", "nothing was minted: {config}");
}
