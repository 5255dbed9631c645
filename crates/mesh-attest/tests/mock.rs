//! The checks one by one, on evidence signed by the mock DCAP PKI (`tdx-mock`): a good node passes,
//! and each way of getting it wrong is refused with its own name.

use alloy_primitives::Address;
use mesh_attest::evidence::DSTACK_RUNTIME_EVENT_TYPE;
use mesh_attest::replay::{event_digest, replay_rtmr3};
use mesh_attest::{
    Allowed, Evidence, Expected, Policy, QuoteCollateralV3, Refusal, ReplayError, RuntimeEvent,
    TcbStatus, Trust, VerdictCache, os_measurement, report_data, verify,
};
use tdx_mock::{CollateralOptions, MockPki, TdInput};

const SEED: [u8; 32] = [0x4d; 32];
/// 2025-10-09T08:53:20Z.
const NOW: u64 = 1_760_000_000;
const DAY: u64 = 86_400;

const CHAIN: u64 = 8453;
const CONTRACT: Address = Address::repeat_byte(0xcc);
const NODE: Address = Address::repeat_byte(0x0a);
const OTHER_NODE: Address = Address::repeat_byte(0x0b);

const APP: [u8; 20] = [0xa1; 20];
const COMPOSE: [u8; 32] = [0xc0; 32];
const INSTANCE: [u8; 20] = [0x1d; 20];
const OTHER_INSTANCE: [u8; 20] = [0x2d; 20];
const KMS_ID: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

const MRTD: [u8; 48] = [0x11; 48];
const RTMR0: [u8; 48] = [0x20; 48];
const RTMR1: [u8; 48] = [0x21; 48];
const RTMR2: [u8; 48] = [0x22; 48];

/// dstack's boot sequence into RTMR3, with this test's KMS as key provider.
fn boot_log(app: [u8; 20], compose: [u8; 32], instance: [u8; 20]) -> Vec<RuntimeEvent> {
    mesh_attest::testing::boot_log_from_kms(app, compose, instance, &KMS_ID)
}

fn node_report_data(node: Address) -> [u8; 64] {
    report_data(CHAIN, CONTRACT, node)
}

/// A TD whose RTMR3 is what `measured` extends it to, quoting `report_data`.
fn td(measured: &[RuntimeEvent], report_data: [u8; 64]) -> TdInput {
    let rtmr3 =
        replay_rtmr3(measured).expect("the measured log has no supplied digests to disagree");
    TdInput::new(MRTD, [RTMR0, RTMR1, RTMR2, rtmr3], report_data)
}

/// Evidence for a CVM that measured `events` into RTMR3 and publishes them as they are.
fn evidence_of(pki: &MockPki, events: Vec<RuntimeEvent>, report_data: [u8; 64]) -> Evidence {
    Evidence {
        quote: pki.quote(&td(&events, report_data)),
        events,
    }
}

struct World {
    pki: MockPki,
    trust: Trust,
    policy: Policy,
    collateral: QuoteCollateralV3,
}

impl World {
    fn new() -> Self {
        let pki = MockPki::from_seed(SEED);
        let trust = Trust::from_der(pki.root_ca_der()).unwrap();
        let mut policy = Policy::new(APP);
        policy.compose_hashes = [COMPOSE].into_iter().collect();
        policy.os = [os_measurement(&MRTD, &RTMR0, &RTMR1, &RTMR2)]
            .into_iter()
            .collect();
        policy.key_provider.id = Some(KMS_ID.to_vec());
        let collateral = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
        Self {
            pki,
            trust,
            policy,
            collateral,
        }
    }

    /// The honest node: instance INSTANCE, node key NODE.
    fn good(&self) -> Evidence {
        evidence_of(
            &self.pki,
            boot_log(APP, COMPOSE, INSTANCE),
            node_report_data(NODE),
        )
    }

    fn check(
        &self,
        evidence: &Evidence,
        expected: &Expected,
    ) -> Result<mesh_attest::Verdict, Refusal> {
        verify(
            evidence,
            expected,
            &self.policy,
            &self.trust,
            &self.collateral,
            NOW,
        )
    }
}

fn seat() -> Expected {
    Expected {
        instance_id: INSTANCE,
        report_data: node_report_data(NODE),
    }
}

fn kind<T: std::fmt::Debug>(result: &Result<T, Refusal>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(refusal) => refusal.kind(),
    }
}

