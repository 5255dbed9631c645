//! Reads that one provider cannot bend, and transactions that one provider cannot stop: a JSON-RPC
//! transport over several providers that sends each request to all of them. How each method's answers are
//! taken is decided in one place ([`agree::policy`]):
//!
//! - a read answers only with what a quorum of providers answered alike. The follower reads at block
//!   numbers, and the other reads at a head a quorum has reached, so honest providers answer alike; a
//!   provider that lies (hides a log, adds one, flips an allowlist answer) is outvoted and named. When no
//!   answer reaches the quorum the request fails, and the agent keeps what it had rather than following
//!   either side;
//! - a figure each provider estimates for itself (gas, fees) is the median of those a quorum gave;
//! - a signed transaction goes to every provider, and the first that takes it answers: one provider down,
//!   hanging or dropping transactions does not hold it up.
//!
//! What each provider did goes to a shared [`QuorumReport`], which names the providers that fail, hang or
//! answer unlike the others, and who answered otherwise. With one provider the same transport serves it
//! alone (quorum 1), so that it is named as the others would be; its view is then unverified.

pub mod agree;

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, keccak256};
use alloy::rpc::json_rpc::{RequestPacket, Response, ResponsePacket, ResponsePayload};
use alloy::transports::{BoxTransport, TransportError, TransportErrorKind, TransportFut};
use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use self::agree::{Answer, Decision, Policy};
use crate::redact::RedactedUrl;

/// How long the answers that came after the quorum's are waited for, to name a provider that answered
/// otherwise. Longer than a provider's own request timeout ([`crate::rpc::REQUEST_TIMEOUT`]), so that a
/// hanging provider is heard out as failed.
const LATE_ANSWERS: Duration = Duration::from_secs(30);

/// A provider that has not answered a request this long is shown as not answering, while the request
/// goes on: a hanging provider is named within seconds, not when its request times out.
pub const SLOW_AFTER: Duration = Duration::from_secs(3);

/// Once a quorum has given figures, how long the other providers' are waited for, so that the median is
/// taken over every provider that is up: longer than an honest provider's round trip, short beside a
/// ballot's deadline when one provider hangs. As long for the others' word on what one provider has not
/// seen yet ([`Policy::Pending`]).
const ESTIMATE_GRACE: Duration = Duration::from_millis(500);

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

    /// The providers that do not answer now.
    pub fn failing(&self) -> impl Iterator<Item = &ProviderReport> {
        self.providers.iter().filter(|p| p.failing.is_some())
    }
}

/// One provider's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderReport {
    /// Its URL, credentials hidden.
    pub url: String,
    /// Answers that were among the quorum's (for a transaction: it took it).
    pub agreed: u64,
    /// Answers unlike the quorum's, ignored.
    pub dissented: u64,
    /// Requests it did not answer (an error of the transport: down, refused, timed out), and
    /// transactions it refused that another provider took.
    pub failed: u64,
    /// The method of its last answer unlike the quorum's.
    pub last_dissent: Option<String>,
    /// Who answered alike that time, the quorum whose answer was taken. Either side may be the one that
    /// lies: with three providers, two that lie alike outvote the third.
    pub dissented_from: Vec<String>,
    /// It answered unlike the quorum within the last [`DISSENT_REMEMBERED`]. A provider that lies about
    /// one thing answers everything else alike, so agreeing since does not clear it.
    pub dissenting: bool,
    last_dissent_at: Option<Instant>,
    /// Why it does not answer, while it does not: its last error (credentials scrubbed), or that a
    /// request has waited [`SLOW_AFTER`] for it. Cleared by its next answer.
    pub failing: Option<String>,
    /// Since when it has not answered.
    pub failing_since: Option<Instant>,
}

