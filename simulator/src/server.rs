//! The guest agent's wire protocol, as dstack serves it: pRPC over HTTP/1.1, one path per method,
//! JSON when the request is a GET, has `json` in its query, or has a JSON `Content-Type`. Bytes are
//! lowercase hex out and accept `0x` in; missing fields default; errors are HTTP 400 with pretty
//! `{"error": "…"}`. A POST that is not JSON would be protobuf to the real agent; the simulator refuses
//! it with 415 rather than misread it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dstack_guest::wire::{
    DeriveK256KeyArgs, DeriveKeyArgs, EmitEventArgs, ErrorResponse, GetKeyArgs, GetQuoteArgs,
    GetTlsKeyArgs, RawQuoteArgs, SignArgs, TdxQuoteArgs, VerifyArgs,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
pub use unix_socket::UnixSocket;

use crate::platform::{CallError, Platform};

/// The real agent's per-method body limit.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// `--listen` named a non-loopback address; the simulator's keys must not be reachable off-host.
    #[error(
        "refusing to listen on {0}: the simulator hands out keys to anyone who asks, so only loopback \
         addresses (127.0.0.0/8, ::1) are allowed"
    )]
    NotLoopback(SocketAddr),
    /// Binding TCP failed.
    #[error("cannot listen on {addr}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds plain HTTP on a loopback address.
///
/// # Errors
/// [`BindError::NotLoopback`] or [`BindError::Tcp`].
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, BindError> {
    if !addr.ip().is_loopback() {
        return Err(BindError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Tcp { addr, source })
}

/// Serves `platform` on the unix socket (and `tcp`, if any) until `shutdown` resolves, then lets
/// in-flight requests finish for up to five seconds.
pub async fn serve(
    platform: Arc<Platform>,
    unix: &UnixSocket,
    tcp: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = unix.accept() => match accepted {
                Ok(stream) => spawn_connection(&mut connections, &graceful, &platform, stream),
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok(stream) => spawn_connection(&mut connections, &graceful, &platform, stream),
                Err(e) => accept_failed(e).await,
            },
        }
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    info!("shutting down");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(timeout = ?DRAIN_TIMEOUT, "connections did not finish in time; dropping them");
    }
    connections.shutdown().await;
}

async fn accept_tcp(tcp: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match tcp {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: std::io::Error) {
    // Usually EMFILE; back off instead of spinning.
    warn!(%e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_connection(
    connections: &mut JoinSet<()>,
    graceful: &GracefulShutdown,
    platform: &Arc<Platform>,
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
) {
    let platform = Arc::clone(platform);
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(
        TokioIo::new(stream),
        service_fn(move |req| handle(Arc::clone(&platform), req)),
    );
    let conn = graceful.watch(conn);
    connections.spawn(async move {
        if let Err(e) = conn.await {
            debug!(%e, "connection ended with an error");
        }
    });
}

/// A pRPC method the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    GetKey,
    GetQuote,
    Info,
    Sign,
    Verify,
    Version,
    GetTlsKey,
    EmitEvent,
    Attest,
    GpuInfo,
    DeriveK256Key,
    DeriveKey,
    TdxQuote,
    RawQuote,
}

/// `/<Method>` for DstackGuest; `/prpc/[Tappd.]<Method>` for Tappd (and, leniently, DstackGuest).
fn route(path: &str) -> Option<Rpc> {
    let dstack = |name: &str| match name {
        "GetKey" => Some(Rpc::GetKey),
        "GetQuote" => Some(Rpc::GetQuote),
        "Info" => Some(Rpc::Info),
        "Sign" => Some(Rpc::Sign),
        "Verify" => Some(Rpc::Verify),
        "Version" => Some(Rpc::Version),
        "GetTlsKey" => Some(Rpc::GetTlsKey),
        "EmitEvent" => Some(Rpc::EmitEvent),
        "Attest" => Some(Rpc::Attest),
        "GpuInfo" => Some(Rpc::GpuInfo),
        _ => None,
    };
    if let Some(rest) = path.strip_prefix("/prpc/") {
        let name = rest.strip_prefix("Tappd.").unwrap_or(rest);
        return match name {
            "DeriveK256Key" => Some(Rpc::DeriveK256Key),
            "DeriveKey" => Some(Rpc::DeriveKey),
            "TdxQuote" => Some(Rpc::TdxQuote),
            "RawQuote" => Some(Rpc::RawQuote),
            other => dstack(other),
        };
    }
    path.strip_prefix('/').and_then(dstack)
}

/// A failed request, mapped to its HTTP status in [`ServeError::status`] only.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("no such method: {0}")]
    NotFound(String),
    #[error("method {0} is not allowed; use POST (or GET with query parameters)")]
    MethodNotAllowed(Method),
    #[error(
        "request is not JSON (Content-Type {0:?}): the real agent would decode it as protobuf, which \
         dstack-simulator does not support; send Content-Type: application/json"
    )]
    NotJson(String),
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("invalid {rpc:?} request: {reason}")]
    Decode { rpc: Rpc, reason: String },
    #[error(transparent)]
    Call(#[from] CallError),
}

