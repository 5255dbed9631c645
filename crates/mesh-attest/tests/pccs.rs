//! The PCCS path against a loopback PCCS serving the mock PKI's collateral: fetched once, cached in
//! memory and on disk, refreshed when due, served from the cache while the PCCS is down, and a named
//! error once the cached one has expired.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_attest::collateral::{
    CollateralSource, Pccs, PinnedCollateral, RETRY_AFTER_FAILURE, quote_platform,
};
use mesh_attest::{CollateralError, QuoteCollateralV3, Trust, verify_quote};
use owned_task::Task;
use tdx_mock::{CollateralOptions, MockPki, TdInput};
use tokio::net::TcpListener;

const SEED: [u8; 32] = [0x7c; 32];
const NOW: u64 = 1_760_000_000;
const DAY: u64 = 86_400;

struct FakePccs {
    collateral: QuoteCollateralV3,
    fmspc: String,
    requests: Vec<String>,
    /// Answer every request with HTTP 503.
    fail: bool,
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Answers the four requests of a PCCS (Intel's v4 API) with one collateral.
fn answer(state: &Mutex<FakePccs>, path_and_query: &str) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    state.requests.push(path_and_query.to_owned());
    if state.fail {
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"down for maintenance")))
            .unwrap();
    }
    let c = state.collateral.clone();
    let ok = || Response::builder().status(200);
    let (builder, body) = match path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""))
    {
        ("/sgx/certification/v4/pckcrl", query) if query.contains("encoding=der") => (
            ok().header(
                "SGX-PCK-CRL-Issuer-Chain",
                percent_encode(&c.pck_crl_issuer_chain),
            ),
            c.pck_crl.clone(),
        ),
        ("/tdx/certification/v4/tcb", query) if query == format!("fmspc={}", state.fmspc) => (
            ok().header(
                "TCB-Info-Issuer-Chain",
                percent_encode(&c.tcb_info_issuer_chain),
            ),
            format!(
                r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            )
            .into_bytes(),
        ),
        ("/tdx/certification/v4/qe/identity", _) => (
            ok().header(
                "SGX-Enclave-Identity-Issuer-Chain",
                percent_encode(&c.qe_identity_issuer_chain),
            ),
            format!(
                r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            )
            .into_bytes(),
        ),
        ("/sgx/certification/v4/rootcacrl", _) => (ok(), hex::encode(&c.root_ca_crl).into_bytes()),
        _ => (Response::builder().status(404), b"not found".to_vec()),
    };
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

/// A PCCS on a loopback port; stopping the task takes it down (the port then refuses).
async fn serve(state: Arc<Mutex<FakePccs>>) -> (SocketAddr, Task<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = Task::spawn("fake-pccs", async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let response = answer(&state, &path);
                async move { Ok::<_, Infallible>(response) }
            });
            connections.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
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
    let state = Arc::new(Mutex::new(FakePccs {
        collateral: first.clone(),
        fmspc: hex::encode_upper(pki.fmspc()),
        requests: Vec::new(),
        fail: false,
    }));
    let (addr, server) = serve(Arc::clone(&state)).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/sgx/certification/v4");

    let platform = quote_platform(&quote).unwrap();
    assert_eq!(platform.fmspc, pki.fmspc());

    let pccs = Pccs::new(&url, Some(dir.path().to_owned()))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let source = CollateralSource::Pccs(pccs);

    // Fetched once, with the signed JSON kept byte for byte: it verifies.
    let got = source.for_quote(&quote, NOW).await.unwrap();
    assert_eq!(*got, first);
    verify_quote(&quote, &trust, &got, false, NOW).expect("fetched collateral verifies");
    let fetched = state.lock().unwrap().requests.len();
    assert_eq!(fetched, 4, "{:?}", state.lock().unwrap().requests);

    // Written to the cache directory atomically: the file, and no temporary left behind.
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec![format!("{}.json", hex::encode(pki.fmspc()))]);

    // Served from memory while fresh.
    let again = source.for_quote(&quote, NOW + 10 * DAY).await.unwrap();
    assert_eq!(*again, first);
    assert_eq!(state.lock().unwrap().requests.len(), fetched);

    // The PCCS fails. Refresh is due after three quarters of the window, but the cached
    // collateral is served until it expires, and the PCCS is not asked at every check.
    state.lock().unwrap().fail = true;
    let due = NOW + 25 * DAY;
    assert_eq!(*source.for_quote(&quote, due).await.unwrap(), first);
    let asked = state.lock().unwrap().requests.len();
    assert_eq!(
        asked,
        fetched + 1,
        "the first failed request ends the attempt"
    );
    assert_eq!(*source.for_quote(&quote, due + 60).await.unwrap(), first);
    assert_eq!(
        state.lock().unwrap().requests.len(),
        asked,
        "not asked again within RETRY_AFTER_FAILURE"
    );
    let retry = due + RETRY_AFTER_FAILURE;
    assert_eq!(*source.for_quote(&quote, retry).await.unwrap(), first);
    assert_eq!(
        state.lock().unwrap().requests.len(),
        asked + 1,
        "asked again after it"
    );

    // Then it is down altogether...
    let _ = server.stop().await;

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
    state.lock().unwrap().collateral = second.clone();
    state.lock().unwrap().fail = false;
    let (addr, server) = serve(Arc::clone(&state)).await;
    let back = Pccs::new(&format!("http://{addr}"), Some(dir.path().to_owned()))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let refreshed = back.for_platform(platform, NOW + 25 * DAY).await.unwrap();
    assert_eq!(*refreshed, second);
    verify_quote(&quote, &trust, &refreshed, false, NOW + 25 * DAY).expect("verifies");
    let on_disk = Pccs::new("http://127.0.0.1:9", Some(dir.path().to_owned())).unwrap();
    assert_eq!(*on_disk.cached(&pki.fmspc()).unwrap().0, second);

    // A stale PCCS serving the older collateral again does not roll the newer one back.
    state.lock().unwrap().collateral = first.clone();
    let rolled = back.for_platform(platform, NOW + 45 * DAY).await.unwrap();
    assert_eq!(*rolled, second);

    let _ = server.stop().await;
}

#[tokio::test]
async fn nothing_cached_and_no_pccs_is_a_named_error() {
    let pki = MockPki::from_seed(SEED);
    // Bind then drop, so the port is (very likely) closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let pccs = Pccs::new(&format!("http://{addr}"), None)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let got = CollateralSource::Pccs(pccs)
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
