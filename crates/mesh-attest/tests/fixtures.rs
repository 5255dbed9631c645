//! Real evidence: Intel-signed quotes from dcap-qvl's samples and dstack's published simulator
//! fixture, checked at pinned times.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use mesh_attest::collateral::CollateralInfo;
use mesh_attest::replay::{claims, replay_rtmr3};
use mesh_attest::{
    Allowed, Evidence, Expected, Policy, QuoteCollateralV3, Refusal, ReplayError, TcbStatus, Trust,
    verify, verify_quote,
};

/// The dcap-qvl package this crate builds with, found through `cargo metadata` so that the test
/// reads the very sample files that version ships. Asked once per test binary.
fn dcap_qvl_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(find_dcap_qvl_dir).clone()
}

fn find_dcap_qvl_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Only the host's packages: the full resolve names Windows-only crates an offline registry
    // does not hold.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc)
        .arg("-vV")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{rustc} -vV` for the host triple: {e}"));
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("`rustc -vV` names the host");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", host, "--manifest-path", manifest])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{cargo} metadata` to find dcap-qvl's samples: {e}")
        });
    assert!(
        output.status.success(),
        "`cargo metadata` failed, so dcap-qvl's samples cannot be found: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let manifest_path = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "dcap-qvl")
        .and_then(|p| p["manifest_path"].as_str())
        .expect(
            "dcap-qvl is not among the packages `cargo metadata` lists; is it still a dependency?",
        );
    let dir = PathBuf::from(manifest_path)
        .parent()
        .expect("a manifest path has a parent")
        .to_owned();
    assert!(
        dir.join("sample/tdx_quote").exists(),
        "dcap-qvl's package at {} has no sample/tdx_quote",
        dir.display()
    );
    dir
}

fn intel_sample() -> (Vec<u8>, QuoteCollateralV3) {
    let dir = dcap_qvl_dir();
    let quote = std::fs::read(dir.join("sample/tdx_quote")).expect("read sample/tdx_quote");
    let json = std::fs::read_to_string(dir.join("sample/tdx_quote_collateral.json"))
        .expect("read sample/tdx_quote_collateral.json");
    let collateral = serde_json::from_str(&json).expect("the sample collateral parses");
    (quote, collateral)
}

/// A `now` inside the collateral's window, derived from its dates as dcap-qvl's own tests do.
fn inside(info: &CollateralInfo) -> u64 {
    info.issue_date + (info.next_update - info.issue_date) / 2
}

const SAMPLE_FMSPC: [u8; 6] = [0xb0, 0xc0, 0x6f, 0x00, 0x00, 0x00];

#[test]
fn intels_sample_collateral_window_is_read_from_all_its_parts() {
    let (_, collateral) = intel_sample();
    let info = CollateralInfo::of(&collateral).unwrap();
    assert_eq!(info.fmspc, SAMPLE_FMSPC);
    // TCB info 2025-06-19T10:16:03Z .. 2025-07-19T10:16:03Z; QE identity issued 10:32:27 the same day.
    assert_eq!(info.tcb_info_issue_date, 1_750_328_163);
    assert!(info.issue_date >= 1_750_329_147, "{info:?}");
    assert!(info.next_update <= 1_752_920_163, "{info:?}");
    assert!(info.issue_date < info.next_update);
}

#[test]
fn an_intel_signed_quote_verifies_under_intels_root_inside_the_collateral_window() {
    let (quote, collateral) = intel_sample();
    let info = CollateralInfo::of(&collateral).unwrap();
    let facts = verify_quote(&quote, &Trust::intel(), &collateral, false, inside(&info))
        .expect("dcap-qvl's sample verifies under Intel's root");
    assert_eq!(facts.tcb_status, TcbStatus::UpToDate);
    assert!(facts.advisory_ids.is_empty());
    assert_eq!(facts.collateral.fmspc, SAMPLE_FMSPC);
    // Not a dstack quote: nothing was ever extended into RTMR3.
    assert_eq!(facts.rt_mr[3], [0; 48]);
}

