//! Quotes and collateral from the mock PKI, through dcap-qvl's verifier exactly as production runs it.

use dcap_qvl::verify::{QuoteVerifier, VerifiedReport};
use tdx_mock::{CERT_VALIDITY, CollateralOptions, MockPki, QuoteCollateralV3, TcbStatus, TdInput};

const SEED: [u8; 32] = [0x5A; 32];
/// 2025-06-15T15:06:40Z.
const NOW: u64 = 1_750_000_000;
const DAY: u64 = 86_400;
/// Where the report data sits: after the 48-byte header and the first 520 bytes of the TD report.
const REPORT_DATA_OFFSET: usize = 48 + 520;

fn td() -> TdInput {
    let mut report_data = [0u8; 64];
    report_data[..5].copy_from_slice(b"hello");
    TdInput::new(
        [0x11; 48],
        [[0x20; 48], [0x21; 48], [0x22; 48], [0x23; 48]],
        report_data,
    )
}

fn verify(
    pki: &MockPki,
    quote: &[u8],
    collateral: &QuoteCollateralV3,
    now: u64,
) -> Result<VerifiedReport, String> {
    QuoteVerifier::new(pki.root_ca_der())
        .verify(quote, collateral, now)
        .map_err(|e| format!("{e:#}"))
}

#[test]
fn quote_verifies_under_the_mock_root() {
    let pki = MockPki::from_seed(SEED);
    let input = td();
    let collateral = pki.collateral(&CollateralOptions::valid_from(NOW, 30));

    let verified = verify(&pki, &pki.quote(&input), &collateral, NOW).unwrap();

    assert_eq!(verified.status, "UpToDate");
    assert!(verified.advisory_ids.is_empty());
    let report = verified.report.as_td10().unwrap();
    assert_eq!(report.report_data, input.report_data);
    assert_eq!(report.mr_td, input.mrtd);
    assert_eq!(report.rt_mr0, input.rtmr[0]);
    assert_eq!(report.rt_mr3, input.rtmr[3]);
    assert_eq!(report.td_attributes[0] & 1, 0, "not a debug TD");
}

#[test]
fn strict_policy_accepts_an_up_to_date_quote() {
    let pki = MockPki::from_seed(SEED);
    let collateral = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
    let claims = QuoteVerifier::new(pki.root_ca_der())
        .verify_with_policy(
            &pki.quote(&td()),
            collateral,
            NOW,
            &dcap_qvl::QuotePolicy::strict(NOW),
        )
        .unwrap();
    assert_eq!(claims.platform.pck.fmspc, pki.fmspc());
    assert_eq!(claims.tcb.status, dcap_qvl::TcbStatus::UpToDate);
}

