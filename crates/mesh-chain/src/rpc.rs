//! Connections to the chain's JSON-RPC: HTTP, or a WebSocket that reconnects by itself; and the set of
//! providers ([`Rpcs`]) whose reads a quorum must agree on ([`crate::quorum`]).

use std::time::Duration;

use alloy::{
    providers::{DynProvider, Provider as _, ProviderBuilder},
    rpc::client::{ClientBuilder, RpcClient},
    transports::{TransportError, http::reqwest::Url, ws::WsConnect},
};

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

/// The chain's providers: the first sends transactions; the reads a node's trust rests on go to every one,
/// and count only where `quorum` of them answer alike.
#[derive(Debug, Clone)]
pub struct Rpcs {
    urls: Vec<Url>,
    quorum: usize,
    watch: QuorumWatch,
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
}

impl Rpcs {
    /// `urls` (at least one, none twice), `quorum` of which must agree: by default more than half.
    ///
    /// # Errors
    /// [`RpcsError`] for no URL, a repeated one, or a quorum of half the providers or fewer, or more than all.
    pub fn new(urls: Vec<Url>, quorum: Option<usize>) -> Result<Self, RpcsError> {
        if urls.is_empty() {
            return Err(RpcsError::None);
        }
        for (n, u) in urls.iter().enumerate() {
            if urls[..n].contains(u) {
                return Err(RpcsError::Repeated {
                    shown: RedactedUrl::new(u).to_string(),
                });
            }
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
        let shown: Vec<RedactedUrl> = urls.iter().map(RedactedUrl::new).collect();
        Ok(Self {
            watch: QuorumWatch::new(&shown, quorum),
            urls,
            quorum,
        })
    }

    /// One provider: its reads are unverified, as before there were several.
    pub fn one(url: Url) -> Self {
        Self::new(vec![url], None).expect("one URL is a valid set")
    }

    /// The provider that sends transactions, and that the agent names in its messages.
    pub fn primary(&self) -> &Url {
        &self.urls[0]
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

    /// A read-only provider: the one provider itself, or a [`Quorum`] over all of them.
    ///
    /// # Errors
    /// As [`client`], for any of them.
    pub async fn reader(&self) -> Result<DynProvider, ChainError> {
        if self.urls.len() == 1 {
            return reader(self.primary()).await;
        }
        let mut members = Vec::new();
        for url in &self.urls {
            members.push((
                RedactedUrl::new(url),
                client(url).await?.transport().clone(),
            ));
        }
        let quorum = Quorum::new(members, self.quorum, self.watch.clone());
        Ok(ProviderBuilder::new()
            .connect_client(RpcClient::new(quorum, false))
            .erased())
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
