//! Connections to the chain's JSON-RPC: HTTP, or a WebSocket that reconnects by itself.

use std::time::Duration;

use alloy::{
    providers::{DynProvider, Provider as _, ProviderBuilder},
    rpc::client::{ClientBuilder, RpcClient},
    transports::{TransportError, http::reqwest::Url, ws::WsConnect},
};

use crate::error::{ChainError, UnknownScheme};

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
