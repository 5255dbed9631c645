//! The quorum transport over mocked providers: which answer is taken, who is named, and how.

use alloy::providers::{Provider as _, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::transports::mock::Asserter;

use super::*;
use alloy::primitives::U256;

/// A provider over `transports` (each named by its URL), `quorum` of which must agree, and its report.
fn over(
    urls: &[&str],
    transports: Vec<BoxTransport>,
    quorum: usize,
) -> (alloy::providers::DynProvider, QuorumWatch) {
    let urls: Vec<RedactedUrl> = urls
        .iter()
        .map(|u| RedactedUrl::new(&u.parse().unwrap()))
        .collect();
    let watch = QuorumWatch::new(&urls, quorum);
    let members = urls.into_iter().zip(transports).collect();
    let transport = Quorum::new(members, quorum, watch.clone());
    let provider = ProviderBuilder::new()
        .connect_client(RpcClient::new(transport, false))
        .erased();
    (provider, watch)
}

/// A mocked RPC, and what it will answer next.
fn mocked() -> (BoxTransport, Asserter) {
    let asserter = Asserter::new();
    let transport = RpcClient::mocked(asserter.clone()).transport().clone();
    (transport, asserter)
}

/// A provider over three mocked RPCs, and what each of them will answer next.
fn three() -> (alloy::providers::DynProvider, QuorumWatch, [Asserter; 3]) {
    let [(ta, a), (tb, b), (tc, c)] = [mocked(), mocked(), mocked()];
    let urls = [
        "https://a.example/",
        "https://b.example/",
        "https://user:secret@c.example/",
    ];
    let (provider, watch) = over(&urls, vec![ta, tb, tc], 2);
    (provider, watch, [a, b, c])
}

#[tokio::test]
async fn the_answer_two_of_three_give_is_taken_and_the_third_is_reported() {
    let (provider, watch, [a, b, c]) = three();
    a.push_success(&"0x01");
    b.push_success(&"0x01");
    c.push_success(&"0x00");
    let answer: String = provider.raw_request("eth_call".into(), ()).await.unwrap();
    assert_eq!(answer, "0x01");
    // The third may answer after the quorum is in: it is heard out in the background.
    for _ in 0..100 {
        if watch.report().providers[2].dissented > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let report = watch.report();
    assert!(report.verified());
    assert_eq!(report.providers[2].dissented, 1, "{report:?}");
    assert!(report.providers[2].dissenting);
    assert_eq!(
        report.providers[2].last_dissent.as_deref(),
        Some("eth_call")
    );
    assert_eq!(report.providers[2].url, "https://***:***@c.example/");
    assert_eq!(report.splits, 0);
}

#[tokio::test]
async fn with_no_two_alike_nothing_is_taken_and_the_error_names_the_providers_without_secrets() {
    let (provider, watch, [a, b, c]) = three();
    a.push_success(&"0x01");
    b.push_success(&"0x02");
    c.push_success(&"0x03");
    let err = provider
        .raw_request::<_, String>("eth_call".into(), ())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the RPCs disagree on eth_call"), "{err}");
    assert!(
        err.contains("https://a.example/") && err.contains("c.example"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
    let report = watch.report();
    assert_eq!(report.splits, 1);
    assert!(report.last_split.is_some_and(|s| !s.contains("secret")));
}

#[tokio::test]
async fn one_provider_down_leaves_two_that_agree() {
    let (provider, watch, [a, b, c]) = three();
    a.push_failure_msg("the provider is down");
    a.write_q().clear();
    b.push_success(&"0x07");
    c.push_success(&"0x07");
    let answer: String = provider.raw_request("eth_call".into(), ()).await.unwrap();
    assert_eq!(answer, "0x07");
    let report = watch.report();
    assert_eq!(
        (report.providers[1].agreed, report.providers[2].agreed),
        (1, 1)
    );
}

#[tokio::test]
async fn a_split_that_repeats_is_warned_of_once() {
    let (warnings, _guard) = crate::testing::Warnings::capture();
    let (provider, watch, [a, b, c]) = three();
    for _ in 0..3 {
        a.push_success(&"0x01");
        b.push_success(&"0x02");
        c.push_success(&"0x03");
        provider
            .raw_request::<_, String>("eth_call".into(), ())
            .await
            .unwrap_err();
    }
    assert_eq!(watch.report().splits, 3);
    let logged = warnings.text();
    assert_eq!(logged.matches("no quorum").count(), 1, "{logged}");
}

#[tokio::test]
async fn providers_that_do_not_answer_are_named_as_down_not_as_disagreeing() {
    let (provider, watch, [a, b, c]) = three();
    for x in [&a, &b] {
        x.push_failure_msg("down");
        x.write_q().clear();
    }
    c.push_success(&"0x07");
    let err = provider
        .raw_request::<_, String>("eth_call".into(), ())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("too few RPCs answered eth_call for a quorum of 2")
            && err.contains("https://a.example/ (")
            && err.contains("https://b.example/ (")
            && err.ends_with("did not answer: check that they are up and reachable from here"),
        "{err}"
    );
    assert_eq!(watch.report().splits, 1);
}

#[tokio::test]
async fn the_head_taken_is_one_a_quorum_has_reached() {
    let (provider, _, [a, b, c]) = three();
    a.push_success(&"0xffffff");
    b.push_success(&"0x10");
    c.push_success(&"0x0f");
    assert_eq!(provider.get_block_number().await.unwrap(), 0x10);
}

/// A transport that never answers: a provider that hangs.
#[derive(Clone)]
struct Hangs;

impl tower::Service<RequestPacket> for Hangs {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: RequestPacket) -> Self::Future {
        Box::pin(std::future::pending())
    }
}

/// A provider over two mocked RPCs and a third that hangs.
fn two_and_a_hang() -> (alloy::providers::DynProvider, QuorumWatch, [Asserter; 2]) {
    let [(ta, a), (tb, b)] = [mocked(), mocked()];
    let urls = [
        "https://a.example/",
        "https://b.example/",
        "https://hang.example/",
    ];
    let (provider, watch) = over(&urls, vec![ta, tb, BoxTransport::new(Hangs)], 2);
    (provider, watch, [a, b])
}

#[tokio::test(start_paused = true)]
async fn a_hanging_provider_holds_nothing_up_and_is_named_as_not_answering() {
    let (provider, watch, [a, b]) = two_and_a_hang();
    a.push_success(&"0x07");
    b.push_success(&"0x07");
    let answer: String = provider.raw_request("eth_call".into(), ()).await.unwrap();
    assert_eq!(answer, "0x07");
    assert!(watch.report().providers[2].failing.is_none());
    tokio::time::sleep(SLOW_AFTER + Duration::from_millis(100)).await;
    let report = watch.report();
    let hanging = &report.providers[2];
    assert_eq!(
        hanging.failing.as_deref(),
        Some("no answer within 3 s"),
        "{report:?}"
    );
    assert!(report.providers[..2].iter().all(|p| p.failing.is_none()));
}

#[tokio::test]
async fn a_dissenter_is_shown_with_the_providers_whose_answer_was_taken_not_as_the_culprit() {
    let (provider, watch, [a, b, c]) = three();
    // Two that lie alike outvote the honest third: the report says who answered alike, not who lies.
    a.push_success(&"0x00");
    b.push_success(&"0x01");
    c.push_success(&"0x00");
    let answer: String = provider.raw_request("eth_call".into(), ()).await.unwrap();
    assert_eq!(answer, "0x00");
    for _ in 0..100 {
        if watch.report().providers[1].dissented > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let report = watch.report();
    assert_eq!(
        report.providers[1].dissented_from,
        vec![
            "https://a.example/".to_owned(),
            "https://***:***@c.example/".to_owned()
        ],
        "{report:?}"
    );
}

#[tokio::test]
async fn one_provider_that_is_down_is_named_with_why() {
    let (transport, asserter) = mocked();
    let (provider, watch) = over(&["https://user:secret@a.example/"], vec![transport], 1);
    let err = provider
        .raw_request::<_, String>("eth_call".into(), ())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the RPC https://***:***@a.example/ did not answer eth_call: ")
            && !err.contains("secret"),
        "{err}"
    );
    let report = watch.report();
    assert!(!report.verified());
    assert!(report.providers[0].failing.is_some(), "{report:?}");
    // Its next answer clears it.
    asserter.push_success(&"0x01");
    let _: String = provider.raw_request("eth_call".into(), ()).await.unwrap();
    assert!(watch.report().providers[0].failing.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_gas_estimate_is_the_median_of_the_providers_figures() {
    let (provider, _, [a, b, c]) = three();
    a.push_success(&U256::from(21_000));
    b.push_success(&U256::from(90_000_000));
    c.push_success(&U256::from(22_000));
    let gas: U256 = provider
        .raw_request("eth_estimateGas".into(), ())
        .await
        .unwrap();
    assert_eq!(gas, U256::from(22_000));
}

#[tokio::test]
async fn a_transaction_is_taken_from_the_first_provider_that_accepts_its_hash() {
    let (provider, watch, [a, b, c]) = three();
    let raw = alloy::primitives::Bytes::from_static(b"\x02signed transaction");
    let hash = keccak256(&raw);
    // A refuses it (censors), B answers another hash (lies), C takes it.
    a.push_failure_msg("transaction censored");
    b.push_success(&B256::repeat_byte(7));
    c.push_success(&hash);
    let answer: B256 = provider
        .raw_request("eth_sendRawTransaction".into(), (raw,))
        .await
        .unwrap();
    assert_eq!(answer, hash);
    for _ in 0..100 {
        let r = watch.report();
        if r.providers[0].failed > 0 && r.providers[1].failed > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let report = watch.report();
    assert_eq!(report.providers[2].agreed, 1, "{report:?}");
    assert!(
        report.providers[0]
            .failing
            .as_deref()
            .is_some_and(|f| f.contains("refused a transaction: transaction censored")),
        "{report:?}"
    );
    assert!(report.providers[1].failing.is_some(), "{report:?}");
}

#[tokio::test]
async fn a_transaction_every_provider_refuses_fails_with_the_refusal_most_gave() {
    let (provider, _, [a, b, c]) = three();
    let raw = alloy::primitives::Bytes::from_static(b"\x02signed transaction");
    a.push_failure_msg("insufficient funds for gas * price + value");
    b.push_failure_msg("insufficient funds for gas * price + value");
    c.push_failure_msg("transaction censored");
    let err = provider
        .raw_request::<_, B256>("eth_sendRawTransaction".into(), (raw,))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("insufficient funds"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_is_sent_no_more_than_sixteen_requests_at_once() {
    let (provider, watch, [a, b]) = two_and_a_hang();
    let asks: Vec<_> = (0..MAX_WAITING + 4)
        .map(|_| {
            a.push_success(&"0x07");
            b.push_success(&"0x07");
            let provider = provider.clone();
            async move {
                provider
                    .raw_request::<_, String>("eth_call".into(), ())
                    .await
            }
        })
        .collect();
    for answer in futures::future::join_all(asks).await {
        assert_eq!(answer.unwrap(), "0x07", "the two others answer every one");
    }
    let report = watch.report();
    let hanging = &report.providers[2];
    assert_eq!(hanging.failed, 4, "the requests past sixteen: {report:?}");
    assert_eq!(
        hanging.failing.as_deref(),
        Some("16 requests already wait on it")
    );
}
