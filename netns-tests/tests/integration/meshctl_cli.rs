//! meshctl against a real anvil: each command's effect on-chain, its --json shape, and its errors.
//!
//! Run, after `cargo build -p p2p-agent -p meshctl -p dstack-simulator`: `cargo test -p netns-tests --test integration meshctl_cli:: -- --nocapture` (anvil comes from `scripts/bootstrap`, or set ANVIL).

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::{Address, B256, address};
use netns_tests::in_process::chain::{mined_tx, wallet};
use netns_tests::in_process::meshctl::{APP_ID, Instance, Meshctl, Run, anvil};

mod refusals;

/// A KMS root no instance here derives its keys from: for clusters whose seats no instance binds.
const UNUSED_KMS_ROOT: Address = address!("000000000000000000000000000000000000dEaD");

/// An instance, and meshctl with a cluster deployed for its KMS root whose seat 1 is bound to it
/// ([`Meshctl::deploy_with_seat`]); the cluster's address.
async fn seat_1_bound(anvil: &AnvilInstance) -> (Instance, Meshctl<'_>, Address) {
    let node = Instance::start("node-1").await;
    let mut m = Meshctl::new(anvil);
    let contract = m.deploy_with_seat(&node).await;
    (node, m, contract)
}

/// `meshctl bind --token 1 --binding <binding>`, sent by seat 1's holder (account 1).
fn bind_seat_1(m: &Meshctl<'_>, binding: &str) -> Run {
    m.run(Some(1), &["bind", "--token", "1", "--binding", binding])
}

/// deploy → mint → bind → config → revoke, each visible on-chain through `config show`.
#[test]
fn owner_lifecycle_changes_the_chain() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    let contract = m.deploy(UNUSED_KMS_ROOT);

    let holder = m.address(1).to_string();
    let minted = m
        .run(Some(0), &["mint", "--to", &holder, "--json"])
        .ok()
        .json();
    assert_eq!(minted["tokenId"], 1);
    assert_eq!(minted["overlayIp"], "10.0.1.1");
    assert!(minted["receipt"]["tx"].as_str().unwrap().starts_with("0x"));

    // A seat is bound only with what the instance made, its request on-chain or its binding: naming a seat
    // alone is refused, and so is an instance that asked for nothing.
    let refused = m.run(Some(1), &["bind", "--token", "1", "--json"]).failed();
    assert!(refused.stderr.contains("--instance"), "{}", refused.stderr);
    let refused = m
        .run(
            Some(1),
            &["bind", "--token", "1", "--instance", &"ab".repeat(20)],
        )
        .failed();
    refused.stderr_says(&format!(
        "no request for a seat from instance {} among the newest 256",
        "ab".repeat(20)
    ));

    m.run(
        Some(0),
        &[
            "config",
            "set",
            "--max-nodes",
            "5",
            "--production",
            "true",
            "--add-base-domain",
            "phala.network",
        ],
    )
    .ok();
    let config = m.run(None, &["config", "show", "--json"]).ok().json();
    let address = |v: &serde_json::Value| v.as_str().unwrap().parse::<Address>().unwrap();
    assert_eq!(address(&config["contract"]), contract);
    assert_eq!(address(&config["kmsRoot"]), UNUSED_KMS_ROOT);
    assert_eq!(config["maxNodes"], "5");
    assert_eq!(config["productionMode"], true);
    assert_eq!(config["baseDomains"][0], "phala.network");
    assert_eq!(config["activeSeats"], "1");
    assert_eq!(config["prefix"], "10.0.1.0/24");

    // The holder takes the seat out and brings it back.
    let out = m
        .run(Some(1), &["deactivate", "--token", "1", "--json"])
        .ok()
        .json();
    assert_eq!(out["active"], false);
    let config = m.run(None, &["config", "show", "--json"]).ok().json();
    assert_eq!(
        config["activeSeats"], "0",
        "a deactivated seat does not count"
    );
    m.run(Some(1), &["activate", "--token", "1"]).ok();
    let config = m.run(None, &["config", "show", "--json"]).ok().json();
    assert_eq!(config["activeSeats"], "1");

    let refused = m.run(Some(0), &["revoke", "--token", "1"]).failed();
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    m.run(Some(0), &["revoke", "--token", "1", "--yes"]).ok();
    let config = m.run(None, &["config", "show", "--json"]).ok().json();
    assert_eq!(config["activeSeats"], "0");
    let next = m
        .run(Some(0), &["mint", "--to", &holder, "--json"])
        .ok()
        .json();
    assert_eq!(next["tokenId"], 2, "ids are never reissued");
}