#[test]
fn good_mock_evidence_verifies() {
    let world = World::new();
    let evidence = world.good();
    let verdict = world
        .check(&evidence, &seat())
        .expect("the honest node passes");
    assert_eq!(verdict.instance_id, INSTANCE);
    assert_eq!(verdict.app_id, APP);
    assert_eq!(verdict.compose_hash, COMPOSE);
    assert_eq!(
        verdict.os_measurement,
        os_measurement(&MRTD, &RTMR0, &RTMR1, &RTMR2)
    );
    assert_eq!(verdict.tcb_status, TcbStatus::UpToDate);
    assert_eq!(verdict.fmspc, world.pki.fmspc());
    // The CRLs' nextUpdate is NOW + 30 days, and a CRL is stale from that second on.
    assert_eq!(verdict.collateral_next_update, NOW + 30 * DAY - 1);
    assert_eq!(verdict.evidence_hash, evidence.hash());
}

#[test]
fn the_root_can_be_given_as_pem() {
    let world = World::new();
    let from_pem = Trust::from_pem(&world.pki.root_ca_pem()).unwrap();
    assert_eq!(from_pem, world.trust);
    assert!(!from_pem.is_intel());
}

#[test]
fn evidence_published_on_chain_still_verifies() {
    let world = World::new();
    let decoded = Evidence::decode(&world.good().encode()).unwrap();
    assert!(world.check(&decoded, &seat()).is_ok());
}

#[test]
fn a_tampered_quote_byte_is_a_signature_refusal() {
    let world = World::new();
    let good = world.good();
    // A byte of MRTD (inside the signed TD report), then a byte of the quote's ECDSA signature (after
    // the 48-byte header, the 584-byte TD report and the auth data length).
    for offset in [48 + 16 + 48 + 48 + 8 + 8 + 8, 48 + 584 + 4 + 10] {
        let mut evidence = good.clone();
        evidence.quote[offset] ^= 0x01;
        let got = world.check(&evidence, &seat());
        assert!(
            matches!(
                got,
                Err(Refusal::BadSignature(_)) | Err(Refusal::Malformed(_))
            ),
            "offset {offset}: {got:?}"
        );
    }
    let mut evidence = good;
    evidence.quote[48 + 200] ^= 0x80;
    assert_eq!(kind(&world.check(&evidence, &seat())), "signature");
}

#[test]
fn a_quote_under_another_root_is_a_signature_refusal() {
    let world = World::new();
    let stranger = MockPki::from_seed([0x99; 32]);
    let evidence = evidence_of(
        &stranger,
        boot_log(APP, COMPOSE, INSTANCE),
        node_report_data(NODE),
    );
    assert_eq!(kind(&world.check(&evidence, &seat())), "signature");
    // And Intel's root does not vouch for the mock.
    let got = verify(
        &world.good(),
        &seat(),
        &world.policy,
        &Trust::intel(),
        &world.collateral,
        NOW,
    );
    assert_eq!(kind(&got), "signature");
}

#[test]
fn wrong_report_data_is_refused() {
    let world = World::new();
    let evidence = evidence_of(
        &world.pki,
        boot_log(APP, COMPOSE, INSTANCE),
        node_report_data(OTHER_NODE),
    );
    let got = world.check(&evidence, &seat());
    assert_eq!(
        got,
        Err(Refusal::ReportDataMismatch {
            expected: Box::new(node_report_data(NODE)),
            got: Box::new(node_report_data(OTHER_NODE)),
        })
    );
}

#[test]
fn a_reordered_event_breaks_the_replay() {
    let world = World::new();
    let mut evidence = world.good();
    evidence.events.swap(2, 3);
    let got = world.check(&evidence, &seat());
    assert!(
        matches!(
            got,
            Err(Refusal::EventLog(ReplayError::RtmrMismatch { .. }))
        ),
        "{got:?}"
    );
    assert_eq!(kind(&got), "event-log");
}

#[test]
fn an_injected_event_breaks_the_replay() {
    let world = World::new();
    let mut evidence = world.good();
    // Claims a different instance before the real one, without it ever having been measured.
    evidence
        .events
        .insert(3, RuntimeEvent::new("instance-id", OTHER_INSTANCE));
    let got = world.check(
        &evidence,
        &Expected {
            instance_id: OTHER_INSTANCE,
            ..seat()
        },
    );
    assert!(
        matches!(
            got,
            Err(Refusal::EventLog(ReplayError::RtmrMismatch { .. }))
        ),
        "{got:?}"
    );
}

