//! Connections to the chain's JSON-RPC: HTTP, or a WebSocket that reconnects by itself; and the chain's
//! providers ([`Rpcs`]), connected once, whose reads a quorum must agree on ([`crate::quorum`]) and to
//! every one of which each transaction is sent ([`crate::tx`]).

use std::time::Duration;

use alloy::{
    eips::BlockId,
    providers::{DynProvider, Provider as _, ProviderBuilder},
    rpc::client::{ClientBuilder, RpcClient},
    rpc::json_rpc::{RequestPacket, ResponsePacket},
    transports::{
        BoxTransport, TransportError, TransportErrorKind, TransportFut, http::Http,
        http::reqwest::Url, ws::WsConnect,
    },
};

use alloy::primitives::Address;

use crate::error::{ChainError, UnknownScheme};
use crate::quorum::{Quorum, QuorumWatch};
use crate::redact::RedactedUrl;

/// The first wait before a dropped WebSocket is dialled again; alloy doubles it up to 30 s.
const WS_RETRY: Duration = Duration::from_secs(1);

/// How the URL's scheme says to reach the RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

impl Transport {
    /// The transport of `url`.
    ///
    /// # Errors
    /// [`UnknownScheme`] for a scheme that is neither HTTP nor WebSocket.
    pub fn of(url: &Url) -> Result<Self, UnknownScheme> {
        match url.scheme() {
            "http" | "https" => Ok(Self::Http),
            "ws" | "wss" => Ok(Self::WebSocket),
            other => Err(UnknownScheme {
                scheme: other.to_owned(),
            }),
        }
    }
}

/// A client for reads and transactions through `url`. A WebSocket redials for as long as it takes,
/// re-sending what was in flight, so a client made once serves for the daemon's life, as HTTP does.
///
/// # Errors
/// [`ChainError::Scheme`] for another scheme; [`ChainError::Rpc`] when a WebSocket cannot be opened.
pub async fn client(url: &Url) -> Result<RpcClient, ChainError> {
    match Transport::of(url)? {
        Transport::Http => Ok(ClientBuilder::default().http(url.clone())),
        Transport::WebSocket => websocket(url, u32::MAX).await,
    }
}

/// A read-only provider through `url`.
///
/// # Errors
/// As [`client`].
pub async fn reader(url: &Url) -> Result<DynProvider, ChainError> {
    Ok(ProviderBuilder::new()
        .connect_client(client(url).await?)
        .erased())
}

/// How long one request to one provider may take before it counts as unanswered. Under the quorum's
/// wait for late answers, so that a provider that hangs is heard out as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(25);

/// How long connecting to one provider may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One provider's transport within [`Rpcs`]: HTTP with the timeouts above, or a WebSocket dialled at its
/// first request (and again after a failed dial), so that a provider down at start holds nothing up.
fn member(url: &Url, shown: &RedactedUrl) -> Result<BoxTransport, RpcsError> {
    let scheme = Transport::of(url).map_err(|source| RpcsError::Unusable {
        shown: shown.to_string(),
        source,
    })?;
    match scheme {
        Transport::Http => {
            let client = alloy::transports::http::reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| RpcsError::Client {
                    shown: shown.to_string(),
                    detail: shown.scrub(&e.to_string()),
                })?;
            Ok(BoxTransport::new(Http::with_client(client, url.clone())))
        }
        Transport::WebSocket => Ok(BoxTransport::new(LazyWebSocket {
            url: url.clone(),
            dialled: std::sync::Arc::default(),
        })),
    }
}

/// A WebSocket provider dialled when first asked. Once open, alloy's backend redials it by itself.
#[derive(Clone)]
struct LazyWebSocket {
    url: Url,
    dialled: std::sync::Arc<tokio::sync::Mutex<Option<BoxTransport>>>,
}

impl tower::Service<RequestPacket> for LazyWebSocket {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut transport = {
                let mut dialled = this.dialled.lock().await;
                match dialled.as_ref() {
                    Some(t) => t.clone(),
                    None => {
                        let opened =
                            tokio::time::timeout(CONNECT_TIMEOUT, websocket(&this.url, u32::MAX))
                                .await
                                .map_err(|_| {
                                    TransportErrorKind::custom_str(
                                        "the WebSocket did not open within 5 s",
                                    )
                                })?
                                .map_err(TransportErrorKind::custom)?;
                        dialled.insert(opened.transport().clone()).clone()
                    }
                }
            };
            transport.call(request).await
        })
    }
}

/// What the handle keeps between transactions ([`crate::tx`]).
#[derive(Debug, Default)]
pub(crate) struct Sending {
    /// One transaction is filled, signed and sent at a time.
    pub(crate) one_at_a_time: tokio::sync::Mutex<()>,
    pub(crate) chain_id: tokio::sync::OnceCell<u64>,
    /// The nonces each sender has sent and still waits on: the next is above them, whatever the head says.
    waiting: std::sync::Mutex<std::collections::BTreeMap<Address, std::collections::BTreeSet<u64>>>,
}

