//! What wakes the follower: new heads by WebSocket subscription while there is one, and a timer that polls.
//!
//! A subscription says when to look, and what each block is: its hash, its parent's and the bloom of its
//! logs, from which the follower takes a range's hashes and skips `eth_getLogs` for blocks that cannot hold
//! the cluster's events, so that a block with nothing for the cluster costs no request. Every head still
//! goes through the follower's reorg checks, as a poll would. While it is up, the timer is a slow safety net ([`SAFETY_POLL`]); when
//! it drops, the timer polls at the configured interval, and the subscription is tried again with backoff.
//! A subscription that stays open but falls silent while the chain moves on is dropped and renewed.

use std::time::{Duration, Instant};

use alloy::{
    primitives::{B256, Bloom},
    providers::{Provider as _, ProviderBuilder, RootProvider},
    pubsub::Subscription,
    rpc::types::Header,
    transports::{TransportErrorKind, http::reqwest::Url},
};
use owned_task::Task;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{info, warn};

use crate::budget;
use crate::error::ChainError;
use crate::redact::RedactedUrl;
use crate::rpc;
use backoff::Backoff;

/// While subscribed, how often the timer still polls in a small cluster ([`budget::SAFETY_POLL`]).
pub const SAFETY_POLL: Duration = budget::SAFETY_POLL;

/// How far a poll may find the chain ahead of the last announced head before the subscription counts as
/// stalled: one block may be in flight on the socket when the poll reads the head.
const STALL_BLOCKS: u64 = 2;

/// A new head, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub number: u64,
    pub hash: B256,
    pub parent_hash: B256,
    /// The bloom of every log of the block: an address absent from it emitted nothing there.
    pub logs_bloom: Bloom,
}

impl From<&Header> for Head {
    fn from(h: &Header) -> Self {
        Self {
            number: h.number,
            hash: h.hash,
            parent_hash: h.parent_hash,
            logs_bloom: h.logs_bloom,
        }
    }
}

/// A `newHeads` subscription on its own WebSocket. It redials once at most before it gives up, so that a
/// drop ends the stream and polling takes over, rather than being waited out in silence.
pub struct Heads {
    sub: Subscription<Header>,
    _provider: RootProvider,
}

impl Heads {
    /// Subscribes to new heads at `url`.
    ///
    /// # Errors
    /// [`ChainError`] when the WebSocket cannot be opened or the RPC refuses `eth_subscribe`.
    pub async fn subscribe(url: &Url) -> Result<Self, ChainError> {
        let provider = ProviderBuilder::default().connect_client(rpc::websocket(url, 1).await?);
        let sub = provider
            .subscribe_blocks()
            .await
            .map_err(|source| ChainError::Rpc {
                what: "eth_subscribe newHeads",
                source,
            })?;
        Ok(Self {
            sub,
            _provider: provider,
        })
    }

    /// Every head announced since the last call, oldest first, waiting for one; `None` once the
    /// subscription is gone. One read up to the newest covers them all; the earlier ones give their blocks'
    /// hashes and blooms. Heads the channel dropped (it lagged) leave a gap, which the follower reads from
    /// the RPC.
    pub async fn next(&mut self) -> Option<Vec<Head>> {
        let first = loop {
            match self.sub.recv().await {
                Ok(h) => break h,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        };
        let mut heads = vec![Head::from(&first)];
        loop {
            match self.sub.try_recv() {
                Ok(h) => heads.push(Head::from(&h)),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return None,
            }
        }
        Some(heads)
    }
}

/// Why the follower was woken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The subscription announced heads: every one since the last wake-up, oldest first, never none.
    Heads(Vec<Head>),
    /// The timer: poll.
    Timer,
}

