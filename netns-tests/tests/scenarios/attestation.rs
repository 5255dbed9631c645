//! A seat whose evidence does not prove its instance is never configured. In a running mesh of nodes 1 to 3
//! (node 2 is the attacker, a sibling instance of the same app; nodes 4 and 5 are instances with no agent),
//! node 2 gets seats onto the chain that the contract accepts, because the contract cannot check a quote:
//! - **a sibling's evidence**: seat 4 bound to node 4's instance, but with node 2's own node key (its GetKey
//!   chain names node 4's instance, which dstack's per-app GetKey allows) and node 2's own genuine quote;
//! - **stolen evidence**: seat 5 bound to node 5's instance with node 2's node key and node 5's genuine
//!   evidence, as published in its binding.
//!
//! This is what every agent sees when the seat's holder colludes with a sibling. An agent, node 2's own
//! included, must refuse both seats with the named reason (`instance-mismatch`, `report-data-mismatch`) and
//! configure neither; and since the quote itself shows the false claim, the agents dispute both bindings
//! (`DstackClusterElection.disputeBinding`) by themselves, and f + 1 of the active seats (two here) release them
//! within `RELEASE_BOUND`, with no owner's hand. (An agent that reads the binding and its release in
//! one range never sees the seat bound: two refusals of each seat at least are required, not three.) Node 2's records for the released seats then revert, and node
//! 4's genuine binding, which the squat locked out, lands. The tunnel between nodes 1 and 3 must not drop a
//! ping meanwhile, and `meshctl mint` refuses both forged bindings before sending anything.
//!
//! Run as root, after building the binaries it runs (this crate's tests do not build them):
//!
//! ```sh
//! cargo build -p p2p-agent -p meshctl -p dstack-simulator
//! cargo test -p netns-tests --test scenarios attestation:: -- --nocapture
//! ```

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use mesh_chain::record::{NodeBinding, PeerRecord};
use netns_tests::net::wg::test_key;
use netns_tests::prelude::*;
use netns_tests::system::attack::{
    CHAIN_ID, mint_with, on_chain, own_evidence, send_registration, sibling_node_key,
};

const NODES: usize = 5;
const SEATS: usize = 3;
const ATTACKER: usize = 2;
/// How soon the members release a binding whose quote shows another instance, as the README's security model
/// states it: a poll to see the binding, a pass to check its quote, and f + 1 disputes mined.
const RELEASE_BOUND: Duration = Duration::from_secs(30);