/// How long a provider's answer unlike the quorum's keeps it shown as dissenting.
pub const DISSENT_REMEMBERED: Duration = Duration::from_secs(600);

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
        "the RPCs disagree on {method}: {groups}; {quorum} must answer alike, so nothing is taken from them (an agent keeps its last agreed view): either side may be the one that lies; check the providers, and drop the one that does"
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
        /// Each provider that did not answer, with why.
        failed: String,
        quorum: usize,
    },
    #[error(
        "the RPC {provider} did not answer {method}: {why}: check that it is up and reachable from here"
    )]
    Down {
        method: String,
        provider: String,
        why: String,
    },
}

struct Member {
    url: RedactedUrl,
    transport: BoxTransport,
    /// Requests sent to it and not answered yet.
    waiting: std::sync::atomic::AtomicUsize,
}

/// A provider that this many requests already wait on is not sent more until some are answered: each holds
/// a connection, and one that hangs would otherwise gather a connection per request until its timeout.
const MAX_WAITING: usize = 16;

/// One request counted against a provider until it is answered or dropped.
struct Waited<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waited<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What every request of the transport shares.
struct Shared {
    members: Vec<Member>,
    quorum: usize,
    watch: QuorumWatch,
}

/// The transport: cheap to clone, as alloy's client needs.
#[derive(Clone)]
pub struct Quorum {
    shared: Arc<Shared>,
    /// Each request is heard out here, beyond the answer it gives, to name a provider that answers late
    /// and otherwise or not at all; aborted with the transport.
    hearing: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl std::fmt::Debug for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quorum")
            .field("providers", &self.shared.members.len())
            .field("quorum", &self.shared.quorum)
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
            shared: Arc::new(Shared {
                members: members
                    .into_iter()
                    .map(|(url, transport)| Member {
                        url,
                        transport,
                        waiting: std::sync::atomic::AtomicUsize::new(0),
                    })
                    .collect(),
                quorum,
                watch,
            }),
            hearing: Arc::default(),
        }
    }

    async fn ask(self, request: RequestPacket) -> Result<ResponsePacket, TransportError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut hearing = self.hearing.lock().unwrap_or_else(PoisonError::into_inner);
            while hearing.try_join_next().is_some() {}
            hearing.spawn(hear(Arc::clone(&self.shared), request, reply));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(TransportErrorKind::custom_str("the request was dropped")))
    }
}

/// The answer so far of one request, and who gave what.
struct Hearing {
    method: String,
    policy: Policy,
    /// For a transaction: the hash of its bytes, which a provider that took it must answer.
    sent: Option<B256>,
    answers: Vec<(usize, Answer)>,
    packets: Vec<Option<ResponsePacket>>,
    outstanding: Vec<bool>,
    failures: Vec<(usize, String)>,
    /// The answer taken, once it is: later answers are compared with it.
    taken: Option<Answer>,
    /// Who gave the answer taken.
    majority: Vec<usize>,
}

