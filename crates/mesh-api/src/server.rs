//! The API server: it only renders the [`Snapshot`] that the agent publishes on a `watch` channel, so it
//! never blocks the agent, and tests can serve any state they like. One server serves a unix socket or a
//! TCP address ([`Listener`]), the whole API or the metrics alone ([`Routes`]).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;
use unix_socket::UnixSocket;

use crate::health::assess;
use crate::metrics::metrics;
use crate::types::Snapshot;

/// Where a server accepts connections.
#[derive(Debug)]
pub enum Listener {
    /// The API socket, whose file permissions say who may connect.
    Unix(UnixSocket),
    /// A TCP address: loopback for applications that share the agent's network namespace, or any
    /// address for a metrics scraper outside it.
    Tcp(TcpListener),
}

impl From<UnixSocket> for Listener {
    fn from(socket: UnixSocket) -> Self {
        Self::Unix(socket)
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

/// What a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The whole API: status, peers, the watch stream, health and metrics.
    Api,
    /// `/metrics` alone, for `--metrics-listen`.
    Metrics,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the reply: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    full(status, "application/json", body)
}

/// What a server-sent-event stream sends, rendered from a snapshot: each event's name, what decides whether
/// it changed, and its data.
type Events = fn(&Snapshot) -> Vec<(&'static str, String, String)>;

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Every change of the list, counters and handshake times included: `/v1/peers/watch` as it always was.
fn peers_event(snapshot: &Snapshot) -> Vec<(&'static str, String, String)> {
    let data = to_json(&snapshot.peers);
    vec![("peers", data.clone(), data)]
}

/// What applications act on: who is there and how to reach them, and who leads. Counters and handshake
/// times move every second and are no event here.
fn app_events(snapshot: &Snapshot) -> Vec<(&'static str, String, String)> {
    let peers: Vec<_> = snapshot
        .peers
        .iter()
        .map(|p| {
            (
                p.token_id,
                p.wg_public_key,
                &p.address,
                p.connection,
                p.path,
                p.healthy,
                p.leader,
            )
        })
        .collect();
    let leader = &snapshot.leader;
    vec![
        ("peers", to_json(&peers), to_json(&snapshot.peers)),
        (
            "leader",
            to_json(&(leader.token_id, &leader.address, leader.reachable)),
            to_json(leader),
        ),
    ]
}

/// Server-sent events: each kind's current value first, then one event whenever what decides a change of
/// it changes.
fn watch(mut rx: watch::Receiver<Snapshot>, events: Events) -> Response<Body> {
    let (tx, chan) = tokio::sync::mpsc::channel::<Bytes>(4);
    // Owned by the connection: it ends when the client goes away (send fails) or the agent stops
    // (the watch sender is dropped), so it needs no handle.
    tokio::spawn(async move {
        let mut last: Vec<String> = Vec::new();
        loop {
            let now = events(&rx.borrow_and_update());
            for (i, (name, key, data)) in now.iter().enumerate() {
                if last.get(i) == Some(key) {
                    continue;
                }
                let frame = Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            last = now.into_iter().map(|(_, key, _)| key).collect();
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    let frames =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(chan), |b| {
            Ok::<_, Infallible>(Frame::data(b))
        });
    let mut r = Response::new(StreamBody::new(frames).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// 200 when healthy, 503 with the reasons otherwise: what a compose `healthcheck` or a probe wants.
fn healthz(snapshot: &Snapshot) -> Response<Body> {
    let health = assess(&snapshot.status, &snapshot.peers);
    let mut r = json(&health);
    if !health.healthy && r.status() == StatusCode::OK {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

async fn handle(
    rx: watch::Receiver<Snapshot>,
    routes: Routes,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the agent API is read-only: use GET",
        ));
    }
    let snapshot = rx.borrow().clone();
    Ok(match (routes, req.uri().path()) {
        (_, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(&snapshot),
        ),
        (Routes::Api, "/v1/status") => json(&snapshot.status),
        (Routes::Api, "/v1/peers") => json(&snapshot.peers),
        (Routes::Api, "/v1/peers/watch") => watch(rx, peers_event),
        (Routes::Api, "/v1/leader") => json(&snapshot.leader),
        (Routes::Api, "/v1/events") => watch(rx, app_events),
        (Routes::Api, "/healthz") => healthz(&snapshot),
        (Routes::Api, other) => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such path {other}: try /v1/status, /v1/peers, /v1/leader, /v1/events, /v1/peers/watch, /healthz or /metrics"
            ),
        ),
        (Routes::Metrics, other) => error(
            StatusCode::NOT_FOUND,
            &format!("no such path {other}: this address serves /metrics only"),
        ),
    })
}

/// Serves one connection in `connections`; dropping the set aborts it.
fn spawn_connection<S>(
    connections: &mut JoinSet<()>,
    stream: S,
    rx: &watch::Receiver<Snapshot>,
    routes: Routes,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rx = rx.clone();
    connections.spawn(async move {
        let service = service_fn(move |req| handle(rx.clone(), routes, req));
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            debug!(%e, "API connection ended with an error");
        }
    });
}

/// Serves `routes` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: impl Into<Listener>,
    routes: Routes,
    rx: watch::Receiver<Snapshot>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let listener = listener.into();
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &mut connections, &rx, routes) => accepted,
        };
        if let Err(e) = accepted {
            debug!(%e, "API accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while connections.try_join_next().is_some() {}
    }
    // Dropping the set aborts open connections, watch streams included.
}

async fn accept(
    listener: &Listener,
    connections: &mut JoinSet<()>,
    rx: &watch::Receiver<Snapshot>,
    routes: Routes,
) -> std::io::Result<()> {
    match listener {
        Listener::Unix(socket) => spawn_connection(connections, socket.accept().await?, rx, routes),
        Listener::Tcp(tcp) => spawn_connection(connections, tcp.accept().await?.0, rx, routes),
    }
    Ok(())
}