#[test]
fn a_dropped_event_breaks_the_replay() {
    let world = World::new();
    let mut evidence = world.good();
    evidence.events.pop();
    assert_eq!(kind(&world.check(&evidence, &seat())), "event-log");
}

#[test]
fn an_instance_id_emitted_after_system_ready_does_not_change_the_claim() {
    let world = World::new();
    // The app emitted it (EmitEvent), so it is measured and the replay holds; it is just not read.
    let mut events = boot_log(APP, COMPOSE, INSTANCE);
    events.push(RuntimeEvent::new("instance-id", OTHER_INSTANCE));
    let evidence = evidence_of(&world.pki, events, node_report_data(NODE));
    let verdict = world
        .check(&evidence, &seat())
        .expect("still the honest node");
    assert_eq!(verdict.instance_id, INSTANCE);
    let posing = world.check(
        &evidence,
        &Expected {
            instance_id: OTHER_INSTANCE,
            ..seat()
        },
    );
    assert_eq!(
        posing,
        Err(Refusal::InstanceMismatch {
            expected: OTHER_INSTANCE,
            got: INSTANCE
        })
    );
}

#[test]
fn of_two_instance_ids_before_system_ready_the_first_wins() {
    let world = World::new();
    let mut events = boot_log(APP, COMPOSE, INSTANCE);
    events.insert(4, RuntimeEvent::new("instance-id", OTHER_INSTANCE));
    let evidence = evidence_of(&world.pki, events, node_report_data(NODE));
    assert_eq!(
        world.check(&evidence, &seat()).unwrap().instance_id,
        INSTANCE
    );
    let second = world.check(
        &evidence,
        &Expected {
            instance_id: OTHER_INSTANCE,
            ..seat()
        },
    );
    assert_eq!(kind(&second), "instance-mismatch");
}

#[test]
fn a_wrong_supplied_digest_is_named() {
    let world = World::new();
    let mut evidence = world.good();
    for event in &mut evidence.events {
        event.digest = Some(event_digest(event));
    }
    assert!(
        world.check(&evidence, &seat()).is_ok(),
        "right digests pass"
    );
    evidence.events[3].digest = Some(event_digest(&RuntimeEvent::new(
        "instance-id",
        OTHER_INSTANCE,
    )));
    assert_eq!(
        world.check(&evidence, &seat()),
        Err(Refusal::EventLog(ReplayError::SuppliedDigestMismatch {
            index: 3,
            name: "instance-id".into()
        }))
    );
}

#[test]
fn an_os_measurement_not_on_the_list_is_refused() {
    let mut world = World::new();
    world.policy.os = [[0x05; 32]].into_iter().collect();
    let got = world.check(&world.good(), &seat());
    assert_eq!(
        got,
        Err(Refusal::OsNotAllowed {
            measurement: os_measurement(&MRTD, &RTMR0, &RTMR1, &RTMR2)
        })
    );
}

#[test]
fn a_compose_hash_not_allowed_is_refused_and_named() {
    let world = World::new();
    let evidence = evidence_of(
        &world.pki,
        boot_log(APP, [0xbb; 32], INSTANCE),
        node_report_data(NODE),
    );
    let got = world.check(&evidence, &seat());
    assert_eq!(got, Err(Refusal::ComposeNotAllowed { hash: [0xbb; 32] }));
    let text = got.unwrap_err().to_string();
    assert!(
        text.contains(&format!(
            "meshctl app-auth allow-compose 0x{}",
            "bb".repeat(32)
        )),
        "{text}"
    );
}

#[test]
fn another_app_is_refused() {
    let world = World::new();
    let evidence = evidence_of(
        &world.pki,
        boot_log([0xee; 20], COMPOSE, INSTANCE),
        node_report_data(NODE),
    );
    assert_eq!(
        world.check(&evidence, &seat()),
        Err(Refusal::AppMismatch {
            expected: APP,
            got: [0xee; 20]
        })
    );
}