/// When to poll and when to (re)subscribe: the decisions, with the clock passed in.
#[derive(Debug, Clone)]
pub struct Pace {
    poll: Duration,
    subscribed: bool,
    next_timer: Instant,
    /// When to try subscribing next; `None` without a subscription URL.
    next_subscribe: Option<Instant>,
    resubscribe: Backoff,
    /// The last announced head, and when it came.
    last_head: Option<(u64, Instant)>,
    /// While set, the timer polls at least this often whatever the subscription: a leader renews its lease
    /// with polls, since an announced head confirms nothing ([`crate::follow::Tick::confirmed`]).
    at_least_every: Option<Duration>,
    /// The cluster's nodes, whose safety polls together are held to a budget ([`budget::safety_poll_period`]).
    nodes: usize,
    /// The timer has polled since the last head came: a silence is looked into once, not at every period.
    silence_polled: bool,
    /// Where a stretched period falls this time ([`Pace::timer_fired`]), from a generator seeded apart in
    /// every node.
    spread: u64,
    /// A stretched period has been drawn: the first one falls anywhere within it.
    phased: bool,
}

impl Pace {
    /// Polling every `poll`, with a subscription to try at once if `subscribing`.
    pub fn new(poll: Duration, subscribing: bool, now: Instant) -> Self {
        Self {
            poll,
            subscribed: false,
            next_timer: now,
            next_subscribe: subscribing.then_some(now),
            resubscribe: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            last_head: None,
            at_least_every: None,
            nodes: 1,
            silence_polled: false,
            spread: seed(),
            phased: false,
        }
    }

    /// The follower's cluster has `nodes` nodes now.
    pub fn cluster_of(&mut self, nodes: usize) {
        self.nodes = nodes;
    }

    /// How long the timer waits between polls now.
    pub fn period(&self) -> Duration {
        match self.at_least_every {
            Some(cap) => self.base_period().min(cap),
            None => self.base_period(),
        }
    }

    /// The period without [`Pace::poll_at_least_every`]: while subscribed, the safety net's, stretched in a
    /// large cluster so that its nodes' polls together stay within the budget.
    fn base_period(&self) -> Duration {
        match self.subscribed {
            true => budget::safety_poll_period(self.silence(), self.nodes),
            false => self.poll,
        }
    }

    /// How long a subscription may go without a head before the timer looks at the chain: a chain that
    /// moves on while it is silent shows it stalled ([`Pace::polled`]). A busy follower takes heads later
    /// than they come, so a shorter silence proves nothing.
    fn silence(&self) -> Duration {
        self.poll.max(SAFETY_POLL)
    }

    /// Polls at least every `cap` from now on (`None`: as usual). Turning it on polls at once.
    pub fn poll_at_least_every(&mut self, cap: Option<Duration>, now: Instant) {
        if cap.is_some() && self.at_least_every.is_none() {
            self.next_timer = self.next_timer.min(now);
        }
        if let Some(c) = cap {
            self.next_timer = self.next_timer.min(now.checked_add(c).unwrap_or(now));
        }
        self.at_least_every = cap;
    }

    pub fn subscribed(&self) -> bool {
        self.subscribed
    }

    /// When the timer fires next: the period after the last poll, or sooner once a head is a
    /// [`Pace::silence`] old, where the period is longer than that (a large cluster) and the silence has not
    /// been looked into yet. So a subscription that stalls on a chain that moves is found as soon as in a
    /// small cluster, while a quiet chain costs one poll per silence, not one every period.
    pub fn next_timer(&self) -> Instant {
        match self.last_head {
            Some((_, at))
                if self.subscribed
                    && !self.silence_polled
                    && self.base_period() > self.silence() =>
            {
                self.next_timer
                    .min(at.checked_add(self.silence()).unwrap_or(at))
            }
            _ => self.next_timer,
        }
    }

    /// Whether a subscription should be tried now.
    pub fn subscribe_due(&self, now: Instant) -> bool {
        !self.subscribed && self.next_subscribe.is_some_and(|t| now >= t)
    }