impl ServeError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            // The agent answers every failed call with 400.
            Self::Body(_) | Self::Decode { .. } | Self::Call(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The request message: from the query string (GET) or the JSON body (POST).
enum Input {
    Query(String),
    Json(Bytes),
}

impl Input {
    fn decode<T: DeserializeOwned + Default>(&self, rpc: Rpc) -> Result<T, ServeError> {
        let decode_err = |reason: String| ServeError::Decode { rpc, reason };
        match self {
            Self::Query(q) if q.is_empty() => Ok(T::default()),
            Self::Query(q) => serde_qs::from_str(q).map_err(|e| decode_err(e.to_string())),
            Self::Json(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
            Self::Json(b) => serde_json::from_slice(b).map_err(|e| decode_err(e.to_string())),
        }
    }
}

async fn handle(
    platform: Arc<Platform>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let result = dispatch(&platform, req).await;
    let response = match result {
        Ok(body) => {
            debug!(%path, "ok");
            reply(StatusCode::OK, body)
        }
        Err(e) => {
            let status = e.status();
            debug!(%path, %status, error = %e, "request failed");
            let body = ErrorResponse {
                error: e.to_string(),
            };
            reply(status, serde_json::to_vec_pretty(&body).unwrap_or_default())
        }
    };
    Ok(response)
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn dispatch(platform: &Platform, req: Request<Incoming>) -> Result<Vec<u8>, ServeError> {
    let path = req.uri().path();
    let rpc = route(path).ok_or_else(|| ServeError::NotFound(path.to_owned()))?;
    let query = req.uri().query().unwrap_or("").to_owned();
    let input = match *req.method() {
        Method::GET => Input::Query(query),
        Method::POST => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let wants_json = content_type
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
                || query
                    .split('&')
                    .any(|kv| kv.split('=').next() == Some("json"));
            if !wants_json {
                return Err(ServeError::NotJson(content_type));
            }
            let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ServeError::TooLarge
                    } else {
                        ServeError::Body(e.to_string())
                    }
                })?
                .to_bytes();
            Input::Json(body)
        }
        ref other => return Err(ServeError::MethodNotAllowed(other.clone())),
    };
    let p = platform;
    match rpc {
        Rpc::GetKey => json(p.get_key(&input.decode::<GetKeyArgs>(rpc)?)?),
        Rpc::GetQuote => json(p.get_quote(&input.decode::<GetQuoteArgs>(rpc)?.report_data)?),
        Rpc::Info => json(p.info()),
        Rpc::Sign => json(p.sign(&input.decode::<SignArgs>(rpc)?)?),
        Rpc::Verify => json(p.verify(&input.decode::<VerifyArgs>(rpc)?)?),
        Rpc::Version => json(p.version()),
        Rpc::GetTlsKey => json(p.get_tls_key(&input.decode::<GetTlsKeyArgs>(rpc)?)?),
        Rpc::EmitEvent => {
            // As in dstack's simulator: accepted and ignored (there is no RTMR3 to extend).
            let args: EmitEventArgs = input.decode(rpc)?;
            debug!(event = %args.event, "EmitEvent ignored");
            json(serde_json::json!({}))
        }
        Rpc::Attest => Err(CallError::Unsupported {
            what: "Attest",
            why: "it has no SCALE-encoded attestation to return",
        }
        .into()),
        Rpc::GpuInfo => Err(CallError::Unsupported {
            what: "GpuInfo",
            why: "the simulated CVM has no GPU",
        }
        .into()),
        Rpc::DeriveK256Key => {
            let args: DeriveK256KeyArgs = input.decode(rpc)?;
            json(p.derive_k256_key(&args.path, &args.purpose)?)
        }
        Rpc::DeriveKey => json(p.derive_tls_key(&input.decode::<DeriveKeyArgs>(rpc)?)?),
        Rpc::TdxQuote => json(p.tdx_quote(&input.decode::<TdxQuoteArgs>(rpc)?)?),
        Rpc::RawQuote => {
            let r = p.get_quote(&input.decode::<RawQuoteArgs>(rpc)?.report_data)?;
            json(serde_json::json!({ "quote": r.quote, "event_log": r.event_log }))
        }
    }
}

fn json(value: impl Serialize) -> Result<Vec<u8>, ServeError> {
    serde_json::to_vec(&value).map_err(|e| ServeError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DstackGuest paths, Tappd paths with and without the `Tappd.` prefix, and nothing else route.
    #[test]
    fn routes_follow_dstack_paths() {
        assert_eq!(route("/GetKey"), Some(Rpc::GetKey));
        assert_eq!(route("/prpc/Tappd.DeriveK256Key"), Some(Rpc::DeriveK256Key));
        assert_eq!(route("/prpc/DeriveK256Key"), Some(Rpc::DeriveK256Key));
        assert_eq!(route("/prpc/Tappd.Info"), Some(Rpc::Info));
        assert_eq!(route("/prpc/Tappd.TdxQuote"), Some(Rpc::TdxQuote));
        assert_eq!(
            route("/DeriveK256Key"),
            None,
            "Tappd methods live under /prpc/"
        );
        assert_eq!(route("/Nope"), None);
    }

    /// Query strings decode like JSON bodies, including a bare `json` flag and `0x` hex.
    #[test]
    fn query_decodes_with_json_flag_and_0x() {
        let q = Input::Query("json&report_data=0x1234".into());
        let a: GetQuoteArgs = q.decode(Rpc::GetQuote).unwrap();
        assert_eq!(a.report_data, vec![0x12, 0x34]);
        let k: GetKeyArgs = Input::Query("path=a%2Fb&purpose=x".into())
            .decode(Rpc::GetKey)
            .unwrap();
        assert_eq!((k.path.as_str(), k.purpose.as_str()), ("a/b", "x"));
    }

    /// An empty body is the default message, as in pRPC.
    #[test]
    fn empty_body_is_default_message() {
        let k: GetKeyArgs = Input::Json(Bytes::from_static(b"  "))
            .decode(Rpc::GetKey)
            .unwrap();
        assert_eq!(k, GetKeyArgs::default());
    }

    /// Non-loopback TCP listeners are refused before binding.
    #[tokio::test]
    async fn non_loopback_listen_is_refused() {
        let err = bind_tcp("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert!(matches!(err, BindError::NotLoopback(_)), "{err}");
    }
}