/// A holder binds its seat with the node's binding; it works for that seat and holder only, each mismatch
/// refused before anything is sent; a binding whose evidence names another instance is refused too.
#[tokio::test(flavor = "multi_thread")]
async fn holder_binds_with_the_nodes_binding() {
    let anvil = anvil();
    let node = Instance::start("node-1").await;
    let mut m = Meshctl::new(&anvil);
    m.deploy(node.kms_root);
    m.run(Some(0), &["mint", "--to", &m.address(1).to_string()])
        .ok();
    m.run(Some(0), &["mint", "--to", &m.address(2).to_string()])
        .ok();
    let file = m.binding_file(&node, m.address(1)).await;
    let file = file.to_str().unwrap();

    // On another holder's seat, the binding is refused before anything is sent.
    let out = m
        .run(Some(2), &["bind", "--token", "2", "--binding", file])
        .failed();
    out.stderr_says(&format!("but {} holds seat 2", m.address(2)));
    // Sent by someone who does not hold the seat, the contract refuses it.
    let out = m
        .run(Some(2), &["bind", "--token", "1", "--binding", file])
        .failed();
    out.stderr_says("does not hold seat 1");

    // Its evidence swapped for another instance's genuine evidence: refused off-chain, as agents would
    // refuse it, naming both instances.
    let other = Instance::start("node-2").await;
    let mut forged: mesh_chain::record::NodeBinding =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    forged.evidence = other
        .binding(m.address(1), anvil.chain_id(), m.contract.unwrap())
        .await
        .evidence;
    let dir = tempfile::tempdir().unwrap();
    let forged_file = dir.path().join("forged.json");
    std::fs::write(&forged_file, serde_json::to_string(&forged).unwrap()).unwrap();
    let out = bind_seat_1(&m, forged_file.to_str().unwrap()).failed();
    out.stderr_says(&format!(
        "the evidence is from instance 0x{} but the seat is bound to instance 0x{}",
        other.instance_id, node.instance_id
    ));
    out.stderr_says("(instance-mismatch)");

    let bound = m
        .run(
            Some(1),
            &["bind", "--token", "1", "--binding", file, "--json"],
        )
        .ok()
        .json();
    assert_eq!(bound["instanceId"], node.instance_id);
    assert_eq!(
        bound["node"].as_str().unwrap().to_lowercase(),
        node.identity(0)
            .await
            .node
            .address()
            .to_string()
            .to_lowercase()
    );

    // A binding made for another holder cannot come with a mint to someone else.
    m.run(Some(0), &["config", "set", "--public-minting", "true"])
        .ok();
    let for_holder_1 = m.binding_file(&other, m.address(1)).await;
    let out = m
        .run(
            Some(3),
            &[
                "mint",
                "--to",
                &m.address(3).to_string(),
                "--binding",
                for_holder_1.to_str().unwrap(),
            ],
        )
        .failed();
    out.stderr_says(&format!("but the seat goes to {}", m.address(3)));
}