    /// The timer fired: the next one is a period away, and a silence so far has been looked into.
    ///
    /// A period stretched for a large cluster is drawn so that the nodes' polls spread out over time
    /// instead of reaching the provider together: the first anywhere within it, since the nodes of a
    /// cluster often start together, and each later one from half of it to one and a half. A poll that
    /// looked into a silence, before the period was up, leaves the schedule as it was: every node looks
    /// into the same silence after the same block, and would otherwise poll in step from then on.
    pub fn timer_fired(&mut self, now: Instant) {
        if self.last_head.is_some() {
            self.silence_polled = true;
        }
        if now < self.next_timer {
            return;
        }
        let mut period = self.period();
        if self.at_least_every.is_none() && self.subscribed && period > self.silence() {
            let from = if self.phased { 0.5 } else { 0.0 };
            self.phased = true;
            period = period.mul_f64(from + self.next_fraction());
        }
        self.next_timer = now.checked_add(period).unwrap_or(now);
    }

    /// A fraction in [0, 1) (xorshift64*: enough to spread polls, not for anything secret).
    fn next_fraction(&mut self) -> f64 {
        let mut x = self.spread;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.spread = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn subscribe_succeeded(&mut self, now: Instant) {
        self.subscribed = true;
        self.resubscribe.reset();
        self.last_head = None;
        self.silence_polled = false;
        // A poll already due (the first one, say) is not put off.
        self.next_timer = self
            .next_timer
            .min(now.checked_add(self.period()).unwrap_or(now));
    }

    /// A subscription could not be made, or dropped: poll at once and every period, and try again later.
    pub fn subscription_lost(&mut self, now: Instant) {
        self.subscribed = false;
        self.next_timer = now;
        if self.next_subscribe.is_some() {
            self.next_subscribe = now.checked_add(self.resubscribe.next_delay());
        }
    }

    pub fn head_announced(&mut self, number: u64, now: Instant) {
        self.last_head = Some((number, now));
        self.silence_polled = false;
    }

    /// A timer's poll found the chain at `head`: returns whether that shows the subscription stalled,
    /// open but not announcing blocks the chain has: none for a whole period while the chain moved on. A
    /// busy follower takes heads later than they come, so a shorter silence proves nothing. The first poll
    /// after subscribing, before any head came, sets the mark to compare with.
    pub fn polled(&mut self, head: u64, now: Instant) -> bool {
        if !self.subscribed {
            return false;
        }
        match self.last_head {
            Some((announced, at)) => {
                head >= announced.saturating_add(STALL_BLOCKS)
                    && now.saturating_duration_since(at) >= self.silence()
            }
            None => {
                self.last_head = Some((head, now));
                self.silence_polled = false;
                false
            }
        }
    }
}

/// A seed that differs from one process and one `Pace` to the next, never 0 (xorshift's fixed point).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1
}

/// How long a subscription may take to be made (the WebSocket opened, `eth_subscribe` answered).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A subscription being made, in its own task: the caller's work between calls to [`Wakeups::next`] (a long
/// read, an attestation pass) neither stalls it nor counts against its time limit.
type Subscribing = Task<Result<Heads, ChainError>>;

/// The follower's wake-ups: heads from a subscription at `url` while there is one, else the timer.
pub struct Wakeups {
    url: Option<Url>,
    shown: Option<RedactedUrl>,
    heads: Option<Heads>,
    /// A subscription being made.
    subscribing: Option<Subscribing>,
    subscribe_timeout: Duration,
    pace: Pace,
}

impl Wakeups {
    /// Polling every `poll`, and following new heads at `subscribe` if given (a `ws://` or `wss://` URL).
    pub fn new(poll: Duration, subscribe: Option<Url>) -> Self {
        Self {
            shown: subscribe.as_ref().map(RedactedUrl::new),
            pace: Pace::new(poll, subscribe.is_some(), Instant::now()),
            url: subscribe,
            heads: None,
            subscribing: None,
            subscribe_timeout: SUBSCRIBE_TIMEOUT,
        }
    }

    /// Whether heads are being followed by subscription now.
    pub fn subscribed(&self) -> bool {
        self.heads.is_some()
    }

    /// See [`Pace::cluster_of`].
    pub fn cluster_of(&mut self, nodes: usize) {
        self.pace.cluster_of(nodes);
    }

    /// See [`Pace::poll_at_least_every`].
    pub fn poll_at_least_every(&mut self, cap: Option<Duration>) {
        self.pace.poll_at_least_every(cap, Instant::now());
    }

