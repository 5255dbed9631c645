//! Reads that one provider cannot bend: a JSON-RPC transport over several providers that sends each request
//! to all of them and answers only with what a quorum of them answered alike ([`agree`] decides which).
//!
//! The follower reads through it at block numbers (the head it takes is one a quorum has reached), so
//! honest providers answer alike, and a provider that lies — hides a log, adds one, flips an allowlist
//! answer — is outvoted and named ([`QuorumReport`]). When no answer reaches the quorum the request fails,
//! and the follower keeps its last view rather than following either side.
//!
//! Transactions do not go through it: they are sent through the first provider, as with one.

pub mod agree;

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use alloy::rpc::json_rpc::{RequestPacket, Response, ResponsePacket, ResponsePayload};
use alloy::transports::{BoxTransport, TransportError, TransportErrorKind, TransportFut};
use futures::stream::{FuturesUnordered, StreamExt as _};
use tracing::{debug, warn};

use self::agree::{Answer, Decision};
use crate::redact::RedactedUrl;

/// How long the answers that came after the quorum's are waited for, to name a provider that answered
/// otherwise.
const LATE_ANSWERS: std::time::Duration = std::time::Duration::from_secs(30);

/// What each provider has done since the agent started, for the API and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumReport {
    /// How many providers must answer alike: 1 with one provider, whose view is then unverified.
    pub quorum: usize,
    pub providers: Vec<ProviderReport>,
    /// Requests no answer of which reached the quorum.
    pub splits: u64,
    /// The last of those, in words that name the providers (their credentials hidden).
    pub last_split: Option<String>,
}

impl QuorumReport {
    /// Whether what is read is checked by more than one provider.
    pub fn verified(&self) -> bool {
        self.quorum >= 2
    }
}

/// One provider's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderReport {
    /// Its URL, credentials hidden.
    pub url: String,
    /// Answers that were among the quorum's.
    pub agreed: u64,
    /// Answers unlike the quorum's, ignored.
    pub dissented: u64,
    /// Requests it did not answer (an error of the transport: down, refused, timed out).
    pub failed: u64,
    /// The method of its last answer unlike the quorum's.
    pub last_dissent: Option<String>,
    /// It answered unlike the quorum within the last [`DISSENT_REMEMBERED`]. A provider that lies about
    /// one thing answers everything else alike, so agreeing since does not clear it.
    pub dissenting: bool,
    last_dissent_at: Option<std::time::Instant>,
}

/// How long a provider's answer unlike the quorum's keeps it shown as dissenting.
pub const DISSENT_REMEMBERED: std::time::Duration = std::time::Duration::from_secs(600);

/// The shared, live [`QuorumReport`].
#[derive(Debug, Clone, Default)]
pub struct QuorumWatch(Arc<Mutex<QuorumReport>>);

impl QuorumWatch {
    /// A report for `urls`, `quorum` of which must agree.
    pub fn new(urls: &[RedactedUrl], quorum: usize) -> Self {
        Self(Arc::new(Mutex::new(QuorumReport {
            quorum,
            providers: urls
                .iter()
                .map(|u| ProviderReport {
                    url: u.to_string(),
                    ..ProviderReport::default()
                })
                .collect(),
            ..QuorumReport::default()
        })))
    }

    /// The report as it is now.
    pub fn report(&self) -> QuorumReport {
        let mut report = self.lock().clone();
        for p in &mut report.providers {
            p.dissenting = p
                .last_dissent_at
                .is_some_and(|t| t.elapsed() < DISSENT_REMEMBERED);
        }
        report
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QuorumReport> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a request got no answer a quorum agreed on.
#[derive(Debug, thiserror::Error)]
pub enum Split {
    #[error(
        "the RPCs disagree on {method}: {groups}; {quorum} must answer alike, so nothing is taken from them (an agent keeps its last agreed view): check the providers, and drop one that lies"
    )]
    Disagree {
        method: String,
        /// Who answered what, in words: "a and b answered alike, c otherwise, d did not answer".
        groups: String,
        quorum: usize,
    },
    #[error(
        "too few RPCs answered {method} for a quorum of {quorum}: {failed} did not answer: check that they are up and reachable from here"
    )]
    Unanswered {
        method: String,
        failed: String,
        quorum: usize,
    },
}

struct Member {
    url: RedactedUrl,
    transport: BoxTransport,
}

/// The transport: cheap to clone, as alloy's client needs.
#[derive(Clone)]
pub struct Quorum {
    members: Arc<[Member]>,
    quorum: usize,
    watch: QuorumWatch,
    /// The answers still out once the quorum's was taken, heard out here; aborted with the transport.
    late: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl std::fmt::Debug for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quorum")
            .field("providers", &self.members.len())
            .field("quorum", &self.quorum)
            .finish_non_exhaustive()
    }
}