#[test]
fn the_intel_sample_passes_every_stage_before_the_event_log() {
    // With the OS and compose allowlists open, the first refusal is the missing dstack boot log:
    // signature, TCB status and OS stages passed, and the (empty) replay matched its zero RTMR3.
    let (quote, collateral) = intel_sample();
    let info = CollateralInfo::of(&collateral).unwrap();
    let mut policy = Policy::new([0; 20]);
    policy.os = Allowed::Any;
    policy.compose_hashes = Allowed::Any;
    let evidence = Evidence {
        quote,
        events: Vec::new(),
    };
    let expected = Expected {
        instance_id: [0; 20],
        report_data: [0; 64],
    };
    let got = verify(
        &evidence,
        &expected,
        &policy,
        &Trust::intel(),
        &collateral,
        inside(&info),
    );
    assert_eq!(got, Err(Refusal::EventLog(ReplayError::NoSystemReady)));
}

#[test]
fn the_intel_sample_is_refused_as_expired_after_next_update_and_early_before_issue() {
    let (quote, collateral) = intel_sample();
    let info = CollateralInfo::of(&collateral).unwrap();
    // The edges are inside: our window is the one dcap-qvl enforces, not a wider one.
    for edge in [info.issue_date, info.next_update] {
        let got = verify_quote(&quote, &Trust::intel(), &collateral, false, edge);
        assert!(got.is_ok(), "at {edge}: {got:?}");
    }
    let late = verify_quote(
        &quote,
        &Trust::intel(),
        &collateral,
        false,
        info.next_update + 1,
    );
    assert_eq!(
        late,
        Err(Refusal::CollateralExpired {
            next_update: info.next_update
        })
    );
    assert_eq!(late.unwrap_err().kind(), "collateral-expired");
    let early = verify_quote(
        &quote,
        &Trust::intel(),
        &collateral,
        false,
        info.issue_date - 1,
    );
    assert_eq!(
        early,
        Err(Refusal::CollateralNotYetValid {
            issue_date: info.issue_date
        })
    );
}

#[test]
fn a_flipped_byte_in_the_intel_sample_is_a_signature_refusal() {
    let (mut quote, collateral) = intel_sample();
    let info = CollateralInfo::of(&collateral).unwrap();
    // A byte of report_data, inside the signed TD report.
    quote[600] ^= 1;
    let got = verify_quote(&quote, &Trust::intel(), &collateral, false, inside(&info));
    assert_eq!(
        got.as_ref().map_err(Refusal::kind),
        Err("signature"),
        "{got:?}"
    );
}

fn simulator() -> (Vec<u8>, Evidence) {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dstack-simulator"
    );
    let hex_quote = std::fs::read_to_string(format!("{dir}/quote.hex")).expect("read quote.hex");
    let quote = hex::decode(hex_quote.trim()).expect("quote.hex is hex");
    let log = std::fs::read_to_string(format!("{dir}/eventlog.json")).expect("read eventlog.json");
    let evidence = Evidence::from_dstack(&quote, &log).expect("dstack's event log reads");
    (quote, evidence)
}

fn hex20(text: &str) -> [u8; 20] {
    hex::decode(text).unwrap().try_into().unwrap()
}

#[test]
fn dstacks_simulator_log_replays_to_its_quotes_rtmr3_and_names_its_instance() {
    let (quote, evidence) = simulator();
    assert_eq!(quote.len(), 5006);
    assert_eq!(evidence.events.len(), 7, "the RTMR3 events of the 27");
    assert!(
        evidence.events.iter().all(|e| e.digest.is_some()),
        "this log supplies digests; the replay checks each against the recomputed one"
    );
    let parsed = dcap_qvl::quote::Quote::parse(&quote).unwrap();
    let td = parsed.report.as_td10().unwrap();
    assert_eq!(replay_rtmr3(&evidence.events), Ok(td.rt_mr3));

    let claims = claims(&evidence.events).unwrap();
    assert_eq!(
        claims.instance_id,
        hex20("59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a")
    );
    assert_eq!(
        claims.app_id,
        hex20("ea549f02e1a25fabd1cb788380e033ec5461b2ff")
    );
    assert_eq!(
        hex::encode(claims.compose_hash),
        "ea549f02e1a25fabd1cb788380e033ec5461b2ffe4328d753642cf035452e48b"
    );
    assert_eq!(claims.key_provider.name, "kms");
    assert_eq!(claims.key_provider.id.len(), 91, "a DER P-256 public key");
}