#[test]
fn seats_whose_evidence_names_another_instance_or_node_are_refused_by_every_agent_and_released_by_their_disputes()
 {
    require_mesh_prerequisites();
    let steps = Steps::new("attestation");
    let lan = Lan::new(NODES);
    let cluster = Cluster::deploy_seats(&lan, SEATS);
    let contract = Address::from_str(&cluster.contract).expect("contract address");
    let (agents, keys) = Agent::builder(&cluster).mesh(1..=SEATS);
    for a in &agents {
        let (status, peers) = a.status();
        let own = status.node.attestation.expect("its own attestation");
        assert!(own.verified, "node {}'s own evidence: {own:?}", a.index);
        assert!(
            peers.iter().all(|p| p
                .attestation
                .as_ref()
                .is_some_and(|x| x.verified && x.tcb_status.as_deref() == Some("UpToDate"))),
            "every peer of node {} is attested: {peers:?}",
            a.index
        );
    }
    steps.step("3-node mesh healthy, every seat attested (UpToDate)");

    std::thread::scope(|scope| {
        // Nodes 1 and 3 keep talking throughout.
        let pinger =
            scope.spawn(|| ping(lan.node(1), overlay_ip(3), 150, Duration::from_millis(100)));

        let sibling_key = sibling_node_key(&cluster, ATTACKER, &cluster.sims[3].instance_id);
        let node = sibling_key.address();
        let holder = Address::from_str(&account_address(4)).expect("holder");
        // Seat 4: node 2's own quote, for node 2's node key, offered as node 4's instance's.
        let siblings = sibling_key
            .bind(
                holder,
                own_evidence(&cluster, ATTACKER, contract, node),
                CHAIN_ID,
                contract,
            )
            .expect("the sibling signs the binding");
        // Seat 5: node 5's genuine evidence (made for its own node key) under node 2's node key.
        let honest_binding = cluster.binding_file(5, &account_address(5));
        let honest: NodeBinding =
            serde_json::from_slice(&std::fs::read(&honest_binding).expect("node 5's binding"))
                .expect("binding JSON");
        let stolen = sibling_node_key(&cluster, ATTACKER, &cluster.sims[4].instance_id)
            .bind(
                Address::from_str(&account_address(5)).expect("holder"),
                honest.evidence.clone(),
                CHAIN_ID,
                contract,
            )
            .expect("the sibling signs the binding");
        let mut last_bound = Instant::now();
        for (what, binding, seat, kind) in [
            ("a sibling's evidence", &siblings, 4u64, "instance-mismatch"),
            ("stolen evidence", &stolen, 5, "report-data-mismatch"),
        ] {
            let holder = account_address(seat as usize);
            let file = cluster.dir().join(format!("forged-binding-{seat}.json"));
            std::fs::write(&file, serde_json::to_vec(binding).expect("JSON")).expect("write");
            let out = cluster.meshctl_output(
                0,
                &[
                    "mint",
                    "--to",
                    &holder,
                    "--binding",
                    file.to_str().expect("utf-8"),
                ],
            );
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && said.contains(kind),
                "meshctl mint must refuse {what} as {kind}: {said}"
            );
            steps.step(&format!(
                "meshctl mint refuses {what} ({kind}), sends nothing"
            ));
            mint_with(
                &lan.switch,
                contract,
                Address::from_str(&holder).expect("holder"),
                binding,
            );
            last_bound = Instant::now();
        }
        steps.step("the owner's contract accepts both bindings: it stores the evidence hash, it cannot verify a quote");

        // Three of the five active seats (f + 1) dispute each false claim: the agents do, by themselves.
        let want = [(4u64, "instance-mismatch"), (5, "report-data-mismatch")];
        let bound = |seat: u64| {
            on_chain(&lan.switch, contract, async move |c| {
                c.boundBlockOf(U256::from(seat))
                    .call()
                    .await
                    .expect("boundBlockOf")
            }) != 0
        };
        wait_until(
            "the agents' disputes to release seats 4 and 5",
            RELEASE_BOUND,
            Duration::from_millis(250),
            || want.iter().all(|(seat, _)| !bound(*seat)),
            || tails(&agents),
        );
        steps.step(&format!(
            "the agents disputed both bindings and the contract released them, {:.1}s after the last was bound (bound: {}s)",
            last_bound.elapsed().as_secs_f64(),
            RELEASE_BOUND.as_secs()
        ));
        // Two disputes release a binding (f + 1 of the active seats): an agent that reads the range holding
        // both the binding and its release never sees it bound, and has nothing to refuse.
        for (seat, kind) in want {
            let refused_by: Vec<usize> = agents
                .iter()
                .filter(|a| {
                    a.log_lines("refused this seat's attestation")
                        .iter()
                        .any(|l| l.contains(&format!("seat={seat} ")) && l.contains(kind))
                })
                .map(|a| a.index)
                .collect();
            assert!(
                refused_by.len() >= 2,
                "seat {seat} refused as {kind} by nodes {refused_by:?}, not by two at least\n{}",
                tails(&agents)
            );
        }
        for a in &agents {
            let (_, peers) = a.status();
            assert!(
                peers.iter().all(|p| p.token_id <= SEATS as u64),
                "node {} configured a refused seat: {peers:?}",
                a.index
            );
        }
        let disputed = agents
            .iter()
            .map(|a| a.log_lines("dispute mined").len())
            .sum::<usize>();
        assert!(
            disputed >= 2 * 2,
            "two disputes at least released each binding (the third may find it gone): {disputed}\n{}",
            tails(&agents)
        );
        steps.step("the agents refused seat 4 (instance-mismatch) and seat 5 (report-data-mismatch), two at least each, configured neither, and disputed them");

        for seat in [4u64, 5] {
            let record = PeerRecord {
                tokenId: U256::from(seat),
                instanceId: cluster.sims[seat as usize - 1].instance_id.clone(),
                wgPublicKey: B256::from(*test_key(60 + seat as u8).public_key().as_bytes()),
                endpoint: format!("{}:{WG_PORT}", lan_ip(ATTACKER)),
                gatewayUrl: String::new(),
                nonce: 1,
            };
            let signed = sibling_node_key(&cluster, ATTACKER, &record.instanceId)
                .sign(record, CHAIN_ID, contract)
                .expect("the sibling signs the record");
            let (error, _, _) = send_registration(&lan.switch, contract, &signed);
            assert!(
                !error.starts_with("no revert"),
                "seat {seat}'s record, after its binding was released: {error}"
            );
        }
        steps.step("node 2's records for seats 4 and 5 revert: the seats are bound to nothing");

        // Node 4's instance is free: its genuine binding, which the squat would have refused, lands.
        let genuine = cluster.binding_file(4, &account_address(4));
        let out = cluster.meshctl_output(
            0,
            &[
                "mint",
                "--to",
                &account_address(4),
                "--binding",
                genuine.to_str().expect("utf-8"),
            ],
        );
        assert!(
            out.status.success(),
            "node 4's genuine binding: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let instance = cluster.sims[3].instance_id.clone();
        let seat = on_chain(&lan.switch, contract, async move |c| {
            c.tokenOfInstance(instance)
                .call()
                .await
                .expect("tokenOfInstance")
        });
        assert_eq!(seat, U256::from(6), "node 4's instance holds the new seat");
        steps.step(
            "node 4's genuine binding lands on seat 6: the squat no longer locks its instance out",
        );

        let (sent, received) = pinger.join().expect("pinger");
        assert_eq!(
            received, sent,
            "node 1 lost pings to node 3 during the attack"
        );
        steps.step(&format!(
            "node 1 -> node 3: {received}/{sent} pings answered throughout"
        ));
    });
    wait_full_mesh(&agents, &keys);
    assert_no_unexpected_warnings(&agents);
}

/// The agents warn of each refusal of a forged seat once at most (an agent that read a binding and its
/// release in one range never saw it bound); nothing else.
fn assert_no_unexpected_warnings(agents: &[Agent<'_>]) {
    for a in agents {
        let other: Vec<String> = a
            .warnings()
            .into_iter()
            .filter(|w| !w.contains("refused this seat's attestation"))
            .collect();
        assert!(other.is_empty(), "node {} warned: {other:#?}", a.index);
        let refusals = a.log_lines("refused this seat's attestation");
        let of = |seat: u64| {
            refusals
                .iter()
                .filter(|l| l.contains(&format!("seat={seat} ")))
                .count()
        };
        assert!(
            of(4) <= 1 && of(5) <= 1 && of(4) + of(5) == refusals.len(),
            "node {} warns once at most per forged seat, and of no other: {refusals:#?}",
            a.index
        );
    }
}