/// A seatless node asks for a seat on-chain, as its agent does; the owner lists the request, sees that its OS
/// image is not allowed yet, and binds it by its instance id alone, allowing the image the verified quote
/// measures: a seat minted at whatever id comes next. No binding is carried by hand.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_asks_for_a_seat_and_the_owner_binds_it_by_instance() {
    let anvil = anvil();
    let node = Instance::start("node-1").await;
    let mut m = Meshctl::new(&anvil);
    let contract = m.deploy(node.kms_root);
    let (_, os) = netns_tests::in_process::node::image();
    // As before a first boot: the OS image a VM of this size measures is not known yet.
    m.run(Some(0), &["app-auth", "disallow-os", &os.to_string()])
        .ok();
    // Someone else takes seat 1 meanwhile: the request names no seat, so nothing breaks.
    m.run(Some(0), &["mint", "--to", &m.address(3).to_string()])
        .ok();

    let owner = m.address(0);
    let binding = node.binding(owner, anvil.chain_id(), contract).await;
    let cluster = mesh_chain::cluster::Cluster::connect(
        mesh_chain::rpc::Rpcs::one(anvil.endpoint_url()).unwrap(),
        contract,
    )
    .await
    .unwrap();
    let identity = node.identity(0).await;
    let payer: alloy::signers::local::PrivateKeySigner = anvil.keys()[2].clone().into();
    let sent = cluster
        .request_binding(&identity.node, &binding, Some(&payer))
        .await
        .unwrap();
    assert!(
        matches!(sent, mesh_chain::binding::Requested::Sent { from, .. } if from == payer.address()),
        "{sent:?}"
    );
    assert_eq!(
        cluster
            .requested_holder(identity.node.address())
            .await
            .unwrap(),
        Some(owner)
    );

    let listed = m.run(None, &["requests", "--json"]).ok().json();
    let request = &listed["requests"][0];
    assert_eq!(request["instanceId"], node.instance_id, "{listed}");
    assert_eq!(request["verified"], true, "{listed}");
    assert_eq!(request["osAllowed"], false, "{listed}");
    assert_eq!(request["composeAllowed"], true, "{listed}");
    let text = m.run(None, &["requests"]).ok();
    assert!(
        text.stdout.contains(&format!(
            "meshctl bind --instance {} --allow-os",
            node.instance_id
        )),
        "{}",
        text.stdout
    );

    // Without --allow-os, nothing is sent, and the refusal names the flag.
    let out = m
        .run(Some(0), &["bind", "--instance", &node.instance_id])
        .failed();
    out.stderr_says(&format!("does not allow its OS image {os}"))
        .stderr_says("--allow-os");
    let bound = m
        .run(
            Some(0),
            &[
                "bind",
                "--instance",
                &node.instance_id,
                "--allow-os",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(
        bound["tokenId"], 2,
        "the next seat, whatever it is: {bound}"
    );
    assert_eq!(bound["instanceId"], node.instance_id);
    let seat = mesh_chain::contract::DstackClusterNFT::new(contract, wallet(&anvil, 0))
        .tokenOfInstance(node.instance_id.clone())
        .call()
        .await
        .unwrap();
    assert_eq!(seat, alloy::primitives::U256::from(2));
    assert_eq!(
        cluster
            .requested_holder(identity.node.address())
            .await
            .unwrap(),
        None,
        "a binding ends the request"
    );
    let listed = m.run(None, &["requests", "--json"]).ok().json();
    assert_eq!(
        listed["requests"],
        serde_json::json!([]),
        "nothing pending: {listed}"
    );
    let all = m.run(None, &["requests", "--all", "--json"]).ok().json();
    assert_eq!(all["requests"][0]["boundTo"], 2, "{all}");
    assert_eq!(all["requests"][0]["osAllowed"], true, "{all}");
}

/// The ownership moves in two steps: an offer changes nothing until the new owner accepts; only the owner
/// offers, only the one offered accepts, and a multisig gets the exact call to send.
#[test]
fn ownership_moves_only_when_the_new_owner_accepts() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    let contract = m.deploy(UNUSED_KMS_ROOT);
    let (owner, next) = (m.address(0), m.address(4));
    let show = |m: &Meshctl<'_>| m.run(None, &["owner", "show", "--json"]).ok().json();
    assert_eq!(show(&m)["pendingOwner"], serde_json::Value::Null);

    m.run(Some(1), &["owner", "transfer", &next.to_string()])
        .failed()
        .stderr_says(&format!("{owner} owns the cluster, not the signer"));
    let out = m.run(None, &["owner", "accept", "--calldata"]).failed();
    out.stderr_says("offered to nobody");

    m.run(Some(0), &["owner", "transfer", &next.to_string()])
        .ok();
    let shown = show(&m);
    let addr = |v: &serde_json::Value| v.as_str().unwrap().parse::<Address>().unwrap();
    assert_eq!(addr(&shown["owner"]), owner, "an offer changes nothing yet");
    assert_eq!(addr(&shown["pendingOwner"]), next);
    // The owner still rules the app auth meanwhile.
    m.run(
        Some(0),
        &[
            "app-auth",
            "allow-compose",
            &format!("0x{}", "ab".repeat(32)),
        ],
    )
    .ok();

    // What a multisig sends: acceptOwnership() on the cluster, from the pending owner.
    let call = m
        .run(None, &["owner", "accept", "--calldata", "--json"])
        .ok()
        .json();
    assert_eq!(addr(&call["to"]), contract);
    assert_eq!(addr(&call["from"]), next);
    assert_eq!(call["data"], "0x79ba5097", "acceptOwnership()'s selector");

    m.run(Some(1), &["owner", "accept"])
        .failed()
        .stderr_says(&format!("offered to {next}, not to the signer"));
    m.run(Some(4), &["owner", "accept"]).ok();
    let shown = show(&m);
    assert_eq!(addr(&shown["owner"]), next);
    assert_eq!(shown["pendingOwner"], serde_json::Value::Null);
    // The old owner no longer rules; the new one does, the app auth included.
    m.run(Some(0), &["mint", "--to", &owner.to_string()])
        .failed();
    m.run(
        Some(4),
        &[
            "app-auth",
            "allow-compose",
            &format!("0x{}", "cd".repeat(32)),
        ],
    )
    .ok();
}