#[test]
fn another_key_provider_is_refused() {
    let world = World::new();
    let mut events = boot_log(APP, COMPOSE, INSTANCE);
    events[5] = RuntimeEvent::new("key-provider", br#"{"name":"kms","id":"00"}"#.to_vec());
    let evidence = evidence_of(&world.pki, events, node_report_data(NODE));
    assert_eq!(kind(&world.check(&evidence, &seat())), "key-provider");
    let mut events = boot_log(APP, COMPOSE, INSTANCE);
    events[5] = RuntimeEvent::new(
        "key-provider",
        br#"{"name":"local-sgx","id":"deadbeef"}"#.to_vec(),
    );
    let evidence = evidence_of(&world.pki, events, node_report_data(NODE));
    assert_eq!(kind(&world.check(&evidence, &seat())), "key-provider");
}

#[test]
fn expired_collateral_is_refused_as_such() {
    let mut world = World::new();
    world.collateral = world
        .pki
        .collateral(&CollateralOptions::valid_from(NOW - 40 * DAY, 30));
    let got = world.check(&world.good(), &seat());
    assert_eq!(
        got,
        Err(Refusal::CollateralExpired {
            next_update: NOW - 10 * DAY - 1
        })
    );
}

/// The TCB info's evaluation data number is read from the collateral, for the cluster's TCB policy; the one
/// Intel signed, so a PCCS serving another number serves another TCB info.
#[test]
fn the_collateral_names_its_tcb_evaluation_data_number() {
    let world = World::new();
    let later = world.pki.collateral(&CollateralOptions {
        tcb_evaluation_data_number: 19,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    let info = mesh_attest::CollateralInfo::of(&later).unwrap();
    assert_eq!(info.tcb_evaluation_data_number, 19);
    let got = verify(
        &world.good(),
        &seat(),
        &world.policy,
        &world.trust,
        &later,
        NOW,
    );
    assert!(got.is_ok(), "{got:?}");
}

#[test]
fn the_collateral_window_is_exactly_the_one_dcap_qvl_enforces() {
    // If ours were wider, dcap-qvl would refuse at the edges with an opaque error (a signature
    // refusal here); if narrower, good evidence would be refused early.
    let world = World::new();
    let evidence = world.good();
    let info = mesh_attest::CollateralInfo::of(&world.collateral).unwrap();
    for now in [info.issue_date, info.next_update] {
        let got = verify(
            &evidence,
            &seat(),
            &world.policy,
            &world.trust,
            &world.collateral,
            now,
        );
        assert!(got.is_ok(), "at {now}: {got:?}");
    }
    let early = verify(
        &evidence,
        &seat(),
        &world.policy,
        &world.trust,
        &world.collateral,
        info.issue_date - 1,
    );
    assert_eq!(kind(&early), "collateral-not-yet-valid");
    let late = verify(
        &evidence,
        &seat(),
        &world.policy,
        &world.trust,
        &world.collateral,
        info.next_update + 1,
    );
    assert_eq!(kind(&late), "collateral-expired");
}

#[test]
fn collateral_for_another_platform_is_named() {
    let world = World::new();
    // Intel's platform b0c06f000000 is not the mock's.
    let mut intel_like = world.collateral.clone();
    intel_like.tcb_info =
        intel_like
            .tcb_info
            .replacen(&hex::encode_upper(world.pki.fmspc()), "B0C06F000000", 1);
    let got = verify(
        &world.good(),
        &seat(),
        &world.policy,
        &world.trust,
        &intel_like,
        NOW,
    );
    assert_eq!(kind(&got), "collateral-mismatch", "{got:?}");
}

#[test]
fn a_debug_td_is_refused_unless_the_policy_allows_debug() {
    let mut world = World::new();
    let events = boot_log(APP, COMPOSE, INSTANCE);
    let mut input = td(&events, node_report_data(NODE));
    input.debug = true;
    let evidence = Evidence {
        quote: world.pki.quote(&input),
        events,
    };
    assert_eq!(world.check(&evidence, &seat()), Err(Refusal::Debug));
    world.policy.allow_debug = true;
    assert!(world.check(&evidence, &seat()).is_ok());
}

#[test]
fn an_out_of_date_tcb_is_refused_by_default_and_accepted_when_allowed() {
    let mut world = World::new();
    world.collateral = world.pki.collateral(&CollateralOptions {
        tcb_status: tdx_mock::TcbStatus::OutOfDate,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    let evidence = world.good();
    assert_eq!(
        world.check(&evidence, &seat()),
        Err(Refusal::TcbStatus {
            status: TcbStatus::OutOfDate
        })
    );
    world.policy.allow_tcb_status(TcbStatus::OutOfDate).unwrap();
    assert_eq!(
        world.check(&evidence, &seat()).map(|v| v.tcb_status),
        Ok(TcbStatus::OutOfDate)
    );
}

#[test]
fn a_revoked_tcb_is_refused_whatever_the_policy() {
    let mut world = World::new();
    world.collateral = world.pki.collateral(&CollateralOptions {
        tcb_status: tdx_mock::TcbStatus::Revoked,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    world.policy.tcb_statuses.insert(TcbStatus::Revoked);
    assert_eq!(
        world.check(&world.good(), &seat()),
        Err(Refusal::TcbStatus {
            status: TcbStatus::Revoked
        })
    );
}

#[test]
fn another_instances_evidence_is_refused() {
    let world = World::new();
    // Instance B's seat (its own instance and node key) presents A's evidence, unaltered.
    let stolen = world.good();
    let seat_b = Expected {
        instance_id: OTHER_INSTANCE,
        report_data: node_report_data(OTHER_NODE),
    };
    assert_eq!(
        world.check(&stolen, &seat_b),
        Err(Refusal::InstanceMismatch {
            expected: OTHER_INSTANCE,
            got: INSTANCE
        })
    );
    // Even bound to A's instance id, it cannot name its own node key.
    let same_instance_other_key = Expected {
        instance_id: INSTANCE,
        report_data: node_report_data(OTHER_NODE),
    };
    assert_eq!(
        kind(&world.check(&stolen, &same_instance_other_key)),
        "report-data-mismatch"
    );
    // Nor is evidence for this cluster any good for another contract or chain.
    let other_cluster = Expected {
        instance_id: INSTANCE,
        report_data: report_data(CHAIN + 1, CONTRACT, NODE),
    };
    assert_eq!(
        kind(&world.check(&stolen, &other_cluster)),
        "report-data-mismatch"
    );
}

#[test]
fn app_events_after_system_ready_are_replayed_and_not_read() {
    let world = World::new();
    let mut events = boot_log(APP, COMPOSE, INSTANCE);
    events.push(RuntimeEvent {
        event_type: DSTACK_RUNTIME_EVENT_TYPE,
        name: "app-ready".into(),
        payload: b"v1.2".to_vec(),
        digest: None,
    });
    let evidence = evidence_of(&world.pki, events, node_report_data(NODE));
    assert!(world.check(&evidence, &seat()).is_ok());
}

#[test]
fn the_verdict_cache_verifies_again_under_new_collateral() {
    let world = World::new();
    let evidence = world.good();
    let mut cache = VerdictCache::new(16);
    let first = cache.verify(
        &evidence,
        &seat(),
        &world.policy,
        &world.trust,
        &world.collateral,
        NOW,
    );
    assert!(first.is_ok());
    assert_eq!(cache.len(), 1);
    let again = cache.verify(
        &evidence,
        &seat(),
        &world.policy,
        &world.trust,
        &world.collateral,
        NOW + 1,
    );
    assert_eq!(again, first);
    assert_eq!(cache.len(), 1, "answered from the cache");

    // Intel re-issues the TCB info a day later, now calling this platform's level Revoked.
    let revoking = world.pki.collateral(&CollateralOptions {
        issue_date: NOW + DAY,
        next_update: NOW + 31 * DAY,
        tcb_status: tdx_mock::TcbStatus::Revoked,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    let later = cache.verify(
        &evidence,
        &seat(),
        &world.policy,
        &world.trust,
        &revoking,
        NOW + 2 * DAY,
    );
    assert_eq!(
        later,
        Err(Refusal::TcbStatus {
            status: TcbStatus::Revoked
        })
    );
    assert_eq!(cache.len(), 2);

    // The stolen copy is not answered from the honest seat's entry.
    let seat_b = Expected {
        instance_id: OTHER_INSTANCE,
        report_data: node_report_data(OTHER_NODE),
    };
    let stolen = cache.verify(
        &evidence,
        &seat_b,
        &world.policy,
        &world.trust,
        &world.collateral,
        NOW,
    );
    assert_eq!(kind(&stolen), "instance-mismatch");
}

#[test]
fn a_policy_change_is_not_answered_from_the_cache() {
    let world = World::new();
    let evidence = world.good();
    let mut cache = VerdictCache::new(16);
    let mut policy = world.policy.clone();
    assert!(
        cache
            .verify(
                &evidence,
                &seat(),
                &policy,
                &world.trust,
                &world.collateral,
                NOW
            )
            .is_ok()
    );
    policy.compose_hashes = Allowed::none();
    let got = cache.verify(
        &evidence,
        &seat(),
        &policy,
        &world.trust,
        &world.collateral,
        NOW,
    );
    assert_eq!(kind(&got), "compose-not-allowed");
}