impl Sending {
    pub(crate) fn waiting(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::BTreeMap<Address, std::collections::BTreeSet<u64>>,
    > {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The chain's providers, connected once: the one handle every read and transaction of a node (and of
/// `meshctl`) goes through. Each read goes to every provider and is taken where `quorum` of them answer
/// alike; each transaction is signed once and sent to every provider ([`crate::tx`]). With one provider
/// the same holds of it alone, and what it says is unverified. Cheap to clone: the clones share the
/// connections and the report.
#[derive(Clone)]
pub struct Rpcs {
    urls: Vec<Url>,
    quorum: usize,
    watch: QuorumWatch,
    reader: DynProvider,
    pub(crate) sending: std::sync::Arc<Sending>,
}

impl std::fmt::Debug for Rpcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpcs")
            .field("providers", &self.shown())
            .field("quorum", &self.quorum)
            .finish_non_exhaustive()
    }
}

/// A set of providers that cannot be used as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcsError {
    #[error(
        "no RPC URL: give --rpc-url (repeat it, or separate URLs with commas, for several providers)"
    )]
    None,
    #[error(
        "--rpc-quorum {quorum} of {providers} providers: a quorum must be more than half of them (so that two groups that disagree cannot both pass) and at most all of them; give {least} to {providers}"
    )]
    Quorum {
        quorum: usize,
        providers: usize,
        least: usize,
    },
    #[error("the RPC URL {shown} is given twice: each provider counts once towards the quorum")]
    Repeated { shown: String },
    #[error("--rpc-url {shown}: {source}")]
    Unusable {
        shown: String,
        #[source]
        source: UnknownScheme,
    },
    #[error("cannot set up a client for the RPC {shown}: {detail}")]
    Client { shown: String, detail: String },
}

impl Rpcs {
    /// `urls` (at least one, none twice), `quorum` of which must agree: by default more than half. Nothing
    /// is dialled yet: each provider is, at its first request.
    ///
    /// # Errors
    /// [`RpcsError`] for no URL, a repeated one, one of another scheme, or a quorum of half the providers or
    /// fewer, or more than all.
    pub fn new(urls: Vec<Url>, quorum: Option<usize>) -> Result<Self, RpcsError> {
        if urls.is_empty() {
            return Err(RpcsError::None);
        }
        let mut members = Vec::new();
        for (n, u) in urls.iter().enumerate() {
            let shown = RedactedUrl::new(u);
            if urls[..n].contains(u) {
                return Err(RpcsError::Repeated {
                    shown: shown.to_string(),
                });
            }
            let transport = member(u, &shown)?;
            members.push((shown, transport));
        }
        let least = urls.len() / 2 + 1;
        let quorum = quorum.unwrap_or(least);
        if quorum < least || quorum > urls.len() {
            return Err(RpcsError::Quorum {
                quorum,
                providers: urls.len(),
                least,
            });
        }
        let shown: Vec<RedactedUrl> = members.iter().map(|(u, _)| u.clone()).collect();
        let watch = QuorumWatch::new(&shown, quorum);
        let transport = Quorum::new(members, quorum, watch.clone());
        let reader = ProviderBuilder::new()
            .connect_client(RpcClient::new(transport, false))
            .erased();
        Ok(Self {
            urls,
            quorum,
            watch,
            reader,
            sending: std::sync::Arc::default(),
        })
    }

    /// One provider: its reads are unverified, as before there were several.
    ///
    /// # Errors
    /// [`RpcsError::Unusable`] for a URL that is neither HTTP nor WebSocket.
    pub fn one(url: Url) -> Result<Self, RpcsError> {
        Self::new(vec![url], None)
    }

    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// What each provider has done so far.
    pub fn watch(&self) -> &QuorumWatch {
        &self.watch
    }

    /// The providers for a message: their URLs with credentials hidden.
    pub fn shown(&self) -> String {
        let shown: Vec<String> = self
            .urls
            .iter()
            .map(|u| RedactedUrl::new(u).to_string())
            .collect();
        match shown.len() {
            1 => shown.join(""),
            n => format!("{} ({} of {n} must agree)", shown.join(", "), self.quorum),
        }
    }

    /// Every provider, as messages show them and scrub their credentials.
    pub fn redacted(&self) -> RedactedUrl {
        RedactedUrl::list(&self.urls)
    }

    /// Scrubs every provider's credentials from `text`.
    pub fn scrub(&self, text: &str) -> String {
        self.redacted().scrub(text)
    }

    /// Reads through every provider, each taken where a quorum answer alike.
    pub fn reader(&self) -> &DynProvider {
        &self.reader
    }

    /// The block that reads of the present are made at: with several providers, the newest that a quorum
    /// has reached (at "latest" providers a block apart would answer differently, honestly); with one,
    /// its latest.
    ///
    /// # Errors
    /// [`ChainError::Rpc`] when no quorum answers the head.
    pub async fn present(&self) -> Result<BlockId, ChainError> {
        if self.urls.len() == 1 {
            return Ok(BlockId::latest());
        }
        let head = self
            .reader
            .get_block_number()
            .await
            .map_err(|source| ChainError::Rpc {
                what: "eth_blockNumber",
                source,
            })?;
        Ok(BlockId::number(head))
    }
}

/// A WebSocket client that redials at most `retries` times before it gives up, ending its subscriptions.
pub(crate) async fn websocket(url: &Url, retries: u32) -> Result<RpcClient, ChainError> {
    let connect = WsConnect::new(url.as_str())
        .with_max_retries(retries)
        .with_retry_interval(WS_RETRY);
    ClientBuilder::default()
        .ws(connect)
        .await
        .map_err(|source: TransportError| ChainError::Rpc {
            what: "opening the WebSocket",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_transport() {
        let of = |u: &str| Transport::of(&u.parse().unwrap());
        assert_eq!(of("http://127.0.0.1:8545").unwrap(), Transport::Http);
        assert_eq!(of("https://rpc.example/v3/k").unwrap(), Transport::Http);
        assert_eq!(of("ws://127.0.0.1:8545").unwrap(), Transport::WebSocket);
        assert_eq!(of("wss://rpc.example/ws").unwrap(), Transport::WebSocket);
        let err = of("ipc:///tmp/geth.ipc").unwrap_err().to_string();
        assert!(
            err.contains("ipc") && err.contains("http") && err.contains("ws"),
            "{err}"
        );
    }
}