/// A registration signed by a simulated instance is relayed, then listed by `peers` with its proof verified.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_registration_is_listed_with_a_verified_proof() {
    let anvil = anvil();
    let (node, m, contract) = seat_1_bound(&anvil).await;

    let reg = node
        .sign(
            1,
            B256::repeat_byte(7),
            "192.0.2.10:51820",
            1,
            anvil.chain_id(),
            contract,
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registration.json");
    std::fs::write(&file, serde_json::to_string_pretty(&reg).unwrap()).unwrap();

    // A forged copy (endpoint changed after signing) is refused before anything is sent.
    let mut forged = serde_json::to_value(&reg).unwrap();
    forged["endpoint"] = "203.0.113.66:51820".into();
    let forged_file = dir.path().join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let refused = m
        .run(Some(2), &["relay", forged_file.to_str().unwrap()])
        .failed();
    assert!(
        refused.stderr.contains("does not verify"),
        "{}",
        refused.stderr
    );

    let relayed = m
        .run(Some(2), &["relay", file.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(relayed["tokenId"], 1);

    let peers = m.run(None, &["peers", "--json"]).ok().json();
    let p = &peers["peers"][0];
    assert_eq!(p["tokenId"], 1);
    assert_eq!(p["instanceId"], node.instance_id);
    assert_eq!(p["overlayIp"], "10.0.1.1");
    assert_eq!(p["endpoint"], "192.0.2.10:51820");
    assert_eq!(
        p["wgPublicKey"],
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
    );
    assert_eq!(p["proofVerified"], true, "{peers}");
    let text = m.run(None, &["peers"]).ok().stdout;
    assert!(text.contains("10.0.1.1") && text.contains(" ok "), "{text}");

    // The same registration again is a replay: the contract's reason comes back in words.
    let replay = m.run(Some(2), &["relay", file.to_str().unwrap()]).failed();
    assert!(
        replay
            .stderr
            .contains("nonce 1 is not above seat 1's last nonce 1"),
        "{}",
        replay.stderr
    );
}

/// `fund` moves ETH and reports the new balance.
#[test]
fn fund_sends_eth() {
    let anvil = anvil();
    let m = Meshctl::new(&anvil);
    let to = "0x9087e5b4fa2b87c53a10f6459f7ff84f590bba0c";
    let out = m
        .run(Some(0), &["fund", to, "--amount", "0.25", "--json"])
        .ok()
        .json();
    assert_eq!(out["balanceEth"], "0.250000000000000000");
}

/// Boots are judged as dstack's KMS would: allowed once the compose hash is, refused with the reason before.
#[test]
fn app_auth_check_judges_a_boot() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    m.deploy(UNUSED_KMS_ROOT);
    let compose = "ea549f02e1a25fabd1cb788380e033ec5461b2ffe4328d753642cf035452e48b";
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot.json");
    std::fs::write(
        &boot,
        serde_json::json!({
            "appId": APP_ID, "composeHash": compose, "instanceId": "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a",
            "deviceId": "00", "mrAggregated": "", "mrSystem": "", "osImageHash": "", "tcbStatus": "UpToDate", "advisoryIds": []
        })
        .to_string(),
    )
    .unwrap();
    let check = || {
        m.run(
            None,
            &["app-auth", "check", boot.to_str().unwrap(), "--json"],
        )
    };
    let refused = check().failed().json();
    assert_eq!(refused["isAllowed"], false);
    assert_eq!(refused["reason"], "Compose hash not allowed");
    m.run(
        Some(0),
        &["app-auth", "allow-compose", &format!("0x{compose}")],
    )
    .ok();
    let allowed = check().ok().json();
    assert_eq!(allowed["isAllowed"], true);
}

/// `--version` says which code runs: the version and the commit both binaries were built from.
#[test]
fn both_binaries_name_the_commit_they_were_built_from() {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git, to read the commit under test");
    assert!(out.status.success(), "git rev-parse failed: {out:?}");
    let head = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    for bin in ["p2p-agent", "meshctl"] {
        let out = std::process::Command::new(netns_tests::run::process::workspace_bin(bin))
            .arg("--version")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            shown.trim(),
            format!("{bin} {} (commit {head})", env!("CARGO_PKG_VERSION")),
            "{bin} --version"
        );
    }
}