impl Quorum {
    /// A transport over `members` (each with its URL, for the report), `quorum` of which must agree; what
    /// it sees goes to `watch`.
    pub fn new(
        members: Vec<(RedactedUrl, BoxTransport)>,
        quorum: usize,
        watch: QuorumWatch,
    ) -> Self {
        Self {
            members: members
                .into_iter()
                .map(|(url, transport)| Member { url, transport })
                .collect(),
            quorum,
            watch,
            late: Arc::default(),
        }
    }

    async fn ask(self, request: RequestPacket) -> Result<ResponsePacket, TransportError> {
        let method = method_of(&request);
        let mut pending: FuturesUnordered<_> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut transport = m.transport.clone();
                let request = request.clone();
                async move {
                    use tower::Service as _;
                    (i, transport.call(request).await)
                }
            })
            .collect();
        let mut answers: Vec<(usize, Answer)> = Vec::new();
        let mut packets: Vec<Option<ResponsePacket>> =
            (0..self.members.len()).map(|_| None).collect();
        let mut failed: Vec<usize> = Vec::new();
        while let Some((i, result)) = pending.next().await {
            match result {
                Ok(packet) => {
                    answers.push((i, answer_of(&method, &packet)));
                    packets[i] = Some(packet);
                }
                Err(e) => {
                    tracing::debug!(provider = %self.members[i].url, %method, error = %self.members[i].url.scrub(&e.to_string()), "an RPC did not answer");
                    failed.push(i);
                }
            }
            match agree::decide(&answers, pending.len(), self.quorum) {
                Decision::Wait => {}
                Decision::Take { take, dissent } => {
                    let agreed: Vec<usize> = answers
                        .iter()
                        .map(|(i, _)| *i)
                        .filter(|i| !dissent.contains(i))
                        .collect();
                    self.record(&method, &agreed, &dissent, &failed);
                    let taken = answers
                        .iter()
                        .find(|(i, _)| *i == take)
                        .map(|(_, a)| a.clone());
                    if let Some(Answer::Keyed(key)) = taken
                        && !pending.is_empty()
                    {
                        // The rest are heard out in the background, so that a provider that lies but
                        // answers last is still named; the answer does not wait for them.
                        let this = self.clone();
                        let mut late = self.late.lock().unwrap_or_else(PoisonError::into_inner);
                        while late.try_join_next().is_some() {}
                        late.spawn(async move {
                            let heard = tokio::time::timeout(LATE_ANSWERS, async {
                                while let Some((i, result)) = pending.next().await {
                                    let (agreed, dissent, failed) = match result {
                                        Ok(p)
                                            if answer_of(&method, &p)
                                                == Answer::Keyed(key.clone()) =>
                                        {
                                            (vec![i], vec![], vec![])
                                        }
                                        Ok(_) => (vec![], vec![i], vec![]),
                                        Err(_) => (vec![], vec![], vec![i]),
                                    };
                                    this.record(&method, &agreed, &dissent, &failed);
                                }
                            });
                            let _ = heard.await;
                        });
                    }
                    return packets[take].take().ok_or_else(|| {
                        TransportErrorKind::custom_str("the quorum's answer is gone")
                    });
                }
                Decision::Split { groups } => {
                    return Err(self.split(&method, &groups, &failed));
                }
            }
        }
        Err(self.split(&method, &[], &failed))
    }

    fn record(&self, method: &str, agreed: &[usize], dissent: &[usize], failed: &[usize]) {
        let mut report = self.watch.lock();
        for &i in agreed {
            let p = &mut report.providers[i];
            p.agreed = p.agreed.saturating_add(1);
        }
        for &i in dissent {
            let p = &mut report.providers[i];
            p.dissented = p.dissented.saturating_add(1);
            p.last_dissent = Some(method.to_owned());
            let now = std::time::Instant::now();
            let again = p
                .last_dissent_at
                .is_some_and(|t| now.duration_since(t) < DISSENT_REMEMBERED);
            p.last_dissent_at = Some(now);
            if !again {
                warn!(provider = %self.members[i].url, method, quorum = self.quorum, "this RPC answered unlike a quorum of the others: its answer is ignored, as is every answer of it that differs");
            }
        }
        for &i in failed {
            let p = &mut report.providers[i];
            p.failed = p.failed.saturating_add(1);
        }
    }

    fn split(&self, method: &str, groups: &[Vec<usize>], failed: &[usize]) -> TransportError {
        let name = |g: &[usize]| {
            g.iter()
                .map(|i| self.members[*i].url.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        };
        let split = match groups.is_empty() {
            true => Split::Unanswered {
                method: method.to_owned(),
                failed: name(failed),
                quorum: self.quorum,
            },
            false => {
                let mut parts: Vec<String> = groups
                    .iter()
                    .enumerate()
                    .map(|(n, g)| match (n, g.len()) {
                        (0, 1) => format!("{} answered one way", name(g)),
                        (0, _) => format!("{} answered alike", name(g)),
                        _ => format!("{} otherwise", name(g)),
                    })
                    .collect();
                if !failed.is_empty() {
                    parts.push(format!("{} did not answer", name(failed)));
                }
                Split::Disagree {
                    method: method.to_owned(),
                    groups: parts.join(", "),
                    quorum: self.quorum,
                }
            }
        };
        let text = split.to_string();
        let mut report = self.watch.lock();
        report.splits = report.splits.saturating_add(1);
        // Providers that keep disagreeing do so at every poll: warned of once, until the split changes.
        let again = report.last_split.as_deref() == Some(text.as_str());
        report.last_split = Some(text);
        for &i in failed {
            let p = &mut report.providers[i];
            p.failed = p.failed.saturating_add(1);
        }
        drop(report);
        match again {
            true => debug!(%split, "no quorum, as before"),
            false => warn!(%split, "no quorum"),
        }
        TransportErrorKind::custom(split)
    }
}