#[test]
fn collateral_is_accepted_only_inside_its_window() {
    let pki = MockPki::from_seed(SEED);
    let quote = pki.quote(&td());
    let opts = CollateralOptions::valid_from(NOW, 30);
    let collateral = pki.collateral(&opts);

    assert!(verify(&pki, &quote, &collateral, opts.issue_date).is_ok());
    assert!(verify(&pki, &quote, &collateral, opts.next_update - 1).is_ok());

    // The CRLs (checked first) expire at next_update itself, a second before the TCB Info does.
    let expired = verify(&pki, &quote, &collateral, opts.next_update).unwrap_err();
    assert!(expired.contains("CrlExpired"), "{expired}");
    let expired = verify(&pki, &quote, &collateral, opts.next_update + 1).unwrap_err();
    assert!(expired.contains("CrlExpired"), "{expired}");
    let too_early = verify(&pki, &quote, &collateral, opts.issue_date - 1).unwrap_err();
    assert!(
        too_early.contains("issue date is in the future"),
        "{too_early}"
    );

    // An inverted window is accepted nowhere.
    let inverted = pki.collateral(&CollateralOptions {
        issue_date: NOW,
        next_update: NOW - DAY,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    for now in [NOW - DAY, NOW, NOW + DAY] {
        assert!(verify(&pki, &quote, &inverted, now).is_err());
    }
}

#[test]
fn certificates_bound_the_usable_time_range() {
    let pki = MockPki::from_seed(SEED);
    let quote = pki.quote(&td());
    let (not_before, not_after) = CERT_VALIDITY;

    let late = not_after - 10 * DAY;
    assert!(
        verify(
            &pki,
            &quote,
            &pki.collateral(&CollateralOptions::valid_from(late, 5)),
            late
        )
        .is_ok()
    );

    let after = not_after + 10 * DAY;
    let err = verify(
        &pki,
        &quote,
        &pki.collateral(&CollateralOptions::valid_from(after, 5)),
        after,
    )
    .unwrap_err();
    assert!(err.contains("certificate chain"), "{err}");

    let before = not_before - 10 * DAY;
    let err = verify(
        &pki,
        &quote,
        &pki.collateral(&CollateralOptions::valid_from(before, 5)),
        before,
    )
    .unwrap_err();
    assert!(err.contains("certificate chain"), "{err}");
}

#[test]
fn a_flipped_body_byte_fails() {
    let pki = MockPki::from_seed(SEED);
    let collateral = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
    let mut quote = pki.quote(&td());
    assert_eq!(quote[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 5], *b"hello");

    quote[REPORT_DATA_OFFSET] ^= 0x01;
    let err = verify(&pki, &quote, &collateral, NOW).unwrap_err();
    assert!(err.contains("signature is invalid"), "{err}");
}

#[test]
fn another_seeds_quote_fails_under_this_root() {
    let pki = MockPki::from_seed(SEED);
    let other = MockPki::from_seed([0xA5; 32]);
    let opts = CollateralOptions::valid_from(NOW, 30);
    let quote = other.quote(&td());

    // Its PCK chain does not lead to this root...
    let err = verify(&pki, &quote, &pki.collateral(&opts), NOW).unwrap_err();
    assert!(err.contains("Failed to verify certificate chain"), "{err}");
    // ...and its own collateral is signed by another root (the root CA CRL is checked first).
    let err = verify(&pki, &quote, &other.collateral(&opts), NOW).unwrap_err();
    assert!(err.contains("root CA CRL"), "{err}");
    // It does verify under its own root.
    assert!(verify(&other, &quote, &other.collateral(&opts), NOW).is_ok());
}

#[test]
fn debug_td_is_refused_unless_allowed() {
    let pki = MockPki::from_seed(SEED);
    let collateral = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
    let quote = pki.quote(&TdInput {
        debug: true,
        ..td()
    });

    let err = verify(&pki, &quote, &collateral, NOW).unwrap_err();
    assert!(err.contains("Debug mode is enabled"), "{err}");

    let verified = QuoteVerifier::new(pki.root_ca_der())
        .allow_debug(true)
        .verify(&quote, &collateral, NOW)
        .unwrap();
    assert_eq!(verified.report.as_td10().unwrap().td_attributes[0] & 1, 1);
}

#[test]
fn the_tcb_status_of_the_collateral_is_reported() {
    let pki = MockPki::from_seed(SEED);
    let quote = pki.quote(&td());
    for status in [
        TcbStatus::UpToDate,
        TcbStatus::SwHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::OutOfDate,
    ] {
        let collateral = pki.collateral(&CollateralOptions {
            tcb_status: status,
            ..CollateralOptions::valid_from(NOW, 30)
        });
        let verified = verify(&pki, &quote, &collateral, NOW).unwrap();
        assert_eq!(verified.status, status.as_str());
    }
}

#[test]
fn out_of_date_verifies_but_strict_policy_refuses_it() {
    let pki = MockPki::from_seed(SEED);
    let collateral = pki.collateral(&CollateralOptions {
        tcb_status: TcbStatus::OutOfDate,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    let err = QuoteVerifier::new(pki.root_ca_der())
        .verify_with_policy(
            &pki.quote(&td()),
            collateral,
            NOW,
            &dcap_qvl::QuotePolicy::strict(NOW),
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("OutOfDate"), "{err:#}");
}

#[test]
fn a_revoked_tcb_is_refused_by_verify_itself() {
    let pki = MockPki::from_seed(SEED);
    let collateral = pki.collateral(&CollateralOptions {
        tcb_status: TcbStatus::Revoked,
        ..CollateralOptions::valid_from(NOW, 30)
    });
    let err = verify(&pki, &pki.quote(&td()), &collateral, NOW).unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
}

#[test]
fn an_older_tee_tcb_is_out_of_date() {
    let pki = MockPki::from_seed(SEED);
    let collateral = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
    let current = td().tee_tcb_svn;

    // An older module SVN (byte 0) is appraised against the TDX module identity...
    let mut old_module = td();
    old_module.tee_tcb_svn[0] = current[0] - 1;
    let verified = verify(&pki, &pki.quote(&old_module), &collateral, NOW).unwrap();
    assert_eq!(verified.status, "OutOfDate");

    // ...an older TDX component (byte 2 on) against the TCB levels.
    let mut old_component = td();
    old_component.tee_tcb_svn[2] = current[2] - 1;
    let verified = verify(&pki, &pki.quote(&old_component), &collateral, NOW).unwrap();
    assert_eq!(verified.status, "OutOfDate");

    // A TDX 1.0 module (major version 0) is appraised by the TCB levels alone, and is older.
    let mut tdx_1_0 = td();
    tdx_1_0.tee_tcb_svn[1] = 0;
    let verified = verify(&pki, &pki.quote(&tdx_1_0), &collateral, NOW).unwrap();
    assert_eq!(verified.status, "OutOfDate");

    // A module version the TCB Info does not know is no TCB at all.
    let mut unknown_module = td();
    unknown_module.tee_tcb_svn[1] = 2;
    let err = verify(&pki, &pki.quote(&unknown_module), &collateral, NOW).unwrap_err();
    assert!(err.contains("TDX_02"), "{err}");
}

#[test]
fn one_seed_gives_identical_bytes() {
    let a = MockPki::from_seed(SEED);
    let b = MockPki::from_seed(SEED);
    let opts = CollateralOptions::valid_from(NOW, 30);

    assert_eq!(a.root_ca_der(), b.root_ca_der());
    assert_eq!(a.root_ca_pem(), b.root_ca_pem());
    assert_eq!(a.quote(&td()), b.quote(&td()));
    assert_eq!(a.collateral(&opts), b.collateral(&opts));
    assert_eq!(a.clone().quote(&td()), a.quote(&td()));

    let c = MockPki::from_seed([0xA5; 32]);
    assert_ne!(a.root_ca_der(), c.root_ca_der());
    assert_ne!(a.quote(&td()), c.quote(&td()));
}

#[test]
fn collateral_json_round_trips_and_verifies() {
    let pki = MockPki::from_seed(SEED);
    let opts = CollateralOptions::valid_from(NOW, 30);
    let json = pki.collateral_json(&opts);

    let parsed: QuoteCollateralV3 = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, pki.collateral(&opts));
    assert!(verify(&pki, &pki.quote(&td()), &parsed, NOW).is_ok());
}

#[test]
fn root_pem_is_the_root_der() {
    let pki = MockPki::from_seed(SEED);
    let pem = pki.root_ca_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    // The PCK chain in every quote ends with this same PEM.
    let quote = dcap_qvl::quote::Quote::parse(&pki.quote(&td())).unwrap();
    let chain = String::from_utf8(quote.raw_cert_chain().unwrap().to_vec()).unwrap();
    assert!(chain.ends_with(&pem));
    let certs = dcap_qvl::intel::extract_cert_chain(&quote).unwrap();
    assert_eq!(certs.last().unwrap(), &pki.root_ca_der());
}