/// Seat 3's holder claims instance D's id with a sibling's (B's) chain and quote, which the contract cannot
/// tell from D's own; the owner's mint of D's genuine binding then fails. `meshctl dispute` checks the quote
/// first: it refuses to dispute seat 2's genuine binding, and from seats 1 and 2 (two of three, the threshold)
/// releases seat 3's. D's binding then lands, with no owner's revocation, and seat 3 may not claim D again.
#[tokio::test(flavor = "multi_thread")]
async fn two_seats_of_three_release_a_squatted_instance_with_meshctl_dispute() {
    use alloy::primitives::U256;
    use mesh_chain::contract::{DstackClusterNFT, binding_arg};

    let anvil = anvil();
    let (_a, m, contract) = seat_1_bound(&anvil).await;
    let b = Instance::start("node-2").await;
    let d = Instance::start("node-4").await;
    let file_b = m.binding_file(&b, m.address(2)).await;
    let mint = |to: usize, binding: Option<&std::path::Path>| {
        let to = m.address(to).to_string();
        let mut args = vec!["mint".to_owned(), "--to".into(), to];
        if let Some(b) = binding {
            args.extend(["--binding".into(), b.display().to_string()]);
        }
        m.run(
            Some(0),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    mint(2, Some(&file_b)).ok();
    mint(3, None).ok();
    let forged = b
        .sibling_binding(&d.instance_id, m.address(3), anvil.chain_id(), contract)
        .await;
    let holder_3 = DstackClusterNFT::new(contract, wallet(&anvil, 3));
    netns_tests::in_process::chain::mined(
        holder_3.bindInstance(U256::from(3), binding_arg(&forged)),
    )
    .await;
    let file_d = m.binding_file(&d, m.address(4)).await;
    mint(4, Some(&file_d))
        .failed()
        .stderr_says("is already bound to seat 3");

    m.run(Some(1), &["dispute", "--token", "1", "--against", "2"])
        .failed()
        .stderr_says("its binding is genuine");
    let first = m
        .run(
            Some(1),
            &["dispute", "--token", "1", "--against", "3", "--json"],
        )
        .ok()
        .json();
    assert_eq!(
        (
            &first["released"],
            &first["disputes"],
            &first["threshold"],
            &first["refusal"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!("instance-mismatch")
        ),
        "{first}"
    );
    let second = m
        .run(
            Some(2),
            &["dispute", "--token", "2", "--against", "3", "--json"],
        )
        .ok()
        .json();
    assert_eq!(second["released"], true, "{second}");

    let again = holder_3
        .bindInstance(U256::from(3), binding_arg(&forged))
        .call()
        .await
        .map_err(|e| mesh_chain::error::ChainError::from_call("bindInstance", e).to_string())
        .unwrap_err();
    assert!(
        again.contains("ClusterClaimDisputed")
            && again.contains(&format!(
                "meshctl clear-claim --token 3 --instance {}",
                d.instance_id
            )),
        "{again}"
    );
    mint(4, Some(&file_d)).ok();

    // Only the owner lets seat 3 claim D again; then what stops it is D's genuine binding, not the release.
    let clear = ["clear-claim", "--token", "3", "--instance", &d.instance_id];
    m.run(Some(3), &clear)
        .failed()
        .stderr_says("OwnableUnauthorizedAccount");
    let cleared = m
        .run(Some(0), &[clear.as_slice(), &["--json"]].concat())
        .ok()
        .json();
    assert_eq!(cleared["cleared"], true, "{cleared}");
    let after = holder_3
        .bindInstance(U256::from(3), binding_arg(&forged))
        .call()
        .await
        .map_err(|e| mesh_chain::error::ChainError::from_call("bindInstance", e).to_string())
        .unwrap_err();
    assert!(after.contains("ClusterInstanceAlreadyBound"), "{after}");
}

/// The owner sets the cluster's TCB policy with `meshctl app-auth tcb`, and reads it back as agents will: the
/// statuses (UpToDate always), the evaluation data number, the advisories, the grace and drop periods; and
/// `meshctl peers` judges the seats under it. A revoked status, a malformed advisory and anyone but the owner
/// are refused, and clearing hands the choice back to each agent's flags.
#[tokio::test(flavor = "multi_thread")]
async fn the_owner_sets_the_tcb_policy_and_reads_it_back() {
    let anvil = anvil();
    let (node, m, contract) = seat_1_bound(&anvil).await;
    node.register(&anvil, contract, "192.0.2.1:51820", "", 2)
        .await;
    let none = m
        .run(None, &["app-auth", "tcb", "show", "--json"])
        .ok()
        .json();
    assert_eq!(none["policy"], serde_json::Value::Null, "{none}");

    m.run(
        Some(0),
        &[
            "app-auth",
            "tcb",
            "set",
            "--status",
            "SWHardeningNeeded,OutOfDate",
            "--min-evaluation-data-number",
            "18",
            "--grace",
            "1h",
            "--drop",
            "2d",
        ],
    )
    .ok();
    m.run(
        Some(0),
        &["app-auth", "tcb", "allow-advisory", "INTEL-SA-00837"],
    )
    .ok();
    m.run(
        Some(0),
        &["app-auth", "tcb", "allow-advisory", "INTEL-SA-00615"],
    )
    .ok();
    m.run(
        Some(0),
        &["app-auth", "tcb", "disallow-advisory", "INTEL-SA-00837"],
    )
    .ok();
    let set = m
        .run(None, &["app-auth", "tcb", "show", "--json"])
        .ok()
        .json();
    assert_eq!(
        set["policy"],
        serde_json::json!({
            "statuses": ["UpToDate", "SWHardeningNeeded", "OutOfDate"],
            "minEvaluationDataNumber": 18,
            "advisories": ["INTEL-SA-00615"],
            "graceSecs": 3600,
            "dropSecs": 172800,
        }),
        "{set}"
    );
    // meshctl judges a seat under the policy as agents do: the mock's collateral is of evaluation 17.
    let peers = m.run(None, &["peers", "--json"]).failed().json();
    let error = peers["peers"][0]["attestationError"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("evaluation data number is 17") && error.contains("(tcb-policy)"),
        "{peers}"
    );

    m.run(
        Some(0),
        &[
            "app-auth", "tcb", "set", "--status", "Revoked", "--grace", "0", "--drop", "0",
        ],
    )
    .failed()
    .stderr_says("never accepted");
    m.run(Some(0), &["app-auth", "tcb", "allow-advisory", "intel sa"])
        .failed()
        .stderr_says("AppAuthInvalidAdvisoryId");
    m.run(
        Some(1),
        &["app-auth", "tcb", "set", "--grace", "0", "--drop", "0"],
    )
    .failed()
    .stderr_says("AppAuthNotClusterOwner");

    m.run(Some(0), &["app-auth", "tcb", "clear"]).ok();
    let cleared = m
        .run(None, &["app-auth", "tcb", "show", "--json"])
        .ok()
        .json();
    assert_eq!(cleared["policy"], serde_json::Value::Null, "{cleared}");
    m.run(None, &["peers"]).ok();
}