/// Sends `request` to every provider, answers `reply` as soon as the policy allows, and hears the rest
/// out for the report.
async fn hear(
    shared: Arc<Shared>,
    request: RequestPacket,
    reply: oneshot::Sender<Result<ResponsePacket, TransportError>>,
) {
    let policy = match &request {
        RequestPacket::Single(r) => agree::policy(r.method()),
        RequestPacket::Batch(_) => Policy::Quorum,
    };
    let n = shared.members.len();
    let mut h = Hearing {
        method: method_of(&request),
        policy,
        sent: (policy == Policy::Broadcast)
            .then(|| raw_transaction_hash(&request))
            .flatten(),
        answers: Vec::new(),
        packets: (0..n).map(|_| None).collect(),
        outstanding: vec![true; n],
        failures: Vec::new(),
        taken: None,
        majority: Vec::new(),
    };
    let mut pending: FuturesUnordered<_> = shared
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut transport = m.transport.clone();
            let request = request.clone();
            let waiting = &m.waiting;
            async move {
                use std::sync::atomic::Ordering;
                use tower::Service as _;
                if waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    let full = format!("{MAX_WAITING} requests already wait on it");
                    return (i, Err(TransportErrorKind::custom_str(&full)));
                }
                let _waited = Waited(waiting);
                (i, transport.call(request).await)
            }
        })
        .collect();
    let started = tokio::time::Instant::now();
    let (slow_at, give_up) = (started + SLOW_AFTER, started + LATE_ANSWERS);
    let mut slow_marked = false;
    let mut grace: Option<tokio::time::Instant> = None;
    let mut reply = Some(reply);
    while !pending.is_empty() {
        let mut deadline = give_up;
        if !slow_marked {
            deadline = deadline.min(slow_at);
        }
        if let (Some(g), true) = (grace, reply.is_some()) {
            deadline = deadline.min(g);
        }
        let next = tokio::select! {
            next = pending.next() => next,
            () = tokio::time::sleep_until(deadline) => None,
        };
        let now = tokio::time::Instant::now();
        match next {
            Some((i, result)) => {
                h.outstanding[i] = false;
                match result {
                    Ok(packet) => shared.heard(&mut h, i, packet),
                    Err(e) => {
                        let why = shared.members[i].url.scrub(&chain_of(&e));
                        debug!(provider = %shared.members[i].url, method = %h.method, error = %why, "an RPC did not answer");
                        shared.failed(i, &why);
                        h.failures.push((i, why));
                    }
                }
            }
            None if now >= give_up => break,
            None => {
                if !slow_marked && now >= slow_at {
                    slow_marked = true;
                    for i in (0..n).filter(|i| h.outstanding[*i]) {
                        shared.slow(i);
                    }
                }
            }
        }
        let Some(r) = reply.take() else {
            continue;
        };
        let settled = grace.is_some_and(|g| now >= g);
        match agree::decide_for(h.policy, &h.answers, pending.len(), shared.quorum, settled) {
            Decision::Wait => {
                let figures = h
                    .answers
                    .iter()
                    .filter(|(_, a)| matches!(a, Answer::Figure(_)))
                    .count();
                let pending_split = h.policy == Policy::Pending
                    && h.answers.len() >= shared.quorum
                    && h.answers.iter().any(|(_, a)| *a == agree::not_yet());
                if grace.is_none() && (figures >= shared.quorum || pending_split) {
                    grace = Some(now + ESTIMATE_GRACE);
                }
                reply = Some(r);
            }
            Decision::Take { take, dissent } => {
                let packet = shared.take(&mut h, take, &dissent);
                let _ = r.send(packet);
            }
            Decision::Split { groups } => {
                let _ = r.send(Err(shared.split(&h.method, &groups, &h.failures)));
                return;
            }
        }
    }
    if let Some(r) = reply {
        let _ = r.send(Err(shared.split(&h.method, &[], &h.failures)));
    }
}

impl Shared {
    /// An answer of provider `i`: kept for the decision, or, once one is taken, recorded against it.
    fn heard(&self, h: &mut Hearing, i: usize, packet: ResponsePacket) {
        let answer = answer_of(h.policy, &h.method, &packet, h.sent);
        self.answered(i);
        let Some(taken) = &h.taken else {
            h.answers.push((i, answer));
            h.packets[i] = Some(packet);
            return;
        };
        match (h.policy, &answer) {
            (Policy::Broadcast, _) => self.transaction_answer(i, &answer),
            (_, Answer::Head(_)) => self.agreed(&[i]),
            (Policy::Estimate, Answer::Figure(_)) if matches!(taken, Answer::Figure(_)) => {
                self.agreed(&[i]);
            }
            // "Not yet" was taken: a provider that has it already is ahead, not against.
            (Policy::Pending, _) if *taken == agree::not_yet() => {}
            // A receipt was taken: a provider that has not seen it yet is behind, not against.
            (Policy::Pending, late) if *late == agree::not_yet() => {}
            _ if answer == *taken => self.agreed(&[i]),
            _ => {
                let from = h.majority.clone();
                self.dissented(i, &h.method, &from);
            }
        }
    }

