//! The PCCS path against a loopback PCCS serving the mock PKI's collateral: fetched once, cached in
//! memory and on disk, refreshed when due, served from the cache while the PCCS is down, and a named
//! error once the cached one has expired.

use std::time::Duration;

use mesh_attest::collateral::{
    CollateralSource, Pccs, PinnedCollateral, RETRY_AFTER_FAILURE, quote_platform,
};
use mesh_attest::{CollateralError, QuoteCollateralV3, Trust, verify_quote};
use tdx_mock::pccs::MockPccs;
use tdx_mock::{CollateralOptions, MockPki, TdInput};

const SEED: [u8; 32] = [0x7c; 32];
const NOW: u64 = 1_760_000_000;
const DAY: u64 = 86_400;

/// A mock PCCS on a loopback port.
fn mock_pccs(collateral: QuoteCollateralV3) -> MockPccs {
    MockPccs::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        collateral,
    )
}

fn quote(pki: &MockPki) -> Vec<u8> {
    pki.quote(&TdInput::new([1; 48], [[2; 48]; 4], [3; 64]))
}

#[tokio::test]
async fn collateral_from_a_pccs_is_cached_refreshed_and_outlives_an_outage_until_it_expires() {
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .expect("the PCCS scenario finishes within a minute");
}

async fn scenario() {
    let pki = MockPki::from_seed(SEED);
    let trust = Trust::from_der(pki.root_ca_der()).unwrap();
    let quote = quote(&pki);
    let first = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
    let server = mock_pccs(first.clone());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/sgx/certification/v4", server.url());

    let platform = quote_platform(&quote).unwrap();
    assert_eq!(platform.fmspc, pki.fmspc());

    let pccs = Pccs::new(&url, Some(dir.path().to_owned()))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let source = CollateralSource::Pccs(std::sync::Arc::new(pccs));

    // Fetched once, with the signed JSON kept byte for byte: it verifies.
    let got = source.for_quote(&quote, NOW).await.unwrap();
    assert_eq!(*got, first);
    verify_quote(&quote, &trust, &got, false, NOW).expect("fetched collateral verifies");
    let fetched = server.requests().len();
    assert_eq!(fetched, 4, "{:?}", server.requests());

    // Written to the cache directory atomically: the file, and no temporary left behind.
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec![format!("{}.json", hex::encode(pki.fmspc()))]);

    // Served from memory while fresh.
    let again = source.for_quote(&quote, NOW + 10 * DAY).await.unwrap();
    assert_eq!(*again, first);
    assert_eq!(server.requests().len(), fetched);

    // The PCCS fails. Refresh is due after three quarters of the window, but the cached
    // collateral is served until it expires, and the PCCS is not asked at every check.
    server.set_failing(true);
    let due = NOW + 25 * DAY;
    assert_eq!(*source.for_quote(&quote, due).await.unwrap(), first);
    let asked = server.requests().len();
    assert_eq!(
        asked,
        fetched + 1,
        "the first failed request ends the attempt"
    );
    assert_eq!(*source.for_quote(&quote, due + 60).await.unwrap(), first);
    assert_eq!(
        server.requests().len(),
        asked,
        "not asked again within RETRY_AFTER_FAILURE"
    );
    let retry = due + RETRY_AFTER_FAILURE;
    assert_eq!(*source.for_quote(&quote, retry).await.unwrap(), first);
    assert_eq!(server.requests().len(), asked + 1, "asked again after it");

    // Then it is down altogether...
    drop(server);

    // ...and then the error names the FMSPC and when it expired.
    let after = source.for_quote(&quote, NOW + 31 * DAY).await;
    match after {
        Err(CollateralError::Unavailable {
            fmspc,
            expired_at: Some(at),
            ..
        }) => {
            assert_eq!(fmspc, pki.fmspc());
            assert_eq!(
                at,
                NOW + 30 * DAY - 1,
                "the second before the CRLs' nextUpdate"
            );
        }
        other => panic!("expected Unavailable with an expiry, got {other:?}"),
    }

    // A restarted agent reads the cache directory: no PCCS needed while the file is fresh.
    let restarted = Pccs::new(&url, Some(dir.path().to_owned()))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let (cached, info) = restarted.cached(&pki.fmspc()).expect("loaded from disk");
    assert_eq!(*cached, first);
    assert_eq!(info.next_update, NOW + 30 * DAY - 1);
    assert_eq!(
        *restarted.for_platform(platform, NOW + DAY).await.unwrap(),
        first
    );

    // The PCCS is back with newer collateral: a due refresh takes it, in memory and on disk.
    let second = pki.collateral(&CollateralOptions::valid_from(NOW + 20 * DAY, 30));
    let server = mock_pccs(second.clone());
    let back = Pccs::new(&server.url(), Some(dir.path().to_owned()))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let refreshed = back.for_platform(platform, NOW + 25 * DAY).await.unwrap();
    assert_eq!(*refreshed, second);
    verify_quote(&quote, &trust, &refreshed, false, NOW + 25 * DAY).expect("verifies");
    let on_disk = Pccs::new("http://127.0.0.1:9", Some(dir.path().to_owned())).unwrap();
    assert_eq!(*on_disk.cached(&pki.fmspc()).unwrap().0, second);

    // A stale PCCS serving the older collateral again does not roll the newer one back.
    server.publish(first.clone());
    let rolled = back.for_platform(platform, NOW + 45 * DAY).await.unwrap();
    assert_eq!(*rolled, second);
}