#[test]
fn dstacks_simulator_evidence_survives_the_on_chain_encoding() {
    let (_, evidence) = simulator();
    let decoded = Evidence::decode(&evidence.encode()).unwrap();
    assert_eq!(decoded.quote, evidence.quote);
    // Digests do not travel; everything the replay needs does.
    assert_eq!(
        replay_rtmr3(&decoded.events),
        replay_rtmr3(&evidence.events)
    );
    assert_eq!(decoded.hash(), evidence.hash());
}

/// attestation.md guessed that dstack's (unpatched) simulator quote would verify under Intel's root
/// with dcap-qvl's sample collateral, as both are for FMSPC b0c06f000000. It does not, and not for
/// its signature: every signature verifies, then its platform matches no TCB level in that TCB info.
#[test]
fn dstacks_simulator_quote_is_genuine_but_below_every_tcb_level_of_the_sample_collateral() {
    let (quote, _) = simulator();
    let (_, collateral) = intel_sample();
    let info = CollateralInfo::of(&collateral).unwrap();
    assert_eq!(info.fmspc, SAMPLE_FMSPC);
    let got = verify_quote(&quote, &Trust::intel(), &collateral, false, inside(&info));
    match &got {
        Err(Refusal::TcbLevelUnknown(detail)) => {
            assert!(detail.contains("No matching TCB level found"), "{detail}")
        }
        other => panic!("expected tcb-unknown, got {other:?}"),
    }

    // dcap-qvl matches the TCB only after the PCK chain, the QE report and the quote's own
    // signature verified: break the signature and the refusal is a signature one instead.
    let mut forged = quote.clone();
    forged[48 + 100] ^= 1;
    let forged = verify_quote(&forged, &Trust::intel(), &collateral, false, inside(&info));
    assert_eq!(
        forged.as_ref().map_err(Refusal::kind),
        Err("signature"),
        "{forged:?}"
    );

    // Why: the PCK certificate says SGX TCB component 8 is at SVN 3, and the sample's TCB info
    // (evaluation data number 17) lists no level below 5 for it.
    let parsed = dcap_qvl::quote::Quote::parse(&quote).unwrap();
    let chain = dcap_qvl::intel::extract_cert_chain(&parsed).unwrap();
    let pck = dcap_qvl::intel::parse_pck_extension(&chain[0]).unwrap();
    assert_eq!(pck.fmspc, SAMPLE_FMSPC);
    assert_eq!(pck.cpu_svn[7], 3);
    let tcb: serde_json::Value = serde_json::from_str(&collateral.tcb_info).unwrap();
    let lowest = tcb["tcbLevels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["tcb"]["sgxtcbcomponents"][7]["svn"].as_u64().unwrap())
        .min()
        .unwrap();
    assert_eq!(lowest, 5);
}

#[test]
fn a_stripped_dstack_0_6_log_replays_to_its_quotes_rtmr3() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dstack-0.6-lite/tdx-lite-getquote.json"
    );
    let answer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the fixture")).unwrap();
    let quote = hex::decode(answer["quote"].as_str().unwrap()).unwrap();
    let log = answer["event_log"].as_str().unwrap();
    let evidence = Evidence::from_dstack(&quote, log).unwrap();
    assert_eq!(evidence.events.len(), 9);
    assert!(
        evidence.events.iter().all(|e| e.digest.is_none()),
        "a stripped log supplies no RTMR3 digests"
    );
    let parsed = dcap_qvl::quote::Quote::parse(&quote).unwrap();
    assert_eq!(
        replay_rtmr3(&evidence.events),
        Ok(parsed.report.as_td10().unwrap().rt_mr3)
    );
    let claims = claims(&evidence.events).unwrap();
    assert_eq!(
        claims.instance_id,
        hex20("050bf89570575fe8fab4cb8f0a62a9e64efe8ead")
    );
    assert_eq!(
        claims.app_id,
        hex20("86b0e55f2fa8e4fb69d890f14f54d5612707646e")
    );
    assert_eq!(claims.key_provider.name, "kms");
}