impl tower::Service<RequestPacket> for Quorum {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        Box::pin(self.clone().ask(request))
    }
}

/// The method a packet asks, for the report: a batch's methods joined.
fn method_of(request: &RequestPacket) -> String {
    match request {
        RequestPacket::Single(r) => r.method().to_owned(),
        RequestPacket::Batch(rs) => rs.iter().map(|r| r.method()).collect::<Vec<_>>().join("+"),
    }
}

/// A packet's answer as it is compared: a head alone for `eth_blockNumber`, else each response's key in id
/// order.
fn answer_of(method: &str, packet: &ResponsePacket) -> Answer {
    if method == "eth_blockNumber"
        && let ResponsePacket::Single(Response {
            payload: ResponsePayload::Success(raw),
            ..
        }) = packet
        && let Ok(n) = serde_json::from_str::<alloy::primitives::U64>(raw.get())
    {
        return Answer::Head(n.to::<u64>());
    }
    let responses: Vec<&Response> = match packet {
        ResponsePacket::Single(r) => vec![r],
        ResponsePacket::Batch(rs) => rs.iter().collect(),
    };
    let mut keys: Vec<(String, String)> = responses
        .iter()
        .map(|r| (r.id.to_string(), key_of(method, &r.payload)))
        .collect();
    keys.sort();
    Answer::Keyed(
        keys.into_iter()
            .map(|(id, k)| format!("{id}={k}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn key_of(method: &str, payload: &ResponsePayload) -> String {
    match payload {
        ResponsePayload::Success(raw) => match serde_json::from_str(raw.get()) {
            Ok(v) => agree::key(method, &v),
            Err(_) => format!("unparsed {}", raw.get()),
        },
        ResponsePayload::Failure(e) => {
            let data = e
                .data
                .as_ref()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d.get()).ok());
            agree::error_key(e.code, data.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy::providers::{Provider as _, ProviderBuilder};
    use alloy::rpc::client::RpcClient;
    use alloy::transports::mock::Asserter;

    use super::*;

    /// A provider over three mocked RPCs, and what each of them will answer next.
    fn three() -> (alloy::providers::DynProvider, QuorumWatch, [Asserter; 3]) {
        let asserters = [Asserter::new(), Asserter::new(), Asserter::new()];
        let urls: Vec<RedactedUrl> = [
            "https://a.example/",
            "https://b.example/",
            "https://user:secret@c.example/",
        ]
        .iter()
        .map(|u| RedactedUrl::new(&u.parse().unwrap()))
        .collect();
        let watch = QuorumWatch::new(&urls, 2);
        let members = urls
            .iter()
            .zip(&asserters)
            .map(|(u, a)| (u.clone(), RpcClient::mocked(a.clone()).transport().clone()))
            .collect();
        let quorum = Quorum::new(members, 2, watch.clone());
        let provider = ProviderBuilder::new()
            .connect_client(RpcClient::new(quorum, false))
            .erased();
        (provider, watch, asserters)
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
    async fn with_no_two_alike_nothing_is_taken_and_the_error_names_the_providers_without_secrets()
    {
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

    /// Captures what is logged at warn level while the test runs (on this thread).
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Warnings {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_split_that_repeats_is_warned_of_once() {
        let warnings = Warnings::default();
        let sink = warnings.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
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
        let logged = String::from_utf8(warnings.0.lock().unwrap().clone()).unwrap();
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
                && err.contains("https://a.example/ and https://b.example/ did not answer"),
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
}