    /// Takes provider `take`'s answer, with `dissent` its dissenters, and records every answer in so far.
    fn take(
        &self,
        h: &mut Hearing,
        take: usize,
        dissent: &[usize],
    ) -> Result<ResponsePacket, TransportError> {
        h.majority = h
            .answers
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| !dissent.contains(i))
            .collect();
        h.taken = h
            .answers
            .iter()
            .find(|(i, _)| *i == take)
            .map(|(_, a)| a.clone());
        match h.policy {
            Policy::Broadcast => {
                for (i, a) in &h.answers {
                    self.transaction_answer(*i, a);
                }
                // Whoever took it is the majority a late refusal is weighed against.
                h.majority = vec![take];
            }
            Policy::Pending if h.taken == Some(agree::not_yet()) => {}
            Policy::Quorum | Policy::Estimate | Policy::Pending => {
                self.agreed(&h.majority);
                for &i in dissent {
                    self.dissented(i, &h.method, &h.majority);
                }
            }
        }
        h.packets[take]
            .take()
            .ok_or_else(|| TransportErrorKind::custom_str("the quorum's answer is gone"))
    }

    /// What a provider's answer to a transaction says of it: it took it, or had it already, or refused.
    fn transaction_answer(&self, i: usize, answer: &Answer) {
        match answer {
            Answer::Accepted => self.agreed(&[i]),
            Answer::Keyed(refusal) if agree::is_duplicate(refusal) => self.agreed(&[i]),
            Answer::Keyed(refusal) => {
                let why = format!("refused a transaction: {refusal}");
                warn!(provider = %self.members[i].url, %why, "an RPC refused a transaction that is sent to every provider");
                self.failed(i, &why);
            }
            Answer::Head(_) | Answer::Figure(_) => self.agreed(&[i]),
        }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, QuorumReport> {
        self.watch.lock()
    }

    fn answered(&self, i: usize) {
        let mut report = self.report();
        let p = &mut report.providers[i];
        if p.failing.take().is_some() {
            debug!(provider = %self.members[i].url, "the RPC answers again");
        }
        p.failing_since = None;
    }

    fn agreed(&self, who: &[usize]) {
        let mut report = self.report();
        for &i in who {
            let p = &mut report.providers[i];
            p.agreed = p.agreed.saturating_add(1);
        }
    }

    fn dissented(&self, i: usize, method: &str, from: &[usize]) {
        let names: Vec<String> = from
            .iter()
            .map(|j| self.members[*j].url.to_string())
            .collect();
        let mut report = self.report();
        let p = &mut report.providers[i];
        p.dissented = p.dissented.saturating_add(1);
        p.last_dissent = Some(method.to_owned());
        p.dissented_from.clone_from(&names);
        let now = Instant::now();
        let again = p
            .last_dissent_at
            .is_some_and(|t| now.duration_since(t) < DISSENT_REMEMBERED);
        p.last_dissent_at = Some(now);
        drop(report);
        if !again {
            warn!(provider = %self.members[i].url, method, quorum = self.quorum, answered_alike = %names.join(" and "), "this RPC answered unlike the others that answered alike; their answer is taken, as a quorum's. Either side may be the one that lies: if this one is right, the others lie alike");
        }
    }

    fn failed(&self, i: usize, why: &str) {
        let mut report = self.report();
        let p = &mut report.providers[i];
        p.failed = p.failed.saturating_add(1);
        p.failing = Some(why.to_owned());
        p.failing_since.get_or_insert_with(Instant::now);
    }

    /// Provider `i` has kept a request waiting [`SLOW_AFTER`].
    fn slow(&self, i: usize) {
        let mut report = self.report();
        let p = &mut report.providers[i];
        if p.failing.is_none() {
            // Named in the status at once; a provider that then fails is logged by whoever asked.
            debug!(provider = %self.members[i].url, "this RPC has not answered a request for {}s", SLOW_AFTER.as_secs());
        }
        p.failing = Some(format!("no answer within {} s", SLOW_AFTER.as_secs()));
        p.failing_since.get_or_insert_with(Instant::now);
    }

    fn split(
        &self,
        method: &str,
        groups: &[Vec<usize>],
        failed: &[(usize, String)],
    ) -> TransportError {
        let name = |g: &[usize]| {
            g.iter()
                .map(|i| self.members[*i].url.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        };
        let named_failures = || {
            failed
                .iter()
                .map(|(i, why)| format!("{} ({why})", self.members[*i].url))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // One group alone disagrees with nobody: too few answered.
        let split = match (groups.len() <= 1, self.members.len(), failed) {
            (true, 1, [(_, why)]) => Split::Down {
                method: method.to_owned(),
                provider: self.members[0].url.to_string(),
                why: why.clone(),
            },
            (true, _, _) => Split::Unanswered {
                method: method.to_owned(),
                failed: named_failures(),
                quorum: self.quorum,
            },
            (false, _, _) => {
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
                    parts.push(format!("{} did not answer", named_failures()));
                }
                Split::Disagree {
                    method: method.to_owned(),
                    groups: parts.join(", "),
                    quorum: self.quorum,
                }
            }
        };
        if let Split::Down { .. } = split {
            // One provider that does not answer is no split: whoever asked reports its error.
            debug!(%split, "the RPC did not answer");
            return TransportErrorKind::custom(split);
        }
        let text = split.to_string();
        let mut report = self.report();
        report.splits = report.splits.saturating_add(1);
        // Providers that keep disagreeing do so at every poll: warned of once, until the split changes.
        let again = report.last_split.as_deref() == Some(text.as_str());
        report.last_split = Some(text);
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

/// An error with its causes, as one line: a transport error's own text rarely says why.
fn chain_of(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The method a packet asks, for the report: a batch's methods joined.
fn method_of(request: &RequestPacket) -> String {
    match request {
        RequestPacket::Single(r) => r.method().to_owned(),
        RequestPacket::Batch(rs) => rs.iter().map(|r| r.method()).collect::<Vec<_>>().join("+"),
    }
}

/// The hash of the transaction an `eth_sendRawTransaction` carries: what a provider that took it answers.
fn raw_transaction_hash(request: &RequestPacket) -> Option<B256> {
    let RequestPacket::Single(r) = request else {
        return None;
    };
    let params: Vec<alloy::primitives::Bytes> = serde_json::from_str(r.params()?.get()).ok()?;
    Some(keccak256(params.first()?))
}

/// A packet's answer as it is compared under `policy`: a head alone for `eth_blockNumber`, a figure for an
/// estimate, whether a provider took a transaction (the hash `sent`), else each response's key in id order.
fn answer_of(policy: Policy, method: &str, packet: &ResponsePacket, sent: Option<B256>) -> Answer {
    if let ResponsePacket::Single(Response {
        payload: ResponsePayload::Success(raw),
        ..
    }) = packet
    {
        match policy {
            Policy::Quorum if method == "eth_blockNumber" => {
                if let Ok(n) = serde_json::from_str::<alloy::primitives::U64>(raw.get()) {
                    return Answer::Head(n.to::<u64>());
                }
            }
            Policy::Estimate => {
                if let Ok(f) = serde_json::from_str::<alloy::primitives::U256>(raw.get()) {
                    return Answer::Figure(f);
                }
            }
            Policy::Broadcast => {
                return match serde_json::from_str::<B256>(raw.get()) {
                    Ok(hash) if Some(hash) == sent => Answer::Accepted,
                    _ => Answer::Keyed(format!(
                        "answered {}, not the hash of the transaction sent",
                        raw.get()
                    )),
                };
            }
            Policy::Pending if raw.get().trim() == "null" => return agree::not_yet(),
            Policy::Quorum | Policy::Pending => {}
        }
    }
    if let (
        Policy::Broadcast,
        ResponsePacket::Single(Response {
            payload: ResponsePayload::Failure(e),
            ..
        }),
    ) = (policy, packet)
    {
        // Refusals are told apart by what they say: a duplicate and a censor both answer an error.
        return Answer::Keyed(e.message.to_string());
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
mod tests;