#[tokio::test]
async fn nothing_cached_and_no_pccs_is_a_named_error() {
    let pki = MockPki::from_seed(SEED);
    // Bind then drop, so the port is (very likely) closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pccs = Pccs::new(&format!("http://{addr}"), None)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let got = CollateralSource::Pccs(std::sync::Arc::new(pccs))
        .for_quote(&quote(&pki), NOW)
        .await;
    match got {
        Err(
            e @ CollateralError::Unavailable {
                expired_at: None, ..
            },
        ) => assert!(e.to_string().contains("nothing is cached"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn pinned_collateral_is_picked_by_the_fmspc_in_its_tcb_info() {
    let pki = MockPki::from_seed(SEED);
    let older = pki.collateral(&CollateralOptions::valid_from(NOW - 5 * DAY, 30));
    let newer = pki.collateral(&CollateralOptions::valid_from(NOW, 30));
    let mut elsewhere = newer.clone();
    elsewhere.tcb_info =
        elsewhere
            .tcb_info
            .replacen(&hex::encode_upper(pki.fmspc()), "B0C06F000000", 1);
    let json = serde_json::to_string(&vec![&older, &elsewhere, &newer]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collateral.json");
    std::fs::write(&path, json).unwrap();

    let pinned = PinnedCollateral::load(&path).unwrap();
    assert_eq!(pinned.fmspcs().count(), 2);
    assert_eq!(
        *pinned.get(&pki.fmspc()).unwrap(),
        newer,
        "the later of two for one FMSPC"
    );
    assert_eq!(
        *pinned.get(&[0xb0, 0xc0, 0x6f, 0, 0, 0]).unwrap(),
        elsewhere
    );
    let source = CollateralSource::Pinned(pinned);
    assert_eq!(*source.for_quote(&quote(&pki), NOW).await.unwrap(), newer);

    // One object, not an array, reads too.
    let one = PinnedCollateral::from_json(&serde_json::to_string(&newer).unwrap()).unwrap();
    assert_eq!(one.fmspcs().count(), 1);
    let only_elsewhere = CollateralSource::Pinned(
        PinnedCollateral::from_json(&serde_json::to_string(&elsewhere).unwrap()).unwrap(),
    );
    assert_eq!(
        only_elsewhere.for_quote(&quote(&pki), NOW).await,
        Err(CollateralError::NoneForFmspc { fmspc: pki.fmspc() })
    );
    assert!(matches!(
        PinnedCollateral::load(&dir.path().join("missing.json")),
        Err(CollateralError::File { .. })
    ));
}

/// A PCCS that answers with collateral whose validity has ended (a stale mirror) does not replace the valid
/// one cached: that is served, the PCCS is named as failing until it serves valid collateral again, and a
/// small cluster asks it again after the shorter wait it was given.
#[tokio::test]
async fn expired_collateral_from_the_pccs_is_not_taken_and_names_it_until_it_recovers() {
    let pki = MockPki::from_seed(SEED);
    let quote = quote(&pki);
    let first = pki.collateral(&CollateralOptions::valid_from(NOW, 1));
    let server = mock_pccs(first.clone());
    let pccs = std::sync::Arc::new(
        Pccs::new(&server.url(), None)
            .unwrap()
            .with_timeout(Duration::from_secs(5)),
    );
    pccs.set_retry_after(Duration::from_secs(5));
    let source = CollateralSource::Pccs(std::sync::Arc::clone(&pccs));
    assert_eq!(*source.for_quote(&quote, NOW).await.unwrap(), first);
    assert!(pccs.failing().is_none());

    // With less than a day left it is due at every check; the PCCS serves what expired an hour ago.
    let expired = CollateralOptions {
        issue_date: NOW - 2 * DAY,
        next_update: NOW - 3600,
        ..CollateralOptions::valid_from(NOW, 0)
    };
    server.publish(pki.collateral(&expired));
    assert_eq!(*source.for_quote(&quote, NOW + 60).await.unwrap(), first);
    let (at, why) = pccs.failing().expect("named as failing");
    assert_eq!(at, NOW + 60);
    assert!(
        why.to_string()
            .starts_with("it served collateral that expired at"),
        "{why}"
    );

    // Valid again: asked after the five seconds it was given, and no longer failing.
    let fresh = pki.collateral(&CollateralOptions::valid_from(NOW + 60, 30));
    server.publish(fresh.clone());
    let asked = server.requests().len();
    assert_eq!(*source.for_quote(&quote, NOW + 62).await.unwrap(), first);
    assert_eq!(server.requests().len(), asked, "not within five seconds");
    assert_eq!(*source.for_quote(&quote, NOW + 66).await.unwrap(), fresh);
    assert!(pccs.failing().is_none(), "recovered");
}