    /// Waits for the next reason to look at the chain: a new head, or the timer. A subscription being made
    /// goes on in its own task, beside the timer and across calls, so that a WebSocket slow to answer (or
    /// never answering) holds no poll up.
    pub async fn next(&mut self) -> Wake {
        loop {
            self.start_subscribing_if_due();
            let timer = tokio::time::Instant::from_std(self.pace.next_timer());
            let (heads, subscribing) = (&mut self.heads, &mut self.subscribing);
            tokio::select! {
                announced = next_heads(heads) => match announced {
                    Some(heads) => {
                        if let Some(newest) = heads.last() {
                            self.pace.head_announced(newest.number, Instant::now());
                        }
                        return Wake::Heads(heads);
                    }
                    None => {
                        warn!(url = %self.shown(), every = ?self.pace.poll, "the new-heads subscription dropped; polling until it is back");
                        self.lost();
                    }
                },
                made = until_made(subscribing) => {
                    self.subscribing = None;
                    self.made(made);
                }
                () = tokio::time::sleep_until(timer) => {
                    self.pace.timer_fired(Instant::now());
                    return Wake::Timer;
                }
            }
        }
    }

    /// After a timer's poll found the chain at `head`: a subscription that did not announce it is
    /// renewed.
    pub fn polled(&mut self, head: u64) {
        // Heads still queued are not silence.
        let queued = self.heads.as_ref().is_some_and(|h| !h.sub.is_empty());
        if self.heads.is_some() && !queued && self.pace.polled(head, Instant::now()) {
            warn!(url = %self.shown(), head, "the new-heads subscription went quiet while the chain moved on; renewing it");
            self.lost();
        }
    }

    fn lost(&mut self) {
        self.heads = None;
        self.pace.subscription_lost(Instant::now());
    }

    fn shown(&self) -> String {
        self.shown
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    fn start_subscribing_if_due(&mut self) {
        let Some(url) = &self.url else { return };
        if self.subscribing.is_some() || !self.pace.subscribe_due(Instant::now()) {
            return;
        }
        let url = url.clone();
        let limit = self.subscribe_timeout;
        let making = async move {
            match tokio::time::timeout(limit, Heads::subscribe(&url)).await {
                Ok(made) => made,
                Err(_) => Err(ChainError::Rpc {
                    what: "eth_subscribe newHeads",
                    source: TransportErrorKind::custom_str(&format!("no answer within {limit:?}")),
                }),
            }
        };
        self.subscribing = Some(Task::spawn("subscribe-new-heads", making));
    }

    fn made(&mut self, made: Result<Heads, ChainError>) {
        match made {
            Ok(heads) => {
                info!(url = %self.shown(), "following new heads by subscription");
                self.heads = Some(heads);
                self.pace.subscribe_succeeded(Instant::now());
            }
            Err(e) => {
                let error = self
                    .shown
                    .as_ref()
                    .map_or_else(|| e.to_string(), |s| s.scrub(&e.to_string()));
                warn!(url = %self.shown(), %error, every = ?self.pace.poll, "cannot subscribe to new heads; polling meanwhile");
                self.lost();
            }
        }
    }
}

/// The next heads of a subscription; never, without one.
async fn next_heads(heads: &mut Option<Heads>) -> Option<Vec<Head>> {
    match heads {
        Some(h) => h.next().await,
        None => std::future::pending().await,
    }
}

/// The subscription being made, once it is; never, when none is.
async fn until_made(subscribing: &mut Option<Subscribing>) -> Result<Heads, ChainError> {
    match subscribing {
        // The task is only ever aborted by dropping its handle, so a join error is its panic: a bug, shown
        // as a failed attempt rather than taking the follower down.
        Some(s) => match s.await {
            Ok(made) => made,
            Err(e) => Err(ChainError::Rpc {
                what: "eth_subscribe newHeads",
                source: TransportErrorKind::custom_str(&format!(
                    "the subscribing task failed: {e}"
                )),
            }),
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
